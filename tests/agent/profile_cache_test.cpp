#include "agent/store/profile_cache.h"

#include <sqlite3.h>

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

TEST_CASE("the profile cache tells each consent purpose apart, and finds a customer's profile",
          "[unit][profiles][consent]") {
  using omniedge::ConsentPurpose;
  TempDir dir;
  auto cache = ProfileCache::open(dir.path());
  REQUIRE(cache.has_value());
  REQUIRE((*cache)
              ->apply(R"({"upserts":[
      {"id":"c-1","keys":["loyalty:L1"],"tier":"gold",
       "consent":{"tracking":true,"personalization":false,"marketing":false}},
      {"id":"c-2","keys":["loyalty:L2"],"consent":{"marketing":false}}]})",
                      1)
              .has_value());
  CHECK_FALSE((*cache)->refused({{"loyalty_id", "L1"}}, ConsentPurpose::kTracking));
  CHECK((*cache)->refused({{"loyalty_id", "L1"}}, ConsentPurpose::kPersonalization));
  CHECK((*cache)->refused({{"loyalty_id", "L1"}}, ConsentPurpose::kMarketing));
  CHECK_FALSE((*cache)->refused({{"loyalty_id", "L2"}}, ConsentPurpose::kPersonalization));
  CHECK((*cache)->refused({{"loyalty_id", "L2"}}, ConsentPurpose::kMarketing));
  // Two keys of one event: a refusal by either profile wins.
  CHECK((*cache)->refused({{"app_user_id", "nobody"}, {"loyalty_id", "L2"}},
                          ConsentPurpose::kMarketing));
  auto p = (*cache)->profileFor({{"app_user_id", "nobody"}, {"loyalty_id", "L1"}});
  REQUIRE(p.has_value());
  CHECK((*p)["tier"] == "gold");
  CHECK_FALSE((*cache)->profileFor({{"loyalty_id", "unknown"}}).has_value());
}

namespace {

using omniedge::store::ProfileCacheOptions;

// `n` profiles c-<first>.. with a loyalty key L<i>, each ~`pad` bytes of JSON.
std::string upserts(int first, int n, std::size_t pad = 400, const char* consent = "true") {
  std::string out = R"({"upserts":[)";
  for (int i = first; i < first + n; ++i) {
    out += i == first ? "" : ",";
    out += R"({"id":"c-)" + std::to_string(i) + R"(","keys":["loyalty:L)" + std::to_string(i) +
           R"("],"consent":{"tracking":)" + consent + R"(},"note":")" + std::string(pad, 'n') +
           R"("})";
  }
  return out + "]}";
}

}  // namespace

TEST_CASE("the profile cache holds at most max_bytes in memory, evicted profiles answer from disk",
          "[unit][profiles]") {
  TempDir dir;
  ProfileCacheOptions options;
  options.dir = dir.path();
  options.max_bytes = 16 * 1024;
  auto cache = ProfileCache::open(options);
  REQUIRE(cache.has_value());
  for (int batch = 0; batch < 10; ++batch) {
    REQUIRE((*cache)->apply(upserts(batch * 10, 10), 1000 + batch).has_value());
  }
  auto s = (*cache)->stats();
  CHECK(s.on_disk == 100);
  CHECK((*cache)->size() == 100);
  CHECK(s.memory_bytes <= 16 * 1024);
  CHECK(s.in_memory < 100);
  CHECK(s.memory_evictions == 100 - s.in_memory);
  CHECK(s.memory_max_bytes == 16 * 1024);

  // The first ones left memory long ago: still there, from profiles.db.
  auto early = (*cache)->lookup("loyalty:L0");
  REQUIRE(early.has_value());
  CHECK((*early)["id"] == "c-0");
  CHECK((*early)["freshness"] == "1970-01-01T00:00:01.000Z");
  CHECK((*cache)->stats().disk_reads == 1);
  CHECK((*cache)->customerFor("loyalty:L1")["profile_id"] == "c-1");
  CHECK_FALSE((*cache)->lookup("loyalty:L100").has_value());
}

