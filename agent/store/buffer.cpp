#include "agent/store/buffer.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

namespace omniedge::store {
namespace {

namespace fs = std::filesystem;

// What a row costs beyond its strings: rowid, record header, the id index entry. The buffer's
// accounting is in these logical bytes, so eviction frees exactly what it counts.
constexpr int64_t kRowOverhead = 40;
// Quick-check the whole file at every start while it is this small (milliseconds); a larger
// file is checked at start only after an unclean shutdown (see docs/architecture.md).
constexpr int64_t kAlwaysCheckBelow = 64LL << 20;
// What the WAL may take beside the file: it is truncated to journal_size_limit (4 MiB) after a
// checkpoint, and one group commit (at most max_group_bytes, 2 MiB) may add to it before that.
constexpr int64_t kWalReserve = 8LL << 20;
// How long delivered POS ids are remembered to refuse a second copy of the same transaction.
constexpr int64_t kDedupWindowMs = 35LL * 24 * 3600 * 1000;

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t rowCost(const StoredEvent& e) {
  return static_cast<int64_t>(e.body.size() + e.id.size() + e.type.size()) + kRowOverhead;
}

std::string sqliteError(sqlite3* db, const std::string& what) {
  return what + ": " + (db != nullptr ? sqlite3_errmsg(db) : "out of memory");
}

Result<void> exec(sqlite3* db, const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string text = msg != nullptr ? msg : sqlite3_errmsg(db);
    sqlite3_free(msg);
    return makeError("io", std::string("SQLite: ") + text + " (in: " + sql + ")");
  }
  return {};
}

int64_t queryInt(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  int64_t v = 0;
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    v = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  return v;
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

 private:
  sqlite3_stmt* st_ = nullptr;
};

// Runs a statement that returns no rows; false on error.
bool run(Stmt& s) {
  const int rc = s.step();
  s.reset();
  return rc == SQLITE_DONE || rc == SQLITE_ROW;
}

const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL,
  prio INTEGER NOT NULL,
  received_ms INTEGER NOT NULL,
  body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_low ON events(seq) WHERE prio = 2;
CREATE TABLE IF NOT EXISTS counters(
  prio INTEGER PRIMARY KEY, events INTEGER NOT NULL, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS delivered(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  type TEXT NOT NULL,
  received_ms INTEGER NOT NULL,
  delivered_ms INTEGER NOT NULL,
  body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS delivered_age ON delivered(delivered_ms);
CREATE TABLE IF NOT EXISTS delivered_ids(
  id TEXT PRIMARY KEY, delivered_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  type TEXT NOT NULL,
  prio INTEGER NOT NULL,
  received_ms INTEGER NOT NULL,
  quarantined_ms INTEGER NOT NULL,
  reason TEXT NOT NULL,
  body TEXT NOT NULL);
)sql";

Result<sqlite3*> openConnection(const fs::path& file, bool synchronous_full) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(
      file.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = sqliteError(db, "open " + file.string());
    sqlite3_close(db);
    return makeError(rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB ? "corrupt" : "io", msg);
  }
  sqlite3_busy_timeout(db, 5000);
  sqlite3_extended_result_codes(db, 1);
  const std::string pragmas = std::string(
                                  "PRAGMA auto_vacuum=INCREMENTAL;"
                                  "PRAGMA journal_mode=WAL;"
                                  "PRAGMA journal_size_limit=4194304;"
                                  "PRAGMA temp_store=MEMORY;"
                                  "PRAGMA synchronous=") +
                              (synchronous_full ? "FULL;" : "NORMAL;");
  if (auto r = exec(db, pragmas.c_str()); !r) {
    sqlite3_close(db);
    return makeError("corrupt", r.error().message);
  }
  return db;
}

}  // namespace

struct Buffer::Request {
  std::vector<StoredEvent> events;
  std::size_t bytes = 0;
  std::promise<Result<AppendCounts>> done;
};

