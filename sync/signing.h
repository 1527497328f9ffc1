// Ed25519 signatures for remote config (contract §5), with OpenSSL: key pairs for ops
// (`omniedge config keygen`), signing a document's exact bytes (`omniedge config sign`), and
// checking them in the agent. Base64 is RFC 4648 §4 (standard alphabet, '=' padding).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "agent/api/result.h"

using EVP_PKEY = struct evp_pkey_st;

namespace omniedge::sync {

/// Standard base64 with padding. Thread: any.
std::string base64Encode(std::string_view bytes);
/// Strict: the standard alphabet, length a multiple of 4, '=' only as padding, the bits under
/// the padding zero (canonical); whitespace is not allowed. nullopt for anything else.
/// Thread: any.
std::optional<std::string> base64Decode(std::string_view text);

/// A new Ed25519 key pair as PEM: the private key PKCS#8, the public key SubjectPublicKeyInfo
/// (what config.verify_key_file takes). Fails "crypto". Thread: any.
struct SigningKeyPair {
  std::string private_pem;
  std::string public_pem;
};
Result<SigningKeyPair> generateSigningKey();

/// The 64-byte Ed25519 signature of `data` with the PEM private key. Fails "invalid" (not an
/// Ed25519 private key) or "crypto". Thread: any.
Result<std::string> signEd25519(std::string_view private_pem, std::string_view data);

/// An Ed25519 public key. Immutable; Thread: any.
class VerifyKey {
 public:
  /// From a SubjectPublicKeyInfo PEM. Fails "invalid" naming what is wrong (not PEM, not
  /// Ed25519).
  static Result<VerifyKey> fromPem(std::string_view pem);
  /// True when `signature` is `data`'s Ed25519 signature by this key.
  bool verify(std::string_view data, std::string_view signature) const;

 private:
  std::shared_ptr<EVP_PKEY> key_;
};

}  // namespace omniedge::sync
