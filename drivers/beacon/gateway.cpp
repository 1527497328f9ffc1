#include "drivers/beacon/gateway.h"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "agent/api/time.h"
#include "drivers/beacon/frames.h"

namespace omniedge::beacon {
namespace {

using nlohmann::json;

constexpr std::string_view kBtToMqtt = "BTtoMQTT";
constexpr std::string_view kEspresensePrefix = "espresense/devices/";
constexpr std::size_t kMaxMacTextBytes = 64;
constexpr std::size_t kMaxShortTextBytes = 256;  // model_id, uuid, servicedatauuid, timestamps

std::vector<std::string_view> splitTopic(std::string_view topic) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t slash = topic.find('/', start);
    parts.push_back(topic.substr(start, slash == std::string_view::npos ? slash : slash - start));
    if (slash == std::string_view::npos) {
      return parts;
    }
    start = slash + 1;
  }
}

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

/// The length of the well-formed UTF-8 sequence at text[i] and its code point, or length 0
/// (overlong forms, surrogates, beyond U+10FFFF, truncated sequences are not UTF-8).
std::pair<std::size_t, char32_t> decodeUtf8(std::string_view t, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(t[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) {
    return {1, b0};
  }
  std::size_t len = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return {0, 0};
  }
  if (i + len > t.size()) {
    return {0, 0};
  }
  for (std::size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) {
      return {0, 0};
    }
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return {0, 0};
  }
  return {len, cp};
}

bool isControl(char32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F); }

std::string typeName(const json& value) { return value.type_name(); }

Error invalid(const std::string& field, const std::string& why) {
  return makeError("invalid", field + " " + why, field);
}

/// A number within [lo, hi]; nullopt when absent or null; an Error naming the field when of
/// another type or out of range.
Result<std::optional<double>> numberField(const json& obj, const char* key,
                                          const std::string& prefix, double lo, double hi,
                                          std::string_view unit) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    return std::optional<double>{};
  }
  const std::string field = prefix + key;
  if (!it->is_number()) {
    return invalid(field, fmt::format("must be a number, not {}", typeName(*it)));
  }
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) {
    return invalid(field, fmt::format("is {}, outside {}..{}{}", v, lo, hi,
                                      unit.empty() ? "" : fmt::format(" {}", unit)));
  }
  return std::optional<double>{v};
}

Result<std::optional<int>> intField(const json& obj, const char* key, const std::string& prefix,
                                    int lo, int hi, std::string_view unit) {
  auto v = numberField(obj, key, prefix, lo, hi, unit);
  if (!v) {
    return v.error();
  }
  if (!*v) {
    return std::optional<int>{};
  }
  return std::optional<int>{static_cast<int>(std::lround(**v))};
}

/// A dBm value of the BLE range (rssi, rssi@1m, txpower).
Result<std::optional<int>> dbmField(const json& obj, const char* key, const std::string& prefix) {
  return intField(obj, key, prefix, kMinRssi, kMaxRssi, "dBm");
}

Result<std::optional<double>> distanceField(const json& obj, const std::string& prefix) {
  return numberField(obj, "distance", prefix, 0, kMaxDistanceM, "m");
}

/// A string of at most `max_bytes`; "" when absent or null.
Result<std::string> stringField(const json& obj, const char* key, const std::string& prefix,
                                std::size_t max_bytes) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    return std::string();
  }
  const std::string field = prefix + key;
  if (!it->is_string()) {
    return invalid(field, fmt::format("must be a string, not {}", typeName(*it)));
  }
  const auto& s = it->get_ref<const std::string&>();
  if (s.size() > max_bytes) {
    return invalid(field, fmt::format("is {} bytes, at most {}", s.size(), max_bytes));
  }
  return s;
}

Result<std::optional<int64_t>> timestampField(const json& obj, const std::string& prefix) {
  for (const char* key : {"timestamp", "ts"}) {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      continue;
    }
    const std::string field = prefix + key;
    if (it->is_number()) {
      const double v = it->get<double>();
      if (!std::isfinite(v) || v <= 0 || v > 1e16) {
        return invalid(field, "is out of range (epoch seconds or milliseconds)");
      }
      // Below 1e11 it can only be seconds (1e11 ms is 1973).
      return std::optional<int64_t>{static_cast<int64_t>(v < 1e11 ? v * 1000 : v)};
    }
    if (it->is_string()) {
      const auto& text = it->get_ref<const std::string&>();
      if (text.size() <= kMaxShortTextBytes) {
        if (auto ms = parseRfc3339(text)) {
          return std::optional<int64_t>{*ms};
        }
      }
      return invalid(field, "is not an RFC 3339 time");
    }
    return invalid(field, fmt::format("must be a number or a string, not {}", typeName(*it)));
  }
  return std::optional<int64_t>{};
}

