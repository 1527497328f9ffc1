// The HTTPS uplink against tools/central-sim (a real HTTPS server with mutual TLS), with an
// in-memory outbox: delivery, the answers of contract §6, TLS refusals, claims shared with
// MQTT, and the profile snapshot.
#include "sync/https_uplink.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/api/uuid.h"
#include "tests/support/central_sim.h"
#include "tests/support/memory_outbox.h"
#include "tests/support/temp_dir.h"

namespace omniedge::sync {
namespace {

using namespace std::chrono_literals;
using testing::CentralSim;
using testing::MemoryOutbox;
using testing::TempDir;

constexpr auto kBound = 60s;
const std::string kStore = "store-1";

bool eventually(const std::function<bool()>& condition,
                std::chrono::milliseconds timeout = kBound) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

std::vector<std::string> fill(MemoryOutbox& outbox, int n, const std::string& type = "kiosk.view") {
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) {
    ids.push_back(makeUuidV7(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count()));
    outbox.add(R"({"id":")" + ids.back() + R"(","type":")" + type +
               R"(","source":"kiosk:1","store_id":"store-1",)"
               R"("occurred_at":"2026-11-22T13:32:42.123Z","data":{"n":)" +
               std::to_string(i) + R"(,"pad":")" + std::string(300, 'x') + R"("}})");
  }
  return ids;
}

HttpsOptions options(const CentralSim& sim, const std::string& cert = "client-store-1") {
  HttpsOptions o;
  o.client.base_url = sim.baseUrl();
  o.client.ca_file = sim.pki().file("ca.crt");
  if (!cert.empty()) {
    o.client.cert_file = sim.pki().file(cert + ".crt");
    o.client.key_file = sim.pki().file(cert + ".key");
  }
  o.client.timeout_s = 5;
  o.store_id = kStore;
  o.agent_version = "0.1.0-test";
  o.space = SeqSpace{"epoch-test", 1};
  o.batch_max_events = 100;
  o.failover_after_ms = 0;
  o.retry_min_ms = 50;
  o.retry_max_ms = 400;
  return o;
}

// MQTT is down: HTTPS takes everything (after failover_after, 0 here).
std::shared_ptr<ClaimBook> mqttDown() {
  auto book = std::make_shared<ClaimBook>();
  book->setMqttUp(false, 1);
  return book;
}

nlohmann::json gaps(const CentralSim& sim) {
  auto report = sim.report(kStore);
  REQUIRE(report.is_object());
  return report["gaps"];
}

TEST_CASE("with MQTT down every event reaches the HTTPS endpoint, and the centre can prove it",
          "[integration][sync][https]") {
  CentralSim sim({});
  MemoryOutbox outbox;
  const auto ids = fill(outbox, 1000);
  HttpsUplink uplink(outbox, options(sim), mqttDown(), std::make_shared<RateLimit>(0));
  uplink.start();
  REQUIRE(outbox.waitUntilEmpty(kBound));
  REQUIRE(eventually([&] { return sim.uniqueEvents(kStore) == 1000; }));
  REQUIRE(eventually([&] { return uplink.status().events == 1000; }));
  const auto s = uplink.status();
  CHECK(s.state == "failover");
  CHECK(s.events == 1000);
  CHECK(s.batches == 10);  // batch_max_events 100: the one handle is reused for each
  CHECK(s.last_status_code == 200);
  CHECK(s.last_error.empty());
  const auto g = gaps(sim);
  CHECK(g["verdict"] == "complete");
  CHECK(g["epochs"][0]["epoch"] == "epoch-test");
  CHECK(g["epochs"][0]["covered"] == nlohmann::json::parse("[[1,1000]]"));
  CHECK(sim.query("SELECT count(*) FROM batches WHERE via = 'https' AND compression = 'gzip'") ==
        10);
  uplink.stop();
}

