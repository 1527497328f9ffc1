// What the sync engine sees of the buffer: pending events in order, and acknowledgements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "agent/api/result.h"

namespace omniedge {

struct PendingEvent {
  int64_t seq = 0;   // buffer order; strictly increasing, never reused
  std::string body;  // the event's envelope, serialised JSON, as it goes to the centre
};

/// The buffer as the sync engine drains it. Delivery is at least once: an event stays pending
/// until acknowledge() covers it, so a crash before that re-sends it.
class Outbox {
 public:
  virtual ~Outbox() = default;

  /// Pending events with seq > after_seq, in seq order, at most max_events and about
  /// max_bytes of bodies (always at least one event when any is pending).
  /// Thread: any (the MQTT and HTTPS uplinks' threads; calls are serialised on one read
  /// connection). Does not block on writers (WAL).
  virtual Result<std::vector<PendingEvent>> readPending(int64_t after_seq, std::size_t max_events,
                                                        std::size_t max_bytes) = 0;

  /// The centre has every pending event with first_seq <= seq <= last_seq (its PUBACK or 2xx
  /// arrived). Thread: any; never blocks on the network; the removal is committed by the
  /// buffer's writer thread shortly after.
  virtual void acknowledge(int64_t first_seq, int64_t last_seq) = 0;

  /// The centre will never take the pending events with first_seq <= seq <= last_seq (the broker
  /// refuses an event sent alone; an HTTPS 4xx): they leave the queue for the quarantine, where
  /// they are kept, counted and reported, never silently dropped. `reason` says why (shown by
  /// status). Thread: any; like acknowledge(), committed by the writer shortly after.
  virtual void quarantine(int64_t first_seq, int64_t last_seq, std::string reason) = 0;

  /// Wakes `waiter` when new events are pending (or after `timeout_ms`), whichever is first.
  /// Returns the newest seq stored so far (at once with timeout_ms 0). Thread: any.
  virtual int64_t waitForNewer(int64_t seq, int timeout_ms) = 0;
};

}  // namespace omniedge
