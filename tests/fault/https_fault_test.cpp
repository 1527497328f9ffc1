// The HTTPS uplink under the R1/R2 faults (issue 17 point 2): MQTT unreachable, so every batch
// goes to central-sim's HTTPS endpoint (mutual TLS); the agent is killed with SIGKILL and the
// centre itself is killed with SIGKILL and restarted on the same port, alternately, under
// kiosk, POS and beacon load. Then drained and checked by the history checker.
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <thread>

#include "tests/fault/fault_support.h"
#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using omniedge::testing::AgentProcess;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::TempDir;
namespace fault = omniedge::testing::fault;
namespace fs = std::filesystem;

namespace {

const std::string kStore = "store-1";

}  // namespace

TEST_CASE(
    "the HTTPS uplink loses nothing acknowledged across kill -9 of the agent and kill -9 and "
    "restarts of the centre under load",
    "[fault][https]") {
  const int faults = fault::variant(12, 150);
  TempDir tmp;
  fault::RestartableSim sim(tmp / "centre");
  MosquittoBroker gateways;  // the store's gateway broker; the uplink broker is unreachable
  fault::StoreLoad store(tmp.path(), kStore, gateways.url());
  AgentProcess agent(
      tmp / "data",
      store.agentEnvironment({{"OMNIEDGE_MQTT_URL",
                               "mqtt://127.0.0.1:" + std::to_string(omniedge::testing::freePort())},
                              {"OMNIEDGE_HTTPS_BASE_URL", sim.baseUrl()},
                              {"OMNIEDGE_HTTPS_CA_FILE", sim.pkiFile("ca.crt")},
                              {"OMNIEDGE_HTTPS_CERT_FILE", sim.pkiFile("client-store-1.crt")},
                              {"OMNIEDGE_HTTPS_KEY_FILE", sim.pkiFile("client-store-1.key")},
                              {"OMNIEDGE_HTTPS_FAILOVER_AFTER", "1"},
                              {"OMNIEDGE_HTTPS_TIMEOUT", "5"}}));
  REQUIRE(agent.start());
  REQUIRE(store.start(agent.httpPort(), 6000));

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
  std::cout << "faults: " << agent_kills << " agent kill -9, " << centre_kills
            << " centre kill -9\n";
  const auto outcome = store.finish("HTTPS uplink: agent and centre kill -9",
                                    "agent/centre kill -9", faults, agent, sim.db());
  INFO(store.loadOutput());
  fault::checkResendsOnly(outcome, false);
}
