// JSON string literals for the envelopes the agent writes by hand (no re-serialisation on the
// hot path): one escaper for every driver and for ingest.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace omniedge {

/// Appends `s` to `out` as a JSON string literal, quotes included: `"` `\` and control
/// characters escaped; bytes that are not well-formed UTF-8 (a till writing Latin-1 without
/// saying so) become U+FFFD, so the output is always valid JSON. Thread: any.
void appendJsonString(std::string& out, std::string_view s);

/// How many bytes from text[from] on a JSON string literal holds as they are: printable ASCII
/// other than `"` and `\` (and, with `stop_at_del`, other than 0x7f, which appendJsonString
/// escapes). Scans 16 bytes at a time where SSE2 is there. Thread: any.
std::size_t jsonPlainRun(std::string_view text, std::size_t from, bool stop_at_del);

/// Length of the well-formed UTF-8 sequence at text[i] (shortest form, no surrogates, at most
/// U+10FFFF), or 0 when the bytes there are not one. Thread: any.
std::size_t utf8SequenceLength(std::string_view text, std::size_t i);

}  // namespace omniedge
