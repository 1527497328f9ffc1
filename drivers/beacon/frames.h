// BLE advertisement decoders (contract §8): iBeacon, AltBeacon (manufacturer data) and Eddystone
// UID / URL / TLM / encrypted TLM / EID (service data of UUID 0xFEAA). Pure functions over bytes:
// every read is bounds-checked, so malformed input only ever yields an Error.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/api/result.h"

namespace omniedge::beacon {

/// Apple iBeacon: company 0x004C, type 0x02, length 0x15.
struct IBeaconFrame {
  std::string uuid;  // lower-case hex with dashes (8-4-4-4-12)
  uint16_t major = 0;
  uint16_t minor = 0;
  int tx_power = 0;  // measured RSSI at 1 m, dBm
};

/// AltBeacon: any company id, beacon code 0xBEAC, a 20-byte id (id1: 16, id2: 2, id3: 2).
struct AltBeaconFrame {
  uint16_t company_id = 0;
  std::string id1;  // 16 bytes, lower-case hex written as a UUID (with dashes)
  uint16_t id2 = 0;
  uint16_t id3 = 0;
  int reference_rssi = 0;  // RSSI at 1 m, dBm
  uint8_t reserved = 0;
};

struct EddystoneUid {
  int tx_power = 0;          // calibrated power at 0 m, dBm
  std::string namespace_id;  // 10 bytes, lower-case hex
  std::string instance_id;   // 6 bytes, lower-case hex
};

struct EddystoneUrl {
  int tx_power = 0;  // at 0 m
  std::string url;   // scheme prefix and expansion codes resolved
};

/// Unencrypted telemetry (version 0).
struct EddystoneTlm {
  uint16_t voltage_mv = 0;              // 0: not supported by the beacon
  double temperature_c = 0;             // signed 8.8 fixed point (-128.0: not supported)
  uint32_t advertising_count = 0;       // since power-up or reboot
  uint32_t seconds_since_boot_raw = 0;  // in 0.1 s units
};

/// Encrypted telemetry (version 1): only the markers are decodable without the beacon's key.
/// The salt and the MIC are optional: some captures cut the frame after the encrypted part.
struct EddystoneEtlm {
  std::vector<uint8_t> encrypted;  // 12 bytes
  std::optional<uint16_t> salt;    // read little-endian
  std::optional<uint16_t> mic;     // read little-endian
};

struct EddystoneEid {
  int tx_power = 0;          // at 0 m
  std::vector<uint8_t> eid;  // 8 bytes, ephemeral
};

using Frame = std::variant<IBeaconFrame, AltBeaconFrame, EddystoneUid, EddystoneUrl, EddystoneTlm,
                           EddystoneEtlm, EddystoneEid>;

/// The stable identity of a frame (contract §8), or nullopt for frames that carry none (URL,
/// TLM, eTLM, EID): `ibeacon:<uuid>:<major>:<minor>`, `eddystone:<namespace>:<instance>`,
/// `altbeacon:<id1>:<id2>:<id3>` (ids 2 and 3 and major/minor in decimal).
/// Thread: any. Never fails or throws (but bad_alloc).
std::optional<std::string> identityOf(const Frame& frame);

/// The RSSI expected at 1 m for the frame, when it says: iBeacon's measured power, AltBeacon's
/// reference RSSI, and Eddystone's 0 m power minus 41 dB (the Eddystone spec's rule of thumb).
/// Thread: any. Never fails.
std::optional<int> rssiAt1m(const Frame& frame);

/// Decodes manufacturer-specific data that starts with the 2-byte company id, little-endian
/// (as carried in AD type 0xFF and in OpenMQTTGateway's `manufacturerdata`).
/// Thread: any. Fails with "not_beacon" (another kind of manufacturer data) or "malformed"
/// (a beacon prefix with a wrong length), the reason in `message`. Never throws.
Result<Frame> decodeManufacturerData(std::span<const uint8_t> data);

/// Decodes Eddystone service data WITHOUT the 0xFEAA UUID (it starts with the frame type).
/// Thread: any. Fails with "not_beacon" (unknown frame type) or "malformed". Never throws.
Result<Frame> decodeEddystone(std::span<const uint8_t> data);

/// Decodes a full advertisement (a sequence of AD structures: length, type, data; a zero
/// length ends the significant part, bytes past it are ignored). The first manufacturer data
/// (0xFF) or 0xFEAA service data (0x16) that decodes as a beacon wins. Once a beacon was found,
/// trailing bytes that do not form a whole AD structure are ignored (scanners pad and append).
/// Thread: any. Fails with "malformed" (an AD structure runs past the end, or a beacon
/// structure with a bad length) or "not_beacon" (well-formed but no beacon frame). Never throws.
Result<Frame> decodeAdvertisement(std::span<const uint8_t> adv);

/// Hex text (either case, optional ':' '-' or ' ' separators ignored) to bytes; nullopt when
/// the text has another character or an odd number of digits. Thread: any. Never throws.
std::optional<std::vector<uint8_t>> parseHex(std::string_view text);

/// Lower-case hex of `bytes`. Thread: any.
std::string toHex(std::span<const uint8_t> bytes);

/// The Cypress (CYALKIT-E02) sensor beacon packs humidity and temperature into the iBeacon
/// minor: {temperature °C × 100, relative humidity % × 100}, rounded. Thread: any.
std::pair<int, int> cypressSensors(uint16_t minor);

}  // namespace omniedge::beacon
