// The presence engine on the real ESPresense trace, synthetic walks and floods.
#include "drivers/beacon/presence.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "agent/api/time.h"
#include "drivers/beacon/gateway.h"

namespace omniedge::beacon {
namespace {

using nlohmann::json;

struct TraceMessage {
  int64_t at_ms;
  std::string topic;
  std::string payload;
};

/// The trace's "tst" is "2023-11-27T19:47:59.913652-0500": RFC 3339 wants "-05:00".
std::vector<TraceMessage> loadTrace() {
  std::ifstream in(std::string(OMNIEDGE_SOURCE_DIR) +
                   "/tests/fixtures/gateways/espresense/stationary-watch-10-rooms.jsonl");
  REQUIRE(in.good());
  std::vector<TraceMessage> out;
  std::string line;
  while (std::getline(in, line)) {
    const json row = json::parse(line);
    std::string tst = row.at("tst");
    tst = tst.substr(0, tst.size() - 2) + ":" + tst.substr(tst.size() - 2);
    const auto at = parseRfc3339(tst);
    REQUIRE(at.has_value());
    out.push_back({*at, row.at("topic"), row.at("payload").dump()});
  }
  return out;
}

std::vector<Event> ofType(const std::vector<Event>& events, const std::string& type) {
  std::vector<Event> out;
  for (const Event& e : events) {
    if (e.type == type) {
      out.push_back(e);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("the real stationary trace gives one enter, a stable zone and one exit",
          "[unit][beacon]") {
  const auto trace = loadTrace();
  REQUIRE(trace.size() == 1693);
  PresenceEngine engine(PresenceOptions{});
  std::vector<Event> events;
  std::size_t sightings = 0;
  for (const TraceMessage& m : trace) {
    auto parsed = parseGatewayMessage(m.topic, m.payload);
    REQUIRE(parsed.has_value());
    for (const Sighting& s : parsed->sightings) {
      engine.observe(s, m.at_ms, events);
      ++sightings;
    }
  }
  CHECK(sightings == 1693);
  const auto enters = ofType(events, "beacon.enter");
  REQUIRE(enters.size() == 1);
  CHECK(ofType(events, "beacon.zone_change").empty());
  CHECK(ofType(events, "beacon.exit").empty());
  const json enter = json::parse(enters[0].data_json);
  CHECK(enter.at("identity") == "espresense:watch:darrell");
  CHECK(enters[0].customer.at("beacon") == "espresense:watch:darrell");
  CHECK(enters[0].source == "beacon:" + enter.at("scanner").get<std::string>());
  CHECK(enters[0].occurred_at_ms == trace[2].at_ms);  // the third sighting
  CHECK(enter.at("distance_m").get<double>() > 0);

  const int64_t last = trace.back().at_ms;
  engine.tick(last + 29'999, events);
  CHECK(ofType(events, "beacon.exit").empty());
  engine.tick(last + 30'000, events);
  const auto exits = ofType(events, "beacon.exit");
  REQUIRE(exits.size() == 1);
  CHECK(exits[0].occurred_at_ms == last + 30'000);
  const json exit = json::parse(exits[0].data_json);
  CHECK(exit.at("dwell_ms").get<int64_t>() == last - trace[0].at_ms);
  CHECK(exit.at("zone") == enter.at("zone"));
  CHECK(events.size() == 2);
  CHECK(sightings / events.size() >= 100);
  CHECK(engine.stats().tracked == 0);
}

TEST_CASE("a noisy walk A → B → gone: enter A, one change to B, exit with the dwell",
          "[unit][beacon]") {
  PresenceOptions options;
  options.zones = {{"a1", "A"}, {"a2", "A"}, {"b1", "B"}};
  options.exit_after_ms = 30'000;
  PresenceEngine engine(options);
  std::mt19937 rng(7);
  std::normal_distribution<double> noise(0.0, 4.0);
  std::vector<Event> events;
  const int64_t start = 1'764'000'000'000;
  int64_t last_seen = 0;
  for (int64_t t = 0; t < 120'000; t += 500) {
    const bool near_a = t < 60'000;
    for (const char* scanner : {"a1", "a2", "b1"}) {
      const bool in_a = scanner[0] == 'a';
      const double mean = (in_a == near_a) ? -60.0 : -85.0;
      Sighting s{scanner, "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2",
                 static_cast<int>(mean + noise(rng)), -59, start + t};
      engine.observe(s, 0, events);  // the sighting's own timestamp is the engine time
      last_seen = start + t;
    }
    engine.tick(start + t, events);
  }
  for (int64_t t = 120'000; t < 200'000; t += 1'000) {
    engine.tick(start + t, events);
  }
  REQUIRE(events.size() == 3);
  CHECK(events[0].type == "beacon.enter");
  CHECK(json::parse(events[0].data_json).at("zone") == "A");
  CHECK(events[1].type == "beacon.zone_change");
  const json change = json::parse(events[1].data_json);
  CHECK(change.at("from") == "A");
  CHECK(change.at("to") == "B");
  CHECK(change.at("zone") == "B");
  CHECK(events[1].source == "beacon:b1");
  CHECK(events[1].occurred_at_ms >= start + 60'000 + options.switch_hold_ms);
  CHECK(events[1].occurred_at_ms <= start + 60'000 + options.switch_hold_ms + 5'000);
  CHECK(events[2].type == "beacon.exit");
  CHECK(events[2].occurred_at_ms == last_seen + 30'000);
  CHECK(json::parse(events[2].data_json).at("dwell_ms") == last_seen - start);
  CHECK(json::parse(events[2].data_json).at("zone") == "B");
}

TEST_CASE("enter needs N sightings within the window; staff prefixes are ignored",
          "[unit][beacon]") {
  PresenceOptions options;
  options.ignore_prefixes = {"ibeacon:staff0000"};
  PresenceEngine engine(options);
  std::vector<Event> events;
  // Two sightings 20 s apart never make an enter (window 10 s).
  engine.observe({"door", "mac:001122334455", -70, {}, {}}, 0, events);
  engine.observe({"door", "mac:001122334455", -70, {}, {}}, 20'000, events);
  engine.observe({"door", "mac:001122334455", -70, {}, {}}, 40'000, events);
  CHECK(events.empty());
  for (int i = 0; i < 10; ++i) {
    engine.observe({"door", "ibeacon:staff0000-0000-0000-0000-000000000000:1:1", -50, {}, {}},
                   41'000 + i, events);
  }
  CHECK(events.empty());
  CHECK(engine.stats().ignored == 10);
  engine.observe({"door", "mac:001122334455", -70, {}, {}}, 42'000, events);
  engine.observe({"door", "mac:001122334455", -70, {}, {}}, 43'000, events);
  REQUIRE(events.size() == 1);
  CHECK(events[0].type == "beacon.enter");
  CHECK(json::parse(events[0].data_json).at("scanner") == "door");
}

TEST_CASE("a flood of 100k sightings of many identities stays within the cap", "[unit][beacon]") {
  PresenceOptions options;
  options.max_tracked = 10'000;
  PresenceEngine engine(options);
  std::mt19937 rng(3);
  std::vector<Event> events;
  const int64_t start = 1'000'000;
  for (int i = 0; i < 100'000; ++i) {
    Sighting s{"gw" + std::to_string(i % 7),
               "mac:" + std::to_string(rng() % 50'000),
               -60 - static_cast<int>(rng() % 30),
               {},
               {}};
    engine.observe(s, start + i / 100, events);  // 1 s of traffic
    REQUIRE(engine.stats().tracked <= 10'000);
  }
  const PresenceStats stats = engine.stats();
  CHECK(stats.tracked == 10'000);
  CHECK(stats.refused > 0);
  CHECK(stats.sightings + stats.refused == 100'000);
  engine.tick(start + 1'000 + options.exit_after_ms, events);
  CHECK(engine.stats().tracked == 0);
  CHECK(ofType(events, "beacon.exit").size() == ofType(events, "beacon.enter").size());
}

TEST_CASE("zones parse from scanner=zone items", "[unit][beacon]") {
  auto zones = parseZones({"door-1=entrance", "door-2=entrance"});
  REQUIRE(zones.has_value());
  CHECK(zones->at("door-2") == "entrance");
  CHECK_FALSE(parseZones({"nozone"}).has_value());
  CHECK_FALSE(parseZones({"=x"}).has_value());
}

}  // namespace omniedge::beacon