struct Buffer::Statements {
  Stmt begin, commit, rollback, savepoint, release, rollback_to;
  Stmt insert, delete_range, copy_delivered, purge_delivered;
  Stmt select_low, delete_low, save_counter, oldest;
  Stmt page_count, freelist_count, incremental_vacuum;
  Stmt read_pending;  // on the reader connection
  Stmt remember_delivered, forget_delivered, copy_quarantine;
  int64_t counter_events[3] = {0, 0, 0};
  int64_t counter_bytes[3] = {0, 0, 0};
  int64_t counter_last_seq = 0;  // as saved
  int64_t next_seq = 1;          // writer thread: the next event's seq
};

Buffer::Buffer(BufferOptions options) : options_(std::move(options)) {}

Result<std::unique_ptr<Buffer>> Buffer::open(const BufferOptions& options) {
  std::error_code ec;
  fs::create_directories(options.dir, ec);
  if (ec) {
    return makeError("io", "cannot create data dir " + options.dir.string() + ": " + ec.message());
  }
  std::unique_ptr<Buffer> b(new Buffer(options));
  const fs::path file = options.dir / "buffer.db";

  // The lock file says "a daemon owns this buffer"; it is removed on a clean close, so finding
  // it at start means the previous run ended uncleanly (crash, kill -9, power cut).
  const fs::path lock_path = options.dir / "buffer.lock";
  b->open_report_.unclean_shutdown = fs::exists(lock_path);
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    return makeError("io", "cannot create " + lock_path.string() + ": " + std::strerror(errno));
  }
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd);
    return makeError("busy", "another omniedge is running with data dir " + options.dir.string());
  }
  b->lock_fd_ = lock_fd;

  const bool existed = fs::exists(file);
  const int64_t size = existed ? static_cast<int64_t>(fs::file_size(file, ec)) : 0;
  auto conn = openConnection(file, options.synchronous_full);
  std::string problem;
  if (conn) {
    b->db_ = *conn;
    if (auto r = exec(b->db_, kSchema); !r) {
      problem = r.error().message;
    } else if (existed && (b->open_report_.unclean_shutdown || size < kAlwaysCheckBelow)) {
      b->open_report_.integrity_checked = true;
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(b->db_, "PRAGMA quick_check", -1, &st, nullptr) != SQLITE_OK) {
        problem = sqlite3_errmsg(b->db_);
      } else {
        while (sqlite3_step(st) == SQLITE_ROW) {
          const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
          if (text != nullptr && std::strcmp(text, "ok") != 0 && problem.size() < 500) {
            problem += (problem.empty() ? "" : "; ") + std::string(text);
          }
        }
        if (problem.empty() && sqlite3_errcode(b->db_) != SQLITE_DONE &&
            sqlite3_errcode(b->db_) != SQLITE_OK) {
          problem = sqlite3_errmsg(b->db_);
        }
        sqlite3_finalize(st);
      }
    }
  } else if (conn.error().code == "corrupt") {
    problem = conn.error().message;
  } else {
    return conn.error();
  }

  if (!problem.empty()) {
    if (auto r = b->recover(problem); !r) {
      return r.error();
    }
  }
  if (auto r = b->prepare(); !r) {
    return r.error();
  }
  b->writer_ = std::thread([p = b.get()] { p->writerLoop(); });
  return b;
}

Result<void> Buffer::recover(const std::string& problem) {
  const fs::path file = options_.dir / "buffer.db";
  spdlog::error("buffer: {} is corrupt ({}); moving it aside and starting a fresh one",
                file.string(), problem);
  sqlite3_close(db_);
  db_ = nullptr;
  const fs::path aside = options_.dir / ("buffer.db.corrupt-" + std::to_string(nowMs()));
  std::error_code ec;
  fs::rename(file, aside, ec);
  if (ec) {
    return makeError("io", "cannot move corrupt buffer aside: " + ec.message());
  }
  fs::rename(fs::path(file.string() + "-wal"), fs::path(aside.string() + "-wal"), ec);
  fs::remove(fs::path(file.string() + "-shm"), ec);
  open_report_.recovered = true;
  open_report_.moved_to = aside.string();
  open_report_.problem = problem;

  auto conn = openConnection(file, options_.synchronous_full);
  if (!conn) {
    return conn.error();
  }
  db_ = *conn;
  if (auto r = exec(db_, kSchema); !r) {
    return r;
  }
  open_report_.salvaged = salvage(aside);
  return {};
}

