// Gateway messages published to the store broker of the running binary become presence events
// on the uplink: the real ESPresense trace of one stationary watch gives one enter in the room
// the gateways themselves find nearest, no flapping; garbage from a gateway is refused alone.
#include <mqtt/async_client.h>

#include <catch2/catch.hpp>
#include <chrono>
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

TEST_CASE(
    "the real ESPresense trace published to the store broker gives one enter, in office_alt, "
    "and no flapping",
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
    CHECK(e["customer"]["beacon"] == "espresense:watch:darrell");
    // The room the gateways' own calibrated distances put it nearest (0.4 m).
    CHECK(e["data"]["zone"] == "office_alt");
  }
  CHECK(enters == 1);
  CHECK(changes == 0);
  CHECK(published >= 100);
}

namespace {

/// The beacon driver's entry of `omniedge status --json`.
json beaconStatus(const AgentProcess& agent) {
  const auto st = agent.cli({"status", "--json"});
  if (st.exit_code != 0) {
    return json();
  }
  const json doc = json::parse(st.out, nullptr, false);
  if (doc.is_discarded() || !doc.contains("drivers")) {
    return json();
  }
  for (const auto& d : doc["drivers"]) {
    if (d.value("name", "") == "beacon") {
      return d;
    }
  }
  return json();
}

int64_t wallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string plain(const std::string& scanner, int rssi, int64_t at_ms) {
  return R"({"scanner":")" + scanner + R"(","mac":"AA:BB:CC:DD:EE:01","rssi":)" +
         std::to_string(rssi) + R"(,"rssi@1m":-59,"timestamp":)" + std::to_string(at_ms) + "}";
}

}  // namespace

