#include "drivers/kiosk/customer_key.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <utility>

namespace omniedge::kiosk {
namespace {

constexpr std::string_view kForms =
    "loyalty:ID, app:ID, email_sha256:<64 hex digits>, phone_sha256:<64 hex digits>, "
    "ibeacon:<uuid>:<major>:<minor>, eddystone:<10-byte namespace hex>:<6-byte instance hex> "
    "or altbeacon:<id1 uuid>:<id2>:<id3>";
constexpr std::size_t kMaxIdLength = 128;

Error bad(std::string message) { return makeError("invalid", std::move(message), "key"); }

bool isHex(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

// `n` hex digits, lower-cased into out.
bool hexRun(std::string_view text, std::size_t n, std::string& out) {
  if (text.size() != n || !std::all_of(text.begin(), text.end(), isHex)) {
    return false;
  }
  for (char c : text) {
    out += lower(c);
  }
  return true;
}

// A UUID with or without its dashes, written 8-4-4-4-12 in lower case.
bool uuid(std::string_view text, std::string& out) {
  std::string hex;
  if (text.size() == 36) {
    for (std::size_t i = 0; i < text.size(); ++i) {
      const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
      if (dash != (text[i] == '-')) {
        return false;
      }
      if (!dash) {
        hex += text[i];
      }
    }
  } else {
    hex = text;
  }
  std::string digits;
  if (!hexRun(hex, 32, digits)) {
    return false;
  }
  out += digits.substr(0, 8) + '-' + digits.substr(8, 4) + '-' + digits.substr(12, 4) + '-' +
         digits.substr(16, 4) + '-' + digits.substr(20);
  return true;
}

// A decimal 0..65535, without leading zeros.
bool number16(std::string_view text, std::string& out) {
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || text.size() > 5 || ec != std::errc() || end != text.data() + text.size() ||
      value > 65535) {
    return false;
  }
  out += std::to_string(value);
  return true;
}

// Splits "a:b:c" into exactly n parts.
template <std::size_t N>
bool split(std::string_view text, std::array<std::string_view, N>& parts) {
  for (std::size_t i = 0; i < N; ++i) {
    const std::size_t colon = i + 1 < N ? text.find(':') : std::string_view::npos;
    if (i + 1 < N && colon == std::string_view::npos) {
      return false;
    }
    parts[i] = text.substr(0, colon);
    if (i + 1 < N) {
      text.remove_prefix(colon + 1);
    }
  }
  return parts[N - 1].find(':') == std::string_view::npos;
}

bool validId(std::string_view id) {
  return !id.empty() && id.size() <= kMaxIdLength &&
         std::all_of(id.begin(), id.end(), [](char c) { return c > 0x20 && c < 0x7f && c != '/'; });
}

}  // namespace

Result<std::string> parseCustomerKey(std::string_view key) {
  const std::size_t colon = key.find(':');
  if (colon == std::string_view::npos) {
    return bad("'" + std::string(key.substr(0, 64)) + "' is not a customer key: use " +
               std::string(kForms));
  }
  std::string kind(key.substr(0, colon));
  std::transform(kind.begin(), kind.end(), kind.begin(), lower);
  const std::string_view value = key.substr(colon + 1);
  std::string out = kind + ':';
  if (kind == "loyalty" || kind == "app") {
    if (!validId(value)) {
      return bad(kind + ": keys take an ID of 1-128 printable characters (no spaces or '/')");
    }
    out += value;
    return out;
  }
  if (kind == "email_sha256" || kind == "phone_sha256") {
    if (!hexRun(value, 64, out)) {
      return bad(kind + ": keys take the 64 hex digits of a SHA-256 (case does not matter)");
    }
    return out;
  }
  if (kind == "ibeacon" || kind == "altbeacon") {
    std::array<std::string_view, 3> parts;
    std::string major;
    std::string minor;
    if (split(value, parts) && uuid(parts[0], out) && number16(parts[1], major) &&
        number16(parts[2], minor)) {
      return out + ':' + major + ':' + minor;
    }
    return bad(kind + ": keys are " + kind + ":<uuid>:<0-65535>:<0-65535>, e.g. " + kind +
               ":f7826da6-4fa2-4e98-8024-bc5b71e0893e:100:7");
  }
  if (kind == "eddystone") {
    std::array<std::string_view, 2> parts;
    std::string instance;
    if (split(value, parts) && hexRun(parts[0], 20, out) && hexRun(parts[1], 12, instance)) {
      return out + ':' + instance;
    }
    return bad(
        "eddystone: keys are eddystone:<namespace, 20 hex digits>:<instance, 12 hex digits>");
  }
  return bad("'" + std::string(key.substr(0, 64)) + "' is not a customer key: use " +
             std::string(kForms));
}

std::string canonicalCustomerKey(std::string_view key) {
  auto parsed = parseCustomerKey(key);
  return parsed ? std::move(*parsed) : std::string(key);
}

std::pair<std::string, std::string> customerFieldOf(std::string_view key) {
  const std::size_t colon = key.find(':');
  const std::string_view kind = key.substr(0, colon);
  const std::string value(colon == std::string_view::npos ? key : key.substr(colon + 1));
  if (kind == "loyalty") {
    return {"loyalty_id", value};
  }
  if (kind == "app") {
    return {"app_user_id", value};
  }
  if (kind == "email_sha256" || kind == "phone_sha256") {
    return {std::string(kind), value};
  }
  return {"beacon", std::string(key)};
}

}  // namespace omniedge::kiosk
