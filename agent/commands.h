// Commands from the centre (contract §5): `{"id", "name", "args"}` on R/cmd, answered on
// R/cmd/result with `{"id", "ok": true, "result": {…}}` or `{"id", "ok": false, "error": "…"}`.
// A command id is executed at most once: the journal (store::InboxStore) records it before it
// runs and keeps its answer, so a redelivery (QoS 1, a restart) is answered again, not re-run.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "agent/api/result.h"
#include "agent/store/inbox.h"

namespace omniedge {

/// What the commands act on (the agent). Every method runs on the sync thread and must return
/// within a second or so.
class CommandTarget {
 public:
  virtual ~CommandTarget() = default;
  /// `ping`: who answers (version, uptime, store).
  virtual nlohmann::json ping() = 0;
  /// `flush`: sync now (skips the reconnect backoff); says how much is pending.
  virtual nlohmann::json flush() = 0;
  /// `resync-profiles`: forget the profile cursor so that the next snapshot starts afresh.
  virtual Result<nlohmann::json> resyncProfiles() = 0;
  /// `set-log-level`: `level` for `duration_s`, then back to the configured level.
  virtual Result<nlohmann::json> setLogLevel(const std::string& level, int64_t duration_s) = 0;
  /// `diagnostics`: status, config (secrets masked), recent warnings and errors; at most
  /// `max_bytes` of JSON.
  virtual nlohmann::json diagnostics(std::size_t max_bytes) = 0;
  /// `retry-quarantine`: quarantined events back to pending; how many.
  virtual Result<int64_t> retryQuarantine() = 0;
  /// `forget` {"key": "loyalty:L1"}: erasure of the data subject `key` names (agent/omni/
  /// privacy.h): counts per part, the subject named by a keyed hash only. May take longer than
  /// a second for a large buffer (a scan of it). The default refuses ("unsupported").
  virtual Result<nlohmann::json> forget(const std::string& key) {
    (void)key;
    return makeError("unsupported", "this agent cannot erase data subjects");
  }
};

struct CommandStats {
  uint64_t executed = 0;        // run (once per id)
  uint64_t answered_again = 0;  // an id seen before: its stored answer published again
  uint64_t refused = 0;         // malformed, unknown name, bad arguments
};

class CommandRunner {
 public:
  /// Largest `diagnostics` answer (its JSON).
  static constexpr std::size_t kMaxDiagnosticsBytes = 64 * 1024;

  /// `journal` and `target` must outlive the runner.
  CommandRunner(store::InboxStore& journal, CommandTarget& target, std::function<int64_t()> now_ms);

  /// Handles one R/cmd payload and returns the R/cmd/result payload to publish (always one:
  /// a message without a usable id is answered with "id": ""). Thread: the sync thread (one
  /// at a time). Blocks for the journal's writes and the command itself.
  std::string handle(std::string_view payload);

  CommandStats stats() const;

 private:
  std::string answer(const std::string& id, const Result<nlohmann::json>& result);

  store::InboxStore& journal_;
  CommandTarget& target_;
  std::function<int64_t()> now_ms_;
  std::atomic<uint64_t> executed_{0};
  std::atomic<uint64_t> answered_again_{0};
  std::atomic<uint64_t> refused_{0};
};

}  // namespace omniedge
