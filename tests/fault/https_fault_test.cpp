// The HTTPS uplink under the R1/R2 faults (issue 17 point 2): MQTT unreachable, so every batch
// goes to central-sim's HTTPS endpoint (mutual TLS); the agent is killed with SIGKILL and the
// centre itself is killed with SIGKILL and restarted on the same port, alternately, under
// kiosk, POS and beacon load. Then drained and checked by the history checker.
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>

#include "tests/fault/fault_support.h"
#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::TempDir;
namespace fault = omniedge::testing::fault;
namespace fs = std::filesystem;

namespace {

const std::string kStore = "store-1";

int64_t pending(const AgentProcess& agent) {
  const auto r = agent.cli({"status", "--json"});
  const auto j = json::parse(r.out, nullptr, false);
  if (r.exit_code != 0 || j.is_discarded() || !j.contains("queue")) {
    return -1;
  }
  return j["queue"].value("pending", int64_t{-1});
}

}  // namespace

TEST_CASE(
    "the HTTPS uplink loses nothing acknowledged across kill -9 of the agent and kill -9 and "
    "restarts of the centre under load",
    "[fault][https]") {
  const int faults = fault::variant(12, 150);
  const auto started = std::chrono::steady_clock::now();
  TempDir tmp;
  fault::RestartableSim sim(tmp / "centre");
  MosquittoBroker gateways;  // the store's gateway broker; the uplink broker is unreachable
  const fs::path spool = tmp / "spool";
  fs::create_directories(spool);
  AgentProcess agent(
      tmp / "data",
      {{"OMNIEDGE_STORE_ID", kStore},
       {"OMNIEDGE_MQTT_URL", "mqtt://127.0.0.1:" + std::to_string(omniedge::testing::freePort())},
       {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
       {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"},
       {"OMNIEDGE_HTTPS_BASE_URL", sim.baseUrl()},
       {"OMNIEDGE_HTTPS_CA_FILE", sim.pkiFile("ca.crt")},
       {"OMNIEDGE_HTTPS_CERT_FILE", sim.pkiFile("client-store-1.crt")},
       {"OMNIEDGE_HTTPS_KEY_FILE", sim.pkiFile("client-store-1.key")},
       {"OMNIEDGE_HTTPS_FAILOVER_AFTER", "1"},
       {"OMNIEDGE_HTTPS_TIMEOUT", "5"},
       {"OMNIEDGE_POS_SPOOL_DIR", spool.string()},
       {"OMNIEDGE_BEACON_MQTT_URL", gateways.url()},
       {"OMNIEDGE_BEACON_TOPICS", "store/#"},
       {"OMNIEDGE_BEACON_WINDOW", "1"},
       {"OMNIEDGE_BEACON_EXIT_AFTER", "5"}});
  REQUIRE(agent.start());

  const fs::path accepted = tmp / "accepted.jsonl";
  fault::Loadgen::Options lo;
  lo.url = "http://127.0.0.1:" + std::to_string(agent.httpPort());
  lo.accepted = accepted;
  lo.rate = 6000;
  lo.spool = spool;
  lo.beacon_mqtt = gateways.url();
  fault::Loadgen load(lo, tmp / "loadgen.log");
  REQUIRE(
      fault::eventually([&] { return fs::exists(accepted) && fs::file_size(accepted) > 0; }, 30s));

  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> up_ms(400, 1500);
  std::uniform_int_distribution<int> down_ms(100, 1500);
  int agent_kills = 0;
  int centre_kills = 0;
  for (int f = 0; f < faults; ++f) {
    // Every fifth pause is long enough for a beacon's clean window (loadgen: 3 s of
    // sightings watched by one agent process), so the beacon channel is tested too.
    std::this_thread::sleep_for(std::chrono::milliseconds(f % 5 == 4 ? 4000 : up_ms(rng)));
    if (f % 3 != 2) {
      agent.kill9();
      ++agent_kills;
      INFO("restart after agent kill " << agent_kills << "\n" << agent.log().substr(0, 4000));
      REQUIRE(agent.start(60s));
    } else {
      sim.kill9();
      ++centre_kills;
      std::this_thread::sleep_for(std::chrono::milliseconds(down_ms(rng)));
      INFO(sim.log());
      REQUIRE_NOTHROW(sim.start());
    }
  }
  std::this_thread::sleep_for(2s);
  const json summary = load.stop();
  INFO(load.output());
  REQUIRE(summary.is_object());

  REQUIRE(fault::eventually([&] { return pending(agent) == 0; }, 180s));
  const auto verdict =
      fault::finalVerdict("HTTPS uplink kill -9", sim.db(), accepted, "default/" + kStore);
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cout << "faults: " << agent_kills << " agent kill -9, " << centre_kills
            << " centre kill -9\n";
  fault::reportFigures(fault::figuresOf("HTTPS uplink: agent and centre kill -9",
                                        "agent/centre kill -9", faults, verdict, summary, wall));
  std::cout << "loadgen: " << summary.dump() << "\n";
  INFO(verdict.text);
  CHECK(verdict.exit_code == 0);
  CHECK(verdict.lost() == 0);
  CHECK(summary["accepted_by_channel"].value("kiosk", 0) > 0);
  CHECK(summary["accepted_by_channel"].value("pos", 0) > 0);
  const auto& after = verdict.json["keys"]["after_dedup_by_kind"];
  CHECK_FALSE(after.contains("kiosk"));
  CHECK_FALSE(after.contains("pos"));
}
