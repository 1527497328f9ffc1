// libFuzzer target: the signed config envelope {"document": "<base64>", "signature": "<base64>"}
// as a store opens it before trusting anything (sync/remote_config.h openConfigEnvelope, the
// pure first step of RemoteConfig::receive(); the rest of receive() writes the state file on
// every message, too slow to fuzz 10M times), then the document inside (parseConfigDocument).
// The first byte picks what the rest is. The harness signs with keys it parsed once (signEd25519
// parses the private key's PEM on every call, OpenSSL 3's decoder, ~1 ms: the fuzzer learns that
// signed inputs reach more code and soon signs most of them, 1,000 inputs/s); at start it checks
// that its signature is signEd25519's, byte for byte (Ed25519 is deterministic):
//   0  (even bytes below 0xFE) a payload off the wire, a verify key set: never opened (nobody
//      else can sign), refused "invalid" (naming the field), "unsigned" or "signature"
//   1  (0xFF) a document the harness signs with the right key: opened to exactly those bytes,
//      and the version hint is the document's version
//   2  (0xFE) a document signed with another key: refused "signature"
//   3  (odd bytes below 0xFE) a payload off the wire, no verify key: a bare document or an
//      envelope's document
// Run: tools/fuzz/run remote_config_signed
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "sync/remote_config.h"
#include "sync/signing.h"
#include "tools/fuzz/check.h"

namespace rcfg = omniedge::sync;

namespace {

// A private key parsed once; it lives as long as the process.
EVP_PKEY* parsePrivate(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  FUZZ_CHECK(key != nullptr);
  return key;
}

std::string sign(EVP_PKEY* key, std::string_view data) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  std::string sig(64, '\0');
  size_t len = sig.size();
  FUZZ_CHECK(EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, key) == 1);
  FUZZ_CHECK(EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                            reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1);
  EVP_MD_CTX_free(ctx);
  FUZZ_CHECK(len == 64);
  return sig;
}

struct Keys {
  EVP_PKEY* mine;
  EVP_PKEY* other;
  rcfg::VerifyKey verify;
};

const Keys& keys() {
  static const Keys k = [] {
    auto mine = rcfg::generateSigningKey();
    auto other = rcfg::generateSigningKey();
    FUZZ_CHECK(mine && other);
    auto verify = rcfg::VerifyKey::fromPem(mine->public_pem);
    FUZZ_CHECK(verify.has_value());
    Keys keys{parsePrivate(mine->private_pem), parsePrivate(other->private_pem), *verify};
    const std::string probe = R"({"version":1})";
    const auto reference = rcfg::signEd25519(mine->private_pem, probe);
    FUZZ_CHECK(reference.has_value() && *reference == sign(keys.mine, probe));
    return keys;
  }();
  return k;
}

std::string envelope(std::string_view doc, EVP_PKEY* key) {
  return R"({"document":")" + rcfg::base64Encode(doc) + R"(","signature":")" +
         rcfg::base64Encode(sign(key, doc)) + "\"}";
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
      const auto r =
          rcfg::openConfigEnvelope(envelope(rest, k.mine), &k.verify, "verify.pem", hint);
      FUZZ_CHECK(r.has_value() || r.error().message.starts_with("the message"));
      if (r) {
        FUZZ_CHECK(*r == rest);
        const auto doc = rcfg::parseConfigDocument(*r);
        if (doc) FUZZ_CHECK(hint == doc->version);
      }
      break;
    }
    case 2: {
      const auto r =
          rcfg::openConfigEnvelope(envelope(rest, k.other), &k.verify, "verify.pem", hint);
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
