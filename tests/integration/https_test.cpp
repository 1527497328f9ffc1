// The second uplink as a user meets it (issue 14 points 1, 2, 7, 9): the real binary, the real
// reference centre (tools/central-sim, HTTPS with mutual TLS, its gap check and verify), real
// mosquittos with TLS and client certificates, real SIGKILL.
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/central_sim.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::CentralSim;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::SimPki;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace {

constexpr auto kBound = 90s;
const std::string kStore = "store-1";

bool eventually(const std::function<bool()>& condition,
                std::chrono::milliseconds timeout = kBound) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(100ms);
  }
  return true;
}

// With `noisy`, the padding is random text, which the buffer's packing cannot shrink much (for
// a test that must fill a small buffer).
std::string eventsArray(int n, int offset, const std::string& type = "kiosk.view",
                        std::size_t pad = 300, bool noisy = false) {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::mt19937 rng(static_cast<unsigned>(offset));
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    std::string text(pad, 'p');
    for (auto& c : text) {
      if (noisy) {
        c = kChars[rng() % (sizeof(kChars) - 1)];
      }
    }
    a.push_back({{"type", type}, {"data", {{"n", offset + i}, {"pad", text}}}});
  }
  return a.dump();
}

// One event whose body does not compress: too large for a small broker packet even gzipped.
std::string incompressibleEvent(std::size_t bytes) {
  std::mt19937 rng(42);
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  std::string noise;
  for (std::size_t i = 0; i < bytes; ++i) {
    noise.push_back(kChars[rng() % (sizeof(kChars) - 1)]);
  }
  return json::array({{{"type", "kiosk.view"}, {"data", {{"noise", noise}}}}}).dump();
}

// An MQTT URL nobody listens on: the broker is "unreachable" at once.
std::string deadBroker() {
  return "mqtt://127.0.0.1:" + std::to_string(omniedge::testing::freePort());
}

std::map<std::string, std::string> httpsEnv(const CentralSim& sim, const std::string& mqtt_url,
                                            const std::string& cert = "client-store-1") {
  std::map<std::string, std::string> env = {
      {"OMNIEDGE_STORE_ID", kStore},
      {"OMNIEDGE_MQTT_URL", mqtt_url},
      {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
      {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"},
      {"OMNIEDGE_HTTPS_BASE_URL", sim.baseUrl()},
      {"OMNIEDGE_HTTPS_CA_FILE", sim.pki().file("ca.crt")},
      {"OMNIEDGE_HTTPS_FAILOVER_AFTER", "1"},
      {"OMNIEDGE_HTTPS_TIMEOUT", "5"},
  };
  if (!cert.empty()) {
    env["OMNIEDGE_HTTPS_CERT_FILE"] = sim.pki().file(cert + ".crt");
    env["OMNIEDGE_HTTPS_KEY_FILE"] = sim.pki().file(cert + ".key");
  }
  return env;
}

json status(const AgentProcess& agent) {
  auto r = agent.cli({"status", "--json"});
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);
}

// Posts and records each 202 answer as verify reads it (one line per answer).
void postAccepted(AgentProcess& agent, const std::string& body, std::ofstream& accepted) {
  auto [code, answer] = agent.post("/v1/events", body);
  REQUIRE(code == 202);
  accepted << json{{"ids", json::parse(answer)["ids"]}}.dump() << "\n";
  accepted.flush();
}

}  // namespace

