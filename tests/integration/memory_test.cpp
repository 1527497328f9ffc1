// The daemon's resident memory as `ps` shows it: start-up's code pages are given back a few
// seconds after READY (agent/resident.h), and the daemon works on as before.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
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

// A field of /proc/PID/status in kB ("RssFile", "VmRSS"), 0 when unknown.
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

}  // namespace

TEST_CASE("the daemon gives back its start-up pages and then serves and delivers as before",
          "[integration][memory]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()}});
  REQUIRE(agent.start());
  const uint64_t file_at_ready = statusKb(agent.pid(), "RssFile");
  REQUIRE(file_at_ready > 0);

  // Within a few seconds of READY the file-backed part of the resident set shrinks (start-up
  // code: config, schema checks, OpenSSL's and the loader's tables) by at least 1 MB.
  uint64_t file_now = file_at_ready;
  for (int i = 0; i < 100 && file_now + 1024 > file_at_ready; ++i) {
    std::this_thread::sleep_for(100ms);
    file_now = statusKb(agent.pid(), "RssFile");
  }
  INFO("RssFile at READY " << file_at_ready << " kB, now " << file_now << " kB");
  CHECK(file_now + 1024 <= file_at_ready);

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
  CHECK(agent.stop() == 0);
}
