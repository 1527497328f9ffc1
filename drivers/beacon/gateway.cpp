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

/// An integer in dBm range from a number (or numeric string is NOT accepted: gateways send
/// numbers). nullopt when absent; an Error when present with the wrong type.
Result<std::optional<int>> intField(const json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    return std::optional<int>{};
  }
  if (!it->is_number()) {
    return makeError("invalid", fmt::format("{} must be a number", key), key);
  }
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < -1000 || v > 1000) {
    return makeError("invalid", fmt::format("{} is out of range", key), key);
  }
  return std::optional<int>{static_cast<int>(std::lround(v))};
}

Result<std::optional<int64_t>> timestampField(const json& obj) {
  for (const char* key : {"timestamp", "ts"}) {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      continue;
    }
    if (it->is_number()) {
      const double v = it->get<double>();
      if (!std::isfinite(v) || v <= 0 || v > 1e16) {
        return makeError("invalid", fmt::format("{} is out of range", key), key);
      }
      // Below 1e11 it can only be seconds (1e11 ms is 1973).
      return std::optional<int64_t>{static_cast<int64_t>(v < 1e11 ? v * 1000 : v)};
    }
    if (it->is_string()) {
      if (auto ms = parseRfc3339(it->get_ref<const std::string&>())) {
        return std::optional<int64_t>{*ms};
      }
      return makeError("invalid", fmt::format("{} is not an RFC 3339 time", key), key);
    }
    return makeError("invalid", fmt::format("{} must be a number or a string", key), key);
  }
  return std::optional<int64_t>{};
}

Result<std::string> stringField(const json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    return std::string();
  }
  if (!it->is_string()) {
    return makeError("invalid", fmt::format("{} must be a string", key), key);
  }
  return it->get<std::string>();
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

void finish(Sighting s, bool telemetry, std::string_view mac, GatewayParse& out) {
  if (telemetry && s.identity.empty()) {
    ++out.telemetry_frames;
    return;
  }
  if (s.identity.empty()) {
    auto id = macIdentity(mac);
    if (!id) {
      return;  // nothing to attribute the sighting to
    }
    s.identity = std::move(*id);
  }
  out.sightings.push_back(std::move(s));
}

bool isEddystoneUuid(std::string_view uuid) {
  const std::string u = lower(uuid);
  return u == "feaa" || u == "0xfeaa" || u == "0000feaa-0000-1000-8000-00805f9b34fb";
}

Result<void> parseOpenMqttGateway(const std::vector<std::string_view>& topic, const json& msg,
                                  GatewayParse& out) {
  if (!msg.is_object()) {
    return makeError("invalid", "BTtoMQTT payload is not a JSON object");
  }
  auto rssi = intField(msg, "rssi");
  if (!rssi) {
    return rssi.error();
  }
  auto mac = stringField(msg, "id");
  if (!mac) {
    return mac.error();
  }
  if (mac->empty() && topic.size() > 3) {
    *mac = std::string(topic[3]);
  }
  if (!*rssi) {
    return {};  // not a sighting (gateway status, a decoded sensor without RSSI)
  }
  auto ts = timestampField(msg);
  if (!ts) {
    return ts.error();
  }
  Sighting s;
  s.scanner = std::string(topic[1]);
  s.rssi = **rssi;
  s.timestamp_ms = *ts;
  for (const char* key : {"txpower", "power"}) {
    auto tx = intField(msg, key);
    if (!tx) {
      return tx.error();
    }
    if (*tx && !s.rssi_at_1m) {
      s.rssi_at_1m = *tx;
    }
  }
  bool telemetry = false;
  auto model = stringField(msg, "model_id");
  if (!model) {
    return model.error();
  }
  const auto uuid = msg.find("uuid");
  if (lower(*model) == "ibeacon" && uuid != msg.end() && uuid->is_string()) {
    auto major = intField(msg, "major");
    auto minor = intField(msg, "minor");
    if (!major || !minor) {
      return !major ? major.error() : minor.error();
    }
    auto bytes = parseHex(uuid->get_ref<const std::string&>());
    if (bytes && bytes->size() == 16 && *major && *minor && **major >= 0 && **minor >= 0) {
      const std::string hex = toHex(*bytes);
      s.identity =
          fmt::format("ibeacon:{}-{}-{}-{}-{}:{}:{}", hex.substr(0, 8), hex.substr(8, 4),
                      hex.substr(12, 4), hex.substr(16, 4), hex.substr(20), **major, **minor);
    }
  }
  if (s.identity.empty()) {
    auto mdata = stringField(msg, "manufacturerdata");
    if (!mdata) {
      return mdata.error();
    }
    if (!mdata->empty()) {
      if (auto bytes = parseHex(*mdata)) {
        applyFrame(decodeManufacturerData(*bytes), s, out, telemetry);
      } else {
        return makeError("invalid", "manufacturerdata is not hex", "manufacturerdata");
      }
    }
  }
  if (s.identity.empty()) {
    auto sdata = stringField(msg, "servicedata");
    auto suuid = stringField(msg, "servicedatauuid");
    if (!sdata || !suuid) {
      return !sdata ? sdata.error() : suuid.error();
    }
    if (!sdata->empty() && isEddystoneUuid(*suuid)) {
      if (auto bytes = parseHex(*sdata)) {
        applyFrame(decodeEddystone(*bytes), s, out, telemetry);
      } else {
        return makeError("invalid", "servicedata is not hex", "servicedata");
      }
    }
  }
  finish(std::move(s), telemetry, *mac, out);
  return {};
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
  if (!msg.is_object()) {
    return makeError("invalid", "ESPresense payload is not a JSON object");
  }
  auto rssi = intField(msg, "rssi");
  auto at1m = intField(msg, "rssi@1m");
  auto id = stringField(msg, "id");
  auto ts = timestampField(msg);
  if (!rssi || !at1m || !id || !ts) {
    return !rssi ? rssi.error() : !at1m ? at1m.error() : !id ? id.error() : ts.error();
  }
  if (!*rssi) {
    return {};
  }
  if (id->empty()) {
    *id = std::string(topic[2]);
  }
  if (id->empty() || topic[3].empty()) {
    return makeError("invalid", "ESPresense message without a device id or room", "id");
  }
  Sighting s;
  s.scanner = std::string(topic[3]);
  s.identity = espresenseIdentity(*id);
  s.rssi = **rssi;
  s.rssi_at_1m = *at1m;
  s.timestamp_ms = *ts;
  out.sightings.push_back(std::move(s));
  return {};
}

