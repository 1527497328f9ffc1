// `sync.max_bytes_per_sec`: one token bucket shared by both uplinks (MQTT and HTTPS), so the cap
// holds for their sum.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

namespace omniedge::sync {

/// A token bucket of one second's worth of bytes. A link asks waitMs() before sending and
/// spends() what it sent; a send larger than the bucket runs it into debt, which later sends
/// wait off. Thread: any (a short mutex). Never blocks, never fails.
class RateLimit {
 public:
  /// `bytes_per_sec` <= 0: unlimited.
  explicit RateLimit(int64_t bytes_per_sec)
      : rate_(bytes_per_sec), tokens_(static_cast<double>(bytes_per_sec)) {}

  /// Milliseconds to wait before the next send may start; 0 = now.
  int64_t waitMs();
  /// Takes `bytes` from the bucket (it may go negative).
  void spend(int64_t bytes);
  int64_t bytesPerSec() const { return rate_.load(); }
  /// A new cap (remote config): the bucket starts full at it.
  void setBytesPerSec(int64_t bytes_per_sec);

 private:
  void refillLocked(std::chrono::steady_clock::time_point now);

  std::atomic<int64_t> rate_;
  std::mutex mu_;
  double tokens_;                                                                // guarded by mu_
  std::chrono::steady_clock::time_point at_ = std::chrono::steady_clock::now();  // guarded by mu_
};

}  // namespace omniedge::sync
