// Remote config (contract §5, quality.md S3) against the real binary, a real mosquitto, and
// tools/central-sim signing and publishing as the centre does: what R/config/reported says,
// and whether the effective configuration (`omniedge config show --json`, status) changed.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/central_sim.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::centralSim;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::publishMqtt;
using omniedge::testing::ReceivedMessage;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace {

constexpr const char* kStore = "store-042";
constexpr const char* kRoot = "omniedge/v1/default/store-042";

// A broker, a listener on everything, signing keys made by central-sim, and the agent.
class Centre {
 public:
  using Env = std::map<std::string, std::string>;
  explicit Centre(Env extra_env = {}, bool with_key = true) : sub_(broker_.url(), "omniedge/v1/#") {
    auto keys = centralSim({"keygen", "--out", (tmp_ / "keys").string()});
    REQUIRE(keys.exit_code == 0);
    key_ = json::parse(keys.out)["private_key"].get<std::string>();
    pub_ = json::parse(keys.out)["public_key"].get<std::string>();
    std::map<std::string, std::string> env = {{"OMNIEDGE_MQTT_URL", broker_.url()},
                                              {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                              {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}};
    if (with_key) {
      env["OMNIEDGE_CONFIG_VERIFY_KEY_FILE"] = pub_;
    }
    for (auto& [k, v] : extra_env) {
      env[k] = v;
    }
    agent_ = std::make_unique<AgentProcess>(tmp_ / "data", env);
    REQUIRE(agent_->start());
    REQUIRE(waitConnected());
  }

  AgentProcess& agent() { return *agent_; }
  MosquittoBroker& broker() { return broker_; }
  Subscriber& sub() { return sub_; }
  TempDir& tmp() { return tmp_; }
  const std::string& key() const { return key_; }

  json status() {
    auto r = agent_->cli({"status", "--json"});
    REQUIRE(r.exit_code == 0);
    return json::parse(r.out);
  }

  bool waitConnected(std::chrono::seconds timeout = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = agent_->cli({"status", "--json"});
      if (r.exit_code == 0 && json::parse(r.out)["uplink"]["mqtt"]["state"] == "connected") {
        return true;
      }
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  /// The effective value and where it came from, as `config show --json` says.
  std::pair<json, std::string> shown(const std::string& key) {
    auto r = agent_->cli({"config", "show", "--json"});
    REQUIRE(r.exit_code == 0);
    const auto j = json::parse(r.out);
    std::string origin = j[key]["origin"].get<std::string>();
    if (!j[key]["detail"].get<std::string>().empty()) {
      origin += " " + j[key]["detail"].get<std::string>();
    }
    return {j[key]["value"], origin};
  }

  /// central-sim config for this store (or --all), signed with `key` unless args say otherwise;
  /// returns the payload published.
  std::string publishConfig(int version, const std::string& settings,
                            std::vector<std::string> extra = {}, const std::string& key = "") {
    std::vector<std::string> args = {"config",  "--mqtt",    broker_.url(),           "--tenant",
                                     "default", "--version", std::to_string(version), "--settings",
                                     settings};
    if (std::find(extra.begin(), extra.end(), "--all") == extra.end()) {
      args.insert(args.end(), {"--store", kStore});
    }
    if (std::find(extra.begin(), extra.end(), "--unsigned") == extra.end()) {
      args.insert(args.end(), {"--key", key.empty() ? key_ : key});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = centralSim(args);
    REQUIRE(r.exit_code == 0);
    return json::parse(r.out)["payload"].get<std::string>();
  }

  std::vector<json> reports() const {
    std::vector<json> out;
    for (const auto& m : sub_.messages()) {
      if (m.topic == std::string(kRoot) + "/config/reported") {
        out.push_back(json::parse(m.payload));
      }
    }
    return out;
  }

  /// Waits for a report after the first `after` ones with this version and status.
  json waitReport(std::size_t after, int64_t version, const std::string& status,
                  std::chrono::seconds timeout = 30s) {
    json found;
    const std::string topic = std::string(kRoot) + "/config/reported";
    sub_.waitFor(
        [&](const std::vector<ReceivedMessage>& msgs) {
          std::size_t seen = 0;
          for (const auto& m : msgs) {
            if (m.topic != topic) {
              continue;
            }
            if (seen++ < after) {
              continue;
            }
            auto j = json::parse(m.payload, nullptr, false);
            if (j.is_object() && j["version"] == version && j["status"] == status) {
              found = j;
              return true;
            }
          }
          return false;
        },
        timeout);
    INFO("reports: " << json(reports()).dump());
    REQUIRE(found.is_object());
    return found;
  }

 private:
  MosquittoBroker broker_;
  Subscriber sub_;
  TempDir tmp_;
  std::string key_;
  std::string pub_;
  std::unique_ptr<AgentProcess> agent_;
};

std::string eventsArray(int n) {
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    a.push_back({{"type", "kiosk.view"}, {"data", {{"n", i}}}});
  }
  return a.dump();
}

}  // namespace

TEST_CASE(
    "a signed config is applied hot: the log level changes without a reconnect and the "
    "next batches are smaller",
    "[integration][remote]") {
  Centre c;
  const auto before = c.status()["uplink"]["mqtt"];
  CHECK(c.shown("log.level") == std::pair<json, std::string>("info", "env OMNIEDGE_LOG_LEVEL"));

  const auto n = c.reports().size();
  c.publishConfig(1, R"({"log.level": "debug", "sync.batch_max_events": 5})");
  const auto report = c.waitReport(n, 1, "applied");
  CHECK(report["error"] == "");
  CHECK(report["source"] == "store");

  CHECK(c.shown("log.level") == std::pair<json, std::string>("debug", "remote v1 for this store"));
  CHECK(c.shown("sync.batch_max_events") ==
        std::pair<json, std::string>(5, "remote v1 for this store"));
  const auto after = c.status();
  CHECK(after["config_version"] == 1);
  CHECK(after["log_level"] == "debug");
  CHECK(after["remote_config"]["confirmed"] == true);
  // Applied hot: the connection was never closed.
  CHECK(after["uplink"]["mqtt"]["connect_attempts"] == before["connect_attempts"]);
  CHECK(after["uplink"]["mqtt"]["reconnects"] == before["reconnects"]);
  CHECK(after["uplink"]["mqtt"]["state"] == "connected");

  // The batches after it hold at most 5 events.
  auto [code, body] = c.agent().post("/v1/events", eventsArray(23));
  REQUIRE(code == 202);
  const auto ids = json::parse(body)["ids"].get<std::vector<std::string>>();
  REQUIRE(omniedge::testing::waitForAllIds(c.sub(), ids, 30s) == 0);
  const std::set<std::string> ours(ids.begin(), ids.end());
  int batches = 0;
  for (const auto& m : c.sub().messages()) {
    if (m.topic != std::string(kRoot) + "/events") {
      continue;
    }
    const auto batch = json::parse(m.payload);
    bool mine = false;
    for (const auto& e : batch["events"]) {
      mine = mine || ours.count(e["id"].get<std::string>()) != 0;
    }
    if (mine) {
      ++batches;
      CHECK(batch["count"].get<int>() <= 5);
    }
  }
  CHECK(batches >= 5);
}

TEST_CASE("forged, replayed and invalid configs are rejected with the reason and change nothing",
          "[integration][remote]") {
  Centre c;
  const auto n = c.reports().size();
  json report;
  SECTION("unsigned") {
    c.publishConfig(1, R"({"log.level": "debug"})", {"--unsigned"});
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(),
               Contains("unsigned config refused") && Contains("config.verify_key_file"));
  }
  SECTION("tampered bytes") {
    c.publishConfig(1, R"({"log.level": "debug"})", {"--tamper"});
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(), Contains("bad signature"));
  }
  SECTION("tampered settings under the original signature") {
    c.publishConfig(1, R"({"log.level": "info"})", {"--tamper", R"({"log.level": "debug"})"});
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(), Contains("bad signature"));
  }
  SECTION("signed with a foreign key") {
    auto other = centralSim({"keygen", "--out", (c.tmp() / "other").string()});
    REQUIRE(other.exit_code == 0);
    c.publishConfig(1, R"({"log.level": "debug"})", {},
                    json::parse(other.out)["private_key"].get<std::string>());
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(),
               Contains("bad signature") && Contains("signed with another key"));
  }
  SECTION("expired") {
    c.publishConfig(1, R"({"log.level": "debug"})", {"--expires-at", "2020-01-01T00:00:00Z"});
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(), Contains("expired at 2020-01-01T00:00:00.000Z"));
  }
  SECTION("an unknown key") {
    c.publishConfig(1, R"({"log.level": "debug", "sync.batch_max_event": 5})");
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(),
               Contains("unknown key sync.batch_max_event") && Contains("remote config"));
  }
  SECTION("a key that is not remote-settable") {
    c.publishConfig(1, R"({"log.level": "debug", "identity.hmac_key_file": "/tmp/k"})");
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(),
               Contains("identity.hmac_key_file") && Contains("not remote-settable"));
  }
  SECTION("a bad value") {
    c.publishConfig(1, R"({"log.level": "loud"})");
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(), Contains("log.level = \"loud\""));
  }
  SECTION("a replayed older version") {
    const auto v1 = c.publishConfig(1, R"({"log.level": "warn"})");
    c.waitReport(n, 1, "applied");
    c.publishConfig(2, R"({"log.level": "info"})");
    c.waitReport(n, 2, "applied");
    // The saved version 1 payload, exactly as signed, published again.
    publishMqtt(c.broker().url(), std::string(kRoot) + "/config/desired", v1, true);
    report = c.waitReport(n, 1, "rejected");
    CHECK_THAT(report["error"].get<std::string>(),
               Contains("version 1 is not greater than 2") && Contains("replay"));
    CHECK(c.shown("log.level") == std::pair<json, std::string>("info", "remote v2 for this store"));
    CHECK(c.status()["config_version"] == 2);
    return;
  }
  CHECK(report["source"] == "store");
  // Nothing changed.
  CHECK(c.shown("log.level") == std::pair<json, std::string>("info", "env OMNIEDGE_LOG_LEVEL"));
  const auto s = c.status();
  CHECK(s["config_version"] == 0);
  CHECK(s["log_level"] == "info");
}