/// A MAC address given as text: "" when absent; an Error when present and not a MAC.
Result<std::string> macField(std::string_view text, const std::string& field) {
  if (text.empty()) {
    return std::string();
  }
  if (text.size() <= kMaxMacTextBytes) {
    if (auto id = macIdentity(text)) {
      return std::move(*id);
    }
  }
  return invalid(field,
                 fmt::format("\"{}\" is not a MAC address (6 bytes of hex)", printable(text, 40)));
}

/// Hex bytes of an advertisement field (at most kMaxAdvBytes); empty when absent.
Result<std::vector<uint8_t>> hexField(const std::string& text, const std::string& field) {
  if (text.empty()) {
    return std::vector<uint8_t>{};
  }
  auto bytes = parseHex(text);
  if (!bytes) {
    return invalid(field, "is not hex");
  }
  if (bytes->size() > kMaxAdvBytes) {
    return invalid(field, fmt::format("is {} bytes, at most {}", bytes->size(), kMaxAdvBytes));
  }
  return std::move(*bytes);
}

/// Applies a decode result to a sighting: identity and calibrated power from the frame;
/// TLM marks it telemetry; a malformed frame is counted.
void applyFrame(const Result<Frame>& frame, Sighting& s, GatewayParse& out, bool& telemetry) {
  if (!frame) {
    if (frame.error().code == "malformed") {
      ++out.frame_errors;
      out.last_frame_error = frame.error().message;
    }
    return;
  }
  if (std::holds_alternative<EddystoneTlm>(*frame) ||
      std::holds_alternative<EddystoneEtlm>(*frame)) {
    telemetry = true;
    return;
  }
  if (auto id = identityOf(*frame)) {
    s.identity = std::move(*id);
    if (!s.rssi_at_1m) {
      s.rssi_at_1m = rssiAt1m(*frame);
    }
  }
}

/// Attributes the sighting (frame identity, else the MAC) and adds it. A sighting nothing
/// identifies is refused: it could never become presence.
Result<void> finish(Sighting s, bool telemetry, const std::string& mac_identity,
                    const std::string& mac_field, GatewayParse& out) {
  if (telemetry && s.identity.empty()) {
    ++out.telemetry_frames;
    return {};
  }
  if (s.identity.empty()) {
    if (mac_identity.empty()) {
      return invalid(mac_field, "is missing and no beacon frame names the device");
    }
    s.identity = mac_identity;
  }
  if (s.identity.size() > kMaxIdentityBytes) {  // cannot happen with the forms above
    return invalid(mac_field, "gives an identity over 128 bytes");
  }
  out.sightings.push_back(std::move(s));
  return {};
}

bool isEddystoneUuid(std::string_view uuid) {
  const std::string u = lower(uuid);
  return u == "feaa" || u == "0xfeaa" || u == "0000feaa-0000-1000-8000-00805f9b34fb";
}

