// JSON string literals for the envelopes the agent writes by hand (no re-serialisation on the
// hot path): one escaper for every driver and for ingest.
#pragma once

#include <string>
#include <string_view>

namespace omniedge {

/// Appends `s` to `out` as a JSON string literal, quotes included: `"` `\` and control
/// characters escaped; bytes that are not well-formed UTF-8 (a till writing Latin-1 without
/// saying so) become U+FFFD, so the output is always valid JSON. Thread: any.
void appendJsonString(std::string& out, std::string_view s);

}  // namespace omniedge
