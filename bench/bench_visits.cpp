// What store-visit journeys cost on the ingest path: VisitTracker::enrich() on a
// pos.transaction (runs in Ingest::prepare() before the event is stored) and onStored() per
// joined event, with a real profile cache of 10,000 profiles (each with a 5-item cart) and a
// visit of 20 touchpoints open for the paying customer. Prints microseconds per call.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/omni/visits.h"
#include "agent/store/profile_cache.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class FixedClock final : public omniedge::Clock {
 public:
  int64_t nowMs() const override { return now; }
  int64_t now = 1795000000000;
};

double usPer(const std::chrono::steady_clock::duration d, int n) {
  return std::chrono::duration<double, std::micro>(d).count() / n;
}

}  // namespace

int main() {
  const fs::path dir = fs::temp_directory_path() / ("bench_visits." + std::to_string(getpid()));
  fs::create_directories(dir);
  FixedClock clock;
  auto profiles = omniedge::store::ProfileCache::open(dir);
  if (!profiles) {
    std::fprintf(stderr, "profiles: %s\n", profiles.error().message.c_str());
    return 1;
  }
  json upserts = json::array();
  for (int i = 0; i < 10000; ++i) {
    json items = json::array();
    for (int k = 0; k < 5; ++k) {
      items.push_back({{"sku", "SKU-" + std::to_string(i * 5 + k)},
                       {"qty", 1},
                       {"price", 9.99},
                       {"channel", k % 2 == 0 ? "app" : "web"}});
    }
    upserts.push_back({{"id", "c-" + std::to_string(i)},
                       {"keys", {"loyalty:L" + std::to_string(i), "app:A" + std::to_string(i)}},
                       {"consent", {{"tracking", true}}},
                       {"cart", {{"items", items}}}});
  }
  if (!(*profiles)->apply(json{{"upserts", upserts}, {"cursor", "1"}}.dump(), clock.now)) {
    std::fprintf(stderr, "profiles: apply failed\n");
    return 1;
  }
  omniedge::omni::VisitOptions vo;
  vo.dir = dir;
  vo.store_id = "store-042";
  auto tracker = omniedge::omni::VisitTracker::open(vo, profiles->get(), clock);
  if (!tracker) {
    std::fprintf(stderr, "visits: %s\n", tracker.error().message.c_str());
    return 1;
  }
  auto& visits = **tracker;

  // The paying customer's visit: 20 kiosk views.
  std::vector<omniedge::Event> views(20);
  std::vector<const omniedge::Event*> ptrs;
  for (int i = 0; i < 20; ++i) {
    views[i].id = "view-" + std::to_string(i);
    views[i].type = "kiosk.view";
    views[i].store_id = "store-042";
    views[i].occurred_at_ms = clock.now + i;
    views[i].customer["loyalty_id"] = "L4242";
    views[i].data_json = json{{"screen", "product:SKU-" + std::to_string(i)}}.dump();
    ptrs.push_back(&views[i]);
  }
  const int joins = 20;
  auto t0 = std::chrono::steady_clock::now();
  visits.onStored(ptrs);
  const double join_us = usPer(std::chrono::steady_clock::now() - t0, joins);

  omniedge::Event sale;
  sale.type = "pos.transaction";
  sale.customer["loyalty_id"] = "L4242";
  json lines = json::array();
  for (int i = 0; i < 10; ++i) {
    lines.push_back({{"item_id", "SKU-" + std::to_string(21210 + i)}, {"amount", 9.99}});
  }
  sale.data_json =
      json{{"workstation", "31"}, {"lines", lines}, {"totals", {{"grand", 99.9}}}}.dump();
  const int n = 20000;
  auto bench = [&](omniedge::Event e) {
    const auto start = std::chrono::steady_clock::now();
    std::size_t bytes = 0;
    for (int i = 0; i < n; ++i) {
      omniedge::Event copy = e;
      visits.enrich(copy);
      bytes += copy.data_json.size();
    }
    const double us = usPer(std::chrono::steady_clock::now() - start, n);
    return std::make_pair(us, bytes / n);
  };
  const auto [with_visit, with_bytes] = bench(sale);
  omniedge::Event no_visit = sale;
  no_visit.customer["loyalty_id"] = "L17";
  const auto [cart_only, cart_bytes] = bench(no_visit);
  omniedge::Event stranger = sale;
  stranger.customer["loyalty_id"] = "NOBODY";
  const auto [unknown, unknown_bytes] = bench(stranger);
  omniedge::Event view = views[0];
  const auto [other, other_bytes] = bench(view);

  std::printf("enrich pos.transaction, open visit (20 touchpoints) + 10 lines: %.1f us (%zu B)\n",
              with_visit, with_bytes);
  std::printf("enrich pos.transaction, known customer, no visit:               %.1f us (%zu B)\n",
              cart_only, cart_bytes);
  std::printf("enrich pos.transaction, unknown customer:                       %.1f us\n", unknown);
  std::printf("enrich any other event:                                         %.2f us\n", other);
  std::printf("onStored, one kiosk event joined into a visit:                  %.1f us\n", join_us);
  tracker->reset();
  profiles->reset();
  fs::remove_all(dir);
  return 0;
}
