// UUIDv7 (RFC 9562): time-ordered ids: 48 bits of milliseconds, a 12-bit counter, 62 random bits.
#pragma once

#include <cstdint>
#include <string>

namespace omniedge {

/// A new UUIDv7 for `epoch_ms`, lower-case with dashes. Ids made by one thread are strictly
/// increasing (a 12-bit counter within the same millisecond). Thread: any.
std::string makeUuidV7(int64_t epoch_ms);

/// True for a well-formed UUID string of any version (8-4-4-4-12 hex).
bool isUuid(const std::string& s);

}  // namespace omniedge
