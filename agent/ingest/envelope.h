// The event envelope of contract §3, read back: what `omniedge export` writes and `import`
// (through the daemon or, with it down, straight into the buffer) takes in again.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "agent/api/event.h"
#include "agent/api/result.h"

namespace omniedge {

/// An exported envelope back into an Event: id, type, source, store_id, occurred_at, customer
/// and data are kept; received_at is set anew at ingest. Fails "invalid" with `field` set
/// ("customer.email") and a message starting with `where` ("line 12: customer.email must be a
/// string"); Ingest checks the values afterwards. Thread: any.
Result<Event> eventFromEnvelope(const nlohmann::json& j, const std::string& where);

/// How deep an event may nest (arrays and objects, the envelope included): the kiosk API's
/// limit, so whatever was accepted once can be exported and imported again.
inline constexpr std::size_t kMaxEventDepth = 64;

/// False when arrays and objects in the JSON text nest deeper than `max`. A cheap scan before
/// parsing: parsing itself would follow any depth, and printing the result back recurses.
/// Thread: any.
bool jsonNestingWithin(std::string_view text, std::size_t max);

}  // namespace omniedge
