// Consent that follows the data and erasure (issue 15 points 1 and 2) against the real binary:
// a refusal that arrives while the events wait in the buffer reaches them before they leave,
// and `omniedge forget` leaves nothing of the customer in the files.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
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
using omniedge::testing::publishMqtt;
using omniedge::testing::readFile;
using omniedge::testing::TempDir;
namespace fs = std::filesystem;

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

std::string deadBroker() {
  return "mqtt://127.0.0.1:" + std::to_string(omniedge::testing::freePort());
}

// MQTT unreachable; HTTPS serves profile snapshots, and takes the events only after
// `failover_s` (long: the events wait in the buffer).
std::map<std::string, std::string> httpsEnv(const CentralSim& sim, const std::string& failover_s) {
  return {{"OMNIEDGE_STORE_ID", kStore},
          {"OMNIEDGE_MQTT_URL", deadBroker()},
          {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
          {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"},
          {"OMNIEDGE_HTTPS_BASE_URL", sim.baseUrl()},
          {"OMNIEDGE_HTTPS_CA_FILE", sim.pki().file("ca.crt")},
          {"OMNIEDGE_HTTPS_CERT_FILE", sim.pki().file("client-store-1.crt")},
          {"OMNIEDGE_HTTPS_KEY_FILE", sim.pki().file("client-store-1.key")},
          {"OMNIEDGE_HTTPS_FAILOVER_AFTER", failover_s},
          {"OMNIEDGE_HTTPS_TIMEOUT", "5"}};
}

void loadProfiles(const CentralSim& sim, TempDir& tmp, const json& profiles) {
  tmp.write("profiles.json", profiles.dump());
  REQUIRE(omniedge::testing::runCentralSim(
              {"profiles", "load", "--db", sim.db(), (tmp / "profiles.json").string()})
              .exit_code == 0);
}

// The first file under `dir` whose raw bytes hold `needle`; "" when none does.
std::string fileHolding(const fs::path& dir, const std::string& needle) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec) && readFile(it->path()).find(needle) != std::string::npos) {
      return it->path().string();
    }
  }
  return "";
}

// Whether the buffer's events (pending and kept delivered ones), as `omniedge export` gives
// them back as JSON, hold `needle`: the buffer packs bodies with zstd, so raw bytes alone cannot
// tell what a body says.
bool bufferHolds(AgentProcess& agent, TempDir& tmp, const std::string& needle) {
  const auto out = tmp / "buffer-export.jsonl";
  auto r = agent.cli({"export", "--out", out.string(), "--force"});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  const bool holds = readFile(out).find(needle) != std::string::npos;
  fs::remove(out);
  return holds;
}

void post(AgentProcess& agent, const json& events) {
  auto [code, body] = agent.post("/v1/events", events.dump());
  INFO(body);
  REQUIRE(code == 202);
}

}  // namespace

