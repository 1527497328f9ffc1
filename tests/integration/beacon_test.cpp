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

bool sawEnter(Subscriber& sub) {
  for (const auto& m : sub.messages()) {
    if (m.payload.find("\"beacon.enter\"") != std::string::npos) {
      return true;
    }
  }
  return false;
}

// Publishes the real trace, as the gateways would, until the uplink shows a beacon.enter (the
// driver's subscription is made right after the agent starts; sightings sent before it are
// simply not seen, as with a real gateway). Returns how many sightings were published.
int publishTraceUntilEnter(mqtt::async_client& gateway, Subscriber& sub,
                           std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int published = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream trace(std::string(OMNIEDGE_SOURCE_DIR) +
                        "/tests/fixtures/gateways/espresense/stationary-watch-10-rooms.jsonl");
    REQUIRE(trace);
    for (std::string line; std::getline(trace, line);) {
      auto j = json::parse(line);
      gateway.publish(j["topic"].get<std::string>(), j["payload"].dump(), 1, false)->wait();
      if (++published % 100 == 0 && sawEnter(sub)) {
        return published;
      }
    }
    std::this_thread::sleep_for(200ms);
    if (sawEnter(sub)) {
      return published;
    }
  }
  return published;
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
  const int published = publishTraceUntilEnter(gateway, sub, 30s);
  gateway.disconnect()->wait();
  REQUIRE(agent.cli({"flush", "--wait", "30"}).exit_code == 0);
  REQUIRE(sawEnter(sub));
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
  CHECK(published >= 100);
}

TEST_CASE("profiles pushed on R/profiles answer the kiosk offline and attribute beacons",
          "[integration][beacon][profiles]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_BEACON_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_BEACON_QOS", "1"},
                                    {"OMNIEDGE_SYNC_COMPRESSION", "none"}});
  REQUIRE(agent.start());
  const json profile = {
      {"id", "c-123"},
      {"keys", {"loyalty:LOY-1", "app:A-9", "espresense:watch:darrell"}},
      {"segments", {"vip"}},
      {"lifecycle", "loyal"},
      {"tier", "gold"},
      {"consent", {{"tracking", true}, {"personalization", true}, {"marketing", false}}},
      {"cart",
       {{"items", {{{"sku", "SKU-1"}, {"qty", 1}, {"price", 19.99}, {"channel", "app"}}}},
        {"updated_at", "2026-11-22T10:00:00Z"}}}};
  mqtt::async_client centre(broker.url(), "test-centre");
  centre.connect()->wait();
  // The agent subscribes right after it connects; publish until it has the profile.
  std::pair<int, std::string> got{-1, ""};
  for (int i = 0; i < 50 && got.first != 200; ++i) {
    centre
        .publish("omniedge/v1/default/store-042/profiles",
                 json{{"upserts", {profile}}, {"deletes", json::array()}, {"cursor", "1"}}.dump(),
                 1, false)
        ->wait();
    std::this_thread::sleep_for(200ms);
    got = agent.get("/v1/customers/loyalty:LOY-1");
  }
  REQUIRE(got.first == 200);
  auto doc = json::parse(got.second);
  CHECK(doc["id"] == "c-123");
  CHECK(doc["segments"] == json{"vip"});
  CHECK(doc["freshness"].is_string());
  auto cart = agent.get("/v1/customers/app:A-9/cart");
  REQUIRE(cart.first == 200);
  CHECK(json::parse(cart.second)["items"][0]["sku"] == "SKU-1");
  CHECK(agent.get("/v1/customers/loyalty:NOPE").first == 404);

  // The kiosk adds to that cart: the local cart changes at once, the centre hears of it.
  auto added = agent.post("/v1/customers/loyalty:LOY-1/cart/items", R"({"sku":"SKU-2","qty":2})");
  REQUIRE(added.first == 201);
  CHECK(json::parse(added.second)["items"].size() == 2);
  added = agent.post("/v1/customers/loyalty:LOY-1/cart/items", R"({"sku":"SKU-2"})");
  REQUIRE(added.first == 201);
  CHECK(json::parse(added.second)["items"][1]["qty"] == 3);
  auto cart_now = json::parse(agent.get("/v1/customers/app:A-9/cart").second);
  CHECK(cart_now["items"][1]["sku"] == "SKU-2");
  auto bad_qty = agent.post("/v1/customers/loyalty:LOY-1/cart/items", R"({"sku":"S","qty":0})");
  CHECK(bad_qty.first == 400);
  CHECK(json::parse(bad_qty.second)["error"]["field"] == "qty");
  // A customer the cache does not know yet: the cart is kept locally, kiosk.cart_add goes up.
  CHECK(agent.post("/v1/customers/loyalty:NOPE/cart/items", R"({"sku":"S"})").first == 201);
  CHECK(agent.get("/v1/customers/loyalty:NOPE").first == 404);
  CHECK(json::parse(agent.get("/v1/customers/loyalty:NOPE/cart").second)["items"][0]["sku"] == "S");
  REQUIRE(sub.waitFor(
      [](const auto& msgs) {
        for (const auto& m : msgs) {
          if (m.payload.find("\"kiosk.cart_add\"") != std::string::npos &&
              m.payload.find("LOY-1") != std::string::npos) {
            return true;
          }
        }
        return false;
      },
      30s));

  // The watch is that customer: its presence events say so.
  REQUIRE(publishTraceUntilEnter(centre, sub, 30s) > 0);
  REQUIRE(sawEnter(sub));
  const auto events = beaconEvents(sub);
  REQUIRE_FALSE(events.empty());
  CHECK(events.front()["customer"]["profile_id"] == "c-123");
  CHECK(events.front()["customer"]["loyalty_id"] == "LOY-1");
  centre.disconnect()->wait();

  // With the uplink gone and the agent restarted, the kiosk still gets its answer.
  broker.stop();
  agent.stop();
  REQUIRE(agent.start());
  CHECK(agent.get("/v1/customers/loyalty:LOY-1").first == 200);
}
