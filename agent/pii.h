// Personal data never leaves the agent and is never stored in clear: e-mail addresses and phone
// numbers are normalised and replaced by HMAC-SHA256 keyed with the tenant key.
#pragma once

#include <string>
#include <string_view>

#include "agent/api/result.h"

namespace omniedge {

class PiiHasher {
 public:
  /// `key` empty: plain SHA-256 (the centre can still join, but a hash of an e-mail can be
  /// brute-forced: `doctor` warns). `default_country_code`: digits, for national phone numbers.
  PiiHasher(std::string key, std::string default_country_code);

  /// Reads the key from `path` (raw bytes, one trailing newline dropped; at least 16 bytes).
  static Result<std::string> readKeyFile(const std::string& path);

  bool keyed() const { return !key_.empty(); }

  /// Trimmed and lower-cased; fails ("invalid") when it is not an e-mail address.
  static Result<std::string> normaliseEmail(std::string_view raw);
  /// E.164 ("+4930123456"): separators dropped, "00" read as "+", a national number gets the
  /// default country code (its trunk 0 dropped). Fails when that is not possible.
  Result<std::string> normalisePhone(std::string_view raw) const;

  /// Lower-case hex HMAC-SHA256(key, normalised) (or SHA-256 without a key).
  std::string hash(std::string_view normalised) const;

 private:
  std::string key_;
  std::string default_country_code_;
};

}  // namespace omniedge
