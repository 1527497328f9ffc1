// The running buffer: the writer thread, group commit, acknowledgements, the readers' side,
// stats. Opening, checking and recovering the files is in buffer_open.cpp.
#include "agent/store/buffer.h"

#include <spdlog/spdlog.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <optional>

#include "agent/store/body_codec.h"
#include "agent/store/buffer_reader.h"
#include "agent/store/buffer_sqlite.h"

namespace omniedge::store {
namespace {

namespace fs = std::filesystem;
using detail::highWater;
using detail::nowMs;
using detail::openConnection;
using detail::queryInt;
using detail::sqliteError;

using detail::kCounterLastSeq;
using detail::kCounterQuarantine;
using detail::kRowOverhead;
// The writer checkpoints the WAL once a commit leaves this much in it, and then waits (at most
// kCheckpointWaitMs) for readers to leave it, so that the next commit starts the WAL over: a
// reader that reads all the time (the sync thread during a drain) otherwise keeps SQLite from
// ever rewinding it, and it grows by everything written (418 MB over a 1M-event drain).
constexpr int64_t kWalCheckpointBytes = 4LL << 20;
constexpr int kCheckpointWaitMs = 250;
// What the checkpointer may leave uncopied for the writer's RESTART (see maybeCheckpoint).
constexpr int64_t kCheckpointTailBytes = 256LL << 10;
// What the WAL may take beside the file, kept out of the cap: twice the checkpoint threshold
// (where the writer waits for the checkpointer), one group of appends (max_group_bytes, ~1.3x
// in pages) and one group of acknowledgements on top.
// The measured peak is in docs/benchmarks.md.
constexpr int64_t kWalReserve = 16LL << 20;
// How long delivered POS ids are remembered to refuse a second copy of the same transaction.
constexpr int64_t kDedupWindowMs = 35LL * 24 * 3600 * 1000;
// After close() is asked, acknowledgements that keep failing are retried this long, then left
// (their events stay pending and are sent again): SIGTERM must end (systemd: 20 s, issue: 5 s).
constexpr auto kStopAckDeadline = std::chrono::seconds(2);
// The commit window (BufferOptions::commit_window) ends early once this many bytes of bodies
// are queued: the WAL pages of a commit are then mostly payload.
constexpr std::size_t kWindowEnoughBytes = 32 << 10;
// ... and waits for at most this many requests (more producers than this share commits anyway).
constexpr std::size_t kPeakGroupMax = 64;
// Groups in a row below the peak before it is lowered by one (a producer that went away).
constexpr int kPeakDecayGroups = 64;
// Groups between two probes of the commit window (one request more than the peak), doubled
// after each probe that found none, back to the first after one that did.
constexpr int kProbeEveryGroups = 64;
constexpr int kProbeEveryGroupsMax = 4096;
// The counters table may lag the rows by at most this many seqs (loadCounters() counts them in
// at start: a few milliseconds).
constexpr int64_t kCountersLagSeqs = 4096;
// Sleep between rounds while the disk refuses acknowledgements: do not spin on it.
constexpr auto kFailedAckPause = std::chrono::milliseconds(200);
// Acknowledgements that cover this many seqs are committed at once (BufferOptions::ack_delay):
// their commit is mostly deleted rows already.
constexpr int64_t kAckBatchSeqs = 512;

// Adds `seq` to `ranges`, extending the last range when it follows it (seqs mostly come in
// order); normaliseRanges() sorts out the rest.
void addSeq(SeqRanges& ranges, int64_t seq) {
  if (!ranges.empty() && ranges.back().second + 1 == seq) {
    ranges.back().second = seq;
  } else {
    ranges.emplace_back(seq, seq);
  }
}

void appendRanges(SeqRanges& to, const SeqRanges& from) {
  to.insert(to.end(), from.begin(), from.end());
  normaliseRanges(to);
}

void mergeQuarantines(std::vector<QuarantineReport>& to,
                      const std::vector<QuarantineReport>& from) {
  for (const auto& q : from) {
    auto it = std::find_if(to.begin(), to.end(),
                           [&](const QuarantineReport& t) { return t.reason == q.reason; });
    if (it == to.end()) {
      to.push_back(q);
      normaliseRanges(to.back().ranges);
      continue;
    }
    it->events += q.events;
    it->bytes += q.bytes;
    appendRanges(it->ranges, q.ranges);
  }
}

// What an event costs in the accounting: its strings as stored (the packed body when there is
// one: SQL counts length(CAST(body AS BLOB)) of what the row holds) plus kRowOverhead. A row of
// several events is counted once, on its first event.
int64_t rowCost(const StoredEvent& e) {
  if (e.run == 0) {
    return 0;  // in the row of an event before it, which counts the row
  }
  const std::size_t body = e.packed.empty() ? e.body.size() : e.packed.size();
  return static_cast<int64_t>(body + e.id.size() + e.type.size()) + kRowOverhead;
}

// A prepared statement, reset after every use.
class Stmt {
 public:
  Stmt() = default;
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Result<void> prepare(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st_, nullptr) != SQLITE_OK) {
      return makeError("io", sqliteError(db, std::string("prepare '") + sql + "'"));
    }
    return {};
  }
  sqlite3_stmt* get() { return st_; }
  void bind(int i, int64_t v) { sqlite3_bind_int64(st_, i, v); }
  void bind(int i, const std::string& v) {
    sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  int step() { return sqlite3_step(st_); }
  void reset() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }
  int64_t col(int i) { return sqlite3_column_int64(st_, i); }
  std::string text(int i) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st_, i));
    return p != nullptr ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st_, i)))
                        : std::string();
  }

 private:
  sqlite3_stmt* st_ = nullptr;
};

// Runs a statement that returns no rows; false on error.
bool run(Stmt& s) {
  const int rc = s.step();
  s.reset();
  return rc == SQLITE_DONE || rc == SQLITE_ROW;
}

// The writer's form of kInsertEventSql (buffer_open.cpp, which salvage uses): the same rule in
// two statements, a probe of delivered_ids and a plain INSERT ... VALUES. The one statement's
// INSERT ... SELECT ... WHERE NOT EXISTS form cost the writer ~1.5 us more per event (676-byte
// rows, 400 a transaction, CPU time, median of six: 8.5 against 6.8 us for the insert alone, and
// 7.4 us with the probe; docs/benchmarks.md).
constexpr const char* kWasDeliveredSql = "SELECT 1 FROM delivered_ids WHERE id = ?";
// Without a conflict target: the one uniqueness rule on ids is events_given_id (kSchema), which
// leaves out the rows whose id the agent made (`made` = 1).
constexpr const char* kInsertValuesSql =
    "INSERT INTO events(seq, id, type, prio, received_ms, body, made) "
    "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING";
// Rows whose ids Ingest made, kInsertRows at a time in one statement: a row costs the writer
// ~0.35 us less than alone (1.12-1.20 against 0.78-0.86 us to insert a 438-byte row, 160 a
// transaction, 8 or 16 a statement; docs/benchmarks.md). No conflict clause: such a row is in
// no unique index (events_given_id leaves it out) and its seq is new.
constexpr std::size_t kInsertRows = 8;
constexpr int kInsertColumns = 6;  // parameters a row: `made` is the literal 1
const std::string kInsertRowsSql = [] {
  std::string sql = "INSERT INTO events(seq, id, type, prio, received_ms, body, made) VALUES";
  for (std::size_t r = 0; r < kInsertRows; ++r) {
    const int at = static_cast<int>(r) * kInsertColumns;
    sql += r == 0 ? "(" : ",(";
    for (int c = 1; c <= kInsertColumns; ++c) {
      sql += "?" + std::to_string(at + c) + ",";
    }
    sql += "1)";
  }
  return sql;
}();
// Whether an id read back from an export is one the agent made and still holds: a lookup in
// events_made_id while imports keep that index (Buffer::keepMadeIndex), else a scan.
constexpr const char* kWasMadeSql = "SELECT 1 FROM events WHERE id = ?1 AND made = 1";
constexpr const char* kMadeIndexSql =
    "CREATE INDEX IF NOT EXISTS events_made_id ON events(id) WHERE made = 1";
constexpr const char* kDropMadeIndexSql = "DROP INDEX IF EXISTS events_made_id";

// What insertEvent() is given: one event's columns.
struct EventRow {
  int64_t seq = 0;
  const std::string& id;
  const std::string& type;
  int64_t prio = 0;
  int64_t received_ms = 0;
  const std::string& body;    // the JSON, stored as TEXT when `packed` is empty
  const std::string& packed;  // else this, as a BLOB (body_codec.h)
  IdOrigin origin = IdOrigin::kProducer;
};

// Whether `probe` (its one parameter the id) finds a row: SQLITE_ROW, SQLITE_DONE or an error.
int probeId(Stmt& probe, const std::string& id) {
  probe.bind(1, id);
  const int rc = probe.step();
  probe.reset();
  return rc;
}

// Stores one event unless its id is pending already or a high-priority event with it was
// delivered within the dedup window. An id Ingest just made can be neither: it is stored
// without a lookup. Returns SQLITE_DONE, with `stored` saying whether it was, or the code of the
// step that failed.
int insertEvent(sqlite3* db, Stmt& was_delivered, Stmt& was_made, Stmt& insert, const EventRow& row,
                bool& stored) {
  stored = false;
  const bool made = row.origin == IdOrigin::kAgent;
  for (Stmt* probe :
       {made ? nullptr : &was_delivered, row.origin == IdOrigin::kExport ? &was_made : nullptr}) {
    if (probe == nullptr) {
      continue;
    }
    const int rc = probeId(*probe, row.id);
    if (rc == SQLITE_ROW) {
      return SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) {
      return rc;
    }
  }
  insert.bind(1, row.seq);
  insert.bind(2, row.id);
  insert.bind(3, row.type);
  insert.bind(4, row.prio);
  insert.bind(5, row.received_ms);
  bindBody(insert.get(), 6, row.body, row.packed);
  insert.bind(7, static_cast<int64_t>(row.origin == IdOrigin::kAgent ? 1 : 0));
  const int rc = insert.step();
  insert.reset();
  stored = rc == SQLITE_DONE && sqlite3_changes(db) == 1;
  return rc;
}

// Whether events[k, k + kInsertRows) are there, all have ids Ingest made and each is a row alone.
bool allMade(const std::vector<StoredEvent>& events, std::size_t k) {
  if (k + kInsertRows > events.size()) {
    return false;
  }
  return std::all_of(
      events.begin() + static_cast<std::ptrdiff_t>(k),
      events.begin() + static_cast<std::ptrdiff_t>(k + kInsertRows),
      [](const StoredEvent& e) { return e.id_origin == IdOrigin::kAgent && e.run == 1; });
}

// Stores events[k, k + kInsertRows), ids Ingest made, at seqs from `seq` with `rows`
// (kInsertRowsSql); returns the step's code.
int insertRows(Stmt& rows, int64_t seq, const std::vector<StoredEvent>& events, std::size_t k) {
  for (int r = 0; r < static_cast<int>(kInsertRows); ++r) {
    const StoredEvent& e = events[k + static_cast<std::size_t>(r)];
    const int at = r * kInsertColumns;
    rows.bind(at + 1, seq + r);
    rows.bind(at + 2, e.id);
    rows.bind(at + 3, e.type);
    rows.bind(at + 4, static_cast<int64_t>(e.priority));
    rows.bind(at + 5, e.received_at_ms);
    bindBody(rows.get(), at + 6, e.body, e.packed);
  }
  const int rc = rows.step();
  rows.reset();
  return rc;
}

// Called by SQLite after every commit on the writer's connection, instead of its automatic
// checkpoint: only notes the WAL's length (a checkpoint here would make COMMIT report its
// failure although the transaction is committed). The writer checkpoints after answering.
int walHook(void* frames, sqlite3* /*db*/, const char* /*name*/, int n) {
  *static_cast<int*>(frames) = n;
  return SQLITE_OK;
}

}  // namespace

void normaliseRanges(SeqRanges& ranges) {
  if (ranges.size() < 2) {
    return;
  }
  std::sort(ranges.begin(), ranges.end());
  SeqRanges out;
  out.reserve(ranges.size());
  for (const auto& r : ranges) {
    if (!out.empty() && r.first <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, r.second);
    } else {
      out.push_back(r);
    }
  }
  ranges.swap(out);
}

struct Buffer::Request {
  std::vector<StoredEvent> events;
  std::size_t bytes = 0;
  std::chrono::steady_clock::time_point queued_at;
  bool essential = false;  // only agent.* reports: they may use a small reserve above the cap
  bool exported = false;   // holds events read back from an export (Buffer::keepMadeIndex)
  std::promise<Result<AppendCounts>> done;
};

struct Buffer::Job {
  std::promise<Result<int64_t>> done;  // retryQuarantine()
  // editEvents(): set when the job is an edit.
  EventEditor editor;
  std::vector<std::string> needles;
  bool scrub = false;
  std::promise<Result<EditReport>> edited;
  // releaseMemory(): set when the job only frees the writer connection's page cache.
  bool release_memory = false;
  std::promise<void> released;
};

// The counters table as committed (or as one transaction is changing it).
struct Buffer::Counters {
  int64_t events[3] = {0, 0, 0};
  int64_t bytes[3] = {0, 0, 0};
  int64_t last_seq = 0;  // the highest seq ever given, as saved
  int64_t quarantine_events = 0;
  int64_t quarantine_bytes = 0;
  bool operator==(const Counters&) const = default;
  int64_t used() const { return bytes[0] + bytes[1] + bytes[2]; }
};

// What one transaction did, or why it was lost. Writer thread only.
struct Buffer::Attempt {
  enum class Culprit { kNone, kAcks, kRequest };
  bool committed = false;
  bool acks_applied = false;
  Culprit culprit = Culprit::kNone;
  std::size_t culprit_index = 0;
  Error error;
  bool disk_full = false;
  int64_t seq_end = 0;  // the next seq after those this attempt handed out
  uint64_t stored = 0;
  uint64_t duplicates = 0;
  uint64_t acked = 0;
  uint64_t quarantined = 0;
  uint64_t rejected_full = 0;
  bool accepted_plain = false;  // a request other than an agent.* report was stored
  std::string quarantine_reason;
  std::vector<QuarantineReport> quarantines;  // what moved to the quarantine, by reason
  EvictionReport evicted;
  SeqRanges acked_ranges;  // the ranges acknowledged or quarantined (rows deleted), when applied
  // The events stored, in the requests of the group; publishCommitted() takes their bodies.
  struct Inserted {
    int64_t seq = 0;
    StoredEvent* event = nullptr;
    int32_t run_pos = 0;  // its place in its row, and the events the row holds
    int32_t run_n = 1;
  };
  std::vector<Inserted> inserted;
  // Rows of several events cut in this transaction: the rows made, [first, first + n), and what
  // each counts (the ring's entries learn it when it commits).
  struct Recut {
    int64_t first = 0;
    int64_t n = 1;
    int64_t cost = 0;
  };
  std::vector<Recut> recut;
  int64_t max_seq = 0;
};

