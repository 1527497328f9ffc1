#include "sync/claims.h"

#include <algorithm>
#include <iterator>

namespace omniedge::sync {

ClaimBook::Grant ClaimBook::claim(Uplink link, int64_t first, int64_t last) {
  std::lock_guard lock(mu_);
  // The claim starting at or before `first` may cover it.
  auto it = claims_.upper_bound(first);
  if (it != claims_.begin()) {
    const auto prev = std::prev(it);
    if (prev->second.last >= first) {
      return Grant{false, prev->second.last};
    }
  }
  // The next claim after `first` bounds the grant.
  if (it != claims_.end()) {
    last = std::min(last, it->first - 1);
  }
  claims_.emplace(first, Claim{last, link});
  return Grant{true, last};
}

void ClaimBook::shrink(Uplink link, int64_t first, int64_t last) {
  std::lock_guard lock(mu_);
  auto it = claims_.find(first);
  if (it != claims_.end() && it->second.link == link && last >= first) {
    it->second.last = std::min(it->second.last, last);
  }
}

void ClaimBook::done(Uplink link, int64_t first) {
  std::lock_guard lock(mu_);
  auto it = claims_.find(first);
  if (it != claims_.end() && it->second.link == link) {
    claims_.erase(it);
  }
}

void ClaimBook::release(Uplink link, int64_t first) {
  std::lock_guard lock(mu_);
  auto it = claims_.find(first);
  if (it != claims_.end() && it->second.link == link) {
    claims_.erase(it);
    ++generation_;
  }
}

void ClaimBook::releaseAll(Uplink link) {
  std::lock_guard lock(mu_);
  bool any = false;
  for (auto it = claims_.begin(); it != claims_.end();) {
    if (it->second.link == link) {
      it = claims_.erase(it);
      any = true;
    } else {
      ++it;
    }
  }
  if (any) {
    ++generation_;
  }
}

uint64_t ClaimBook::generation() const {
  std::lock_guard lock(mu_);
  return generation_;
}

std::size_t ClaimBook::claims(Uplink link) const {
  std::lock_guard lock(mu_);
  return static_cast<std::size_t>(std::count_if(
      claims_.begin(), claims_.end(), [&](const auto& c) { return c.second.link == link; }));
}

void ClaimBook::setFloor(int64_t seq) {
  std::lock_guard lock(mu_);
  if (seq < floor_) {
    ++generation_;
  }
  floor_ = seq;
}

int64_t ClaimBook::floor() const {
  std::lock_guard lock(mu_);
  return floor_;
}

void ClaimBook::setMqttUp(bool up, int64_t now_ms) {
  std::lock_guard lock(mu_);
  if (up != mqtt_up_ || mqtt_changed_ms_ == 0) {
    mqtt_up_ = up;
    mqtt_changed_ms_ = now_ms;
  }
}

bool ClaimBook::mqttUp() const {
  std::lock_guard lock(mu_);
  return mqtt_up_;
}

int64_t ClaimBook::mqttChangedMs() const {
  std::lock_guard lock(mu_);
  return mqtt_changed_ms_;
}

}  // namespace omniedge::sync
