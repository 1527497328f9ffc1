// New beacon.zones / beacon.scanner_offsets from a remote config, taken by a running engine:
// nobody present is lost, a customer whose scanner moved zone gets a zone_change.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "drivers/beacon/presence.h"

namespace omniedge::beacon {
namespace {

using nlohmann::json;

constexpr int64_t kStart = 1'764'000'000'000;
constexpr const char* kPhone = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2";

std::vector<Event> walk(PresenceEngine& engine, const std::string& scanner, int rssi,
                        int64_t from_ms, int64_t to_ms) {
  std::vector<Event> out;
  for (int64_t t = from_ms; t < to_ms; t += 500) {
    Sighting s;
    s.scanner = scanner;
    s.identity = kPhone;
    s.rssi = rssi;
    engine.observe(s, t, out);
    engine.tick(t, out);
  }
  return out;
}

TEST_CASE("new zones reach a running presence engine without losing who is in the store",
          "[unit][beacon][remote]") {
  PresenceOptions o;
  o.zones = {{"s1", "door"}, {"s2", "till"}};
  PresenceEngine engine(o);
  auto before = walk(engine, "s1", -55, kStart, kStart + 10'000);
  REQUIRE(before.size() == 1);
  CHECK(before[0].type == "beacon.enter");
  CHECK(json::parse(before[0].data_json)["zone"] == "door");

  // Scanner s1 now counts as the till.
  engine.retune({{"s1", "till"}, {"s2", "till"}}, {});
  auto after = walk(engine, "s1", -55, kStart + 10'000, kStart + 30'000);
  REQUIRE(after.size() == 1);
  CHECK(after[0].type == "beacon.zone_change");
  const auto data = json::parse(after[0].data_json);
  CHECK(data["from"] == "door");
  CHECK(data["to"] == "till");
  CHECK(engine.stats().enters == 1);
  CHECK(engine.stats().exits == 0);
  CHECK(engine.stats().tracked == 1);
}

TEST_CASE("a new scanner offset changes the estimates from then on", "[unit][beacon][remote]") {
  PresenceOptions o;
  o.zones = {{"s1", "door"}, {"s2", "till"}};
  o.switch_hold_ms = 1000;
  PresenceEngine engine(o);
  std::vector<Event> out;
  // Heard a little better by s1 (door): placed at the door.
  for (int64_t t = kStart; t < kStart + 8'000; t += 250) {
    Sighting a{"s1", kPhone, -60, {}, {}, {}};
    Sighting b{"s2", kPhone, -63, {}, {}, {}};
    engine.observe(a, t, out);
    engine.observe(b, t, out);
  }
  REQUIRE(out.size() == 1);
  CHECK(json::parse(out[0].data_json)["zone"] == "door");
  // s2 sits in a cabinet: +12 dB. The till is now far nearer.
  engine.retune(o.zones, {{"s2", 12.0}});
  out.clear();
  for (int64_t t = kStart + 8'000; t < kStart + 20'000; t += 250) {
    Sighting a{"s1", kPhone, -60, {}, {}, {}};
    Sighting b{"s2", kPhone, -63, {}, {}, {}};
    engine.observe(a, t, out);
    engine.observe(b, t, out);
  }
  REQUIRE(out.size() == 1);
  CHECK(out[0].type == "beacon.zone_change");
  CHECK(json::parse(out[0].data_json)["to"] == "till");
}

}  // namespace
}  // namespace omniedge::beacon