// A row of several events as read for cutting it (Buffer::rewriteRun).
struct Buffer::RunRow {
  int64_t seq = 0;
  int64_t n = 1;
  std::string id;
  std::string type;
  int64_t prio = 1;
  int64_t received_ms = 0;
  std::string body;  // the block, as stored
  int64_t cost() const {
    return static_cast<int64_t>(body.size() + id.size() + type.size()) + kRowOverhead;
  }
};

struct Buffer::Statements {
  Stmt begin, commit, rollback, savepoint, release, rollback_to;
  Stmt savepoint_acks, release_acks, rollback_to_acks;
  Stmt was_delivered, was_made, insert, insert_rows, range_sizes, range_pos_ids, delete_range,
      copy_delivered, purge_delivered;
  Stmt select_low, delete_low, save_counter, oldest;
  Stmt page_count, freelist_count, incremental_vacuum;
  Stmt read_pending;  // on the reader connection
  Stmt remember_delivered, forget_delivered, copy_quarantine;
  Stmt quarantine_chunk, delete_quarantine, quarantine_oldest, quarantine_latest;
  Stmt forget_recovery_report;
  // Rows of several events: storing one, finding the row before a seq or those of a range, taking
  // one out, keeping a delivered one's events, quarantining one that does not unpack.
  Stmt insert_run, row_before, runs_in, delete_row, runs_delivered, insert_delivered,
      quarantine_row;
  bool recovery_unreported = false;  // cleared in the first commit after open
  Counters committed;                // the committed state (the counters table may lag, below)
  int64_t saved_last_seq = 0;        // the counters table covers the rows up to this seq
  bool counters_saved = false;       // the table has its seq row: it may lag from now on
  int64_t next_seq = 1;              // writer thread: the next event's seq
};

Buffer::Buffer(BufferOptions options) : options_(std::move(options)) {}

Result<void> Buffer::prepare() {
  st_ = std::make_unique<Statements>();
  auto& s = *st_;
  sqlite3* db = db_;
  // An index an import left (its agent stopped within made_index_keep of it: keepMadeIndex).
  (void)sqlite3_exec(db, kDropMadeIndexSql, nullptr, nullptr, nullptr);
  for (auto [stmt, sql] : std::initializer_list<std::pair<Stmt*, const char*>>{
           {&s.begin, "BEGIN IMMEDIATE"},
           {&s.commit, "COMMIT"},
           {&s.rollback, "ROLLBACK"},
           {&s.savepoint, "SAVEPOINT request"},
           {&s.release, "RELEASE request"},
           {&s.rollback_to, "ROLLBACK TO request"},
           {&s.savepoint_acks, "SAVEPOINT acks"},
           {&s.release_acks, "RELEASE acks"},
           {&s.rollback_to_acks, "ROLLBACK TO acks"},
           {&s.was_delivered, kWasDeliveredSql},
           {&s.was_made, kWasMadeSql},
           {&s.insert, kInsertValuesSql},
           {&s.insert_rows, kInsertRowsSql.c_str()},
           {&s.remember_delivered,
            "INSERT OR IGNORE INTO delivered_ids(id, delivered_ms) VALUES(?, ?)"},
           {&s.forget_delivered, "DELETE FROM delivered_ids WHERE delivered_ms < ?"},
           // What an acknowledged range takes out of the counters, read before its plain DELETE:
           // a DELETE ... RETURNING stepped row by row cost more (1000-row ranges of 676-byte
           // rows: 4.7-7.9 against 3.4-3.6 us a row; end to end, the writer's CPU per event
           // went from 12.5 to 11.3 us). One row of per-priority aggregates rather than GROUP BY
           // prio: grouping sorted the range through a sorter holding every row's id, type and
           // body (16% of the writer's time while delivering, docs/benchmarks.md).
           // Events are sum(n) (a row of several holds n), bytes are counted by rows (40:
           // kRowOverhead, asserted below).
           {&s.range_sizes,
            "SELECT sum(n) FILTER (WHERE prio = 0), sum(" OMNIEDGE_ROW_STRINGS_SQL
            " + 40) FILTER (WHERE prio = 0), sum(n) FILTER (WHERE prio = 1), "
            "sum(" OMNIEDGE_ROW_STRINGS_SQL " + 40) FILTER (WHERE prio = 1), "
            "sum(n) FILTER (WHERE prio = 2), sum(" OMNIEDGE_ROW_STRINGS_SQL
            " + 40) FILTER (WHERE prio = 2), sum(n) FROM events WHERE seq BETWEEN ? AND ?"},
           {&s.range_pos_ids, "SELECT id FROM events WHERE seq BETWEEN ? AND ? AND prio = 0"},
           {&s.delete_range, "DELETE FROM events WHERE seq BETWEEN ? AND ?"},
           {&s.copy_delivered,
            "INSERT OR IGNORE INTO delivered(seq, id, type, received_ms, delivered_ms, body) "
            "SELECT seq, id, type, received_ms, ?, body FROM events WHERE seq BETWEEN ? AND ? "
            "AND n = 1"},
           {&s.runs_delivered,
            "SELECT seq, n, id, type, prio, received_ms, body FROM events "
            "WHERE seq BETWEEN ? AND ? AND n > 1"},
           {&s.insert_delivered,
            "INSERT OR IGNORE INTO delivered(seq, id, type, received_ms, delivered_ms, body) "
            "VALUES(?, ?, ?, ?, ?, ?)"},
           {&s.insert_run,
            "INSERT INTO events(seq, id, type, prio, received_ms, body, made, n) "
            "VALUES(?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)"},
           {&s.row_before,
            "SELECT seq, n, id, type, prio, received_ms, body FROM events WHERE seq < ? "
            "ORDER BY seq DESC LIMIT 1"},
           {&s.runs_in,
            "SELECT seq, n, id, type, prio, received_ms, body FROM events "
            "WHERE seq BETWEEN ? AND ? AND n > 1 ORDER BY seq LIMIT 64"},
           {&s.delete_row, "DELETE FROM events WHERE seq = ?"},
           {&s.quarantine_row,
            "INSERT OR IGNORE INTO quarantine(seq, id, type, prio, received_ms, quarantined_ms, "
            "reason, body) SELECT seq, id, type, prio, received_ms, ?, ?, body FROM events "
            "WHERE seq = ?"},
           {&s.purge_delivered, "DELETE FROM delivered WHERE delivered_ms < ?"},
           {&s.copy_quarantine,
            "INSERT OR IGNORE INTO quarantine(seq, id, type, prio, received_ms, quarantined_ms, "
            "reason, body) SELECT seq, id, type, prio, received_ms, ?, ?, body FROM events "
            "WHERE seq BETWEEN ? AND ? RETURNING seq, " OMNIEDGE_ROW_STRINGS_SQL},
           {&s.quarantine_chunk,
            "SELECT seq, id, type, prio, received_ms, body FROM quarantine ORDER BY seq LIMIT ?"},
           {&s.delete_quarantine,
            "DELETE FROM quarantine WHERE seq <= ? "
            "RETURNING " OMNIEDGE_ROW_STRINGS_SQL},
           {&s.quarantine_oldest,
            "SELECT quarantined_ms FROM quarantine ORDER BY quarantined_ms LIMIT 1"},
           {&s.quarantine_latest,
            "SELECT reason FROM quarantine ORDER BY quarantined_ms DESC, seq DESC LIMIT 1"},
           {&s.select_low, "SELECT seq, received_ms, " OMNIEDGE_ROW_STRINGS_SQL " FROM events "
                           "WHERE prio = 2 ORDER BY seq LIMIT 256"},
           {&s.delete_low, "DELETE FROM events WHERE prio = 2 AND seq <= ?"},
           {&s.save_counter,
            "INSERT INTO counters(prio, events, bytes) VALUES(?,?,?) "
            "ON CONFLICT(prio) DO UPDATE SET events = excluded.events, bytes = excluded.bytes"},
           {&s.oldest, "SELECT received_ms FROM events ORDER BY seq LIMIT 1"},
           {&s.forget_recovery_report, "DELETE FROM meta WHERE key = 'recovery.unreported'"},
           {&s.page_count, "PRAGMA page_count"},
           {&s.freelist_count, "PRAGMA freelist_count"},
           {&s.incremental_vacuum, "PRAGMA incremental_vacuum(2048)"},
       }) {
    if (auto r = stmt->prepare(db, sql); !r) {
      return r;
    }
  }
  page_size_ = queryInt(db, "PRAGMA page_size").value_or(4096);
  auto counters = loadCounters();
  if (!counters) {
    return counters.error();
  }
  s.committed = *counters;
  s.recovery_unreported = open_report_.recovered;

  auto reader = openConnection(options_.dir, options_.synchronous_full);
  if (!reader) {
    return reader.error();
  }
  reader_ = *reader;
  auto checkpointing = openConnection(options_.dir, options_.synchronous_full);
  if (!checkpointing) {
    return checkpointing.error();
  }
  checkpointer_ =
      std::make_unique<detail::Checkpointer>(*checkpointing, page_size_ + 24, kCheckpointTailBytes);
  static_assert(kRowOverhead == 40);  // range_sizes spells it out
  // A row of several events holding after_seq + 1 starts at most 31 seqs before it.
  static_assert(kMaxRunEvents == 32);
  if (auto r = s.read_pending.prepare(
          reader_,
          "SELECT seq, body, id, n FROM events WHERE seq > ?1 - 31 ORDER BY seq LIMIT ?2 + 31");
      !r) {
    return r;
  }
  // Seqs are never reused: the highest ever given is kept in counters (row 3), written in the
  // same transaction as the rows (cheaper than AUTOINCREMENT's extra table page per commit).
  const auto high = highWater(db);
  if (!high) {
    return makeError("io", sqliteError(db, "reading the highest seq"));
  }
  s.next_seq = std::max(*high, s.committed.last_seq) + 1;
  // The writer checkpoints itself (maybeCheckpoint), instead of SQLite's automatic checkpoint.
  sqlite3_wal_hook(db_, walHook, &wal_frames_);
  std::lock_guard lock(mu_);
  stats_.last_seq = s.next_seq - 1;
  fresh_from_ = s.next_seq;  // the ring is empty: no row at or above next_seq yet
  if (s.quarantine_oldest.step() == SQLITE_ROW) {
    stats_.quarantine_oldest_ms = s.quarantine_oldest.col(0);
  }
  s.quarantine_oldest.reset();
  if (s.quarantine_latest.step() == SQLITE_ROW) {
    stats_.quarantine_last_reason = s.quarantine_latest.text(0);
  }
  s.quarantine_latest.reset();
  std::error_code ec;
  const auto wal = fs::file_size(options_.dir / "buffer.db-wal", ec);
  wal_bytes_ = ec ? 0 : static_cast<int64_t>(wal);
  capBytes(s.committed.used());
  refreshStatsLocked();
  return {};
}

Result<Buffer::Counters> Buffer::loadCounters() {
  auto r = readBufferCounts(db_);
  if (!r) {
    return r.error();
  }
  Counters c;
  for (int p = 0; p < 3; ++p) {
    c.events[p] = r->events[p];
    c.bytes[p] = r->bytes[p];
  }
  c.last_seq = r->last_seq;
  c.quarantine_events = r->quarantine_events;
  c.quarantine_bytes = r->quarantine_bytes;
  st_->saved_last_seq = r->saved_last_seq;
  st_->counters_saved = r->saved;
  return c;
}

bool Buffer::saveCounters(const Counters& c) {
  auto& s = *st_;
  for (int p = 0; p < 5; ++p) {
    s.save_counter.bind(1, p);
    if (p < 3) {
      s.save_counter.bind(2, c.events[p]);
      s.save_counter.bind(3, c.bytes[p]);
    } else if (p == kCounterLastSeq) {
      s.save_counter.bind(2, c.last_seq);
      s.save_counter.bind(3, int64_t{0});
    } else {
      s.save_counter.bind(2, c.quarantine_events);
      s.save_counter.bind(3, c.quarantine_bytes);
    }
    if (!run(s.save_counter)) {
      return false;
    }
  }
  st_->saved_last_seq = c.last_seq;  // if the transaction is lost, restoreCommitted() re-reads
  st_->counters_saved = true;
  return true;
}

int64_t Buffer::capBytes(int64_t used) {
  // The cap is the smaller of buffer.max_bytes and what the disk can still take without
  // eating into buffer.min_free_disk or the WAL's room. The file is also hard-capped
  // (max_page_count) just below the free space, so SQLite itself can never wedge on a full disk.
  const int64_t now = nowMs();
  if (now - free_disk_checked_ms_ >= 1000 || cap_cache_ == 0) {
    free_disk_checked_ms_ = now;
    struct statvfs vfs {};
    int64_t free_bytes = INT64_MAX / 4;
    if (statvfs(options_.dir.c_str(), &vfs) == 0) {
      free_bytes = static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
    }
    auto& s = *st_;
    int64_t pages = 0;
    int64_t free_pages = 0;
    if (s.page_count.step() == SQLITE_ROW) {
      pages = s.page_count.col(0);
    }
    s.page_count.reset();
    if (s.freelist_count.step() == SQLITE_ROW) {
      free_pages = s.freelist_count.col(0);
    }
    s.freelist_count.reset();
    const int64_t file_bytes = pages * page_size_;
    // The WAL lives beside the file and is bounded (maybeCheckpoint): keep room for it to reach
    // its bound again; what it holds now is already out of free_bytes.
    std::error_code ec;
    const auto wal = fs::file_size(options_.dir / "buffer.db-wal", ec);
    wal_bytes_ = ec ? 0 : static_cast<int64_t>(wal);
    const int64_t wal_room = std::max<int64_t>(0, kWalReserve - wal_bytes_);
    const int64_t growth = std::max<int64_t>(0, free_bytes - options_.min_free_disk - wal_room);
    const int64_t allowed_file = file_bytes + growth;
    const int64_t max_pages = std::max<int64_t>(pages + 16, allowed_file / page_size_);
    sqlite3_stmt* st = nullptr;
    const std::string sql = "PRAGMA max_page_count=" + std::to_string(max_pages);
    if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr) == SQLITE_OK) {
      (void)sqlite3_step(st);
    }
    sqlite3_finalize(st);
    // Room left on disk for rows: free pages in the file plus growth, at ~80% fill.
    const int64_t room = (free_pages * page_size_ + growth) * 4 / 5;
    file_bytes_ = file_bytes;
    cap_cache_ = std::max<int64_t>(1, std::min(options_.max_bytes, used + room));
  }
  return cap_cache_;
}

