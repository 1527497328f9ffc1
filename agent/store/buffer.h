// The durable buffer: every accepted event lives here, in SQLite, until the centre has it.
//
// One writer thread owns the only writing connection: producers' appends and the sync engine's
// acknowledgements are queued to it and group-committed, many producers per transaction, and a
// producer is told "durable" only after its transaction committed. Readers (sync, status, tail)
// use their own connections; WAL lets them read while the writer writes.
#pragma once

#include <sqlite3.h>

#include <atomic>
#include <chrono>
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
#include <string_view>
#include <thread>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/outbox.h"
#include "agent/api/result.h"
#include "agent/store/checkpointer.h"

namespace omniedge::store {

struct BufferOptions {
  std::filesystem::path dir;      // the data dir; the file is dir/buffer.db
  bool synchronous_full = true;   // buffer.synchronous: full survives power cuts, normal crashes
  int64_t max_bytes = 1LL << 30;  // buffer.max_bytes: cap on the bytes the events occupy
  int64_t min_free_disk = 256LL << 20;    // buffer.min_free_disk: never grow into this
  int64_t retain_delivered_s = 0;         // keep delivered events this long (tail/export)
  std::size_t max_group_events = 20000;   // most events in one transaction
  std::size_t max_group_bytes = 2 << 20;  // and most bytes of bodies (bounds the WAL)
  // Most seqs one transaction acknowledges (a wider range is split over several): bounds what
  // deleting (and, with retain_delivered, copying) delivered events adds to the WAL.
  int64_t max_group_ack_seqs = 8192;
  std::size_t recent_max_bytes = 1 << 20;  // buffer.recent_max_bytes: bodies kept for `tail`
  // Bodies queued for the writer and not yet taken: append() waits while the queue holds more
  // (one request alone may exceed it), so producers can never pile up memory behind a slow disk.
  std::size_t max_queue_bytes = 64 << 20;
  // Group commit for small requests (flash wear: every commit writes whole WAL pages, ~12 KB,
  // whatever it holds). While several producers send small requests closer together than this,
  // the writer waits up to this long after the oldest queued one for as many requests as its
  // recent groups held (so producers that all wait for their answers are committed as soon as
  // all are in, and a lone producer does not wait), now and then for one more (a probe, so that
  // producers on a schedule are grouped as far as the window allows: buffer.cpp), or until
  // kWindowEnoughBytes are queued. An event's latency grows by at most this. 0: never wait.
  std::chrono::microseconds commit_window{2000};
  // Acknowledgements alone (no request queued) wait up to this long after the oldest of them to
  // share a commit: with the next requests while events keep arriving, else with the
  // acknowledgements behind them. A single event's acknowledgement in a commit of its own was
  // ~45% of its whole path's disk writes (docs/benchmarks.md, "Flash wear"). Never while
  // someone waits for them (syncAcknowledgements, close) or once they cover kAckBatchSeqs seqs
  // (a drain's acknowledgements are committed as they come). A crash before their commit only
  // sends those events again (the centre drops duplicates by id). 0: never wait.
  std::chrono::milliseconds ack_delay{200};
  // How long after the last event read back from an export (IdOrigin::kExport) the index of the
  // agent's own ids that imports use is kept (Buffer::keepMadeIndex).
  std::chrono::milliseconds made_index_keep{60000};
  // Bodies packed (LZ4 with a dictionary) where that pays (body_codec.h). false: stored as JSON
  // TEXT, as before version 2 (tests that count capacity in the JSON's bytes).
  bool pack_bodies = true;
  // Tests only: called after each durable step of a recovery ("salvage-created",
  // "salvage-written", "salvage-complete", "wal-moved", "original-moved", "salvage-in-place"),
  // so that a test can end the process there as a crash would.
  std::function<void(std::string_view step)> on_recovery_step;
};

/// Where an event's id came from, which decides how the buffer keeps ids unique.
enum class IdOrigin : uint8_t {
  kProducer,  // given by whoever sent the event: a second pending event with it is not stored
  kAgent,     // made by Ingest just now (UUIDv7): unique by construction, so it is stored
              // without an entry in the id index (that entry was most of a small commit's writes)
  kExport,    // read back from an export: compared with the agent's own ids too (omniedge import)
};

/// An event ready to store: validated, completed and serialised by Ingest.
struct StoredEvent {
  std::string id;
  IdOrigin id_origin = IdOrigin::kProducer;
  std::string type;
  Priority priority = Priority::kNormal;
  int64_t received_at_ms = 0;
  std::string body;  // the envelope as JSON
  // Set by Buffer::append: `body` packed (body_codec.h), when that is at least an eighth smaller
  // (it is then stored instead: body_codec.h); empty: `body` is stored as it is.
  std::string packed;
  // Set by Buffer::append: the events the row stored from this one holds. 1: this event alone;
  // n > 1: this event and the n - 1 after it, one row of several (`packed` holds them all,
  // body_codec.h's packRun); 0: in the row of an event before it (`packed` empty).
  uint32_t run = 1;
};

struct AppendCounts {
  std::size_t stored = 0;
  std::size_t duplicates = 0;
};

/// Inclusive seq ranges [first, last], ascending and disjoint once normalised.
using SeqRanges = std::vector<std::pair<int64_t, int64_t>>;

/// Sorts `ranges` and merges overlapping or adjacent ones. Thread: any.
void normaliseRanges(SeqRanges& ranges);

/// What an eviction removed, for the agent.data_dropped report. The seq ranges let the centre
/// tell an evicted event from a lost one (issue 14 point 7).
struct EvictionReport {
  int64_t events = 0;
  int64_t bytes = 0;
  int64_t oldest_received_ms = 0;
  int64_t newest_received_ms = 0;
  SeqRanges ranges;  // the seqs evicted (exactly: low-priority ones only)
  /// Seqs handed to no event: a transaction that rolled back after numbering its events (an I/O
  /// error, a full disk) burns its seqs, which are never given again. Reported once a later
  /// commit has made them final (a crash before that gives them again).
  SeqRanges skipped;
  bool empty() const { return events == 0 && skipped.empty(); }
};

/// What moved to the quarantine since the last report, for each reason.
struct QuarantineReport {
  std::string reason;
  int64_t events = 0;
  int64_t bytes = 0;
  SeqRanges ranges;  // the seqs of the events moved (exactly)
};

/// An event in the quarantine, for `omniedge status`.
struct QuarantinedEvent {
  int64_t seq = 0;
  std::string id;
  std::string type;
  int64_t quarantined_ms = 0;
  std::string reason;
};

/// A recently stored event, for `omniedge tail` while the daemon runs.
struct RecentEvent {
  int64_t seq = 0;
  std::string type;
  std::string body;
  // Still a row of the events table (not delivered, evicted or quarantined since): what
  // Buffer::readPending() may answer from memory.
  bool pending = true;
  int priority = 1;  // Priority, as stored
  // What the row counts in the buffer's bytes (the packed body, id, type): on the first event of
  // a row of several, 0 on the others.
  int64_t cost = 0;
  int32_t run_pos = 0;  // this event's place in its row (0: the row's first)
  int32_t run_n = 1;    // the events its row holds
};

struct BufferStats {
  int64_t pending[3] = {0, 0, 0};  // by Priority
  int64_t pending_bytes = 0;
  int64_t pending_bytes_by_priority[3] = {0, 0, 0};  // the same, by Priority
  int64_t oldest_pending_ms = 0;  // received_at of the oldest pending event, 0 when none
  int64_t last_seq = 0;
  int64_t used_bytes = 0;      // pages holding data
  int64_t file_bytes = 0;      // buffer.db itself (pages in use and free)
  int64_t wal_bytes = 0;       // buffer.db-wal now: the buffer takes file_bytes + wal_bytes on disk
  int64_t wal_peak_bytes = 0;  // the largest WAL seen since start
  int64_t cap_bytes = 0;       // what the next append may grow to
  uint64_t appended = 0;       // since start
  uint64_t duplicates = 0;
  uint64_t acknowledged = 0;
  uint64_t evicted = 0;
  uint64_t rejected_full = 0;  // requests refused with "full" since start
  int64_t last_full_ms = 0;    // when a request was last refused with "full", 0 = never
  // Since when producers are refused: the first "full" after the last accepted request (agent.*
  // reports, which may use a reserve, do not count as accepted); 0 when the last one got in.
  int64_t full_since_ms = 0;
  uint64_t commits = 0;
  uint64_t commit_windows = 0;  // times the writer waited for small requests to share a commit
  uint64_t io_errors = 0;       // transactions SQLite rolled back on an I/O error or a full disk
  // Since a sync of buffer.db failed behind a checkpoint, the WAL is never rewound in this run
  // (Buffer::keepWal): it grows until a restart, whose recovery copies it in again.
  bool wal_kept = false;
  std::string wal_kept_reason;
  std::size_t queued_requests = 0;  // appends waiting for the writer now
  std::size_t queued_bytes = 0;
  // The quarantine (events the centre refused; Outbox::quarantine): kept, counted, reported.
  uint64_t quarantined = 0;         // events moved to the quarantine since start
  uint64_t quarantine_retried = 0;  // events moved back to pending by retryQuarantine()
  int64_t quarantine_events = 0;    // events in the quarantine table now
  int64_t quarantine_bytes = 0;
  int64_t quarantine_oldest_ms = 0;    // when the oldest of them was quarantined, 0 = none
  std::string quarantine_last_reason;  // the reason of the latest one
  // The ring behind `omniedge tail`: the last Buffer::kRecentEvents events, at most
  // BufferOptions::recent_max_bytes of bodies.
  std::size_t recent_events = 0;
  std::size_t recent_bytes = 0;
  uint64_t recent_dropped = 0;  // bodies left out of the ring because of its byte bound
  // readPending() calls answered from the ring (the sync engine keeping up) and from the file.
  uint64_t reads_from_ring = 0;
  uint64_t reads_from_file = 0;
};

/// What Buffer::editEvents() does with one stored event (consent applied to buffered data,
/// erasure of a data subject).
struct EventEdit {
  enum class Action { kKeep, kDrop, kReplace };
  Action action = Action::kKeep;
  std::string body;  // kReplace: the new body (the envelope as JSON)
};
/// Decides for one stored event from its type and body. Called on the buffer's writer thread,
/// with no lock of the buffer held; must not call into the buffer. CPU only.
using EventEditor = std::function<EventEdit(const std::string& type, const std::string& body)>;

/// What editEvents() changed, per place an event body lives. Seqs of pending events dropped are
/// listed for the centre's gap check (they will never arrive).
struct EditReport {
  int64_t pending_dropped = 0;
  int64_t pending_replaced = 0;
  int64_t quarantine_dropped = 0;
  int64_t quarantine_replaced = 0;
  int64_t delivered_dropped = 0;  // kept delivered events (buffer.retain_delivered)
  int64_t delivered_replaced = 0;
  int64_t recent_dropped = 0;  // the in-memory ring behind `omniedge tail`
  int64_t recent_replaced = 0;
  SeqRanges dropped_seqs;  // pending events dropped
  bool scrubbed = false;   // free pages cleared and the WAL emptied (checkpoint TRUNCATE)
  int64_t changed() const {
    return pending_dropped + pending_replaced + quarantine_dropped + quarantine_replaced +
           delivered_dropped + delivered_replaced + recent_dropped + recent_replaced;
  }
};

/// What open() found.
struct OpenReport {
  bool unclean_shutdown = false;   // the previous run did not close the buffer
  bool integrity_checked = false;  // PRAGMA quick_check ran at open
  bool recovered = false;          // the file was corrupt: moved aside, a fresh one started
  bool resumed = false;            // ... by a recovery that an earlier start began
  std::string moved_to;            // where the corrupt file went
  std::string problem;             // what quick_check or SQLite said
  int64_t salvaged = 0;            // events copied from the corrupt file into the fresh one
  // buffer.db.corrupt-* files an interrupted recovery left behind unsalvaged, picked up now
  // (their readable events are pending again), and how many events they gave.
  std::vector<std::string> picked_up;
  int64_t picked_up_events = 0;
  // For the centre's gap check (issue 14 point 7). A recovered buffer starts a new epoch; the
  // corrupt file's epoch (previous_epoch, "" when unreadable) loses the seqs of the events
  // salvaged (they are pending again under new seqs: recovered_seqs) and of the stretches that
  // could not be read (unreadable_seqs). Kept in meta until reported, like the rest.
  std::string previous_epoch;
  SeqRanges recovered_seqs;
  SeqRanges unreadable_seqs;
  /// Seqs of the current epoch a pick-up gave to no pending event (a jump above the picked-up
  /// file's seqs, its quarantined events).
  SeqRanges skipped_seqs;
};

class Buffer final : public Outbox {
 public:
  /// Opens (creating) dir/buffer.db, checks it (see OpenReport), and starts the writer thread.
  /// Only real corruption (SQLITE_CORRUPT, SQLITE_NOTADB, a failed quick_check) moves the file
  /// aside (after its readable events, quarantine and POS dedup memory were salvaged into a
  /// complete, synced new file); anything else leaves every file where it is and fails:
  /// "permission" (a file or the dir this process cannot read and write: the message names it,
  /// its owner and mode, and the fix), "busy" (another omniedge owns the data dir), "io"
  /// (disk full, I/O error, ...: retry later). Thread: any; blocks for the checks (see
  /// docs/reliability.md).
  static Result<std::unique_ptr<Buffer>> open(const BufferOptions& options);
  ~Buffer() override;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  const OpenReport& openReport() const { return open_report_; }

