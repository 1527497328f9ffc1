// How the CLI writes figures for people: IEC sizes, ages, aligned columns.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace omniedge::cli {

/// "0 B", "512 B", "1.5 KiB", "12.3 MiB", "1.0 GiB" (powers of 1024, as `doctor` and the
/// configuration write them).
std::string humanBytes(int64_t bytes);

/// An age or a duration in its two largest units: "0s", "45s", "3m 12s", "2h 5m", "3d 4h".
std::string humanAge(int64_t seconds);

/// Seconds from the RFC 3339 time `at` to `now_ms` (negative: in the future); nullopt when
/// `at` is empty or not a timestamp.
std::optional<int64_t> secondsSince(const std::string& at, int64_t now_ms);

/// "1,234,567".
std::string thousands(int64_t n);

int64_t nowMs();

/// Rows of cells printed with each column as wide as its widest cell (the last column is not
/// padded). Widths only grow, so a table printed in parts (tail --follow) stays aligned.
class Columns {
 public:
  void add(std::vector<std::string> row);
  /// Prints the rows added since the last print, then forgets them (keeping the widths).
  void print(std::ostream& out, const std::string& separator = "  ");

 private:
  std::vector<std::size_t> widths_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace omniedge::cli
