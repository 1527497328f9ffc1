// Store-visit journeys and attribution through the real ingest path: a real buffer, the real
// profile cache, the real POS spool reading the real NCR ACS POSLog, the tracker as Ingest's
// enricher and observer, and its rounds run on the test's thread (step()).
#include "agent/omni/visits.h"

#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "agent/ingest/ingest.h"
#include "agent/store/buffer.h"
#include "agent/store/profile_cache.h"
#include "drivers/pos/pos_spool_source.h"
#include "tests/support/recording_writer.h"
#include "tests/support/temp_dir.h"

namespace fs = std::filesystem;
using nlohmann::json;
using omniedge::Event;
using omniedge::omni::VisitTracker;
using omniedge::testing::RecordingWriter;
using omniedge::testing::TempDir;

namespace {

class FixedClock final : public omniedge::Clock {
 public:
  int64_t nowMs() const override { return now; }
  int64_t now = 1795000000000;  // 2026-11-18
};

constexpr const char* kWatch = "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:100:7";
constexpr const char* kLoyalty = "40000066677";  // the loyalty id in ncr-acs-small.xml

std::string readFixture(const std::string& name) {
  std::ifstream in(std::string(OMNIEDGE_SOURCE_DIR) + "/tests/fixtures/poslog/" + name,
                   std::ios::binary);
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json profile(const std::string& id, const std::vector<std::string>& keys, bool tracking = true) {
  return {{"id", id},
          {"keys", keys},
          {"tier", "gold"},
          {"consent", {{"tracking", tracking}, {"personalization", true}}},
          {"cart",
           {{"items",
             {{{"sku", "67591"}, {"qty", 1}, {"price", 2.99}, {"channel", "app"}},
              {{"sku", "SKU-NOT-BOUGHT"}, {"qty", 1}, {"channel", "web"}}}},
            {"updated_at", "2026-11-18T10:00:00Z"}}}};
}

struct Store {
  TempDir dir;
  FixedClock clock;
  omniedge::PiiHasher pii{"0123456789abcdef-tenant-key", "DE"};
  std::unique_ptr<omniedge::store::Buffer> buffer;
  std::unique_ptr<omniedge::store::ProfileCache> profiles;
  std::unique_ptr<omniedge::Ingest> ingest;
  std::unique_ptr<VisitTracker> visits;
  omniedge::omni::VisitOptions options;

  Store() {
    fs::create_directories(dir / "data");
    fs::create_directories(dir / "spool");
    omniedge::store::BufferOptions o;
    o.dir = dir / "data";
    o.min_free_disk = 0;
    auto b = omniedge::store::Buffer::open(o);
    REQUIRE(b.has_value());
    buffer = std::move(*b);
    auto p = omniedge::store::ProfileCache::open(dir / "data");
    REQUIRE(p.has_value());
    profiles = std::move(*p);
    ingest = std::make_unique<omniedge::Ingest>(omniedge::IngestOptions{"store-042", 64 * 1024},
                                                *buffer, pii, clock, profiles.get());
    options.dir = dir / "data";
    options.store_id = "store-042";
    options.timeout_ms = 30 * 60 * 1000;
    reopen();
  }

  // A new tracker on the same visits.db, as after a restart of the agent.
  void reopen() {
    visits.reset();
    auto v = VisitTracker::open(options, profiles.get(), clock);
    REQUIRE(v.has_value());
    visits = std::move(*v);
    ingest = std::make_unique<omniedge::Ingest>(omniedge::IngestOptions{"store-042", 64 * 1024},
                                                *buffer, pii, clock, profiles.get());
    ingest->setEnricher(visits.get());
    ingest->addObserver(visits.get());
  }

  void push(const json& p) {
    auto r = profiles->apply(
        json{{"upserts", {p}}, {"deletes", json::array()}, {"cursor", "1"}}.dump(), clock.now);
    REQUIRE(r.has_value());
  }

  void append(Event e) {
    auto r = ingest->append({std::move(e)});
    REQUIRE(r.has_value());
  }

  // The real POSLog through the real spool driver into the real ingest.
  void pay(const std::string& fixture = "ncr-acs-small.xml") {
    std::ofstream(dir / "spool" / "sale.xml") << readFixture(fixture);
    fs::last_write_time(dir / "spool" / "sale.xml",
                        fs::file_time_type::clock::now() - std::chrono::seconds(60));
    omniedge::pos::PosSpoolOptions po;
    po.spool_dir = dir / "spool";
    po.store_id = "store-042";
    po.retry_backoff_ms = 0;
    auto spool = omniedge::pos::makePosSpool(po);
    REQUIRE(spool->poll(*ingest, {}).has_value());
    REQUIRE(fs::exists(dir / "spool" / "processed" / "sale.xml"));
  }

  // Every stored event of `type`, as the centre would get it.
  std::vector<json> stored(const std::string& type) {
    std::vector<json> out;
    auto pending = buffer->readPending(0, 10000, 64 << 20);
    REQUIRE(pending.has_value());
    for (const auto& e : *pending) {
      auto j = json::parse(e.body);
      if (j["type"] == type) {
        out.push_back(std::move(j));
      }
    }
    return out;
  }
};

Event beacon(const std::string& type, const std::string& zone, int64_t at,
             const std::string& identity = kWatch) {
  Event e;
  e.type = type;
  e.source = "beacon:" + zone;
  e.occurred_at_ms = at;
  e.customer["beacon"] = identity;
  json data = {{"identity", identity}, {"zone", zone}, {"scanner", zone}};
  if (type == "beacon.zone_change") {
    data["to"] = zone;
  }
  e.data_json = data.dump();
  return e;
}

Event kiosk(const std::string& type, const std::map<std::string, std::string>& customer, json data,
            int64_t at) {
  Event e;
  e.type = type;
  e.source = "kiosk";
  e.occurred_at_ms = at;
  e.customer = customer;
  e.data_json = data.dump();
  return e;
}

std::string fileBytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE(
    "a beacon walk, kiosk screens and the real POSLog sale of one customer, joined through the "
    "profile, become one visit.summary when the beacon exits",
    "[unit][visits]") {
  Store s;
  s.push(profile("c-7", {"loyalty:" + std::string(kLoyalty), "app:A-9", kWatch}));
  const int64_t t0 = s.clock.now - 600'000;
  s.append(beacon("beacon.enter", "entrance", t0));
  s.append(beacon("beacon.zone_change", "produce", t0 + 60'000));
  s.append(
      kiosk("kiosk.view", {{"app_user_id", "A-9"}}, {{"screen", "product:67591"}}, t0 + 90'000));
  s.pay();  // loyalty id 40000066677 at the till; it is the profile's
  auto exit = beacon("beacon.exit", "produce", t0 + 400'000);
  exit.data_json = json{{"identity", kWatch}, {"zone", "produce"}, {"dwell_ms", 370'000}}.dump();
  s.append(exit);

  // The sale was attributed before it was stored, its own digits kept.
  const auto sales = s.stored("pos.transaction");
  REQUIRE(sales.size() == 1);
  const json& attribution = sales[0]["data"]["attribution"];
  CHECK(attribution["zones"][0]["zone"] == "entrance");
  CHECK(attribution["zones"][0]["dwell_ms"] == 60'000);
  CHECK(attribution["zones"][1]["zone"] == "produce");
  CHECK(attribution["kiosk_screens"] == json{"product:67591"});
  REQUIRE(attribution["cart_lines"].size() == 1);
  CHECK(attribution["cart_lines"][0]["line"] == 0);
  CHECK(attribution["cart_lines"][0]["sku"] == "67591");
  CHECK(attribution["cart_lines"][0]["channel"] == "app");
  auto raw = s.buffer->readPending(0, 100, 1 << 20);
  REQUIRE(raw.has_value());
  bool digits_kept = false;
  for (const auto& e : *raw) {
    digits_kept = digits_kept || (e.body.find("\"pos.transaction\"") != std::string::npos &&
                                  e.body.find("\"tax\":0.00") != std::string::npos);
  }
  CHECK(digits_kept);

  CHECK(s.stored("visit.summary").empty());  // the visit thread's round makes it
  CHECK(s.visits->step(*s.ingest) == 1);
  const auto summaries = s.stored("visit.summary");
  REQUIRE(summaries.size() == 1);
  const json& v = summaries[0]["data"];
  CHECK(summaries[0]["id"] == v["visit_id"]);
  CHECK(summaries[0]["customer"]["profile_id"] == "c-7");
  CHECK(summaries[0]["customer"]["loyalty_id"] == kLoyalty);
  CHECK(summaries[0]["customer"]["beacon"] == kWatch);
  CHECK(v["closed_by"] == "exit");
  REQUIRE(v["zones"].size() == 2);
  CHECK(v["zones"][0] == json{{"zone", "entrance"},
                              {"entered_at", "2026-11-18T10:56:40.000Z"},
                              {"dwell_ms", 60000}});
  // The beacon was last seen at enter + dwell_ms: the produce stay ends there.
  CHECK(v["zones"][1]["dwell_ms"] == 310'000);
  std::vector<std::string> types;
  for (const auto& tp : v["touchpoints"]) {
    types.push_back(tp["type"]);
  }
  CHECK(types == std::vector<std::string>{"beacon.enter", "beacon.zone_change", "kiosk.view",
                                          "pos.transaction", "beacon.exit"});
  CHECK(v["touchpoints"][2]["screen"] == "product:67591");
  REQUIRE(v["transactions"].size() == 1);
  CHECK(v["transactions"][0]["id"] == "store-042:34:2017-09-30:161");
  CHECK(v["transactions"][0]["total"] == 1.07);
  CHECK(v["transactions"][0]["currency"] == "USD");
  CHECK(v["transactions"][0]["lines"][0]["sku"] == "00000000067591");
  CHECK(v["converted"] == true);
  CHECK(v["cart_items_bought"] == json{{{"sku", "67591"}, {"channel", "app"}}});
  CHECK(v["channels"] == json{"app", "kiosk", "pos", "store"});
  CHECK(v["started_at"] == "2026-11-18T10:56:40.000Z");
  CHECK(v["ended_at"] == "2026-11-18T11:03:20.000Z");

  // Exactly once: nothing more, also after a restart.
  CHECK(s.visits->step(*s.ingest) == 0);
  s.reopen();
  CHECK(s.visits->step(*s.ingest) == 0);
  CHECK(s.stored("visit.summary").size() == 1);
  CHECK(s.visits->stats().open == 0);
}

TEST_CASE(
    "a visit without exit closes after visits.timeout, also across a restart, and is emitted "
    "once under the same id",
    "[unit][visits]") {
  Store s;
  s.push(profile("c-7", {"loyalty:" + std::string(kLoyalty), kWatch}));
  s.append(beacon("beacon.enter", "entrance", s.clock.now));
  s.append(kiosk("kiosk.cart_add", {{"loyalty_id", kLoyalty}},
                 {{"key", "loyalty:40000066677"}, {"item", {{"sku", "SKU-3"}, {"qty", 1}}}},
                 s.clock.now + 1000));
  CHECK(s.visits->step(*s.ingest) == 0);
  CHECK(s.visits->stats().open == 1);

  // The agent stops (or crashes) with the visit open; it is there after the restart.
  s.reopen();
  CHECK(s.visits->stats().open == 1);
  s.clock.now += 29 * 60 * 1000;
  CHECK(s.visits->step(*s.ingest) == 0);

  // A copy of visits.db as it is now: what a crash right after the append would leave.
  TempDir copy;
  s.visits.reset();  // closes visits.db (its WAL is checkpointed into the file)
  fs::copy_file(s.dir / "data" / "visits.db", copy / "visits.db");
  s.reopen();
  s.clock.now += 2 * 60 * 1000;
  CHECK(s.visits->step(*s.ingest) == 1);
  const auto summaries = s.stored("visit.summary");
  REQUIRE(summaries.size() == 1);
  const json& v = summaries[0]["data"];
  CHECK(v["closed_by"] == "timeout");
  CHECK(v["converted"] == false);
  CHECK(v["touchpoints"][1]["type"] == "kiosk.cart_add");
  CHECK(v["touchpoints"][1]["sku"] == "SKU-3");
  CHECK(v["zones"][0]["dwell_ms"] == 1000);  // until the last event of the customer
  CHECK(s.visits->step(*s.ingest) == 0);

  auto options = s.options;
  options.dir = copy.path();
  auto replay = VisitTracker::open(options, s.profiles.get(), s.clock);
  REQUIRE(replay.has_value());
  RecordingWriter writer;
  CHECK((*replay)->step(writer) == 1);
  REQUIRE(writer.events().size() == 1);
  CHECK(writer.events()[0].id == summaries[0]["id"]);  // the buffer and the centre drop it
}

TEST_CASE(
    "a customer who refused tracking gets no journey and their sale no attribution, a consent "
    "withdrawn mid-visit drops the visit",
    "[unit][visits][consent]") {
  Store s;
  s.push(profile("c-8", {"loyalty:" + std::string(kLoyalty), kWatch}, /*tracking=*/false));
  s.append(kiosk("kiosk.view", {{"loyalty_id", kLoyalty}}, {{"screen", "home"}}, s.clock.now));
  s.pay();
  CHECK(s.visits->stats().open == 0);
  const auto sales = s.stored("pos.transaction");
  REQUIRE(sales.size() == 1);
  CHECK_FALSE(sales[0]["data"].contains("attribution"));
  CHECK(sales[0]["customer"].empty());

  // Consent given, a visit starts; withdrawn: the open visit goes, without a summary.
  s.push(profile("c-8", {"loyalty:" + std::string(kLoyalty), kWatch}, /*tracking=*/true));
  s.append(beacon("beacon.enter", "entrance", s.clock.now));
  CHECK(s.visits->stats().open == 1);
  CHECK(s.visits->step(*s.ingest) == 0);
  s.push(profile("c-8", {"loyalty:" + std::string(kLoyalty), kWatch}, /*tracking=*/false));
  // Ingest clears a refusing customer's identity, so the tracker may never hear of them again:
  // the visit still ends without a summary.
  s.clock.now += 3600 * 1000;
  CHECK(s.visits->step(*s.ingest) == 0);
  CHECK(s.stored("visit.summary").empty());
  CHECK(s.visits->stats().open == 0);
  CHECK(s.visits->stats().refused == 1);
  s.reopen();  // and it is gone from visits.db
  CHECK(s.visits->stats().open == 0);
}

TEST_CASE(
    "forget removes a subject's open visit from memory and from visits.db, leaving no trace in "
    "the file or its WAL",
    "[unit][visits][erasure]") {
  Store s;
  s.append(kiosk("kiosk.view", {{"loyalty_id", "LOY-SECRET-77"}}, {{"screen", "secret-screen"}},
                 s.clock.now));
  s.append(
      kiosk("kiosk.view", {{"loyalty_id", "LOY-OTHER-1"}}, {{"screen", "other"}}, s.clock.now));
  CHECK(s.visits->step(*s.ingest) == 0);
  REQUIRE(s.visits->stats().open == 2);
  const fs::path db = s.dir / "data" / "visits.db";
  REQUIRE((fileBytes(db) + fileBytes(db.string() + "-wal")).find("LOY-SECRET-77") !=
          std::string::npos);

  auto gone = s.visits->forget({{"loyalty_id", "LOY-SECRET-77"}});
  REQUIRE(gone.has_value());
  CHECK(*gone == 1);
  CHECK(s.visits->stats().open == 1);
  const std::string bytes = fileBytes(db) + fileBytes(db.string() + "-wal");
  CHECK(bytes.find("LOY-SECRET-77") == std::string::npos);
  CHECK(bytes.find("secret-screen") == std::string::npos);
  CHECK(bytes.find("LOY-OTHER-1") != std::string::npos);
  CHECK(s.visits->name() == "visits");

  s.clock.now += 3600 * 1000;
  CHECK(s.visits->step(*s.ingest) == 1);  // only the other customer's visit
  CHECK(s.stored("visit.summary")[0]["customer"]["loyalty_id"] == "LOY-OTHER-1");
}

TEST_CASE("the same event seen twice (a POS file read again) is joined into the visit once",
          "[unit][visits]") {
  Store s;
  s.push(profile("c-7", {"loyalty:" + std::string(kLoyalty), kWatch}));
  s.append(beacon("beacon.enter", "entrance", s.clock.now));
  s.pay();
  s.pay();  // same deterministic ids: a duplicate for the buffer, and for the visit
  s.clock.now += 3600 * 1000;
  CHECK(s.visits->step(*s.ingest) == 1);
  const auto v = s.stored("visit.summary").at(0)["data"];
  CHECK(v["transactions"].size() == 1);
  CHECK(v["touchpoints"].size() == 2);
}

TEST_CASE(
    "a known customer's sale without a visit is attributed its cart lines only, a stranger's "
    "sale is stored as it came",
    "[unit][visits][attribution]") {
  Store s;
  s.push(profile("c-7", {"loyalty:" + std::string(kLoyalty)}));
  Event sale;
  sale.type = "pos.transaction";
  sale.customer["loyalty_id"] = kLoyalty;
  sale.data_json =
      R"({"lines":[{"item_id":"X-1","amount":1.50},{"gtin":"0067591","amount":2.99}],"totals":{"grand":4.49}} )";
  Event copy = sale;
  s.visits->enrich(copy);  // as Ingest does (also for import --dry-run): the state is unchanged
  CHECK(s.visits->stats().open == 0);
  const json a = json::parse(copy.data_json)["attribution"];
  CHECK(a["cart_lines"] == json{{{"line", 1}, {"sku", "67591"}, {"channel", "app"}, {"qty", 1}}});
  CHECK_FALSE(a.contains("visit_id"));
  CHECK(copy.data_json.find("\"amount\":1.50") != std::string::npos);

  Event stranger = sale;
  stranger.customer = {{"loyalty_id", "NOBODY"}};
  const std::string before = stranger.data_json;
  s.visits->enrich(stranger);
  CHECK(stranger.data_json == before);

  // A cart the kiosk started for a customer the centre has not sent yet counts too.
  REQUIRE(s.profiles
              ->addCartItem("loyalty:NEWCOMER",
                            json{{"sku", "X-1"}, {"qty", 1}, {"channel", "store"}}, s.clock.now)
              .has_value());
  Event newcomer = sale;
  newcomer.customer = {{"loyalty_id", "NEWCOMER"}};
  s.visits->enrich(newcomer);
  CHECK(json::parse(newcomer.data_json)["attribution"]["cart_lines"] ==
        json{{{"line", 0}, {"sku", "X-1"}, {"channel", "store"}, {"qty", 1}}});
}

TEST_CASE("past visits.max_bytes the visit heard of least recently closes first, by capacity",
          "[unit][visits]") {
  Store s;
  s.options.max_bytes = 64 * 1024;
  s.reopen();
  for (int i = 0; i < 200; ++i) {
    s.clock.now += 1000;
    s.append(kiosk("kiosk.view", {{"loyalty_id", "L" + std::to_string(i)}},
                   {{"screen", std::string(200, 'x')}}, s.clock.now));
  }
  s.visits->step(*s.ingest);
  const auto st = s.visits->stats();
  CHECK(st.bytes <= s.options.max_bytes);
  CHECK(st.capacity_closed > 0);
  const auto summaries = s.stored("visit.summary");
  REQUIRE_FALSE(summaries.empty());
  CHECK(summaries[0]["data"]["closed_by"] == "capacity");
  CHECK(summaries[0]["customer"]["loyalty_id"] == "L0");  // the oldest first
}

TEST_CASE(
    "a trigger shown to the customer is a touchpoint of the visit and named in the sale's "
    "attribution",
    "[unit][visits][attribution]") {
  Store s;
  s.push(profile("c-7", {"loyalty:" + std::string(kLoyalty), kWatch}));
  s.append(beacon("beacon.enter", "shoes", s.clock.now));
  Event shown;
  shown.type = "trigger.shown";
  shown.source = "triggers";
  shown.customer["profile_id"] = "c-7";
  shown.data_json = R"({"trigger_id":"welcome-gold","zone":"shoes","channel":"kiosk"})";
  s.append(shown);
  s.pay();
  const auto sale = s.stored("pos.transaction").at(0);
  CHECK(sale["data"]["attribution"]["triggers"] == json{"welcome-gold"});
  CHECK(sale["data"]["attribution"]["zones"][0]["zone"] == "shoes");
  s.clock.now += 3600 * 1000;
  REQUIRE(s.visits->step(*s.ingest) == 1);
  const json v = s.stored("visit.summary").at(0)["data"];
  CHECK(v["touchpoints"][1] == json{{"at", v["touchpoints"][1]["at"]},
                                    {"type", "trigger.shown"},
                                    {"trigger", "welcome-gold"},
                                    {"zone", "shoes"}});
}

TEST_CASE(
    "a summary the buffer cannot take now (full) is tried again next round, one too large for "
    "buffer.max_event_bytes goes with less detail, saying how many touchpoints it left out",
    "[unit][visits]") {
  Store s;
  for (int i = 0; i < 150; ++i) {
    s.append(kiosk("kiosk.view", {{"loyalty_id", "L-BUSY"}},
                   {{"screen", "screen-" + std::to_string(i) + std::string(60, 's')}},
                   s.clock.now + i));
  }
  s.clock.now += 3600 * 1000;
  RecordingWriter writer;
  writer.failNextAppend(omniedge::makeError("full", "the buffer is full"));
  CHECK(s.visits->step(writer) == 0);
  CHECK(s.visits->stats().open == 1);
  CHECK(s.visits->step(writer) == 1);
  REQUIRE(writer.events().size() == 1);
  CHECK(s.visits->stats().open == 0);

  // Through the real ingest with a 4 KiB event limit: the summary still goes, shortened.
  Store small;
  small.ingest = std::make_unique<omniedge::Ingest>(omniedge::IngestOptions{"store-042", 8 * 1024},
                                                    *small.buffer, small.pii, small.clock,
                                                    small.profiles.get());
  small.ingest->setEnricher(small.visits.get());
  small.ingest->addObserver(small.visits.get());
  for (int i = 0; i < 150; ++i) {
    small.append(kiosk("kiosk.view", {{"loyalty_id", "L-BUSY"}},
                       {{"screen", "screen-" + std::to_string(i) + std::string(60, 's')}},
                       small.clock.now + i));
  }
  small.clock.now += 3600 * 1000;
  CHECK(small.visits->step(*small.ingest) == 1);
  const json v = small.stored("visit.summary").at(0)["data"];
  CHECK(v["touchpoints"].size() < 150);
  CHECK(v["touchpoints"].size() + v["touchpoints_dropped"].get<std::size_t>() == 150);
  CHECK(v["closed_by"] == "timeout");
}

TEST_CASE(
    "a visit's row is rewritten in place at each round: one row, its rowid kept, every "
    "touchpoint in the summary",
    "[unit][visits]") {
  // INSERT OR REPLACE deleted the row and inserted it again at the table's end (a new rowid, the
  // id index and the free list changed too): ~20 KB written to flash for each joined event.
  Store s;
  s.push(profile("c-7", {"loyalty:" + std::string(kLoyalty), kWatch}));
  s.append(beacon("beacon.enter", "entrance", s.clock.now));
  CHECK(s.visits->step(*s.ingest) == 0);
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((s.dir / "data" / "visits.db").c_str(), &db, SQLITE_OPEN_READONLY,
                          nullptr) == SQLITE_OK);
  const auto rowids = [&] {
    std::vector<int64_t> out;
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "SELECT rowid FROM visits", -1, &st, nullptr) == SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
      out.push_back(sqlite3_column_int64(st, 0));
    }
    sqlite3_finalize(st);
    return out;
  };
  const auto first = rowids();
  REQUIRE(first.size() == 1);
  for (int i = 0; i < 30; ++i) {
    s.clock.now += 10'000;
    s.append(kiosk("kiosk.view", {{"loyalty_id", kLoyalty}},
                   {{"screen", "product:" + std::to_string(i)}}, s.clock.now));
    CHECK(s.visits->step(*s.ingest) == 0);
    CHECK(rowids() == first);
  }
  sqlite3_close(db);
  s.append(beacon("beacon.exit", "entrance", s.clock.now));
  CHECK(s.visits->step(*s.ingest) == 1);
  const auto summaries = s.stored("visit.summary");
  REQUIRE(summaries.size() == 1);
  CHECK(summaries[0]["data"]["touchpoints"].size() == 32);
}