TEST_CASE(
    "a tracking refusal that arrives while the events wait in the buffer reaches them, so the "
    "centre never sees the customer's identity and gets the counts",
    "[integration][consent]") {
  CentralSim sim({});
  TempDir tmp;
  AgentProcess agent(tmp / "data", httpsEnv(sim, "86400"));
  REQUIRE(agent.start());
  // The uplink is down: the kiosk's events wait in the buffer, with the customer's identity.
  post(agent, json::array({{{"type", "kiosk.view"},
                            {"customer", {{"loyalty_id", "L-REFUSE-9"}}},
                            {"data", {{"sku", "A-1"}, {"key", "loyalty:L-REFUSE-9"}}}},
                           {{"type", "kiosk.view"},
                            {"customer", {{"loyalty_id", "L-FINE-2"}}},
                            {"data", {{"sku", "B-2"}}}}}));
  REQUIRE(fileHolding(tmp / "data", "L-REFUSE-9") != "");

  // The centre's profile says: no tracking (through the HTTPS snapshot).
  loadProfiles(sim, tmp,
               json::array({{{"id", "c-9"},
                             {"keys", {"loyalty:L-REFUSE-9"}},
                             {"consent", {{"tracking", false}, {"marketing", false}}}}}));
  REQUIRE(agent.cli({"resync-profiles"}).exit_code == 0);
  REQUIRE(eventually([&] {
    return agent.log().find("consent: a refusal reached buffered events") != std::string::npos;
  }));
  // The buffer's files keep nothing of them (the profile cache keeps the profile: it is what
  // tells their refusal).
  for (const char* f : {"buffer.db", "buffer.db-wal"}) {
    INFO(f);
    CHECK(readFile(tmp / "data" / f).find("L-REFUSE-9") == std::string::npos);
  }

  // The uplink comes back.
  REQUIRE(agent.stop() == 0);
  AgentProcess online(tmp / "data", httpsEnv(sim, "0"));
  REQUIRE(online.start());
  REQUIRE(eventually([&] {
    return sim.query("SELECT count(*) FROM events WHERE type = 'agent.consent_applied'") == 1 &&
           sim.query("SELECT count(*) FROM events WHERE type = 'kiosk.view'") == 2;
  }));
  // What the centre received holds the other customer, and nothing of the one who refused
  // (its own profile snapshot aside).
  CHECK(sim.query("SELECT count(*) FROM events WHERE instr(body, 'L-FINE-2') > 0") == 1);
  CHECK(sim.query("SELECT count(*) FROM events WHERE instr(body, 'L-REFUSE-9') > 0") == 0);
  CHECK(sim.query("SELECT count(*) FROM rejects WHERE instr(excerpt, 'L-REFUSE-9') > 0") == 0);
  CHECK(sim.query("SELECT count(*) FROM events WHERE type = 'kiosk.view' AND "
                  "instr(body, '\"customer\":{}') > 0") == 1);
  CHECK(sim.query("SELECT count(*) FROM events WHERE type = 'agent.consent_applied' AND "
                  "instr(body, '\"events_dropped\":0') > 0 AND "
                  "instr(body, '\"events_anonymised\":1') > 0") == 1);
}

TEST_CASE(
    "omniedge forget erases a customer joined through their profile: buffered events, the "
    "cached profile and kept POS files, and none of their keys is left in the files",
    "[integration][erasure]") {
  CentralSim sim({});
  TempDir tmp;
  const fs::path spool = tmp / "spool";
  fs::create_directories(spool);
  loadProfiles(sim, tmp,
               json::array({{{"id", "c-5"},
                             {"keys", {"loyalty:L-ERASE-5", "app:A-ERASE-5"}},
                             {"name", "Erika Erase"},
                             {"consent", {{"tracking", true}}}}}));
  auto env = httpsEnv(sim, "86400");
  env["OMNIEDGE_POS_SPOOL_DIR"] = spool.string();
  AgentProcess agent(tmp / "data", env);
  REQUIRE(agent.start());
  REQUIRE(eventually([&] { return agent.get("/v1/customers/app:A-ERASE-5").first == 200; }));

  post(agent, json::array({{{"type", "kiosk.view"},
                            {"customer", {{"app_user_id", "A-ERASE-5"}}},
                            {"data", {{"sku", "A-1"}}}},
                           {{"type", "kiosk.view"},
                            {"customer", {{"loyalty_id", "L-KEEP-3"}}},
                            {"data", {{"sku", "B-2"}}}}}));
  // A sale at the till, kept in processed/ once ingested.
  tmp.write("sale.json", json{{"workstation", "31"},
                              {"sequence", 4711},
                              {"business_day", "2026-11-22"},
                              {"ended_at", "2026-11-22T13:32:42.123Z"},
                              {"currency", "EUR"},
                              {"lines", {{{"item_id", "SKU-1"}, {"quantity", 1}, {"amount", 2.5}}}},
                              {"totals", {{"grand", 2.5}}},
                              {"customer", {{"loyalty_id", "L-ERASE-5"}}}}
                             .dump());
  fs::copy_file(tmp / "sale.json", spool / ".sale.json.part");
  fs::rename(spool / ".sale.json.part", spool / "sale.json");
  REQUIRE(eventually([&] { return fs::exists(spool / "processed" / "sale.json"); }));
  REQUIRE(fileHolding(tmp / "data", "A-ERASE-5") != "");

  auto dry = agent.cli({"forget", "loyalty:L-ERASE-5", "--dry-run", "--json"});
  INFO(dry.out);
  REQUIRE(dry.exit_code == 0);
  CHECK(json::parse(dry.out.substr(dry.out.find('{')))["pos_files"]["deleted"] == 1);
  CHECK(fs::exists(spool / "processed" / "sale.json"));

  auto r = agent.cli({"forget", "loyalty:L-ERASE-5"});
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("L-ERASE-5") == std::string::npos);  // named by a hash only
  CHECK(r.out.find("pos_files: deleted=1") != std::string::npos);
  CHECK(r.out.find("profiles=1") != std::string::npos);

  CHECK(agent.get("/v1/customers/app:A-ERASE-5").first == 404);
  for (const std::string key : {"L-ERASE-5", "A-ERASE-5", "Erika Erase"}) {
    INFO(key);
    CHECK(fileHolding(tmp / "data", key) == "");
    CHECK(fileHolding(spool, key) == "");
    CHECK_FALSE(bufferHolds(agent, tmp, key));
  }
  CHECK(fileHolding(tmp / "data", "L-KEEP-3") != "");              // another customer stays
  CHECK(bufferHolds(agent, tmp, "\"type\":\"pos.transaction\""));  // the sale stays, anonymous

  // Unknown forms are refused without echoing the key.
  auto bad = agent.cli({"forget", "shoe:secret-44"});
  CHECK(bad.exit_code == 1);
  CHECK(bad.out.find("secret-44") == std::string::npos);
}

