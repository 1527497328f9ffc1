// libFuzzer target: the signed config envelope {"document": "<base64>", "signature": "<base64>"}
// as a store opens it before trusting anything (sync/remote_config.h openConfigEnvelope, the
// pure first step of RemoteConfig::receive(); the rest of receive() writes the state file on
// every message, too slow to fuzz 10M times), then the document inside (parseConfigDocument).
// The first byte picks what the rest is. Signing parses the private key's PEM on every call
// (OpenSSL 3's decoder, ~1 ms), so only 1 input in 128 is signed by each key; the rest run at
// the speed of the parse:
//   0  (even bytes below 0xFE) a payload off the wire, a verify key set: never opened (nobody
//      else can sign), refused "invalid" (naming the field), "unsigned" or "signature"
//   1  (0xFF) a document the harness signs with the right key: opened to exactly those bytes,
//      and the version hint is the document's version
//   2  (0xFE) a document signed with another key: refused "signature"
//   3  (odd bytes below 0xFE) a payload off the wire, no verify key: a bare document or an
//      envelope's document
// Run: tools/fuzz/run remote_config_signed
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "sync/remote_config.h"
#include "sync/signing.h"
#include "tools/fuzz/check.h"

namespace rcfg = omniedge::sync;

namespace {

struct Keys {
  rcfg::SigningKeyPair mine;
  rcfg::SigningKeyPair other;
  rcfg::VerifyKey verify;
};

const Keys& keys() {
  static const Keys k = [] {
    auto mine = rcfg::generateSigningKey();
    auto other = rcfg::generateSigningKey();
    FUZZ_CHECK(mine && other);
    auto verify = rcfg::VerifyKey::fromPem(mine->public_pem);
    FUZZ_CHECK(verify.has_value());
    return Keys{*mine, *other, *verify};
  }();
  return k;
}

std::string envelope(std::string_view doc, const std::string& private_pem) {
  auto sig = rcfg::signEd25519(private_pem, doc);
  FUZZ_CHECK(sig.has_value());
  return R"({"document":")" + rcfg::base64Encode(doc) + R"(","signature":")" +
         rcfg::base64Encode(*sig) + "\"}";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Keys& k = keys();
  const int mode = data[0] == 0xFF ? 1 : data[0] == 0xFE ? 2 : data[0] % 2 == 0 ? 0 : 3;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  int64_t hint = 0;
  switch (mode) {
    case 0: {
      const auto r = rcfg::openConfigEnvelope(rest, &k.verify, "verify.pem", hint);
      FUZZ_CHECK(!r.has_value());
      const auto& e = r.error();
      FUZZ_CHECK(e.code == "invalid" || e.code == "unsigned" || e.code == "signature");
      FUZZ_CHECK(!e.message.empty());
      if (e.code == "invalid") {
        FUZZ_CHECK(!e.field.empty() || e.message.starts_with("the message") ||
                   e.message.starts_with("not a JSON object"));
      }
      break;
    }
    case 1: {
      const auto r = rcfg::openConfigEnvelope(envelope(rest, k.mine.private_pem), &k.verify,
                                              "verify.pem", hint);
      FUZZ_CHECK(r.has_value() || r.error().message.starts_with("the message"));
      if (r) {
        FUZZ_CHECK(*r == rest);
        const auto doc = rcfg::parseConfigDocument(*r);
        if (doc) FUZZ_CHECK(hint == doc->version);
      }
      break;
    }
    case 2: {
      const auto r = rcfg::openConfigEnvelope(envelope(rest, k.other.private_pem), &k.verify,
                                              "verify.pem", hint);
      FUZZ_CHECK(!r.has_value());
      FUZZ_CHECK(r.error().code == "signature" || r.error().message.starts_with("the message"));
      break;
    }
    default: {
      const auto r = rcfg::openConfigEnvelope(rest, nullptr, "", hint);
      if (r) {
        const auto doc = rcfg::parseConfigDocument(*r);
        if (doc) FUZZ_CHECK(hint == doc->version);
      } else {
        FUZZ_CHECK(r.error().code == "invalid" && !r.error().message.empty());
      }
      break;
    }
  }
  return 0;
}