bool Buffer::evictLow(int64_t bytes_needed, Counters& work, EvictionReport& report) {
  auto& s = *st_;
  int64_t freed = 0;
  while (freed < bytes_needed) {
    int64_t last_seq = -1;
    int64_t n = 0;
    int64_t bytes = 0;
    int64_t first_ms = 0;
    int64_t last_ms = 0;
    int rc = 0;
    SeqRanges seqs;
    while (freed + bytes < bytes_needed && (rc = s.select_low.step()) == SQLITE_ROW) {
      last_seq = s.select_low.col(0);
      addSeq(seqs, last_seq);
      last_ms = s.select_low.col(1);
      if (n == 0) {
        first_ms = last_ms;
      }
      bytes += s.select_low.col(2) + kRowOverhead;
      ++n;
    }
    s.select_low.reset();
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
      return false;
    }
    if (n == 0) {
      break;
    }
    s.delete_low.bind(1, last_seq);
    if (!run(s.delete_low)) {
      return false;
    }
    freed += bytes;
    work.events[2] -= n;
    work.bytes[2] -= bytes;
    if (report.events == 0) {
      report.oldest_received_ms = first_ms;
    }
    report.newest_received_ms = last_ms;
    report.events += n;
    report.bytes += bytes;
    report.ranges.insert(report.ranges.end(), seqs.begin(), seqs.end());
  }
  return true;
}

// ---- producers and the sync engine -----------------------------------------------------------

namespace {

// Whether `e` may share a row with the events beside it: an id Ingest made (no lookup ever
// looks for it: keepMadeIndex cuts such rows before an import's does), normal priority (low
// ones are evicted row by row, POS ones' ids remembered one by one).
bool runnable(const StoredEvent& e) {
  return e.id_origin == IdOrigin::kAgent && e.priority == Priority::kNormal;
}

// `e` alone in its row, packed when that pays (body_codec.h).
void packAlone(StoredEvent& e) {
  e.run = 1;
  e.packed = packBody(e.body, e.id);
}

void packEvents(std::vector<StoredEvent>& events) {
  // Runs of events that may share a row, of one type and receipt time (a row keeps one of
  // each), up to kMaxRunEvents and kMaxRunBytes: one LZ4 block each, one row each.
  std::vector<std::string_view> ids;
  std::vector<std::string_view> jsons;
  for (std::size_t k = 0; k < events.size();) {
    std::size_t end = k + 1;
    if (runnable(events[k])) {
      std::size_t bytes = events[k].id.size() + events[k].body.size() + 10;
      while (end < events.size() && end - k < kMaxRunEvents && runnable(events[end]) &&
             events[end].type == events[k].type &&
             events[end].received_at_ms == events[k].received_at_ms &&
             bytes + events[end].id.size() + events[end].body.size() + 10 <= kMaxRunBytes) {
        bytes += events[end].id.size() + events[end].body.size() + 10;
        ++end;
      }
    }
    if (end - k >= 2) {
      ids.clear();
      jsons.clear();
      for (std::size_t j = k; j < end; ++j) {
        ids.emplace_back(events[j].id);
        jsons.emplace_back(events[j].body);
      }
      if (std::string run = packRun(ids, jsons); !run.empty()) {
        events[k].run = static_cast<uint32_t>(end - k);
        events[k].packed = std::move(run);
        for (std::size_t j = k + 1; j < end; ++j) {
          events[j].run = 0;
          events[j].packed.clear();
        }
        k = end;
        continue;
      }
    }
    for (; k < end; ++k) {
      packAlone(events[k]);
    }
  }
}

}  // namespace

Result<AppendCounts> Buffer::append(std::vector<StoredEvent> events) {
  if (events.empty()) {
    return AppendCounts{};
  }
  auto req = std::make_shared<Request>();
  req->events = std::move(events);
  req->essential = true;
  // Packed here, on the producer's thread, not by the writer (the one thread every event goes
  // through). Bodies from retryQuarantine() and salvage keep the form they were stored in.
  if (options_.pack_bodies) {
    packEvents(req->events);
  }
  for (auto& e : req->events) {
    req->bytes += e.body.size() + e.packed.size();
    req->essential = req->essential && e.type.rfind("agent.", 0) == 0;
    req->exported = req->exported || e.id_origin == IdOrigin::kExport;
  }
  auto fut = req->done.get_future();
  {
    std::unique_lock lock(mu_);
    // The queue's memory is bounded: wait while it is full (one request alone always fits).
    room_cv_.wait(lock, [&] {
      return stopping_ || queued_bytes_ == 0 ||
             queued_bytes_ + req->bytes <= options_.max_queue_bytes;
    });
    if (stopping_) {
      return makeError("stopping", "the agent is shutting down; retry later");
    }
    // How close together requests arrive (a moving average over ~8), for the commit window.
    req->queued_at = std::chrono::steady_clock::now();
    const int64_t gap = std::min<int64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(req->queued_at - last_append_)
            .count(),
        1000000);
    append_gap_us_ = append_gap_us_ >= 1000000 ? gap : (append_gap_us_ * 7 + gap) / 8;
    last_append_ = req->queued_at;
    queue_.push_back(req);
    queued_bytes_ += req->bytes;
  }
  cv_.notify_one();
  return fut.get();
}

void Buffer::acknowledge(int64_t first_seq, int64_t last_seq) {
  {
    std::lock_guard lock(mu_);
    ack_queue_.push_back(
        AckOp{first_seq, last_seq, {}, ++acks_enqueued_, std::chrono::steady_clock::now()});
  }
  cv_.notify_one();
}

void Buffer::quarantine(int64_t first_seq, int64_t last_seq, std::string reason) {
  if (reason.empty()) {
    reason = "refused by the centre";
  }
  {
    std::lock_guard lock(mu_);
    ack_queue_.push_back(AckOp{first_seq, last_seq, std::move(reason), ++acks_enqueued_,
                               std::chrono::steady_clock::now()});
  }
  cv_.notify_one();
}

void Buffer::syncAcknowledgements() {
  std::unique_lock lock(mu_);
  const uint64_t target = acks_enqueued_;
  ++ack_waiters_;
  cv_.notify_one();  // the writer commits them now instead of after ack_delay
  acked_cv_.wait(lock, [&] { return acks_committed_ >= target || writer_done_; });
  --ack_waiters_;
}

bool Buffer::syncAcknowledgementsFor(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  const uint64_t target = acks_enqueued_;
  ++ack_waiters_;
  cv_.notify_one();
  acked_cv_.wait_for(lock, timeout, [&] { return acks_committed_ >= target || writer_done_; });
  --ack_waiters_;
  return acks_committed_ >= target;
}

bool Buffer::fewAcksQueued(int64_t n) const {
  int64_t seqs = 0;
  for (const AckOp& op : ack_queue_) {
    seqs += std::max<int64_t>(0, op.last_seq - op.first_seq + 1);
    if (seqs >= n) {
      return false;
    }
  }
  return true;
}

Result<int64_t> Buffer::retryQuarantine() {
  auto job = std::make_shared<Job>();
  auto fut = job->done.get_future();
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return makeError("stopping", "the agent is shutting down; retry later");
    }
    jobs_.push_back(job);
  }
  cv_.notify_one();
  return fut.get();
}

Result<EditReport> Buffer::editEvents(std::vector<std::string> needles, EventEditor editor,
                                      bool scrub) {
  auto job = std::make_shared<Job>();
  job->needles = std::move(needles);
  job->editor = std::move(editor);
  job->scrub = scrub;
  if (!job->editor) {
    return EditReport{};
  }
  auto fut = job->edited.get_future();
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return makeError("stopping", "the agent is shutting down; retry later");
    }
    jobs_.push_back(job);
  }
  cv_.notify_one();
  return fut.get();
}

bool Buffer::releaseMemory(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(reader_mu_);
    if (reader_ != nullptr) {
      sqlite3_db_release_memory(reader_);
    }
  }
  auto job = std::make_shared<Job>();
  job->release_memory = true;
  auto fut = job->released.get_future();
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return false;
    }
    jobs_.push_back(job);
  }
  cv_.notify_one();
  return fut.wait_for(timeout) == std::future_status::ready;
}

int64_t Buffer::waitForNewer(int64_t seq, int timeout_ms) {
  std::unique_lock lock(mu_);
  newer_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                     [&] { return stats_.last_seq > seq || stopping_; });
  return stats_.last_seq;
}

namespace {

// A read that stopped inside a row of several events (its count or bytes reached) ends at the
// last whole row instead, when it holds one: the rest of that row comes first in the next read.
// A batch that ends where a row ends is acknowledged without cutting the row in two (an unpack,
// two packs and a row rewritten per batch that stopped at its count, as every batch of a
// backlog's drain does). End to end under the kiosk load, where batches average ~400-470 events
// and rarely stop at their count, no difference showed (8 alternated rounds: 207.6k against
// 205.6k events/s on average).
void endOnRowEnd(std::vector<PendingEvent>& out, std::size_t whole, bool cut_short) {
  if (cut_short && whole > 0 && whole < out.size()) {
    out.resize(whole);
  }
}

}  // namespace

Result<std::vector<PendingEvent>> Buffer::readPending(int64_t after_seq, std::size_t max_events,
                                                      std::size_t max_bytes) {
  {
    // The sync engine keeping up reads what the writer committed a moment ago: from the ring,
    // which holds those bodies as JSON, instead of reading the pages back and unpacking them.
    std::lock_guard lock(mu_);
    if (after_seq >= fresh_from_ - 1) {
      auto it = std::upper_bound(recent_.begin(), recent_.end(), after_seq,
                                 [](int64_t seq, const RecentEvent& e) { return seq < e.seq; });
      std::vector<PendingEvent> out;
      std::size_t bytes = 0;
      std::size_t whole = 0;  // events up to the end of the last whole row taken
      bool cut_short = false;
      for (; it != recent_.end(); ++it) {
        if (!it->pending) {
          continue;
        }
        if (out.size() >= max_events || (!out.empty() && bytes + it->body.size() > max_bytes)) {
          cut_short = true;
          break;
        }
        bytes += it->body.size();
        out.push_back(PendingEvent{it->seq, it->body});
        if (it->run_pos + 1 >= it->run_n) {
          whole = out.size();
        }
      }
      endOnRowEnd(out, whole, cut_short);
      ++stats_.reads_from_ring;
      return out;
    }
    ++stats_.reads_from_file;
  }
  return readPendingFromFile(after_seq, max_events, max_bytes);
}

Result<std::vector<PendingEvent>> Buffer::readPendingFromFile(int64_t after_seq,
                                                              std::size_t max_events,
                                                              std::size_t max_bytes) {
  // One short read transaction per call (the statement is reset before returning): a read
  // transaction held open would keep the WAL from being rewound (see maybeCheckpoint).
  std::lock_guard lock(reader_mu_);
  auto& s = st_->read_pending;
  s.bind(1, after_seq);
  s.bind(2, static_cast<int64_t>(max_events));
  std::vector<PendingEvent> out;
  std::size_t bytes = 0;
  int rc = SQLITE_DONE;
  bool full = false;
  std::size_t whole = 0;  // events up to the end of the last whole row taken
  while (!full && out.size() < max_events && (rc = s.step()) == SQLITE_ROW) {
    whole = out.size();
    if (const int64_t n = s.col(3); n > 1) {
      // A row of several events: those after after_seq, in order.
      const int64_t seq = s.col(0);
      if (seq + n - 1 <= after_seq) {
        continue;
      }
      const auto* p = static_cast<const char*>(sqlite3_column_blob(s.get(), 1));
      auto events =
          unpackRun(std::string_view(p != nullptr ? p : "",
                                     static_cast<std::size_t>(sqlite3_column_bytes(s.get(), 1))),
                    n);
      if (!events) {
        spdlog::error("buffer: events seq {} to {} cannot be read back: {}", seq, seq + n - 1,
                      events.error().message);
        quarantine(seq, seq + n - 1, "stored body unreadable: " + events.error().message);
        continue;
      }
      for (int64_t k = std::max<int64_t>(0, after_seq + 1 - seq); k < n; ++k) {
        auto& json = (*events)[static_cast<std::size_t>(k)].json;
        if (out.size() >= max_events || (!out.empty() && bytes + json.size() > max_bytes)) {
          full = true;
          break;
        }
        bytes += json.size();
        out.push_back(PendingEvent{seq + k, std::move(json)});
      }
      continue;
    }
    if (s.col(0) <= after_seq) {
      continue;  // a row alone before after_seq, read in case a row of several began there
    }
    auto body = bodyColumn(s.get(), 1, 2);
    if (!body) {
      // A packed body that does not unpack (the file was damaged under SQLite): it cannot be
      // sent as it is, and it must not stop the events behind it. It goes to the quarantine,
      // bytes and all, with the reason; the centre hears of it from the quarantine report.
      const int64_t seq = s.col(0);
      spdlog::error("buffer: event seq {} cannot be read back: {}", seq, body.error().message);
      quarantine(seq, seq, "stored body unreadable: " + body.error().message);
      continue;
    }
    if (!out.empty() && bytes + body->size() > max_bytes) {
      break;
    }
    bytes += body->size();
    out.push_back(PendingEvent{s.col(0), std::move(*body)});
  }
  const bool failed = rc != SQLITE_ROW && rc != SQLITE_DONE;
  std::string err = failed ? sqlite3_errmsg(reader_) : "";
  s.reset();
  if (failed) {
    return makeError("io", "reading pending events: " + err);
  }
  endOnRowEnd(out, whole, full);
  return out;
}

