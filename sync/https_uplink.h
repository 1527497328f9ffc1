// The second uplink: batches over HTTPS (contract §6) when MQTT is unreachable or the backlog is
// over sync.backfill_threshold, and the profile snapshot pages. Its own thread: a libcurl easy
// handle blocks for the whole request. How it shares the queue with MQTT: sync/claims.h.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <thread>

#include "agent/api/event_metrics.h"
#include "agent/api/outbox.h"
#include "agent/api/result.h"
#include "sync/batch.h"
#include "sync/claims.h"
#include "sync/https_client.h"
#include "sync/rate_limit.h"

namespace omniedge::sync {

/// The `https.*` and `sync.*` settings the HTTPS uplink needs.
struct HttpsOptions {
  HttpsClientOptions client;
  std::string store_id;
  std::string agent_version;
  SeqSpace space;
  std::size_t batch_max_events = 1000;
  std::size_t batch_max_bytes = 1024 * 1024;  // of event bodies, before compression
  int64_t backfill_threshold = 100000;        // sync.backfill_threshold (pending events)
  int failover_after_ms = 10'000;  // https.failover_after: MQTT down this long -> HTTPS takes all
  int retry_min_ms = 1000;         // backoff bounds after a failed request (full jitter)
  int retry_max_ms = 60'000;
  /// Pending events now (the buffer's counters; cheap). Thread: the HTTPS thread.
  std::function<int64_t()> pending_count;
  /// Where the profile snapshot keeps its cursor across restarts (data.dir/profiles.cursor);
  /// empty: no snapshots.
  std::filesystem::path cursor_file;
  /// A disconnection of MQTT at least this long asks for the pages changed since the cursor
  /// once it is back (and, while MQTT stays down, they are asked for this often).
  int64_t profile_resync_after_ms = 3600'000;
  /// Where delivered events (by channel) and the request → 2xx latency are counted; null:
  /// nowhere.
  std::shared_ptr<EventMetrics> metrics;
};

/// A profile page turned into an R/profiles message (`{"upserts": […], "deletes": […],
/// "cursor": "…"}`) for the profile cache. Runs on the HTTPS thread; may write to disk.
using ProfilesHandler = std::function<Result<void>(const std::string& payload)>;

/// A snapshot for `omniedge status` and metrics. Times are Unix ms, 0 = never.
struct HttpsStatus {
  /// "idle" (MQTT carries everything), "backfill" (HTTPS takes the oldest backlog),
  /// "failover" (MQTT unreachable: HTTPS takes everything), "backoff" (the last request
  /// failed; retrying at next_attempt_ms), "unavailable" (libcurl missing), "stopped".
  std::string state = "stopped";
  std::string base_url;
  int64_t since_ms = 0;  // when `state` last changed
  /// The latest failure, saying what to check; kept after recovery (then last_error_resolved).
  std::string last_error;
  int64_t last_error_ms = 0;
  bool last_error_resolved = false;
  int64_t next_attempt_ms = 0;
  long last_status_code = 0;      // NOLINT(runtime/int): of the latest answer; 0 = none yet
  uint64_t requests = 0;          // batch POSTs made
  uint64_t batches = 0;           // batches delivered (2xx or 409)
  uint64_t batches_conflict = 0;  // of which 409: the centre had every event already
  uint64_t events = 0;            // events in delivered batches
  uint64_t bytes_sent = 0;        // request bodies (gzip)
  uint64_t recoveries = 0;        // batches delivered right after a failed request
  uint64_t batches_refused = 0;   // 4xx about the batch: quarantined
  uint64_t quarantined = 0;       // events moved to the quarantine after a 4xx
  int64_t floor_seq = 0;          // backfill: HTTPS takes seqs up to this, MQTT those above
  // Profile snapshot.
  uint64_t profile_pages = 0;
  uint64_t profiles_received = 0;
  int64_t profiles_last_ms = 0;   // when the last snapshot run ended
  bool profiles_pending = false;  // a snapshot is due (resync asked, first start, ...)
  std::string profiles_cursor;
};

/// Owns the HTTPS thread. At least once, like MQTT: an event leaves the buffer only after a
/// 2xx or 409 for a batch that carried it, or when it is quarantined. Answers (contract §6):
/// 2xx and 409 are delivered; 5xx, 408, 425, 429, timeouts and transport errors retry with
/// backoff (Retry-After honoured, capped); 401, 403, 404, 405, 407, 421 and 426 say this agent
/// or its URL is wrong (the same batch would be refused whatever it held): backoff and an
/// actionable error, nothing quarantined; any other 4xx is about the batch: it is moved to the
/// quarantine table (kept, counted, reported upstream with its seq ranges, listed by status,
/// sent again by `retry-quarantine`), and the next batches go on.
class HttpsUplink {
 public:
  /// `outbox`, `claims` and `rate` must outlive the uplink. Thread: any. Never blocks.
  HttpsUplink(Outbox& outbox, HttpsOptions options, std::shared_ptr<ClaimBook> claims,
              std::shared_ptr<RateLimit> rate, ProfilesHandler on_profiles = {});
  ~HttpsUplink();
  HttpsUplink(const HttpsUplink&) = delete;
  HttpsUplink& operator=(const HttpsUplink&) = delete;

