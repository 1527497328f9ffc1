// The uplink: drains the buffer to R/events over MQTT, at least once, keeping several QoS 1
// batches in flight; keeps the retained R/status document current (contract §5).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "agent/api/event_metrics.h"
#include "agent/api/inbox.h"
#include "agent/api/outbox.h"
#include "sync/batch.h"
#include "sync/claims.h"
#include "sync/mqtt_link.h"
#include "sync/rate_limit.h"

namespace omniedge::sync {

/// The `sync.*` settings (and what the engine needs from `store.*` and the build).
struct SyncOptions {
  std::string store_id;
  std::string agent_version;
  std::size_t batch_max_events = 1000;
  std::size_t batch_max_bytes = 1024 * 1024;  // of event bodies, before compression
  Compression compression = Compression::kGzip;
  int max_inflight = 4;           // batches published and not yet PUBACKed
  int64_t max_bytes_per_sec = 0;  // on the wire; 0 = unlimited (ignored when `rate` is given)
  /// The buffer's seq space: every batch carries its epoch and seq range (issue 14 point 7).
  SeqSpace space;
  /// Shared with the HTTPS uplink when there is one (sync/claims.h), so both drain one queue
  /// without double work and sync.max_bytes_per_sec caps their sum; null: the engine's own.
  std::shared_ptr<ClaimBook> claims;
  std::shared_ptr<RateLimit> rate;
  int status_interval_s = 60;  // R/status is also republished after every connect
  /// Topics the centre writes to (R/profiles, R/config/desired, R/cmd, the tenant's
  /// all/config/desired), subscribed at QoS 1 after every connect; what arrives goes to the
  /// `on_message` given to the engine.
  std::vector<std::string> inbound;
  /// Bound on inbound messages kept in memory when the inbox refuses them (sync.inbound_max_bytes).
  std::size_t inbound_max_bytes = 16u << 20;
  /// Where delivered events (by channel) and the publish → PUBACK latency are counted; null:
  /// nowhere. Taken at construction only (reconfigure() keeps the engine's).
  std::shared_ptr<EventMetrics> metrics;
};

/// A message from the centre, with its full topic. Called on the sync thread, in arrival order
/// (after a restart: what the inbox kept, first); it may write to disk but must not block long.
/// It may be called again for the same message after a crash: it must be idempotent.
using InboundHandler = std::function<void(const std::string& topic, const std::string& payload)>;

/// A snapshot of the uplink, for `omniedge status` and metrics. Times are Unix ms, 0 = never.
struct SyncStatus {
  bool connected = false;
  /// The broker node in use (or tried last) of mqtt.url's list, and its index there.
  std::string url;
  std::size_t node = 0;
  std::size_t nodes = 1;
  int64_t since_ms = 0;  // when `connected` last changed (or start())
  int mqtt_version = 0;  // protocol level of the current or last connection: 4 (3.1.1) or 5
  /// The latest connect/publish/read failure, saying what to check; empty if none yet. Kept
  /// after the uplink recovered (then `last_error_resolved`), so a technician sees what happened.
  std::string last_error;
  int64_t last_error_ms = 0;
  bool last_error_resolved = false;  // a connect or a delivery succeeded after it
  int64_t next_attempt_ms = 0;       // while disconnected: when the next connect attempt starts
  uint64_t connect_attempts = 0;
  uint64_t batches_sent = 0;
  uint64_t batches_acked = 0;
  uint64_t events_delivered = 0;  // events in PUBACKed batches (resends counted again)
  uint64_t bytes_sent = 0;        // batch payload bytes published (compressed)
  uint64_t reconnects = 0;        // successful connects after the first
  int inflight = 0;               // batches awaiting their PUBACK on the current connection
  /// The bound every PUBLISH of a batch stays within on this connection, and where it came
  /// from: "broker" (CONNACK Maximum Packet Size), "config" (mqtt.max_packet_bytes), "default".
  int64_t max_packet_bytes = 0;
  std::string max_packet_source;
  uint64_t batches_refused = 0;     // PUBACK reason >= 0x80, or the broker closed the connection
  uint64_t batches_split = 0;       // refused batches resent in halves
  uint64_t events_quarantined = 0;  // moved to the quarantine by this engine since start
  std::string last_quarantine_reason;
  int64_t last_quarantine_ms = 0;
  /// Single events the broker refused, held back (not sent, not deleted) until it takes a later
  /// batch: then they are quarantined; a broker that refuses everything quarantines nothing.
  std::size_t events_held = 0;
  /// The reconfigure() generation the current (or next) connection uses: 0 for the options
  /// given to the constructor.
  uint64_t generation = 0;
  uint64_t inbound_handled = 0;      // messages from the centre handed to on_message
  uint64_t inbound_not_durable = 0;  // the inbox refused them: kept in memory only
  uint64_t inbound_dropped = 0;      // ... and dropped: memory bound (inbound_max_bytes) passed
  std::size_t control_queued = 0;    // reports and results waiting to be published
  uint64_t control_dropped = 0;      // dropped: the queue's bound, or the broker refused them
};

/// Owns the sync thread and the MQTT connection.
///
/// At least once: an event leaves the buffer only after the PUBACK of a batch that carried it,
/// or when it is quarantined (below). When the connection drops, the batches in flight are
/// forgotten and everything still pending is read again from the start. A PUBACK Paho had
/// already received for a forgotten batch before its client was destroyed (at the next
/// connect) still acknowledges it: the broker has those events. None can come later: a PUBACK
/// belongs to its network connection, every connect uses a fresh client that retransmits
/// nothing, the old client's unfinished publishes fail or vanish with it, and tags are never
/// reused, so such a late report cannot be taken for a newer batch. Duplicates are possible,
/// loss is not; the centre de-duplicates on `id`.
///
/// Refusals: every batch is built to fit the broker's maximum packet size (after compression,
/// with the PUBLISH header); an event that cannot fit even alone is quarantined without being
/// sent, since a 3.1.1 broker may PUBACK and drop it. A batch the broker refuses (MQTT 5 PUBACK
/// reason for that message, or the connection closed twice right after it was the only one in
/// flight) is resent in halves; a single event refused is held back and quarantined once the
/// broker has taken a later batch, so one bad event never blocks the queue and a broker that
/// refuses everything quarantines nothing. The reconnect backoff restarts from the shortest
/// delay only after a connection proved itself (a batch PUBACKed, or up for proven_after_ms).
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

