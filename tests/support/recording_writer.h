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

  /// As append(): the fake validates nothing, so nothing is ever listed as rejected, except
  /// events whose type is "invalid.event" (for tests of the callers' per-event handling).
  Result<AppendOutcome> appendEach(std::vector<Event> events) override {
    std::vector<Event> valid;
    std::vector<Rejection> rejected;
    std::vector<std::size_t> positions;
    for (std::size_t i = 0; i < events.size(); ++i) {
      if (events[i].type == "invalid.event") {
        rejected.push_back(Rejection{i, makeError("invalid", "type is refused by the fake",
                                                  "[" + std::to_string(i) + "].type")});
      } else {
        positions.push_back(i);
        valid.push_back(std::move(events[i]));
      }
    }
    AppendOutcome outcome;
    if (!valid.empty()) {
      auto r = append(std::move(valid));
      if (!r) {
        return r.error();
      }
      outcome = std::move(*r);
    }
    std::vector<std::string> ids(events.size());
    for (std::size_t k = 0; k < positions.size(); ++k) {
      ids[positions[k]] = outcome.ids[k];
    }
    outcome.ids = std::move(ids);
    outcome.rejected = std::move(rejected);
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