TEST_CASE(
    "with MQTT unreachable every accepted event reaches the HTTPS endpoint as the contract "
    "shapes it",
    "[integration][https]") {
  CentralSim sim({});
  TempDir tmp;
  AgentProcess agent(tmp / "data", httpsEnv(sim, deadBroker()));
  REQUIRE(agent.start());
  std::ofstream accepted(tmp / "accepted.jsonl");
  for (int r = 0; r < 10; ++r) {
    postAccepted(agent, eventsArray(50, r * 50), accepted);
  }
  REQUIRE(eventually([&] { return status(agent)["queue"]["pending"] == 0; }));
  const auto v = sim.verify(tmp / "accepted.jsonl", "default/" + kStore);
  INFO(v.out);
  CHECK(v.exit_code == 0);
  CHECK_THAT(v.out, Catch::Contains("accepted 500, received 500, lost 0"));

  // Exactly as contract §3 and §6 shape it: the envelope, in a gzip batch over HTTPS.
  CHECK(sim.query("SELECT count(*) FROM batches WHERE via = 'mqtt'") == 0);
  CHECK(sim.query("SELECT count(*) FROM batches WHERE via = 'https' AND compression != 'gzip'") ==
        0);
  CHECK(sim.query("SELECT count(*) FROM batches WHERE via = 'https' AND problems IS NOT NULL "
                  "AND problems != '[]' AND problems != ''") == 0);
  const auto s = status(agent);
  const auto& https = s["uplink"]["https"];
  CHECK(https["state"] == "failover");
  CHECK(https["base_url"] == sim.baseUrl());
  CHECK(https["events"].get<int>() >= 500);
  CHECK(https["last_status_code"] == 200);
  CHECK(https["last_error"] == "");
  CHECK_THAT(s["uplink"]["mqtt"]["last_error"].get<std::string>(),
             Catch::Contains("broker unreachable"));
  // The gap check: every seq of the epoch received.
  const auto report = sim.report(kStore);
  CHECK(report["types"]["kiosk.view"] == 500);
  CHECK(report["gaps"]["verdict"] == "complete");
  CHECK(report["gaps"]["epochs"][0]["epoch"] == s["epoch"]);
  auto [code, metrics] = agent.get("/metrics");
  CHECK(code == 200);
  CHECK_THAT(metrics, Catch::Contains("omniedge_https_batches_total") &&
                          Catch::Contains("omniedge_https_backfilling 1"));
}

TEST_CASE("central-sim proves delivery after evictions, a quarantined event and an HTTPS backfill",
          "[integration][https][fault]") {
  MosquittoBroker broker;
  CentralSim::Options so;
  so.mqtt_url = broker.url();
  CentralSim sim(so);
  TempDir tmp;
  auto env = httpsEnv(sim, broker.url());
  env["OMNIEDGE_BUFFER_MAX_BYTES"] = "1MiB";
  env["OMNIEDGE_MQTT_MAX_PACKET_BYTES"] = "4096";
  env["OMNIEDGE_SYNC_BACKFILL_THRESHOLD"] = "200";
  env["OMNIEDGE_SYNC_STATUS_INTERVAL"] = "5";
  env["OMNIEDGE_MQTT_VERSION"] = "3.1.1";
  // Beacon events (low priority, the ones evicted) come through the API as a gateway bridge
  // would post them: with a token granted the beacon channel.
  std::ofstream(tmp / "tokens") << "bridge-token-0123456789 channels=kiosk,beacon\n";
  env["OMNIEDGE_HTTP_TOKENS_FILE"] = (tmp / "tokens").string();
  AgentProcess agent(tmp / "data", env);
  agent.setBearerToken("bridge-token-0123456789");
  REQUIRE(agent.start());
  std::ofstream accepted(tmp / "accepted.jsonl");

  // 1. An event too large for the broker: the MQTT link quarantines it (and reports it).
  REQUIRE(eventually([&] { return status(agent)["uplink"]["mqtt"]["state"] == "connected"; }));
  // (Not in accepted.jsonl: the centre never gets it, the gap check accounts for it.)
  REQUIRE(agent.post("/v1/events", incompressibleEvent(8000)).first == 202);
  REQUIRE(eventually([&] { return status(agent)["quarantine"]["events"] == 1; }));

  // 2. Both uplinks refuse: a backlog piles up, and beacon events are evicted to make room.
  broker.stop();
  sim.fail({"--status", "503", "--count", "-1"});
  for (int r = 0; r < 30; ++r) {
    auto [code, answer] =
        agent.post("/v1/events", eventsArray(50, r * 50, "beacon.enter", 900, true));
    REQUIRE(code == 202);  // low priority: room is made by evicting older beacons
  }
  REQUIRE(eventually([&] { return status(agent)["counters"]["evicted"].get<int>() > 0; }));
  for (int r = 0; r < 4; ++r) {
    postAccepted(agent, eventsArray(50, r * 50, "kiosk.view"), accepted);  // never evicted
  }

  // 3. The centre answers again; MQTT is still down: HTTPS backfills the whole backlog.
  sim.fail({"--clear"});
  REQUIRE(eventually([&] { return status(agent)["queue"]["pending"] == 0; }));
  // 4. MQTT back: the status (epoch, seq_last, nothing pending) lets the centre see the tail.
  broker.start();
  REQUIRE(eventually([&] { return status(agent)["uplink"]["mqtt"]["state"] == "connected"; }));
  json report;
  REQUIRE(eventually([&] {
    const auto s = status(agent);
    report = sim.report(kStore);
    return s["queue"]["pending"] == 0 && report.is_object() &&
           report["gaps"]["epochs"].size() == 1 &&
           report["gaps"]["epochs"][0]["agent_seq_last"] == s["seq_last"] &&
           report["gaps"]["epochs"][0]["agent_pending"] == 0;
  }));
  INFO(sim.reportText(kStore));
  const auto& gaps = report["gaps"];
  CHECK(gaps["verdict"] == "complete");
  CHECK(gaps["missing_seqs"] == 0);
  std::set<std::string> reasons;
  for (const auto& d : gaps["epochs"][0]["dropped"]) {
    reasons.insert(d["reason"].get<std::string>());
  }
  CHECK(reasons.count("buffer full: low-priority events evicted oldest-first") == 1);
  bool quarantine_reported = false;
  for (const auto& r : reasons) {
    quarantine_reported = quarantine_reported || r.find("maximum packet size") != std::string::npos;
  }
  CHECK(quarantine_reported);
  CHECK(report["uplinks"]["https"]["batches"].get<int>() > 0);
  CHECK(report["uplinks"]["mqtt"]["batches"].get<int>() > 0);
  // Every accepted kiosk event arrived (the beacons are accounted for by the gap check).
  const auto v = sim.verify(tmp / "accepted.jsonl", "default/" + kStore);
  INFO(v.out);
  CHECK(v.exit_code == 0);
  CHECK_THAT(v.out, Catch::Contains("lost 0"));
}

