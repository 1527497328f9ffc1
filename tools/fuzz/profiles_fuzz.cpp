// libFuzzer target: R/profiles payloads (agent/store/profile_cache.h ProfileCache::apply) on a
// real profiles.db in a tmpfs folder (started afresh every 5000 inputs, so it stays small).
// Checks: a refusal is "invalid" naming its field or "invalid_json", and leaves the cache as it
// was (all or nothing); an accepted message counts its upserts and deletes, and every key of an
// upserted profile then finds the profile that claimed it last.  Run: tools/fuzz/run profiles
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "agent/store/profile_cache.h"
#include "drivers/kiosk/customer_key.h"
#include "tools/fuzz/check.h"

namespace {

using nlohmann::json;

struct State {
  std::filesystem::path dir;
  std::unique_ptr<omniedge::store::ProfileCache> cache;
  int uses = 0;
  int64_t now = 1764000000000;
};
State* state = nullptr;

void reopen() {
  state->cache.reset();
  std::filesystem::remove_all(state->dir);
  std::filesystem::create_directories(state->dir);
  auto cache = omniedge::store::ProfileCache::open(state->dir);
  FUZZ_CHECK(cache.has_value());
  state->cache = std::move(*cache);
  state->uses = 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  state = new State;
  const char* shm = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
  state->dir = std::filesystem::path(shm) / ("omniedge-fuzz-profiles-" + std::to_string(getpid()));
  reopen();
  std::atexit([] { std::filesystem::remove_all(state->dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (++state->uses > 5000) reopen();
  const std::string_view payload(reinterpret_cast<const char*>(data), size);
  auto& cache = *state->cache;
  const uint64_t generation = cache.generation();
  const std::size_t before = cache.size();
  state->now += 1000;
  const auto r = cache.apply(payload, state->now);
  if (!r) {
    const auto& e = r.error();
    FUZZ_CHECK(e.code == "invalid" || e.code == "invalid_json");
    FUZZ_CHECK(!e.message.empty());
    if (e.code == "invalid") FUZZ_CHECK(!e.field.empty());
    FUZZ_CHECK(cache.generation() == generation && cache.size() == before);
    return 0;
  }
  const json msg = json::parse(payload);
  const json upserts = msg.value("upserts", json::array());
  FUZZ_CHECK(r->upserts == static_cast<int>(upserts.size()));
  if (msg.contains("deletes") && !msg["deletes"].empty()) return 0;
  // canonical key -> the id that claimed it last; an upsert replaces its profile's keys.
  std::map<std::string, std::string> owner;
  for (const auto& p : upserts) {
    const std::string id = p["id"].get<std::string>();
    std::erase_if(owner, [&](const auto& kv) { return kv.second == id; });
    for (const auto& k : p["keys"]) {
      owner[omniedge::kiosk::canonicalCustomerKey(k.get<std::string>())] = id;
    }
  }
  for (const auto& [key, id] : owner) {
    const auto found = cache.lookup(key);
    FUZZ_CHECK(found.has_value());
    FUZZ_CHECK((*found)["id"] == id);
  }
  return 0;
}
