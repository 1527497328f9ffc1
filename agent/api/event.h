// The event: what every driver produces and what goes up to the centre (contract §3).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace omniedge {

/// Buffer priority, derived from the channel (the first part of the type).
/// High is never evicted (producers are pushed back); Low is evicted oldest-first under pressure.
enum class Priority : int { kHigh = 0, kNormal = 1, kLow = 2 };

/// pos.* high; beacon.* low; kiosk.*, agent.* and anything else normal.
inline Priority priorityOf(std::string_view type) {
  if (type.rfind("pos.", 0) == 0) {
    return Priority::kHigh;
  }
  if (type.rfind("beacon.", 0) == 0) {
    return Priority::kLow;
  }
  return Priority::kNormal;
}

/// One event as a driver hands it to the EventWriter. Empty fields are filled in at ingest:
/// id (UUIDv7), source, store_id, occurred_at (= received_at), received_at (now).
///
/// `customer` holds identity keys as strings: loyalty_id, app_user_id, profile_id, beacon,
/// email_sha256, phone_sha256. A driver may put a raw `email` or `phone` here: ingest normalises
/// and replaces them by keyed hashes before anything is stored, so no raw PII reaches the buffer.
///
/// `data_json` is the serialised JSON object of the driver-specific payload ("{}" when empty).
struct Event {
  std::string id;
  std::string type;
  std::string source;
  std::string store_id;
  int64_t occurred_at_ms = 0;  // Unix epoch milliseconds, UTC
  int64_t received_at_ms = 0;
  std::map<std::string, std::string> customer;
  std::string data_json = "{}";
};

}  // namespace omniedge
