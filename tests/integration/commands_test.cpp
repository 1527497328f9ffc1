// Commands from the centre (contract §5) through tools/central-sim `cmd --wait` against the real
// binary, and the inbound path's promise: what the broker handed over (profiles, commands) is
// not lost when the agent dies right after it arrived.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/central_sim.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::centralSim;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::publishMqtt;
using omniedge::testing::ReceivedMessage;
using omniedge::testing::SimResult;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace {

constexpr const char* kRoot = "omniedge/v1/default/store-042";

std::map<std::string, std::string> envFor(const MosquittoBroker& broker) {
  return {{"OMNIEDGE_MQTT_URL", broker.url()},
          {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
          {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}};
}

bool waitConnected(const AgentProcess& agent, std::chrono::seconds timeout = 30s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = agent.cli({"status", "--json"});
    if (r.exit_code == 0 && json::parse(r.out)["uplink"]["mqtt"]["state"] == "connected") {
      return true;
    }
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

json status(const AgentProcess& agent) {
  auto r = agent.cli({"status", "--json"});
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);
}

// `central-sim cmd NAME --wait 20`; returns (exit code, the result document).
std::pair<int, json> command(const MosquittoBroker& broker, const std::string& name,
                             const std::string& args = "", const std::string& id = "") {
  std::vector<std::string> argv = {"cmd",     "--mqtt",    broker.url(), "--tenant", "default",
                                   "--store", "store-042", name,         "--wait",   "20"};
  if (!args.empty()) {
    argv.insert(argv.end(), {"--args", args});
  }
  if (!id.empty()) {
    argv.insert(argv.end(), {"--id", id});
  }
  const SimResult r = centralSim(argv);
  INFO(r.err);
  REQUIRE((r.exit_code == 0 || r.exit_code == 1));
  return {r.exit_code, json::parse(r.out)};
}

// An event that even gzip cannot bring under 4 KiB.
std::string incompressibleEvent() {
  std::mt19937 rng(3);
  std::string text;
  for (int i = 0; i < 8000; ++i) {
    text += "0123456789abcdefghijklmnopqrstuvwxyz"[rng() % 36];
  }
  return json{{"type", "kiosk.note"}, {"data", {{"text", text}}}}.dump();
}

std::vector<json> results(const Subscriber& sub, const std::string& id) {
  std::vector<json> out;
  for (const auto& m : sub.messages()) {
    if (m.topic == std::string(kRoot) + "/cmd/result") {
      auto j = json::parse(m.payload);
      if (j["id"] == id) {
        out.push_back(j);
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("every command answers through central-sim, and a bad one says why",
          "[integration][commands]") {
  MosquittoBroker broker;
  TempDir tmp;
  tmp.write("hmac.key", "hmac-secret-never-in-diagnostics-0123456789");
  auto env = envFor(broker);
  env["OMNIEDGE_IDENTITY_HMAC_KEY_FILE"] = (tmp / "hmac.key").string();
  env["OMNIEDGE_MQTT_MAX_PACKET_BYTES"] = "4096";
  AgentProcess agent(tmp / "data", env);
  REQUIRE(agent.start());
  REQUIRE(waitConnected(agent));

  SECTION("ping") {
    auto [code, r] = command(broker, "ping");
    CHECK(code == 0);
    CHECK(r["ok"] == true);
    CHECK(r["result"]["pong"] == true);
    CHECK(r["result"]["store_id"] == "store-042");
  }
  SECTION("flush") {
    auto [code, r] = command(broker, "flush");
    CHECK(code == 0);
    CHECK(r["result"]["flushing"] == true);
    CHECK(r["result"]["pending"].is_number());
  }
  SECTION("resync-profiles forgets the profile cursor") {
    publishMqtt(broker.url(), std::string(kRoot) + "/profiles",
                R"({"upserts": [{"id": "c-1", "keys": ["loyalty:L-1"]}], "cursor": "rev-17"})");
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (agent.get("/v1/customers/loyalty:L-1").first != 200 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
    }
    REQUIRE(agent.get("/v1/customers/loyalty:L-1").first == 200);
    auto [code, r] = command(broker, "resync-profiles");
    CHECK(code == 0);
    CHECK(r["result"]["cursor_cleared"] == true);
    CHECK(r["result"]["previous_cursor"] == "rev-17");
    CHECK_THAT(r["result"]["snapshot"].get<std::string>(), Contains("not started"));
    auto [code2, r2] = command(broker, "resync-profiles");
    CHECK(r2["result"]["previous_cursor"].is_null());
    // The cached profiles themselves stay.
    CHECK(agent.get("/v1/customers/loyalty:L-1").first == 200);
  }
  SECTION("diagnostics: status, config and recent warnings, bounded, no secret") {
    // Something to report: an event too large for the broker is quarantined (an error).
    REQUIRE(agent.post("/v1/events", incompressibleEvent()).first == 202);
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (status(agent)["quarantine"]["events"] != 1 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(100ms);
    }
    const SimResult raw = centralSim({"cmd", "--mqtt", broker.url(), "--tenant", "default",
                                      "--store", "store-042", "diagnostics", "--wait", "20"});
    REQUIRE(raw.exit_code == 0);
    CHECK(raw.out.size() <= 64 * 1024 + 200);
    CHECK_THAT(raw.out, !Contains("hmac-secret-never-in-diagnostics"));
    const auto r = json::parse(raw.out);
    CHECK(r["result"]["status"]["store_id"] == "store-042");
    CHECK(r["result"]["config"]["identity.hmac_key_file"]["value"] == (tmp / "hmac.key").string());
    CHECK(r["result"]["config"]["mqtt.url"]["value"] == nlohmann::json::array({broker.url()}));
    bool reported = false;
    for (const auto& line : r["result"]["recent_logs"]) {
      reported = reported || (line["level"] == "error" && line["message"].get<std::string>().find(
                                                              "quarantined") != std::string::npos);
    }
    CHECK(reported);
    CHECK(r["result"]["truncated"] == false);
  }
  SECTION("retry-quarantine sends quarantined events again") {
    // Over mqtt.max_packet_bytes even alone: quarantined, never sent.
    REQUIRE(agent.post("/v1/events", incompressibleEvent()).first == 202);
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (status(agent)["quarantine"]["events"] != 1 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(100ms);
    }
    REQUIRE(status(agent)["quarantine"]["events"] == 1);
    auto [code, r] = command(broker, "retry-quarantine");
    CHECK(code == 0);
    CHECK(r["result"]["moved"] == 1);
    // Sent again, and (still too large) quarantined again.
    while (status(agent)["quarantine"]["quarantined_since_start"] != 2 &&
           std::chrono::steady_clock::now() < deadline + 20s) {
      std::this_thread::sleep_for(100ms);
    }
    CHECK(status(agent)["quarantine"]["quarantined_since_start"] == 2);
  }
  SECTION("an unknown command") {
    auto [code, r] = command(broker, "reboot");
    CHECK(code == 1);
    CHECK(r["ok"] == false);
    CHECK_THAT(r["error"].get<std::string>(),
               Contains("unknown command 'reboot'") && Contains("set-log-level"));
  }
  SECTION("bad arguments") {
    auto [code, r] = command(broker, "set-log-level", R"({"level": "loud"})");
    CHECK(code == 1);
    CHECK_THAT(r["error"].get<std::string>(), Contains("args.level") && Contains("\"loud\""));
    auto [code2, r2] = command(broker, "ping", R"({"x": 1})");
    CHECK(code2 == 1);
    CHECK_THAT(r2["error"].get<std::string>(), Contains("ping takes no arguments, got args.x"));
    auto [code3, r3] = command(broker, "set-log-level", R"({"level": "debug", "duration": 0})");
    CHECK(code3 == 1);
    CHECK_THAT(r3["error"].get<std::string>(), Contains("args.duration"));
    CHECK(status(agent)["log_level"] == "info");
  }
}

TEST_CASE("set-log-level raises the level for its time limit, then the configured level is back",
          "[integration][commands]") {
  MosquittoBroker broker;
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  REQUIRE(waitConnected(agent));
  auto [code, r] = command(broker, "set-log-level", R"({"level": "debug", "duration": 2})");
  REQUIRE(code == 0);
  CHECK(r["result"]["level"] == "debug");
  CHECK(r["result"]["previous"] == "info");
  CHECK(r["result"]["then"] == "info");
  const auto s = status(agent);
  CHECK(s["log_level"] == "debug");
  CHECK(s["log_level_until"] == r["result"]["until"]);
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (status(agent)["log_level"] != "info" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(200ms);
  }
  CHECK(status(agent)["log_level"] == "info");
  CHECK(status(agent)["log_level_until"] == "");
  CHECK_THAT(agent.log(), Contains("log level back to info"));
}

TEST_CASE("a command id is executed once, also when delivered twice and across a restart",
          "[integration][commands]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), std::string(kRoot) + "/cmd/result");
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  REQUIRE(waitConnected(agent));

  auto [code, first] = command(broker, "ping", "", "dup-1");
  REQUIRE(code == 0);
  auto [code2, second] = command(broker, "ping", "", "dup-1");
  CHECK(code2 == 0);
  CHECK(second == first);  // the stored answer: same "at", not a new ping
  auto s = status(agent);
  CHECK(s["commands"]["executed"] == 1);
  CHECK(s["commands"]["answered_again"] == 1);

  // The same message twice on the wire, as a QoS 1 redelivery would bring it.
  const std::string dup2 = R"({"id": "dup-2", "name": "set-log-level", "args": {"level": "warn"}})";
  publishMqtt(broker.url(), std::string(kRoot) + "/cmd", dup2);
  publishMqtt(broker.url(), std::string(kRoot) + "/cmd", dup2);
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (results(sub, "dup-2").size() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
  }
  const auto answers = results(sub, "dup-2");
  REQUIRE(answers.size() == 2);
  CHECK(answers[0] == answers[1]);
  s = status(agent);
  CHECK(s["commands"]["executed"] == 2);
  CHECK(s["commands"]["answered_again"] == 2);

  // After a restart the journal still knows the id.
  REQUIRE(agent.stop() == 0);
  REQUIRE(agent.start());
  REQUIRE(waitConnected(agent));
  auto [code3, third] = command(broker, "ping", "", "dup-1");
  CHECK(code3 == 0);
  CHECK(third == first);
  s = status(agent);
  CHECK(s["commands"]["executed"] == 0);
  CHECK(s["commands"]["answered_again"] == 1);
}

TEST_CASE(
    "profiles and commands that arrive just before a SIGKILL are applied and answered after "
    "the restart",
    "[integration][commands][fault]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), std::string(kRoot) + "/cmd/result");
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  REQUIRE(waitConnected(agent));

  std::mt19937 rng(7);
  constexpr int kRounds = 20;
  for (int i = 0; i < kRounds; ++i) {
    const std::string n = std::to_string(i);
    publishMqtt(broker.url(), std::string(kRoot) + "/cmd",
                R"({"id": "k-)" + n + R"(", "name": "ping"})");
    publishMqtt(broker.url(), std::string(kRoot) + "/profiles",
                R"({"upserts": [{"id": "p-)" + n + R"(", "keys": ["loyalty:K-)" + n + R"("]}]})");
    // Dead while the messages arrive, or just after the broker had them acknowledged.
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 120));
    agent.kill9();
    REQUIRE(agent.start());
  }
  REQUIRE(waitConnected(agent));
  for (int i = 0; i < kRounds; ++i) {
    const std::string n = std::to_string(i);
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while ((results(sub, "k-" + n).empty() ||
            agent.get("/v1/customers/loyalty:K-" + n).first != 200) &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
    }
    INFO("round " << i);
    CHECK_FALSE(results(sub, "k-" + n).empty());
    CHECK(agent.get("/v1/customers/loyalty:K-" + n).first == 200);
  }
  CHECK(status(agent)["inbound"]["pending"] == 0);
}
