// The recent warnings and errors, kept in memory for `diagnostics` (a command from the centre):
// an spdlog sink holding the newest few, bounded by count and bytes.
#pragma once

#include <spdlog/sinks/base_sink.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace omniedge {

struct LogLine {
  int64_t at_ms = 0;
  std::string level;  // "warning", "error", "critical"
  std::string message;
};

/// Keeps the newest warnings and errors: at most `max_lines`, at most `max_bytes` of messages
/// (each cut to `max_line_bytes`). Thread: any (spdlog serialises sink_it_ with the mutex).
class RecentLogSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit RecentLogSink(std::size_t max_lines = 200, std::size_t max_bytes = 32 * 1024,
                         std::size_t max_line_bytes = 512);

  /// Oldest first. Thread: any.
  std::vector<LogLine> lines();

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override {}

 private:
  const std::size_t max_lines_;
  const std::size_t max_bytes_;
  const std::size_t max_line_bytes_;
  std::deque<LogLine> lines_;  // guarded by base_sink's mutex_
  std::size_t bytes_ = 0;      // guarded by base_sink's mutex_
};

}  // namespace omniedge