// ---- the writer ------------------------------------------------------------------------------

void Buffer::requeueAcksLocked(std::vector<AckOp>& acks) {
  // Back to the front, in order; overlapping or adjacent delivered ranges are merged, so that
  // acknowledgements that keep failing (and the sync engine's resends) cannot pile up.
  for (auto it = acks.rbegin(); it != acks.rend(); ++it) {
    ack_queue_.push_front(std::move(*it));
  }
  std::deque<AckOp> merged;
  for (auto& op : ack_queue_) {
    if (!merged.empty() && op.quarantine_reason.empty() &&
        merged.back().quarantine_reason.empty() && op.first_seq <= merged.back().last_seq + 1 &&
        op.last_seq >= merged.back().first_seq - 1) {
      auto& m = merged.back();
      m.first_seq = std::min(m.first_seq, op.first_seq);
      m.last_seq = std::max(m.last_seq, op.last_seq);
      m.number = std::min(m.number, op.number);
    } else {
      merged.push_back(std::move(op));
    }
  }
  ack_queue_.swap(merged);
}

void Buffer::updateAckWatermarkLocked() {
  if (acks_abandoned_) {
    return;
  }
  // Every acknowledgement numbered below the oldest still queued is committed (or dropped).
  uint64_t lowest = acks_enqueued_ + 1;
  for (const auto& op : ack_queue_) {
    lowest = std::min(lowest, op.number);
  }
  acks_committed_ = std::max(acks_committed_, lowest - 1);
}

// While the disk keeps failing the writer retries every 200 ms: one line per failure would
// flood the journal. The first is logged, then one line every 10 s with how many were left out.
void Buffer::logFailure(const std::string& what) {
  const auto now = std::chrono::steady_clock::now();
  if (failures_unlogged_ > 0 && now - failure_logged_at_ < std::chrono::seconds(10)) {
    ++failures_unlogged_;
    return;
  }
  if (failures_unlogged_ > 1) {
    spdlog::error(
        "buffer: {} (and {} more failures in the last {} s)", what, failures_unlogged_ - 1,
        std::chrono::duration_cast<std::chrono::seconds>(now - failure_logged_at_).count());
  } else {
    spdlog::error("buffer: {}", what);
  }
  failure_logged_at_ = now;
  failures_unlogged_ = 1;
}

