#include "drivers/beacon/frames.h"

#include <fmt/format.h>

#include <array>
#include <cmath>

namespace omniedge::beacon {
namespace {

constexpr uint16_t kAppleCompanyId = 0x004C;
constexpr uint8_t kIBeaconType = 0x02;
constexpr uint8_t kIBeaconLength = 0x15;
constexpr std::size_t kIBeaconBytes = 25;    // company id + type + length + 21
constexpr std::size_t kAltBeaconBytes = 26;  // company id + BEAC + 20 + ref rssi + reserved
constexpr uint16_t kEddystoneUuid = 0xFEAA;
constexpr uint8_t kAdServiceData16 = 0x16;
constexpr uint8_t kAdManufacturer = 0xFF;

constexpr std::array<std::string_view, 4> kUrlSchemes = {"http://www.", "https://www.", "http://",
                                                         "https://"};
constexpr std::array<std::string_view, 14> kUrlExpansions = {
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
    ".com",  ".org",  ".edu",  ".net",  ".info",  ".biz",  ".gov"};

Error malformed(std::string why) { return makeError("malformed", std::move(why)); }
Error notBeacon(std::string why) { return makeError("not_beacon", std::move(why)); }

uint16_t be16(std::span<const uint8_t> d, std::size_t at) {
  return static_cast<uint16_t>((d[at] << 8) | d[at + 1]);
}
uint16_t le16(std::span<const uint8_t> d, std::size_t at) {
  return static_cast<uint16_t>(d[at] | (d[at + 1] << 8));
}
uint32_t be32(std::span<const uint8_t> d, std::size_t at) {
  return (uint32_t{d[at]} << 24) | (uint32_t{d[at + 1]} << 16) | (uint32_t{d[at + 2]} << 8) |
         uint32_t{d[at + 3]};
}
int s8(uint8_t byte) { return static_cast<int8_t>(byte); }

std::string uuidText(std::span<const uint8_t> b) {
  const std::string hex = toHex(b.first(16));
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" +
         hex.substr(16, 4) + "-" + hex.substr(20, 12);
}

Result<Frame> decodeUrl(std::span<const uint8_t> d) {
  if (d.size() < 3) {
    return malformed(fmt::format("Eddystone-URL frame of {} bytes, needs at least 3", d.size()));
  }
  if (d[2] >= kUrlSchemes.size()) {
    return malformed(fmt::format("Eddystone-URL scheme code 0x{:02x} is reserved", d[2]));
  }
  EddystoneUrl url;
  url.tx_power = s8(d[1]);
  url.url = std::string(kUrlSchemes[d[2]]);
  for (std::size_t i = 3; i < d.size(); ++i) {
    const uint8_t c = d[i];
    if (c < kUrlExpansions.size()) {
      url.url += kUrlExpansions[c];
    } else if (c > 0x20 && c < 0x7F) {
      url.url += static_cast<char>(c);
    } else {
      return malformed(fmt::format("Eddystone-URL byte 0x{:02x} at {} is reserved", c, i));
    }
  }
  return Frame{std::move(url)};
}

Result<Frame> decodeTlm(std::span<const uint8_t> d) {
  if (d.size() < 2) {
    return malformed("Eddystone-TLM frame without a version byte");
  }
  if (d[1] == 0x00) {
    if (d.size() < 14) {
      return malformed(fmt::format("Eddystone-TLM frame of {} bytes, needs 14", d.size()));
    }
    EddystoneTlm tlm;
    tlm.voltage_mv = be16(d, 2);
    tlm.temperature_c = static_cast<int16_t>(be16(d, 4)) / 256.0;
    tlm.advertising_count = be32(d, 6);
    tlm.seconds_since_boot_raw = be32(d, 10);
    return Frame{tlm};
  }
  if (d[1] == 0x01) {
    if (d.size() < 14) {
      return malformed(
          fmt::format("encrypted Eddystone-TLM frame of {} bytes, needs 14+", d.size()));
    }
    EddystoneEtlm etlm;
    etlm.encrypted.assign(d.begin() + 2, d.begin() + 14);
    if (d.size() >= 16) {
      etlm.salt = le16(d, 14);
    }
    if (d.size() >= 18) {
      etlm.mic = le16(d, 16);
    }
    return Frame{std::move(etlm)};
  }
  return notBeacon(fmt::format("Eddystone-TLM version 0x{:02x} is unknown", d[1]));
}

}  // namespace

std::optional<std::vector<uint8_t>> parseHex(std::string_view text) {
  std::vector<uint8_t> out;
  out.reserve(text.size() / 2);
  int high = -1;
  for (char c : text) {
    int v = -1;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else if ((c == ':' || c == '-' || c == ' ') && high < 0) {
      continue;
    } else {
      return std::nullopt;
    }
    if (high < 0) {
      high = v;
    } else {
      out.push_back(static_cast<uint8_t>((high << 4) | v));
      high = -1;
    }
  }
  if (high >= 0) {
    return std::nullopt;
  }
  return out;
}

std::string toHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 0xF];
  }
  return out;
}

std::pair<int, int> cypressSensors(uint16_t minor) {
  const double temperature = 175.72 * ((minor & 0xFF) * 256) / 65536.0 - 46.85;
  const double humidity = 125.0 * (minor & 0xFF00) / 65536.0 - 6.0;
  return {static_cast<int>(std::lround(temperature * 100)),
          static_cast<int>(std::lround(humidity * 100))};
}

