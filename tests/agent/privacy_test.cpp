#include "agent/omni/privacy.h"

#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "agent/api/clock.h"
#include "agent/ingest/ingest.h"
#include "tests/support/temp_dir.h"

using nlohmann::json;
using omniedge::Event;
using omniedge::Ingest;
using omniedge::PiiHasher;
using omniedge::omni::ConsentPolicy;
using omniedge::omni::Privacy;
using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::ProfileCache;
using omniedge::testing::readFile;
using omniedge::testing::TempDir;
namespace fs = std::filesystem;

namespace {

constexpr const char* kBeacon = "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:7:3131";

struct Rig {
  TempDir dir;
  PiiHasher pii{"0123456789abcdef-tenant-key", "DE"};
  omniedge::SystemClock clock;
  std::unique_ptr<Buffer> buffer;
  std::unique_ptr<ProfileCache> profiles;
  std::unique_ptr<Ingest> ingest;
  std::unique_ptr<Privacy> privacy;
  std::vector<Event> reports;

  explicit Rig(int64_t retain_delivered_s = 0) {
    BufferOptions o;
    o.dir = dir.path();
    o.min_free_disk = 0;
    o.retain_delivered_s = retain_delivered_s;
    auto b = Buffer::open(o);
    REQUIRE(b.has_value());
    buffer = std::move(*b);
    auto p = ProfileCache::open(dir.path());
    REQUIRE(p.has_value());
    profiles = std::move(*p);
    ingest = std::make_unique<Ingest>(omniedge::IngestOptions{"store-042", 64 * 1024}, *buffer, pii,
                                      clock, profiles.get());
    privacy =
        std::make_unique<Privacy>(*buffer, *profiles, pii, dir.path(),
                                  [this](std::vector<Event> events) -> omniedge::Result<void> {
                                    reports.insert(reports.end(), events.begin(), events.end());
                                    return {};
                                  });
  }

  void add(const std::string& type, std::map<std::string, std::string> customer,
           std::string data = "{}") {
    Event e;
    e.type = type;
    e.source = type.substr(0, type.find('.'));
    e.customer = std::move(customer);
    e.data_json = std::move(data);
    auto r = ingest->append({std::move(e)});
    REQUIRE(r.has_value());
  }

  std::vector<json> pending() {
    auto events = buffer->readPending(0, 10000, 64 << 20);
    REQUIRE(events.has_value());
    std::vector<json> out;
    for (const auto& e : *events) {
      out.push_back(json::parse(e.body));
    }
    return out;
  }

  // What the counters say against what the rows hold (the buffer's logical bytes).
  void checkCountersExact() {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2((dir.path() / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY,
                            nullptr) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db,
                               "SELECT count(*), coalesce(sum(length(CAST(body AS BLOB)) + "
                               "length(CAST(id AS BLOB)) + length(CAST(type AS BLOB)) + 40), 0) "
                               "FROM events",
                               -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    const int64_t rows = sqlite3_column_int64(st, 0);
    const int64_t bytes = sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    const auto s = buffer->stats();
    CHECK(s.pending[0] + s.pending[1] + s.pending[2] == rows);
    CHECK(s.pending_bytes == bytes);
  }
};

// The first file in `dir` (recursively; but `except`) whose bytes hold `needle`: "" when none.
std::string fileHolding(const fs::path& dir, const std::string& needle,
                        const std::string& except = "") {
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file() && entry.path().filename() != except &&
        readFile(entry.path()).find(needle) != std::string::npos) {
      return entry.path().string();
    }
  }
  return "";
}

const json* find(const std::vector<json>& events, const std::string& type) {
  for (const auto& e : events) {
    if (e["type"] == type) {
      return &e;
    }
  }
  return nullptr;
}

}  // namespace