TEST_CASE("consent is honoured for a profile that left memory", "[unit][profiles][consent]") {
  TempDir dir;
  ProfileCacheOptions options;
  options.dir = dir.path();
  options.max_bytes = 8 * 1024;
  auto cache = ProfileCache::open(options);
  REQUIRE(cache.has_value());
  REQUIRE((*cache)->apply(upserts(0, 1, 400, "false"), 1).has_value());
  REQUIRE((*cache)->apply(upserts(1, 50), 2).has_value());
  REQUIRE((*cache)->stats().in_memory < 51);
  CHECK((*cache)->trackingRefused({{"loyalty_id", "L0"}}));
  CHECK((*cache)->trackingRefused({{"profile_id", "c-0"}}));
  CHECK_FALSE((*cache)->trackingRefused({{"loyalty_id", "L1"}}));
}

TEST_CASE("profiles.db stays under max_disk_bytes: the least recently heard go first",
          "[unit][profiles]") {
  TempDir dir;
  ProfileCacheOptions options;
  options.dir = dir.path();
  options.max_disk_bytes = 20 * 1024;
  auto cache = ProfileCache::open(options);
  REQUIRE(cache.has_value());
  for (int batch = 0; batch < 10; ++batch) {
    REQUIRE((*cache)->apply(upserts(batch * 10, 10), 1000 + batch).has_value());
  }
  const auto s = (*cache)->stats();
  CHECK(s.disk_bytes <= 20 * 1024);
  CHECK(s.disk_evictions == 100 - s.on_disk);
  CHECK(s.on_disk < 100);
  CHECK_FALSE((*cache)->lookup("loyalty:L0").has_value());  // heard of first: gone
  CHECK((*cache)->lookup("loyalty:L99").has_value());

  SECTION("after a restart: the same bound, the same counts") {
    cache->reset();
    auto again = ProfileCache::open(options);
    REQUIRE(again.has_value());
    CHECK((*again)->stats().on_disk == s.on_disk);
    CHECK((*again)->stats().disk_bytes == s.disk_bytes);
    CHECK((*again)->lookup("loyalty:L99").has_value());
  }
}

TEST_CASE("hex keys match whatever their case, as the centre or the kiosk wrote them",
          "[unit][profiles]") {
  TempDir dir;
  auto cache = ProfileCache::open(dir.path());
  REQUIRE(cache.has_value());
  const std::string upper(64, 'A');
  const std::string lower(64, 'a');
  REQUIRE((*cache)
              ->apply(R"({"upserts":[{"id":"c-1","keys":["email_sha256:)" + upper +
                          R"(","ibeacon:F7826DA6-4FA2-4E98-8024-BC5B71E0893E:100:7"]}]})",
                      1)
              .has_value());
  CHECK((*cache)->lookup("email_sha256:" + lower).has_value());
  CHECK((*cache)->lookup("email_sha256:" + upper).has_value());
  CHECK((*cache)->customerFor("ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:100:7")["profile_id"] ==
        "c-1");
  REQUIRE((*cache)->apply(R"({"deletes":["EMAIL_SHA256:)" + lower + R"("]})", 2).has_value());
  CHECK_FALSE((*cache)->lookup("email_sha256:" + lower).has_value());
}

