#include "agent/history.h"

#include <catch2/catch.hpp>

namespace omniedge {
namespace {

HistorySample at(int64_t ms, int64_t ingested = 0) { return {ms, ingested, 0, 0, 0}; }

TEST_CASE("the history keeps one sample per interval and the newest ones, oldest first",
          "[unit][console]") {
  History history(10'000, 3);
  CHECK(history.offer(at(1'000, 1)));
  CHECK_FALSE(history.offer(at(5'000, 2)));  // within the interval: not kept
  CHECK(history.offer(at(11'000, 3)));
  CHECK(history.offer(at(21'000, 4)));
  CHECK(history.offer(at(31'000, 5)));  // the ring is full: the oldest leaves
  const auto kept = history.samples();
  REQUIRE(kept.size() == 3);
  CHECK(kept[0].at_ms == 11'000);
  CHECK(kept[0].ingested == 3);
  CHECK(kept[2].at_ms == 31'000);
  CHECK(kept[2].ingested == 5);
  CHECK(history.capacity() == 3);
}

TEST_CASE("the history's memory is fixed however long the agent runs", "[unit][console]") {
  History history(1'000);
  for (int64_t i = 0; i < 10'000; ++i) {
    history.offer(at(i * 1'000, i));
  }
  const auto kept = history.samples();
  REQUIRE(kept.size() == History::kDefaultCapacity);
  CHECK(kept.front().ingested == 10'000 - static_cast<int64_t>(History::kDefaultCapacity));
  CHECK(kept.back().ingested == 9'999);
}

TEST_CASE("a wall clock set back does not stop the sampling", "[unit][console]") {
  History history(10'000, 4);
  CHECK(history.offer(at(100'000)));
  CHECK(history.offer(at(50'000)));  // the clock went back: taken, the interval starts again
  CHECK_FALSE(history.offer(at(55'000)));
  CHECK(history.offer(at(60'000)));
  CHECK(history.samples().size() == 3);
}

}  // namespace
}  // namespace omniedge
