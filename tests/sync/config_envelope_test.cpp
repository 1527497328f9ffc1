// openConfigEnvelope (sync/remote_config.h): the signed envelope opened without any state, as
// RemoteConfig::receive() and the fuzz target remote_config_signed run it.
#include <catch2/catch.hpp>
#include <string>

#include "sync/remote_config.h"
#include "sync/signing.h"

namespace omniedge::sync {
namespace {

std::string envelope(const std::string& doc, const std::string& signature) {
  return R"({"document":")" + base64Encode(doc) + R"(","signature":")" + base64Encode(signature) +
         "\"}";
}

TEST_CASE("A config envelope opens only with a signature by the verify key", "[unit][remote]") {
  const auto mine = generateSigningKey();
  const auto other = generateSigningKey();
  REQUIRE(mine.has_value());
  REQUIRE(other.has_value());
  const auto key = VerifyKey::fromPem(mine->public_pem);
  REQUIRE(key.has_value());
  const std::string doc = R"({"version": 4, "settings": {"log.level": "debug"}})";
  int64_t hint = 0;

  auto opened = openConfigEnvelope(envelope(doc, *signEd25519(mine->private_pem, doc)), &*key,
                                   "verify.pem", hint);
  REQUIRE(opened.has_value());
  CHECK(*opened == doc);
  CHECK(hint == 4);

  auto forged = openConfigEnvelope(envelope(doc, *signEd25519(other->private_pem, doc)), &*key,
                                   "verify.pem", hint);
  REQUIRE_FALSE(forged.has_value());
  CHECK(forged.error().code == "signature");
  CHECK_THAT(forged.error().message, Catch::Contains("'verify.pem'"));

  auto bare = openConfigEnvelope(doc, &*key, "verify.pem", hint);
  REQUIRE_FALSE(bare.has_value());
  CHECK(bare.error().code == "unsigned");
  CHECK(openConfigEnvelope(doc, nullptr, "", hint).value() == doc);

  auto extra = openConfigEnvelope(R"({"document":"","signature":"","x":1})", &*key, "k", hint);
  REQUIRE_FALSE(extra.has_value());
  CHECK(extra.error().field == "x");
}

}  // namespace
}  // namespace omniedge::sync

namespace omniedge::sync {
namespace {

// Found by the fuzz target remote_config_doc (tests/fixtures/fuzz/remote_config_doc/empty-key):
// the empty key was refused with an empty field and a message starting with a blank.
TEST_CASE("A config document with an empty key is refused naming it", "[unit][remote]") {
  auto doc = parseConfigDocument(R"({"": "b1TZ"})");
  REQUIRE_FALSE(doc.has_value());
  CHECK(doc.error().field == "\"\"");
  CHECK(doc.error().message ==
        "\"\" is not a field of a config document (version, settings, expires_at)");
}

}  // namespace
}  // namespace omniedge::sync