int64_t Buffer::salvage(const fs::path& old_file) {
  // Best effort: copy every pending event that can still be read from the corrupt file, in
  // order, skipping ahead past unreadable stretches. Nothing is deleted from the old file.
  sqlite3* old = nullptr;
  if (sqlite3_open_v2(old_file.c_str(), &old, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(old);
    return 0;
  }
  sqlite3_stmt* sel = nullptr;
  sqlite3_stmt* ins = nullptr;
  int64_t copied = 0;
  if (sqlite3_prepare_v2(old,
                         "SELECT seq, id, type, prio, received_ms, body FROM events WHERE seq > ? "
                         "ORDER BY seq",
                         -1, &sel, nullptr) == SQLITE_OK &&
      sqlite3_prepare_v2(db_,
                         "INSERT OR IGNORE INTO events(seq, id, type, prio, received_ms, body) "
                         "VALUES(?,?,?,?,?,?)",
                         -1, &ins, nullptr) == SQLITE_OK) {
    (void)exec(db_, "BEGIN");
    int64_t after = 0;
    int64_t skip = 1;
    for (int errors = 0; errors < 32;) {
      sqlite3_reset(sel);
      sqlite3_bind_int64(sel, 1, after);
      int rc = 0;
      while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        after = sqlite3_column_int64(sel, 0);
        for (int i = 0; i < 6; ++i) {
          sqlite3_bind_value(ins, i + 1, sqlite3_column_value(sel, i));
        }
        if (sqlite3_step(ins) == SQLITE_DONE) {
          ++copied;
        }
        sqlite3_reset(ins);
      }
      if (rc == SQLITE_DONE) {
        break;
      }
      ++errors;
      after += skip;
      skip *= 4;
    }
    (void)exec(db_,
               "DELETE FROM counters;"
               "INSERT INTO counters SELECT prio, count(*), "
               "sum(length(body) + length(id) + length(type) + 40) FROM events GROUP BY prio;"
               "INSERT INTO counters VALUES(3, (SELECT coalesce(max(seq), 0) FROM events), 0);"
               "COMMIT");
  }
  sqlite3_finalize(sel);
  sqlite3_finalize(ins);
  sqlite3_close(old);
  return copied;
}

