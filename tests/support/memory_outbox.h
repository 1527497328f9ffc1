// An in-memory Outbox for tests: pending bodies in a map, acknowledgements applied at once.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/api/outbox.h"

namespace omniedge::testing {

class MemoryOutbox final : public Outbox {
 public:
  /// Adds one pending event; returns its seq. Thread: any.
  int64_t add(std::string body) {
    int64_t seq = 0;
    {
      std::lock_guard lock(mu_);
      seq = ++newest_;
      pending_.emplace(seq, std::move(body));
    }
    cv_.notify_all();
    return seq;
  }

  /// True while `seq` is neither acknowledged nor quarantined. Thread: any.
  bool isPending(int64_t seq) const {
    std::lock_guard lock(mu_);
    return pending_.count(seq) > 0;
  }

  std::size_t pendingCount() const {
    std::lock_guard lock(mu_);
    return pending_.size();
  }
  /// How many acknowledge() calls removed at least one event, and how many events in all.
  std::size_t acknowledgeCalls() const {
    std::lock_guard lock(mu_);
    return acknowledge_calls_;
  }
  std::size_t acknowledgedEvents() const {
    std::lock_guard lock(mu_);
    return acknowledged_events_;
  }
  /// True once nothing is pending, false after `timeout`.
  bool waitUntilEmpty(std::chrono::milliseconds timeout) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pending_.empty(); });
  }
  /// The next readPending() fails with `error`.
  void failNextRead(Error error) {
    std::lock_guard lock(mu_);
    next_read_error_ = std::move(error);
  }

  // Outbox
  Result<std::vector<PendingEvent>> readPending(int64_t after_seq, std::size_t max_events,
                                                std::size_t max_bytes) override {
    std::lock_guard lock(mu_);
    if (next_read_error_) {
      Error error = std::move(*next_read_error_);
      next_read_error_.reset();
      return error;
    }
    std::vector<PendingEvent> out;
    std::size_t bytes = 0;
    for (auto it = pending_.upper_bound(after_seq); it != pending_.end() && out.size() < max_events;
         ++it) {
      if (!out.empty() && bytes + it->second.size() > max_bytes) {
        break;
      }
      bytes += it->second.size();
      out.push_back(PendingEvent{it->first, it->second});
    }
    return out;
  }

  void acknowledge(int64_t first_seq, int64_t last_seq) override {
    {
      std::lock_guard lock(mu_);
      auto first = pending_.lower_bound(first_seq);
      auto last = pending_.upper_bound(last_seq);
      const auto n = static_cast<std::size_t>(std::distance(first, last));
      if (n != 0) {
        ++acknowledge_calls_;
        acknowledged_events_ += n;
        pending_.erase(first, last);
      }
    }
    cv_.notify_all();
  }

  void quarantine(int64_t first_seq, int64_t last_seq, std::string reason) override {
    {
      std::lock_guard lock(mu_);
      auto first = pending_.lower_bound(first_seq);
      auto last = pending_.upper_bound(last_seq);
      for (auto it = first; it != last; ++it) {
        quarantined_.emplace(it->first, reason);
      }
      pending_.erase(first, last);
    }
    cv_.notify_all();
  }

  /// Quarantined events by seq, with their reason. Thread: any.
  std::map<int64_t, std::string> quarantined() const {
    std::lock_guard lock(mu_);
    return quarantined_;
  }

  int64_t waitForNewer(int64_t seq, int timeout_ms) override {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return newest_ > seq; });
    return newest_;
  }

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::map<int64_t, std::string> pending_;      // guarded by mu_
  int64_t newest_ = 0;                          // guarded by mu_
  std::size_t acknowledge_calls_ = 0;           // guarded by mu_
  std::size_t acknowledged_events_ = 0;         // guarded by mu_
  std::optional<Error> next_read_error_;        // guarded by mu_
  std::map<int64_t, std::string> quarantined_;  // guarded by mu_
};

}  // namespace omniedge::testing