TEST_CASE("answers: 409 delivered, 5xx and timeouts retried, a refused event quarantined",
          "[integration][sync][https]") {
  CentralSim sim({});
  MemoryOutbox outbox;
  auto o = options(sim);
  o.client.timeout_s = 2;
  // Each section fills the outbox first, so that its first request holds every event.
  std::optional<HttpsUplink> running;
  auto start = [&] {
    running.emplace(outbox, o, mqttDown(), std::make_shared<RateLimit>(0));
    running->start();
    return std::ref(*running);
  };

  SECTION("503 twice with Retry-After, then delivered") {
    sim.fail({"--status", "503", "--count", "2", "--retry-after", "1"});
    fill(outbox, 5);
    start();
    REQUIRE(outbox.waitUntilEmpty(kBound));
    const auto s = running->status();
    CHECK(s.requests == 3);
    CHECK(s.batches == 1);
    CHECK_THAT(s.last_error, Catch::Contains("HTTP 503") && Catch::Contains("retrying"));
    CHECK(s.last_error_resolved);
  }
  SECTION("an answer lost after the commit: the resend gets 409 and counts as delivered") {
    sim.fail({"--status", "500", "--process", "--count", "1"});
    fill(outbox, 5);
    start();
    REQUIRE(outbox.waitUntilEmpty(kBound));
    CHECK(running->status().batches_conflict == 1);
    CHECK(sim.uniqueEvents(kStore) == 5);
  }
  SECTION("no answer within https.timeout: retried, the centre de-duplicates") {
    sim.fail({"--delay", "4", "--count", "1"});
    fill(outbox, 5);
    start();
    REQUIRE(outbox.waitUntilEmpty(kBound));
    CHECK_THAT(running->status().last_error, Catch::Contains("no answer from " + sim.baseUrl()));
    REQUIRE(eventually([&] { return sim.uniqueEvents(kStore) == 5; }));
  }
  SECTION(
      "a 400 about a batch: the batch is quarantined with the centre's reason, the next "
      "batches go on, retry-quarantine sends it again") {
    fill(outbox, 3);
    outbox.add(R"({"type":"kiosk.view","data":{"note":"no id: the centre refuses it"}})");
    start();
    REQUIRE(eventually([&] { return outbox.quarantined().size() == 4; }));
    CHECK(outbox.quarantined().begin()->first == 1);
    CHECK_THAT(outbox.quarantined().begin()->second,
               Catch::Contains("HTTP 400") && Catch::Contains("events[3].id"));
    REQUIRE(eventually([&] { return running->status().quarantined == 4; }));
    CHECK(running->status().batches_refused == 1);
    CHECK_THAT(running->status().last_error,
               Catch::Contains("moved to the quarantine") && Catch::Contains("retry-quarantine"));
    fill(outbox, 4);  // later batches are delivered
    REQUIRE(outbox.waitUntilEmpty(kBound));
    CHECK(sim.uniqueEvents(kStore) == 4);
  }
  SECTION("a 400 once: that batch is quarantined, the rest delivered") {
    sim.fail({"--status", "400", "--count", "1", "--match", "events:batch"});
    fill(outbox, 2);
    start();
    REQUIRE(eventually([&] { return outbox.quarantined().size() == 2; }));
    fill(outbox, 1);
    REQUIRE(outbox.waitUntilEmpty(kBound));
    CHECK(outbox.quarantined().size() == 2);
    CHECK(sim.uniqueEvents(kStore) == 1);
  }
  SECTION("a 403 is about this agent: nothing quarantined, the error says what to check") {
    sim.fail({"--status", "403", "--count", "3"});
    fill(outbox, 3);
    start();
    REQUIRE(outbox.waitUntilEmpty(kBound));
    CHECK(outbox.quarantined().empty());
    CHECK_THAT(running->status().last_error,
               Catch::Contains("HTTP 403") && Catch::Contains("https.cert_file"));
  }
}

TEST_CASE("TLS refusals name the reason: client certificates and a MITM server",
          "[integration][sync][https]") {
  CentralSim sim({});
  struct Case {
    std::string cert;
    std::string expect;
  };
  // No certificate: TLS 1.3 says "certificate required", TLS 1.2 "handshake failure".
  const Case c =
      GENERATE(Case{"", ""}, Case{"client-selfsigned", "unknown ca"},
               Case{"client-expired", "certificate expired"}, Case{"client-other-ca", "unknown ca"},
               Case{"client-revoked", "certificate revoked"});
  CAPTURE(c.cert);
  auto client = HttpsClient::create(options(sim, c.cert).client);
  REQUIRE(client.has_value());
  auto r = (*client)->post("/v1/stores/store-1/events:batch", "{}", "", {});
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == "transport");
  CHECK_THAT(r.error().message, Catch::Contains("refused the TLS connection (alert: " + c.expect));
  CHECK_THAT(r.error().message,
             Catch::Contains(c.cert.empty() ? "set https.cert_file" : c.cert + ".crt"));
}

