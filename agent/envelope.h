// The event envelope of contract §3, read back: what `omniedge export` writes and `import`
// (through the daemon or, with it down, straight into the buffer) takes in again.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "agent/api/event.h"
#include "agent/api/result.h"

namespace omniedge {

/// An exported envelope back into an Event: id, type, source, store_id, occurred_at, customer
/// and data are kept; received_at is set anew at ingest. Fails "invalid" with `field` set
/// ("customer.email") and a message starting with `where` ("line 12: customer.email must be a
/// string"); Ingest checks the values afterwards. Thread: any.
Result<Event> eventFromEnvelope(const nlohmann::json& j, const std::string& where);

}  // namespace omniedge