Result<void> Buffer::prepare() {
  st_ = std::make_unique<Statements>();
  auto& s = *st_;
  sqlite3* db = db_;
  for (auto [stmt, sql] : std::initializer_list<std::pair<Stmt*, const char*>>{
           {&s.begin, "BEGIN IMMEDIATE"},
           {&s.commit, "COMMIT"},
           {&s.rollback, "ROLLBACK"},
           {&s.savepoint, "SAVEPOINT request"},
           {&s.release, "RELEASE request"},
           {&s.rollback_to, "ROLLBACK TO request"},
           // An id already in the buffer, or a high-priority one delivered within the dedup
           // window, is not stored again: re-reading a POS file never yields a second event.
           {&s.insert,
            "INSERT INTO events(seq, id, type, prio, received_ms, body) "
            "SELECT ?1, ?2, ?3, ?4, ?5, ?6 "
            "WHERE NOT EXISTS (SELECT 1 FROM delivered_ids WHERE id = ?2) "
            "ON CONFLICT(id) DO NOTHING"},
           {&s.remember_delivered,
            "INSERT OR IGNORE INTO delivered_ids(id, delivered_ms) "
            "SELECT id, ? FROM events WHERE seq BETWEEN ? AND ? AND prio = 0"},
           {&s.forget_delivered, "DELETE FROM delivered_ids WHERE delivered_ms < ?"},
           {&s.delete_range,
            "DELETE FROM events WHERE seq BETWEEN ? AND ? "
            "RETURNING prio, length(body) + length(id) + length(type)"},
           {&s.copy_delivered,
            "INSERT OR IGNORE INTO delivered(seq, id, type, received_ms, delivered_ms, body) "
            "SELECT seq, id, type, received_ms, ?, body FROM events WHERE seq BETWEEN ? AND ?"},
           {&s.purge_delivered, "DELETE FROM delivered WHERE delivered_ms < ?"},
           {&s.copy_quarantine,
            "INSERT OR IGNORE INTO quarantine(seq, id, type, prio, received_ms, quarantined_ms, "
            "reason, body) SELECT seq, id, type, prio, received_ms, ?, ?, body FROM events "
            "WHERE seq BETWEEN ? AND ?"},
           {&s.select_low,
            "SELECT seq, received_ms, length(body) + length(id) + length(type) FROM events "
            "WHERE prio = 2 ORDER BY seq LIMIT 256"},
           {&s.delete_low, "DELETE FROM events WHERE prio = 2 AND seq <= ?"},
           {&s.save_counter,
            "INSERT INTO counters(prio, events, bytes) VALUES(?,?,?) "
            "ON CONFLICT(prio) DO UPDATE SET events = excluded.events, bytes = excluded.bytes"},
           {&s.oldest, "SELECT received_ms FROM events ORDER BY seq LIMIT 1"},
           {&s.page_count, "PRAGMA page_count"},
           {&s.freelist_count, "PRAGMA freelist_count"},
           {&s.incremental_vacuum, "PRAGMA incremental_vacuum(2048)"},
       }) {
    if (auto r = stmt->prepare(db, sql); !r) {
      return r;
    }
  }
  page_size_ = queryInt(db, "PRAGMA page_size");
  loadCounters();

  auto reader = openConnection(options_.dir / "buffer.db", options_.synchronous_full);
  if (!reader) {
    return reader.error();
  }
  reader_ = *reader;
  if (auto r = s.read_pending.prepare(
          reader_, "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?");
      !r) {
    return r;
  }
  std::lock_guard lock(mu_);
  // Seqs are never reused: the highest ever given is kept in counters (row 3), written in the
  // same transaction as the rows (cheaper than AUTOINCREMENT's extra table page per commit).
  s.next_seq =
      std::max({queryInt(db, "SELECT coalesce(max(seq), 0) FROM events"),
                queryInt(db, "SELECT coalesce(max(seq), 0) FROM delivered"), s.counter_last_seq}) +
      1;
  stats_.last_seq = s.next_seq - 1;
  stats_.quarantine_events = queryInt(db, "SELECT count(*) FROM quarantine");
  refreshStatsLocked();
  return {};
}

void Buffer::loadCounters() {
  auto& s = *st_;
  for (int p = 0; p < 3; ++p) {
    s.counter_events[p] = 0;
    s.counter_bytes[p] = 0;
  }
  s.counter_last_seq = 0;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT prio, events, bytes FROM counters", -1, &st, nullptr) ==
      SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) {
      const auto p = sqlite3_column_int64(st, 0);
      if (p >= 0 && p < 3) {
        s.counter_events[p] = sqlite3_column_int64(st, 1);
        s.counter_bytes[p] = sqlite3_column_int64(st, 2);
      } else if (p == 3) {
        s.counter_last_seq = sqlite3_column_int64(st, 1);
      }
    }
  }
  sqlite3_finalize(st);
}

bool Buffer::saveCounters() {
  auto& s = *st_;
  s.counter_last_seq = s.next_seq - 1;
  for (int p = 0; p < 4; ++p) {
    s.save_counter.bind(1, p);
    s.save_counter.bind(2, p < 3 ? s.counter_events[p] : s.counter_last_seq);
    s.save_counter.bind(3, p < 3 ? s.counter_bytes[p] : 0);
    if (!run(s.save_counter)) {
      return false;
    }
  }
  return true;
}

int64_t Buffer::usedBytes() const {
  return st_->counter_bytes[0] + st_->counter_bytes[1] + st_->counter_bytes[2];
}

int64_t Buffer::capBytes() {
  // The cap is the smaller of buffer.max_bytes and what the disk can still take without
  // eating into buffer.min_free_disk. The file is also hard-capped (max_page_count) just below
  // the free space, so SQLite itself can never wedge on a full disk.
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
    // The WAL lives beside the file: keep room for it to reach its usual size again.
    std::error_code ec;
    const auto wal = static_cast<int64_t>(fs::file_size(options_.dir / "buffer.db-wal", ec));
    const int64_t wal_room = std::max<int64_t>(0, kWalReserve - (ec ? 0 : wal));
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
    cap_cache_ = std::min(options_.max_bytes, usedBytes() + room);
  }
  return cap_cache_;
}