Result<void> parsePlainOne(const json& msg, GatewayParse& out, const std::string& field) {
  if (!msg.is_object()) {
    return makeError("invalid", "a sighting must be a JSON object", field);
  }
  auto scanner = stringField(msg, "scanner");
  auto mac = stringField(msg, "mac");
  auto adv = stringField(msg, "adv");
  auto rssi = intField(msg, "rssi");
  auto at1m = intField(msg, "rssi@1m");
  auto ts = timestampField(msg);
  if (!scanner || !mac || !adv || !rssi || !at1m || !ts) {
    Error e = !scanner ? scanner.error()
              : !mac   ? mac.error()
              : !adv   ? adv.error()
              : !rssi  ? rssi.error()
              : !at1m  ? at1m.error()
                       : ts.error();
    e.field = field + e.field;
    return e;
  }
  if (scanner->empty()) {
    return makeError("invalid", "scanner is missing or empty", field + "scanner");
  }
  if (!*rssi) {
    return makeError("invalid", "rssi is missing", field + "rssi");
  }
  Sighting s;
  s.scanner = std::move(*scanner);
  s.rssi = **rssi;
  s.rssi_at_1m = *at1m;
  s.timestamp_ms = *ts;
  bool telemetry = false;
  if (!adv->empty()) {
    auto bytes = parseHex(*adv);
    if (!bytes) {
      return makeError("invalid", "adv is not hex", field + "adv");
    }
    applyFrame(decodeAdvertisement(*bytes), s, out, telemetry);
  }
  finish(std::move(s), telemetry, *mac, out);
  return {};
}

}  // namespace

std::optional<std::string> macIdentity(std::string_view mac) {
  auto bytes = parseHex(mac);
  if (!bytes || bytes->size() != 6) {
    return std::nullopt;
  }
  return "mac:" + toHex(*bytes);
}

Result<GatewayParse> parseGatewayMessage(std::string_view topic, std::string_view payload) {
  json msg = json::parse(payload.begin(), payload.end(), nullptr, /*allow_exceptions=*/false);
  if (msg.is_discarded()) {
    return makeError("invalid", fmt::format("payload on {} is not JSON", topic));
  }
  GatewayParse out;
  try {
    const auto parts = splitTopic(topic);
    Result<void> done;
    if (parts.size() >= 3 && parts[2] == kBtToMqtt && !parts[1].empty()) {
      done = parseOpenMqttGateway(parts, msg, out);
    } else if (topic.rfind(kEspresensePrefix, 0) == 0 && parts.size() == 4) {
      done = parseEspresense(parts, msg, out);
    } else if (msg.is_array()) {
      for (std::size_t i = 0; i < msg.size() && done; ++i) {
        done = parsePlainOne(msg[i], out, fmt::format("[{}].", i));
      }
    } else if (msg.is_object() && msg.contains("scanner")) {
      done = parsePlainOne(msg, out, "");
    } else {
      return makeError("invalid", fmt::format("no known gateway format on topic {}", topic));
    }
    if (!done) {
      return done.error();
    }
  } catch (const std::exception& e) {  // json type errors: should not happen, never escape
    return makeError("invalid", e.what());
  }
  return out;
}

}  // namespace omniedge::beacon