  /// Where Paho's message callback stores inbound messages before returning (Paho sends the
  /// PUBACK once it returns); null: kept in memory only. `inbox` must outlive the engine.
  /// Thread: the owner, before start().
  void setInbox(Inbox* inbox);

  /// Messages published after every connect, after the status (e.g. the latest config
  /// report, so that one made while offline reaches the centre). Called on the sync thread.
  /// Thread: the owner, before start().
  void setConnectMessages(std::function<std::vector<MqttMessage>()> messages);

  /// New settings. The sync thread takes them at its next round (it wakes from a backoff wait
  /// for it): the batch and rate settings and the reconnect bounds apply at once; anything
  /// else about the connection (URL, TLS files, keep-alive, version, packet size, topics)
  /// closes the connection cleanly (retained "offline" status, DISCONNECT) and connects again
  /// with the new options at once. Nothing pending is lost: events stay in the outbox, queued
  /// publish()es stay queued. Returns the generation that status().generation reports once a
  /// connection uses them. Thread: any. Never blocks.
  uint64_t reconfigure(MqttOptions mqtt, SyncOptions options);

  /// Queues a QoS 1 publish (a config report, a command result): sent in order while
  /// connected, kept until its PUBACK and sent again after a reconnect; then `on_acked` runs
  /// (on the sync thread; it must not block long). Bounded (256 messages, 4 MiB): beyond, the
  /// oldest is dropped and counted. A message the broker refuses (PUBACK reason >= 0x80) is
  /// dropped and counted. Queued messages are lost when the engine stops: who needs more keeps
  /// its own record until `on_acked`. Thread: any. Never blocks.
  void publish(MqttMessage message, std::function<void()> on_acked = {});

  /// A consistent snapshot. Thread: any. Never blocks for long (a short mutex).
  SyncStatus status() const;

 private:
  struct InFlight {
    int64_t first_seq = 0;
    int64_t last_seq = 0;
    std::size_t count = 0;
    uint64_t connection = 0;  // which connection published it
    std::chrono::steady_clock::time_point sent_at;
    ChannelTally channels;  // its events by channel, for EventMetrics on its PUBACK
  };
  struct Outgoing {
    MqttMessage message;
    std::function<void()> on_acked;
  };
  struct Delivery {
    uint64_t tag = 0;
    bool ok = false;
    int reason_code = 0;
    std::string error;
  };
  /// Seqs first..last_seq (keyed by first) go out in batches of at most max_events.
  struct SplitRange {
    int64_t last_seq = 0;
    std::size_t max_events = 0;
  };
  /// A single event the broker refused: quarantined once a batch with tag >= confirm_tag is
  /// PUBACKed.
  struct Held {
    std::string reason;
    uint64_t confirm_tag = 0;
  };
  /// The lone batch in flight at the latest connection losses that came right after it.
  struct Strike {
    int64_t first_seq = 0;
    int times = 0;
  };