TEST_CASE(
    "the centre's forget command erases the customer, answers counts without their key, and "
    "leaves none of their keys in the data dir",
    "[integration][erasure][commands]") {
  MosquittoBroker broker;
  TempDir tmp;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}});
  REQUIRE(agent.start());
  const std::string root = "omniedge/v1/default/store-042";
  const json update = {
      {"upserts",
       {{{"id", "c-cmd-1"}, {"keys", {"loyalty:L-CMD-1", "app:A-CMD-1"}}, {"tier", "gold"}}}}};
  // The agent subscribes once connected: publish until the profile is there.
  REQUIRE(eventually([&] {
    publishMqtt(broker.url(), root + "/profiles", update.dump(), false);
    return agent.get("/v1/customers/app:A-CMD-1").first == 200;
  }));
  post(agent, json::array({{{"type", "kiosk.view"},
                            {"customer", {{"app_user_id", "A-CMD-1"}}},
                            {"data", {{"sku", "A-1"}}}}}));

  const auto sim = omniedge::testing::centralSim(
      {"cmd", "--mqtt", broker.url(), "--tenant", "default", "--store", "store-042", "forget",
       "--args", R"({"key":"loyalty:L-CMD-1"})", "--wait", "30"});
  INFO(sim.out << sim.err);
  REQUIRE(sim.exit_code == 0);
  const json answer = json::parse(sim.out);
  CHECK(answer["ok"] == true);
  CHECK(answer["result"]["complete"] == true);
  CHECK(answer["result"]["profiles"]["profiles"] == 1);
  CHECK(sim.out.find("L-CMD-1") == std::string::npos);
  CHECK(agent.get("/v1/customers/app:A-CMD-1").first == 404);
  // The command itself named the key: it leaves the inbox once answered.
  const bool gone = eventually(
      [&] {
        return fileHolding(tmp / "data", "L-CMD-1") == "" &&
               fileHolding(tmp / "data", "A-CMD-1") == "";
      },
      30s);
  INFO("still holding: " << fileHolding(tmp / "data", "L-CMD-1") << " "
                         << fileHolding(tmp / "data", "A-CMD-1"));
  CHECK(gone);
}