TEST_CASE("a backlog over sync.backfill_threshold goes over HTTPS while MQTT keeps the newest",
          "[integration][https]") {
  MosquittoBroker broker;
  CentralSim::Options so;
  so.mqtt_url = broker.url();
  CentralSim sim(so);
  TempDir tmp;
  auto env = httpsEnv(sim, broker.url());
  env["OMNIEDGE_SYNC_BACKFILL_THRESHOLD"] = "500";
  env["OMNIEDGE_SYNC_BATCH_MAX_EVENTS"] = "200";
  // One cap for both links: the backlog drains in seconds, long enough to share it.
  env["OMNIEDGE_SYNC_MAX_BYTES_PER_SEC"] = "20000";
  AgentProcess agent(tmp / "data", env);
  REQUIRE(agent.start());
  REQUIRE(eventually([&] { return status(agent)["uplink"]["mqtt"]["state"] == "connected"; }));
  std::ofstream accepted(tmp / "accepted.jsonl");
  for (int r = 0; r < 60; ++r) {
    postAccepted(agent, eventsArray(100, r * 100), accepted);
  }
  // A backfill round takes the head of the backlog over HTTPS.
  json https;
  REQUIRE(eventually(
      [&] {
        https = status(agent)["uplink"]["https"];
        return https["backfill_floor_seq"].get<int64_t>() > 0;
      },
      30s));
  INFO(https.dump());
  // Real-time events meanwhile: above the floor, MQTT's.
  std::set<std::string> realtime;
  for (int r = 0; r < 20; ++r) {
    auto [code, body] = agent.post("/v1/events", eventsArray(5, 100000 + r * 5));
    REQUIRE(code == 202);
    const auto answer = json::parse(body);
    accepted << json{{"ids", answer["ids"]}}.dump() << "\n";
    for (const auto& id : answer["ids"]) {
      realtime.insert(id.get<std::string>());
    }
    std::this_thread::sleep_for(50ms);
  }
  accepted.flush();
  REQUIRE(eventually([&] { return status(agent)["queue"]["pending"] == 0; }));
  REQUIRE(eventually([&] { return sim.uniqueEvents(kStore) >= 6100; }));
  const auto v = sim.verify(tmp / "accepted.jsonl", "default/" + kStore);
  INFO(v.out);
  CHECK(v.exit_code == 0);
  const auto report = sim.report(kStore);
  CHECK(report["uplinks"]["https"]["new"].get<int>() > 0);
  CHECK(report["uplinks"]["mqtt"]["new"].get<int>() > 0);
  CHECK(report["gaps"]["missing_seqs"] == 0);
  // Not starved: the real-time events went over MQTT, not behind the backlog on HTTPS.
  int64_t via_mqtt = 0;
  for (const auto& id : realtime) {
    via_mqtt +=
        sim.query("SELECT count(*) FROM events WHERE id = '" + id + "' AND first_via = 'mqtt'");
  }
  CHECK(via_mqtt > static_cast<int64_t>(realtime.size()) / 2);
}

