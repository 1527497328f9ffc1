#include "agent/store/profile_cache.h"

#include <catch2/catch.hpp>

#include "tests/support/temp_dir.h"

using omniedge::store::ProfileCache;
using omniedge::testing::TempDir;

namespace {

constexpr const char* kUpsert = R"({"upserts":[{"id":"c-1","keys":["loyalty:L1","ibeacon:u:1:2"],
  "segments":["vip"],"lifecycle":"loyal"}],"cursor":"7"})";

}  // namespace

TEST_CASE("the profile cache answers by any key and maps a beacon to its customer",
          "[unit][profiles]") {
  TempDir dir;
  auto cache = ProfileCache::open(dir.path());
  REQUIRE(cache.has_value());
  auto r = (*cache)->apply(kUpsert, 1795000000000);
  REQUIRE(r.has_value());
  CHECK(r->upserts == 1);
  auto p = (*cache)->lookup("ibeacon:u:1:2");
  REQUIRE(p.has_value());
  CHECK((*p)["id"] == "c-1");
  CHECK((*p)["freshness"] == "2026-11-18T11:06:40.000Z");
  auto who = (*cache)->customerFor("ibeacon:u:1:2");
  CHECK(who["profile_id"] == "c-1");
  CHECK(who["loyalty_id"] == "L1");
  CHECK((*cache)->customerFor("ibeacon:other").empty());

  SECTION("a delete by any one key removes the profile") {
    REQUIRE((*cache)->apply(R"({"deletes":["loyalty:L1"]})", 1795000001000).has_value());
    CHECK_FALSE((*cache)->lookup("ibeacon:u:1:2").has_value());
  }
  SECTION("profiles survive a restart") {
    cache->reset();
    auto again = ProfileCache::open(dir.path());
    REQUIRE(again.has_value());
    CHECK((*again)->lookup("loyalty:L1").has_value());
  }
}

TEST_CASE("a malformed profile update is refused whole, naming the field", "[unit][profiles]") {
  TempDir dir;
  auto cache = ProfileCache::open(dir.path());
  REQUIRE(cache.has_value());
  auto bad = (*cache)->apply(
      R"({"upserts":[{"id":"c-1","keys":["loyalty:L1"]},{"id":"c-2","keys":"nope"}]})", 1);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().field == "upserts[1].keys");
  CHECK_FALSE((*cache)->lookup("loyalty:L1").has_value());  // nothing of it applied
  CHECK_FALSE((*cache)->apply("not json", 1).has_value());
}

TEST_CASE("the profile cache tells who refused tracking, by any of their keys",
          "[unit][profiles][consent]") {
  TempDir dir;
  auto cache = ProfileCache::open(dir.path());
  REQUIRE(cache.has_value());
  REQUIRE((*cache)
              ->apply(R"({"upserts":[
      {"id":"c-1","keys":["loyalty:L1","app:A1"],"consent":{"tracking":false}},
      {"id":"c-2","keys":["loyalty:L2"],"consent":{"tracking":true}}]})",
                      1)
              .has_value());
  CHECK((*cache)->trackingRefused({{"loyalty_id", "L1"}}));
  CHECK((*cache)->trackingRefused({{"app_user_id", "A1"}}));
  CHECK((*cache)->trackingRefused({{"profile_id", "c-1"}}));
  CHECK_FALSE((*cache)->trackingRefused({{"loyalty_id", "L2"}}));
  CHECK_FALSE((*cache)->trackingRefused({{"loyalty_id", "unknown"}}));
}
