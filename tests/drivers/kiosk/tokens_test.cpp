#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "drivers/kiosk/http_api.h"

namespace omniedge::kiosk {
namespace {

using Catch::Matchers::Contains;

TEST_CASE("a plain tokens file, one token per line, still reads: each writes kiosk.* only",
          "[unit][kiosk][auth]") {
  auto tokens = parseTokens("# kiosks\nfirst-token-0123456789\n\n  second-token-0123456789  \r\n");
  REQUIRE(tokens.has_value());
  REQUIRE(tokens->size() == 2);
  CHECK((*tokens)[0].secret == "first-token-0123456789");
  CHECK((*tokens)[1].secret == "second-token-0123456789");
  CHECK((*tokens)[0].channels == std::vector<std::string>{"kiosk"});
  CHECK((*tokens)[1].channels == std::vector<std::string>{"kiosk"});
}

TEST_CASE("a token's line may grant it more channels", "[unit][kiosk][auth]") {
  auto tokens = parseTokens(
      "gateway-token channels=beacon\n"
      "bridge-token   channels=kiosk.*,pos,kiosk\n");
  REQUIRE(tokens.has_value());
  REQUIRE(tokens->size() == 2);
  CHECK((*tokens)[0].channels == std::vector<std::string>{"beacon"});
  CHECK((*tokens)[1].channels == std::vector<std::string>{"kiosk", "pos"});
}

TEST_CASE("a tokens file that grants what cannot be granted is refused naming the line",
          "[unit][kiosk][auth]") {
  auto agent = parseTokens("ok-token\nbad-token channels=kiosk,agent\n");
  REQUIRE_FALSE(agent.has_value());
  CHECK(agent.error().code == "config");
  CHECK_THAT(agent.error().message,
             Contains("line 2") && Contains("agent.*") && Contains("only from the agent"));

  auto unknown = parseTokens("t channels=foo\n");
  REQUIRE_FALSE(unknown.has_value());
  CHECK_THAT(unknown.error().message,
             Contains("line 1") && Contains("'foo'") && Contains("kiosk, beacon, pos"));

  auto attribute = parseTokens("t role=admin\n");
  REQUIRE_FALSE(attribute.has_value());
  CHECK_THAT(attribute.error().message, Contains("'role=admin' is not understood"));

  auto twice = parseTokens("t\nt channels=beacon\n");
  REQUIRE_FALSE(twice.has_value());
  CHECK_THAT(twice.error().message, Contains("line 2") && Contains("already listed"));

  auto none = parseTokens("# nothing here\n\n");
  REQUIRE_FALSE(none.has_value());
  CHECK_THAT(none.error().message, Contains("no token"));
}

}  // namespace
}  // namespace omniedge::kiosk
