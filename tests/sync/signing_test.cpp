#include "sync/signing.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace omniedge::sync {
namespace {

using Catch::Matchers::Contains;

TEST_CASE("base64 is the standard padded alphabet, decoded strictly", "[unit][remote]") {
  CHECK(base64Encode("") == "");
  CHECK(base64Encode("f") == "Zg==");
  CHECK(base64Encode("fo") == "Zm8=");
  CHECK(base64Encode("foo") == "Zm9v");
  CHECK(base64Encode(std::string("\xff\xfe\x00", 3)) == "//4A");
  for (const std::string& s :
       std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\x01\x80\xff", 4)}) {
    CHECK(base64Decode(base64Encode(s)) == s);
  }
  CHECK_FALSE(base64Decode("Zg="));     // not a multiple of 4
  CHECK_FALSE(base64Decode("Zg=a"));    // data after padding
  CHECK_FALSE(base64Decode("Z-8_"));    // the URL alphabet
  CHECK_FALSE(base64Decode("Zm9v\n"));  // whitespace
  CHECK_FALSE(base64Decode("=Zm9"));
  CHECK_FALSE(base64Decode("9Oe="));  // not canonical: "9Oc=" is those bytes (found by fuzzing)
  CHECK_FALSE(base64Decode("Zh=="));  // idem: "Zg=="
  CHECK(base64Decode("9Oc=") == std::string("\xf4\xe7", 2));
}

TEST_CASE("an Ed25519 signature verifies only over the exact bytes with the matching key",
          "[unit][remote]") {
  auto keys = generateSigningKey();
  REQUIRE(keys);
  CHECK_THAT(keys->private_pem, Contains("-----BEGIN PRIVATE KEY-----"));
  CHECK_THAT(keys->public_pem, Contains("-----BEGIN PUBLIC KEY-----"));
  const std::string doc = R"({"version": 1, "settings": {}})";
  auto sig = signEd25519(keys->private_pem, doc);
  REQUIRE(sig);
  CHECK(sig->size() == 64);
  auto key = VerifyKey::fromPem(keys->public_pem);
  REQUIRE(key);
  CHECK(key->verify(doc, *sig));
  CHECK_FALSE(key->verify(doc + " ", *sig));  // same meaning, other bytes
  CHECK_FALSE(key->verify(doc, sig->substr(0, 63)));
  std::string flipped = *sig;
  flipped[10] ^= 1;
  CHECK_FALSE(key->verify(doc, flipped));

  auto other = generateSigningKey();
  REQUIRE(other);
  auto other_key = VerifyKey::fromPem(other->public_pem);
  REQUIRE(other_key);
  CHECK_FALSE(other_key->verify(doc, *sig));
}

TEST_CASE("keys that are not Ed25519 are refused with the reason", "[unit][remote]") {
  CHECK_THAT(VerifyKey::fromPem("not a key").error().message, Contains("not a PEM public key"));
  // An EC P-256 public key (what a TLS certificate would hold).
  const char* ec_pub = R"(-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcnyWNkkrwb5LNdfB+w0W2+glXnd3
Tde3OEM0x3htR4qvaHAqJc5sPm8zXPUyh/FVB04amc7NTvcm7JEBDcEKpg==
-----END PUBLIC KEY-----
)";
  auto ec = VerifyKey::fromPem(ec_pub);
  REQUIRE_FALSE(ec);
  CHECK_THAT(ec.error().message, Contains("not an Ed25519 key"));
  CHECK_THAT(signEd25519("garbage", "x").error().message, Contains("not a PEM private key"));
}

}  // namespace
}  // namespace omniedge::sync