Result<void> parseOpenMqttGateway(const std::vector<std::string_view>& topic, const json& msg,
                                  GatewayParse& out) {
  const std::string none;
  if (auto name = checkName(topic[1], "topic.gateway", kMaxScannerBytes); !name) {
    return name.error();
  }
  if (!msg.is_object()) {
    return invalid("payload", fmt::format("must be a JSON object, not {}", typeName(msg)));
  }
  auto rssi = dbmField(msg, "rssi", none);
  if (!rssi) {
    return rssi.error();
  }
  if (!*rssi) {
    return {};  // not a sighting (gateway status, a decoded sensor without RSSI)
  }
  auto id = stringField(msg, "id", none, kMaxShortTextBytes);
  if (!id) {
    return id.error();
  }
  const bool id_from_topic = id->empty() && topic.size() > 3;
  const std::string mac_field = id_from_topic ? "topic.mac" : "id";
  auto mac = macField(id_from_topic ? topic[3] : std::string_view(*id), mac_field);
  if (!mac) {
    return mac.error();
  }
  auto ts = timestampField(msg, none);
  auto distance = distanceField(msg, none);
  if (!ts || !distance) {
    return !ts ? ts.error() : distance.error();
  }
  Sighting s;
  s.scanner = std::string(topic[1]);
  s.rssi = **rssi;
  s.timestamp_ms = *ts;
  s.distance_m = *distance;
  for (const char* key : {"txpower", "power"}) {
    auto tx = dbmField(msg, key, none);
    if (!tx) {
      return tx.error();
    }
    if (*tx && !s.rssi_at_1m) {
      s.rssi_at_1m = *tx;
    }
  }
  bool telemetry = false;
  auto model = stringField(msg, "model_id", none, kMaxShortTextBytes);
  if (!model) {
    return model.error();
  }
  if (lower(*model) == "ibeacon") {
    auto uuid = stringField(msg, "uuid", none, kMaxShortTextBytes);
    if (!uuid) {
      return uuid.error();
    }
    auto major = intField(msg, "major", none, 0, 0xFFFF, "");
    auto minor = intField(msg, "minor", none, 0, 0xFFFF, "");
    if (!major || !minor) {
      return !major ? major.error() : minor.error();
    }
    if (!uuid->empty()) {
      auto bytes = parseHex(*uuid);
      if (!bytes || bytes->size() != 16) {
        return invalid("uuid", "is not a 16-byte UUID");
      }
      if (*major && *minor) {
        const std::string hex = toHex(*bytes);
        s.identity =
            fmt::format("ibeacon:{}-{}-{}-{}-{}:{}:{}", hex.substr(0, 8), hex.substr(8, 4),
                        hex.substr(12, 4), hex.substr(16, 4), hex.substr(20), **major, **minor);
      }
    }
  }
  if (s.identity.empty()) {
    auto mdata = stringField(msg, "manufacturerdata", none, 4 * kMaxAdvBytes);
    if (!mdata) {
      return mdata.error();
    }
    auto bytes = hexField(*mdata, "manufacturerdata");
    if (!bytes) {
      return bytes.error();
    }
    if (!bytes->empty()) {
      applyFrame(decodeManufacturerData(*bytes), s, out, telemetry);
    }
  }
  if (s.identity.empty()) {
    auto sdata = stringField(msg, "servicedata", none, 4 * kMaxAdvBytes);
    auto suuid = stringField(msg, "servicedatauuid", none, kMaxShortTextBytes);
    if (!sdata || !suuid) {
      return !sdata ? sdata.error() : suuid.error();
    }
    auto bytes = hexField(*sdata, "servicedata");
    if (!bytes) {
      return bytes.error();
    }
    if (!bytes->empty() && isEddystoneUuid(*suuid)) {
      applyFrame(decodeEddystone(*bytes), s, out, telemetry);
    }
  }
  return finish(std::move(s), telemetry, *mac, mac_field, out);
}

/// ESPresense ids: iBeacon:<uuid>-<major>-<minor>, altBeacon:<id1>-<id2>-<id3>,
/// eddy:<namespace>-<instance>; anything else stays espresense:<id>.
std::string espresenseIdentity(std::string_view id) {
  const auto colon = id.find(':');
  const std::string kind = lower(id.substr(0, colon == std::string_view::npos ? 0 : colon));
  const std::string_view rest = colon == std::string_view::npos ? "" : id.substr(colon + 1);
  if ((kind == "ibeacon" || kind == "altbeacon") && rest.size() > 37 && rest[36] == '-') {
    auto uuid = parseHex(rest.substr(0, 36));
    const std::string_view tail = rest.substr(37);
    const auto dash = tail.find('-');
    if (uuid && uuid->size() == 16 && dash != std::string_view::npos && dash > 0 &&
        dash + 1 < tail.size()) {
      auto number = [](std::string_view t) -> std::optional<unsigned> {
        if (t.empty() || t.size() > 5) {
          return std::nullopt;
        }
        unsigned v = 0;
        for (char c : t) {
          if (c < '0' || c > '9') {
            return std::nullopt;
          }
          v = v * 10 + static_cast<unsigned>(c - '0');
        }
        return v <= 0xFFFF ? std::optional<unsigned>(v) : std::nullopt;
      };
      const auto a = number(tail.substr(0, dash));
      const auto b = number(tail.substr(dash + 1));
      if (a && b) {
        const std::string hex = toHex(*uuid);
        return fmt::format("{}:{}-{}-{}-{}-{}:{}:{}", kind == "ibeacon" ? "ibeacon" : "altbeacon",
                           hex.substr(0, 8), hex.substr(8, 4), hex.substr(12, 4), hex.substr(16, 4),
                           hex.substr(20), *a, *b);
      }
    }
  }
  if (kind == "eddy" && rest.size() == 33 && rest[20] == '-') {
    auto ns = parseHex(rest.substr(0, 20));
    auto inst = parseHex(rest.substr(21));
    if (ns && inst && ns->size() == 10 && inst->size() == 6) {
      return fmt::format("eddystone:{}:{}", toHex(*ns), toHex(*inst));
    }
  }
  return "espresense:" + std::string(id);
}