  /// Starts the thread (loads libcurl there). Thread: the owner. Never blocks.
  void start();
  /// Stops the thread; a request in progress is abandoned (its claim returns to the pool, its
  /// events stay pending). Thread: the owner. Returns within ~1 s.
  void stop();
  /// Skips the current backoff. Thread: any. Never blocks.
  void flushNow();
  /// Asks for the whole profile snapshot again, from an empty cursor (the `resync-profiles`
  /// command). Kept across a restart until it completed. Thread: any. Never blocks.
  void requestProfileResync();
  /// The cursor an R/profiles message carried: the snapshot's next request continues from it
  /// (when no snapshot is under way). Thread: any. Never blocks.
  void noteProfileCursor(std::string cursor);
  /// Thread: any. Never blocks for long.
  HttpsStatus status() const;

 private:
  enum class Mode { kIdle, kBackfill, kFailover };

  void run(std::stop_token stop);
  Mode decide(int64_t now_ms);
  bool sendNext(Mode mode, std::stop_token stop);
  bool post(int64_t first, std::vector<PendingEvent>& events, std::stop_token stop);
  void onDelivered(int64_t last, std::size_t count, long status);  // NOLINT
  void onRefused(int64_t first, int64_t last, std::size_t count, const std::string& reason);
  void fail(const std::string& error, int64_t retry_after_s);
  void startRound();
  /// Over sync.backfill_threshold with events below a new floor that no round has taken yet.
  bool newBacklog();
  void dropFloor();
  void fetchProfiles(std::stop_token stop);
  void loadCursor();
  bool saveCursor(const std::string& cursor, bool complete);
  void trackMqtt(int64_t now_ms);
  void waitSignal(std::stop_token stop, std::chrono::milliseconds timeout);
  void setState(const char* state);
  void setError(const std::string& error);
  void setResolved();

  Outbox& outbox_;
  const HttpsOptions options_;
  const std::shared_ptr<ClaimBook> claims_;
  const std::shared_ptr<RateLimit> rate_;
  const ProfilesHandler on_profiles_;
  const std::string events_path_;
  const std::string profiles_path_;

  // HTTPS thread only.
  std::unique_ptr<HttpsClient> client_;
  int64_t cursor_ = 0;  // the last seq handled; reads continue after it
  uint64_t generation_ = 0;
  bool round_active_ = false;
  int64_t done_floor_ = 0;  // the floor of the latest round: a new one must go higher
  int64_t floor_ = 0;
  int attempt_ = 0;
  std::chrono::steady_clock::time_point backoff_until_;
  uint64_t request_no_ = 0;
  std::string profile_cursor_;
  bool profiles_complete_ = true;
  bool mqtt_was_up_ = false;
  int64_t mqtt_down_since_ms_ = 0;
  int64_t profiles_polled_ms_ = 0;
  std::mt19937_64 rng_{std::random_device{}()};

  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  bool flush_ = false;                      // guarded by mu_
  bool resync_requested_ = false;           // guarded by mu_: from an empty cursor
  bool profiles_due_ = false;               // guarded by mu_: from the saved cursor
  std::optional<std::string> mqtt_cursor_;  // guarded by mu_: from R/profiles, to be saved

  mutable std::mutex status_mu_;
  HttpsStatus status_;  // guarded by status_mu_

  std::jthread thread_;
};

}  // namespace omniedge::sync
