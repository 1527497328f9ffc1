#include "agent/api/json_string.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>

using omniedge::appendJsonString;
using omniedge::jsonPlainRun;

namespace {

// One byte at a time, as the scan was written before it went 16 at a time.
std::size_t plainRunByBytes(std::string_view s, std::size_t from, bool stop_at_del) {
  std::size_t i = from;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80 || (stop_at_del && c == 0x7f)) {
      break;
    }
    ++i;
  }
  return i - from;
}

std::string literal(std::string_view s) {
  std::string out;
  appendJsonString(out, s);
  return out;
}

}  // namespace

TEST_CASE("the plain run of a JSON string ends at the first byte to escape, wherever it is",
          "[unit][json]") {
  // The bytes at the edges of every class, and plain letters, at every offset and length around
  // the 16-byte steps.
  const std::string edges{"\x00\x1f\x20\x21\"\\\x7e\x7f\x80\xc3\xff", 11};
  std::minstd_rand rng(7);
  for (int round = 0; round < 4000; ++round) {
    const std::size_t size = rng() % 70;
    std::string s;
    for (std::size_t i = 0; i < size; ++i) {
      s.push_back(rng() % 8 == 0 ? edges[rng() % edges.size()]
                                 : static_cast<char>('a' + rng() % 26));
    }
    for (std::size_t from = 0; from <= s.size(); ++from) {
      for (const bool del : {false, true}) {
        REQUIRE(jsonPlainRun(s, from, del) == plainRunByBytes(s, from, del));
      }
    }
  }
}

TEST_CASE("appendJsonString escapes what JSON needs and keeps the rest as it is", "[unit][json]") {
  CHECK(literal("") == "\"\"");
  CHECK(literal("plain text, no escapes at all here") == "\"plain text, no escapes at all here\"");
  CHECK(literal("a\"b\\c\nd\re\tf\x01g\x7fh") == "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u007fh\"");
  CHECK(literal("caf\xc3\xa9 \xe2\x98\x83") == "\"caf\xc3\xa9 \xe2\x98\x83\"");
  CHECK(literal("latin-1 caf\xe9!") == "\"latin-1 caf\xEF\xBF\xBD!\"");
  // A quote at each position around the 16-byte steps.
  for (std::size_t at = 0; at < 40; ++at) {
    std::string s(40, 'x');
    s[at] = '"';
    std::string want = "\"" + std::string(at, 'x') + "\\\"" + std::string(39 - at, 'x') + "\"";
    REQUIRE(literal(s) == want);
  }
}
