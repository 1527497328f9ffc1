#include "agent/history.h"

#include <algorithm>

namespace omniedge {

History::History(int64_t interval_ms, std::size_t capacity)
    : interval_ms_(std::max<int64_t>(interval_ms, 1)), ring_(std::max<std::size_t>(capacity, 1)) {}

bool History::offer(const HistorySample& sample) {
  std::lock_guard lock(mu_);
  if (count_ > 0 && sample.at_ms >= last_ms_ && sample.at_ms - last_ms_ < interval_ms_) {
    return false;
  }
  ring_[next_] = sample;
  next_ = (next_ + 1) % ring_.size();
  count_ = std::min(count_ + 1, ring_.size());
  last_ms_ = sample.at_ms;
  return true;
}

std::vector<HistorySample> History::samples() const {
  std::lock_guard lock(mu_);
  std::vector<HistorySample> out;
  out.reserve(count_);
  const std::size_t first = (next_ + ring_.size() - count_) % ring_.size();
  for (std::size_t i = 0; i < count_; ++i) {
    out.push_back(ring_[(first + i) % ring_.size()]);
  }
  return out;
}

}  // namespace omniedge