int64_t Buffer::evictLow(int64_t bytes_needed, EvictionReport& report) {
  auto& s = *st_;
  int64_t freed = 0;
  while (freed < bytes_needed) {
    int64_t last_seq = -1;
    int64_t n = 0;
    int64_t bytes = 0;
    int64_t first_ms = 0;
    int64_t last_ms = 0;
    while (freed + bytes < bytes_needed && s.select_low.step() == SQLITE_ROW) {
      last_seq = s.select_low.col(0);
      last_ms = s.select_low.col(1);
      if (n == 0) {
        first_ms = last_ms;
      }
      bytes += s.select_low.col(2) + kRowOverhead;
      ++n;
    }
    s.select_low.reset();
    if (n == 0) {
      break;
    }
    s.delete_low.bind(1, last_seq);
    if (!run(s.delete_low)) {
      break;
    }
    freed += bytes;
    s.counter_events[2] -= n;
    s.counter_bytes[2] -= bytes;
    if (report.events == 0) {
      report.oldest_received_ms = first_ms;
    }
    report.newest_received_ms = last_ms;
    report.events += n;
    report.bytes += bytes;
  }
  return freed;
}

Result<AppendCounts> Buffer::append(std::vector<StoredEvent> events) {
  if (events.empty()) {
    return AppendCounts{};
  }
  auto req = std::make_shared<Request>();
  req->events = std::move(events);
  for (const auto& e : req->events) {
    req->bytes += e.body.size();
  }
  auto fut = req->done.get_future();
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return makeError("stopping", "the agent is shutting down; retry later");
    }
    queue_.push_back(req);
  }
  cv_.notify_one();
  return fut.get();
}

void Buffer::acknowledge(int64_t first_seq, int64_t last_seq) {
  {
    std::lock_guard lock(mu_);
    ack_queue_.push_back(AckOp{first_seq, last_seq, {}});
    ++acks_enqueued_;
  }
  cv_.notify_one();
}

Result<int64_t> Buffer::retryQuarantine() {
  std::vector<StoredEvent> events;
  int64_t last_seq = 0;
  {
    std::lock_guard lock(reader_mu_);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(reader_,
                           "SELECT seq, id, type, prio, received_ms, body FROM quarantine "
                           "ORDER BY seq",
                           -1, &st, nullptr) != SQLITE_OK) {
      return makeError("io", sqliteError(reader_, "read the quarantine"));
    }
    int rc = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      StoredEvent e;
      last_seq = sqlite3_column_int64(st, 0);
      e.id = reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
      e.type = reinterpret_cast<const char*>(sqlite3_column_text(st, 2));
      e.priority = static_cast<Priority>(sqlite3_column_int(st, 3));
      e.received_at_ms = sqlite3_column_int64(st, 4);
      e.body.assign(static_cast<const char*>(sqlite3_column_blob(st, 5)),
                    static_cast<std::size_t>(sqlite3_column_bytes(st, 5)));
      events.push_back(std::move(e));
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
      return makeError("io", sqliteError(reader_, "read the quarantine"));
    }
  }
  if (events.empty()) {
    return int64_t{0};
  }
  const auto n = static_cast<int64_t>(events.size());
  if (auto appended = append(std::move(events)); !appended) {
    return appended.error();
  }
  {
    // Rare and small: done on the reader's connection rather than through the writer's queue.
    std::lock_guard lock(reader_mu_);
    const std::string sql = "DELETE FROM quarantine WHERE seq <= " + std::to_string(last_seq);
    if (sqlite3_exec(reader_, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
      return makeError("io", sqliteError(reader_, "empty the quarantine"));
    }
  }
  std::lock_guard lock(mu_);
  stats_.quarantine_events = std::max<int64_t>(0, stats_.quarantine_events - n);
  return n;
}

void Buffer::quarantine(int64_t first_seq, int64_t last_seq, std::string reason) {
  if (reason.empty()) {
    reason = "refused by the centre";
  }
  {
    std::lock_guard lock(mu_);
    ack_queue_.push_back(AckOp{first_seq, last_seq, std::move(reason)});
    ++acks_enqueued_;
  }
  cv_.notify_one();
}