  /// The buffer's epoch: a random id naming its seq space, made with the file and kept in its
  /// meta table; a recovered (corrupt) buffer starts a new one. Seqs are never reused within an
  /// epoch. Thread: any (fixed after open).
  const std::string& epoch() const { return epoch_; }
  /// The first seq the epoch ever gave (1 for a new file; higher for a buffer made before
  /// epochs existed or recovered from a corrupt one). Thread: any.
  int64_t epochStartSeq() const { return epoch_start_seq_; }

  /// Stores `events` all-or-nothing in one group commit. Thread: any. Blocks until durable
  /// (and, while more than max_queue_bytes wait for the writer, until there is room).
  /// Fails "full" when there is no room even after evicting low-priority events (an event with
  /// Priority::kLow never pushes out more than older low-priority events; agent.* events may use
  /// a small reserve), "stopping", or "io". "ok" means committed; an error means not committed
  /// (a retry is safe: ids already stored are counted as duplicates).
  Result<AppendCounts> append(std::vector<StoredEvent> events);

  // Outbox
  /// Answered from the ring of recent events when every pending event after `after_seq` is in
  /// it (the sync engine keeping up: no read of the file, nothing to unpack), else from the file
  /// (readPendingFromFile). The same events either way.
  Result<std::vector<PendingEvent>> readPending(int64_t after_seq, std::size_t max_events,
                                                std::size_t max_bytes) override;
  /// readPending() read from the file, always. Thread: any (one reader at a time).
  Result<std::vector<PendingEvent>> readPendingFromFile(int64_t after_seq, std::size_t max_events,
                                                        std::size_t max_bytes);
  void acknowledge(int64_t first_seq, int64_t last_seq) override;
  void quarantine(int64_t first_seq, int64_t last_seq, std::string reason) override;
  int64_t waitForNewer(int64_t seq, int timeout_ms) override;

