// The durable buffer: every accepted event lives here, in SQLite, until the centre has it.
//
// One writer thread owns the only writing connection: producers' appends and the sync engine's
// acknowledgements are queued to it and group-committed, many producers per transaction, and a
// producer is told "durable" only after its transaction committed. Readers (sync, status, tail)
// use their own connections; WAL lets them read while the writer writes.
#pragma once

#include <sqlite3.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/outbox.h"
#include "agent/api/result.h"

namespace omniedge::store {

struct BufferOptions {
  std::filesystem::path dir;      // the data dir; the file is dir/buffer.db
  bool synchronous_full = true;   // buffer.synchronous: full survives power cuts, normal crashes
  int64_t max_bytes = 1LL << 30;  // buffer.max_bytes: cap on the bytes the events occupy
  int64_t min_free_disk = 256LL << 20;    // buffer.min_free_disk: never grow into this
  int64_t retain_delivered_s = 0;         // keep delivered events this long (tail/export)
  std::size_t max_group_events = 20000;   // most events in one transaction
  std::size_t max_group_bytes = 2 << 20;  // and most bytes (bounds the WAL)
};

/// An event ready to store: validated, completed and serialised by Ingest.
struct StoredEvent {
  std::string id;
  std::string type;
  Priority priority = Priority::kNormal;
  int64_t received_at_ms = 0;
  std::string body;  // the envelope as JSON
};

struct AppendCounts {
  std::size_t stored = 0;
  std::size_t duplicates = 0;
};

/// What an eviction removed, for the agent.data_dropped report.
struct EvictionReport {
  int64_t events = 0;
  int64_t bytes = 0;
  int64_t oldest_received_ms = 0;
  int64_t newest_received_ms = 0;
};

/// A recently stored event, for `omniedge tail` while the daemon runs.
struct RecentEvent {
  int64_t seq = 0;
  std::string type;
  std::string body;
};

struct BufferStats {
  int64_t pending[3] = {0, 0, 0};  // by Priority
  int64_t pending_bytes = 0;
  int64_t oldest_pending_ms = 0;  // received_at of the oldest pending event, 0 when none
  int64_t last_seq = 0;
  int64_t used_bytes = 0;  // pages holding data
  int64_t file_bytes = 0;
  int64_t cap_bytes = 0;  // what the next append may grow to
  uint64_t appended = 0;  // since start
  uint64_t duplicates = 0;
  uint64_t acknowledged = 0;
  uint64_t quarantined = 0;        // events moved to the quarantine since start
  int64_t quarantine_events = 0;   // events in the quarantine table now
  uint64_t evicted = 0;
  uint64_t rejected_full = 0;
  uint64_t commits = 0;
};

/// What open() found.
struct OpenReport {
  bool unclean_shutdown = false;   // the previous run did not close the buffer
  bool integrity_checked = false;  // PRAGMA quick_check ran at open
  bool recovered = false;          // the file was corrupt: moved aside, a fresh one started
  std::string moved_to;            // where the corrupt file went
  std::string problem;             // what quick_check or SQLite said
  int64_t salvaged = 0;            // events copied from the corrupt file into the fresh one
};

class Buffer final : public Outbox {
 public:
  /// Opens (creating) dir/buffer.db, checks it (see OpenReport), and starts the writer thread.
  /// Fails with "io" when the directory or file cannot be used at all.
  static Result<std::unique_ptr<Buffer>> open(const BufferOptions& options);
  ~Buffer() override;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  const OpenReport& openReport() const { return open_report_; }

  /// Stores `events` all-or-nothing in one group commit. Thread: any. Blocks until durable.
  /// Fails "full" when there is no room even after evicting low-priority events (an event with
  /// Priority::kLow never pushes out more than older low-priority events; agent.* events may use
  /// a small reserve), "stopping", or "io".
  Result<AppendCounts> append(std::vector<StoredEvent> events);

  // Outbox
  Result<std::vector<PendingEvent>> readPending(int64_t after_seq, std::size_t max_events,
                                                std::size_t max_bytes) override;
  void acknowledge(int64_t first_seq, int64_t last_seq) override;
  void quarantine(int64_t first_seq, int64_t last_seq, std::string reason) override;
  int64_t waitForNewer(int64_t seq, int timeout_ms) override;

