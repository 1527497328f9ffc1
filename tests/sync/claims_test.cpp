#include "sync/claims.h"

#include <catch2/catch.hpp>

#include "sync/rate_limit.h"

namespace omniedge::sync {
namespace {

TEST_CASE("claims never overlap: a later claim stops before an earlier one, or is told to skip",
          "[unit][sync]") {
  ClaimBook book;
  auto https = book.claim(Uplink::kHttps, 1, 100);
  REQUIRE(https.granted);
  CHECK(https.last == 100);

  SECTION("a seq inside someone's claim: skip to its end") {
    auto mqtt = book.claim(Uplink::kMqtt, 50, 200);
    CHECK_FALSE(mqtt.granted);
    CHECK(mqtt.last == 100);
  }
  SECTION("a range that runs into a claim stops before it") {
    auto late = book.claim(Uplink::kMqtt, 150, 300);
    REQUIRE(late.granted);
    auto early = book.claim(Uplink::kMqtt, 101, 500);
    REQUIRE(early.granted);
    CHECK(early.last == 149);
  }
  SECTION("a link's own claim in flight is skipped too") {
    auto again = book.claim(Uplink::kHttps, 1, 10);
    CHECK_FALSE(again.granted);
    CHECK(again.last == 100);
  }
  SECTION("a cut batch shrinks its claim and frees the rest") {
    book.shrink(Uplink::kHttps, 1, 40);
    auto rest = book.claim(Uplink::kMqtt, 41, 100);
    REQUIRE(rest.granted);
    CHECK(rest.last == 100);
  }
}

TEST_CASE("seqs returned to the pool bump the generation, delivered ones do not", "[unit][sync]") {
  ClaimBook book;
  const auto g0 = book.generation();
  REQUIRE(book.claim(Uplink::kHttps, 1, 10).granted);
  book.done(Uplink::kHttps, 1);
  CHECK(book.generation() == g0);
  CHECK(book.claims(Uplink::kHttps) == 0);

  REQUIRE(book.claim(Uplink::kHttps, 11, 20).granted);
  book.release(Uplink::kHttps, 11);  // a 5xx: the range is free again
  CHECK(book.generation() == g0 + 1);
  CHECK(book.claim(Uplink::kMqtt, 11, 20).granted);

  REQUIRE(book.claim(Uplink::kMqtt, 21, 30).granted);
  book.releaseAll(Uplink::kMqtt);  // the connection dropped
  CHECK(book.generation() == g0 + 2);
  CHECK(book.claims(Uplink::kMqtt) == 0);
  // Another link cannot end or release a claim it does not hold.
  REQUIRE(book.claim(Uplink::kHttps, 31, 40).granted);
  book.done(Uplink::kMqtt, 31);
  CHECK(book.claims(Uplink::kHttps) == 1);
}

TEST_CASE("raising the backfill floor keeps the generation, dropping it bumps it", "[unit][sync]") {
  ClaimBook book;
  const auto g0 = book.generation();
  book.setFloor(500);
  book.setFloor(900);
  CHECK(book.generation() == g0);
  CHECK(book.floor() == 900);
  book.setFloor(0);  // backfill over: MQTT reads from the head again
  CHECK(book.generation() == g0 + 1);
}

TEST_CASE("the MQTT state says since when it holds", "[unit][sync]") {
  ClaimBook book;
  book.setMqttUp(false, 1000);
  CHECK_FALSE(book.mqttUp());
  CHECK(book.mqttChangedMs() == 1000);
  book.setMqttUp(false, 5000);  // no change: still down since 1000
  CHECK(book.mqttChangedMs() == 1000);
  book.setMqttUp(true, 7000);
  CHECK(book.mqttUp());
  CHECK(book.mqttChangedMs() == 7000);
}

TEST_CASE("one rate limit caps what both links send together", "[unit][sync]") {
  RateLimit unlimited(0);
  unlimited.spend(1 << 30);
  CHECK(unlimited.waitMs() == 0);

  RateLimit rate(1000);
  CHECK(rate.waitMs() == 0);
  rate.spend(600);   // MQTT
  rate.spend(1400);  // HTTPS: the bucket is 1000 in debt now
  const int64_t wait = rate.waitMs();
  CHECK(wait > 500);
  CHECK(wait <= 1000);
}

}  // namespace
}  // namespace omniedge::sync
