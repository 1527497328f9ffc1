// The text view of `omniedge status` (the --json document is the daemon's Agent::status(), or
// the CLI's own reading of the buffer file when the daemon is down).
#pragma once

#include <nlohmann/json.hpp>
#include <ostream>

namespace omniedge::cli {

/// Prints `status` for people: ages instead of timestamps, IEC sizes, a line per driver, the
/// uplink's error and next attempt while disconnected, a FULL line while producers are refused.
/// A field that is missing or of an unexpected type leaves its part out. Thread: any.
void printStatusText(const nlohmann::json& status, std::ostream& out);

}  // namespace omniedge::cli