TEST_CASE("an applied config survives a restart, and a lower version is refused after it",
          "[integration][remote]") {
  Centre c;
  const auto n = c.reports().size();
  c.publishConfig(3, R"({"log.level": "debug"})");
  c.waitReport(n, 3, "applied");
  REQUIRE(c.agent().stop() == 0);
  REQUIRE(c.agent().start());
  REQUIRE(c.waitConnected());
  CHECK(c.shown("log.level") == std::pair<json, std::string>("debug", "remote v3 for this store"));
  CHECK(c.status()["config_version"] == 3);
  CHECK(c.status()["log_level"] == "debug");

  const auto m = c.reports().size();
  c.publishConfig(2, R"({"log.level": "warn"})");
  const auto report = c.waitReport(m, 2, "rejected");
  CHECK_THAT(report["error"].get<std::string>(), Contains("version 2 is not greater than 3"));
  CHECK(c.shown("log.level") == std::pair<json, std::string>("debug", "remote v3 for this store"));
  // The retained version 3, handed over again at every subscribe, was never reported again
  // as anything but applied.
  for (const auto& r : c.reports()) {
    if (r["version"] == 3) {
      CHECK(r["status"] == "applied");
    }
  }
}

TEST_CASE("the store's own config wins over the tenant-wide one, key by key",
          "[integration][remote]") {
  Centre c;
  const auto n = c.reports().size();
  c.publishConfig(1, R"({"log.level": "warn", "sync.batch_max_events": 7})", {"--all"});
  const auto all = c.waitReport(n, 1, "applied");
  CHECK(all["source"] == "all");
  CHECK(c.shown("log.level") == std::pair<json, std::string>("warn", "remote v1 for all stores"));

  c.publishConfig(4, R"({"log.level": "debug"})");
  const auto own = c.waitReport(n, 4, "applied");
  CHECK(own["source"] == "store");
  CHECK(c.shown("log.level") == std::pair<json, std::string>("debug", "remote v4 for this store"));
  CHECK(c.shown("sync.batch_max_events") ==
        std::pair<json, std::string>(7, "remote v1 for all stores"));
  const auto s = c.status();
  CHECK(s["remote_config"]["store_version"] == 4);
  CHECK(s["remote_config"]["all_version"] == 1);
  CHECK(s["log_level"] == "debug");
}

