// Agent: the composition root. Builds every part from the configuration, owns every thread,
// and tears them down in order. The data path is driver -> Ingest -> Buffer -> SyncEngine.
#pragma once

#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/api/clock.h"
#include "agent/api/result.h"
#include "agent/config.h"
#include "agent/ingest.h"
#include "agent/pii.h"
#include "agent/store/buffer.h"
#include "agent/store/profile_cache.h"

namespace omniedge {

class Agent {
 public:
  /// Opens the buffer (checking and, if corrupt, recovering it) and builds every part; starts
  /// nothing that talks to the outside yet. Fails on a bad configuration ("config") or an
  /// unusable data dir ("io", "busy").
  static Result<std::unique_ptr<Agent>> create(const config::Config& cfg);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  /// Starts the drivers, the control socket and sync, tells systemd READY=1, then serves until
  /// SIGTERM or SIGINT (which the caller must have blocked in every thread). Returns the exit
  /// code. Thread: the main thread.
  int run();

  /// The document `omniedge status --json` prints. Thread: any.
  nlohmann::json status() const;

 private:
  struct Parts;
  explicit Agent(std::unique_ptr<Parts> parts);
  void housekeeping();
  nlohmann::json handleControl(const nlohmann::json& request);
  std::string metricsText() const;
  std::string uplinkStatusJson() const;

  std::unique_ptr<Parts> p_;
};

/// Where the control socket lives: $RUNTIME_DIRECTORY (systemd) or else the data dir.
std::string controlSocketPath(const config::Config& cfg);

// The daemon's ingest path as the configuration makes it, built one way for the daemon and for
// `omniedge import` with the daemon down, so that both check and hash events alike.

/// The PII hasher: the tenant key (read now: the caller may be about to drop privileges),
/// region, data policy and phone module. Warns through spdlog when no key is set. Fails
/// "config" naming the key.
Result<std::unique_ptr<PiiHasher>> makePiiHasher(const config::Config& cfg);
/// The buffer's options (buffer.*, data.dir).
store::BufferOptions bufferOptions(const config::Config& cfg);
/// Ingest's options (store.id, buffer.max_event_bytes).
IngestOptions ingestOptions(const config::Config& cfg);
/// The profile cache Ingest resolves identities and consent with (data.dir/profiles.db).
Result<std::unique_ptr<store::ProfileCache>> openProfileCache(const config::Config& cfg);

}  // namespace omniedge
