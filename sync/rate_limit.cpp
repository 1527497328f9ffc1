#include "sync/rate_limit.h"

#include <algorithm>
#include <cmath>

namespace omniedge::sync {

void RateLimit::refillLocked(std::chrono::steady_clock::time_point now) {
  const double elapsed_s = std::chrono::duration<double>(now - at_).count();
  at_ = now;
  const auto rate = static_cast<double>(rate_);
  tokens_ = std::min(rate, tokens_ + elapsed_s * rate);
}

int64_t RateLimit::waitMs() {
  if (rate_ <= 0) {
    return 0;
  }
  std::lock_guard lock(mu_);
  refillLocked(std::chrono::steady_clock::now());
  if (tokens_ >= 0) {
    return 0;
  }
  return static_cast<int64_t>(std::ceil(-tokens_ / static_cast<double>(rate_) * 1000.0));
}

void RateLimit::spend(int64_t bytes) {
  if (rate_ <= 0) {
    return;
  }
  std::lock_guard lock(mu_);
  refillLocked(std::chrono::steady_clock::now());
  tokens_ -= static_cast<double>(bytes);
}

}  // namespace omniedge::sync
