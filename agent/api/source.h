// A driver that turns something in the store into events.
#pragma once

#include <cstdint>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/api/event_writer.h"
#include "agent/api/result.h"

namespace omniedge {

/// What a source says about its own inputs, for `omniedge status` and /metrics. Errors of
/// poll() itself are counted by the caller; these are the inputs the source refused while
/// going on with the rest (a POS file moved to rejected/, a malformed gateway message).
struct SourceHealth {
  uint64_t input_errors = 0;     // inputs refused so far
  std::string last_input_error;  // the latest such refusal, "" when none
  /// Why the source cannot do its work now although poll() returns (its broker unreachable,
  /// retried with backoff); "" when it can. The source stays "failing" in status meanwhile.
  std::string down;
  /// Driver-specific counters, e.g. {"files_processed", 12}, {"queue_dropped", 0}.
  std::vector<std::pair<std::string, uint64_t>> counters;
};

/// Turns something in the store into events.
/// Thread: its own; poll() is never called concurrently. Returns within ~1 s, never throws.
/// Removes or renames its input only after out.append() reported the events durable.
class Source {
 public:
  virtual ~Source() = default;
  virtual std::string_view name() const = 0;
  /// One round of work. An error is logged and counted by the caller, who calls again later.
  virtual Result<void> poll(EventWriter& out, std::stop_token stop) = 0;
  /// Counters and the latest refused input. Thread: any (status and metrics call it while
  /// poll() runs). Cheap, never blocks for long, never throws.
  virtual SourceHealth health() const { return {}; }
  /// New settings, as `fresh` (a source of the same driver built from them): true when this
  /// source takes them in place, keeping its state (from its next poll()); false (the default)
  /// when it cannot, and the caller replaces it by `fresh`. Thread: any (poll() may be
  /// running). Never blocks for long, never throws.
  virtual bool adopt(Source& fresh) { return (void)fresh, false; }
};

}  // namespace omniedge