TEST_CASE(
    "a tracking refusal reaches the customer's buffered events: presence dropped, a sale kept "
    "without identity, kiosk events per consent.on_refusal, other customers untouched",
    "[unit][consent]") {
  Rig rig;
  rig.privacy->setPolicy(ConsentPolicy::fromList({"beacon=drop", "kiosk=drop", "pos=anonymise"}));
  // Buffered while the uplink is down, before the centre says anything about consent.
  rig.add("beacon.enter", {{"beacon", kBeacon}}, R"({"zone":"entrance"})");
  rig.add("pos.sale", {{"loyalty_id", "L-REFUSE-77"}}, R"({"total":12.5})");
  rig.add("kiosk.view", {{"loyalty_id", "L-REFUSE-77"}},
          R"({"key":"loyalty:L-REFUSE-77","sku":"A1"})");
  rig.add("kiosk.view", {{"loyalty_id", "L-OTHER-12"}}, R"({"sku":"B2"})");
  REQUIRE(rig.pending().size() == 4);

  auto update = rig.profiles->apply(json{{"upserts",
                                          {{{"id", "c-77"},
                                            {"keys", {"loyalty:L-REFUSE-77", kBeacon}},
                                            {"consent", {{"tracking", false}}}}}}}
                                        .dump(),
                                    rig.clock.nowMs());
  REQUIRE(update.has_value());
  REQUIRE(update->refusals.size() == 1);
  CHECK(update->refusals[0].added == static_cast<unsigned>(omniedge::ConsentPurpose::kTracking));

  auto counts = rig.privacy->applyRefusals(update->refusals);
  REQUIRE(counts.has_value());
  CHECK((*counts)["events_dropped"] == 2);
  CHECK((*counts)["events_anonymised"] == 1);
  CHECK((*counts)["by_channel"]["beacon"]["dropped"] == 1);
  CHECK((*counts)["by_channel"]["kiosk"]["dropped"] == 1);
  CHECK((*counts)["by_channel"]["pos"]["anonymised"] == 1);

  const auto left = rig.pending();
  REQUIRE(left.size() == 2);
  const json* sale = find(left, "pos.sale");
  REQUIRE(sale != nullptr);
  CHECK((*sale)["customer"] == json::object());
  CHECK((*sale)["data"]["total"] == 12.5);
  const json* other = find(left, "kiosk.view");
  REQUIRE(other != nullptr);
  CHECK((*other)["customer"]["loyalty_id"] == "L-OTHER-12");
  rig.checkCountersExact();

  // Counted upstream, with the seqs dropped for the gap check, never with identity.
  REQUIRE(rig.reports.size() == 1);
  CHECK(rig.reports[0].type == "agent.consent_applied");
  CHECK(rig.reports[0].customer.empty());
  const auto data = json::parse(rig.reports[0].data_json);
  CHECK(data["events_dropped"] == 2);
  CHECK(data["ranges"].size() == 2);
  CHECK(rig.reports[0].data_json.find("L-REFUSE-77") == std::string::npos);
  CHECK(rig.reports[0].data_json.find("c-77") == std::string::npos);

  // Nothing of the refusing customer stays in the buffer's files (nor free pages, nor WAL).
  for (const auto* f : {"buffer.db", "buffer.db-wal"}) {
    const std::string bytes = readFile(rig.dir.path() / f);
    INFO(f);
    CHECK(bytes.find("L-REFUSE-77") == std::string::npos);
    CHECK(bytes.find("f7826da6-4fa2-4e98-8024-bc5b71e0893e") == std::string::npos);
  }
  CHECK(rig.buffer->recent(0, 100).size() == 2);

  // The counters stay exact across a restart.
  rig.buffer->close();
  BufferOptions o;
  o.dir = rig.dir.path();
  o.min_free_disk = 0;
  auto again = Buffer::open(o);
  REQUIRE(again.has_value());
  rig.buffer = std::move(*again);
  rig.checkCountersExact();
}