Result<void> parseEspresense(const std::vector<std::string_view>& topic, const json& msg,
                             GatewayParse& out) {
  const std::string none;
  if (auto room = checkName(topic[3], "topic.room", kMaxScannerBytes); !room) {
    return room.error();
  }
  if (!msg.is_object()) {
    return invalid("payload", fmt::format("must be a JSON object, not {}", typeName(msg)));
  }
  auto rssi = dbmField(msg, "rssi", none);
  auto at1m = dbmField(msg, "rssi@1m", none);
  auto id = stringField(msg, "id", none, kMaxShortTextBytes);
  auto ts = timestampField(msg, none);
  auto distance = distanceField(msg, none);
  if (!rssi || !at1m || !id || !ts || !distance) {
    return !rssi   ? rssi.error()
           : !at1m ? at1m.error()
           : !id   ? id.error()
           : !ts   ? ts.error()
                   : distance.error();
  }
  if (!*rssi) {
    return {};
  }
  const bool id_from_topic = id->empty();
  const std::string_view device = id_from_topic ? topic[2] : std::string_view(*id);
  if (auto checked = checkName(device, id_from_topic ? "topic.id" : "id", kMaxDeviceIdBytes);
      !checked) {
    return checked.error();
  }
  Sighting s;
  s.scanner = std::string(topic[3]);
  s.identity = espresenseIdentity(device);
  s.rssi = **rssi;
  s.rssi_at_1m = *at1m;
  s.timestamp_ms = *ts;
  s.distance_m = *distance;
  out.sightings.push_back(std::move(s));
  return {};
}

Result<void> parsePlainOne(const json& msg, GatewayParse& out, const std::string& prefix) {
  if (!msg.is_object()) {
    const std::string field = prefix.empty() ? "payload" : prefix.substr(0, prefix.size() - 1);
    return invalid(field, fmt::format("must be a JSON object, not {}", typeName(msg)));
  }
  auto scanner = stringField(msg, "scanner", prefix, kMaxShortTextBytes);
  auto mac_text = stringField(msg, "mac", prefix, kMaxShortTextBytes);
  auto adv = stringField(msg, "adv", prefix, 4 * kMaxAdvBytes);
  auto rssi = dbmField(msg, "rssi", prefix);
  auto at1m = dbmField(msg, "rssi@1m", prefix);
  auto ts = timestampField(msg, prefix);
  auto distance = distanceField(msg, prefix);
  if (!scanner || !mac_text || !adv || !rssi || !at1m || !ts || !distance) {
    return !scanner    ? scanner.error()
           : !mac_text ? mac_text.error()
           : !adv      ? adv.error()
           : !rssi     ? rssi.error()
           : !at1m     ? at1m.error()
           : !ts       ? ts.error()
                       : distance.error();
  }
  if (auto checked = checkName(*scanner, prefix + "scanner", kMaxScannerBytes); !checked) {
    return checked.error();
  }
  if (!*rssi) {
    return invalid(prefix + "rssi", "is missing");
  }
  auto mac = macField(*mac_text, prefix + "mac");
  if (!mac) {
    return mac.error();
  }
  auto bytes = hexField(*adv, prefix + "adv");
  if (!bytes) {
    return bytes.error();
  }
  Sighting s;
  s.scanner = std::move(*scanner);
  s.rssi = **rssi;
  s.rssi_at_1m = *at1m;
  s.timestamp_ms = *ts;
  s.distance_m = *distance;
  bool telemetry = false;
  if (!bytes->empty()) {
    applyFrame(decodeAdvertisement(*bytes), s, out, telemetry);
  }
  return finish(std::move(s), telemetry, *mac, prefix + "mac", out);
}

