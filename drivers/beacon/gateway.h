// In-store BLE gateway message formats (contract §8) → sightings: OpenMQTTGateway / Theengs
// BTtoMQTT, ESPresense, and the plain {"scanner","mac","rssi","adv"} form.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/result.h"

namespace omniedge::beacon {

/// One advertisement heard by one scanner.
struct Sighting {
  std::string scanner;   // the gateway's name, the ESPresense room, or the plain form's scanner
  std::string identity;  // ibeacon:…, eddystone:…, altbeacon:…, espresense:<id>, or mac:<hex>
  int rssi = 0;          // dBm
  std::optional<int> rssi_at_1m;        // calibrated power, when the frame or gateway says
  std::optional<int64_t> timestamp_ms;  // Unix epoch ms, when the payload has one
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
/// A payload without an RSSI or a device (a gateway's status message) yields no sighting.
/// Timestamps: a "timestamp"/"ts" key (epoch seconds or ms, or RFC 3339 text) when present.
/// Thread: any. Fails with "invalid" (not JSON, not an object, a key of the wrong type) naming
/// the field; never throws.
Result<GatewayParse> parseGatewayMessage(std::string_view topic, std::string_view payload);

/// `mac:<12 lower-case hex digits>` for a MAC in any usual spelling; nullopt when it is none.
/// Thread: any.
std::optional<std::string> macIdentity(std::string_view mac);

}  // namespace omniedge::beacon
