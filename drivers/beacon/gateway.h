// In-store BLE gateway message formats (contract §8) → sightings: OpenMQTTGateway / Theengs
// BTtoMQTT, ESPresense, and the plain {"scanner","mac","rssi","adv"} form.
//
// Everything a gateway sends is untrusted input: every field taken from a topic or a payload is
// checked here (sizes, UTF-8, control characters, number ranges, JSON types), so that what
// leaves parseGatewayMessage() can always become a valid event.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/result.h"

namespace omniedge::beacon {

// Bounds on what one gateway message may carry. A scanner name becomes part of an event's
// `source` ("beacon:<scanner>", ≤ 128 characters at ingest) and an identity its
// `customer.beacon` (≤ 128): both are refused here, before they can reach the engine.
inline constexpr std::size_t kMaxScannerBytes = 64;    // gateway / room / scanner name
inline constexpr std::size_t kMaxDeviceIdBytes = 96;   // ESPresense device id
inline constexpr std::size_t kMaxIdentityBytes = 128;  // ibeacon:… / espresense:<id> / mac:…
inline constexpr std::size_t kMaxTopicBytes = 512;
inline constexpr std::size_t kMaxAdvBytes = 1650;  // BLE 5 extended advertising data
inline constexpr std::size_t kMaxSightingsPerMessage = 1000;
inline constexpr int kMinRssi = -127;  // dBm, the range BLE reports
inline constexpr int kMaxRssi = 20;
inline constexpr double kMaxDistanceM = 1000;

/// One advertisement heard by one scanner.
struct Sighting {
  std::string scanner;   // the gateway's name, the ESPresense room, or the plain form's scanner
  std::string identity;  // ibeacon:…, eddystone:…, altbeacon:…, espresense:<id>, or mac:<hex>
  int rssi = 0;          // dBm
  std::optional<int> rssi_at_1m;        // calibrated power, when the frame or gateway says
  std::optional<int64_t> timestamp_ms;  // Unix epoch ms, when the payload has one
  std::optional<double> distance_m;     // the gateway's own calibrated estimate (ESPresense)
};

/// What one MQTT message yielded.
struct GatewayParse {
  std::vector<Sighting> sightings;   // zero or more
  std::size_t frame_errors = 0;      // malformed beacon frames (those sightings fall back to mac)
  std::string last_frame_error;      // the reason of the newest one
  std::size_t telemetry_frames = 0;  // Eddystone TLM / eTLM: no presence, skipped
};

/// Turns one gateway message into sightings. The format is chosen by the topic
/// (`home/<gateway>/BTtoMQTT[/<mac>]`, `espresense/devices/<id>/<room>`) or, on any other topic,
/// by a payload with a "scanner" key (the plain form; an array of them is accepted too).
/// A payload without an RSSI (a gateway's status message) yields no sighting.
/// Timestamps: a "timestamp"/"ts" key (epoch seconds or ms, or RFC 3339 text) when present.
/// A message is taken whole or refused whole.
/// Thread: any. Fails with "too_large" (payload over `max_message_bytes`, topic over
/// kMaxTopicBytes) or "invalid" (not JSON, no known format, a key of the wrong type, a number
/// out of range, a name or id too long, empty, not UTF-8 or with a control character, a MAC
/// that is none, no device id); Error::field names the field ("topic.room", "rssi",
/// "[2].scanner") and the message says why. Messages never contain the raw input's bytes
/// unescaped (see printable()). Never throws (but bad_alloc).
Result<GatewayParse> parseGatewayMessage(std::string_view topic, std::string_view payload,
                                         std::size_t max_message_bytes = 64 * 1024);

/// `mac:<12 lower-case hex digits>` for a MAC in any usual spelling; nullopt when it is none.
/// Thread: any.
std::optional<std::string> macIdentity(std::string_view mac);

/// Checks a name taken from a gateway (scanner, room, device id): 1 to `max_bytes` bytes of
/// UTF-8 without control characters (U+0000–U+001F, U+007F–U+009F). Fails with "invalid",
/// Error::field = `field`, the message naming the field and the reason ("topic.room has a
/// control character U+0007 at byte 3"). Thread: any. Never throws.
Result<void> checkName(std::string_view value, std::string_view field, std::size_t max_bytes);

/// `text` made safe to show in a log, a status line or JSON: at most `max_bytes` bytes of it,
/// control characters and bytes that are not UTF-8 written as \xNN, "…" when cut.
/// Thread: any.
std::string printable(std::string_view text, std::size_t max_bytes = 80);

}  // namespace omniedge::beacon
