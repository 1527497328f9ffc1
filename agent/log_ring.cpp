#include "agent/log_ring.h"

#include <algorithm>
#include <chrono>

namespace omniedge {

RecentLogSink::RecentLogSink(std::size_t max_lines, std::size_t max_bytes,
                             std::size_t max_line_bytes)
    : max_lines_(max_lines), max_bytes_(max_bytes), max_line_bytes_(max_line_bytes) {
  set_level(spdlog::level::warn);
}

std::vector<LogLine> RecentLogSink::lines() {
  std::lock_guard lock(mutex_);
  return {lines_.begin(), lines_.end()};
}

void RecentLogSink::sink_it_(const spdlog::details::log_msg& msg) {
  LogLine line;
  line.at_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count();
  const auto level = spdlog::level::to_string_view(msg.level);
  line.level.assign(level.data(), level.size());
  line.message.assign(msg.payload.data(), std::min(msg.payload.size(), max_line_bytes_));
  if (msg.payload.size() > max_line_bytes_) {
    // Never cut a UTF-8 sequence in two: back off to the start of the last character.
    while (!line.message.empty() &&
           (static_cast<unsigned char>(line.message.back()) & 0xC0) == 0x80) {
      line.message.pop_back();
    }
    if (!line.message.empty() && (static_cast<unsigned char>(line.message.back()) & 0x80) != 0) {
      line.message.pop_back();
    }
    line.message += "...";
  }
  bytes_ += line.message.size();
  lines_.push_back(std::move(line));
  while (!lines_.empty() && (lines_.size() > max_lines_ || bytes_ > max_bytes_)) {
    bytes_ -= lines_.front().message.size();
    lines_.pop_front();
  }
}

}  // namespace omniedge
