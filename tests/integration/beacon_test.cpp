// Gateway messages published to the store broker of the running binary become presence events
// on the uplink: the real ESPresense trace of one stationary watch gives one enter, no flapping.
#include <mqtt/async_client.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
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

std::vector<json> beaconEvents(Subscriber& sub) {
  std::vector<json> out;
  for (const auto& m : sub.messages()) {
    auto batch = json::parse(m.payload, nullptr, false);
    if (batch.is_discarded() || !batch.contains("events")) {
      continue;
    }
    for (const auto& e : batch["events"]) {
      if (e["type"].get<std::string>().rfind("beacon.", 0) == 0) {
        out.push_back(e);
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("the real ESPresense trace published to the store broker gives one enter and no flapping",
          "[integration][beacon]") {
  MosquittoBroker broker;  // uplink and store broker at once
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_BEACON_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_BEACON_QOS", "1"},
                                    {"OMNIEDGE_SYNC_COMPRESSION", "none"}});
  REQUIRE(agent.start());

  mqtt::async_client gateway(broker.url(), "test-gateway");
  gateway.connect()->wait();
  std::ifstream trace(std::string(OMNIEDGE_SOURCE_DIR) +
                      "/tests/fixtures/gateways/espresense/stationary-watch-10-rooms.jsonl");
  REQUIRE(trace);
  int published = 0;
  // The driver subscribes right after start (QoS 1, but a fresh session): wait for it.
  for (int i = 0; i < 100; ++i) {
    auto st = json::parse(agent.cli({"status", "--json"}).out);
    bool connected = false;
    for (const auto& d : st["drivers"]) {
      connected = connected || (d["name"] == "beacon" && d["state"] == "running");
    }
    if (connected) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(500ms);
  for (std::string line; std::getline(trace, line) && published < 600;) {
    auto j = json::parse(line);
    gateway.publish(j["topic"].get<std::string>(), j["payload"].dump(), 1, false)->wait();
    ++published;
  }
  gateway.disconnect()->wait();

  REQUIRE(agent.cli({"flush", "--wait", "30"}).exit_code == 0);
  REQUIRE(sub.waitFor(
      [](const auto& msgs) {
        for (const auto& m : msgs) {
          if (m.payload.find("\"beacon.enter\"") != std::string::npos) {
            return true;
          }
        }
        return false;
      },
      30s));
  const auto events = beaconEvents(sub);
  int enters = 0;
  int changes = 0;
  for (const auto& e : events) {
    enters += e["type"] == "beacon.enter" ? 1 : 0;
    changes += e["type"] == "beacon.zone_change" ? 1 : 0;
    CHECK(e["customer"]["beacon"].get<std::string>().find("watch:darrell") != std::string::npos);
    CHECK_FALSE(e["data"]["zone"].get<std::string>().empty());
  }
  CHECK(enters == 1);
  CHECK(changes <= 1);
  CHECK(published == 600);
}
