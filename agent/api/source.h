// A driver that turns something in the store into events.
#pragma once

#include <stop_token>
#include <string_view>

#include "agent/api/event_writer.h"
#include "agent/api/result.h"

namespace omniedge {

/// Turns something in the store into events.
/// Thread: its own; poll() is never called concurrently. Returns within ~1 s, never throws.
/// Removes or renames its input only after out.append() reported the events durable.
class Source {
 public:
  virtual ~Source() = default;
  virtual std::string_view name() const = 0;
  /// One round of work. An error is logged and counted by the caller, who calls again later.
  virtual Result<void> poll(EventWriter& out, std::stop_token stop) = 0;
};

}  // namespace omniedge