  /// Blocks until every acknowledgement queued so far is committed. Thread: any.
  void syncAcknowledgements();

  /// Moves every quarantined event back to pending (appended again: a new seq, in their old
  /// order), so the sync engine sends them again; returns how many. Thread: any; blocks until
  /// committed. Fails "full", "stopping" or "io".
  /// (A minimal version for the `retry-quarantine` command; the buffer's own replaces it.)
  Result<int64_t> retryQuarantine();

  /// Evictions since the last call (reset by the call). Thread: any.
  EvictionReport takeEvictions();
  /// Puts back a report taken by takeEvictions() that could not be sent on (the next take
  /// includes it again), so an eviction is never reported to nobody. Thread: any.
  void returnEvictions(const EvictionReport& report);

  /// The newest stored events with seq > after_seq (at most `limit`, oldest first), from an
  /// in-memory ring of the last kRecentEvents: delivered events leave the file at once, but
  /// a technician's `tail --follow` still sees them. Thread: any.
  std::vector<RecentEvent> recent(int64_t after_seq, std::size_t limit) const;
  static constexpr std::size_t kRecentEvents = 1000;

  /// Counters and queue depth. Thread: any; cheap (no scans).
  BufferStats stats() const;

  /// Stops the writer after it has committed what is queued; marks a clean shutdown.
  void close();

 private:
  explicit Buffer(BufferOptions options);
  struct Request;
  /// A range the centre has (delivered) or will never take (quarantine_reason set).
  struct AckOp {
    int64_t first_seq = 0;
    int64_t last_seq = 0;
    std::string quarantine_reason;  // "" = delivered
  };
  void writerLoop();
  /// One transaction; false when the acknowledgements in it could not be committed.
  bool commitGroup(std::vector<std::shared_ptr<Request>>& group, std::vector<AckOp>& acks);
  Result<void> prepare();
  Result<void> recover(const std::string& problem);
  int64_t salvage(const std::filesystem::path& old_file);
  int64_t usedBytes() const;
  int64_t capBytes();
  int64_t evictLow(int64_t bytes_needed, EvictionReport& report);
  void loadCounters();
  bool saveCounters();
  void refreshStatsLocked();

  BufferOptions options_;
  OpenReport open_report_;
  sqlite3* db_ = nullptr;      // writer thread only (after open)
  sqlite3* reader_ = nullptr;  // sync thread (readPending)
  std::mutex reader_mu_;
  struct Statements;
  std::unique_ptr<Statements> st_;

  mutable std::mutex mu_;
  std::condition_variable cv_;        // writer waits for work
  std::condition_variable newer_cv_;  // sync waits for new events
  std::condition_variable acked_cv_;
  std::deque<std::shared_ptr<Request>> queue_;          // guarded by mu_
  std::vector<AckOp> ack_queue_;                        // guarded by mu_
  uint64_t acks_enqueued_ = 0;                          // guarded by mu_
  uint64_t acks_committed_ = 0;                         // guarded by mu_
  bool stopping_ = false;                               // guarded by mu_
  bool writer_done_ = false;                            // guarded by mu_
  BufferStats stats_;                                   // guarded by mu_
  EvictionReport evictions_;                            // guarded by mu_
  std::deque<RecentEvent> recent_;                      // guarded by mu_
  int64_t page_size_ = 4096;
  int lock_fd_ = -1;
  // Writer thread only:
  int64_t free_disk_checked_ms_ = 0;
  int64_t cap_cache_ = 0;
  int64_t file_bytes_ = 0;
  int64_t purged_ms_ = 0;
  int64_t dedup_purged_ms_ = 0;
  std::thread writer_;
};

/// Opens dir/buffer.db read-only for the CLI (status, tail) when the daemon is down or busy.
/// Returns nullptr with an error when there is no buffer.
Result<std::shared_ptr<sqlite3>> openReadOnly(const std::filesystem::path& dir);

}  // namespace omniedge::store
