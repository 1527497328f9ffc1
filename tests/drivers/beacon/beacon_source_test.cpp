// BeaconSource against a real mosquitto: gateway messages in, presence events out.
#include "drivers/beacon/beacon_source.h"

#include <mqtt/async_client.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <stop_token>
#include <string>

#include "tests/support/broker.h"
#include "tests/support/recording_writer.h"

namespace omniedge::beacon {
namespace {

using omniedge::testing::MosquittoBroker;
using omniedge::testing::RecordingWriter;

bool hasEnter(const RecordingWriter& writer, const std::string& identity) {
  for (const Event& e : writer.events()) {
    if (e.type == "beacon.enter" && e.customer.count("beacon") &&
        e.customer.at("beacon") == identity) {
      return true;
    }
  }
  return false;
}

/// Publishes ESPresense sightings of `device` and polls until its enter arrives (≤ 15 s).
bool publishUntilEnter(mqtt::async_client& gateway, BeaconSource& source, RecordingWriter& writer,
                       const std::string& device, const std::string& identity) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < deadline) {
    if (gateway.is_connected()) {
      try {
        gateway.publish("espresense/devices/" + device + "/entrance",
                        R"({"id":")" + device + R"(","rssi":-61,"rssi@1m":-59})", 0, false);
        gateway.publish("home/gw/BTtoMQTT", "not json", 0, false);
      } catch (const mqtt::exception&) {  // the broker is restarting: try again
      }
    }
    (void)source.poll(writer, {});
    if (hasEnter(writer, identity)) {
      return true;
    }
  }
  return false;
}

}  // namespace

TEST_CASE("gateway messages through a real broker become a beacon.enter", "[integration][beacon]") {
  MosquittoBroker broker;
  BeaconOptions options;
  options.mqtt_url = broker.url();
  options.reconnect_min_ms = 100;
  options.reconnect_max_ms = 500;
  BeaconSource source(options);
  RecordingWriter writer;

  mqtt::async_client gateway("tcp://127.0.0.1:" + std::to_string(broker.port()), "gateway-test");
  mqtt::connect_options gateway_options;
  gateway_options.set_automatic_reconnect(std::chrono::milliseconds(100),
                                          std::chrono::milliseconds(500));
  gateway.connect(gateway_options)->wait();

  REQUIRE(publishUntilEnter(gateway, source, writer, "phone-1", "espresense:phone-1"));
  const BeaconStats stats = source.stats();
  CHECK(stats.connected);
  CHECK(stats.connects == 1);
  CHECK(stats.bad_messages > 0);
  CHECK(stats.sightings >= 3);
  const Event enter = writer.events().front();
  CHECK(enter.source == "beacon:entrance");
  CHECK(nlohmann::json::parse(enter.data_json).at("zone") == "entrance");

  SECTION("it reconnects after the broker restarts") {
    broker.restart();
    REQUIRE(publishUntilEnter(gateway, source, writer, "phone-2", "espresense:phone-2"));
    CHECK(source.stats().connects >= 2);
  }
  try {
    gateway.disconnect()->wait();
  } catch (const mqtt::exception&) {
  }
}

TEST_CASE("an unreachable broker is an error from poll, retried with backoff",
          "[integration][beacon]") {
  MosquittoBroker broker(/*start_now=*/false);
  BeaconOptions options;
  options.mqtt_url = broker.url();
  options.reconnect_min_ms = 100;
  BeaconSource source(options);
  RecordingWriter writer;
  bool failed = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!failed && std::chrono::steady_clock::now() < deadline) {
    failed = !source.poll(writer, {}).has_value();
  }
  CHECK(failed);
  CHECK(source.stats().connect_failures >= 1);
  CHECK_FALSE(source.stats().connected);

  BeaconOptions bad;
  bad.mqtt_url = "http://example.invalid";
  BeaconSource bad_source(bad);
  auto result = bad_source.poll(writer, {});
  REQUIRE_FALSE(result.has_value());
  CHECK(result.error().code == "invalid");
}

}  // namespace omniedge::beacon