CentralSim::Options sharedPki(const testing::SimPki& pki, bool rogue) {
  CentralSim::Options o;
  o.pki_dir = pki.dir;
  if (rogue) {
    o.server_cert = pki.file("rogue-server.crt");
    o.server_key = pki.file("rogue-server.key");
  }
  return o;
}

TEST_CASE("a server with a certificate from a rogue CA is refused, and so is a wrong pin",
          "[integration][sync][https]") {
  TempDir pki_dir;
  const auto pki = testing::makeSimPki(pki_dir / "pki", kStore);
  SECTION("rogue CA: not trusted") {
    CentralSim rogue(sharedPki(pki, true));
    auto client = HttpsClient::create(options(rogue).client);
    REQUIRE(client.has_value());
    auto r = (*client)->post("/v1/stores/store-1/events:batch", "{}", "", {});
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message,
               Catch::Contains("server certificate of " + rogue.baseUrl() + " is not trusted") &&
                   Catch::Contains("https.ca_file"));
  }
  SECTION("a pin of another key") {
    CentralSim sim(sharedPki(pki, false));
    auto o = options(sim).client;
    o.pinned_pubkey = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    auto client = HttpsClient::create(o);
    REQUIRE(client.has_value());
    auto r = (*client)->post("/v1/stores/store-1/events:batch", "{}", "", {});
    REQUIRE_FALSE(r.has_value());
    CHECK_THAT(r.error().message, Catch::Contains("does not match https.pinned_pubkey"));
  }
  SECTION("the server's own key pinned by file: accepted") {
    CentralSim sim(sharedPki(pki, false));
    // The public key of server.crt, as a PEM file (what an operator extracts with openssl).
    const std::string pub = (pki_dir / "server.pub").string();
    REQUIRE(std::system(("openssl x509 -in " + pki.file("server.crt") + " -pubkey -noout > " + pub)
                            .c_str()) == 0);
    auto o = options(sim).client;
    o.pinned_pubkey = pub;
    auto client = HttpsClient::create(o);
    REQUIRE(client.has_value());
    auto r = (*client)->get("/v1/stores/store-1/profiles?cursor=", 1 << 20, {});
    REQUIRE(r.has_value());
    CHECK(r->status == 200);
  }
  SECTION("verification off: the rogue server is taken (what doctor warns about)") {
    CentralSim rogue(sharedPki(pki, true));
    auto o = options(rogue).client;
    o.insecure_skip_verify = true;
    auto client = HttpsClient::create(o);
    REQUIRE(client.has_value());
    auto r = (*client)->get("/v1/stores/store-1/profiles?cursor=", 1 << 20, {});
    REQUIRE(r.has_value());
    CHECK(r->status == 200);
  }
}

TEST_CASE("a backfill takes the oldest events up to the floor and leaves the newest to MQTT",
          "[integration][sync][https]") {
  CentralSim sim({});
  MemoryOutbox outbox;
  auto book = std::make_shared<ClaimBook>();
  book->setMqttUp(true, 1);
  fill(outbox, 500);
  // MQTT holds a batch in flight in the middle of the backlog.
  REQUIRE(book->claim(Uplink::kMqtt, 201, 250).granted);
  const auto generation = book->generation();
  auto o = options(sim);
  o.backfill_threshold = 100;
  o.pending_count = [&] { return static_cast<int64_t>(outbox.pendingCount()); };
  HttpsUplink uplink(outbox, o, book, std::make_shared<RateLimit>(0));
  uplink.start();
  // The floor leaves the newest threshold's worth (401-500) to MQTT.
  REQUIRE(eventually([&] { return book->floor() == 400; }));
  // HTTPS takes 1-200 and 251-400; 201-250 is MQTT's.
  REQUIRE(eventually([&] { return outbox.pendingCount() == 150; }));
  auto left = outbox.readPending(0, 1000, 1 << 30);
  REQUIRE(left.has_value());
  CHECK(left->front().seq == 201);
  CHECK((*left)[49].seq == 250);
  CHECK((*left)[50].seq == 401);
  CHECK(left->back().seq == 500);
  // Nothing new below a higher floor: the round ends, the floor drops, MQTT reads from the
  // head again (no round spins on the threshold's worth MQTT keeps).
  REQUIRE(eventually([&] { return book->floor() == 0; }));
  CHECK(book->generation() > generation);
  REQUIRE(eventually([&] { return uplink.status().state == "idle"; }));
  std::this_thread::sleep_for(300ms);
  CHECK(outbox.pendingCount() == 150);
  // Ten more (MQTT is not draining here): the backlog grew by ten, a round takes 401-410.
  fill(outbox, 10);
  REQUIRE(eventually([&] { return outbox.pendingCount() == 150; }));
  left = outbox.readPending(0, 1000, 1 << 30);
  REQUIRE(left.has_value());
  CHECK((*left)[50].seq == 411);
  CHECK(left->back().seq == 510);
  uplink.stop();
}

