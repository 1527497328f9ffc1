// The uplink keys of issue 14: a broker list in mqtt.url, and the HTTPS link's own keys.
#include <catch2/catch.hpp>

#include "agent/config.h"

using Catch::Matchers::Contains;
using omniedge::config::Inputs;
using omniedge::config::load;

namespace {

Inputs withFlag(const std::string& key, const std::string& value) {
  Inputs in;
  in.flags = {{key, value}};
  return in;
}

}  // namespace

TEST_CASE("mqtt.url takes a comma-separated list of broker nodes, each checked like a URL",
          "[unit][config]") {
  SECTION("two nodes, spaces trimmed") {
    auto c = load(withFlag("mqtt.url", "mqtts://a.example:8883, mqtts://b.example:8883"));
    REQUIRE(c.has_value());
    CHECK(c->list("mqtt.url") ==
          std::vector<std::string>{"mqtts://a.example:8883", "mqtts://b.example:8883"});
  }
  SECTION("one node, as before") {
    auto c = load({});
    REQUIRE(c.has_value());
    CHECK(c->list("mqtt.url") == std::vector<std::string>{"mqtt://127.0.0.1:1883"});
  }
  SECTION("a bad item is named, with the reason") {
    auto c = load(withFlag("mqtt.url", "mqtt://a:1883,http://b:80"));
    REQUIRE_FALSE(c.has_value());
    CHECK_THAT(c.error().message, Contains("mqtt.url"));
    CHECK_THAT(c.error().message, Contains("http://b:80"));
    CHECK_THAT(c.error().message, Contains("mqtt, mqtts, ws or wss"));
  }
  SECTION("a bad port in the second node is named") {
    auto c = load(withFlag("mqtt.url", "mqtt://a:1883,mqtt://b:99999"));
    REQUIRE_FALSE(c.has_value());
    CHECK_THAT(c.error().message, Contains("mqtt://b:99999"));
  }
  SECTION("an empty list is refused") {
    auto c = load(withFlag("mqtt.url", " , "));
    REQUIRE_FALSE(c.has_value());
    CHECK_THAT(c.error().message, Contains("at least one"));
  }
}

TEST_CASE("the HTTPS link's keys have safe defaults", "[unit][config]") {
  auto c = load({});
  REQUIRE(c.has_value());
  CHECK(c->str("https.base_url").empty());
  CHECK(c->str("https.pinned_pubkey").empty());
  CHECK_FALSE(c->boolean("https.insecure_skip_verify"));
  CHECK(c->integer("https.timeout") == 30);
  CHECK(c->integer("https.failover_after") == 10);
  CHECK(c->integer("sync.backfill_threshold") == 100000);
  CHECK(c->integer("sync.profile_resync_after") == 3600);
  CHECK_FALSE(load(withFlag("https.timeout", "0")).has_value());
  CHECK(omniedge::config::isRemoteSettable("sync.backfill_threshold"));
  // Where the centre is and which client certificate to use may move; what protects the link
  // from a rogue centre (verification, the pin) is the store's own.
  CHECK(omniedge::config::isRemoteSettable("https.base_url"));
  CHECK_FALSE(omniedge::config::isRemoteSettable("https.pinned_pubkey"));
  CHECK_FALSE(omniedge::config::isRemoteSettable("https.insecure_skip_verify"));
}