void Buffer::syncAcknowledgements() {
  std::unique_lock lock(mu_);
  const uint64_t target = acks_enqueued_;
  acked_cv_.wait(lock, [&] { return acks_committed_ >= target || writer_done_; });
}

int64_t Buffer::waitForNewer(int64_t seq, int timeout_ms) {
  std::unique_lock lock(mu_);
  newer_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                     [&] { return stats_.last_seq > seq || stopping_; });
  return stats_.last_seq;
}

Result<std::vector<PendingEvent>> Buffer::readPending(int64_t after_seq, std::size_t max_events,
                                                      std::size_t max_bytes) {
  std::lock_guard lock(reader_mu_);
  auto& s = st_->read_pending;
  s.bind(1, after_seq);
  s.bind(2, static_cast<int64_t>(max_events));
  std::vector<PendingEvent> out;
  std::size_t bytes = 0;
  int rc = 0;
  while ((rc = s.step()) == SQLITE_ROW) {
    const auto* text = static_cast<const char*>(sqlite3_column_blob(s.get(), 1));
    const auto len = static_cast<std::size_t>(sqlite3_column_bytes(s.get(), 1));
    if (!out.empty() && bytes + len > max_bytes) {
      break;
    }
    out.push_back(PendingEvent{s.col(0), std::string(text, len)});
    bytes += len;
  }
  const bool failed = rc != SQLITE_ROW && rc != SQLITE_DONE;
  std::string err = failed ? sqlite3_errmsg(reader_) : "";
  s.reset();
  if (failed) {
    return makeError("io", "reading pending events: " + err);
  }
  return out;
}

void Buffer::writerLoop() {
  std::vector<std::shared_ptr<Request>> group;
  std::vector<AckOp> acks;
  for (;;) {
    uint64_t acks_taken = 0;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || !ack_queue_.empty(); });
      if (queue_.empty() && ack_queue_.empty()) {
        break;  // stopping, nothing left
      }
      std::size_t n = 0;
      while (!queue_.empty() &&
             (group.empty() || n + queue_.front()->events.size() <= options_.max_group_events)) {
        n += queue_.front()->events.size();
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      acks.swap(ack_queue_);
      acks_taken = acks_enqueued_;
    }
    const bool acks_done = commitGroup(group, acks);
    group.clear();
    if (!acks_done) {
      // The disk is full or failing: keep the acknowledgements for the next round (they are
      // what frees the space) and do not spin on it.
      {
        std::lock_guard lock(mu_);
        ack_queue_.insert(ack_queue_.begin(), acks.begin(), acks.end());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    } else {
      std::lock_guard lock(mu_);
      acks_committed_ = acks_taken;
    }
    acks.clear();
    acked_cv_.notify_all();
    newer_cv_.notify_all();
  }
  std::lock_guard lock(mu_);
  writer_done_ = true;
  acked_cv_.notify_all();
}

