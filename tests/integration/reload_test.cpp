// SIGHUP (systemctl reload): the configuration file read again and applied in place; a bad file
// changes nothing and says why.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/temp_dir.h"

using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::TempDir;
using namespace std::chrono_literals;

namespace {

json status(const AgentProcess& agent) {
  auto r = agent.cli({"status", "--json"});
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);
}

// Waits (bounded) until the daemon reports a reload after `before` reloads were seen.
json waitReload(const AgentProcess& agent, const json& previous) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    const json s = status(agent);
    if (s.contains("last_reload") && s["last_reload"] != previous) {
      return s;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      FAIL("no reload reported in status: " << s.dump());
    }
    std::this_thread::sleep_for(100ms);
  }
}

}  // namespace

TEST_CASE(
    "SIGHUP reads the configuration file again and applies it in place, a bad file "
    "changes nothing and says why",
    "[integration][config][reload]") {
  TempDir tmp;
  const auto conf = tmp / "omniedge.conf";
  const std::string good = "[identity]\ndata_pii = hash\n[sync]\nbatch_max_events = 1000\n";
  std::ofstream(conf) << good;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_CONFIG", conf.string()},
                                    {"OMNIEDGE_MQTT_URL", "mqtt://127.0.0.1:9"}});
  REQUIRE(agent.start());
  const int pid = agent.pid();
  const std::string with_email = R"({"type":"kiosk.view","data":{"contact":"ada@example.com"}})";
  CHECK(agent.post("/v1/events", with_email).first == 202);  // hashed, kept

  std::ofstream(conf) << "[identity]\ndata_pii = reject\n[sync]\nbatch_max_events = 250\n";
  REQUIRE(kill(pid, SIGHUP) == 0);
  json s = waitReload(agent, json());
  CHECK(s["last_reload"]["ok"] == true);
  CHECK(s["last_reload"]["keys"] == json::array({"identity.data_pii", "sync.batch_max_events"}));
  auto [code, body] = agent.post("/v1/events", with_email);
  CHECK(code == 400);  // the new policy, in place
  CHECK_THAT(body, Catch::Contains("data.contact"));
  CHECK(agent.pid() == pid);  // the same process: reloaded, not restarted

  // A bad value: refused naming the key, the running configuration stays.
  std::ofstream(conf) << "[identity]\ndata_pii = sometimes\n";
  REQUIRE(kill(pid, SIGHUP) == 0);
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (agent.log().find("the running one stays") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(100ms);
  }
  CHECK_THAT(agent.log(),
             Catch::Contains("the running one stays") && Catch::Contains("identity.data_pii"));
  std::ofstream(conf) << good;  // (the CLI reads the file too)
  s = status(agent);
  CHECK(s["last_reload"]["ok"] == false);
  CHECK_THAT(s["last_reload"]["error"].get<std::string>(), Catch::Contains("identity.data_pii"));
  CHECK(agent.post("/v1/events", with_email).first == 400);  // still "reject"
  CHECK(agent.stop() == 0);
}