TEST_CASE("a marketing refusal drops the customer's buffered engagement events only",
          "[unit][consent]") {
  Rig rig;
  rig.privacy->setPolicy(ConsentPolicy::fromList({"beacon=drop"}));
  rig.add("engagement.open", {{"app_user_id", "A-MKT-5"}});
  rig.add("kiosk.view", {{"app_user_id", "A-MKT-5"}});
  auto update = rig.profiles->apply(
      json{{"upserts",
            {{{"id", "c-5"}, {"keys", {"app:A-MKT-5"}}, {"consent", {{"marketing", false}}}}}}}
          .dump(),
      rig.clock.nowMs());
  REQUIRE(update.has_value());
  auto counts = rig.privacy->applyRefusals(update->refusals);
  REQUIRE(counts.has_value());
  const auto left = rig.pending();
  REQUIRE(left.size() == 1);
  CHECK(left[0]["type"] == "kiosk.view");
  CHECK(left[0]["customer"]["app_user_id"] == "A-MKT-5");  // tracking is still consented
  rig.checkCountersExact();

  // The same refusal heard again changes nothing more.
  auto same = rig.profiles->apply(
      json{{"upserts",
            {{{"id", "c-5"}, {"keys", {"app:A-MKT-5"}}, {"consent", {{"marketing", false}}}}}}}
          .dump(),
      rig.clock.nowMs());
  REQUIRE(same.has_value());
  CHECK(same->refusals.empty());
}

TEST_CASE(
    "forgetting a customer by one key removes their events, profile and kept POS files through "
    "every key the profile links, keeps their sales anonymised, and leaves none of their keys in "
    "the files",
    "[unit][erasure]") {
  Rig rig(3600);  // delivered events kept for an hour: erasure reaches them too
  const std::string email_hash = rig.pii.hash("erase.me@example.com");
  auto update = rig.profiles->apply(
      json{{"upserts",
            {{{"id", "c-31"},
              {"keys",
               {"loyalty:L-ERASE-31", "app:A-ERASE-31", "email_sha256:" + email_hash, kBeacon}},
              {"name", "Erika Muster"},
              {"cart", {{"items", json::array()}}}}}}}
          .dump(),
      rig.clock.nowMs());
  REQUIRE(update.has_value());
  rig.privacy->setPosSpoolDir(rig.dir.path() / "spool");
  fs::create_directories(rig.dir.path() / "spool" / "processed");
  std::ofstream(rig.dir.path() / "spool" / "processed" / "tx-1.json")
      << R"({"transaction_id":"1","loyalty_id":"L-ERASE-31","total":3})";
  std::ofstream(rig.dir.path() / "spool" / "processed" / "tx-2.xml")
      << "<Sale><Email>Erase.Me@example.com</Email><Total>4</Total></Sale>";
  std::ofstream(rig.dir.path() / "spool" / "processed" / "tx-3.json")
      << R"({"transaction_id":"3","loyalty_id":"L-ERASE-310","total":5})";

  // Delivered long ago (deleted with secure_delete=FAST: their pages are free, not zeroed),
  // large enough to take overflow pages.
  const std::string pad(9000, 'p');
  for (int i = 0; i < 5; ++i) {
    rig.add("kiosk.view", {{"app_user_id", "A-ERASE-31"}}, R"({"pad":")" + pad + R"("})");
  }
  rig.buffer->acknowledge(1, 5);
  rig.buffer->syncAcknowledgements();
  rig.add("beacon.enter", {{"beacon", kBeacon}});
  rig.add("pos.sale", {{"loyalty_id", "L-ERASE-31"}}, R"({"total":12,"note":"L-ERASE-31"})");
  rig.add("kiosk.view", {{"email", "erase.me@example.com"}});
  rig.add("kiosk.view", {{"loyalty_id", "L-KEEP-1"}});

  auto dry = rig.privacy->forget("loyalty:L-ERASE-31", true);
  REQUIRE(dry.has_value());
  CHECK((*dry)["buffer"]["events_dropped"] == 7);  // 5 kept delivered + beacon + kiosk
  CHECK((*dry)["pos_files"]["deleted"] == 2);
  CHECK(rig.pending().size() == 4);

  auto done = rig.privacy->forget("loyalty:L-ERASE-31", false);
  REQUIRE(done.has_value());
  INFO(done->dump());
  CHECK((*done)["complete"] == true);
  CHECK((*done)["keys_joined"] == 5);  // loyalty, app, email hash, beacon, profile id
  CHECK((*done)["buffer"]["pending_dropped"] == 2);
  CHECK((*done)["buffer"]["pending_anonymised"] == 1);
  CHECK((*done)["buffer"]["delivered_kept_dropped"] == 5);
  CHECK((*done)["profiles"]["profiles"] == 1);
  CHECK((*done)["pos_files"]["deleted"] == 2);
  CHECK(done->dump().find("L-ERASE-31") == std::string::npos);  // never echoed

  const auto left = rig.pending();
  REQUIRE(left.size() == 2);
  const json* sale = find(left, "pos.sale");
  REQUIRE(sale != nullptr);
  CHECK((*sale)["customer"] == json::object());
  CHECK((*sale)["data"]["total"] == 12);
  CHECK(find(left, "kiosk.view")->at("customer")["loyalty_id"] == "L-KEEP-1");
  rig.checkCountersExact();
  CHECK_FALSE(rig.profiles->lookup("app:A-ERASE-31").has_value());
  CHECK(fs::exists(rig.dir.path() / "spool" / "processed" / "tx-3.json"));  // another customer

  for (const std::string& key : {std::string("L-ERASE-31"), std::string("A-ERASE-31"), email_hash,
                                 std::string("f7826da6-4fa2-4e98-8024-bc5b71e0893e"),
                                 std::string("Erika Muster"), std::string("erase.me")}) {
    INFO(key);
    CHECK(fileHolding(rig.dir.path(), key, "tx-3.json").empty());
  }
  REQUIRE(rig.reports.size() == 1);
  CHECK(rig.reports[0].type == "agent.data_erased");
  CHECK(rig.reports[0].data_json.find("ERASE") == std::string::npos);
}