  /// Blocks until every acknowledgement (and quarantine) queued so far is committed, or the
  /// writer has stopped. Thread: any. While the disk keeps failing this waits for it: use
  /// syncAcknowledgementsFor() where that matters.
  void syncAcknowledgements();
  /// The same, giving up after `timeout`; true when everything queued was committed.
  bool syncAcknowledgementsFor(std::chrono::milliseconds timeout);

  /// Moves every quarantined event back to pending, each with a NEW seq (in their old order),
  /// so the sync engine sends them again; returns how many. Ids already pending again, or
  /// high-priority ids delivered meanwhile, are dropped from the quarantine without a copy.
  /// Thread: any; blocks until the writer has committed it. Fails "full" when they do not fit
  /// (what was moved before stays moved), "stopping" or "io".
  Result<int64_t> retryQuarantine();

  /// Applies `editor` to every stored event whose body contains one of `needles` (a quick
  /// filter: the editor decides): pending events, the quarantine, kept delivered events and the
  /// in-memory ring of recent events. Drops and rewrites keep the byte accounting (counters)
  /// exact. The change is made with secure_delete on, and with `scrub` the file's free pages
  /// are then cleared (incremental vacuum, or VACUUM for a file without auto_vacuum) and the
  /// WAL checkpointed and truncated, so that no copy of the old bodies stays in buffer.db or
  /// buffer.db-wal (EditReport::scrubbed says whether that last step got through).
  /// Thread: any but the writer; blocks until the writer has committed it (a scan of the
  /// bodies: milliseconds to seconds for a large backlog; producers wait meanwhile).
  /// Fails "stopping" or "io" (what was committed before stays changed).
  Result<EditReport> editEvents(std::vector<std::string> needles, EventEditor editor, bool scrub);