void Buffer::writerLoop() {
  bool last_acks_failed = false;
  for (;;) {
    std::vector<std::shared_ptr<Request>> group;
    std::vector<AckOp> acks;
    std::shared_ptr<Job> job;
    {
      std::unique_lock lock(mu_);
      if (last_acks_failed) {
        // The disk refuses what frees it: pause (new requests are served at once), and after
        // close() was asked, give up on acknowledgements after kStopAckDeadline.
        cv_.wait_for(lock, kFailedAckPause, [&] { return !queue_.empty() || !jobs_.empty(); });
        if (stopping_ && !ack_queue_.empty() &&
            std::chrono::steady_clock::now() - stop_requested_ >= kStopAckDeadline) {
          spdlog::error(
              "buffer: stopping with {} acknowledgement(s) that could not be committed; those "
              "events stay pending and are sent again after the restart",
              ack_queue_.size());
          ack_queue_.clear();
          acks_abandoned_ = true;  // syncAcknowledgementsFor() must not report them done
          acked_cv_.notify_all();
        }
      }
      cv_.wait(lock, [&] {
        return stopping_ || !queue_.empty() || !ack_queue_.empty() || !jobs_.empty();
      });
      if (queue_.empty() && ack_queue_.empty() && jobs_.empty()) {
        break;  // stopping, nothing left
      }
      // Acknowledgements alone wait to share a commit (BufferOptions::ack_delay): with the next
      // requests while events keep arriving, else with the acknowledgements behind them.
      if (queue_.empty() && jobs_.empty() && !stopping_ && !last_acks_failed && ack_waiters_ == 0 &&
          options_.ack_delay.count() > 0 && fewAcksQueued(kAckBatchSeqs)) {
        cv_.wait_until(lock, ack_queue_.front().queued_at + options_.ack_delay, [&] {
          return stopping_ || !queue_.empty() || !jobs_.empty() || ack_waiters_ > 0 ||
                 !fewAcksQueued(kAckBatchSeqs);
        });
      }
      // The commit window: small requests arriving close together share one commit, as many
      // as the recent groups held (the peak; a lone producer's groups hold one, so it does not
      // wait). Every probe_every_ groups the writer waits for one request more than the peak (a
      // probe): a group never holds more than it waits for when the disk is quick, so producers
      // on a schedule (kiosks sending as events come) kept whatever grouping they started with,
      // 1.5 to 3 events per commit from one run to the next at 1k/s. A probe that finds nobody
      // (producers that each wait for their answer: a lone one, or all of them in the group)
      // costs one window, and the next comes twice as many groups later (at most 4,096).
      const auto window = options_.commit_window;
      if (!queue_.empty() && window.count() > 0 && append_gap_us_ < window.count() &&
          queued_bytes_ < kWindowEnoughBytes) {
        const bool probe = peak_group_ < kPeakGroupMax && ++groups_since_probe_ >= probe_every_;
        const std::size_t target = probe ? peak_group_ + 1 : peak_group_;
        if (queue_.size() < target) {
          cv_.wait_until(lock, queue_.front()->queued_at + window, [&] {
            return stopping_ || queue_.size() >= target || queued_bytes_ >= kWindowEnoughBytes;
          });
          ++stats_.commit_windows;
        }
        if (probe) {
          groups_since_probe_ = 0;
          probe_every_ = queue_.size() > peak_group_
                             ? kProbeEveryGroups
                             : std::min(probe_every_ * 2, kProbeEveryGroupsMax);
        }
      }
      // The peak follows the producers: up at once, down by one after kPeakDecayGroups groups
      // that stayed below it.
      if (queue_.size() >= peak_group_) {
        peak_group_ = std::min(queue_.size(), kPeakGroupMax);
        groups_below_peak_ = 0;
      } else if (!queue_.empty() && ++groups_below_peak_ >= kPeakDecayGroups) {
        peak_group_ = std::max<std::size_t>(1, peak_group_ - 1);
        groups_below_peak_ = 0;
      }
      std::size_t n = 0;
      std::size_t bytes = 0;
      while (!queue_.empty()) {
        const auto& next = queue_.front();
        if (!group.empty() && (n + next->events.size() > options_.max_group_events ||
                               bytes + next->bytes > options_.max_group_bytes)) {
          break;
        }
        n += next->events.size();
        bytes += next->bytes;
        queued_bytes_ -= next->bytes;
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      // Acknowledgements by width: a wide range is split, the rest stays at the front.
      int64_t budget = std::max<int64_t>(1, options_.max_group_ack_seqs);
      while (!ack_queue_.empty() && budget > 0) {
        AckOp& op = ack_queue_.front();
        if (op.last_seq < op.first_seq) {
          ack_queue_.pop_front();
          continue;
        }
        const int64_t width = op.last_seq - op.first_seq + 1;
        if (width <= budget) {
          budget -= width;
          acks.push_back(std::move(op));
          ack_queue_.pop_front();
        } else {
          AckOp part = op;
          part.last_seq = op.first_seq + budget - 1;
          op.first_seq = part.last_seq + 1;
          acks.push_back(std::move(part));
          budget = 0;
        }
      }
      if (!jobs_.empty()) {
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      stats_.queued_requests = queue_.size();
      stats_.queued_bytes = queued_bytes_;
    }
    room_cv_.notify_all();
    bool acks_done = true;
    keepMadeIndex(group);
    if (!group.empty() || !acks.empty()) {
      acks_done = commitGroup(group, acks);
    }
    group.clear();
    if (job && job->release_memory) {
      sqlite3_db_release_memory(db_);
      job->released.set_value();
    } else if (job) {
      // An edit drops and rewrites rows, the quarantine's retry gives rows new seqs, outside the
      // group commit that keeps the ring in step: readPending() reads the file meanwhile, and
      // the ring again for what comes after.
      setFreshFrom(INT64_MAX);
      if (job->editor) {
        runEdit(*job);
      } else {
        runRetryQuarantine(*job);
      }
      setFreshFrom(st_->next_seq);
    }
    {
      std::lock_guard lock(mu_);
      if (!acks_done) {
        requeueAcksLocked(acks);
      }
      updateAckWatermarkLocked();
    }
    last_acks_failed = !acks_done;
    acked_cv_.notify_all();
    newer_cv_.notify_all();
    maybeCheckpoint();
  }
  // A clean stop leaves the counters table exact, for whatever reads it as it is (an older
  // omniedge after a downgrade, sqlite3 in a technician's hands).
  auto& s = *st_;
  if (s.committed.last_seq > s.saved_last_seq) {
    const bool saved = run(s.begin) && saveCounters(s.committed) && run(s.commit);
    if (!saved && sqlite3_get_autocommit(db_) == 0) {
      (void)run(s.rollback);  // the next start counts the rows in, as after a crash
    }
  }
  std::lock_guard lock(mu_);
  writer_done_ = true;
  acked_cv_.notify_all();
}

// Events read back from an export (IdOrigin::kExport) are compared with the ids the agent made,
// which events_given_id leaves out: while imports come, events_made_id serves those lookups
// (made over the pending rows by the first, in a commit of its own); made_index_keep after the
// last it is dropped, and the agent's own events go back to costing no index entry. Without it
// (it could not be made) each lookup reads the pending rows: slower, never wrong.
void Buffer::keepMadeIndex(const std::vector<std::shared_ptr<Request>>& group) {
  const auto now = std::chrono::steady_clock::now();
  const bool exported =
      std::any_of(group.begin(), group.end(), [](const auto& r) { return r->exported; });
  if (exported) {
    made_index_used_ = now;
    if (!made_index_) {
      // Ids inside rows of several events are in no index: those rows become a row per event
      // first, and until the index goes every event gets a row of its own (runTransaction).
      unrunAll();
      made_index_ = sqlite3_exec(db_, kMadeIndexSql, nullptr, nullptr, nullptr) == SQLITE_OK;
      if (!made_index_) {
        logFailure(sqliteError(db_, "indexing the agent's own ids for an import"));
      }
    }
  } else if (made_index_ && now - made_index_used_ >= options_.made_index_keep) {
    made_index_ = sqlite3_exec(db_, kDropMadeIndexSql, nullptr, nullptr, nullptr) != SQLITE_OK;
  }
}

// One group: at most two transactions for the producers. SQLite may roll back the WHOLE
// transaction on an error inside a statement (any SQLITE_IOERR; SQLITE_FULL without a statement
// journal; a cache spill that fails) and return to autocommit: then nothing of the group was
// committed, the requests before the failing one included. The first attempt's failing request
// (if one is to blame) gets the error, and the others, not at fault, are tried once more in a
// fresh transaction; whatever fails again gets the error. The in-memory state is restored from
// what is really committed after each lost attempt, and the seqs it handed out are never given
// again (a later acknowledge(first, last) can only ever cover rows of its own batch).
bool Buffer::commitGroup(std::vector<std::shared_ptr<Request>>& group, std::vector<AckOp>& acks) {
  std::vector<std::optional<Result<AppendCounts>>> results(group.size());
  std::vector<std::size_t> active(group.size());
  for (std::size_t i = 0; i < group.size(); ++i) {
    active[i] = i;
  }
  std::vector<AckOp> no_acks;
  bool with_acks = !acks.empty();
  bool acks_done = acks.empty();
  bool disk_full = false;
  for (int attempt = 0; attempt < 2; ++attempt) {
    Attempt a = runTransaction(group, active, with_acks ? acks : no_acks, results);
    if (a.committed) {
      acks_done = acks_done || (with_acks && a.acks_applied);
      publishCommitted(a);
      active.clear();
      break;
    }
    restoreCommitted(a.seq_end);
    for (std::size_t i : active) {
      results[i].reset();  // nothing of the attempt was committed: no answer from it stands
    }
    disk_full = disk_full || a.disk_full;
    logFailure(
        fmt::format("transaction rolled back ({}), attempt {} of 2", a.error.message, attempt + 1));
    {
      std::lock_guard lock(mu_);
      ++stats_.io_errors;
    }
    const bool last = attempt == 1 || active.empty();
    if (a.culprit == Attempt::Culprit::kRequest) {
      const std::size_t i = a.culprit_index;
      results[i] = a.error;
      active.erase(std::remove(active.begin(), active.end(), i), active.end());
    } else if (a.culprit == Attempt::Culprit::kAcks) {
      with_acks = false;  // retried by the writer loop, alone
    } else if (a.disk_full) {
      break;  // a full disk at commit: the same again would fail the same way
    }
    if (last || (active.empty() && !with_acks)) {
      break;
    }
  }
  for (std::size_t i : active) {
    if (!results[i]) {
      results[i] = disk_full ? makeError("full", "the disk is full; retry later")
                             : makeError("io", "the buffer could not commit (an I/O error); retry");
    }
  }
  // Every producer gets its answer: "ok" only from a committed transaction.
  uint64_t full = 0;
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (!results[i]->has_value() && results[i]->error().code == "full") {
      ++full;
    }
  }
  {
    std::lock_guard lock(mu_);
    if (full > 0) {
      const int64_t now = nowMs();
      stats_.rejected_full += full;
      stats_.last_full_ms = now;
      if (stats_.full_since_ms == 0) {
        stats_.full_since_ms = now;
      }
    }
    // The requests queued while this group was committed come from other producers (the
    // group's own are not answered yet): that many posted at once. More than the peak, and
    // the next probe of the commit window comes soon, however many probes found nobody before
    // (a lone producer's quiet hour must not leave a busy one ungrouped for 4,096 commits).
    if (group.size() + queue_.size() > peak_group_) {
      probe_every_ = kProbeEveryGroups;
    }
  }
  for (std::size_t i = 0; i < group.size(); ++i) {
    group[i]->done.set_value(std::move(*results[i]));
  }
  if (!acks_done && disk_full) {
    // Fold the WAL back into the file and shrink it, then try the acknowledgements alone:
    // deleting delivered events is what makes room again.
    (void)finishPass();  // one checkpoint at a time
    if (!wal_kept_) {
      sqlite3_busy_timeout(db_, kCheckpointWaitMs);
      (void)sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
      sqlite3_busy_timeout(db_, 5000);
    }
    cap_cache_ = 0;
    std::vector<std::shared_ptr<Request>> none;
    std::vector<std::optional<Result<AppendCounts>>> no_results;
    Attempt a = runTransaction(none, {}, acks, no_results);
    if (a.committed) {
      publishCommitted(a);
      acks_done = a.acks_applied;
    } else {
      restoreCommitted(a.seq_end);
    }
  }
  return acks_done;
}

Buffer::Attempt Buffer::runTransaction(std::vector<std::shared_ptr<Request>>& group,
                                       const std::vector<std::size_t>& active,
                                       const std::vector<AckOp>& acks,
                                       std::vector<std::optional<Result<AppendCounts>>>& results) {
  auto& s = *st_;
  Attempt a;
  Counters work = s.committed;
  int64_t seq = s.next_seq;
  a.seq_end = seq;
  for (std::size_t i : active) {
    results[i].reset();
  }
  // SQLite ends the transaction itself on some errors; nothing may run after that (a RELEASE
  // would commit the rest on its own, a producer would be told "io" for a committed row).
  auto ended = [&] { return sqlite3_get_autocommit(db_) != 0; };
  auto lost = [&](Attempt::Culprit culprit, std::size_t index, const std::string& what) {
    const int code = sqlite3_extended_errcode(db_);
    a.committed = false;
    a.culprit = culprit;
    a.culprit_index = index;
    a.disk_full = (code & 0xff) == SQLITE_FULL;
    a.error =
        makeError(a.disk_full ? "full" : "io",
                  a.disk_full ? "the disk is full (" + sqliteError(db_, what) + "); retry later"
                              : sqliteError(db_, what) + "; retry");
    a.seq_end = std::max(a.seq_end, seq);
    if (!ended()) {
      (void)run(s.rollback);
    }
    return a;
  };
  if (!ended()) {
    (void)run(s.rollback);  // never left open, but never build on one left open either
  }
  if (!run(s.begin)) {
    return lost(Attempt::Culprit::kNone, 0, "begin");
  }
  const int64_t now = nowMs();

  // Acknowledgements and quarantines, all or none (a SAVEPOINT): a range copied to the
  // quarantine but not deleted, or deleted but not remembered, must never happen.
  if (!acks.empty()) {
    const Counters before = work;
    bool ok = run(s.savepoint_acks);
    std::string failed_what = "savepoint";
    std::vector<std::string> high_ids;  // POS ids deleted by one acknowledgement
    for (std::size_t k = 0; ok && k < acks.size(); ++k) {
      const auto& op = acks[k];
      const bool to_quarantine = !op.quarantine_reason.empty();
      // Every statement below takes whole rows: a row of several events that holds seqs on
      // both sides of an end of the range is cut there first, and one the quarantine takes
      // becomes a row per event (each is retried, or looked at, on its own).
      ok = cutRunAt(op.first_seq, work, a) &&
           (op.last_seq == std::numeric_limits<int64_t>::max() ||
            cutRunAt(op.last_seq + 1, work, a)) &&
           (!to_quarantine || unrunRange(op.first_seq, op.last_seq, work, a));
      failed_what = "cutting rows of several events";
      if (!ok) {
        break;
      }
      if (to_quarantine) {
        s.copy_quarantine.bind(1, now);
        s.copy_quarantine.bind(2, op.quarantine_reason);
        s.copy_quarantine.bind(3, op.first_seq);
        s.copy_quarantine.bind(4, op.last_seq);
        int rc = 0;
        QuarantineReport moved{op.quarantine_reason, 0, 0, {}};
        while ((rc = s.copy_quarantine.step()) == SQLITE_ROW) {
          const int64_t cost = s.copy_quarantine.col(1) + kRowOverhead;
          work.quarantine_events += 1;
          work.quarantine_bytes += cost;
          moved.events += 1;
          moved.bytes += cost;
          addSeq(moved.ranges, s.copy_quarantine.col(0));
        }
        if (moved.events > 0) {
          mergeQuarantines(a.quarantines, {moved});
        }
        s.copy_quarantine.reset();
        ok = rc == SQLITE_DONE;
        failed_what = "quarantining events";
      } else {
        if (options_.retain_delivered_s > 0) {
          s.copy_delivered.bind(1, now);
          s.copy_delivered.bind(2, op.first_seq);
          s.copy_delivered.bind(3, op.last_seq);
          ok = run(s.copy_delivered) && keepDeliveredRuns(op.first_seq, op.last_seq, now);
          failed_what = "keeping delivered events";
        }
      }
      if (!ok) {
        break;
      }
      int rc = 0;
      uint64_t rows = 0;
      bool has_pos = false;
      high_ids.clear();
      // What the range takes out of the counters: from the ring when it holds every row of the
      // range (a range no earlier one of this transaction touched: those rows are gone already,
      // which the ring learns only after the commit), else from the file.
      const bool overlaps = std::any_of(
          acks.begin(), acks.begin() + static_cast<std::ptrdiff_t>(k),
          [&](const AckOp& o) { return o.first_seq <= op.last_seq && op.first_seq <= o.last_seq; });
      if (RangeSizes sizes; !overlaps && freshRangeSizes(op.first_seq, op.last_seq, sizes)) {
        for (int p = 0; p < 3; ++p) {
          work.events[p] -= sizes.events[p];
          work.bytes[p] -= sizes.bytes[p];
          rows += static_cast<uint64_t>(sizes.events[p]);
        }
      } else {
        s.range_sizes.bind(1, op.first_seq);
        s.range_sizes.bind(2, op.last_seq);
        // One row: events and bytes of priorities 0, 1 and 2, then every row of the range.
        if ((rc = s.range_sizes.step()) == SQLITE_ROW) {
          for (int p = 0; p < 3; ++p) {
            work.events[p] -= s.range_sizes.col(2 * p);
            work.bytes[p] -= s.range_sizes.col(2 * p + 1);
          }
          has_pos = s.range_sizes.col(0) > 0;
          rows = static_cast<uint64_t>(s.range_sizes.col(6));
          rc = s.range_sizes.step();
        }
        s.range_sizes.reset();
        ok = rc == SQLITE_DONE;
      }
      if (ok && has_pos && !to_quarantine) {
        s.range_pos_ids.bind(1, op.first_seq);
        s.range_pos_ids.bind(2, op.last_seq);
        while ((rc = s.range_pos_ids.step()) == SQLITE_ROW) {
          high_ids.push_back(s.range_pos_ids.text(0));
        }
        s.range_pos_ids.reset();
        ok = rc == SQLITE_DONE;
      }
      if (ok) {
        s.delete_range.bind(1, op.first_seq);
        s.delete_range.bind(2, op.last_seq);
        ok = run(s.delete_range);
      }
      failed_what = "deleting acknowledged events";
      // Delivered POS ids are remembered for kDedupWindowMs, so that the same transaction read
      // again (a file dropped twice, a crash between commit and move) is not sent again. They
      // come from the delete itself: one pass over the range, none for other channels.
      for (std::size_t h = 0; ok && h < high_ids.size(); ++h) {
        s.remember_delivered.bind(1, high_ids[h]);
        s.remember_delivered.bind(2, now);
        ok = run(s.remember_delivered);
        failed_what = "remembering delivered ids";
      }
      if (ok) {
        (to_quarantine ? a.quarantined : a.acked) += rows;
        if (to_quarantine && rows > 0) {
          a.quarantine_reason = op.quarantine_reason;
        }
      }
    }
    if (ok) {
      ok = run(s.release_acks);
      failed_what = "release";
    }
    if (!ok) {
      if (ended()) {
        return lost(Attempt::Culprit::kAcks, 0, failed_what);
      }
      // Only the acknowledgements' statement failed: undo them, keep the transaction.
      const std::string msg = sqliteError(db_, failed_what);
      if (!run(s.rollback_to_acks) || !run(s.release_acks) || ended()) {
        return lost(Attempt::Culprit::kAcks, 0, failed_what);
      }
      logFailure("acknowledgements not committed this time (" + msg + ")");
      work = before;
      a.acked = 0;
      a.quarantined = 0;
      a.quarantine_reason.clear();
      a.quarantines.clear();
      a.recut.clear();
      a.acked_ranges.clear();
    } else {
      a.acks_applied = true;
      for (const auto& op : acks) {
        a.acked_ranges.emplace_back(op.first_seq, op.last_seq);
      }
    }
  }
  // Housekeeping in the same transaction; a failure here only postpones it.
  if (now - dedup_purged_ms_ >= 600000) {
    dedup_purged_ms_ = now;
    s.forget_delivered.bind(1, now - kDedupWindowMs);
    if (!run(s.forget_delivered) && ended()) {
      return lost(Attempt::Culprit::kNone, 0, "forgetting old delivered ids");
    }
  }
  if (options_.retain_delivered_s > 0 && now - purged_ms_ >= 10000) {
    purged_ms_ = now;  // expired delivered events go at most every 10 s, by index
    s.purge_delivered.bind(1, now - options_.retain_delivered_s * 1000);
    if (!run(s.purge_delivered) && ended()) {
      return lost(Attempt::Culprit::kNone, 0, "purging delivered events");
    }
  }

  for (std::size_t i : active) {
    if (ended()) {
      return lost(Attempt::Culprit::kNone, 0, "transaction ended");
    }
    auto& req = *group[i];
    if (made_index_) {
      // Imports are looking ids up: every event gets a row of its own (keepMadeIndex).
      for (auto& e : req.events) {
        if (e.run != 1) {
          packAlone(e);
        }
      }
    }
    int64_t add = 0;
    for (const auto& e : req.events) {
      add += rowCost(e);
    }
    int64_t cap = capBytes(work.used());
    if (req.essential) {
      cap += std::max<int64_t>(64 << 10, cap / 100);  // agent.* reports: a small reserve
    }
    if (work.used() + add > cap) {
      if (!evictLow(work.used() + add - cap, work, a.evicted)) {
        if (ended()) {
          return lost(Attempt::Culprit::kRequest, i, "evicting low-priority events");
        }
      }
      if (work.used() + add > cap) {
        ++a.rejected_full;
        results[i] = makeError("full", "the buffer is full (" + std::to_string(work.used()) +
                                           " of " + std::to_string(cap) + " bytes); retry later");
        continue;
      }
    }
    int64_t delta_events[3] = {0, 0, 0};
    int64_t delta_bytes[3] = {0, 0, 0};
    AppendCounts counts;
    const int64_t seq_at_savepoint = seq;
    const std::size_t inserted_before = a.inserted.size();
    if (!run(s.savepoint)) {
      return lost(Attempt::Culprit::kRequest, i, "savepoint");
    }
    int rc = SQLITE_DONE;
    int64_t max_seq = 0;
    std::size_t one_by_one_until = 0;
    // `e` is stored at `seq`, the run_pos-th of its row of run_n events.
    auto stored_at = [&](StoredEvent& e, int32_t run_pos = 0, int32_t run_n = 1) {
      const auto p = static_cast<int>(e.priority);
      delta_events[p] += 1;
      delta_bytes[p] += rowCost(e);
      ++counts.stored;
      max_seq = seq;
      a.inserted.push_back(Attempt::Inserted{seq, &e, run_pos, run_n});
      ++seq;
    };
    for (std::size_t k = 0; k < req.events.size();) {
      if (const auto n = static_cast<std::size_t>(req.events[k].run); n > 1) {
        // A row of several events (Buffer::append made it). A constraint it meets, which only
        // a seq given twice could be, undoes this statement alone: its events then go one by
        // one (below), each in a row of its own.
        const StoredEvent& e = req.events[k];
        s.insert_run.bind(1, seq);
        s.insert_run.bind(2, e.id);
        s.insert_run.bind(3, e.type);
        s.insert_run.bind(4, static_cast<int64_t>(e.priority));
        s.insert_run.bind(5, e.received_at_ms);
        bindBody(s.insert_run.get(), 6, e.body, e.packed);
        s.insert_run.bind(7, static_cast<int64_t>(n));
        rc = s.insert_run.step();
        s.insert_run.reset();
        if (rc == SQLITE_DONE) {
          for (std::size_t j = 0; j < n; ++j) {
            stored_at(req.events[k + j], static_cast<int32_t>(j), static_cast<int32_t>(n));
          }
          k += n;
          continue;
        }
        if ((rc & 0xff) != SQLITE_CONSTRAINT || ended()) {
          break;
        }
        for (std::size_t j = k; j < k + n; ++j) {
          packAlone(req.events[j]);
        }
        one_by_one_until = k + n;
      }
      // kInsertRows events in a row whose ids Ingest made: one statement for them all (a
      // constraint it meets, which only a seq given twice could be, undoes that statement
      // alone; the rows then go one by one, where such a row counts as a duplicate).
      if (k >= one_by_one_until && allMade(req.events, k)) {
        rc = insertRows(s.insert_rows, seq, req.events, k);
        if (rc == SQLITE_DONE) {
          for (std::size_t end = k + kInsertRows; k < end; ++k) {
            stored_at(req.events[k]);
          }
          continue;
        }
        if ((rc & 0xff) != SQLITE_CONSTRAINT || ended()) {
          break;
        }
        one_by_one_until = k + kInsertRows;
      }
      auto& e = req.events[k++];
      bool stored = false;
      rc = insertEvent(db_, s.was_delivered, s.was_made, s.insert,
                       {seq, e.id, e.type, static_cast<int64_t>(e.priority), e.received_at_ms,
                        e.body, e.packed, e.id_origin},
                       stored);
      if (rc != SQLITE_DONE) {
        break;
      }
      if (stored) {
        stored_at(e);
      } else {
        ++counts.duplicates;
      }
    }
    if (rc != SQLITE_DONE) {
      if (ended()) {
        return lost(Attempt::Culprit::kRequest, i, "storing events");
      }
      // Only this statement was undone: undo the request's others too (its SAVEPOINT).
      const int code = sqlite3_extended_errcode(db_);
      const std::string msg = sqliteError(db_, "storing events");
      if (!run(s.rollback_to) || !run(s.release) || ended()) {
        return lost(Attempt::Culprit::kRequest, i, "storing events");
      }
      a.inserted.resize(inserted_before);
      seq = seq_at_savepoint;  // never committed, never seen: free to give again
      if ((code & 0xff) == SQLITE_FULL) {
        ++a.rejected_full;
        cap_cache_ = 0;  // re-read the disk next time
        results[i] = makeError("full", "the disk is full (" + msg + "); retry later");
      } else {
        results[i] = makeError("io", msg);
      }
      continue;
    }
    if (!run(s.release)) {
      return lost(Attempt::Culprit::kRequest, i, "release");
    }
    for (int p = 0; p < 3; ++p) {
      work.events[p] += delta_events[p];
      work.bytes[p] += delta_bytes[p];
    }
    a.max_seq = std::max(a.max_seq, max_seq);
    a.stored += counts.stored;
    a.duplicates += counts.duplicates;
    a.accepted_plain = a.accepted_plain || !req.essential;
    results[i] = counts;
  }

  work.last_seq = std::max(work.last_seq, seq - 1);
  // The counters table is left alone by a transaction that only appended rows whose highest
  // seq is the highest ever given (loadCounters() counts them in); anything else saves it.
  Counters appended = s.committed;
  for (const auto& in : a.inserted) {
    appended.events[static_cast<int>(in.event->priority)] += 1;
    appended.bytes[static_cast<int>(in.event->priority)] += rowCost(*in.event);
  }
  appended.last_seq = a.inserted.empty() ? appended.last_seq : a.inserted.back().seq;
  const bool only_appended = s.counters_saved && appended == work && burnt_.empty() &&
                             work.last_seq - s.saved_last_seq <= kCountersLagSeqs;
  if (!only_appended && !saveCounters(work)) {
    return lost(Attempt::Culprit::kNone, 0, "saving counters");
  }
  if (s.recovery_unreported && !run(s.forget_recovery_report) && ended()) {
    return lost(Attempt::Culprit::kNone, 0, "meta");
  }
  if (!run(s.commit)) {
    return lost(Attempt::Culprit::kNone, 0, "commit");
  }
  s.recovery_unreported = false;
  a.committed = true;
  a.seq_end = seq;
  s.committed = work;
  s.next_seq = seq;
  return a;
}

// ---- rows of several events --------------------------------------------------------------------

namespace {

// The row `st` stands on (seq, n, id, type, prio, received_ms, body), for rewriteRun.
template <class Row>
Row readRunRow(Stmt& st) {
  Row r;
  r.seq = st.col(0);
  r.n = st.col(1);
  r.id = st.text(2);
  r.type = st.text(3);
  r.prio = std::clamp<int64_t>(st.col(4), 0, 2);
  r.received_ms = st.col(5);
  const auto* p = static_cast<const char*>(sqlite3_column_blob(st.get(), 6));
  r.body.assign(p != nullptr ? p : "", static_cast<std::size_t>(sqlite3_column_bytes(st.get(), 6)));
  return r;
}

// The rows `st` finds from seq `first` to `last` (its two parameters), appended to `out`; false
// on an SQLite error.
template <class Row>
bool readRunRows(Stmt& st, int64_t first, int64_t last, std::vector<Row>& out) {
  st.bind(1, first);
  st.bind(2, last);
  int rc = 0;
  while ((rc = st.step()) == SQLITE_ROW) {
    out.push_back(readRunRow<Row>(st));
  }
  st.reset();
  return rc == SQLITE_DONE;
}

}  // namespace

bool Buffer::cutRunAt(int64_t at, Counters& work, Attempt& a) {
  auto& s = *st_;
  s.row_before.bind(1, at);
  const int rc = s.row_before.step();
  std::optional<RunRow> row;
  if (rc == SQLITE_ROW && s.row_before.col(1) > 1 &&
      s.row_before.col(0) + s.row_before.col(1) > at) {
    row = readRunRow<RunRow>(s.row_before);
  }
  s.row_before.reset();
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return false;
  }
  return !row || rewriteRun(*row, at, work, a);
}

