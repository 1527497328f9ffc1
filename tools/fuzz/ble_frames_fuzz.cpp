// libFuzzer target: the BLE advertisement decoders (drivers/beacon/frames.h) on raw bytes: a full
// advertisement, manufacturer data and Eddystone service data. Never a crash or an out-of-bounds
// read; a failure is "not_beacon" or "malformed" with a reason; a decoded frame has the shape the
// header promises (lower-case hex ids of fixed length, a printable URL) and an identity of at
// most kMaxIdentityBytes; manufacturer data wrapped in an AD structure decodes the same; the hex
// helpers round-trip.  Run: tools/fuzz/run ble_frames
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "drivers/beacon/frames.h"
#include "drivers/beacon/gateway.h"
#include "tools/fuzz/check.h"

namespace beacon = omniedge::beacon;

namespace {

bool lowerHex(const std::string& s, std::size_t digits, bool uuid_dashes) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (uuid_dashes && (i == 8 || i == 13 || i == 18 || i == 23)) {
      if (c != '-') return false;
      continue;
    }
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    ++n;
  }
  return n == digits;
}

void checkFrame(const omniedge::Result<beacon::Frame>& r) {
  if (!r) {
    FUZZ_CHECK(r.error().code == "not_beacon" || r.error().code == "malformed");
    FUZZ_CHECK(!r.error().message.empty());
    return;
  }
  const beacon::Frame& f = *r;
  if (const auto* ib = std::get_if<beacon::IBeaconFrame>(&f)) {
    FUZZ_CHECK(ib->uuid.size() == 36 && lowerHex(ib->uuid, 32, true));
  } else if (const auto* alt = std::get_if<beacon::AltBeaconFrame>(&f)) {
    FUZZ_CHECK(alt->id1.size() == 36 && lowerHex(alt->id1, 32, true));
  } else if (const auto* uid = std::get_if<beacon::EddystoneUid>(&f)) {
    FUZZ_CHECK(lowerHex(uid->namespace_id, 20, false) && lowerHex(uid->instance_id, 12, false));
  } else if (const auto* url = std::get_if<beacon::EddystoneUrl>(&f)) {
    for (char c : url->url) FUZZ_CHECK(c > 0x20 && c < 0x7F);
  } else if (const auto* etlm = std::get_if<beacon::EddystoneEtlm>(&f)) {
    FUZZ_CHECK(etlm->encrypted.size() == 12);
  } else if (const auto* eid = std::get_if<beacon::EddystoneEid>(&f)) {
    FUZZ_CHECK(eid->eid.size() == 8);
  }
  const auto id = beacon::identityOf(f);
  const bool has_identity = std::holds_alternative<beacon::IBeaconFrame>(f) ||
                            std::holds_alternative<beacon::AltBeaconFrame>(f) ||
                            std::holds_alternative<beacon::EddystoneUid>(f);
  FUZZ_CHECK(id.has_value() == has_identity);
  if (id) {
    FUZZ_CHECK(!id->empty() && id->size() <= beacon::kMaxIdentityBytes);
    for (char c : *id) FUZZ_CHECK(c > 0x20 && c < 0x7F);
  }
  if (const auto at1m = beacon::rssiAt1m(f)) FUZZ_CHECK(*at1m >= -200 && *at1m <= 200);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  checkFrame(beacon::decodeAdvertisement(bytes));
  const auto manufacturer = beacon::decodeManufacturerData(bytes);
  checkFrame(manufacturer);
  checkFrame(beacon::decodeEddystone(bytes));

  // The same manufacturer data inside an advertisement (flags first, as beacons send it).
  if (manufacturer && size <= 254) {
    std::vector<uint8_t> adv = {0x02, 0x01, 0x06, static_cast<uint8_t>(size + 1), 0xFF};
    adv.insert(adv.end(), data, data + size);
    const auto wrapped = beacon::decodeAdvertisement(adv);
    FUZZ_CHECK(wrapped.has_value());
    FUZZ_CHECK(beacon::identityOf(*wrapped) == beacon::identityOf(*manufacturer));
  }

  // Hex: bytes round-trip, text parses back to the same bytes.
  const std::string hex = beacon::toHex(bytes);
  FUZZ_CHECK(hex.size() == 2 * size && lowerHex(hex, 2 * size, false));
  const auto back = beacon::parseHex(hex);
  FUZZ_CHECK(back && std::vector<uint8_t>(data, data + size) == *back);
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (const auto parsed = beacon::parseHex(text)) {
    FUZZ_CHECK(parsed->size() <= size / 2);
    std::string digits;
    for (char c : text) {
      if (c != ':' && c != '-' && c != ' ') digits += static_cast<char>(c | 0x20);
    }
    FUZZ_CHECK(beacon::toHex(*parsed) == digits);
  }
  beacon::cypressSensors(size > 1 ? static_cast<uint16_t>(data[0] << 8 | data[1]) : 0);
  return 0;
}