  /// Frees the page caches of the buffer's SQLite connections (each keeps up to 2 MB of pages
  /// once a load has filled it; they refill from the OS page cache as needed), so that malloc
  /// can give the memory back: the daemon calls it once the buffer has been quiet for a minute.
  /// Thread: any but the writer; waits at most `timeout` for the writer to do its part (false
  /// when it did not in time: a long commit or a stalled disk; it is then done after it).
  bool releaseMemory(std::chrono::milliseconds timeout);

  /// The newest `limit` quarantined events (newest first), without their bodies. Thread: any;
  /// a short read on the reader connection. Fails "io".
  Result<std::vector<QuarantinedEvent>> quarantined(std::size_t limit);

  /// Evictions since the last call (reset by the call). Thread: any.
  EvictionReport takeEvictions();
  /// Puts back a report taken by takeEvictions() that could not be sent on (the next take
  /// includes it again), so an eviction is never reported to nobody. Thread: any.
  void returnEvictions(const EvictionReport& report);
  /// Quarantines committed since the last call, one report per reason (reset by the call);
  /// returnQuarantines() puts back what could not be reported. Thread: any.
  std::vector<QuarantineReport> takeQuarantines();
  void returnQuarantines(const std::vector<QuarantineReport>& reports);

  /// The newest stored events with seq > after_seq (at most `limit`, oldest first), from an
  /// in-memory ring of the last kRecentEvents (and at most recent_max_bytes of bodies):
  /// delivered events leave the file at once, but a technician's `tail --follow` still sees
  /// them. Thread: any.
  std::vector<RecentEvent> recent(int64_t after_seq, std::size_t limit) const;
  static constexpr std::size_t kRecentEvents = 1000;

