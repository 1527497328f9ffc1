// The last hour of the agent's throughput, for the web console's plots: a fixed ring of samples
// of totals (rates are differences of totals, so a missed sample loses no event count).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace omniedge {

struct HistorySample {
  int64_t at_ms = 0;        // wall clock (ms since the epoch) when it was taken
  int64_t ingested = 0;     // events stored in the buffer since start (a total)
  int64_t delivered = 0;    // events the centre acknowledged since start (a total)
  int64_t queue = 0;        // events pending now
  int64_t queue_bytes = 0;  // their bytes
};

/// A ring of at most `capacity` samples taken every `interval_ms` (the oldest leave first):
/// memory is fixed whatever the uptime. Thread: any (one mutex; every call is short).
class History {
 public:
  static constexpr std::size_t kDefaultCapacity = 360;  // an hour at the default 10 s

  explicit History(int64_t interval_ms, std::size_t capacity = kDefaultCapacity);

  /// Records `sample` when `interval_ms` has passed since the last one kept (or none was
  /// kept yet); otherwise does nothing. Returns whether it was kept. Called once a second by
  /// the agent's housekeeping; a clock that went back starts the interval again.
  bool offer(const HistorySample& sample);

  /// The samples kept, oldest first.
  std::vector<HistorySample> samples() const;

  int64_t intervalMs() const { return interval_ms_; }
  std::size_t capacity() const { return ring_.size(); }

 private:
  const int64_t interval_ms_;
  mutable std::mutex mu_;
  std::vector<HistorySample> ring_;  // guarded by mu_: fixed size, `count_` of them in use
  std::size_t next_ = 0;             // guarded by mu_: where the next sample goes
  std::size_t count_ = 0;            // guarded by mu_
  int64_t last_ms_ = 0;              // guarded by mu_: at_ms of the newest kept
};

}  // namespace omniedge
