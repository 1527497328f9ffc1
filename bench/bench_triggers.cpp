// T1: what the local triggers cost per event (agent/omni/triggers.h): 50 rules, 10,000 profiles
// in the real profile cache, beacon.enter events as ingest hands them to its observers, against
// a ceiling measured in the same run: one hash-map lookup of the customer plus a parse of the
// event's data JSON (what the most naive evaluation would do at the least per event).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/api/clock.h"
#include "agent/omni/trigger_rules.h"
#include "agent/omni/triggers.h"
#include "agent/store/profile_cache.h"

using omniedge::AppendOutcome;
using omniedge::Event;
using omniedge::Result;
using Json = nlohmann::json;

namespace {

class NullWriter final : public omniedge::EventWriter {
 public:
  Result<AppendOutcome> append(std::vector<Event> events) override {
    AppendOutcome o;
    o.stored = events.size();
    return o;
  }
  Result<AppendOutcome> appendEach(std::vector<Event> events) override {
    return append(std::move(events));
  }
};

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

constexpr int kProfiles = 10'000;
constexpr int kRules = 50;
constexpr int kEvents = 20'000;
constexpr int kRounds = 25;

}  // namespace

int main() {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("bench-triggers-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  omniedge::store::ProfileCacheOptions po;
  po.dir = dir;
  po.max_bytes = std::size_t{64} << 20;  // all 10k in memory, as in a store that sized it so
  auto opened = omniedge::store::ProfileCache::open(po);
  if (!opened) {
    std::fprintf(stderr, "profile cache: %s\n", opened.error().message.c_str());
    return 1;
  }
  auto& profiles = **opened;
  std::mt19937 rng(42);
  const char* tiers[] = {"gold", "silver", "bronze", "gold", "silver"};
  for (int batch = 0; batch < kProfiles / 500; ++batch) {
    Json upserts = Json::array();
    for (int k = 0; k < 500; ++k) {
      const int i = batch * 500 + k;
      Json p = {
          {"id", "c-" + std::to_string(i)},
          {"keys", {"loyalty:L-" + std::to_string(i), "ibeacon:u:1:" + std::to_string(i)}},
          {"tier", tiers[rng() % 5]},
          {"lifecycle", rng() % 2 ? "loyal" : "new"},
          {"segments", {"seg" + std::to_string(rng() % 20), "seg" + std::to_string(rng() % 20)}},
          {"consent", {{"personalization", true}, {"marketing", true}}}};
      if (rng() % 2 == 0) {
        p["cart"] = {{"items", {{{"sku", "SKU-" + std::to_string(i)}, {"qty", 1}}}}};
      }
      upserts.push_back(std::move(p));
    }
    if (auto r = profiles.apply(Json{{"upserts", upserts}}.dump(), 1795000000000); !r) {
      std::fprintf(stderr, "apply: %s\n", r.error().message.c_str());
      return 1;
    }
  }

  Json rules = Json::array();
  for (int r = 0; r < kRules; ++r) {
    Json rule = {{"id", "rule-" + std::to_string(r)},
                 {"emit", "engagement.r" + std::to_string(r)},
                 {"rate_limit", "1/4h"},
                 {"holdout", 0.1}};
    if (r < 40) {
      rule["on"] = "beacon.enter";
      rule["when"] = {{"tier", {tiers[r % 3]}},
                      {"segments_any", {"seg" + std::to_string(r % 20)}},
                      {"zone", {"z" + std::to_string(r % 10)}}};
      if (r % 2 == 0) {
        rule["when"]["cart_not_empty"] = true;
        rule["show"] = {{"kind", "cart"}};
      }
    } else if (r < 45) {
      rule["on"] = "pos.*";
      rule["when"] = {{"lifecycle", {"new"}}};
    } else {
      rule["on"] = "kiosk.view";
      rule["when"] = {{"tier", {"gold"}}};
    }
    rules.push_back(std::move(rule));
  }
  auto parsed = omniedge::omni::parseTriggerRules(rules.dump());
  if (!parsed) {
    std::fprintf(stderr, "rules: %s\n", parsed.error().message.c_str());
    return 1;
  }

  NullWriter writer;
  omniedge::SystemClock clock;
  omniedge::omni::TriggerOptions to;
  to.holdout_key = "bench-holdout-key-0123456789";
  to.max_state_bytes = std::size_t{16} << 20;
  omniedge::omni::TriggerEngine engine(to, profiles, writer, clock, {});
  engine.setRules(std::move(*parsed));

  // Events as ingest hands them over: the beacon resolved to the profile's keys; 10% unknown.
  std::vector<Event> events(kEvents);
  for (int i = 0; i < kEvents; ++i) {
    Event& e = events[i];
    const int who = static_cast<int>(rng() % (kProfiles + kProfiles / 9));
    e.id = "0190e1c2-0000-7000-8000-" + std::to_string(100000000000 + i);
    e.type = "beacon.enter";
    e.source = "beacon:s1";
    e.customer["beacon"] = "ibeacon:u:1:" + std::to_string(who);
    if (who < kProfiles) {
      e.customer["profile_id"] = "c-" + std::to_string(who);
      e.customer["loyalty_id"] = "L-" + std::to_string(who);
    }
    e.data_json = Json{
        {"identity", e.customer["beacon"]},
        {"zone", "z" + std::to_string(rng() % 10)},
        {"scanner", "s1"},
        {"rssi", -61.5},
        {"distance_m",
         2.13}}.dump();
  }

  // First look at every customer since the profiles changed: one profile read each.
  std::vector<omniedge::omni::TriggerEngine::Firing> out;
  int64_t now = 1795000000000;
  auto start = std::chrono::steady_clock::now();
  for (const Event& e : events) {
    engine.evaluate(e, now, out);
  }
  const double cold_s = secondsSince(start);
  const std::size_t first_fired = out.size();
  out.clear();

  // Steady state: facts cached, rate limits in force (now moves on by 1 ms an event).
  std::size_t fired = 0;
  start = std::chrono::steady_clock::now();
  for (int round = 0; round < kRounds; ++round) {
    for (const Event& e : events) {
      engine.evaluate(e, ++now, out);
    }
    fired += out.size();
    out.clear();
  }
  const double hot_s = secondsSince(start);

  // The ceiling: a map lookup of the customer and a parse of the data JSON, per event.
  std::unordered_map<std::string, int> index;
  for (int i = 0; i < kProfiles; ++i) {
    index.emplace("c-" + std::to_string(i), i);
  }
  volatile std::size_t sink = 0;
  start = std::chrono::steady_clock::now();
  for (int round = 0; round < kRounds; ++round) {
    for (const Event& e : events) {
      auto it = e.customer.find("profile_id");
      if (it != e.customer.end()) {
        auto hit = index.find(it->second);
        sink = sink + (hit != index.end() ? static_cast<std::size_t>(hit->second) : 0);
      }
      const Json d = Json::parse(e.data_json);
      sink = sink + d.size();
    }
  }
  const double ceiling_s = secondsSince(start);
  std::filesystem::remove_all(dir);

  const double n = static_cast<double>(kEvents) * kRounds;
  const double hot_ns = hot_s * 1e9 / n;
  const double ceiling_ns = ceiling_s * 1e9 / n;
  const auto stats = engine.stats();
  std::printf("T1 triggers (%d rules, %d profiles, %d events x %d rounds, one core)\n", kRules,
              kProfiles, kEvents, kRounds);
  std::printf("| measure                                        | value        |\n");
  std::printf("| ---------------------------------------------- | ------------ |\n");
  std::printf("| evaluate ns/event (facts cached)               | %12.0f |\n", hot_ns);
  std::printf("| ceiling ns/event (map lookup + data JSON parse)| %12.0f |\n", ceiling_ns);
  std::printf("| ratio evaluate / ceiling                       | %12.2f |\n", hot_ns / ceiling_ns);
  std::printf("| first look after a profile change ns/event    | %12.0f |\n",
              cold_s * 1e9 / kEvents);
  std::printf("| fired first pass / steady rounds               | %5zu / %zu |\n", first_fired,
              fired);
  std::printf("| rate limited / held out                        | %6llu / %llu |\n",
              static_cast<unsigned long long>(stats.rate_limited),
              static_cast<unsigned long long>(stats.held_out));
  std::printf("| trigger state bytes                            | %12zu |\n", stats.state_bytes);
  return 0;
}