TEST_CASE(
    "a gateway publishing garbage among a normal walk: the agent stays up, the walk's "
    "presence reaches the uplink, status shows the refused input",
    "[integration][beacon]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  AgentProcess agent(tmp / "data",
                     {{"OMNIEDGE_MQTT_URL", broker.url()},
                      {"OMNIEDGE_BEACON_MQTT_URL", broker.url()},
                      {"OMNIEDGE_BEACON_QOS", "1"},
                      {"OMNIEDGE_BEACON_TOPICS", "home/+/BTtoMQTT/#,espresense/devices/#,store/#"},
                      {"OMNIEDGE_BEACON_WINDOW", "1"},
                      {"OMNIEDGE_BEACON_SWITCH_HOLD", "1"},
                      {"OMNIEDGE_BEACON_EXIT_AFTER", "3"},
                      {"OMNIEDGE_SYNC_COMPRESSION", "none"}});
  REQUIRE(agent.start());
  mqtt::async_client gateway(broker.url(), "garbage-gateway");
  gateway.connect()->wait();
  auto publish = [&](const std::string& topic, const std::string& payload) {
    gateway.publish(topic, payload.data(), payload.size(), 1, false)->wait();
  };

  // The driver subscribes once the agent runs: a gateway status message (not a sighting, not
  // an error) until status shows it was handled.
  int probes = 0;
  const auto subscribed_by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  json status;
  while (std::chrono::steady_clock::now() < subscribed_by) {
    publish("home/probe/BTtoMQTT", R"({"state":"online"})");
    ++probes;
    status = beaconStatus(agent);
    if (!status.is_null() && status["counters"].value("messages", 0) > 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  REQUIRE(status["counters"].value("messages", 0) > 0);
  const int64_t probes_seen = status["counters"]["messages"];

  const std::vector<std::pair<std::string, std::string>> garbage = {
      {"home/" + std::string(300, 'g') + "/BTtoMQTT", R"({"id":"A1:B2:C3:D4:E5:F6","rssi":-60})"},
      {"espresense/devices/" + std::string(600, 'd') + "/hall", R"({"rssi":-60})"},
      {"store/ble", R"({"scanner":"door\u0007","mac":"00:11:22:33:44:55","rssi":-60})"},
      {"espresense/devices/x/hall", R"({"id":"bad\u0001id","rssi":-60})"},
      {"store/ble", "{\"scanner\":\"d\xff\xfe\",\"rssi\":-60}"},
      {"store/ble", R"({"scanner":"door","mac":"00:11:22:33:44:55","pad":")" +
                        std::string(200'000, 'x') + R"(","rssi":-60})"},
      {"store/ble", R"({"scanner":"door","mac":"00:11:22:33:44:55","rssi":"loud"})"},
      {"espresense/devices/x/hall", "[1,2,3]"},
      {"store/ble", R"({"scanner":{"name":"door"},"rssi":-60})"},
      {"home/gw/BTtoMQTT", R"({"id":"not-a-mac","rssi":-60})"},
      {"store/ble", R"({"scanner":"door","mac":"00:11:22:33:44:55","rssi":-60,"distance":"far"})"},
  };
  // The walk, as a gateway reports it (in real time, with its own timestamps): 8 s near a,
  // 8 s near b, then gone; a piece of garbage every second.
  const int64_t t0 = wallMs();
  std::size_t g = 0;
  int walk_messages = 0;
  int64_t next_garbage = t0;
  for (int64_t now = t0; now - t0 < 16'000; now = wallMs()) {
    const bool near_a = now - t0 < 8'000;
    publish("store/ble", plain("a", near_a ? -55 : -82, now));
    publish("store/ble", plain("b", near_a ? -82 : -55, now));
    walk_messages += 2;
    if (now >= next_garbage) {
      publish(garbage[g % garbage.size()].first, garbage[g % garbage.size()].second);
      ++g;
      next_garbage += 1'000;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  gateway.disconnect()->wait();

  // Every message handled; each piece of garbage refused alone.
  const int64_t total =
      probes_seen + (probes - probes_seen) + walk_messages + static_cast<int64_t>(g);
  const auto handled_by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < handled_by) {
    status = beaconStatus(agent);
    if (!status.is_null() && status["counters"].value("messages", 0) >= total) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  INFO(status.dump(2));
  REQUIRE(status["counters"]["messages"] == total);
  CHECK(status["state"] == "running");
  CHECK(status["input_errors"] == g);
  CHECK(status["counters"]["bad_messages"] == g);
  CHECK(status["counters"]["events_rejected"] == 0);
  // The last garbage published (g - 1) is the last error shown.
  const auto& last = garbage[(g - 1) % garbage.size()];
  CHECK(status["last_error"].get<std::string>().rfind(last.first + ": ", 0) == 0);

  // The walk: enter in a, one change to b, exit from b, on the uplink.
  const bool exited = sub.waitFor(
      [](const auto& msgs) {
        for (const auto& m : msgs) {
          if (m.payload.find("\"beacon.exit\"") != std::string::npos) {
            return true;
          }
        }
        return false;
      },
      std::chrono::seconds(30));
  REQUIRE(exited);
  const auto events = beaconEvents(sub);
  std::vector<std::string> seen;
  for (const auto& e : events) {
    CHECK(e["customer"]["beacon"] == "mac:aabbccddee01");
    seen.push_back(e["type"].get<std::string>() + " " + e["data"]["zone"].get<std::string>());
  }
  CHECK(seen ==
        std::vector<std::string>{"beacon.enter a", "beacon.zone_change b", "beacon.exit b"});
  CHECK(agent.get("/v1/health").first == 200);
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

TEST_CASE(
    "the beacon keys are checked like any other: a bad scanner offset names the key and "
    "the item",
    "[integration][beacon]") {
  TempDir tmp;
  AgentProcess agent(tmp / "data", {});
  const auto good = tmp / "good.conf";
  const auto bad = tmp / "bad.conf";
  std::ofstream(good) << "[beacon]\nscanner_offsets = kitchen=-4.5, office=+3\nwindow = 3\n"
                         "switch_margin_db = 8\nswitch_hold = 10\nmax_state_bytes = 16MiB\n"
                         "queue_max_bytes = 1MiB\npending_max_bytes = 1MiB\n"
                         "max_message_bytes = 8KiB\n";
  std::ofstream(bad) << "[beacon]\nscanner_offsets = kitchen=loud\n";
  const auto ok = agent.cli({"config", "validate", good.string()});
  INFO(ok.out);
  CHECK(ok.exit_code == 0);
  const auto refused = agent.cli({"config", "validate", bad.string()});
  INFO(refused.out);
  CHECK(refused.exit_code != 0);
  CHECK(refused.out.find("beacon.scanner_offsets") != std::string::npos);
  CHECK(refused.out.find("kitchen=loud") != std::string::npos);
}
