// Agent: the composition root. Builds every part from the configuration, owns every thread,
// and tears them down in order. The data path is driver -> Ingest -> Buffer -> SyncEngine.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/api/clock.h"
#include "agent/api/personal_data.h"
#include "agent/api/result.h"
#include "agent/config.h"
#include "agent/history.h"
#include "agent/ingest/ingest.h"
#include "agent/ingest/pii.h"
#include "agent/store/buffer.h"
#include "agent/store/profile_cache.h"
#include "drivers/kiosk/http_api.h"

namespace omniedge {
namespace sync {
class HttpsUplink;
}  // namespace sync

namespace sync {
struct RemoteLayer;
struct ConfigReport;
}  // namespace sync

/// What Agent::applyConfig() did.
struct ConfigChange {
  std::vector<std::string> keys;  // every key whose value changed
  /// Keys whose new value only a restart of the daemon takes (the buffer, the identity, the
  /// kiosk API's address...); none of them is remote-settable. Listed, not applied.
  std::vector<std::string> restart_needed;
  bool uplink_reconnects = false;  // the uplink connects again with new connection settings
  uint64_t uplink_generation = 0;  // sync status "generation" of the connection that uses them
};

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

  /// The throughput samples of the last hour (console.sample_interval apart, at most
  /// History::kDefaultCapacity): {"interval_s", "capacity", "samples": {"at_ms": [...],
  /// "ingested": [...], "delivered": [...], "queue": [...], "queue_bytes": [...]}}, oldest
  /// first; the totals count since start. Thread: any; copies at most a few KiB.
  nlohmann::json history() const;

  /// The newest stored events with seq > after_seq (at most `limit`, oldest first), from the
  /// ring behind `omniedge tail` (Buffer::recent()). Thread: any; no I/O.
  std::vector<store::RecentEvent> recentEvents(int64_t after_seq, std::size_t limit) const;

  /// Mounts a read-only GET route on the kiosk API's listener (kiosk::HttpApi::mount(): the
  /// same authentication and limits as every route): how the technician's web console
  /// (cli/console/) is served without the agent knowing it. `handler`, and what it uses, must
  /// outlive run(). Thread: the main thread, before run(). Fails "config" or "invalid_state"
  /// as HttpApi::mount() does.
  Result<void> mountHttp(std::string prefix, kiosk::GetHandler handler);

  /// Makes `next` the effective configuration. Compares it with the current one and, per part,
  /// applies the change at once (log level, identity.data_pii, batch sizes, compression, rate
  /// caps, reconnect bounds) or restarts only that part in-process: the uplink reconnects for
  /// new connection settings (events stay pending in the buffer), a driver whose keys changed
  /// is stopped and started again with them. Everything that can fail (reading the MQTT
  /// password file, building the drivers) is done before anything changes, so a failure
  /// ("config") leaves the agent as it was. Keys only a restart takes are listed in
  /// `restart_needed`. Thread: the main thread (run()'s); not concurrently with itself.
  /// Blocks while a driver stops (about a second).
  Result<ConfigChange> applyConfig(const config::Config& next);

  /// How run() reads the local configuration again on SIGHUP (the same file, environment and
  /// flags as at start); without it SIGHUP only logs that it cannot. Thread: before run().
  void setReload(std::function<Result<config::Config>()> reload);

  /// Registers a holder of customers' personal data (visits, triggers) that `omniedge forget`
  /// and the `forget` command must reach. `holder` must outlive the agent's run(). Thread: the
  /// main thread, before run().
  void addPersonalData(PersonalData* holder);

 private:
  struct Parts;
  class CentreCommands;
  explicit Agent(std::unique_ptr<Parts> parts);
  void housekeeping();
  nlohmann::json handleControl(const nlohmann::json& request);
  std::string metricsText() const;
  std::string uplinkStatusJson() const;
  /// Consent refusals a profile update added: applied to the buffered events (sync thread or
  /// the HTTPS uplink's).
  void applyRefusals(const std::vector<store::ConsentRefusal>& refusals);

  // Remote config, commands and profiles from the centre (the section at the end of agent.cpp).
  std::shared_ptr<const config::Config> liveConfig() const;
  void onCentreMessage(const std::string& topic, const std::string& payload);
  void receiveConfig(bool all_stores, const std::string& payload);
  void applyRemoteLayer(const sync::RemoteLayer& layer, const sync::ConfigReport& report);
  void publishConfigReport(const sync::ConfigReport& report);
  void publishCommandResult(const std::string& result);
  void remoteStart();
  void remoteTick();
  void addRemoteStatus(nlohmann::json& status) const;
  /// SIGHUP: the local layers read again and applied under the remote layer, as a remote
  /// config is; a bad file changes nothing. Thread: the main thread.
  void reloadLocalConfig();
  /// The HTTPS uplink `cfg` asks for (null when https.base_url is empty); not started.
  std::shared_ptr<sync::HttpsUplink> makeHttpsUplink(const config::Config& cfg);
  /// The HTTPS uplink now (null when off). Thread: any.
  std::shared_ptr<sync::HttpsUplink> https() const;

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