/// nlohmann's parse error without its "[json.exception.parse_error.101] " tag.
std::string parseReason(const char* what) {
  std::string_view w(what);
  if (const auto close = w.find("] "); !w.empty() && w.front() == '[' && close != w.npos) {
    w.remove_prefix(close + 2);
  }
  return printable(w, 160);
}

}  // namespace

std::optional<std::string> macIdentity(std::string_view mac) {
  auto bytes = parseHex(mac);
  if (!bytes || bytes->size() != 6) {
    return std::nullopt;
  }
  return "mac:" + toHex(*bytes);
}

Result<void> checkName(std::string_view value, std::string_view field, std::size_t max_bytes) {
  const std::string f(field);
  if (value.empty()) {
    return invalid(f, "is empty");
  }
  if (value.size() > max_bytes) {
    return invalid(f, fmt::format("is {} bytes, at most {}", value.size(), max_bytes));
  }
  for (std::size_t i = 0; i < value.size();) {
    const auto [len, cp] = decodeUtf8(value, i);
    if (len == 0) {
      return invalid(f, fmt::format("is not UTF-8 (byte 0x{:02x} at byte {})",
                                    static_cast<unsigned char>(value[i]), i));
    }
    if (isControl(cp)) {
      return invalid(f, fmt::format("has a control character U+{:04X} at byte {}",
                                    static_cast<uint32_t>(cp), i));
    }
    i += len;
  }
  return {};
}

std::string printable(std::string_view text, std::size_t max_bytes) {
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 8);
  for (std::size_t i = 0; i < text.size();) {
    if (out.size() >= max_bytes) {
      out += "…";
      return out;
    }
    const auto [len, cp] = decodeUtf8(text, i);
    if (len == 0 || isControl(cp)) {
      const std::size_t n = len == 0 ? 1 : len;
      for (std::size_t k = 0; k < n; ++k) {
        out += fmt::format("\\x{:02x}", static_cast<unsigned char>(text[i + k]));
      }
      i += n;
      continue;
    }
    out.append(text.substr(i, len));
    i += len;
  }
  return out;
}

Result<GatewayParse> parseGatewayMessage(std::string_view topic, std::string_view payload,
                                         std::size_t max_message_bytes) {
  if (topic.size() > kMaxTopicBytes) {
    return makeError("too_large",
                     fmt::format("topic is {} bytes, at most {}", topic.size(), kMaxTopicBytes),
                     "topic");
  }
  if (payload.size() > max_message_bytes) {
    return makeError("too_large",
                     fmt::format("payload is {} bytes; beacon.max_message_bytes allows {}",
                                 payload.size(), max_message_bytes),
                     "payload");
  }
  GatewayParse out;
  try {
    json msg;
    try {
      msg = json::parse(payload.begin(), payload.end());
    } catch (const json::exception& e) {
      // Not only parse_error: a number beyond a double (1e400) is out_of_range (406).
      return invalid("payload", "is not JSON: " + parseReason(e.what()));
    }
    const auto parts = splitTopic(topic);
    Result<void> done;
    if (parts.size() >= 3 && parts[2] == kBtToMqtt) {
      done = parseOpenMqttGateway(parts, msg, out);
    } else if (topic.rfind(kEspresensePrefix, 0) == 0 && parts.size() == 4) {
      done = parseEspresense(parts, msg, out);
    } else if (msg.is_array()) {
      if (msg.size() > kMaxSightingsPerMessage) {
        return makeError("too_large",
                         fmt::format("payload has {} sightings, at most {}", msg.size(),
                                     kMaxSightingsPerMessage),
                         "payload");
      }
      for (std::size_t i = 0; i < msg.size() && done; ++i) {
        done = parsePlainOne(msg[i], out, fmt::format("[{}].", i));
      }
    } else if (msg.is_object() && msg.contains("scanner")) {
      done = parsePlainOne(msg, out, "");
    } else {
      return makeError("invalid",
                       "topic has no known gateway format (home/<gateway>/BTtoMQTT, "
                       "espresense/devices/<id>/<room>, or a payload with \"scanner\")",
                       "topic");
    }
    if (!done) {
      return done.error();
    }
  } catch (const std::exception& e) {  // json type errors: should not happen, never escape
    return makeError("invalid", printable(e.what(), 160));
  }
  return out;
}

}  // namespace omniedge::beacon
