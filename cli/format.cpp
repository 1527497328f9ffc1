#include "cli/format.h"

#include <fmt/format.h>

#include <chrono>

#include "agent/api/time.h"

namespace omniedge::cli {

std::string humanBytes(int64_t bytes) {
  if (bytes < 0) {
    return "?";
  }
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (v >= 1024.0 && unit + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, kUnits[unit]);
}

std::string humanAge(int64_t s) {
  if (s < 0) {
    s = 0;
  }
  if (s < 60) {
    return fmt::format("{}s", s);
  }
  if (s < 3600) {
    return s % 60 == 0 ? fmt::format("{}m", s / 60) : fmt::format("{}m {}s", s / 60, s % 60);
  }
  if (s < 86400) {
    return s / 60 % 60 == 0 ? fmt::format("{}h", s / 3600)
                            : fmt::format("{}h {}m", s / 3600, s / 60 % 60);
  }
  return s / 3600 % 24 == 0 ? fmt::format("{}d", s / 86400)
                            : fmt::format("{}d {}h", s / 86400, s / 3600 % 24);
}

std::optional<int64_t> secondsSince(const std::string& at, int64_t now_ms) {
  if (at.empty()) {
    return std::nullopt;
  }
  const auto ms = parseRfc3339(at);
  if (!ms) {
    return std::nullopt;
  }
  return (now_ms - *ms) / 1000;
}

std::string thousands(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) {
      out.push_back(',');
    }
    out.push_back(digits[i]);
  }
  return n < 0 ? "-" + out : out;
}

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void Columns::add(std::vector<std::string> row) {
  if (widths_.size() < row.size()) {
    widths_.resize(row.size(), 0);
  }
  for (std::size_t i = 0; i + 1 < row.size(); ++i) {
    widths_[i] = std::max(widths_[i], row[i].size());
  }
  rows_.push_back(std::move(row));
}

void Columns::print(std::ostream& out, const std::string& separator) {
  for (const auto& row : rows_) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) {
        line += std::string(widths_[i] - row[i].size(), ' ') + separator;
      }
    }
    while (!line.empty() && line.back() == ' ') {
      line.pop_back();
    }
    out << line << "\n";
  }
  rows_.clear();
}

}  // namespace omniedge::cli