TEST_CASE(
    "a config whose broker URL leads nowhere is rolled back when the uplink does not come "
    "back",
    "[integration][remote][fault]") {
  Centre c(Centre::Env{{"OMNIEDGE_CONFIG_ROLLBACK_AFTER", "10"}});
  const std::string nowhere = "mqtt://127.0.0.1:" + std::to_string(omniedge::testing::freePort());
  const auto n = c.reports().size();
  c.publishConfig(1, R"({"mqtt.url": ")" + nowhere + R"(", "log.level": "debug"})");

  // Events accepted meanwhile are not lost: they wait in the buffer.
  std::this_thread::sleep_for(500ms);
  auto [code, body] = c.agent().post("/v1/events", eventsArray(10));
  REQUIRE(code == 202);
  const auto ids = json::parse(body)["ids"].get<std::vector<std::string>>();

  const auto report = c.waitReport(n, 1, "rolled_back", 90s);
  CHECK_THAT(report["error"].get<std::string>(),
             Contains("the uplink did not connect to " + nowhere + " within 10 s") &&
                 Contains("config.rollback_after") && Contains("back to no store config"));
  REQUIRE(c.waitConnected());
  CHECK(c.shown("mqtt.url") ==
        std::pair<json, std::string>(json::array({c.broker().url()}), "env OMNIEDGE_MQTT_URL"));
  CHECK(c.shown("log.level") == std::pair<json, std::string>("info", "env OMNIEDGE_LOG_LEVEL"));
  CHECK(c.status()["config_version"] == 0);
  CHECK(omniedge::testing::waitForAllIds(c.sub(), ids, 30s) == 0);
  // The last report, the retained one, is the rollback (after "applied", sent once the uplink
  // was back).
  CHECK(c.sub().waitFor(
      [](const std::vector<ReceivedMessage>& msgs) {
        for (auto it = msgs.rbegin(); it != msgs.rend(); ++it) {
          if (it->topic == std::string(kRoot) + "/config/reported") {
            return json::parse(it->payload)["status"] == "rolled_back";
          }
        }
        return false;
      },
      30s));

  // The document given up stays refused: after a restart the retained copy changes nothing.
  REQUIRE(c.agent().stop() == 0);
  REQUIRE(c.agent().start());
  REQUIRE(c.waitConnected());
  CHECK(c.shown("mqtt.url") ==
        std::pair<json, std::string>(json::array({c.broker().url()}), "env OMNIEDGE_MQTT_URL"));
}