bool Buffer::unrunRange(int64_t first, int64_t last, Counters& work, Attempt& a) {
  auto& s = *st_;
  // runs_in takes 64 rows at a time; each step goes on after the last row it cut.
  for (int64_t from = first;;) {
    std::vector<RunRow> rows;
    if (!readRunRows(s.runs_in, from, last, rows)) {
      return false;
    }
    if (rows.empty()) {
      return true;
    }
    for (const auto& row : rows) {
      if (!rewriteRun(row, 0, work, a)) {
        return false;
      }
    }
    from = rows.back().seq + 1;
  }
}

// `row` becomes two rows, the second from seq `cut` on, or (cut = 0) a row per event. A row that
// does not unpack goes to the quarantine whole, as readPending() would send it there.
bool Buffer::rewriteRun(const RunRow& row, int64_t cut, Counters& work, Attempt& a) {
  auto& s = *st_;
  const auto p = static_cast<int>(row.prio);
  auto events = unpackRun(row.body, row.n);
  if (!events) {
    const std::string reason = "stored body unreadable: " + events.error().message;
    spdlog::error("buffer: events seq {} to {} cannot be read back: {}", row.seq,
                  row.seq + row.n - 1, events.error().message);
    s.quarantine_row.bind(1, nowMs());
    s.quarantine_row.bind(2, reason);
    s.quarantine_row.bind(3, row.seq);
    s.delete_row.bind(1, row.seq);
    if (!run(s.quarantine_row) || !run(s.delete_row)) {
      return false;
    }
    work.events[p] -= row.n;
    work.bytes[p] -= row.cost();
    work.quarantine_events += 1;
    work.quarantine_bytes += row.cost();
    QuarantineReport moved{reason, row.n, row.cost(), {{row.seq, row.seq + row.n - 1}}};
    mergeQuarantines(a.quarantines, {moved});
    a.quarantined += static_cast<uint64_t>(row.n);
    a.quarantine_reason = reason;
    a.acked_ranges.emplace_back(row.seq, row.seq + row.n - 1);
    return true;
  }
  s.delete_row.bind(1, row.seq);
  if (!run(s.delete_row)) {
    return false;
  }
  work.bytes[p] -= row.cost();
  // The parts: [row.seq, cut) and [cut, end), or one event each.
  std::vector<std::pair<std::size_t, std::size_t>> parts;
  const auto n = static_cast<std::size_t>(row.n);
  if (cut > row.seq && cut < row.seq + row.n) {
    const auto at = static_cast<std::size_t>(cut - row.seq);
    parts = {{0, at}, {at, n}};
  } else {
    for (std::size_t k = 0; k < n; ++k) {
      parts.emplace_back(k, k + 1);
    }
  }
  std::vector<std::string_view> ids;
  std::vector<std::string_view> jsons;
  for (const auto& [from, to] : parts) {
    const auto& e = (*events)[from];
    std::string packed;
    if (to - from > 1) {
      ids.clear();
      jsons.clear();
      for (std::size_t k = from; k < to; ++k) {
        ids.emplace_back((*events)[k].id);
        jsons.emplace_back((*events)[k].json);
      }
      packed = packRun(ids, jsons);
    } else {
      packed = options_.pack_bodies ? packBody(e.json, e.id) : std::string();
    }
    // A part packRun() could not pack (no memory for LZ4) goes a row per event.
    const std::size_t rows = to - from > 1 && packed.empty() ? to - from : 1;
    for (std::size_t r = 0; r < rows; ++r) {
      const auto& one = (*events)[from + r];
      if (rows > 1) {
        packed = options_.pack_bodies ? packBody(one.json, one.id) : std::string();
      }
      const int64_t seq = row.seq + static_cast<int64_t>(from + r);
      const auto count = static_cast<int64_t>(rows > 1 ? 1 : to - from);
      s.insert_run.bind(1, seq);
      s.insert_run.bind(2, one.id);
      s.insert_run.bind(3, row.type);
      s.insert_run.bind(4, row.prio);
      s.insert_run.bind(5, row.received_ms);
      bindBody(s.insert_run.get(), 6, one.json, packed);
      s.insert_run.bind(7, count);
      if (!run(s.insert_run)) {
        return false;
      }
      const int64_t cost = static_cast<int64_t>((packed.empty() ? one.json.size() : packed.size()) +
                                                one.id.size() + row.type.size()) +
                           kRowOverhead;
      work.bytes[p] += cost;
      a.recut.push_back(Attempt::Recut{seq, count, cost});
    }
  }
  return true;
}

bool Buffer::keepDeliveredRuns(int64_t first, int64_t last, int64_t now) {
  // A delivered row of several events is kept as its events, a row each (the delivered table
  // has no `n`; few agents keep delivered events, and they are read rarely).
  auto& s = *st_;
  std::vector<RunRow> rows;
  if (!readRunRows(s.runs_delivered, first, last, rows)) {
    return false;
  }
  for (const auto& row : rows) {
    auto events = unpackRun(row.body, row.n);
    if (!events) {
      continue;  // delivered already: nothing of it is lost, only not kept
    }
    for (std::size_t k = 0; k < events->size(); ++k) {
      const auto& e = (*events)[k];
      const std::string packed = options_.pack_bodies ? packBody(e.json, e.id) : std::string();
      s.insert_delivered.bind(1, row.seq + static_cast<int64_t>(k));
      s.insert_delivered.bind(2, e.id);
      s.insert_delivered.bind(3, row.type);
      s.insert_delivered.bind(4, row.received_ms);
      s.insert_delivered.bind(5, now);
      bindBody(s.insert_delivered.get(), 6, e.json, packed);
      if (!run(s.insert_delivered)) {
        return false;
      }
    }
  }
  return true;
}

Result<void> Buffer::unrunRows(const std::vector<RunRow>& rows) {
  auto& s = *st_;
  Attempt a;
  Counters work = s.committed;
  bool ok = run(s.begin);
  for (std::size_t k = 0; ok && k < rows.size(); ++k) {
    ok = rewriteRun(rows[k], 0, work, a);
  }
  ok = ok && saveCounters(work) && run(s.commit);
  if (!ok) {
    const std::string msg = sqliteError(db_, "giving the events of rows of several a row each");
    if (sqlite3_get_autocommit(db_) == 0) {
      (void)run(s.rollback);
    }
    // What the file holds wins, as after a lost group.
    restoreCommitted(s.next_seq);
    return makeError("io", msg);
  }
  s.committed = work;
  a.committed = true;
  publishCommitted(a);
  return {};
}

// Every row of several events becomes a row per event, 64 at a time, each step a commit of its
// own (an import is about to look up ids the agent made: keepMadeIndex).
void Buffer::unrunAll() {
  auto& s = *st_;
  // Each step goes on after the last row it cut: starting from seq 0 again would read every row
  // cut before (a 1M-event buffer: ~30,000 rows of several, ~500 steps).
  for (int64_t from = 0;;) {
    std::vector<RunRow> found;
    if (!readRunRows(s.runs_in, from, std::numeric_limits<int64_t>::max(), found)) {
      logFailure(sqliteError(db_, "finding rows of several events for an import"));
      return;
    }
    if (found.empty()) {
      return;
    }
    if (auto r = unrunRows(found); !r) {
      logFailure(r.error().message);
      return;
    }
    from = found.back().seq + 1;
  }
}

// After a lost transaction: the counters as the file really has them (the transaction should
// have left nothing, but what the file says wins), and the next seq above everything handed
// out in it, committed or not, so no seq can ever be given twice.
void Buffer::restoreCommitted(int64_t burnt_up_to) {
  auto& s = *st_;
  if (auto c = loadCounters(); c) {
    if (!(*c == s.committed)) {
      spdlog::error(
          "buffer: the counters in the file differ from the last commit after a failed "
          "transaction; using the file's");
    }
    s.committed = *c;
  }
  const int64_t high = highWater(db_).value_or(0);
  s.next_seq = std::max({s.next_seq, burnt_up_to, high + 1, s.committed.last_seq + 1});
  // Seqs above the last committed one that this lost attempt handed out are never given again:
  // for the centre's gap check they are reported as given to no event, once a commit made
  // the new high-water mark durable (publishCommitted).
  const int64_t from = std::max(s.committed.last_seq, burnt_tracked_to_) + 1;
  if (s.next_seq - 1 >= from) {
    burnt_.emplace_back(from, s.next_seq - 1);
    burnt_tracked_to_ = s.next_seq - 1;
  }
  cap_cache_ = 0;
}

void Buffer::publishCommitted(Attempt& a) {
  std::lock_guard lock(mu_);
  if (a.max_seq > stats_.last_seq) {
    stats_.last_seq = a.max_seq;
  }
  stats_.appended += a.stored;
  stats_.duplicates += a.duplicates;
  stats_.acknowledged += a.acked;
  stats_.quarantined += a.quarantined;
  stats_.commits += 1;  // "full" answers are counted by commitGroup(), from the answers
  const int64_t now = nowMs();
  if (a.accepted_plain) {
    stats_.full_since_ms = 0;
  }
  if (a.quarantined > 0) {
    if (stats_.quarantine_oldest_ms == 0) {
      stats_.quarantine_oldest_ms = now;
    }
    stats_.quarantine_last_reason = a.quarantine_reason;
  }
  if (a.evicted.events > 0) {
    stats_.evicted += static_cast<uint64_t>(a.evicted.events);
    if (evictions_.events == 0) {
      evictions_.oldest_received_ms = a.evicted.oldest_received_ms;
    }
    evictions_.newest_received_ms = a.evicted.newest_received_ms;
    evictions_.events += a.evicted.events;
    evictions_.bytes += a.evicted.bytes;
    appendRanges(evictions_.ranges, a.evicted.ranges);
  }
  if (!burnt_.empty()) {
    // This commit saved a high-water mark above them: they are final now.
    appendRanges(evictions_.skipped, burnt_);
    burnt_.clear();
  }
  mergeQuarantines(quarantines_, a.quarantines);
  refreshStatsLocked();

  // The ring behind `tail`: the newest events that fit in kRecentEvents and recent_max_bytes.
  // Only those are copied (a group may hold 20,000 events).
  const std::size_t max_bytes = options_.recent_max_bytes;
  std::size_t take_bytes = 0;
  std::size_t take = 0;
  for (auto it = a.inserted.rbegin(); it != a.inserted.rend() && take < kRecentEvents; ++it) {
    const std::size_t len = it->event->body.size();
    if (take_bytes + len > max_bytes) {
      // Within the count but over the bytes: left out, and counted.
      stats_.recent_dropped += std::min(kRecentEvents, a.inserted.size()) - take;
      break;
    }
    take_bytes += len;
    ++take;
  }
  // Their bodies are moved, not copied: the request is answered next and never reads them again
  // (a copy here was a malloc and a memcpy per event on the writer, holding mu_).
  if (take < a.inserted.size()) {
    // Events left out: readPending() reads them, and whatever follows them, from the file.
    fresh_from_ = std::max(fresh_from_, take > 0 ? a.inserted[a.inserted.size() - take].seq
                                                 : a.inserted.back().seq + 1);
  }
  for (auto it = a.inserted.end() - static_cast<std::ptrdiff_t>(take); it != a.inserted.end();
       ++it) {
    const StoredEvent& e = *it->event;
    recent_bytes_ += e.body.size();
    recent_.push_back(RecentEvent{it->seq,
                                  e.type,
                                  {},
                                  true,
                                  static_cast<int>(e.priority),
                                  rowCost(e),
                                  it->run_pos,
                                  it->run_n});
    recent_.back().body = std::move(it->event->body);
  }
  applyRecutLocked(a);
  while (!recent_.empty() && (recent_.size() > kRecentEvents || recent_bytes_ > max_bytes)) {
    if (recent_.size() <= kRecentEvents) {
      ++stats_.recent_dropped;
    }
    recent_bytes_ -= recent_.front().body.size();
    fresh_from_ = std::max(fresh_from_, recent_.front().seq + 1);
    recent_.pop_front();
  }
  // Rows this commit deleted (after inserting: a request may evict what an earlier one of the
  // same group stored) are no longer pending.
  forgetFreshLocked(a.acked_ranges);
  forgetFreshLocked(a.evicted.ranges);
  stats_.recent_events = recent_.size();
  stats_.recent_bytes = recent_bytes_;
}