  /// Counters and queue depth. Thread: any; cheap (no scans, no I/O).
  BufferStats stats() const;

  /// Stops the writer after it has committed what is queued; marks a clean shutdown. Returns
  /// within a few seconds even when the disk keeps failing: acknowledgements that cannot be
  /// committed by then are dropped (their events stay pending and are sent again later).
  /// Thread: any (not the writer); idempotent.
  void close();

 private:
  explicit Buffer(BufferOptions options);
  struct Request;
  struct Job;
  struct Counters;
  struct Attempt;
  /// A range the centre has (delivered) or will never take (quarantine_reason set).
  struct AckOp {
    int64_t first_seq = 0;
    int64_t last_seq = 0;
    std::string quarantine_reason;  // "" = delivered
    uint64_t number = 0;            // order of acknowledge()/quarantine() calls, from 1
    std::chrono::steady_clock::time_point queued_at{};
  };
  /// Whether the queued acknowledgements cover fewer than `n` seqs. Guarded by mu_.
  bool fewAcksQueued(int64_t n) const;
  void writerLoop();
  /// Commits a group: requests and acknowledgements in one transaction, retried once without
  /// the request that broke it; answers every producer. False when the acknowledgements in it
  /// could not be committed (they are to be retried).
  bool commitGroup(std::vector<std::shared_ptr<Request>>& group, std::vector<AckOp>& acks);
  Attempt runTransaction(std::vector<std::shared_ptr<Request>>& group,
                         const std::vector<std::size_t>& active, const std::vector<AckOp>& acks,
                         std::vector<std::optional<Result<AppendCounts>>>& results);
  void publishCommitted(Attempt& a);
  void restoreCommitted(int64_t burnt_up_to);
  void runRetryQuarantine(Job& job);
  void keepMadeIndex(const std::vector<std::shared_ptr<Request>>& group);
  /// Rows of several events: the one holding seqs `at` - 1 and `at` becomes two (cutRunAt); every
  /// one starting in [first, last] becomes a row per event (unrunRange); the rows of several of
  /// the whole buffer (unrunAll, in commits of their own). A row that does not unpack goes to
  /// the quarantine whole. In the writer's open transaction; false on an SQLite error.
  bool cutRunAt(int64_t at, Counters& work, Attempt& a);
  bool unrunRange(int64_t first, int64_t last, Counters& work, Attempt& a);
  struct RunRow;
  bool rewriteRun(const RunRow& row, int64_t cut, Counters& work, Attempt& a);
  void unrunAll();
  /// `rows` cut to a row per event in a commit of their own (the ring told); "io" when lost.
  Result<void> unrunRows(const std::vector<RunRow>& rows);
  /// Keeps the delivered rows of several events of [first, last] as their events (retention).
  bool keepDeliveredRuns(int64_t first, int64_t last, int64_t now);
  /// The ring learns how rows were cut (Attempt::recut); mu_ held.
  void applyRecutLocked(const Attempt& a);
  void runEdit(Job& job);
  Result<void> editTable(int table, Job& job, EditReport& report);
  bool scrubFiles();
  void maybeCheckpoint();
  void keepWal(const std::string& why);
  detail::Checkpointer::Outcome finishPass();
  Result<void> prepare();
  Result<void> recover(const std::string& problem);
  Result<void> finishInterruptedRecovery();
  Result<void> finishRecoveryFiles(int64_t ms);
  Result<void> pickUpCorruptFiles();
  Result<void> loadEpoch();
  void recoveryStep(std::string_view step);
  int64_t capBytes(int64_t used);
  bool evictLow(int64_t bytes_needed, Counters& work, EvictionReport& report);
  Result<Counters> loadCounters();
  bool saveCounters(const Counters& c);
  int64_t committedHighWater();
  void refreshStatsLocked();
  /// Marks the entries of recent_ within these seq ranges as no longer pending.
  void forgetFreshLocked(const SeqRanges& ranges);
  void setFreshFrom(int64_t seq);
  struct RangeSizes {
    int64_t events[3] = {0, 0, 0};
    int64_t bytes[3] = {0, 0, 0};
  };
  /// Adds up the pending events of [first, last] by priority from the ring; false when the ring
  /// does not hold every row of the range, or the range holds POS events.
  bool freshRangeSizes(int64_t first, int64_t last, RangeSizes& sizes);
  void requeueAcksLocked(std::vector<AckOp>& acks);
  void updateAckWatermarkLocked();
  void logFailure(const std::string& what);

