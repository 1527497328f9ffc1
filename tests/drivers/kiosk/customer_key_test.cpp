#include "drivers/kiosk/customer_key.h"

#include <catch2/catch.hpp>
#include <string>

namespace omniedge::kiosk {
namespace {

using Catch::Matchers::Contains;

std::string canonical(const std::string& key) {
  auto parsed = parseCustomerKey(key);
  REQUIRE(parsed.has_value());
  return *parsed;
}

TEST_CASE("hex customer keys have one spelling, whatever the case they were written in",
          "[unit][kiosk]") {
  const std::string hash(64, 'a');
  CHECK(canonical("email_sha256:" + std::string(64, 'A')) == "email_sha256:" + hash);
  CHECK(canonical("EMAIL_SHA256:" + hash) == "email_sha256:" + hash);
  CHECK(canonical("phone_sha256:" + std::string(64, 'F')) ==
        "phone_sha256:" + std::string(64, 'f'));
  CHECK(canonical("ibeacon:F7826DA6-4FA2-4E98-8024-BC5B71E0893E:100:7") ==
        "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:100:7");
  // Without dashes, and with leading zeros: still the same beacon.
  CHECK(canonical("iBeacon:F7826DA64FA24E988024BC5B71E0893E:0100:007") ==
        "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:100:7");
  CHECK(canonical("altbeacon:F7826DA6-4FA2-4E98-8024-BC5B71E0893E:1:65535") ==
        "altbeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:65535");
  CHECK(canonical("eddystone:EDD1EBEAC04E5DEFA017:0BDB87539B67") ==
        "eddystone:edd1ebeac04e5defa017:0bdb87539b67");
}

TEST_CASE("loyalty and app ids are kept as given", "[unit][kiosk]") {
  CHECK(canonical("loyalty:LOY-1") == "loyalty:LOY-1");
  CHECK(canonical("Loyalty:LOY-1") == "loyalty:LOY-1");
  CHECK(canonical("app:A-9:x") == "app:A-9:x");
}

TEST_CASE("a key of no known form is refused naming the forms", "[unit][kiosk]") {
  auto bogus = parseCustomerKey("bogus");
  REQUIRE_FALSE(bogus.has_value());
  CHECK(bogus.error().code == "invalid");
  CHECK(bogus.error().field == "key");
  CHECK_THAT(bogus.error().message, Contains("'bogus' is not a customer key") &&
                                        Contains("loyalty:ID") && Contains("email_sha256:") &&
                                        Contains("ibeacon:<uuid>:<major>:<minor>"));
  auto unknown_kind = parseCustomerKey("facebook:123");
  REQUIRE_FALSE(unknown_kind.has_value());
  CHECK_THAT(unknown_kind.error().message, Contains("'facebook:123' is not a customer key"));

  SECTION("a known kind with a bad value says what the value should be") {
    auto short_hash = parseCustomerKey("email_sha256:abc");
    REQUIRE_FALSE(short_hash.has_value());
    CHECK_THAT(short_hash.error().message, Contains("64 hex digits"));
    auto big_minor = parseCustomerKey("ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:70000");
    REQUIRE_FALSE(big_minor.has_value());
    CHECK_THAT(big_minor.error().message, Contains("<0-65535>"));
    CHECK_FALSE(parseCustomerKey("ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:1").has_value());
    CHECK_FALSE(parseCustomerKey("eddystone:edd1ebeac04e5defa017:0bdb8753").has_value());
    CHECK_FALSE(parseCustomerKey("loyalty:").has_value());
    CHECK_FALSE(parseCustomerKey("loyalty:has space").has_value());
  }
  SECTION("canonicalCustomerKey leaves what it cannot read alone") {
    CHECK(canonicalCustomerKey("espresense:abc") == "espresense:abc");
    CHECK(canonicalCustomerKey("ibeacon:u:1:2") == "ibeacon:u:1:2");
  }
}

TEST_CASE("a key names the event's customer field", "[unit][kiosk]") {
  CHECK(customerFieldOf("loyalty:L1") == std::pair<std::string, std::string>{"loyalty_id", "L1"});
  CHECK(customerFieldOf("app:A1") == std::pair<std::string, std::string>{"app_user_id", "A1"});
  const std::string hash(64, 'b');
  CHECK(customerFieldOf("email_sha256:" + hash) ==
        std::pair<std::string, std::string>{"email_sha256", hash});
  CHECK(
      customerFieldOf("eddystone:edd1ebeac04e5defa017:0bdb87539b67") ==
      std::pair<std::string, std::string>{"beacon", "eddystone:edd1ebeac04e5defa017:0bdb87539b67"});
}

}  // namespace
}  // namespace omniedge::kiosk
