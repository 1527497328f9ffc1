// RFC 3339 timestamps, UTC with milliseconds ("2026-11-22T13:32:42.123Z").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace omniedge {

/// "2026-11-22T13:32:42.123Z" for Unix epoch milliseconds.
std::string formatRfc3339Ms(int64_t epoch_ms);

/// Parses RFC 3339 date-time (`T` or space, fraction of any length, `Z` or `±hh:mm`) into
/// Unix epoch milliseconds; nullopt when it is not one. Fractions below 1 ms are truncated.
std::optional<int64_t> parseRfc3339(std::string_view text);

}  // namespace omniedge
