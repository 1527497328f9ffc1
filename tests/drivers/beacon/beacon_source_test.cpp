// BeaconSource: gateway messages in (offer(), or a real mosquitto), presence events out.
#include "drivers/beacon/beacon_source.h"

#include <fmt/format.h>
#include <mqtt/async_client.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <stop_token>
#include <string>
#include <vector>

#include "tests/support/broker.h"
#include "tests/support/recording_writer.h"
#include "tests/support/temp_dir.h"

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

/// Polls until a round fails (within 10 s): its message, "" if none did.
std::string firstPollError(BeaconSource& source, RecordingWriter& writer) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto r = source.poll(writer, {}); !r) {
      return r.error().message;
    }
  }
  return {};
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

constexpr int64_t kStart = 1'764'000'000'000;

/// A clock the test sets.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t now) : now_(now) {}
  int64_t nowMs() const override { return now_.load(); }
  void set(int64_t now) { now_ = now; }

 private:
  std::atomic<int64_t> now_;
};

/// Forwards to a RecordingWriter; events of `refused_identity` are refused one by one (as
/// Ingest would refuse an invalid event), and while `full` every call fails as a full buffer.
class GateWriter final : public EventWriter {
 public:
  explicit GateWriter(RecordingWriter& inner) : inner_(inner) {}
  Result<AppendOutcome> append(std::vector<Event> events) override {
    return inner_.append(std::move(events));
  }
  Result<AppendOutcome> appendEach(std::vector<Event> events) override {
    ++calls;
    if (full) {
      return makeError("full", "the buffer is full");
    }
    for (Event& e : events) {
      if (e.customer.count("beacon") != 0 && e.customer.at("beacon") == refused_identity) {
        e.type = "invalid.event";  // the fake refuses this type
      }
    }
    return inner_.appendEach(std::move(events));
  }
  std::string refused_identity;
  bool full = false;
  int calls = 0;

 private:
  RecordingWriter& inner_;
};

/// A plain-form sighting at engine time `at_ms` (the gateway's own timestamp).
std::string plain(const std::string& scanner, const std::string& mac, int rssi, int64_t at_ms) {
  return fmt::format(R"({{"scanner":"{}","mac":"{}","rssi":{},"timestamp":{}}})", scanner, mac,
                     rssi, at_ms);
}

BeaconOptions offline(std::shared_ptr<FakeClock> clock) {
  BeaconOptions o;
  o.mqtt_url = "";  // no MQTT client: messages come through offer()
  o.clock = std::move(clock);
  o.presence.window_ms = 1'000;
  o.presence.switch_hold_ms = 1'000;
  o.presence.exit_after_ms = 5'000;
  return o;
}

/// Polls until the queue is empty (each poll takes what is queued).
void drain(BeaconSource& source, EventWriter& writer) {
  for (int i = 0; i < 5 && source.stats().queue_depth > 0; ++i) {
    (void)source.poll(writer, {});
  }
  (void)source.poll(writer, {});
}

std::vector<Event> ofType(const RecordingWriter& writer, const std::string& type) {
  std::vector<Event> out;
  for (const Event& e : writer.events()) {
    if (e.type == type) {
      out.push_back(e);
    }
  }
  return out;
}

std::string zoneOf(const Event& e) { return nlohmann::json::parse(e.data_json).at("zone"); }

}  // namespace