bool Buffer::commitGroup(std::vector<std::shared_ptr<Request>>& group, std::vector<AckOp>& acks) {
  auto& s = *st_;
  std::vector<std::optional<Result<AppendCounts>>> results(group.size());
  const int64_t seq_at_begin = s.next_seq;
  auto failAll = [&](const Error& e) {
    for (std::size_t i = 0; i < group.size(); ++i) {
      group[i]->done.set_value(e);
    }
    loadCounters();
    st_->next_seq = seq_at_begin;
  };
  if (!run(s.begin)) {
    failAll(makeError("io", sqliteError(db_, "begin")));
    return acks.empty();
  }
  const int64_t now = nowMs();
  uint64_t acked = 0;
  uint64_t quarantined = 0;
  for (const auto& op : acks) {
    const int64_t first = op.first_seq;
    const int64_t last = op.last_seq;
    const bool to_quarantine = !op.quarantine_reason.empty();
    if (to_quarantine) {
      s.copy_quarantine.bind(1, now);
      s.copy_quarantine.bind(2, op.quarantine_reason);
      s.copy_quarantine.bind(3, first);
      s.copy_quarantine.bind(4, last);
      (void)run(s.copy_quarantine);
    }
    // Delivered POS ids are remembered for kDedupWindowMs, so that the same transaction read
    // again (a file dropped twice, a crash between commit and move) is not sent again.
    if (!to_quarantine) {
      s.remember_delivered.bind(1, now);
      s.remember_delivered.bind(2, first);
      s.remember_delivered.bind(3, last);
      (void)run(s.remember_delivered);
    }
    if (!to_quarantine && options_.retain_delivered_s > 0) {
      s.copy_delivered.bind(1, now);
      s.copy_delivered.bind(2, first);
      s.copy_delivered.bind(3, last);
      (void)run(s.copy_delivered);
    }
    s.delete_range.bind(1, first);
    s.delete_range.bind(2, last);
    while (s.delete_range.step() == SQLITE_ROW) {
      const auto p = s.delete_range.col(0);
      if (p >= 0 && p < 3) {
        s.counter_events[p] -= 1;
        s.counter_bytes[p] -= s.delete_range.col(1) + kRowOverhead;
      }
      ++(to_quarantine ? quarantined : acked);
    }
    s.delete_range.reset();
  }
  if (now - dedup_purged_ms_ >= 600000) {
    dedup_purged_ms_ = now;
    s.forget_delivered.bind(1, now - kDedupWindowMs);
    (void)run(s.forget_delivered);
  }
  if (options_.retain_delivered_s > 0 && now - purged_ms_ >= 10000) {
    purged_ms_ = now;  // expired delivered events go at most every 10 s, by index
    s.purge_delivered.bind(1, now - options_.retain_delivered_s * 1000);
    (void)run(s.purge_delivered);
  }

  EvictionReport evicted;
  std::vector<std::pair<int64_t, const StoredEvent*>> inserted;
  uint64_t stored_total = 0;
  uint64_t dup_total = 0;
  uint64_t rejected = 0;
  int64_t max_seq = 0;
  for (std::size_t i = 0; i < group.size(); ++i) {
    auto& events = group[i]->events;
    int64_t add = 0;
    bool essential = true;  // agent.* reports may use a small reserve above the cap
    for (const auto& e : events) {
      add += rowCost(e);
      essential = essential && e.type.rfind("agent.", 0) == 0;
    }
    int64_t cap = capBytes();
    if (essential) {
      cap += std::max<int64_t>(64 << 10, cap / 100);
    }
    if (usedBytes() + add > cap) {
      evictLow(usedBytes() + add - cap, evicted);
      if (usedBytes() + add > cap) {
        ++rejected;
        results[i] = makeError("full", "the buffer is full (" + std::to_string(usedBytes()) +
                                           " of " + std::to_string(cap) + " bytes); retry later");
        continue;
      }
    }
    int64_t delta_events[3] = {0, 0, 0};
    int64_t delta_bytes[3] = {0, 0, 0};
    AppendCounts counts;
    int rc = SQLITE_DONE;
    const int64_t seq_at_savepoint = s.next_seq;
    (void)run(s.savepoint);
    for (const auto& e : events) {
      s.insert.bind(1, s.next_seq);
      s.insert.bind(2, e.id);
      s.insert.bind(3, e.type);
      s.insert.bind(4, static_cast<int64_t>(e.priority));
      s.insert.bind(5, e.received_at_ms);
      s.insert.bind(6, e.body);
      rc = s.insert.step();
      s.insert.reset();
      if (rc != SQLITE_DONE) {
        break;
      }
      if (sqlite3_changes(db_) == 1) {
        const auto p = static_cast<int>(e.priority);
        delta_events[p] += 1;
        delta_bytes[p] += rowCost(e);
        ++counts.stored;
        max_seq = s.next_seq;
        inserted.emplace_back(s.next_seq, &e);
        ++s.next_seq;
      } else {
        ++counts.duplicates;
      }
    }
    if (rc != SQLITE_DONE) {
      const int primary = rc & 0xff;
      const std::string msg = sqliteError(db_, "storing events");
      inserted.resize(inserted.size() - counts.stored);
      s.next_seq = seq_at_savepoint;
      (void)run(s.rollback_to);
      (void)run(s.release);
      if (primary == SQLITE_FULL) {
        ++rejected;
        cap_cache_ = 0;  // re-read the disk next time
        results[i] = makeError("full", "the disk is full (" + msg + "); retry later");
      } else {
        results[i] = makeError("io", msg);
      }
      continue;
    }
    (void)run(s.release);
    for (int p = 0; p < 3; ++p) {
      s.counter_events[p] += delta_events[p];
      s.counter_bytes[p] += delta_bytes[p];
    }
    stored_total += counts.stored;
    dup_total += counts.duplicates;
    results[i] = counts;
  }

  if (!saveCounters() || !run(s.commit)) {
    const bool disk_full = (sqlite3_errcode(db_) & 0xff) == SQLITE_FULL;
    const std::string msg = sqliteError(db_, "commit");
    (void)run(s.rollback);
    spdlog::error("buffer: {}", msg);
    failAll(makeError(disk_full ? "full" : "io", msg));
    {
      std::lock_guard lock(mu_);
      stats_.rejected_full += group.size();
    }
    if (disk_full) {
      // Fold the WAL back into the file and shrink it, then try the acknowledgements alone:
      // deleting delivered events is what makes room again.
      (void)exec(db_, "PRAGMA wal_checkpoint(TRUNCATE)");
      cap_cache_ = 0;
      if (!group.empty() && !acks.empty()) {
        std::vector<std::shared_ptr<Request>> none;
        return commitGroup(none, acks);
      }
    }
    return acks.empty();
  }

  {
    std::lock_guard lock(mu_);
    if (max_seq > stats_.last_seq) {
      stats_.last_seq = max_seq;
    }
    stats_.appended += stored_total;
    stats_.duplicates += dup_total;
    stats_.acknowledged += acked;
    stats_.quarantined += quarantined;
    stats_.quarantine_events += static_cast<int64_t>(quarantined);
    stats_.rejected_full += rejected;
    stats_.commits += 1;
    if (evicted.events > 0) {
      stats_.evicted += static_cast<uint64_t>(evicted.events);
      if (evictions_.events == 0) {
        evictions_.oldest_received_ms = evicted.oldest_received_ms;
      }
      evictions_.newest_received_ms = evicted.newest_received_ms;
      evictions_.events += evicted.events;
      evictions_.bytes += evicted.bytes;
    }
    refreshStatsLocked();
    for (const auto& [seq, e] : inserted) {
      recent_.push_back(RecentEvent{seq, e->type, e->body});
    }
    while (recent_.size() > kRecentEvents) {
      recent_.pop_front();
    }
  }
  for (std::size_t i = 0; i < group.size(); ++i) {
    group[i]->done.set_value(std::move(*results[i]));
  }
  return true;
}