bool Buffer::freshRangeSizes(int64_t first, int64_t last, RangeSizes& sizes) {
  std::lock_guard lock(mu_);
  if (first < fresh_from_) {
    return false;
  }
  auto it = std::lower_bound(recent_.begin(), recent_.end(), first,
                             [](const RecentEvent& e, int64_t seq) { return e.seq < seq; });
  for (; it != recent_.end() && it->seq <= last; ++it) {
    // A row that holds seqs outside the range is cut first, which the file's path does.
    const int64_t row_first = it->seq - it->run_pos;
    if (row_first < first || row_first + it->run_n - 1 > last) {
      return false;
    }
    if (!it->pending) {
      continue;
    }
    if (it->priority == 0) {
      return false;  // POS ids are remembered when delivered: the file's path reads them
    }
    sizes.events[it->priority] += 1;
    sizes.bytes[it->priority] += it->cost;
  }
  return true;
}

void Buffer::applyRecutLocked(const Attempt& a) {
  for (const auto& cut : a.recut) {
    auto it = std::lower_bound(recent_.begin(), recent_.end(), cut.first,
                               [](const RecentEvent& e, int64_t seq) { return e.seq < seq; });
    for (; it != recent_.end() && it->seq < cut.first + cut.n; ++it) {
      it->run_pos = static_cast<int32_t>(it->seq - cut.first);
      it->run_n = static_cast<int32_t>(cut.n);
      it->cost = it->run_pos == 0 ? cut.cost : 0;
    }
  }
}

void Buffer::setFreshFrom(int64_t seq) {
  std::lock_guard lock(mu_);
  fresh_from_ = seq;
}

void Buffer::forgetFreshLocked(const SeqRanges& ranges) {
  for (const auto& [first, last] : ranges) {
    auto it = std::lower_bound(recent_.begin(), recent_.end(), first,
                               [](const RecentEvent& e, int64_t seq) { return e.seq < seq; });
    for (; it != recent_.end() && it->seq <= last; ++it) {
      it->pending = false;
    }
  }
}

void Buffer::runRetryQuarantine(Job& job) {
  auto& s = *st_;
  int64_t moved = 0;
  uint64_t dropped = 0;
  for (;;) {
    Counters work = s.committed;
    int64_t seq = s.next_seq;
    int64_t last_row = 0;
    int64_t add = 0;
    int64_t moved_now = 0;
    uint64_t dropped_now = 0;
    bool ok = run(s.begin);
    if (ok) {
      s.quarantine_chunk.bind(1, static_cast<int64_t>(std::max<std::size_t>(
                                     1, std::min<std::size_t>(options_.max_group_events, 1000))));
      int rc = 0;
      while (ok && (rc = s.quarantine_chunk.step()) == SQLITE_ROW) {
        last_row = s.quarantine_chunk.col(0);
        const std::string id = s.quarantine_chunk.text(1);
        const std::string type = s.quarantine_chunk.text(2);
        const int64_t prio = std::clamp<int64_t>(s.quarantine_chunk.col(3), 0, 2);
        // The body moves in the form it is stored in: TEXT, or a packed BLOB.
        const bool blob = sqlite3_column_type(s.quarantine_chunk.get(), 5) == SQLITE_BLOB;
        const std::string raw = s.quarantine_chunk.text(5);
        const std::string none;
        const std::string& json = blob ? none : raw;
        const std::string& packed = blob ? raw : none;
        bool stored = false;
        if (insertEvent(db_, s.was_delivered, s.was_made, s.insert,
                        {seq, id, type, prio, s.quarantine_chunk.col(4), json, packed},
                        stored) != SQLITE_DONE) {
          ok = false;
        } else if (stored) {
          const int64_t cost =
              static_cast<int64_t>(raw.size() + id.size() + type.size()) + kRowOverhead;
          work.events[prio] += 1;
          work.bytes[prio] += cost;
          add += cost;
          ++seq;
          ++moved_now;
        } else {
          ++dropped_now;  // pending again already, or delivered meanwhile
        }
      }
      s.quarantine_chunk.reset();
      ok = ok && rc == SQLITE_DONE;
    }
    if (ok && last_row == 0) {
      (void)run(s.rollback);  // nothing left
      break;
    }
    bool full = false;
    if (ok && work.used() > capBytes(s.committed.used()) && add > 0) {
      full = true;
      ok = false;
    }
    if (ok) {
      s.delete_quarantine.bind(1, last_row);
      int rc = 0;
      while ((rc = s.delete_quarantine.step()) == SQLITE_ROW) {
        work.quarantine_events -= 1;
        work.quarantine_bytes -= s.delete_quarantine.col(0) + kRowOverhead;
      }
      s.delete_quarantine.reset();
      ok = rc == SQLITE_DONE;
    }
    work.last_seq = std::max(work.last_seq, seq - 1);
    ok = ok && saveCounters(work) && run(s.commit);
    if (!ok) {
      const int code = sqlite3_extended_errcode(db_);
      const std::string msg = sqliteError(db_, "moving quarantined events back");
      if (sqlite3_get_autocommit(db_) == 0) {
        (void)run(s.rollback);
      }
      restoreCommitted(seq);
      std::lock_guard lock(mu_);
      stats_.quarantine_retried += static_cast<uint64_t>(moved);
      if (full || (code & 0xff) == SQLITE_FULL) {
        job.done.set_value(makeError(
            "full", "the quarantined events do not fit in the buffer (" + std::to_string(moved) +
                        " were moved back); retry once the queue has drained"));
      } else {
        ++stats_.io_errors;
        job.done.set_value(makeError(
            "io", msg + " (" + std::to_string(moved) + " were moved back before); retry"));
      }
      return;
    }
    s.committed = work;
    s.next_seq = seq;
    moved += moved_now;
    dropped += dropped_now;
    std::lock_guard lock(mu_);
    stats_.last_seq = std::max(stats_.last_seq, seq - 1);
    stats_.commits += 1;
    refreshStatsLocked();
    newer_cv_.notify_all();
  }
  std::lock_guard lock(mu_);
  stats_.quarantine_retried += static_cast<uint64_t>(moved);
  if (dropped > 0) {
    spdlog::info("buffer: {} quarantined events were pending or delivered already", dropped);
  }
  refreshStatsLocked();
  job.done.set_value(moved);
}

// ---- editing stored events (consent, erasure) -------------------------------------------------

namespace {

// The tables that hold event bodies. Pending events and the quarantine are counted (counters
// table); kept delivered events are not.
enum EditTable { kEditEvents = 0, kEditQuarantine = 1, kEditDelivered = 2 };
constexpr const char* kEditTableName[] = {"events", "quarantine", "delivered"};
// Rows looked at per transaction, and the bodies' bytes held in memory for one.
constexpr int64_t kEditChunkRows = 512;
constexpr std::size_t kEditChunkBytes = 4 << 20;

bool execSql(sqlite3* db, const char* sql) {
  return sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK;
}

}  // namespace

// One table, in chunks of rows (each chunk one transaction, so the WAL stays bounded): the rows
// whose body holds a needle are read, the editor decides, the drops and rewrites are committed
// with the counters.
Result<void> Buffer::editTable(int table, Job& job, EditReport& report) {
  auto& s = *st_;
  const std::string name = kEditTableName[table];
  const bool has_prio = table != kEditDelivered;
  // Only events holds rows of several events (quarantine and delivered take their events one
  // by one); such a row is matched by any of its events' bodies (body_text gives them all).
  std::string sql = "SELECT seq, id, type, " + std::string(has_prio ? "prio" : "0") + ", body, " +
                    (table == kEditEvents ? "n, received_ms" : "1, 0") + " FROM " + name +
                    " WHERE seq > ?1 AND (";
  for (std::size_t i = 0; i < job.needles.size(); ++i) {
    sql += (i == 0 ? "" : " OR ") + std::string("instr(body_text(body, id), ?") +
           std::to_string(i + 2) + ") > 0";
  }
  sql += ") ORDER BY seq LIMIT " + std::to_string(kEditChunkRows);
  sqlite3_stmt* sel = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &sel, nullptr) != SQLITE_OK) {
    sqlite3_finalize(sel);
    return makeError("io", sqliteError(db_, "preparing the edit of " + name));
  }
  const std::string del_sql = "DELETE FROM " + name + " WHERE seq = ?";
  const std::string upd_sql = "UPDATE " + name + " SET body = ? WHERE seq = ?";
  Stmt del;
  Stmt upd;
  if (auto r = del.prepare(db_, del_sql.c_str()); !r) {
    sqlite3_finalize(sel);
    return r;
  }
  if (auto r = upd.prepare(db_, upd_sql.c_str()); !r) {
    sqlite3_finalize(sel);
    return r;
  }
  struct Row {
    int64_t seq = 0;
    int64_t prio = 0;
    int64_t old_cost = 0;
    int64_t old_body = 0;  // as stored (packed or not)
    EventEdit edit;
    std::string packed;  // the new body's stored form (body_codec.h)
  };
  int64_t after = 0;
  for (;;) {
    std::vector<Row> rows;
    std::vector<RunRow> runs;  // rows of several events matched: each becomes a row per event
    const int64_t chunk_after = after;
    std::size_t bytes = 0;
    bool more = false;
    sqlite3_bind_int64(sel, 1, after);
    for (std::size_t i = 0; i < job.needles.size(); ++i) {
      sqlite3_bind_text(sel, static_cast<int>(i + 2), job.needles[i].data(),
                        static_cast<int>(job.needles[i].size()), SQLITE_STATIC);
    }
    int rc = 0;
    int64_t n = 0;
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
      ++n;
      after = sqlite3_column_int64(sel, 0);
      const auto text = [&](int c) {
        const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(sel, c));
        return p != nullptr ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(sel, c)))
                            : std::string();
      };
      const std::string id = text(1);
      const std::string type = text(2);
      if (const int64_t count = sqlite3_column_int64(sel, 5); count > 1) {
        RunRow found;
        found.seq = after;
        found.n = count;
        found.id = id;
        found.type = type;
        found.prio = std::clamp<int64_t>(sqlite3_column_int64(sel, 3), 0, 2);
        found.received_ms = sqlite3_column_int64(sel, 6);
        const auto* p = static_cast<const char*>(sqlite3_column_blob(sel, 4));
        found.body.assign(p != nullptr ? p : "",
                          static_cast<std::size_t>(sqlite3_column_bytes(sel, 4)));
        bytes += found.body.size();
        runs.push_back(std::move(found));
        if (bytes >= kEditChunkBytes) {
          more = true;
          break;
        }
        continue;
      }
      // body_text() matched it, so a packed body unpacks (else it would have been NULL).
      const auto stored = static_cast<int64_t>(sqlite3_column_bytes(sel, 4));
      auto body = bodyColumn(sel, 4, 1);
      EventEdit edit = body ? job.editor(type, *body) : EventEdit{};
      if (edit.action != EventEdit::Action::kKeep) {
        rows.push_back(Row{after,
                           std::clamp<int64_t>(sqlite3_column_int64(sel, 3), 0, 2),
                           stored + static_cast<int64_t>(id.size() + type.size()) + kRowOverhead,
                           stored,
                           std::move(edit),
                           {}});
        if (rows.back().edit.action == EventEdit::Action::kReplace && options_.pack_bodies) {
          rows.back().packed = packBody(rows.back().edit.body, id);
        }
        bytes += rows.back().edit.body.size();
      }
      if (bytes >= kEditChunkBytes) {
        more = true;
        break;
      }
    }
    const bool failed = rc != SQLITE_ROW && rc != SQLITE_DONE;
    sqlite3_reset(sel);
    if (failed) {
      sqlite3_finalize(sel);
      return makeError("io", sqliteError(db_, "reading " + name + " for an edit"));
    }
    more = more || n == kEditChunkRows;
    if (!runs.empty()) {
      // The matched rows of several events become a row per event, committed, and the chunk is
      // read again: the editor then sees each event alone.
      if (auto r = unrunRows(runs); !r) {
        sqlite3_finalize(sel);
        std::lock_guard lock(mu_);
        ++stats_.io_errors;
        return r.error();
      }
      after = chunk_after;
      continue;
    }
    if (!rows.empty()) {
      Counters work = s.committed;
      bool ok = run(s.begin);
      SeqRanges dropped;
      for (const Row& r : rows) {
        if (!ok) {
          break;
        }
        const bool drop = r.edit.action == EventEdit::Action::kDrop;
        if (drop) {
          del.bind(1, r.seq);
          ok = run(del);
          addSeq(dropped, r.seq);
        } else {
          bindBody(upd.get(), 1, r.edit.body, r.packed);
          upd.bind(2, r.seq);
          ok = run(upd);
        }
        // A rewrite keeps id and type: its cost changes by the body's size only.
        const int64_t delta =
            static_cast<int64_t>(r.packed.empty() ? r.edit.body.size() : r.packed.size()) -
            r.old_body;
        if (table == kEditEvents) {
          if (drop) {
            work.events[r.prio] -= 1;
            work.bytes[r.prio] -= r.old_cost;
          } else {
            work.bytes[r.prio] += delta;
          }
        } else if (table == kEditQuarantine) {
          if (drop) {
            work.quarantine_events -= 1;
            work.quarantine_bytes -= r.old_cost;
          } else {
            work.quarantine_bytes += delta;
          }
        }
      }
      ok = ok && saveCounters(work) && run(s.commit);
      if (!ok) {
        const std::string msg = sqliteError(db_, "editing " + name);
        if (sqlite3_get_autocommit(db_) == 0) {
          (void)run(s.rollback);
        }
        // What the file holds wins, as after a lost group (saveCounters() noted a save that
        // this rollback undid).
        restoreCommitted(s.next_seq);
        sqlite3_finalize(sel);
        std::lock_guard lock(mu_);
        ++stats_.io_errors;
        return makeError("io", msg);
      }
      s.committed = work;
      for (const Row& r : rows) {
        const bool drop = r.edit.action == EventEdit::Action::kDrop;
        int64_t* counts[3][2] = {{&report.pending_dropped, &report.pending_replaced},
                                 {&report.quarantine_dropped, &report.quarantine_replaced},
                                 {&report.delivered_dropped, &report.delivered_replaced}};
        ++*counts[table][drop ? 0 : 1];
      }
      if (table == kEditEvents) {
        appendRanges(report.dropped_seqs, dropped);
      }
      std::lock_guard lock(mu_);
      stats_.commits += 1;
      refreshStatsLocked();
    }
    if (!more) {
      break;
    }
  }
  sqlite3_finalize(sel);
  return {};
}

