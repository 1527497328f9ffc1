#include "sync/rate_limit.h"

#include <algorithm>
#include <cmath>

namespace omniedge::sync {

void RateLimit::refillLocked(std::chrono::steady_clock::time_point now) {
  const double elapsed_s = std::chrono::duration<double>(now - at_).count();
  at_ = now;
  const auto rate = static_cast<double>(rate_.load());
  tokens_ = std::min(rate, tokens_ + elapsed_s * rate);
}

int64_t RateLimit::waitMs() {
  std::lock_guard lock(mu_);
  const int64_t rate = rate_.load();
  if (rate <= 0) {
    return 0;
  }
  refillLocked(std::chrono::steady_clock::now());
  if (tokens_ >= 0) {
    return 0;
  }
  return static_cast<int64_t>(std::ceil(-tokens_ / static_cast<double>(rate) * 1000.0));
}

void RateLimit::setBytesPerSec(int64_t bytes_per_sec) {
  std::lock_guard lock(mu_);
  rate_.store(bytes_per_sec);
  tokens_ = static_cast<double>(std::max<int64_t>(0, bytes_per_sec));
  at_ = std::chrono::steady_clock::now();
}

void RateLimit::spend(int64_t bytes) {
  std::lock_guard lock(mu_);
  if (rate_.load() <= 0) {
    return;
  }
  refillLocked(std::chrono::steady_clock::now());
  tokens_ -= static_cast<double>(bytes);
}

}  // namespace omniedge::sync