  BufferOptions options_;
  OpenReport open_report_;
  sqlite3* db_ = nullptr;      // writer thread only (after open)
  sqlite3* reader_ = nullptr;  // sync thread (readPending)
  std::mutex reader_mu_;
  struct Statements;
  std::unique_ptr<Statements> st_;
  // Writer thread: whether events_made_id is there (kept while imports come), and when the
  // last event read back from an export came.
  bool made_index_ = false;
  std::chrono::steady_clock::time_point made_index_used_;

  mutable std::mutex mu_;
  std::condition_variable cv_;        // writer waits for work
  std::condition_variable room_cv_;   // producers wait for room in the queue
  std::condition_variable newer_cv_;  // sync waits for new events
  std::condition_variable acked_cv_;
  std::deque<std::shared_ptr<Request>> queue_;         // guarded by mu_
  std::size_t queued_bytes_ = 0;                       // guarded by mu_
  std::chrono::steady_clock::time_point last_append_;  // guarded by mu_
  int64_t append_gap_us_ = INT64_MAX / 2;  // guarded by mu_: moving average between requests
  std::size_t peak_group_ = 1;             // guarded by mu_: most requests in one group lately
  int groups_below_peak_ = 0;              // guarded by mu_: groups since one reached peak_group_
  int groups_since_probe_ = 0;             // guarded by mu_: windows since the last probe
  int probe_every_ = 64;                   // guarded by mu_: kProbeEveryGroups, doubled per miss
  std::deque<std::shared_ptr<Job>> jobs_;  // guarded by mu_
  std::deque<AckOp> ack_queue_;            // guarded by mu_
  uint64_t acks_enqueued_ = 0;             // guarded by mu_
  uint64_t acks_committed_ = 0;            // guarded by mu_
  int ack_waiters_ = 0;  // guarded by mu_: threads in syncAcknowledgements*() (no ack_delay then)
  bool acks_abandoned_ = false;                           // guarded by mu_: close() gave up on some
  bool stopping_ = false;                                 // guarded by mu_
  std::chrono::steady_clock::time_point stop_requested_;  // guarded by mu_
  bool writer_done_ = false;                              // guarded by mu_
  BufferStats stats_;                                     // guarded by mu_
  EvictionReport evictions_;                              // guarded by mu_
  std::vector<QuarantineReport> quarantines_;             // guarded by mu_
  std::deque<RecentEvent> recent_;                        // guarded by mu_
  // Guarded by mu_: every row of the events table with a seq at or above this one is in
  // recent_, marked pending, and every entry marked pending is such a row, so readPending()
  // may answer from recent_ for any after_seq >= fresh_from_ - 1. Raised when the ring leaves
  // events out or drops them; INT64_MAX while a job changes rows outside the group commit.
  int64_t fresh_from_ = INT64_MAX;
  std::size_t recent_bytes_ = 0;  // guarded by mu_
  int64_t page_size_ = 4096;
  int lock_fd_ = -1;
  std::string epoch_;  // fixed once open() returns
  int64_t epoch_start_seq_ = 1;
  // Writer thread only:
  int64_t free_disk_checked_ms_ = 0;
  int64_t cap_cache_ = 0;
  int64_t file_bytes_ = 0;
  int64_t wal_bytes_ = 0;
  int64_t purged_ms_ = 0;
  int64_t dedup_purged_ms_ = 0;
  int wal_frames_ = 0;     // frames in the WAL after the last commit (sqlite3_wal_hook)
  bool wal_kept_ = false;  // keepWal(): never checkpointed again in this process
  std::chrono::steady_clock::time_point restart_retry_at_;
  std::chrono::steady_clock::time_point failure_logged_at_;
  uint64_t failures_unlogged_ = 0;
  SeqRanges burnt_;               // seqs of lost transactions, reported after the next commit
  int64_t burnt_tracked_to_ = 0;  // the highest seq already in burnt_ (or reported)
  std::unique_ptr<detail::Checkpointer> checkpointer_;  // made by prepare()
  std::thread writer_;
};

/// Opens dir/buffer.db read-only for the CLI (status, tail) when the daemon is down or busy.
/// Returns nullptr with an error when there is no buffer.
Result<std::shared_ptr<sqlite3>> openReadOnly(const std::filesystem::path& dir);

}  // namespace omniedge::store
