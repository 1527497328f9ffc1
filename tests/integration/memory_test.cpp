// The daemon's resident memory as `ps` shows it: start-up's code pages are given back a few
// seconds after READY (agent/resident.h), and the daemon works on as before.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace {

// A field of /proc/PID/status in kB ("VmRSS", "VmHWM"), 0 when unknown.
uint64_t statusKb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with(field + ":")) {
      return std::stoull(line.substr(field.size() + 1));
    }
  }
  return 0;
}

// The names of the process's threads (/proc/PID/task/*/comm).
std::multiset<std::string> threadNames(pid_t pid) {
  std::multiset<std::string> out;
  std::error_code ec;
  for (const auto& t :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(t.path() / "comm");
    std::string name;
    if (std::getline(in, name)) {
      out.insert(name);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("the daemon gives back its start-up pages and then serves and delivers as before",
          "[integration][memory]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  AgentProcess agent(tmp / "data",
                     {{"OMNIEDGE_MQTT_URL", broker.url()}, {"OMNIEDGE_LOG_LEVEL", "debug"}});
  REQUIRE(agent.start());

  // At READY and 2 s later the daemon gives back start-up's code pages and says how many (its
  // debug log): at READY, at least 1 MB (config, schema checks, the loader's tables).
  const std::string marker = "start-up over: ";
  std::size_t at = std::string::npos;
  for (int i = 0; i < 100 && at == std::string::npos; ++i) {
    std::this_thread::sleep_for(100ms);
    at = agent.log().find(marker);
  }
  REQUIRE(at != std::string::npos);
  const std::string log = agent.log();
  std::smatch m;
  REQUIRE(std::regex_search(log, m, std::regex(R"(ready: (\d+) kB of code)")));
  const uint64_t released_kb = std::stoull(m[1].str());
  INFO("released " << released_kb << " kB; VmRSS " << statusKb(agent.pid(), "VmRSS")
                   << " kB, VmHWM " << statusKb(agent.pid(), "VmHWM") << " kB");
  CHECK(released_kb >= 1024);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // What `ps` shows is well below the start-up peak (a sanitizer's heap grows on its own).
  CHECK(statusKb(agent.pid(), "VmRSS") + 1024 <= statusKb(agent.pid(), "VmHWM"));
#endif

  // The pages come back as they are used: events are taken, stored and delivered.
  std::set<std::string> ids;
  for (int r = 0; r < 10; ++r) {
    json a = json::array();
    for (int i = 0; i < 100; ++i) {
      a.push_back({{"type", "kiosk.view"}, {"data", {{"n", r * 100 + i}}}});
    }
    auto [status, body] = agent.post("/v1/events", a.dump());
    REQUIRE(status == 202);
    const json answer = json::parse(body);
    for (const auto& id : answer["ids"]) {
      ids.insert(id.get<std::string>());
    }
  }
  REQUIRE(ids.size() == 1000);
  CHECK(omniedge::testing::waitForAllIds(sub, {ids.begin(), ids.end()}, 30s) == 0);
  const auto status = agent.cli({"status", "--json"});
  CHECK(status.exit_code == 0);
  INFO(status.out);
  CHECK(json::parse(status.out)["daemon"] == "running");
  CHECK(json::parse(status.out)["uplink"]["mqtt"]["state"] == "connected");
  // A technician's `top -H` tells the threads apart.
  const auto names = threadNames(agent.pid());
  for (const char* name : {"oe-writer", "oe-checkpoint", "oe-sync", "oe-http", "oe-http-worker",
                           "oe-control", "oe-triggers"}) {
    CAPTURE(name);
    CHECK(names.count(name) >= 1);
  }
  CHECK(agent.stop() == 0);
}