TEST_CASE("the broker list: node A killed under load, the agent moves to node B, nothing lost",
          "[integration][https][failover][fault]") {
  MosquittoBroker a;
  MosquittoBroker b;
  Subscriber sub_a(a.url(), "omniedge/v1/+/+/events");
  Subscriber sub_b(b.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", a.url() + "," + b.url()},
                                    {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"},
                                    {"OMNIEDGE_SYNC_MAX_BYTES_PER_SEC", "400000"}});
  REQUIRE(agent.start());
  std::vector<std::string> ids;
  auto post = [&](int r) {
    auto [code, body] = agent.post("/v1/events", eventsArray(100, r * 100));
    REQUIRE(code == 202);
    const auto answer = json::parse(body);
    for (const auto& id : answer["ids"]) {
      ids.push_back(id.get<std::string>());
    }
  };
  for (int r = 0; r < 20; ++r) {
    post(r);
  }
  REQUIRE(sub_a.waitForEventIds(300, kBound));
  CHECK(status(agent)["uplink"]["mqtt"]["url"] == a.url());
  a.kill();
  for (int r = 20; r < 30; ++r) {
    post(r);  // under load while it fails over
  }
  REQUIRE(eventually([&] {
    const auto m = status(agent)["uplink"]["mqtt"];
    return m["state"] == "connected" && m["url"] == b.url();
  }));
  const auto m = status(agent)["uplink"]["mqtt"];
  CHECK(m["node"] == 1);
  CHECK(m["nodes"] == json::array({a.url(), b.url()}));
  REQUIRE(eventually([&] { return status(agent)["queue"]["pending"] == 0; }));
  a.start();  // what A had acknowledged before it died reaches its subscriber now
  std::size_t missing = ids.size();
  REQUIRE(eventually([&] {
    missing = 0;
    for (const auto& id : ids) {
      missing += sub_a.hasEventId(id) || sub_b.hasEventId(id) ? 0 : 1;
    }
    return missing == 0;
  }));
  CHECK(missing == 0);
}

namespace {

struct CertCase {
  std::string cert;  // "" = none
  std::string alert;
};

}  // namespace

