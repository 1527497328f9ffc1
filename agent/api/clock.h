// Wall-clock time for event timestamps; a seam for tests.
#pragma once

#include <chrono>
#include <cstdint>

namespace omniedge {

class Clock {
 public:
  virtual ~Clock() = default;
  /// Unix epoch milliseconds, UTC. Thread: any.
  virtual int64_t nowMs() const = 0;
};

class SystemClock final : public Clock {
 public:
  int64_t nowMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace omniedge
