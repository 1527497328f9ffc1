// Producer JSON -> Event, for the kiosk / local HTTP API (contract §3, §4).
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/result.h"

namespace omniedge::kiosk {

/// Parses a request body: one JSON event object, or an array of 1..max_events of them.
/// Structural checks only (field names and JSON types, RFC 3339 `occurred_at`); the semantic
/// ones (type pattern, id format, sizes, PII hashing) are the EventWriter's.
/// Accepted fields: type (required), id, source, store_id, occurred_at, customer (an object of
/// strings with known identity keys) and data (an object, kept as compact JSON in data_json).
/// A field given twice is an error; JSON nested deeper than 64 levels is "invalid_json".
/// `*was_array` (when not null) tells whether the body was an array, also on failure once the
/// JSON parsed.
/// Thread: any (no shared state). Does not block. Never throws; fails with code "invalid_json"
/// (message names the byte position), "invalid" (Error::field is "[i].name", e.g. "[0].type",
/// "[2].customer.email") or "too_large" (more than max_events events).
Result<std::vector<Event>> parseEvents(std::string_view body, std::size_t max_events,
                                       bool* was_array);

}  // namespace omniedge::kiosk