std::optional<std::string> identityOf(const Frame& frame) {
  if (const auto* ib = std::get_if<IBeaconFrame>(&frame)) {
    return fmt::format("ibeacon:{}:{}:{}", ib->uuid, ib->major, ib->minor);
  }
  if (const auto* alt = std::get_if<AltBeaconFrame>(&frame)) {
    return fmt::format("altbeacon:{}:{}:{}", alt->id1, alt->id2, alt->id3);
  }
  if (const auto* uid = std::get_if<EddystoneUid>(&frame)) {
    return fmt::format("eddystone:{}:{}", uid->namespace_id, uid->instance_id);
  }
  return std::nullopt;
}

std::optional<int> rssiAt1m(const Frame& frame) {
  // Eddystone calibrates at 0 m; the spec suggests adding the 41 dB lost over the first metre.
  constexpr int kEddystoneLossAt1m = 41;
  if (const auto* ib = std::get_if<IBeaconFrame>(&frame)) {
    return ib->tx_power;
  }
  if (const auto* alt = std::get_if<AltBeaconFrame>(&frame)) {
    return alt->reference_rssi;
  }
  if (const auto* uid = std::get_if<EddystoneUid>(&frame)) {
    return uid->tx_power - kEddystoneLossAt1m;
  }
  if (const auto* url = std::get_if<EddystoneUrl>(&frame)) {
    return url->tx_power - kEddystoneLossAt1m;
  }
  if (const auto* eid = std::get_if<EddystoneEid>(&frame)) {
    return eid->tx_power - kEddystoneLossAt1m;
  }
  return std::nullopt;
}

Result<Frame> decodeManufacturerData(std::span<const uint8_t> d) {
  if (d.size() < 4) {
    return notBeacon(fmt::format("manufacturer data of {} bytes is too short", d.size()));
  }
  const uint16_t company = le16(d, 0);
  if (company == kAppleCompanyId && d[2] == kIBeaconType) {
    if (d[3] != kIBeaconLength || d.size() < kIBeaconBytes) {
      return malformed(fmt::format("iBeacon of {} bytes with length byte 0x{:02x}, needs {} / 0x15",
                                   d.size(), d[3], kIBeaconBytes));
    }
    IBeaconFrame ib;
    ib.uuid = uuidText(d.subspan(4, 16));
    ib.major = be16(d, 20);
    ib.minor = be16(d, 22);
    ib.tx_power = s8(d[24]);
    return Frame{std::move(ib)};
  }
  if (d[2] == 0xBE && d[3] == 0xAC) {
    if (d.size() < kAltBeaconBytes) {
      return malformed(fmt::format("AltBeacon of {} bytes, needs {}", d.size(), kAltBeaconBytes));
    }
    AltBeaconFrame alt;
    alt.company_id = company;
    alt.id1 = uuidText(d.subspan(4, 16));
    alt.id2 = be16(d, 20);
    alt.id3 = be16(d, 22);
    alt.reference_rssi = s8(d[24]);
    alt.reserved = d[25];
    return Frame{std::move(alt)};
  }
  return notBeacon(fmt::format("manufacturer data of company 0x{:04x} type 0x{:02x} is no beacon",
                               company, d[2]));
}

Result<Frame> decodeEddystone(std::span<const uint8_t> d) {
  if (d.empty()) {
    return malformed("empty Eddystone service data");
  }
  switch (d[0]) {
    case 0x00: {
      if (d.size() < 18) {
        return malformed(fmt::format("Eddystone-UID frame of {} bytes, needs 18", d.size()));
      }
      EddystoneUid uid;
      uid.tx_power = s8(d[1]);
      uid.namespace_id = toHex(d.subspan(2, 10));
      uid.instance_id = toHex(d.subspan(12, 6));
      return Frame{std::move(uid)};
    }
    case 0x10:
      return decodeUrl(d);
    case 0x20:
      return decodeTlm(d);
    case 0x30: {
      if (d.size() < 10) {
        return malformed(fmt::format("Eddystone-EID frame of {} bytes, needs 10", d.size()));
      }
      EddystoneEid eid;
      eid.tx_power = s8(d[1]);
      eid.eid.assign(d.begin() + 2, d.begin() + 10);
      return Frame{std::move(eid)};
    }
    default:
      return notBeacon(fmt::format("Eddystone frame type 0x{:02x} is unknown", d[0]));
  }
}

Result<Frame> decodeAdvertisement(std::span<const uint8_t> adv) {
  std::optional<Error> first_error;
  std::size_t at = 0;
  while (at < adv.size()) {
    const std::size_t length = adv[at];
    if (length == 0) {
      break;  // the rest is padding
    }
    if (length > adv.size() - at - 1) {
      return malformed(fmt::format("AD structure at byte {} declares {} bytes, {} remain", at,
                                   length, adv.size() - at - 1));
    }
    const uint8_t type = adv[at + 1];
    const auto data = adv.subspan(at + 2, length - 1);
    std::optional<Result<Frame>> decoded;
    if (type == kAdManufacturer) {
      decoded.emplace(decodeManufacturerData(data));
    } else if (type == kAdServiceData16 && data.size() >= 2 && le16(data, 0) == kEddystoneUuid) {
      decoded.emplace(decodeEddystone(data.subspan(2)));
    }
    if (decoded) {
      if (decoded->has_value()) {
        return std::move(*decoded);
      }
      if (!first_error ||
          (first_error->code == "not_beacon" && decoded->error().code != "not_beacon")) {
        first_error = decoded->error();
      }
    }
    at += length + 1;
  }
  if (first_error) {
    return *first_error;
  }
  return notBeacon("no beacon frame in the advertisement");
}

}  // namespace omniedge::beacon
