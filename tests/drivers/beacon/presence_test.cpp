// The presence engine on the real ESPresense trace, synthetic walks and floods.
#include "drivers/beacon/presence.h"

#include <malloc.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "agent/api/time.h"
#include "drivers/beacon/gateway.h"

namespace omniedge::beacon {
namespace {

using nlohmann::json;

constexpr int64_t kStart = 1'764'000'000'000;  // 2025-11-24, engine time of the synthetic walks
constexpr const char* kPhone = "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2";

struct TraceMessage {
  int64_t at_ms;
  std::string topic;
  json payload;
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
    out.push_back({*at, row.at("topic"), row.at("payload")});
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

std::string zoneOf(const Event& e) { return json::parse(e.data_json).at("zone"); }

/// The room whose own calibrated distances (the gateways' `distance`) are smallest, by median:
/// the answer the trace itself gives, computed independently of the engine.
std::string nearestRoomByGatewayDistance(const std::vector<TraceMessage>& trace) {
  std::map<std::string, std::vector<double>> by_room;
  for (const TraceMessage& m : trace) {
    by_room[m.topic.substr(m.topic.rfind('/') + 1)].push_back(m.payload.at("distance"));
  }
  std::string best;
  double best_median = 1e9;
  for (auto& [room, d] : by_room) {
    std::nth_element(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(d.size() / 2), d.end());
    if (d[d.size() / 2] < best_median) {
      best_median = d[d.size() / 2];
      best = room;
    }
  }
  return best;
}

/// Replays the trace through the gateway parser and the engine; `edit` may change payloads.
std::vector<Event> replay(const std::vector<TraceMessage>& trace, PresenceEngine& engine,
                          const std::function<void(json&)>& edit = {}) {
  std::vector<Event> events;
  for (const TraceMessage& m : trace) {
    json payload = m.payload;
    if (edit) {
      edit(payload);
    }
    auto parsed = parseGatewayMessage(m.topic, payload.dump());
    REQUIRE(parsed.has_value());
    for (const Sighting& s : parsed->sightings) {
      engine.observe(s, m.at_ms, events);
    }
  }
  return events;
}

// A small radio world for synthetic walks: scanners at positions, a log-distance path loss with
// gaussian noise (seeded), one report per scanner per ~second, weak packets lost.
struct Scanner {
  std::string name;
  double x;
  double y;
  double hot_db = 0;  // hardware that reads this much too strong
};

struct Position {
  double x;
  double y;
};

struct World {
  std::vector<Scanner> scanners;
  double rssi_at_1m = -59;
  double n = 2.2;  // the true exponent; the engine assumes 2.5 (ranking does not depend on it)
  double noise_db = 4;
  int64_t period_ms = 1000;
};

/// Sightings of `identity` while it follows `where(t)` from t = 0 to `until_ms`, in time order.
std::vector<Sighting> walk(const World& world, const std::function<Position(int64_t)>& where,
                           int64_t until_ms, uint32_t seed, const std::string& identity = kPhone) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> noise(0.0, world.noise_db);
  std::uniform_int_distribution<int64_t> jitter(0, world.period_ms / 5);
  std::vector<std::pair<int64_t, Sighting>> out;
  for (std::size_t i = 0; i < world.scanners.size(); ++i) {
    const Scanner& sc = world.scanners[i];
    for (int64_t t = static_cast<int64_t>(i) * 97; t < until_ms; t += world.period_ms) {
      const int64_t at = t + jitter(rng);
      const Position p = where(at);
      const double d = std::max(0.3, std::hypot(p.x - sc.x, p.y - sc.y));
      const double rssi = world.rssi_at_1m - 10 * world.n * std::log10(d) + noise(rng) + sc.hot_db;
      if (rssi < -100) {
        continue;  // too weak to be heard
      }
      Sighting s;
      s.scanner = sc.name;
      s.identity = identity;
      s.rssi = static_cast<int>(std::lround(rssi));
      s.rssi_at_1m = static_cast<int>(world.rssi_at_1m);
      s.timestamp_ms = kStart + at;
      out.emplace_back(at, std::move(s));
    }
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Sighting> sightings;
  for (auto& [at, s] : out) {
    sightings.push_back(std::move(s));
  }
  return sightings;
}

/// Feeds sightings (engine time = their timestamps), ticking each second, then ticks on past
/// the exit. Returns every event.
std::vector<Event> run(PresenceEngine& engine, const std::vector<Sighting>& sightings,
                       int64_t exit_after_ms) {
  std::vector<Event> events;
  int64_t next_tick = kStart;
  int64_t last = kStart;
  for (const Sighting& s : sightings) {
    while (*s.timestamp_ms >= next_tick) {
      engine.tick(next_tick, events);
      next_tick += 1000;
    }
    engine.observe(s, 0, events);
    last = *s.timestamp_ms;
  }
  engine.tick(last + exit_after_ms + 1000, events);
  return events;
}

Position lerp(Position a, Position b, double f) {
  f = std::clamp(f, 0.0, 1.0);
  return {a.x + (b.x - a.x) * f, a.y + (b.y - a.y) * f};
}

}  // namespace

TEST_CASE(
    "the real stationary trace places the watch where the gateways' calibrated distances "
    "do: office_alt, with one enter, no zone change and one exit",
    "[unit][beacon]") {
  const auto trace = loadTrace();
  REQUIRE(trace.size() == 1693);
  // What the gateways themselves say: office_alt (~0.4 m), then master, then office.
  REQUIRE(nearestRoomByGatewayDistance(trace) == "office_alt");

  PresenceEngine engine(PresenceOptions{});
  std::vector<Event> events = replay(trace, engine);
  CHECK(engine.stats().sightings == 1693);
  const auto enters = ofType(events, "beacon.enter");
  REQUIRE(enters.size() == 1);
  CHECK(ofType(events, "beacon.zone_change").empty());
  const json enter = json::parse(enters[0].data_json);
  CHECK(enter.at("zone") == "office_alt");
  CHECK(enter.at("scanner") == "office_alt");
  CHECK(enter.at("distance_m").get<double>() == Approx(0.4).margin(0.15));
  CHECK(enter.at("identity") == "espresense:watch:darrell");
  CHECK(enters[0].customer.at("beacon") == "espresense:watch:darrell");
  CHECK(enters[0].source == "beacon:office_alt");
  CHECK(enters[0].occurred_at_ms == trace[0].at_ms);  // it was there from the first sighting

  const int64_t last = trace.back().at_ms;
  engine.tick(last + 29'999, events);
  CHECK(ofType(events, "beacon.exit").empty());
  engine.tick(last + 30'000, events);
  const auto exits = ofType(events, "beacon.exit");
  REQUIRE(exits.size() == 1);
  CHECK(exits[0].occurred_at_ms == last + 30'000);
  const json exit = json::parse(exits[0].data_json);
  CHECK(exit.at("dwell_ms").get<int64_t>() == last - trace[0].at_ms);
  CHECK(exit.at("zone") == "office_alt");
  CHECK(events.size() == 2);
  CHECK(1693 / events.size() >= 100);
  CHECK(engine.stats().tracked == 0);
}

TEST_CASE(
    "without the gateways' distance, RSSI corrected by rssi@1m places the real trace in "
    "office_alt too, raw RSSI alone would not",
    "[unit][beacon]") {
  const auto trace = loadTrace();
  SECTION("rssi and rssi@1m") {
    PresenceEngine engine(PresenceOptions{});
    const auto events = replay(trace, engine, [](json& p) { p.erase("distance"); });
    REQUIRE(ofType(events, "beacon.enter").size() == 1);
    CHECK(zoneOf(ofType(events, "beacon.enter")[0]) == "office_alt");
    CHECK(ofType(events, "beacon.zone_change").empty());
  }
  SECTION("raw rssi only: the strongest raw signal is master, which is not the nearest") {
    PresenceEngine engine(PresenceOptions{});
    const auto events = replay(trace, engine, [](json& p) {
      p.erase("distance");
      p.erase("rssi@1m");
    });
    REQUIRE(ofType(events, "beacon.enter").size() == 1);
    CHECK(zoneOf(ofType(events, "beacon.enter")[0]) != "office_alt");
  }
}

TEST_CASE("the enter waits for the window, so the first scanners to speak do not decide the zone",
          "[unit][beacon]") {
  PresenceOptions options;
  options.window_ms = 5'000;
  PresenceEngine engine(options);
  std::vector<Event> events;
  auto seen = [&](const char* scanner, int rssi, int64_t at) {
    engine.observe({scanner, kPhone, rssi, -59, kStart + at, {}}, 0, events);
  };
  // Three far scanners answer first, as in the real trace: no enter yet.
  seen("far-1", -85, 0);
  seen("far-2", -84, 100);
  seen("far-3", -86, 200);
  CHECK(events.empty());
  for (int64_t t = 1'000; t < 5'000; t += 500) {
    seen("near", -60, t);
    CHECK(events.empty());
  }
  seen("near", -61, 5'000);
  REQUIRE(events.size() == 1);
  CHECK(events[0].type == "beacon.enter");
  CHECK(zoneOf(events[0]) == "near");
  CHECK(events[0].occurred_at_ms == kStart);
}

TEST_CASE("a device heard only inside the window is entered when the window closes, unheard",
          "[unit][beacon]") {
  PresenceOptions options;
  options.window_ms = 5'000;
  PresenceEngine engine(options);
  std::vector<Event> events;
  // A burst of sightings in the first two seconds (a gateway flushing its cache), then quiet.
  for (int64_t t = 0; t < 2'000; t += 200) {
    engine.observe({"far", kPhone, -85, -59, kStart + t, {}}, 0, events);
    engine.observe({"near", kPhone, -60, -59, kStart + t + 50, {}}, 0, events);
  }
  engine.tick(kStart + 4'000, events);
  CHECK(events.empty());  // the window is still open
  engine.tick(kStart + 5'000, events);
  REQUIRE(events.size() == 1);
  CHECK(events[0].type == "beacon.enter");
  CHECK(zoneOf(events[0]) == "near");
  CHECK(events[0].occurred_at_ms == kStart);
  engine.tick(kStart + 6'000, events);
  CHECK(events.size() == 1);  // once
}

TEST_CASE("a noisy walk A → B → C is placed in each room in turn, with one change per move",
          "[unit][beacon]") {
  World world;
  world.scanners = {{"a1", -2, 1}, {"a2", 2, -1}, {"b1", 12, 1}, {"c1", 22, 1}, {"c2", 26, -1}};
  const Position a{0, 0};
  const Position b{12, 0};
  const Position c{24, 0};
  auto where = [&](int64_t t) {
    if (t < 40'000) {
      return a;
    }
    if (t < 52'000) {
      return lerp(a, b, (t - 40'000) / 12'000.0);
    }
    if (t < 92'000) {
      return b;
    }
    if (t < 104'000) {
      return lerp(b, c, (t - 92'000) / 12'000.0);
    }
    return c;
  };
  PresenceOptions options;
  options.zones = {{"a1", "A"}, {"a2", "A"}, {"b1", "B"}, {"c1", "C"}, {"c2", "C"}};
  for (uint32_t seed = 1; seed <= 8; ++seed) {
    INFO("seed " << seed);
    const auto sightings = walk(world, where, 144'000, seed);
    PresenceEngine engine(options);
    const auto events = run(engine, sightings, options.exit_after_ms);
    REQUIRE(events.size() == 4);
    CHECK(events[0].type == "beacon.enter");
    CHECK(zoneOf(events[0]) == "A");
    CHECK(events[0].occurred_at_ms == *sightings.front().timestamp_ms);

    CHECK(events[1].type == "beacon.zone_change");
    const json ab = json::parse(events[1].data_json);
    CHECK(ab.at("from") == "A");
    CHECK(ab.at("to") == "B");
    CHECK(ab.at("zone") == "B");
    CHECK(events[1].source == "beacon:b1");
    // Not before it is nearer B than A (the midpoint at 46 s), not long after it arrived.
    CHECK(events[1].occurred_at_ms >= kStart + 46'000);
    CHECK(events[1].occurred_at_ms <= kStart + 62'000);

    CHECK(events[2].type == "beacon.zone_change");
    const json bc = json::parse(events[2].data_json);
    CHECK(bc.at("from") == "B");
    CHECK(bc.at("to") == "C");
    CHECK(events[2].occurred_at_ms >= kStart + 98'000);
    CHECK(events[2].occurred_at_ms <= kStart + 114'000);

    CHECK(events[3].type == "beacon.exit");
    CHECK(zoneOf(events[3]) == "C");
    const int64_t last = *sightings.back().timestamp_ms;
    CHECK(events[3].occurred_at_ms == last + options.exit_after_ms);
    CHECK(json::parse(events[3].data_json).at("dwell_ms") ==
          last - *sightings.front().timestamp_ms);
  }
}

TEST_CASE("a device standing between two rooms does not flap", "[unit][beacon]") {
  World world;
  world.scanners = {{"a1", 0, 0}, {"b1", 8, 0}};
  world.noise_db = 5;   // worse than the real trace's 2-3 dB for most rooms
  int corrections = 0;  // of 20 runs off the middle
  for (const double x : {4.0, 3.5, 4.5}) {
    for (uint32_t seed = 1; seed <= 10; ++seed) {
      INFO("x " << x << " seed " << seed);
      const auto sightings = walk(
          world,
          [&](int64_t) {
            return Position{x, 1.5};
          },
          600'000, seed);
      PresenceEngine engine(PresenceOptions{});
      const auto events = run(engine, sightings, 30'000);
      REQUIRE(ofType(events, "beacon.enter").size() == 1);
      CHECK(ofType(events, "beacon.exit").size() == 1);
      // Ten minutes of noise: never back and forth. Off the middle, a change only ever goes
      // to the nearer scanner (a first guess from 5 s of evidence, corrected).
      const auto changes = ofType(events, "beacon.zone_change");
      CHECK(changes.size() <= 1);
      if (x != 4.0 && !changes.empty()) {
        ++corrections;
        CHECK(zoneOf(changes[0]) == (x < 4 ? "a1" : "b1"));
      }
    }
  }
  CHECK(corrections < 20);  // mostly right from the start
}

TEST_CASE("a short visit to the next room, shorter than the hold, is no zone change",
          "[unit][beacon]") {
  World world;
  world.scanners = {{"a1", 0, 0}, {"b1", 10, 0}};
  world.noise_db = 3;
  PresenceOptions options;
  options.switch_hold_ms = 8'000;
  // In A; 4 s at B's scanner; back in A.
  auto where = [](int64_t t) {
    return t >= 30'000 && t < 34'000 ? Position{10, 0.5} : Position{0, 0.5};
  };
  const auto sightings = walk(world, where, 60'000, 11);
  PresenceEngine engine(options);
  const auto events = run(engine, sightings, 30'000);
  REQUIRE(ofType(events, "beacon.enter").size() == 1);
  CHECK(zoneOf(ofType(events, "beacon.enter")[0]) == "a1");
  CHECK(ofType(events, "beacon.zone_change").empty());
}

TEST_CASE("a scanner that reads too strong misplaces a device until its offset corrects it",
          "[unit][beacon]") {
  World world;
  // The device stands 2 m from a1 and 4 m from b1, but b1 reads 10 dB too strong.
  world.scanners = {{"a1", 0, 0}, {"b1", 6, 0, 10.0}};
  world.noise_db = 3;
  const auto sightings = walk(
      world,
      [](int64_t) {
        return Position{2, 0};
      },
      60'000, 5);

  PresenceEngine uncorrected(PresenceOptions{});
  const auto wrong = run(uncorrected, sightings, 30'000);
  REQUIRE(ofType(wrong, "beacon.enter").size() == 1);
  CHECK(zoneOf(ofType(wrong, "beacon.enter")[0]) == "b1");

  PresenceOptions options;
  options.scanner_offsets = {{"b1", -10.0}};
  PresenceEngine corrected(options);
  const auto right = run(corrected, sightings, 30'000);
  REQUIRE(ofType(right, "beacon.enter").size() == 1);
  CHECK(zoneOf(ofType(right, "beacon.enter")[0]) == "a1");
  CHECK(ofType(right, "beacon.zone_change").empty());
}

TEST_CASE("a scanner offset applies to the gateway's own distance as well", "[unit][beacon]") {
  PresenceOptions options;
  options.window_ms = 0;
  options.enter_after_sightings = 2;
  options.scanner_offsets = {{"hall", -10.0}};  // hall's distances are 10 dB (2.5x) too short
  PresenceEngine engine(options);
  std::vector<Event> events;
  Sighting hall{"hall", kPhone, -70, {}, kStart, 1.0};
  Sighting shop{"shop", kPhone, -70, {}, kStart + 10, 2.0};
  engine.observe(hall, 0, events);
  engine.observe(shop, 0, events);
  REQUIRE(events.size() == 1);
  const json enter = json::parse(events[0].data_json);
  CHECK(enter.at("zone") == "shop");
  CHECK(enter.at("distance_m").get<double>() == Approx(2.0));
}

TEST_CASE("enter needs N sightings and the window, staff prefixes are ignored", "[unit][beacon]") {
  PresenceOptions options;
  options.ignore_prefixes = {"ibeacon:staff0000"};
  PresenceEngine engine(options);
  std::vector<Event> events;
  // Two sightings 20 s apart: the window has passed but there is too little evidence.
  engine.observe({"door", "mac:001122334455", -70, {}, {}, {}}, kStart, events);
  engine.observe({"door", "mac:001122334455", -70, {}, {}, {}}, kStart + 20'000, events);
  CHECK(events.empty());
  for (int i = 0; i < 10; ++i) {
    engine.observe({"door", "ibeacon:staff0000-0000-0000-0000-000000000000:1:1", -50, {}, {}, {}},
                   kStart + 21'000 + i, events);
  }
  CHECK(events.empty());
  CHECK(engine.stats().ignored == 10);
  engine.observe({"door", "mac:001122334455", -70, {}, {}, {}}, kStart + 22'000, events);
  REQUIRE(events.size() == 1);
  CHECK(events[0].type == "beacon.enter");
  CHECK(json::parse(events[0].data_json).at("scanner") == "door");
}

TEST_CASE(
    "a flood of distinct devices and scanners stays within max_tracked and "
    "max_state_bytes, and the heap agrees",
    "[unit][beacon]") {
  PresenceOptions options;
  options.max_tracked = 100'000;
  options.max_state_bytes = 2u << 20;
  std::mt19937 rng(3);
  std::vector<Event> events;
  const std::size_t heap_before = mallinfo2().uordblks;
  {
    PresenceEngine engine(options);
    const std::string long_tail(50, 'x');
    for (int i = 0; i < 200'000; ++i) {
      // Long identities and many (long) scanner names: the most memory per sighting.
      Sighting s{"gw-" + std::to_string(rng() % 3000) + long_tail,
                 "espresense:" + std::to_string(rng()) + long_tail,
                 -60 - static_cast<int>(rng() % 30),
                 {},
                 {},
                 {}};
      engine.observe(s, kStart + i / 100, events);
      if (i % 10'000 == 0) {
        REQUIRE(engine.stats().state_bytes <= options.max_state_bytes);
      }
    }
    const PresenceStats stats = engine.stats();
    INFO("tracked " << stats.tracked << " scanners " << stats.scanners << " state_bytes "
                    << stats.state_bytes);
    CHECK(stats.state_bytes <= options.max_state_bytes);
    CHECK(stats.state_bytes > options.max_state_bytes * 9 / 10);  // it did fill up
    CHECK(stats.refused_bytes > 0);
    CHECK(stats.sightings + stats.refused_bytes == 200'000);
    // What the engine counts is what the heap holds (events aside). ASan's and TSan's
    // allocators keep no mallinfo, so there only the engine's own count is checked.
    std::vector<Event>().swap(events);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    const std::size_t heap_now = mallinfo2().uordblks;
    const std::size_t heap_growth = heap_now > heap_before ? heap_now - heap_before : 0;
    CHECK(heap_growth <= stats.state_bytes * 11 / 10 + 64 * 1024);
    CHECK(heap_growth >= stats.state_bytes * 8 / 10);
#else
    (void)heap_before;
#endif

    // Once they have all gone quiet, tracks and scanners are forgotten.
    engine.tick(kStart + 2'000 + options.exit_after_ms, events);
    CHECK(engine.stats().tracked == 0);
    CHECK(engine.stats().scanners == 0);
    CHECK(engine.stats().forgotten == stats.tracked);
  }
}

TEST_CASE("a flood of 100k sightings of many identities stays within max_tracked",
          "[unit][beacon]") {
  PresenceOptions options;
  options.max_tracked = 10'000;
  PresenceEngine engine(options);
  std::mt19937 rng(3);
  std::vector<Event> events;
  for (int i = 0; i < 100'000; ++i) {
    Sighting s{"gw" + std::to_string(i % 7),
               "mac:" + std::to_string(rng() % 50'000),
               -60 - static_cast<int>(rng() % 30),
               {},
               {},
               {}};
    engine.observe(s, kStart + i / 10, events);  // 10 s of traffic
    REQUIRE(engine.stats().tracked <= 10'000);
  }
  const PresenceStats stats = engine.stats();
  CHECK(stats.tracked == 10'000);
  CHECK(stats.refused > 0);
  CHECK(stats.sightings + stats.refused == 100'000);
  CHECK(stats.state_bytes <= options.max_state_bytes);
  engine.tick(kStart + 10'000 + options.exit_after_ms, events);
  CHECK(engine.stats().tracked == 0);
  CHECK(ofType(events, "beacon.exit").size() == ofType(events, "beacon.enter").size());
}

TEST_CASE("zones parse from scanner=zone items, offsets from scanner=dB", "[unit][beacon]") {
  auto zones = parseZones({"door-1=entrance", "door-2=entrance"});
  REQUIRE(zones.has_value());
  CHECK(zones->at("door-2") == "entrance");
  CHECK_FALSE(parseZones({"nozone"}).has_value());
  CHECK_FALSE(parseZones({"=x"}).has_value());

  auto offsets = parseScannerOffsets({"kitchen=-4.5", "office=+3", "hall=0"});
  REQUIRE(offsets.has_value());
  CHECK(offsets->at("kitchen") == -4.5);
  CHECK(offsets->at("office") == 3);
  for (const char* bad : {"kitchen", "kitchen=", "=3", "kitchen=loud", "kitchen=41", "k=3dB"}) {
    INFO(bad);
    auto r = parseScannerOffsets({bad});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().field == "beacon.scanner_offsets");
    CHECK_THAT(r.error().message, Catch::Contains(bad));
  }
}

}  // namespace omniedge::beacon
