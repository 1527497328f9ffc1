// P7: the beacon presence engine's throughput (decode + engine) replaying the real ESPresense
// trace in a loop, how many fewer events than raw sightings a stationary customer yields, where
// it is placed, and what the engine's state costs.
//
//   bench_beacon [trace.jsonl] [loops]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/api/time.h"
#include "drivers/beacon/gateway.h"
#include "drivers/beacon/presence.h"

namespace {

using omniedge::Event;
using omniedge::beacon::PresenceEngine;
using omniedge::beacon::PresenceOptions;
using omniedge::beacon::Sighting;

struct TraceMessage {
  int64_t at_ms;
  std::string topic;
  std::string payload;
};

std::vector<TraceMessage> loadTrace(const std::string& path) {
  std::ifstream in(path);
  std::vector<TraceMessage> out;
  std::string line;
  while (std::getline(in, line)) {
    const auto row = nlohmann::json::parse(line, nullptr, false);
    if (row.is_discarded() || !row.contains("tst")) {
      continue;
    }
    std::string tst = row.at("tst");
    if (tst.size() > 5 && tst[tst.size() - 3] != ':') {
      tst = tst.substr(0, tst.size() - 2) + ":" + tst.substr(tst.size() - 2);  // "-0500"
    }
    if (auto at = omniedge::parseRfc3339(tst)) {
      out.push_back({*at, row.at("topic"), row.at("payload").dump()});
    }
  }
  return out;
}

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path =
      argc > 1 ? argv[1]
               : std::string(OMNIEDGE_SOURCE_DIR) +
                     "/tests/fixtures/gateways/espresense/stationary-watch-10-rooms.jsonl";
  const int loops = argc > 2 ? std::stoi(argv[2]) : 300;
  const auto trace = loadTrace(path);
  if (trace.empty()) {
    std::cerr << "no trace at " << path << "\n";
    return 1;
  }
  // Each loop continues where the last one ended, as if the watch stayed all along.
  const int64_t span = trace.back().at_ms - trace.front().at_ms + 500;

  // 1. decode + engine, as BeaconSource::poll does it.
  PresenceEngine engine{PresenceOptions{}};
  std::vector<Event> events;
  std::size_t sightings = 0;
  std::size_t bad = 0;
  auto start = std::chrono::steady_clock::now();
  for (int loop = 0; loop < loops; ++loop) {
    for (const TraceMessage& m : trace) {
      auto parsed = omniedge::beacon::parseGatewayMessage(m.topic, m.payload);
      if (!parsed) {
        ++bad;
        continue;
      }
      for (const Sighting& s : parsed->sightings) {
        engine.observe(s, m.at_ms + loop * span, events);
        ++sightings;
      }
    }
  }
  const double full_s = secondsSince(start);
  const auto state = engine.stats();  // while the watch is still present
  engine.tick(trace.back().at_ms + (loops - 1) * span + 30'000, events);

  // 2. the engine alone, sightings already decoded.
  std::vector<std::pair<int64_t, Sighting>> decoded;
  for (const TraceMessage& m : trace) {
    if (auto parsed = omniedge::beacon::parseGatewayMessage(m.topic, m.payload)) {
      for (Sighting& s : parsed->sightings) {
        decoded.emplace_back(m.at_ms, std::move(s));
      }
    }
  }
  PresenceEngine engine_only{PresenceOptions{}};
  std::vector<Event> engine_events;
  start = std::chrono::steady_clock::now();
  for (int loop = 0; loop < loops; ++loop) {
    for (const auto& [at, s] : decoded) {
      engine_only.observe(s, at + loop * span, engine_events);
    }
  }
  const double engine_s = secondsSince(start);

  // 3. one pass of the trace: raw sightings vs events uplinked (enter + exit).
  PresenceEngine once{PresenceOptions{}};
  std::vector<Event> once_events;
  for (const auto& [at, s] : decoded) {
    once.observe(s, at, once_events);
  }
  once.tick(trace.back().at_ms + 30'000, once_events);

  // 4. garbage: what refusing bad gateway messages costs (each one checked and refused whole).
  const std::vector<std::pair<std::string, std::string>> garbage = {
      {"home/" + std::string(300, 'g') + "/BTtoMQTT", R"({"id":"A1:B2:C3:D4:E5:F6","rssi":-60})"},
      {"store/ble", R"({"scanner":"door\u0007","mac":"00:11:22:33:44:55","rssi":-60})"},
      {"espresense/devices/x/hall", R"({"id":"bad\u0001id","rssi":-60})"},
      {"store/ble", R"({"scanner":"door","mac":"00:11:22:33:44:55","rssi":"loud"})"},
      {"espresense/devices/x/hall", "[1,2,3]"},
  };
  std::size_t refused = 0;
  const int garbage_loops = 100'000;
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < garbage_loops; ++i) {
    const auto& [topic, payload] = garbage[static_cast<std::size_t>(i) % garbage.size()];
    refused += omniedge::beacon::parseGatewayMessage(topic, payload).has_value() ? 0 : 1;
  }
  const double garbage_s = secondsSince(start);

  std::printf("P7 beacon presence (trace %zu messages, %d loops, bad %zu)\n", trace.size(), loops,
              bad);
  std::printf("| measure                              | value        |\n");
  std::printf("| ------------------------------------ | ------------ |\n");
  std::printf("| decode+engine sightings/s (1 core)   | %12.0f |\n", sightings / full_s);
  std::printf("| engine-only sightings/s (1 core)     | %12.0f |\n",
              decoded.size() * static_cast<double>(loops) / engine_s);
  std::printf("| garbage messages refused/s (1 core)  | %12.0f |\n", refused / garbage_s);
  std::printf("| looped replay: sightings / events    | %7zu / %zu |\n", sightings, events.size());
  std::printf("| one pass: sightings / events         | %7zu / %zu |\n", decoded.size(),
              once_events.size());
  std::printf("| one pass ratio (goal >= 100x)        | %11.0fx |\n",
              static_cast<double>(decoded.size()) / static_cast<double>(once_events.size()));
  std::printf("| engine state for 1 watch, 10 rooms   | %8zu B   |\n", state.state_bytes);
  for (const Event& e : once_events) {
    std::printf("  %s %s\n", e.type.c_str(), e.data_json.c_str());
  }
  return 0;
}
