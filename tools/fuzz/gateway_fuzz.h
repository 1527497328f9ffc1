// The body of the three gateway targets (gateway_omg_fuzz.cpp, gateway_espresense_fuzz.cpp,
// gateway_plain_fuzz.cpp): parseGatewayMessage (drivers/beacon/gateway.h) with the topic AND the
// payload fuzzed. The input's first line is the topic's variable part, the rest the payload:
//   omg         "home/" + line (+ "/BTtoMQTT" when the line does not name it)
//   espresense  "espresense/devices/" + line   (line: "<id>/<room>")
//   plain       the line as it is (any topic; the payload's "scanner" decides)
// Checks: a refusal is "too_large" or "invalid" with a reason that holds no raw control byte or
// broken UTF-8, and for "invalid" a field; whatever is taken can become a valid event: scanner
// names pass checkName, identities are short printable text of a known kind, numbers in range.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "drivers/beacon/gateway.h"
#include "tools/fuzz/check.h"

namespace omniedge::fuzz {

inline bool printableText(std::string_view s) {
  if (!validUtf8(s)) return false;
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) return false;
  }
  return true;
}

inline void checkGateway(std::string_view topic, std::string_view payload) {
  namespace b = omniedge::beacon;
  const auto r = b::parseGatewayMessage(topic, payload, 8192);
  if (!r) {
    const Error& e = r.error();
    FUZZ_CHECK(e.code == "too_large" || e.code == "invalid");
    FUZZ_CHECK(!e.message.empty() && printableText(e.message));
    FUZZ_CHECK(printableText(e.field));
    if (e.code == "invalid") FUZZ_CHECK(!e.field.empty() || e.message.find("topic") == 0);
    return;
  }
  FUZZ_CHECK(payload.size() <= 8192 && topic.size() <= b::kMaxTopicBytes);
  FUZZ_CHECK(r->sightings.size() <= b::kMaxSightingsPerMessage);
  FUZZ_CHECK(printableText(r->last_frame_error));
  for (const b::Sighting& s : r->sightings) {
    FUZZ_CHECK(b::checkName(s.scanner, "scanner", b::kMaxScannerBytes).has_value());
    FUZZ_CHECK(!s.identity.empty() && s.identity.size() <= b::kMaxIdentityBytes);
    FUZZ_CHECK(printableText(s.identity));
    const std::string_view id = s.identity;
    FUZZ_CHECK(id.starts_with("ibeacon:") || id.starts_with("eddystone:") ||
               id.starts_with("altbeacon:") || id.starts_with("espresense:") ||
               id.starts_with("mac:"));
    if (id.starts_with("mac:")) FUZZ_CHECK(b::macIdentity(id.substr(4)) == s.identity);
    FUZZ_CHECK(s.rssi >= b::kMinRssi && s.rssi <= b::kMaxRssi);
    if (s.distance_m) FUZZ_CHECK(*s.distance_m >= 0 && *s.distance_m <= b::kMaxDistanceM);
  }
}

/// Splits the input at its first newline: the topic part, then the payload.
inline void splitInput(const uint8_t* data, size_t size, std::string_view& head,
                       std::string_view& payload) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::size_t nl = in.find('\n');
  head = in.substr(0, nl);
  payload = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
}

}  // namespace omniedge::fuzz
