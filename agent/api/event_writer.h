// The one way into the durable buffer.
#pragma once

#include <cstddef>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/result.h"

namespace omniedge {

struct AppendOutcome {
  std::vector<std::string> ids;     // the events' ids, in input order (duplicates included)
  std::size_t stored = 0;           // newly stored
  std::size_t duplicates = 0;       // ids already in the buffer: ignored, still acknowledged
  std::size_t consent_dropped = 0;  // presence of customers who refused tracking: not kept
};

/// Accepts events into the durable buffer.
class EventWriter {
 public:
  virtual ~EventWriter() = default;

  /// Validates, completes (ids, timestamps, hashed PII) and stores `events` all-or-nothing.
  /// Thread: any; many producers at once (their appends are group-committed together).
  /// Blocks until the events are durable per buffer.synchronous, or until it fails: a success
  /// is the promise that the events survive a crash from now on.
  /// Fails with code "invalid" or "too_large" (Error::field is "[i].name": field `name` of the
  /// i-th event, e.g. "[0].type", "[3].customer.email"), "full" (backpressure: nothing stored,
  /// retry later), "stopping" or "io". Never throws.
  virtual Result<AppendOutcome> append(std::vector<Event> events) = 0;
};

}  // namespace omniedge