TEST_CASE(
    "bad gateway messages among a walk are refused alone, counted with their reason, and "
    "the walk's enter, zone change and exit are stored",
    "[unit][beacon]") {
  auto clock = std::make_shared<FakeClock>(kStart);
  BeaconSource source(offline(clock));
  RecordingWriter writer;
  const std::vector<std::pair<std::string, std::string>> garbage = {
      {"store/ble", plain(std::string(200, 's'), "00:11:22:33:44:55", -60, kStart)},
      {"store/ble", R"({"scanner":"door\u0007","mac":"00:11:22:33:44:55","rssi":-60})"},
      {"espresense/devices/x/hall", R"({"id":"bad\u0001id","rssi":-60})"},
      {"store/ble", "{\"scanner\":\"d\xff\",\"rssi\":-60}"},
      {"store/ble", R"({"scanner":"door","mac":"00:11:22:33:44:55","rssi":"loud"})"},
      {"home/gw/BTtoMQTT", "[1,2,3]"},
      {"store/ble", R"({"scanner":["door"],"rssi":-60})"},
  };
  std::size_t g = 0;
  const std::string phone = "aa:bb:cc:dd:ee:01";
  // 6 s near a (a: -55, b: -80), then 6 s near b; two reports per scanner per second.
  for (int64_t t = 0; t < 12'000; t += 500) {
    clock->set(kStart + t);
    const bool near_a = t < 6'000;
    REQUIRE(source.offer("store/ble", plain("a", phone, near_a ? -55 : -80, kStart + t)));
    REQUIRE(source.offer("store/ble", plain("b", phone, near_a ? -80 : -55, kStart + t + 10)));
    (void)source.offer(garbage[g % garbage.size()].first, garbage[g % garbage.size()].second);
    ++g;
    drain(source, writer);
  }
  clock->set(kStart + 12'000 + 5'000 + 1'000);
  (void)source.poll(writer, {});

  const auto enters = ofType(writer, "beacon.enter");
  REQUIRE(enters.size() == 1);
  CHECK(zoneOf(enters[0]) == "a");
  CHECK(enters[0].customer.at("beacon") == "mac:aabbccddee01");
  const auto changes = ofType(writer, "beacon.zone_change");
  REQUIRE(changes.size() == 1);
  CHECK(zoneOf(changes[0]) == "b");
  const auto exits = ofType(writer, "beacon.exit");
  REQUIRE(exits.size() == 1);
  CHECK(zoneOf(exits[0]) == "b");

  const SourceHealth health = source.health();
  CHECK(health.input_errors == g);
  auto counter = [&](const std::string& name) {
    for (const auto& [k, v] : health.counters) {
      if (k == name) {
        return v;
      }
    }
    FAIL("no counter " << name);
    return uint64_t{0};
  };
  CHECK(counter("bad_messages") == g);
  CHECK(counter("events") == 3);
  CHECK(counter("events_rejected") == 0);
  CHECK(counter("enters") == 1);
  CHECK(counter("tracked") == 0);
  // The latest refusal, with where it came from, the field and why.
  const auto last = garbage[(g - 1) % garbage.size()];
  INFO(health.last_input_error);
  CHECK_THAT(health.last_input_error, Catch::StartsWith(last.first + ": "));
  SECTION("each kind of garbage gets its own reason") {
    const std::vector<std::string> reasons = {
        "scanner is 200 bytes, at most 64",
        "scanner has a control character U+0007 at byte 4",
        "id has a control character U+0001 at byte 3",
        "payload is not JSON",
        "rssi must be a number, not string",
        "payload must be a JSON object, not array",
        "scanner must be a string, not array",
    };
    for (std::size_t i = 0; i < garbage.size(); ++i) {
      BeaconSource one(offline(clock));
      (void)one.offer(garbage[i].first, garbage[i].second);
      (void)one.poll(writer, {});
      INFO(i);
      CHECK(one.health().input_errors == 1);
      CHECK_THAT(one.health().last_input_error, Catch::Contains(reasons[i]));
      CHECK(one.stats().presence.sightings == 0);  // never reached the engine
    }
  }
}

TEST_CASE(
    "an event the writer refuses is counted and dropped alone, the others are stored and "
    "nothing is retried forever",
    "[unit][beacon]") {
  auto clock = std::make_shared<FakeClock>(kStart);
  BeaconOptions options = offline(clock);
  options.presence.window_ms = 0;
  options.presence.enter_after_sightings = 1;
  BeaconSource source(options);
  RecordingWriter recorded;
  GateWriter writer(recorded);
  writer.refused_identity = "mac:000000000002";
  for (int i = 1; i <= 5; ++i) {
    REQUIRE(source.offer("store/ble",
                         plain("door", fmt::format("00:00:00:00:00:0{}", i), -60, kStart)));
  }
  (void)source.poll(writer, {});
  const auto enters = ofType(recorded, "beacon.enter");
  REQUIRE(enters.size() == 4);
  for (const Event& e : enters) {
    CHECK(e.customer.at("beacon") != "mac:000000000002");
  }
  const BeaconStats stats = source.stats();
  CHECK(stats.events == 4);
  CHECK(stats.events_rejected == 1);
  CHECK(stats.pending == 0);
  CHECK(source.health().input_errors == 1);
  CHECK_THAT(source.health().last_input_error,
             Catch::Contains("beacon.enter of mac:000000000002 refused by the writer") &&
                 Catch::Contains("type is refused by the fake"));
  const int calls = writer.calls;
  (void)source.poll(writer, {});
  CHECK(writer.calls == calls);  // nothing left to retry
}

TEST_CASE(
    "while the buffer is full, events are kept within their bounds, what is dropped is "
    "counted and reported as agent.data_dropped",
    "[unit][beacon]") {
  auto clock = std::make_shared<FakeClock>(kStart);
  BeaconOptions options = offline(clock);
  options.presence.window_ms = 0;
  options.presence.enter_after_sightings = 1;
  options.max_pending_events = 3;
  BeaconSource source(options);
  RecordingWriter recorded;
  GateWriter writer(recorded);
  writer.full = true;

  SECTION("a short refusal: every event is kept and stored later") {
    for (int i = 1; i <= 3; ++i) {
      (void)source.offer("store/ble",
                         plain("door", fmt::format("00:00:00:00:00:0{}", i), -60, kStart));
    }
    auto r = source.poll(writer, {});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "full");
    CHECK(source.stats().pending == 3);
    writer.full = false;
    REQUIRE(source.poll(writer, {}).has_value());
    CHECK(ofType(recorded, "beacon.enter").size() == 3);
    CHECK(ofType(recorded, "agent.data_dropped").empty());
    CHECK(source.stats().events_dropped == 0);
  }
  SECTION("past the bound: the oldest are dropped, counted, then reported") {
    for (int i = 1; i <= 9; ++i) {
      (void)source.offer("store/ble",
                         plain("door", fmt::format("00:00:00:00:00:0{}", i), -60, kStart + i));
      (void)source.poll(writer, {});
    }
    BeaconStats stats = source.stats();
    CHECK(stats.pending == 3);
    CHECK(stats.events_dropped == 6);
    CHECK(stats.events_dropped_bytes > 0);
    CHECK(recorded.events().empty());

    writer.full = false;
    REQUIRE(source.poll(writer, {}).has_value());
    const auto enters = ofType(recorded, "beacon.enter");
    REQUIRE(enters.size() == 3);
    CHECK(enters[0].customer.at("beacon") == "mac:000000000007");  // the newest were kept
    const auto reports = ofType(recorded, "agent.data_dropped");
    REQUIRE(reports.size() == 1);
    const auto report = nlohmann::json::parse(reports[0].data_json);
    CHECK(report.at("events") == 6);
    CHECK(report.at("channel") == "beacon");
    CHECK(reports[0].source == "beacon");
    stats = source.stats();
    CHECK(stats.drop_reports == 1);
    CHECK(stats.pending == 0);
    (void)source.poll(writer, {});
    CHECK(ofType(recorded, "agent.data_dropped").size() == 1);  // reported once
  }
  SECTION("the pending list is bounded by bytes as well") {
    BeaconOptions small = offline(clock);
    small.presence.window_ms = 0;
    small.presence.enter_after_sightings = 1;
    small.pending_max_bytes = 4'000;
    BeaconSource bytes_bound(small);
    for (int i = 0; i < 100; ++i) {
      (void)bytes_bound.offer("store/ble",
                              plain("door", fmt::format("00:00:00:00:01:{:02x}", i), -60, kStart));
    }
    (void)bytes_bound.poll(writer, {});
    const BeaconStats stats = bytes_bound.stats();
    CHECK(stats.pending_bytes <= 4'000);
    CHECK(stats.pending > 0);
    CHECK(stats.pending + stats.events_dropped == 100);
  }
}

TEST_CASE("the message queue is bounded by bytes, an oversized message is refused with its size",
          "[unit][beacon]") {
  auto clock = std::make_shared<FakeClock>(kStart);
  BeaconOptions options = offline(clock);
  options.queue_max_bytes = 64 * 1024;
  BeaconSource source(options);
  const std::string payload = R"({"scanner":"door","mac":"00:11:22:33:44:55","rssi":-60,"pad":")" +
                              std::string(1000, 'x') + R"("})";
  std::size_t queued = 0;
  for (int i = 0; i < 1000; ++i) {
    queued += source.offer("store/ble", payload) ? 1 : 0;
  }
  BeaconStats stats = source.stats();
  CHECK(stats.queue_bytes <= 64 * 1024);
  CHECK(queued == stats.queue_depth);
  CHECK(queued >= 50);
  CHECK(stats.queue_overflow == 1000 - queued);
  CHECK(stats.queue_overflow_bytes > 0);

  CHECK_FALSE(source.offer("store/ble", std::string(100'000, ' ')));
  CHECK(source.health().input_errors == 1);
  CHECK(source.health().last_input_error ==
        "store/ble: payload is 100000 bytes; beacon.max_message_bytes allows 65536");

  RecordingWriter writer;
  (void)source.poll(writer, {});
  stats = source.stats();
  CHECK(stats.queue_bytes == 0);
  CHECK(stats.messages == queued + 1);
}

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
  CHECK_THAT(stats.last_input_error, Catch::StartsWith("home/gw/BTtoMQTT: payload is not JSON"));
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
  options.reconnect_max_ms = 200;
  BeaconSource source(options);
  RecordingWriter writer;
  const std::string error = firstPollError(source, writer);
  // What a technician reads in status and the log: the broker, the URL, and what to check.
  const std::string expected = "the gateways' broker is unreachable at " + broker.url() +
                               " (connection refused or no route): is it running, is "
                               "beacon.mqtt_url right?";
  CHECK(error == expected);
  CHECK(source.stats().connect_failures >= 1);
  CHECK_FALSE(source.stats().connected);
  // Between attempts poll() works, but the source still says it is down, and why.
  CHECK(source.health().down == expected);

  broker.start();
  const auto up_by = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!source.stats().connected && std::chrono::steady_clock::now() < up_by) {
    (void)source.poll(writer, {});
  }
  CHECK(source.stats().connected);
  CHECK(source.health().down.empty());

  BeaconOptions bad;
  bad.mqtt_url = "http://example.invalid";
  BeaconSource bad_source(bad);
  auto result = bad_source.poll(writer, {});
  REQUIRE_FALSE(result.has_value());
  CHECK(result.error().code == "invalid");
}

TEST_CASE("a gateways' broker whose certificate does not verify is named as a TLS failure",
          "[integration][beacon]") {
  testing::TempDir pki_dir;
  const auto pki = testing::makeTestPki(pki_dir.path());
  // Signed by the tests' own CA, which the system's CA certificates do not hold.
  MosquittoBroker broker(true,
                         MosquittoBroker::Tls{pki.ca_cert, pki.server_cert, pki.server_key, false});
  REQUIRE(broker.url().rfind("mqtts://", 0) == 0);
  BeaconOptions options;
  options.mqtt_url = broker.url();
  options.reconnect_min_ms = 100;
  BeaconSource source(options);
  RecordingWriter writer;
  const std::string error = firstPollError(source, writer);
  CHECK(error == "the gateways' broker at " + broker.url() +
                     " is unreachable or its TLS handshake failed: is it running, is "
                     "beacon.mqtt_url right, does its certificate verify against the system's "
                     "CA certificates for that host name?");
  CHECK_FALSE(source.stats().connected);
  CHECK(source.health().down == error);
}

}  // namespace omniedge::beacon