TEST_CASE("an HTTPS failure gives its claim back and drops the floor, so MQTT can take over",
          "[integration][sync][https]") {
  CentralSim sim({});
  MemoryOutbox outbox;
  auto book = std::make_shared<ClaimBook>();
  book->setMqttUp(true, 1);
  fill(outbox, 300);
  sim.fail({"--status", "503", "--count", "-1", "--retry-after", "3"});
  auto o = options(sim);
  o.backfill_threshold = 100;
  o.retry_max_ms = 5000;  // Retry-After: 3 s of backoff, long enough to look
  o.pending_count = [&] { return static_cast<int64_t>(outbox.pendingCount()); };
  const auto generation = book->generation();
  HttpsUplink uplink(outbox, o, book, std::make_shared<RateLimit>(0));
  uplink.start();
  REQUIRE(eventually([&] { return uplink.status().state == "backoff"; }));
  CHECK(book->floor() == 0);
  CHECK(book->claims(Uplink::kHttps) == 0);
  CHECK(book->generation() > generation);
  CHECK(book->claim(Uplink::kMqtt, 1, 300).granted);  // everything is MQTT's to take
  CHECK(outbox.pendingCount() == 300);
  uplink.stop();
}

TEST_CASE("profile snapshot pages are applied with a cursor kept across restarts",
          "[integration][sync][https]") {
  CentralSim sim({});
  TempDir dir;
  {
    std::string lines;
    for (int i = 0; i < 250; ++i) {
      lines += R"({"id":"c-)" + std::to_string(i) + R"(","keys":["loyalty:L)" + std::to_string(i) +
               R"("],"segments":["vip"]})" + "\n";
    }
    dir.write("profiles.jsonl", lines);
    auto r = testing::runCentralSim({"profiles", "load", "--db", sim.db(), "--store", kStore,
                                     (dir / "profiles.jsonl").string()});
    REQUIRE(r.exit_code == 0);
  }
  MemoryOutbox outbox;
  std::mutex mu;
  std::vector<nlohmann::json> pages;
  auto handler = [&](const std::string& payload) -> Result<void> {
    std::lock_guard lock(mu);
    pages.push_back(nlohmann::json::parse(payload));
    return {};
  };
  auto upserts = [&] {
    std::lock_guard lock(mu);
    std::size_t n = 0;
    for (const auto& p : pages) {
      n += p["upserts"].size();
    }
    return n;
  };
  auto o = options(sim);
  o.cursor_file = dir / "profiles.cursor";
  auto book = std::make_shared<ClaimBook>();
  book->setMqttUp(true, 1);
  {
    // First start: no cursor yet, so the whole snapshot is fetched (100 per page).
    HttpsUplink uplink(outbox, o, book, std::make_shared<RateLimit>(0), handler);
    uplink.start();
    REQUIRE(eventually([&] { return upserts() == 250; }));
    REQUIRE(eventually([&] { return !uplink.status().profiles_pending; }));
    CHECK(uplink.status().profile_pages >= 3);
    {
      std::lock_guard lock(mu);
      CHECK(pages.front()["upserts"][0]["id"] == "c-0");
      CHECK(pages.front()["cursor"].is_string());
    }
  }
  const auto saved = nlohmann::json::parse(dir.read("profiles.cursor"));
  CHECK(saved["complete"] == true);
  CHECK_FALSE(saved["cursor"].get<std::string>().empty());
  {
    // A restart with a complete snapshot asks for nothing.
    HttpsUplink uplink(outbox, o, book, std::make_shared<RateLimit>(0), handler);
    uplink.start();
    std::this_thread::sleep_for(700ms);
    CHECK(uplink.status().profile_pages == 0);
    CHECK(upserts() == 250);
    // resync-profiles: everything again, from an empty cursor.
    uplink.requestProfileResync();
    REQUIRE(eventually([&] { return upserts() == 500; }));
  }
}

}  // namespace
}  // namespace omniedge::sync