// Free pages may still hold what was deleted before secure_delete was on (delivered events are
// deleted with secure_delete=FAST, which leaves freed overflow pages as they were), and the WAL
// holds the old pages until it is checkpointed: clear both. True when the WAL was emptied.
bool Buffer::scrubFiles() {
  const int64_t mode = queryInt(db_, "PRAGMA auto_vacuum").value_or(0);
  if (mode == 2) {
    (void)execSql(db_, "PRAGMA incremental_vacuum");
  } else if (queryInt(db_, "PRAGMA freelist_count").value_or(0) > 0) {
    (void)execSql(db_, "VACUUM");
  }
  bool truncated = false;
  // The sync engine's reader is held off meanwhile; only another process (a CLI's export) can
  // keep the WAL busy, for a few seconds at most.
  std::lock_guard reading(reader_mu_);
  (void)finishPass();  // one checkpoint at a time
  sqlite3_busy_timeout(db_, kCheckpointWaitMs);
  for (int attempt = 0; attempt < 20 && !truncated && !wal_kept_; ++attempt) {
    truncated = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr,
                                          nullptr) == SQLITE_OK;
  }
  sqlite3_busy_timeout(db_, 5000);
  if (truncated) {
    wal_frames_ = 0;
  }
  cap_cache_ = 0;
  return truncated;
}

void Buffer::runEdit(Job& job) {
  EditReport report;
  job.needles.erase(std::remove(job.needles.begin(), job.needles.end(), std::string()),
                    job.needles.end());
  if (job.needles.empty()) {
    job.edited.set_value(report);
    return;
  }
  // Deleted and rewritten bodies are overwritten with zeros in the file, not only unlinked.
  (void)execSql(db_, "PRAGMA secure_delete=ON");
  Result<void> done;
  for (int table : {kEditEvents, kEditQuarantine, kEditDelivered}) {
    done = editTable(table, job, report);
    if (!done) {
      break;
    }
  }
  if (done && job.scrub) {
    report.scrubbed = scrubFiles();
  }
  (void)execSql(db_, "PRAGMA secure_delete=FAST");
  {
    std::lock_guard lock(mu_);
    for (auto it = recent_.begin(); it != recent_.end();) {
      const bool hit = std::any_of(job.needles.begin(), job.needles.end(), [&](const auto& n) {
        return it->body.find(n) != std::string::npos;
      });
      EventEdit edit = hit ? job.editor(it->type, it->body) : EventEdit{};
      if (edit.action == EventEdit::Action::kDrop) {
        recent_bytes_ -= it->body.size();
        it = recent_.erase(it);
        ++report.recent_dropped;
        continue;
      }
      if (edit.action == EventEdit::Action::kReplace) {
        recent_bytes_ = recent_bytes_ - it->body.size() + edit.body.size();
        it->body = std::move(edit.body);
        ++report.recent_replaced;
      }
      ++it;
    }
    refreshStatsLocked();
  }
  if (!done) {
    job.edited.set_value(done.error());
    return;
  }
  job.edited.set_value(std::move(report));
}

// The WAL's bound: once a commit leaves kWalCheckpointBytes in it, the checkpointer copies it
// into the file on its own thread (PASSIVE: the writer goes on meanwhile), and then the writer
// checkpoints RESTART, which copies what was committed since and waits (kCheckpointWaitMs at
// most) until no reader still reads from the WAL, so that the next commit rewinds it. SQLite's
// automatic checkpoint is PASSIVE only: with a reader always in the middle of a read (a drain),
// the WAL is never rewound and grows by everything written. If a long reader (an export, a CLI)
// holds on, the checkpointer copies what it can meanwhile and RESTART is tried again a second
// later. A disk slower than the intake makes the writer wait for the pass at twice the bound.
void Buffer::maybeCheckpoint() {
  const int64_t frames = wal_frames_;
  if (!wal_kept_ && frames * (page_size_ + 24) >= kWalCheckpointBytes &&
      (!checkpointer_->busy() || frames * (page_size_ + 24) >= 2 * kWalCheckpointBytes)) {
    const auto now = std::chrono::steady_clock::now();
    const auto pass = finishPass();
    if (wal_kept_) {
      // nothing more: see keepWal()
    } else if (!pass.copied || pass.frames > frames || now < restart_retry_at_) {
      checkpointer_->request();
    } else {
      sqlite3_busy_timeout(db_, kCheckpointWaitMs);
      const int rc =
          sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_RESTART, nullptr, nullptr);
      sqlite3_busy_timeout(db_, 5000);
      if (rc == SQLITE_OK) {
        wal_frames_ = 0;
      } else {
        if ((rc & 0xff) != SQLITE_BUSY) {
          logFailure(std::string("checkpoint failed: ") + sqlite3_errmsg(db_));
        }
        restart_retry_at_ = now + std::chrono::seconds(1);
        checkpointer_->request();
      }
    }
  }
  std::error_code ec;
  const auto wal = fs::file_size(options_.dir / "buffer.db-wal", ec);
  wal_bytes_ = ec ? 0 : static_cast<int64_t>(wal);
  std::lock_guard lock(mu_);
  stats_.wal_bytes = wal_bytes_;
  stats_.wal_peak_bytes = std::max(stats_.wal_peak_bytes, wal_bytes_);
}

// Waits for the checkpointer's pass in progress, if any, and acts on what the last pass left:
// a failure is logged, one that may have lost pages keeps the WAL (keepWal).
detail::Checkpointer::Outcome Buffer::finishPass() {
  auto pass = checkpointer_->take();
  if (pass.unsynced) {
    keepWal(pass.error);
  } else if (pass.rc != SQLITE_OK && (pass.rc & 0xff) != SQLITE_BUSY) {
    logFailure("checkpoint failed: " + pass.error);
  }
  return pass;
}

// A checkpoint copied pages into buffer.db and their sync failed. SQLite now counts those WAL
// frames as copied, but after a failed fsync the kernel may have dropped the pages (marked them
// clean without writing them), so rewinding the WAL could lose committed events. The WAL stays
// as it is from now on: no RESTART, no TRUNCATE, none at close either. It grows (the cap's
// statvfs sees it), and the next start's WAL recovery copies every frame into the file again.
void Buffer::keepWal(const std::string& why) {
  if (wal_kept_) {
    return;
  }
  wal_kept_ = true;
  (void)sqlite3_db_config(db_, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  {
    std::lock_guard lock(mu_);
    stats_.wal_kept = true;
    stats_.wal_kept_reason = why;
  }
  spdlog::error(
      "buffer: {}; the WAL ({}) is kept as it is until omniedge restarts, whose recovery copies "
      "it into the file again: check the disk, then restart the service",
      why, (options_.dir / "buffer.db-wal").string());
}

void Buffer::refreshStatsLocked() {
  auto& s = *st_;
  stats_.pending_bytes = 0;
  for (int p = 0; p < 3; ++p) {
    stats_.pending[p] = s.committed.events[p];
    stats_.pending_bytes_by_priority[p] = s.committed.bytes[p];
    stats_.pending_bytes += s.committed.bytes[p];
  }
  stats_.oldest_pending_ms = 0;
  if (s.oldest.step() == SQLITE_ROW) {
    stats_.oldest_pending_ms = s.oldest.col(0);
  }
  s.oldest.reset();
  stats_.quarantine_events = s.committed.quarantine_events;
  stats_.quarantine_bytes = s.committed.quarantine_bytes;
  if (s.committed.quarantine_events == 0) {
    stats_.quarantine_oldest_ms = 0;
    stats_.quarantine_last_reason.clear();
  }
  stats_.used_bytes = s.committed.used();
  stats_.file_bytes = file_bytes_;
  stats_.wal_bytes = wal_bytes_;
  stats_.wal_peak_bytes = std::max(stats_.wal_peak_bytes, wal_bytes_);
  stats_.cap_bytes = cap_cache_;
  stats_.queued_requests = queue_.size();
  stats_.queued_bytes = queued_bytes_;
}

void Buffer::returnEvictions(const EvictionReport& report) {
  if (report.empty()) {
    return;
  }
  std::lock_guard lock(mu_);
  appendRanges(evictions_.skipped, report.skipped);
  if (report.events == 0) {
    return;
  }
  if (evictions_.events == 0 || report.oldest_received_ms < evictions_.oldest_received_ms) {
    evictions_.oldest_received_ms = report.oldest_received_ms;
  }
  evictions_.newest_received_ms =
      std::max(evictions_.newest_received_ms, report.newest_received_ms);
  evictions_.events += report.events;
  evictions_.bytes += report.bytes;
  appendRanges(evictions_.ranges, report.ranges);
}

Result<std::vector<QuarantinedEvent>> Buffer::quarantined(std::size_t limit) {
  std::lock_guard lock(reader_mu_);
  sqlite3_stmt* st = nullptr;
  std::vector<QuarantinedEvent> out;
  int rc = sqlite3_prepare_v2(reader_,
                              "SELECT seq, id, type, quarantined_ms, reason FROM quarantine "
                              "ORDER BY quarantined_ms DESC, seq DESC LIMIT ?",
                              -1, &st, nullptr);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, static_cast<int64_t>(limit));
    auto text = [&](int i) {
      const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, i));
      return p != nullptr ? std::string(p) : std::string();
    };
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      out.push_back(QuarantinedEvent{sqlite3_column_int64(st, 0), text(1), text(2),
                                     sqlite3_column_int64(st, 3), text(4)});
    }
  }
  const std::string msg = sqlite3_errmsg(reader_);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) {
    return makeError("io", "reading the quarantine: " + msg);
  }
  return out;
}

std::vector<QuarantineReport> Buffer::takeQuarantines() {
  std::lock_guard lock(mu_);
  std::vector<QuarantineReport> r;
  r.swap(quarantines_);
  return r;
}

void Buffer::returnQuarantines(const std::vector<QuarantineReport>& reports) {
  std::lock_guard lock(mu_);
  mergeQuarantines(quarantines_, reports);
}

EvictionReport Buffer::takeEvictions() {
  std::lock_guard lock(mu_);
  EvictionReport r = evictions_;
  evictions_ = EvictionReport{};
  return r;
}

std::vector<RecentEvent> Buffer::recent(int64_t after_seq, std::size_t limit) const {
  std::lock_guard lock(mu_);
  auto it = std::upper_bound(recent_.begin(), recent_.end(), after_seq,
                             [](int64_t seq, const RecentEvent& e) { return seq < e.seq; });
  const auto available = static_cast<std::size_t>(recent_.end() - it);
  if (available > limit) {
    it += static_cast<std::ptrdiff_t>(available - limit);
  }
  return {it, recent_.end()};
}

BufferStats Buffer::stats() const {
  std::lock_guard lock(mu_);
  BufferStats s = stats_;
  s.queued_requests = queue_.size();
  s.queued_bytes = queued_bytes_;
  return s;
}

void Buffer::close() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !writer_.joinable()) {
      return;
    }
    if (!stopping_) {
      stopping_ = true;
      stop_requested_ = std::chrono::steady_clock::now();
    }
  }
  cv_.notify_all();
  room_cv_.notify_all();
  newer_cv_.notify_all();
  const bool opened = writer_.joinable();
  if (opened) {
    writer_.join();
  }
  checkpointer_.reset();  // before the writer's last checkpoint
  if (opened && st_ && db_ != nullptr) {
    // Give back space left by a drain, a little at a time.
    const auto& c = st_->committed;
    if (c.events[0] + c.events[1] + c.events[2] == 0) {
      (void)run(st_->incremental_vacuum);
    }
  }
  {
    std::lock_guard lock(reader_mu_);
    st_.reset();  // finalizes every statement, the reader's too
  }
  if (reader_ != nullptr) {
    sqlite3_close(reader_);
    reader_ = nullptr;
  }
  if (db_ != nullptr) {
    // Fold the WAL into the file; bounded, like everything in close(). Not when it is kept
    // (keepWal): then the lock file stays too, and the next start checks the file.
    sqlite3_busy_timeout(db_, 1000);
    if (!wal_kept_) {
      (void)sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
    }
    if (sqlite3_close(db_) == SQLITE_OK && opened && !wal_kept_) {
      std::error_code ec;
      fs::remove(options_.dir / "buffer.lock", ec);  // a clean shutdown
    }
    db_ = nullptr;
  }
  if (lock_fd_ >= 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
  }
}

Buffer::~Buffer() { close(); }

}  // namespace omniedge::store
