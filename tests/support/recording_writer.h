// A hand-written fake EventWriter: records what it is given, fails when told to.
#pragma once

#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/api/event_writer.h"
#include "agent/api/result.h"

namespace omniedge::testing {

/// Records every successful append; events without an id get "rec-1", "rec-2", ... in order.
/// Thread: any (one mutex), so a server's threads can append concurrently. Never blocks long.
class RecordingWriter final : public EventWriter {
 public:
  // EventWriter
  /// Stores `events` in memory, or fails with the error given to failNextAppend() (once).
  Result<AppendOutcome> append(std::vector<Event> events) override {
    std::lock_guard lock(mu_);
    ++calls_;
    if (next_error_) {
      Error error = std::move(*next_error_);
      next_error_.reset();
      return error;
    }
    AppendOutcome outcome;
    for (Event& event : events) {
      if (event.id.empty()) {
        event.id = "rec-" + std::to_string(++next_id_);
      }
      outcome.ids.push_back(event.id);
      events_.push_back(std::move(event));
    }
    outcome.stored = outcome.ids.size();
    return outcome;
  }

  /// The next append() fails with `error` (e.g. makeError("full", "buffer full")) and stores
  /// nothing; the ones after it succeed again. Thread: any.
  void failNextAppend(Error error = makeError("io", "injected failure")) {
    std::lock_guard lock(mu_);
    next_error_ = std::move(error);
  }

  /// Every event stored so far, in order. Thread: any.
  std::vector<Event> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }

  /// How many times append() was called, failures included. Thread: any.
  std::size_t appendCalls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Event> events_;        // guarded by mu_
  std::optional<Error> next_error_;  // guarded by mu_
  std::size_t calls_ = 0;            // guarded by mu_
  std::size_t next_id_ = 0;          // guarded by mu_
};

}  // namespace omniedge::testing