TEST_CASE(
    "bad client certificates are refused by mosquitto and by the centre, with the reason in "
    "status and doctor",
    "[integration][https][tls]") {
  TempDir tmp;
  const SimPki pki = omniedge::testing::makeSimPki(tmp / "pki", kStore);
  // No certificate: "certificate required" (TLS 1.3) or "handshake failure" (TLS 1.2).
  const CertCase c = GENERATE(CertCase{"", ""}, CertCase{"client-selfsigned", "unknown ca"},
                              CertCase{"client-expired", "certificate expired"},
                              CertCase{"client-other-ca", "unknown ca"},
                              CertCase{"client-revoked", "certificate revoked"});
  CAPTURE(c.cert);
  const std::string hint =
      c.cert.empty() ? "presents no client certificate" : pki.file(c.cert + ".crt");

  SECTION("mosquitto with mutual TLS") {
    MosquittoBroker::Options bo;
    bo.tls = MosquittoBroker::Tls{pki.file("ca.crt"), pki.file("server.crt"),
                                  pki.file("server.key"), true};
    bo.extra_config = "crlfile " + pki.file("crl.pem") + "\n";
    MosquittoBroker broker(bo);
    std::map<std::string, std::string> env = {{"OMNIEDGE_MQTT_URL", broker.url()},
                                              {"OMNIEDGE_MQTT_CA_FILE", pki.file("ca.crt")},
                                              {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                              {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}};
    if (!c.cert.empty()) {
      env["OMNIEDGE_MQTT_CERT_FILE"] = pki.file(c.cert + ".crt");
      env["OMNIEDGE_MQTT_KEY_FILE"] = pki.file(c.cert + ".key");
    }
    AgentProcess agent(tmp / "data", env);
    REQUIRE(agent.start());
    std::string error;
    REQUIRE(eventually([&] {
      error = status(agent)["uplink"]["mqtt"]["last_error"].get<std::string>();
      return !error.empty();
    }));
    CHECK(status(agent)["uplink"]["mqtt"]["state"] == "disconnected");
    CHECK_THAT(error, Catch::Contains("refused the TLS connection (alert: " + c.alert) &&
                          Catch::Contains(hint));
    auto doctor = agent.cli({"doctor"});
    CHECK(doctor.exit_code == 1);
    CHECK_THAT(doctor.out, Catch::Contains("\u2717 mqtt broker") &&
                               Catch::Contains("(alert: " + c.alert) && Catch::Contains(hint));
  }
  SECTION("central-sim with mutual TLS") {
    CentralSim::Options so;
    so.pki_dir = pki.dir;
    CentralSim sim(so);
    AgentProcess agent(tmp / "data", httpsEnv(sim, deadBroker(), c.cert));
    REQUIRE(agent.start());
    REQUIRE(agent.post("/v1/events", eventsArray(1, 0)).first == 202);
    std::string error;
    REQUIRE(eventually([&] {
      error = status(agent)["uplink"]["https"]["last_error"].get<std::string>();
      return !error.empty();
    }));
    CHECK_THAT(error, Catch::Contains("refused the TLS connection (alert: " + c.alert) &&
                          Catch::Contains(hint));
    CHECK(status(agent)["queue"]["pending"].get<int>() >= 1);  // kept, not lost
    CHECK(sim.uniqueEvents(kStore) <= 0);
    auto doctor = agent.cli({"doctor"});
    CHECK(doctor.exit_code == 1);
    CHECK_THAT(doctor.out, Catch::Contains("\u2717 https endpoint") && Catch::Contains("(alert: "));
  }
}

TEST_CASE(
    "a broker or a centre with a certificate from a rogue CA is refused as a man in the "
    "middle",
    "[integration][https][tls]") {
  TempDir tmp;
  const SimPki pki = omniedge::testing::makeSimPki(tmp / "pki", kStore);
  SECTION("MQTT") {
    MosquittoBroker::Options bo;
    bo.tls = MosquittoBroker::Tls{pki.file("ca.crt"), pki.file("rogue-server.crt"),
                                  pki.file("rogue-server.key"), false};
    MosquittoBroker broker(bo);
    AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                      {"OMNIEDGE_MQTT_CA_FILE", pki.file("ca.crt")},
                                      {"OMNIEDGE_MQTT_CERT_FILE", pki.file("client-store-1.crt")},
                                      {"OMNIEDGE_MQTT_KEY_FILE", pki.file("client-store-1.key")}});
    REQUIRE(agent.start());
    std::string error;
    REQUIRE(eventually([&] {
      error = status(agent)["uplink"]["mqtt"]["last_error"].get<std::string>();
      return !error.empty();
    }));
    CHECK_THAT(error,
               Catch::Contains("certificate verify failed") && Catch::Contains("mqtt.ca_file"));
    auto doctor = agent.cli({"doctor"});
    CHECK_THAT(doctor.out, Catch::Contains("\u2717 mqtt broker") &&
                               Catch::Contains("certificate verify failed"));
  }
  SECTION("HTTPS") {
    CentralSim::Options so;
    so.pki_dir = pki.dir;
    so.server_cert = pki.file("rogue-server.crt");
    so.server_key = pki.file("rogue-server.key");
    CentralSim sim(so);
    AgentProcess agent(tmp / "data", httpsEnv(sim, deadBroker()));
    REQUIRE(agent.start());
    REQUIRE(agent.post("/v1/events", eventsArray(1, 0)).first == 202);
    std::string error;
    REQUIRE(eventually([&] {
      error = status(agent)["uplink"]["https"]["last_error"].get<std::string>();
      return !error.empty();
    }));
    CHECK_THAT(error, Catch::Contains("is not trusted") && Catch::Contains("https.ca_file"));
    auto doctor = agent.cli({"doctor"});
    CHECK_THAT(doctor.out, Catch::Contains("\u2717 https endpoint") &&
                               Catch::Contains("certificate verify failed"));
  }
  SECTION("verification explicitly off: HTTPS works, and doctor warns") {
    CentralSim::Options so;
    so.pki_dir = pki.dir;
    so.server_cert = pki.file("rogue-server.crt");
    so.server_key = pki.file("rogue-server.key");
    CentralSim sim(so);
    auto env = httpsEnv(sim, deadBroker());
    env["OMNIEDGE_HTTPS_INSECURE_SKIP_VERIFY"] = "true";
    AgentProcess agent(tmp / "data", env);
    REQUIRE(agent.start());
    REQUIRE(agent.post("/v1/events", eventsArray(5, 0)).first == 202);
    REQUIRE(eventually([&] { return sim.uniqueEvents(kStore) >= 5; }));
    auto doctor = agent.cli({"doctor"});
    CHECK_THAT(doctor.out, Catch::Contains("! https endpoint") && Catch::Contains("NOT verified"));
  }
}