  void run(std::stop_token stop);
  bool connectOnce(std::stop_token stop);
  void handleDeliveries();
  void handleInbound();
  void deliverInbound(const std::string& topic, const std::string& payload);
  void onInboundMessage(std::string topic, std::string payload);
  void applyReconfigure(bool& back_off);
  void closeForReconfigure();
  void sendControl();
  void requeueControl();
  void handleLoss(const std::string& cause);
  void dropConnection(const std::string& cause);
  void publishStatus();
  bool sendNextBatch();
  void clipBatch(std::vector<PendingEvent>& events) const;
  void advanceCursor(bool resending, int64_t seq);
  std::size_t readBytesCap() const;
  void onAcked(const InFlight& batch, uint64_t tag, bool current);
  bool onRefused(const InFlight& batch, const std::string& reason, bool resend);
  void strikeLoneBatch(const std::string& cause);
  void quarantineEvent(int64_t seq, const std::string& reason);
  void markProven();
  void setNextAttempt(int64_t at_ms);
  void setResolved();
  void waitIdle();
  void waitSignal(std::stop_token stop, std::chrono::milliseconds timeout, bool any_news);
  std::chrono::milliseconds backoffDelay(int attempt);
  int64_t throttleWaitMs();
  const std::string& nodeUrl() const { return urls_[node_]; }
  void nextNode();
  void shutdown();
  void setConnected(bool connected);
  void setError(const std::string& error);
  void publishInflight();
  std::string topic(const char* leaf) const;

  Outbox& outbox_;
  MqttOptions mqtt_;     // the sync thread's once started (reconfigure() hands over new ones)
  SyncOptions options_;  // idem
  const std::function<std::string()> status_json_;
  const InboundHandler on_message_;
  std::string topic_events_;  // idem
  Inbox* inbox_ = nullptr;
  std::function<std::vector<MqttMessage>()> connect_messages_;
  std::vector<std::string> urls_;  // the broker cluster's nodes (mqtt.url's items); idem
  const std::shared_ptr<ClaimBook> claims_;
  const std::shared_ptr<RateLimit> rate_;

  // Sync thread only.
  std::size_t node_ = 0;            // the node of urls_ connected to, or to try next
  uint64_t claims_generation_ = 0;  // claims_->generation() last seen
  std::unique_ptr<MqttLink> link_;
  std::unordered_map<uint64_t, InFlight> sent_;  // current and forgotten batches by tag
  int inflight_ = 0;                             // entries of sent_ on the current connection
  uint64_t connection_ = 0;                      // increases with every successful connect
  bool session_up_ = false;                      // the current connection not yet handled lost
  uint64_t next_tag_ = 1;                        // 0 is the status document
  int64_t read_seq_ = 0;                         // last seq read on this connection
  int64_t newest_seen_ = 0;                      // waitForNewer()'s last answer
  int attempt_ = 0;                              // backoff doublings since the last proven link
  bool proven_ = false;                          // this connection PUBACKed a batch or stayed up
  bool acked_on_connection_ = false;             // a batch was PUBACKed on this connection
  std::chrono::steady_clock::time_point connected_at_;
  int64_t max_packet_ = kSafeMaxPacketBytes;  // bound on every batch PUBLISH, this connection
  std::string max_packet_source_ = "default";
  double ratio_ = 1.0;                              // batch JSON bytes per payload byte, smoothed
  std::map<int64_t, SplitRange> splits_;            // refused ranges, by first seq
  std::map<int64_t, Held> held_;                    // refused single events, by seq
  std::deque<std::pair<int64_t, int64_t>> resend_;  // refused on this connection: resent first
  bool probe_ = false;  // after a loss with batches in flight: one at a time until a PUBACK
  Strike strike_;
  std::chrono::steady_clock::time_point status_due_;
  std::mt19937_64 rng_{std::random_device{}()};
  uint64_t generation_ = 0;                    // of mqtt_ and options_
  std::map<uint64_t, Outgoing> control_sent_;  // publish()es awaiting their PUBACK, by tag
  uint64_t next_control_tag_ = 0;

  // Handed over by Paho's threads and flushNow().
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::deque<Delivery> deliveries_;                                 // guarded by mu_
  std::deque<std::pair<std::string, std::string>> inbound_;         // guarded by mu_
  bool lost_ = false;                                               // guarded by mu_
  std::string lost_cause_;                                          // guarded by mu_
  bool flush_ = false;                                              // guarded by mu_
  std::optional<std::pair<MqttOptions, SyncOptions>> next_config_;  // guarded by mu_
  uint64_t requested_generation_ = 0;                               // guarded by mu_
  std::deque<Outgoing> control_;                                    // guarded by mu_
  std::size_t control_bytes_ = 0;                                   // guarded by mu_
  std::size_t inbound_bytes_ = 0;                                   // guarded by mu_
  std::atomic<std::size_t> inbound_max_bytes_{16u << 20};
  std::atomic<bool> inbox_dirty_{true};  // put() stored something the sync thread has not read

  mutable std::mutex status_mu_;
  SyncStatus status_;  // guarded by status_mu_

  std::jthread thread_;
};

}  // namespace omniedge::sync