void Buffer::refreshStatsLocked() {
  auto& s = *st_;
  stats_.pending_bytes = 0;
  for (int p = 0; p < 3; ++p) {
    stats_.pending[p] = s.counter_events[p];
    stats_.pending_bytes += s.counter_bytes[p];
  }
  stats_.oldest_pending_ms = 0;
  if (s.oldest.step() == SQLITE_ROW) {
    stats_.oldest_pending_ms = s.oldest.col(0);
  }
  s.oldest.reset();
  stats_.used_bytes = usedBytes();
  stats_.file_bytes = file_bytes_;
  stats_.cap_bytes = cap_cache_;
}

void Buffer::returnEvictions(const EvictionReport& report) {
  if (report.events == 0) {
    return;
  }
  std::lock_guard lock(mu_);
  if (evictions_.events == 0 || report.oldest_received_ms < evictions_.oldest_received_ms) {
    evictions_.oldest_received_ms = report.oldest_received_ms;
  }
  evictions_.newest_received_ms =
      std::max(evictions_.newest_received_ms, report.newest_received_ms);
  evictions_.events += report.events;
  evictions_.bytes += report.bytes;
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
  return stats_;
}

void Buffer::close() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !writer_.joinable()) {
      return;
    }
    stopping_ = true;
  }
  cv_.notify_all();
  newer_cv_.notify_all();
  if (writer_.joinable()) {
    writer_.join();
  }
  if (st_ && db_ != nullptr) {
    // Give back space left by a drain, a little at a time, and fold the WAL into the file.
    if (st_->counter_events[0] + st_->counter_events[1] + st_->counter_events[2] == 0) {
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
    (void)exec(db_, "PRAGMA wal_checkpoint(TRUNCATE)");
    if (sqlite3_close(db_) == SQLITE_OK) {
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