TEST_CASE("a kiosk can start a cart for a customer the centre has not sent", "[unit][profiles]") {
  TempDir dir;
  auto cache = ProfileCache::open(dir.path());
  REQUIRE(cache.has_value());
  const nlohmann::json item = {{"sku", "SKU-1"}, {"qty", 1}, {"channel", "store"}};
  auto cart = (*cache)->addCartItem("loyalty:NEW", item, 1000);
  REQUIRE(cart.has_value());
  CHECK((*cart)["items"][0]["sku"] == "SKU-1");
  REQUIRE((*cache)->addCartItem("loyalty:NEW", item, 2000).has_value());
  auto kept = (*cache)->cartJson("loyalty:NEW");
  REQUIRE(kept.has_value());
  CHECK(nlohmann::json::parse(*kept)["items"][0]["qty"] == 2);
  // Not a profile: nobody knows who it is yet.
  CHECK_FALSE((*cache)->lookup("loyalty:NEW").has_value());
  CHECK((*cache)->customerFor("loyalty:NEW").empty());
  CHECK((*cache)->stats().local_carts == 1);

  SECTION("it survives a restart") {
    cache->reset();
    auto again = ProfileCache::open(dir.path());
    REQUIRE(again.has_value());
    CHECK((*again)->cartJson("loyalty:NEW").has_value());
  }
  SECTION("the centre's profile takes the key over") {
    REQUIRE((*cache)
                ->apply(R"({"upserts":[{"id":"c-7","keys":["loyalty:NEW"],"cart":{"items":[
                  {"sku":"SKU-1","qty":2,"channel":"store"}]}}]})",
                        3000)
                .has_value());
    auto profile = (*cache)->lookup("loyalty:NEW");
    REQUIRE(profile.has_value());
    CHECK((*profile)["id"] == "c-7");
    CHECK((*cache)->stats().local_carts == 0);
    CHECK((*cache)->stats().on_disk == 1);
  }
}

TEST_CASE("a profile that claims another's key takes it, the other keeps the rest",
          "[unit][profiles]") {
  TempDir dir;
  ProfileCacheOptions options;
  options.dir = dir.path();
  options.max_bytes = 64 * 1024;
  auto cache = ProfileCache::open(options);
  REQUIRE(cache.has_value());
  REQUIRE((*cache)
              ->apply(R"({"upserts":[{"id":"a","keys":["loyalty:A","app:SHARED"]}]})", 1)
              .has_value());
  REQUIRE((*cache)
              ->apply(R"({"upserts":[{"id":"b","keys":["loyalty:B","app:SHARED"]}]})", 2)
              .has_value());
  CHECK((*(*cache)->lookup("app:SHARED"))["id"] == "b");
  CHECK((*(*cache)->lookup("loyalty:A"))["id"] == "a");
  // Deleting a by its remaining key leaves b's.
  REQUIRE((*cache)->apply(R"({"deletes":["loyalty:A"]})", 3).has_value());
  CHECK((*(*cache)->lookup("app:SHARED"))["id"] == "b");
  // And from the file alone (a restart), the same answers.
  cache->reset();
  auto again = ProfileCache::open(options);
  REQUIRE(again.has_value());
  CHECK((*(*again)->lookup("app:SHARED"))["id"] == "b");
  CHECK_FALSE((*again)->lookup("loyalty:A").has_value());
}

TEST_CASE("a profiles.db of the earlier layout is upgraded in place", "[unit][profiles]") {
  TempDir dir;
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open((dir.path() / "profiles.db").c_str(), &db) == SQLITE_OK);
    const std::string sql =
        "CREATE TABLE profiles(id TEXT PRIMARY KEY, doc TEXT NOT NULL,"
        " heard_ms INTEGER NOT NULL) WITHOUT ROWID;"
        "INSERT INTO profiles VALUES('c-1', '{\"id\":\"c-1\",\"keys\":"
        "[\"loyalty:L1\",\"email_sha256:" +
        std::string(64, 'D') + "\"],\"consent\":{\"tracking\":false}}', 5000);";
    REQUIRE(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  auto cache = ProfileCache::open(dir.path());
  REQUIRE(cache.has_value());
  auto p = (*cache)->lookup("email_sha256:" + std::string(64, 'd'));
  REQUIRE(p.has_value());
  CHECK((*p)["id"] == "c-1");
  CHECK((*p)["freshness"] == "1970-01-01T00:00:05.000Z");
  CHECK((*cache)->trackingRefused({{"loyalty_id", "L1"}}));
  CHECK((*cache)->stats().on_disk == 1);
  CHECK((*cache)->stats().disk_bytes > 0);
}
