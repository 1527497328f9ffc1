// The one way into the durable buffer.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/result.h"

namespace omniedge {

/// One event an appendEach() call refused, and why (Error::field is "[i].name").
struct Rejection {
  std::size_t index = 0;  // its position in the call's input
  Error error;
};

struct AppendOutcome {
  std::vector<std::string> ids;     // the events' ids, in input order (duplicates included;
                                    // "" for a rejected event)
  std::size_t stored = 0;           // newly stored
  std::size_t duplicates = 0;       // ids already in the buffer: ignored, still acknowledged
  std::size_t consent_dropped = 0;  // presence of customers who refused tracking: not kept
  std::vector<Rejection> rejected;  // appendEach() only: events refused by validation
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

  /// As append(), but one invalid or oversized event does not take the others down: the
  /// events that pass validation are stored (all-or-nothing among themselves) and each refused
  /// one is listed in AppendOutcome::rejected with its index and reason. For streams where the
  /// events are independent (beacon presence); a request whose parts belong together (an HTTP
  /// array, a POS file) uses append(). Fails only as a whole: "full", "stopping", "io".
  /// Thread: any. Blocks like append(). Never throws.
  virtual Result<AppendOutcome> appendEach(std::vector<Event> events) = 0;
};

}  // namespace omniedge