TEST_CASE("forget refuses a key of no known form without echoing it", "[unit][erasure]") {
  Rig rig;
  auto r = rig.privacy->forget("shoe-size:44-secret", false);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == "invalid");
  CHECK(r.error().field == "key");
  CHECK(r.error().message.find("44-secret") == std::string::npos);
  CHECK(r.error().message.find("loyalty:ID") != std::string::npos);
}

TEST_CASE(
    "new events of a customer who refused follow the same rules at ingest: engagement dropped "
    "under a marketing refusal, kiosk events per consent.on_refusal, their key out of data",
    "[unit][consent]") {
  Rig rig;
  rig.privacy->setPolicy(ConsentPolicy::fromList({"beacon=drop", "kiosk=anonymise"}));
  rig.ingest->setRefusalDrop(
      [&rig](std::string_view type) { return rig.privacy->dropsOnTrackingRefusal(type); });
  auto update =
      rig.profiles->apply(json{{"upserts",
                                {{{"id", "c-8"},
                                  {"keys", {"loyalty:L-NEW-8"}},
                                  {"consent", {{"tracking", false}, {"marketing", false}}}}}}}
                              .dump(),
                          rig.clock.nowMs());
  REQUIRE(update.has_value());
  rig.add("engagement.open", {{"loyalty_id", "L-NEW-8"}});
  rig.add("kiosk.cart_add", {{"loyalty_id", "L-NEW-8"}},
          R"({"key":"loyalty:L-NEW-8","item":{"sku":"S-1","qty":1}})");
  const auto left = rig.pending();
  REQUIRE(left.size() == 1);
  CHECK(left[0]["type"] == "kiosk.cart_add");
  CHECK(left[0]["customer"] == json::object());
  CHECK(left[0]["data"]["key"] == "(anonymised)");
  CHECK(left[0]["data"]["item"]["sku"] == "S-1");

  rig.privacy->setPolicy(ConsentPolicy::fromList({"kiosk=drop"}));
  rig.add("kiosk.view", {{"loyalty_id", "L-NEW-8"}});
  CHECK(rig.pending().size() == 1);
}