TEST_CASE("ops make keys and signed documents with omniedge alone, and the agent applies them",
          "[integration][remote]") {
  TempDir ops;
  const AgentProcess tool(ops / "unused", {});
  auto keygen = tool.cli({"config", "keygen", "--out", (ops / "keys").string()});
  REQUIRE(keygen.exit_code == 0);
  CHECK(std::filesystem::status(ops / "keys/signing.key").permissions() ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));
  // A second keygen never overwrites the key.
  auto again = tool.cli({"config", "keygen", "--out", (ops / "keys").string()});
  CHECK(again.exit_code == 1);
  CHECK_THAT(again.out, Contains("not overwritten"));

  ops.write("doc.json", "{\"version\": 9,\n \"settings\": {\"log.level\": \"debug\"}}\n");
  auto sign =
      tool.cli({"config", "sign", (ops / "doc.json").string(), "--key",
                (ops / "keys/signing.key").string(), "--out", (ops / "signed.json").string()});
  REQUIRE(sign.exit_code == 0);
  ops.write("bad.json", R"({"version": 1, "settings": {"data.dir": "/elsewhere"}})");
  auto bad = tool.cli({"config", "sign", (ops / "bad.json").string(), "--key",
                       (ops / "keys/signing.key").string()});
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.out, Contains("data.dir") && Contains("not remote-settable"));

  Centre c(Centre::Env{{"OMNIEDGE_CONFIG_VERIFY_KEY_FILE", (ops / "keys/signing.pub").string()}});
  const auto n = c.reports().size();
  // Signed by central-sim's key: not the one this store trusts.
  c.publishConfig(8, R"({"log.level": "warn"})");
  CHECK_THAT(c.waitReport(n, 8, "rejected")["error"].get<std::string>(), Contains("bad signature"));
  publishMqtt(c.broker().url(), std::string(kRoot) + "/config/desired", ops.read("signed.json"),
              true);
  c.waitReport(n, 9, "applied");
  CHECK(c.shown("log.level") == std::pair<json, std::string>("debug", "remote v9 for this store"));
}

TEST_CASE("new beacon zones are taken by the running driver, other beacon keys restart only it",
          "[integration][remote][beacon]") {
  MosquittoBroker gateways;
  Centre c(Centre::Env{{"OMNIEDGE_BEACON_MQTT_URL", gateways.url()},
                       {"OMNIEDGE_BEACON_ZONES", "s1=door"}});
  const auto n = c.reports().size();
  c.publishConfig(1, R"({"beacon.zones": ["s1=till", "s2=till"]})");
  c.waitReport(n, 1, "applied");
  CHECK(c.shown("beacon.zones") == std::pair<json, std::string>(json::array({"s1=till", "s2=till"}),
                                                                "remote v1 for this store"));
  CHECK_THAT(c.agent().log(), Contains("the beacon driver took the new settings in place"));
  CHECK_THAT(c.agent().log(), !Contains("the beacon driver restarted"));

  c.publishConfig(2, R"({"beacon.zones": ["s1=till"], "beacon.exit_after": 60})");
  c.waitReport(n, 2, "applied");
  CHECK_THAT(c.agent().log(), Contains("the beacon driver restarted with the new settings"));
  // Running again (its first connect to the gateways' broker may still be under way).
  bool beacon_running = false;
  json drivers;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!beacon_running && std::chrono::steady_clock::now() < deadline) {
    drivers = c.status()["drivers"];
    for (const auto& d : drivers) {
      beacon_running = beacon_running || (d["name"] == "beacon" && d["state"] == "running");
    }
    std::this_thread::sleep_for(100ms);
  }
  INFO(drivers.dump());
  CHECK(beacon_running);
  // The uplink never noticed.
  CHECK(c.status()["uplink"]["mqtt"]["reconnects"] == 0);
}
