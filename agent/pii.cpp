#include "agent/pii.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace omniedge {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())) != 0) {
    s.remove_prefix(1);
  }
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())) != 0) {
    s.remove_suffix(1);
  }
  return s;
}

std::string toHex(const unsigned char* data, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[data[i] >> 4];
    out[2 * i + 1] = kHex[data[i] & 0x0f];
  }
  return out;
}

}  // namespace

PiiHasher::PiiHasher(std::string key, std::string default_country_code)
    : key_(std::move(key)), default_country_code_(std::move(default_country_code)) {}

Result<std::string> PiiHasher::readKeyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return makeError("config", "cannot read identity.hmac_key_file '" + path + "'",
                     "identity.hmac_key_file");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string key = ss.str();
  if (!key.empty() && key.back() == '\n') {
    key.pop_back();
  }
  if (key.size() < 16) {
    return makeError("config",
                     "identity.hmac_key_file '" + path + "' holds " + std::to_string(key.size()) +
                         " bytes; a key needs at least 16",
                     "identity.hmac_key_file");
  }
  return key;
}

Result<std::string> PiiHasher::normaliseEmail(std::string_view raw) {
  std::string email(trim(raw));
  std::transform(email.begin(), email.end(), email.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const auto at = email.find('@');
  const bool ok =
      at != std::string::npos && at > 0 && email.find('@', at + 1) == std::string::npos &&
      email.find('.', at + 2) != std::string::npos && email.back() != '.' && email.size() <= 254 &&
      std::none_of(email.begin(), email.end(),
                   [](unsigned char c) { return std::isspace(c) != 0 || c < 0x20; });
  if (!ok) {
    return makeError("invalid", "is not an e-mail address");
  }
  return email;
}

Result<std::string> PiiHasher::normalisePhone(std::string_view raw) const {
  std::string_view s = trim(raw);
  bool international = false;
  if (!s.empty() && s.front() == '+') {
    international = true;
    s.remove_prefix(1);
  }
  std::string digits;
  for (const char c : s) {
    if (c >= '0' && c <= '9') {
      digits.push_back(c);
    } else if (c != ' ' && c != '-' && c != '.' && c != '(' && c != ')' && c != '/') {
      return makeError("invalid", "is not a phone number (unexpected character)");
    }
  }
  if (!international && digits.rfind("00", 0) == 0) {
    international = true;
    digits.erase(0, 2);
  }
  if (!international) {
    if (default_country_code_.empty()) {
      return makeError("invalid",
                       "is not in international form (+...) and identity.default_country_code "
                       "is not set");
    }
    if (!digits.empty() && digits.front() == '0') {
      digits.erase(0, 1);  // national trunk prefix
    }
    digits = default_country_code_ + digits;
  }
  if (digits.size() < 6 || digits.size() > 15 || digits.front() == '0') {
    return makeError("invalid", "is not a phone number (E.164 allows 6 to 15 digits)");
  }
  return "+" + digits;
}

std::string PiiHasher::hash(std::string_view normalised) const {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (key_.empty()) {
    SHA256(reinterpret_cast<const unsigned char*>(normalised.data()), normalised.size(), out);
    len = SHA256_DIGEST_LENGTH;
  } else {
    HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
         reinterpret_cast<const unsigned char*>(normalised.data()), normalised.size(), out, &len);
  }
  return toHex(out, len);
}

}  // namespace omniedge
