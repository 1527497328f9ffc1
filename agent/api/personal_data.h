// Erasure (`omniedge forget KEY`, the `forget` command): every part that keeps personal data of
// customers outside the buffer and the profile cache (visit state, trigger rate limits, ...)
// registers as a PersonalData holder, so that a data subject's erasure reaches it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/api/result.h"

namespace omniedge {

/// A data subject's keys as events carry them in `customer` (field, value): ("loyalty_id",
/// "L1"), ("app_user_id", "A1"), ("email_sha256", "…"), ("phone_sha256", "…"), ("beacon",
/// "ibeacon:…"), ("profile_id", "c-1"): every key the subject's profile links, already joined.
using SubjectKeys = std::vector<std::pair<std::string, std::string>>;

class PersonalData {
 public:
  virtual ~PersonalData() = default;
  /// A short name for the erasure report ("visits", "triggers").
  virtual std::string_view name() const = 0;
  /// Removes everything kept about the subject known by any of `keys`, durably and leaving no
  /// trace in its files (SQLite: secure_delete, then a WAL checkpoint); returns how many
  /// records went. Thread: any (the control or sync thread); may block on its own disk I/O.
  /// Fails "io".
  virtual Result<int64_t> forget(const SubjectKeys& keys) = 0;
};

}  // namespace omniedge
