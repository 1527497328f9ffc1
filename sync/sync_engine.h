// The uplink: drains the buffer to R/events over MQTT, at least once, keeping several QoS 1
// batches in flight; keeps the retained R/status document current (contract §5).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "agent/api/outbox.h"
#include "sync/batch.h"
#include "sync/mqtt_link.h"

namespace omniedge::sync {

/// The `sync.*` settings (and what the engine needs from `store.*` and the build).
struct SyncOptions {
  std::string store_id;
  std::string agent_version;
  std::size_t batch_max_events = 1000;
  std::size_t batch_max_bytes = 1024 * 1024;  // of event bodies, before compression
  Compression compression = Compression::kGzip;
  int max_inflight = 4;           // batches published and not yet PUBACKed
  int64_t max_bytes_per_sec = 0;  // on the wire; 0 = unlimited
  int status_interval_s = 60;     // R/status is also republished after every connect
  /// Topics under R the centre writes to (e.g. "profiles"), subscribed at QoS 1 after every
  /// connect; what arrives goes to the `on_message` given to the engine.
  std::vector<std::string> inbound;
};

/// A message from the centre, with the leaf of its topic under R ("profiles").
/// Called on the sync thread, in arrival order; it may write to disk but must not block long.
using InboundHandler = std::function<void(const std::string& leaf, const std::string& payload)>;

/// A snapshot of the uplink, for `omniedge status` and metrics.
struct SyncStatus {
  bool connected = false;
  int64_t since_ms = 0;    // Unix ms at which `connected` last changed (or start())
  std::string last_error;  // the latest connect/publish/read failure; empty if none yet
  uint64_t batches_sent = 0;
  uint64_t batches_acked = 0;
  uint64_t events_delivered = 0;  // events in PUBACKed batches (resends counted again)
  uint64_t bytes_sent = 0;        // batch payload bytes published (compressed)
  uint64_t reconnects = 0;        // successful connects after the first
  int inflight = 0;               // batches awaiting their PUBACK on the current connection
};

/// Owns the sync thread and the MQTT connection.
///
/// At least once: an event leaves the buffer only after its batch's PUBACK. When the connection
/// drops, the batches in flight are forgotten and everything still pending is read again from
/// the start (a PUBACK that still arrives for a forgotten batch acknowledges it: those events
/// were delivered). Duplicates are possible, loss is not; the centre de-duplicates on `id`.
class SyncEngine {
 public:
  /// `status_json` returns the full online status document (`{"state":"online",…}`); it is
  /// called on the sync thread after every connect and every status_interval_s.
  /// `outbox` must outlive the engine. Thread: any. Never blocks, never fails.
  SyncEngine(Outbox& outbox, MqttOptions mqtt, SyncOptions options,
             std::function<std::string()> status_json, InboundHandler on_message = {});
  /// Stops (see stop()).
  ~SyncEngine();
  SyncEngine(const SyncEngine&) = delete;
  SyncEngine& operator=(const SyncEngine&) = delete;

  /// Starts the sync thread, which connects, drains and reconnects until stop().
  /// Thread: the owner (not concurrently with stop()). Never blocks; a second call does nothing.
  void start();

  /// Stops the sync thread: no new batch is published; if connected, publishes the retained
  /// `{"state":"offline"}` (a clean DISCONNECT does not fire the will), waits briefly for
  /// outstanding PUBACKs, and disconnects cleanly. Thread: the owner. Returns within ~1 s.
  /// Never fails; unacknowledged events simply stay pending in the outbox.
  void stop();

  /// Wakes the sync thread: skips the current reconnect backoff and re-checks the outbox.
  /// Thread: any. Never blocks.
  void flushNow();

  /// A consistent snapshot. Thread: any. Never blocks for long (a short mutex).
  SyncStatus status() const;

 private:
  struct InFlight {
    int64_t first_seq = 0;
    int64_t last_seq = 0;
    std::size_t count = 0;
    uint64_t connection = 0;  // which connection published it
  };
  struct Delivery {
    uint64_t tag = 0;
    bool ok = false;
    std::string error;
  };

  void run(std::stop_token stop);
  bool connectOnce(std::stop_token stop);
  void handleDeliveries();
  void handleInbound();
  void handleLoss(const std::string& cause);
  void dropConnection(const std::string& cause);
  void publishStatus();
  bool sendNextBatch();
  void waitIdle();
  void waitSignal(std::stop_token stop, std::chrono::milliseconds timeout, bool any_news);
  std::chrono::milliseconds backoffDelay(int attempt);
  int64_t throttleWaitMs();
  void shutdown();
  void setConnected(bool connected);
  void setError(const std::string& error);
  void publishInflight();
  std::string topic(const char* leaf) const;

  Outbox& outbox_;
  const MqttOptions mqtt_;
  const SyncOptions options_;
  const std::function<std::string()> status_json_;
  const InboundHandler on_message_;

  // Sync thread only.
  std::unique_ptr<MqttLink> link_;
  std::unordered_map<uint64_t, InFlight> sent_;  // current and forgotten batches by tag
  int inflight_ = 0;                             // entries of sent_ on the current connection
  uint64_t connection_ = 0;                      // increases with every successful connect
  bool session_up_ = false;                      // the current connection not yet handled lost
  uint64_t next_tag_ = 1;                        // 0 is the status document
  int64_t read_seq_ = 0;                         // last seq read on this connection
  int64_t newest_seen_ = 0;                      // waitForNewer()'s last answer
  double tokens_ = 0;                            // bytes the rate limit allows now
  std::chrono::steady_clock::time_point tokens_at_;
  std::chrono::steady_clock::time_point status_due_;
  std::mt19937_64 rng_{std::random_device{}()};

  // Handed over by Paho's threads and flushNow().
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::deque<Delivery> deliveries_;                          // guarded by mu_
  std::deque<std::pair<std::string, std::string>> inbound_;  // guarded by mu_
  bool lost_ = false;                                        // guarded by mu_
  std::string lost_cause_;                                   // guarded by mu_
  bool flush_ = false;                                       // guarded by mu_

  mutable std::mutex status_mu_;
  SyncStatus status_;  // guarded by status_mu_

  std::jthread thread_;
};

}  // namespace omniedge::sync
