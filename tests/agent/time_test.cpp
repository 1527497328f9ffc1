#include "agent/api/time.h"

#include <catch2/catch.hpp>

using omniedge::formatRfc3339Ms;
using omniedge::parseRfc3339;

TEST_CASE("timestamps are written as RFC 3339 UTC with milliseconds", "[unit][time]") {
  CHECK(formatRfc3339Ms(0) == "1970-01-01T00:00:00.000Z");
  CHECK(formatRfc3339Ms(1795000000123) == "2026-11-18T11:06:40.123Z");
  CHECK(formatRfc3339Ms(951782400000) == "2000-02-29T00:00:00.000Z");
  CHECK(formatRfc3339Ms(-1) == "1969-12-31T23:59:59.999Z");
  CHECK(formatRfc3339Ms(253402300799999) == "9999-12-31T23:59:59.999Z");
  CHECK(formatRfc3339Ms(253402300800000) == "10000-01-01T00:00:00.000Z");
  for (int64_t t = 0; t < 4'000'000'000'000; t += 9'876'543'211) {
    INFO(t);
    CHECK(parseRfc3339(formatRfc3339Ms(t)) == t);
  }
}

TEST_CASE("RFC 3339 timestamps are read with any fraction and offset", "[unit][time]") {
  CHECK(parseRfc3339("2026-11-18T11:06:40.123Z") == 1795000000123);
  CHECK(parseRfc3339("2026-11-18T11:06:40Z") == 1795000000000);
  CHECK(parseRfc3339("2026-11-18T12:06:40.123456+01:00") == 1795000000123);
  CHECK(parseRfc3339("2026-11-18 06:06:40.1-05:00") == 1795000000100);
  CHECK(parseRfc3339("2000-02-29T00:00:00Z") == 951782400000);
}

TEST_CASE("malformed timestamps are refused", "[unit][time]") {
  for (const char* bad :
       {"", "2026-11-18", "2026-11-18T11:06:40", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
        "2025-02-29T00:00:00Z", "2026-11-18T24:00:00Z", "2026-11-18T11:06:40.Z",
        "2026-11-18T11:06:40+0100", "2026-11-18T11:06:40Zjunk", "20x6-11-18T11:06:40Z"}) {
    INFO(bad);
    CHECK_FALSE(parseRfc3339(bad).has_value());
  }
}