TEST_CASE("resync-profiles fetches the HTTPS snapshot into the profile cache",
          "[integration][https]") {
  CentralSim sim({});
  TempDir tmp;
  tmp.write("p.jsonl",
            R"([{"id":"c-1","keys":["loyalty:LOY-1"],"segments":["vip"],"tier":"gold"}])");
  REQUIRE(omniedge::testing::runCentralSim(
              {"profiles", "load", "--db", sim.db(), (tmp / "p.jsonl").string()})
              .exit_code == 0);
  AgentProcess agent(tmp / "data", httpsEnv(sim, deadBroker()));
  REQUIRE(agent.start());
  // First start: the snapshot is fetched.
  REQUIRE(eventually([&] { return agent.get("/v1/customers/loyalty:LOY-1").first == 200; }));
  CHECK(json::parse(agent.get("/v1/customers/loyalty:LOY-1").second)["tier"] == "gold");
  CHECK(json::parse(tmp.read("data/profiles.cursor"))["complete"] == true);
  // A profile added at the centre arrives after resync-profiles.
  tmp.write("q.jsonl", R"([{"id":"c-2","keys":["loyalty:LOY-2"],"tier":"silver"}])");
  REQUIRE(omniedge::testing::runCentralSim(
              {"profiles", "load", "--db", sim.db(), (tmp / "q.jsonl").string()})
              .exit_code == 0);
  auto r = agent.cli({"resync-profiles"});
  CHECK(r.exit_code == 0);
  REQUIRE(eventually([&] { return agent.get("/v1/customers/loyalty:LOY-2").first == 200; }));
  CHECK(status(agent)["uplink"]["https"]["profiles"]["pages"].get<int>() >= 2);

  // Offline after a restart: neither the broker nor the centre answers, the kiosk still gets
  // both profiles from the cache on disk.
  REQUIRE(agent.stop() == 0);
  auto offline = httpsEnv(sim, deadBroker());
  offline["OMNIEDGE_HTTPS_BASE_URL"] =
      "https://127.0.0.1:" + std::to_string(omniedge::testing::freePort());
  AgentProcess cut_off(tmp / "data", offline);
  REQUIRE(cut_off.start());
  auto [code, body] = cut_off.get("/v1/customers/loyalty:LOY-1");
  CHECK(code == 200);
  CHECK(json::parse(body)["tier"] == "gold");
  CHECK(cut_off.get("/v1/customers/loyalty:LOY-2").first == 200);
}
