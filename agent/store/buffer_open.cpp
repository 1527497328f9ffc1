// Opening, checking and recovering the buffer's files (see buffer.h and docs/reliability.md):
// permission and I/O problems are told apart from corruption, and a corrupt file is salvaged
// crash-safely before it is moved aside.
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "agent/api/thread_name.h"
#include "agent/api/uuid.h"
#include "agent/store/body_codec.h"
#include "agent/store/buffer.h"
#include "agent/store/buffer_sqlite.h"
#include "agent/store/schema.h"
#include "agent/store/wal_vfs.h"

namespace omniedge::store {

// ---- the helpers buffer_sqlite.h declares ------------------------------------------------------

namespace detail {

namespace fs = std::filesystem;

// The WAL file is cut back to this when SQLite rewinds it (see maybeCheckpoint in buffer.cpp).
constexpr int64_t kJournalSizeLimit = 8LL << 20;

// The page size of a new buffer file (an existing one keeps its own: it cannot change without a
// VACUUM). Every commit writes each page it touched whole into the WAL, and a small commit (a few
// single-event POSTs) touches a table leaf, one to three id-index leaves and, every few commits,
// page 1, the pointer map and an interior page, however little it adds: 2 KiB pages make each of
// those half as large. Packed events are ~400 bytes, so a leaf still holds ~4. Measured against
// 4 KiB (docs/benchmarks.md, "Flash wear"): write_bytes per single-event POST at 1k/s -26%, with
// arrays of 100 -4%; the price is ~9% of requests/s under a saturating HTTP load (twice as
// many WAL frames, each two pwrite calls). 1 KiB pages would save a little more on single POSTs
// and cost more again.
constexpr const char* kNewFilePragmas = "PRAGMA page_size=2048;PRAGMA auto_vacuum=INCREMENTAL;";

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string sqliteError(sqlite3* db, const std::string& what) {
  return what + ": " + (db != nullptr ? sqlite3_errmsg(db) : "out of memory");
}

Failure classify(int rc) {
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return Failure::kCorrupt;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_CANTOPEN:
      return Failure::kPermission;
    case SQLITE_FULL:
      return Failure::kFull;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Failure::kBusy;
    default:
      return Failure::kIo;
  }
}

const char* codeOf(Failure f) {
  switch (f) {
    case Failure::kCorrupt:
      return "corrupt";
    case Failure::kPermission:
      return "permission";
    case Failure::kFull:
      return "full";
    case Failure::kBusy:
      return "busy";
    case Failure::kIo:
      break;
  }
  return "io";
}

ExecResult execRc(sqlite3* db, const char* sql) {
  char* msg = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &msg);
  if (rc == SQLITE_OK) {
    return {};
  }
  std::string text = msg != nullptr ? msg : sqlite3_errmsg(db);
  sqlite3_free(msg);
  return ExecResult{sqlite3_extended_errcode(db),
                    std::string("SQLite: ") + text + " (in: " + sql + ")"};
}

Result<void> exec(sqlite3* db, const char* sql) {
  if (auto r = execRc(db, sql); !r) {
    return makeError(codeOf(classify(r.rc)), r.message);
  }
  return {};
}

// One integer from a query; nullopt when it cannot be read.
std::optional<int64_t> queryInt(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  std::optional<int64_t> v;
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK) {
    const int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      v = sqlite3_column_int64(st, 0);
    } else if (rc == SQLITE_DONE) {
      v = 0;
    }
  }
  sqlite3_finalize(st);
  return v;
}

bool hasRunColumn(sqlite3* db) { return schema::createSqlContains(db, "events", ", n INTEGER"); }

// The highest seq `db` has ever given; nullopt when it cannot be read.
std::optional<int64_t> highWater(sqlite3* db) {
  int64_t high = 0;
  // The last row of events holds its highest seq (rows never overlap): read by the table's
  // order, where max(seq + n - 1) would read every row.
  for (const char* sql :
       {"SELECT coalesce(max(events), 0) FROM counters WHERE prio = 3",
        hasRunColumn(db) ? "SELECT seq + n - 1 FROM events ORDER BY seq DESC LIMIT 1"
                         : "SELECT coalesce(max(seq), 0) FROM events",
        "SELECT coalesce(max(seq), 0) FROM delivered",
        "SELECT coalesce(max(seq), 0) FROM quarantine"}) {
    auto v = queryInt(db, sql);
    if (!v) {
      return std::nullopt;
    }
    high = std::max(high, *v);
  }
  return high;
}

// How an event is stored: an id already in the buffer, or a high-priority one delivered within
// the dedup window, is not stored again (re-reading a POS file never yields a second event).
extern const char* const kInsertEventSql;
const char* const kInsertEventSql =
    "INSERT INTO events(seq, id, type, prio, received_ms, body) "
    "SELECT ?1, ?2, ?3, ?4, ?5, ?6 "
    "WHERE NOT EXISTS (SELECT 1 FROM delivered_ids WHERE id = ?2) "
    "ON CONFLICT DO NOTHING";

}  // namespace detail

namespace {

namespace fs = std::filesystem;
using detail::classify;
using detail::codeOf;
using detail::exec;
using detail::execRc;
using detail::ExecResult;
using detail::Failure;
using detail::highWater;
using detail::kFileName;
using detail::kInsertEventSql;
using detail::nowMs;
using detail::queryInt;
using detail::sqliteError;

// Quick-check the whole file at every start while it is this small (milliseconds); a larger
// file is checked at start only after an unclean shutdown (see docs/architecture.md).
constexpr int64_t kAlwaysCheckBelow = 64LL << 20;
const char* const kCorruptPrefix = "buffer.db.corrupt-";
const char* const kSalvagingPrefix = "buffer.db.salvage-";  // being written: incomplete
const char* const kSalvagedPrefix = "buffer.db.salvaged-";  // complete and synced

bool startsWith(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

std::string userName(uid_t uid) {
  passwd pw{};
  passwd* found = nullptr;
  char buf[1024];
  if (getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found != nullptr) {
    return found->pw_name;
  }
  return std::to_string(uid);
}

std::string groupName(gid_t gid) {
  group gr{};
  group* found = nullptr;
  char buf[1024];
  if (getgrgid_r(gid, &gr, buf, sizeof buf, &found) == 0 && found != nullptr) {
    return found->gr_name;
  }
  return std::to_string(gid);
}

// A permission problem on `path`, said so that a technician can fix it: who owns it, what mode
// it has, who we are, and the command that fixes it. Nothing is moved or changed.
Error permissionError(const fs::path& path, const fs::path& dir, const std::string& what) {
  struct stat st {};
  std::string owner = "unknown owner";
  std::string mode;
  if (::stat(path.c_str(), &st) == 0) {
    owner = userName(st.st_uid) + ":" + groupName(st.st_gid) + " (uid " +
            std::to_string(st.st_uid) + ")";
    char m[8];
    std::snprintf(m, sizeof m, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    mode = m;
  }
  const uid_t me = geteuid();
  const std::string us = userName(me);
  const std::string our_group = groupName(getegid());
  std::string fix;
  if (::stat(path.c_str(), &st) == 0 && st.st_uid != me) {
    fix = "chown -R " + us + ":" + our_group + " " + dir.string() +
          " (the files were probably created by a run as another user, e.g. root), or run "
          "omniedge as " +
          userName(st.st_uid);
  } else {
    fix = "chmod u+rw" + std::string(fs::is_directory(path) ? "x " : " ") + path.string();
  }
  return makeError("permission",
                   "the buffer cannot be used: " + path.string() + " " + what +
                       "; it is owned by " + owner + (mode.empty() ? "" : " with mode " + mode) +
                       ", and omniedge runs as " + us + " (uid " + std::to_string(me) +
                       "). Nothing was moved or changed. Fix: " + fix +
                       ", then start omniedge again");
}

// Every file of the buffer that exists must be readable and writable by us, and the data dir
// writable (SQLite creates the -wal and -shm beside the file). SQLite itself would open a file
// it cannot write read-only and fail later with "attempt to write a readonly database", which
// must never be mistaken for corruption.
Result<void> checkAccess(const fs::path& dir) {
  for (const fs::path& p :
       {dir, dir / kFileName, dir / "buffer.db-wal", dir / "buffer.db-shm", dir / "buffer.lock"}) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) {
      if (errno == ENOENT) {
        continue;
      }
      if (errno == EACCES) {
        return permissionError(dir, dir, "cannot be searched");
      }
      return makeError("io", "cannot inspect " + p.string() + ": " + std::strerror(errno));
    }
    const bool is_dir = S_ISDIR(st.st_mode);
    const int need = R_OK | W_OK | (is_dir ? X_OK : 0);
    if (faccessat(AT_FDCWD, p.c_str(), need, AT_EACCESS) == 0) {
      continue;
    }
    if (errno == EROFS) {
      return makeError("permission", "the buffer cannot be used: the file system holding " +
                                         p.string() +
                                         " is mounted read-only. Nothing was moved or changed. "
                                         "Fix: give omniedge a writable data.dir");
    }
    if (errno == EACCES || errno == EPERM) {
      return permissionError(p, dir, is_dir ? "is not writable" : "is not readable and writable");
    }
    return makeError("io", "cannot check " + p.string() + ": " + std::strerror(errno));
  }
  return {};
}

// fsync of a file or a directory (after a rename, so that the new name survives a power cut).
bool syncPath(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

// The tables beside `events`, the same in every version since 1.
constexpr const char* kOtherTables = R"sql(
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
CREATE INDEX IF NOT EXISTS quarantine_age ON quarantine(quarantined_ms);
CREATE INDEX IF NOT EXISTS quarantine_id ON quarantine(id);
)sql";

// Today's tables. `made` = 1: Ingest made the id (IdOrigin::kAgent), unique by construction, so
// the row has no entry in the id index, the partial index events_given_id (schema version 3). A
// commit of a few single events wrote 4.3 pages, 2 of them the id index's, rebalanced at its
// right edge (docs/benchmarks.md, "Flash wear"). `made` is on the line of `body` as ALTER TABLE
// ... ADD COLUMN leaves an upgraded file's declaration: every file has the same. `n` (schema
// version 6): the events the row holds, at seqs seq .. seq + n - 1 (a row of several events,
// body_codec.h); 1 but for rows of several.
const std::string kSchema = std::string(R"sql(
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  type TEXT NOT NULL,
  prio INTEGER NOT NULL,
  received_ms INTEGER NOT NULL,
  body TEXT NOT NULL, made INTEGER NOT NULL DEFAULT 0, n INTEGER NOT NULL DEFAULT 1);
CREATE UNIQUE INDEX IF NOT EXISTS events_given_id ON events(id) WHERE made = 0;
)sql") + kOtherTables;

// The tables as schema versions 1 and 2 had them, for the migrations from before version 3.
const std::string kSchemaV1 = std::string(R"sql(
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL,
  prio INTEGER NOT NULL,
  received_ms INTEGER NOT NULL,
  body TEXT NOT NULL);
)sql") + kOtherTables;

// SQLite's documented procedure for a schema change that leaves the on-disk format alone
// (lang_altertable.html, "making other kinds of table schema changes"): `update`, an UPDATE of
// sqlite_master that must change exactly `rows` rows, under writable_schema, then a new
// schema_version so that every connection reads the schema again. That writes a page or two,
// where copying a table would write every pending event once more into the WAL: on a store with
// a long backlog and a nearly full disk the copy could fail "full" and keep the agent from
// starting at all. In a savepoint: false, and nothing changed, when SQLite does not let the
// schema be written (SQLITE_DBCONFIG_DEFENSIVE) or the rows were not as expected; then the
// caller copies the table.
bool editSchemaInPlace(sqlite3* db, const char* update, int rows) {
  const auto version = queryInt(db, "PRAGMA schema_version");
  if (!version || !schema::exec(db, "SAVEPOINT edit_schema")) {
    return false;
  }
  bool edited = false;
  if (schema::exec(db, "PRAGMA writable_schema = ON")) {
    edited = schema::exec(db, update).has_value() && sqlite3_changes(db) == rows;
    const std::string bump = "PRAGMA schema_version = " + std::to_string(*version + 1);
    edited = edited && schema::exec(db, bump.c_str()).has_value();
    (void)schema::exec(db, "PRAGMA writable_schema = OFF");
  }
  if (!edited) {
    (void)schema::exec(db, "ROLLBACK TO edit_schema");
  }
  (void)schema::exec(db, "RELEASE edit_schema");
  return edited;
}

// AUTOINCREMENT changes only how SQLite picks a new rowid, not how the table is stored: its
// declaration is edited in place.
bool dropAutoincrementInPlace(sqlite3* db) {
  return editSchemaInPlace(db,
                           "UPDATE sqlite_master SET sql = replace(sql, "
                           "'seq INTEGER PRIMARY KEY AUTOINCREMENT', 'seq INTEGER PRIMARY KEY') "
                           "WHERE type = 'table' AND name = 'events'",
                           1) &&
         !schema::createSqlContains(db, "events", "AUTOINCREMENT");
}

// Where a step cannot edit the events table's declaration in place (SQLite refuses schema
// writes: SQLITE_DBCONFIG_DEFENSIVE), the table is renamed, `create_sql` makes the new one and
// the rows are copied into it in seq order (`made` left 0 where the new table has it: given).
Result<void> copyEventsInto(sqlite3* db, const std::string& create_sql) {
  if (auto r = schema::exec(db,
                            "ALTER TABLE events RENAME TO events_old;"
                            "DROP INDEX IF EXISTS events_low;");
      !r) {
    return r;
  }
  if (auto r = schema::exec(db, create_sql.c_str()); !r) {
    return r;
  }
  return schema::exec(db,
                      "INSERT INTO events(seq, id, type, prio, received_ms, body) "
                      "SELECT seq, id, type, prio, received_ms, body FROM events_old "
                      "ORDER BY seq;"
                      "DROP TABLE events_old;");
}

// Version 0 is every buffer made before files carried a version; they differ in what is there
// (tests/fixtures/schema/README.md has one file of each): 7bdb017 gave events.seq AUTOINCREMENT
// (the highest seq ever given in sqlite_sequence) and had no delivered_ids and no quarantine;
// 359d2e8 added the delivered_age index; 865295e dropped AUTOINCREMENT (the highest seq in
// counters row 3) and added delivered_ids; bf9d976 the quarantine, ac89e2e its indexes.
Result<void> bufferToV1(sqlite3* db) {
  // Missing tables and indexes: every statement of kSchemaV1 is CREATE ... IF NOT EXISTS.
  if (auto r = schema::exec(db, kSchemaV1.c_str()); !r) {
    return r;
  }
  if (schema::createSqlContains(db, "events", "AUTOINCREMENT")) {
    // Seqs are never reused: the highest one ever given goes where the writer looks for it.
    if (auto r = schema::exec(
            db,
            "INSERT INTO counters(prio, events, bytes) "
            "SELECT 3, coalesce(max(seq), 0), 0 FROM sqlite_sequence WHERE name = 'events' "
            "ON CONFLICT(prio) DO UPDATE SET events = max(events, excluded.events);"
            "DELETE FROM sqlite_sequence WHERE name = 'events';");
        !r) {
      return r;
    }
    // Then events becomes today's table (AUTOINCREMENT writes one more page at every commit).
    if (dropAutoincrementInPlace(db)) {
      return {};
    }
    return copyEventsInto(db, kSchemaV1);
  }
  return {};
}

// A step that changes no table: its version alone keeps an older omniedge from opening a file
// whose rows it would misread (it refuses the newer file). Version 2: bodies may be packed (one
// zstd frame as a BLOB, body_codec.h), which an older omniedge would send as if they were the
// JSON. Version 4: bodies are packed as LZ4 blocks, which a version-3 omniedge would take for
// damaged zstd frames and quarantine; bodies packed with zstd stay as they are and read on.
Result<void> versionOnly(sqlite3* /*db*/) { return {}; }

// Whether the UNIQUE constraint's own index on events.id could become events_given_id in place:
// the column `made` is there and 0 in every row (so every row belongs in the partial index,
// and is in it), the table's declaration loses UNIQUE and the index is renamed and given its
// WHERE, in one statement (editSchemaInPlace). No row and no index entry is written again.
bool uniqueIdToPartialInPlace(sqlite3* db) {
  const auto autoindex = queryInt(
      db,
      "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND "
      "name = 'sqlite_autoindex_events_1' AND sql IS NULL");
  return autoindex == 1 && schema::createSqlContains(db, "events", "id TEXT NOT NULL UNIQUE,") &&
         editSchemaInPlace(
             db,
             "UPDATE sqlite_master SET "
             "sql = CASE type WHEN 'table' THEN replace(sql, "
             "'id TEXT NOT NULL UNIQUE,', 'id TEXT NOT NULL,') ELSE "
             "'CREATE UNIQUE INDEX events_given_id ON events(id) WHERE made = 0' END, "
             "name = CASE type WHEN 'table' THEN name ELSE 'events_given_id' END "
             "WHERE (type = 'table' AND name = 'events') OR "
             "(type = 'index' AND name = 'sqlite_autoindex_events_1')",
             2) &&
         !schema::createSqlContains(db, "events", "UNIQUE") &&
         queryInt(db, "SELECT count(*) FROM sqlite_master WHERE name = 'events_given_id'") == 1;
}

// Version 3: ids Ingest made itself are stored without an id index entry (kSchema). The rows
// already there count as given (`made` = 0), so the constraint's index is kept as the partial
// one; where the schema cannot be edited, the table is copied instead.
Result<void> bufferToV3(sqlite3* db) {
  // Added here, so 0 in every row; a column that was there already (a file whose version was
  // set back by hand) may hold anything: then the table is copied, every row as given.
  const bool added = !schema::createSqlContains(db, "events", "made INTEGER");
  if (added) {
    if (auto r = schema::exec(db, "ALTER TABLE events ADD COLUMN made INTEGER NOT NULL DEFAULT 0");
        !r) {
      return r;
    }
  }
  if (schema::createSqlContains(db, "events", "UNIQUE") &&
      !(added && uniqueIdToPartialInPlace(db))) {
    return copyEventsInto(db, kSchema);
  }
  return schema::exec(db, kSchema.c_str());
}

// Version 6: a row may hold several events (events.n, body_codec.h's packRun), which an older
// omniedge would send as one event. Rows already there hold one each.
Result<void> bufferToV6(sqlite3* db) {
  if (detail::hasRunColumn(db)) {
    return {};
  }
  return schema::exec(db, "ALTER TABLE events ADD COLUMN n INTEGER NOT NULL DEFAULT 1");
}

constexpr schema::Migration kBufferMigrations[] = {
    {1, "one layout for every earlier buffer: no AUTOINCREMENT, delivered_ids, quarantine",
     bufferToV1},
    {2, "bodies may be stored packed (zstd with the agent's dictionary, as a BLOB)", versionOnly},
    {3, "ids the agent made itself are stored without an entry in the id index", bufferToV3},
    {4, "bodies may be stored packed as LZ4 blocks (with the agent's dictionary)", versionOnly},
    {5, "packed bodies may leave out the envelope's id, which the row's id column holds",
     versionOnly},
    {6, "a row may hold several events of one request (events.n)", bufferToV6},
};
static_assert(std::size(kBufferMigrations) == schema::kBuffer &&
              kBufferMigrations[schema::kBuffer - 1].to == schema::kBuffer);

// Reads the rows of `sql` (its one parameter: the first seq to read, `seq >= ?`) in seq order,
// stepping over stretches SQLite cannot read (at most 32 of them); calls `row` for each, and
// `skipped(first, last)` for each stretch stepped over (last = INT64_MAX when it gave up).
// Past an error, ever larger steps find a seq from which reading works again, then halving
// goes back to the smallest such seq: only the seqs of the unreadable pages are skipped. (Steps
// alone skipped the readable rows they jumped over: 85 seqs lost for 12 rows on two overwritten
// pages, tests/fault/fiu_test.cpp.)
// A row may hold several seqs (events' rows of several events: `max_span` > 1, the row's
// count in column `span_col`): reading goes on after the last seq of the last row read, and a
// stretch stepped over ends where the next row read starts, or up to max_span - 1 seqs past the
// first readable seq (an unreadable row there may have held up to that many; the seek for that
// seq went past it).
// False only when `row` failed (the destination could not be written).
template <class F, class G>
bool readBySeq(sqlite3* src, const char* sql, F row, G skipped, int64_t max_span = 1,
               int span_col = 0) {
  sqlite3_stmt* sel = nullptr;
  if (sqlite3_prepare_v2(src, sql, -1, &sel, nullptr) != SQLITE_OK) {
    sqlite3_finalize(sel);
    return true;  // the table itself is unreadable: nothing to copy from it
  }
  // Whether reading the rows from seq `from` on starts without an error. (`seq >= from`, not
  // `seq > from - 1`: SQLite seeks to the bound itself, and a bound that is the last seq of an
  // overwritten page would land there and fail although the next row is sound.)
  auto readableFrom = [&](int64_t from) {
    sqlite3_reset(sel);
    sqlite3_bind_int64(sel, 1, from);
    const int rc = sqlite3_step(sel);
    return rc == SQLITE_ROW || rc == SQLITE_DONE;
  };
  constexpr int64_t kMaxStep = int64_t{1} << 40;
  int64_t after = 0;
  bool ok = true;
  // A stretch stepped over, told once the next row read (or the end) says where it ends.
  std::optional<std::pair<int64_t, int64_t>> open_skip;
  auto closeSkip = [&](int64_t next_row) {
    if (open_skip) {
      skipped(open_skip->first, std::min(next_row - 1, open_skip->second + max_span - 1));
      open_skip.reset();
    }
  };
  for (int errors = 0; errors < 32;) {
    sqlite3_reset(sel);
    sqlite3_bind_int64(sel, 1, after + 1);
    int rc = 0;
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
      const int64_t seq = sqlite3_column_int64(sel, 0);
      closeSkip(seq);
      after = seq;
      if (max_span > 1) {
        after += std::clamp<int64_t>(sqlite3_column_int64(sel, span_col), 1, max_span) - 1;
      }
      if (!row(sel)) {
        ok = false;
        break;
      }
    }
    if (!ok || rc == SQLITE_DONE) {
      break;
    }
    ++errors;
    int64_t bad = after + 1;  // reading from it fails
    int64_t good = -1;        // reading from it works
    for (int64_t step = 1; step <= kMaxStep; step *= 4) {
      if (readableFrom(after + 1 + step)) {
        good = after + 1 + step;
        break;
      }
      bad = after + 1 + step;
    }
    if (errors == 32 || good < 0) {
      closeSkip(std::numeric_limits<int64_t>::max());
      skipped(after + 1, std::numeric_limits<int64_t>::max());
      break;
    }
    while (good - bad > 1) {
      const int64_t mid = bad + (good - bad) / 2;
      (readableFrom(mid) ? good : bad) = mid;
    }
    closeSkip(std::numeric_limits<int64_t>::max());
    open_skip.emplace(after + 1, good - 1);
    after = good - 1;
  }
  closeSkip(std::numeric_limits<int64_t>::max());
  sqlite3_finalize(sel);
  return ok;
}

template <class F>
bool readBySeq(sqlite3* src, const char* sql, F row) {
  return readBySeq(src, sql, row, [](int64_t, int64_t) {});
}

// Seq ranges as text for the meta table: "1-5,9-9".
std::string rangesText(const SeqRanges& ranges) {
  std::string out;
  for (const auto& [a, b] : ranges) {
    out += (out.empty() ? "" : ",") + std::to_string(a) + "-" + std::to_string(b);
  }
  return out;
}

SeqRanges parseRanges(const std::string& text) {
  SeqRanges out;
  std::size_t from = 0;
  while (from < text.size()) {
    std::size_t comma = text.find(',', from);
    if (comma == std::string::npos) {
      comma = text.size();
    }
    const std::string item = text.substr(from, comma - from);
    const auto dash = item.find('-');
    if (dash != std::string::npos) {
      const int64_t a = std::atoll(item.substr(0, dash).c_str());
      const int64_t b = std::atoll(item.substr(dash + 1).c_str());
      if (a >= 1 && b >= a) {
        out.emplace_back(a, b);
      }
    }
    from = comma + 1;
  }
  return out;
}

// One value of the meta table ("" when absent or unreadable).
std::string metaValue(sqlite3* db, const char* key) {
  std::string v;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?", -1, &st, nullptr) ==
      SQLITE_OK) {
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
      const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
      v = text != nullptr ? text : "";
    }
  }
  sqlite3_finalize(st);
  return v;
}

// The same for a table keyed by text (delivered_ids): past an unreadable stretch, the search
// goes on after ever shorter prefixes of the last key read.
template <class F>
bool readByKey(sqlite3* src, const char* sql, F row) {
  sqlite3_stmt* sel = nullptr;
  if (sqlite3_prepare_v2(src, sql, -1, &sel, nullptr) != SQLITE_OK) {
    sqlite3_finalize(sel);
    return true;
  }
  std::string after;
  std::string last;
  bool ok = true;
  for (std::size_t errors = 0; errors < 32;) {
    sqlite3_reset(sel);
    sqlite3_bind_text(sel, 1, after.data(), static_cast<int>(after.size()), SQLITE_TRANSIENT);
    int rc = 0;
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
      const auto* k = reinterpret_cast<const char*>(sqlite3_column_text(sel, 0));
      last.assign(k != nullptr ? k : "", static_cast<std::size_t>(sqlite3_column_bytes(sel, 0)));
      errors = 0;
      if (!row(sel)) {
        ok = false;
        break;
      }
    }
    if (!ok || rc == SQLITE_DONE) {
      break;
    }
    ++errors;
    // Skip every key that starts with the last key's first (len - errors) bytes.
    std::string prefix = last.substr(0, last.size() > errors ? last.size() - errors : 0);
    while (!prefix.empty() && static_cast<unsigned char>(prefix.back()) == 0xff) {
      prefix.pop_back();
    }
    if (prefix.empty()) {
      break;
    }
    prefix.back() = static_cast<char>(static_cast<unsigned char>(prefix.back()) + 1);
    after = prefix;
    last = prefix;
  }
  sqlite3_finalize(sel);
  return ok;
}

// What salvage copied.
struct Salvaged {
  int64_t events = 0;
  int64_t quarantined = 0;
  int64_t delivered_ids = 0;
  // For the gap check (see OpenReport).
  std::string previous_epoch;
  SeqRanges recovered_seqs;   // old seqs of the events read (copied, or already there)
  SeqRanges unreadable_seqs;  // old seqs that could not be read
  SeqRanges skipped_seqs;     // seqs of dst's epoch given to no pending event (not fresh)
};

// Copies everything still readable from the file `src_file` into `dst` in ONE transaction: the
// quarantine, then the pending events (in order, with new seqs above everything either file
// ever gave), the POS dedup memory (delivered_ids) and the retained delivered events; recounts
// dst's counters; records in dst's meta that `source_name` was salvaged. Nothing is written
// to `src_file`. Fails only when dst cannot be written (disk full, I/O): then nothing is.
// A `fresh` dst gets a new epoch starting at the first salvaged event's seq (the quarantine's
// new seqs come before it, so the centre expects none of them).
Result<Salvaged> salvageInto(sqlite3* dst, const fs::path& src_file, const std::string& source_name,
                             const std::string& problem, bool fresh) {
  // Even a read-only connection creates an empty -wal and a -shm beside a WAL-mode file: what
  // it made is removed again, so that the original is left exactly as it was.
  const fs::path src_wal(src_file.string() + "-wal");
  const fs::path src_shm(src_file.string() + "-shm");
  const bool had_wal = fs::exists(src_wal);
  const bool had_shm = fs::exists(src_shm);
  sqlite3* src = nullptr;
  if (sqlite3_open_v2(src_file.c_str(), &src, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(src);
    src = nullptr;  // unreadable from its header on: the fresh file starts empty
  } else {
    sqlite3_busy_timeout(src, 1000);
  }
  const int64_t dst_high = highWater(dst).value_or(0);
  // -1: the corrupt file's highest seq could not be read.
  const int64_t src_high = src != nullptr ? highWater(src).value_or(-1) : -1;
  int64_t next = std::max(dst_high, src_high) + 1;
  Salvaged got;
  if (src != nullptr) {
    got.previous_epoch = metaValue(src, "epoch");
  }
  int64_t events_first = 0;  // dst's seq of the first salvaged event
  std::string failure;
  auto write = [&](sqlite3_stmt* st) {
    const int rc = sqlite3_step(st);
    const int changes = sqlite3_changes(dst);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && (rc & 0xff) != SQLITE_CONSTRAINT) {
      failure = sqlite3_errmsg(dst);
      return -1;
    }
    return rc == SQLITE_DONE ? changes : 0;
  };
  sqlite3_stmt* ins_event = nullptr;
  sqlite3_stmt* ins_quarantine = nullptr;
  sqlite3_stmt* ins_id = nullptr;
  sqlite3_stmt* ins_delivered = nullptr;
  auto finish = [&] {
    for (auto* st : {ins_event, ins_quarantine, ins_id, ins_delivered}) {
      sqlite3_finalize(st);
    }
    sqlite3_close(src);
    std::error_code ec;
    if (!had_wal && fs::file_size(src_wal, ec) == 0 && !ec) {
      fs::remove(src_wal, ec);
    }
    if (!had_shm) {
      fs::remove(src_shm, ec);
    }
  };
  if (auto r = execRc(dst, "BEGIN IMMEDIATE"); !r) {
    finish();
    return makeError(codeOf(classify(r.rc)), "salvage: " + r.message);
  }
  bool ok =
      sqlite3_prepare_v2(dst, kInsertEventSql, -1, &ins_event, nullptr) == SQLITE_OK &&
      sqlite3_prepare_v2(dst,
                         "INSERT INTO quarantine(seq, id, type, prio, received_ms, quarantined_ms, "
                         "reason, body) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 "
                         "WHERE NOT EXISTS (SELECT 1 FROM quarantine WHERE id = ?2)",
                         -1, &ins_quarantine, nullptr) == SQLITE_OK &&
      sqlite3_prepare_v2(dst, "INSERT OR IGNORE INTO delivered_ids(id, delivered_ms) VALUES(?, ?)",
                         -1, &ins_id, nullptr) == SQLITE_OK &&
      sqlite3_prepare_v2(dst,
                         "INSERT OR IGNORE INTO delivered(seq, id, type, received_ms, "
                         "delivered_ms, body) VALUES(?,?,?,?,?,?)",
                         -1, &ins_delivered, nullptr) == SQLITE_OK;
  if (!ok) {
    failure = sqlite3_errmsg(dst);
  }
  if (ok && src != nullptr) {
    // The quarantine first: its new seqs then lie below the events' (see above).
    ok = readBySeq(src,
                   "SELECT seq, id, type, prio, received_ms, quarantined_ms, reason, body FROM "
                   "quarantine WHERE seq >= ? ORDER BY seq",
                   [&](sqlite3_stmt* row) {
                     sqlite3_bind_int64(ins_quarantine, 1, next);
                     for (int i = 1; i < 8; ++i) {
                       sqlite3_bind_value(ins_quarantine, i + 1, sqlite3_column_value(row, i));
                     }
                     const int n = write(ins_quarantine);
                     if (n > 0) {
                       ++got.quarantined;
                       ++next;
                     }
                     return n >= 0;
                   });
    events_first = next;
    // A row of several events (schema version 6) comes back as its events, one row each.
    const std::string events_sql = std::string("SELECT seq, id, type, prio, received_ms, body, ") +
                                   (detail::hasRunColumn(src) ? "n" : "1") +
                                   " FROM events WHERE seq >= ? ORDER BY seq";
    const auto retired = [](SeqRanges& to, int64_t first, int64_t last) {
      if (!to.empty() && to.back().second + 1 == first) {
        to.back().second = last;
      } else {
        to.emplace_back(first, last);
      }
    };
    ok = ok &&
         readBySeq(
             src, events_sql.c_str(),
             [&](sqlite3_stmt* row) {
               const int64_t old = sqlite3_column_int64(row, 0);
               const int64_t count = sqlite3_column_int64(row, 6);
               if (count > 1) {
                 const auto* p = static_cast<const char*>(sqlite3_column_blob(row, 5));
                 auto events = unpackRun(
                     std::string_view(p != nullptr ? p : "",
                                      static_cast<std::size_t>(sqlite3_column_bytes(row, 5))),
                     count);
                 if (!events) {
                   retired(got.unreadable_seqs, old, old + count - 1);
                   return true;
                 }
                 for (const auto& e : *events) {
                   const std::string packed = packBody(e.json, e.id);
                   sqlite3_bind_int64(ins_event, 1, next);
                   sqlite3_bind_text(ins_event, 2, e.id.data(), static_cast<int>(e.id.size()),
                                     SQLITE_STATIC);
                   for (int i = 2; i < 5; ++i) {
                     sqlite3_bind_value(ins_event, i + 1, sqlite3_column_value(row, i));
                   }
                   bindBody(ins_event, 6, e.json, packed);
                   const int n = write(ins_event);
                   if (n < 0) {
                     return false;
                   }
                   if (n > 0) {
                     ++got.events;
                     ++next;
                   }
                 }
                 retired(got.recovered_seqs, old, old + count - 1);
                 return true;
               }
               sqlite3_bind_int64(ins_event, 1, next);
               for (int i = 1; i < 6; ++i) {
                 sqlite3_bind_value(ins_event, i + 1, sqlite3_column_value(row, i));
               }
               const int n = write(ins_event);
               if (n > 0) {
                 ++got.events;
                 ++next;
               }
               // Copied, or already pending or delivered (a duplicate id): either way its old
               // seq is retired, not lost.
               if (n >= 0) {
                 retired(got.recovered_seqs, old, old);
               }
               return n >= 0;
             },
             [&](int64_t first, int64_t last) {
               // Unreadable: lost with the file, as far as anyone can tell. Only seqs the file
               // ever gave can have held an event.
               if (src_high >= 0) {
                 last = std::min(last, src_high);
               } else if (last == std::numeric_limits<int64_t>::max()) {
                 return;
               }
               if (last >= first) {
                 got.unreadable_seqs.emplace_back(first, last);
               }
             },
             static_cast<int64_t>(kMaxRunEvents), 6) &&
         readBySeq(src,
                   "SELECT seq, id, type, received_ms, delivered_ms, body FROM delivered "
                   "WHERE seq >= ? ORDER BY seq",
                   [&](sqlite3_stmt* row) {
                     for (int i = 0; i < 6; ++i) {
                       sqlite3_bind_value(ins_delivered, i + 1, sqlite3_column_value(row, i));
                     }
                     return write(ins_delivered) >= 0;
                   }) &&
         readByKey(src, "SELECT id, delivered_ms FROM delivered_ids WHERE id > ? ORDER BY id",
                   [&](sqlite3_stmt* row) {
                     sqlite3_bind_value(ins_id, 1, sqlite3_column_value(row, 0));
                     sqlite3_bind_value(ins_id, 2, sqlite3_column_value(row, 1));
                     const int n = write(ins_id);
                     got.delivered_ids += n > 0 ? 1 : 0;
                     return n >= 0;
                   });
  }
  if (ok) {
    const std::string sql =
        "DELETE FROM counters;"
        "INSERT INTO counters SELECT prio, sum(n), "
        "sum(" OMNIEDGE_ROW_STRINGS_SQL
        " + 40) FROM events GROUP BY prio;"
        "INSERT INTO counters VALUES(3, " +
        std::to_string(next - 1) +
        ", 0);"
        "INSERT INTO counters SELECT 4, count(*), "
        "coalesce(sum(" OMNIEDGE_ROW_STRINGS_SQL " + 40), 0) FROM quarantine;";
    auto r = execRc(dst, sql.c_str());
    ok = static_cast<bool>(r);
    if (!ok) {
      failure = r.message;
    }
  }
  normaliseRanges(got.recovered_seqs);
  normaliseRanges(got.unreadable_seqs);
  if (!fresh && events_first > dst_high + 1) {
    // dst's epoch goes on: the seqs from its old top to the first salvaged event hold nothing.
    got.skipped_seqs.emplace_back(dst_high + 1, events_first - 1);
  }
  if (ok) {
    sqlite3_stmt* meta = nullptr;
    ok = sqlite3_prepare_v2(dst, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", -1, &meta,
                            nullptr) == SQLITE_OK;
    std::vector<std::pair<std::string, std::string>> rows = {
        {"salvaged:" + source_name, std::to_string(got.events)}};
    if (fresh) {
      // Until the first commit after it (the agent's agent.buffer_recovered report, as a rule),
      // every start reports this recovery: a crash right after it cannot swallow the report.
      rows.emplace_back("recovery.unreported", "1");
      rows.emplace_back("recovery.problem", problem);
      rows.emplace_back("recovery.moved_to", source_name);
      rows.emplace_back("recovery.salvaged", std::to_string(got.events));
      rows.emplace_back("recovery.previous_epoch", got.previous_epoch);
      rows.emplace_back("recovery.recovered_seqs", rangesText(got.recovered_seqs));
      rows.emplace_back("recovery.unreadable_seqs", rangesText(got.unreadable_seqs));
      // A new seq space: the corrupt file's seqs are retired (reported above), the salvaged
      // events are numbered from events_first on.
      rows.emplace_back("epoch", makeUuidV7(nowMs()));
      rows.emplace_back("epoch_start_seq", std::to_string(events_first > 0 ? events_first : next));
    }
    for (const auto& [k, v] : rows) {
      if (!ok) {
        break;
      }
      sqlite3_bind_text(meta, 1, k.data(), static_cast<int>(k.size()), SQLITE_TRANSIENT);
      sqlite3_bind_text(meta, 2, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
      ok = write(meta) >= 0;
    }
    sqlite3_finalize(meta);
    if (!ok && failure.empty()) {
      failure = sqlite3_errmsg(dst);
    }
  }
  if (ok) {
    if (auto r = execRc(dst, "COMMIT"); !r) {
      ok = false;
      failure = r.message;
    }
  }
  const int code = sqlite3_extended_errcode(dst);
  if (!ok) {
    if (sqlite3_get_autocommit(dst) == 0) {
      (void)execRc(dst, "ROLLBACK");
    }
    finish();
    return makeError(codeOf(classify(code)) == std::string("full") ? "full" : "io",
                     "salvaging " + src_file.string() + ": " + failure);
  }
  finish();
  return got;
}

// Only the plain name of a recovery file ("buffer.db.corrupt-123"), not its -wal, -shm or
// -journal: the part after the prefix is all digits.
std::optional<int64_t> recoveryStamp(const std::string& name, const char* prefix) {
  if (!startsWith(name, prefix)) {
    return std::nullopt;
  }
  const std::string rest = name.substr(std::strlen(prefix));
  if (rest.empty() ||
      !std::all_of(rest.begin(), rest.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return std::stoll(rest);
}

// What a connection's open or set-up said, classified.
Error openError(int rc, const std::string& message, const fs::path& dir) {
  const Failure f = classify(rc);
  if (f == Failure::kPermission) {
    // SQLite's word for it ("unable to open", "readonly database") does not say why: if the
    // files show why, say that; otherwise it is an I/O problem, not corruption either way.
    if (auto access = checkAccess(dir); !access) {
      return access.error();
    }
    return makeError("io", message + " (check that " + dir.string() +
                               " and its buffer.db* files are writable by omniedge)");
  }
  return makeError(codeOf(f), message);
}

}  // namespace

namespace detail {

Result<sqlite3*> openConnection(const fs::path& dir, bool synchronous_full) {
  const fs::path file = dir / kFileName;
  sqlite3* db = nullptr;
  // With synchronous=FULL a commit's WAL frames go to the kernel in a write per 4 KiB (wal_vfs.h).
  const int rc = sqlite3_open_v2(file.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 synchronous_full ? coalescingWalVfs() : nullptr);
  if (rc != SQLITE_OK) {
    const int code = db != nullptr ? sqlite3_extended_errcode(db) : rc;
    std::string msg = sqliteError(db, "open " + file.string());
    sqlite3_close(db);
    return openError(code, msg, dir);
  }
  sqlite3_busy_timeout(db, 5000);
  sqlite3_extended_result_codes(db, 1);
  (void)registerBodyFunctions(db);  // body_text(): fails only without memory, and then so would SQL
  // SQLite opens a file it may not write read-only without a word; writes would then fail.
  if (sqlite3_db_readonly(db, "main") == 1) {
    sqlite3_close(db);
    if (auto access = checkAccess(dir); !access) {
      return access.error();
    }
    return permissionError(file, dir, "can only be opened read-only");
  }
  // secure_delete=FAST: Debian's SQLite zeroes every freed page by default, which during a drain
  // writes the whole deleted backlog to the WAL once more (flash wear, WAL size); FAST still
  // zeroes deleted rows on pages that are written anyway. Stored events never hold raw PII.
  // auto_vacuum only on a new, empty file (it cannot change later without a VACUUM anyway):
  // on an existing one the pragma writes a cookie into page 1, a commit at every start, and it
  // would change a corrupt original that is about to be salvaged.
  const bool empty = queryInt(db, "PRAGMA page_count").value_or(1) == 0;
  // synchronous first: the coalescing WAL VFS relies on FULL from the first frame written.
  const std::string pragmas = std::string("PRAGMA synchronous=") +
                              (synchronous_full ? "FULL;" : "NORMAL;") +
                              (empty ? kNewFilePragmas : "") +
                              "PRAGMA journal_mode=WAL;"
                              "PRAGMA secure_delete=FAST;"
                              "PRAGMA temp_store=MEMORY;"
                              "PRAGMA journal_size_limit=" +
                              std::to_string(kJournalSizeLimit) + ";";
  if (auto r = execRc(db, pragmas.c_str()); !r) {
    sqlite3_close(db);
    return openError(r.rc, "setting up " + file.string() + ": " + r.message, dir);
  }
  return db;
}

}  // namespace detail

using detail::openConnection;

Result<std::unique_ptr<Buffer>> Buffer::open(const BufferOptions& options) {
  std::error_code ec;
  fs::create_directories(options.dir, ec);
  if (ec) {
    return makeError(ec == std::errc::permission_denied ? "permission" : "io",
                     "cannot create data dir " + options.dir.string() + ": " + ec.message());
  }
  if (auto r = checkAccess(options.dir); !r) {
    return r.error();
  }
  std::unique_ptr<Buffer> b(new Buffer(options));
  const fs::path file = options.dir / kFileName;

  // The lock file says "a daemon owns this buffer"; it is removed on a clean close, so finding
  // it at start means the previous run ended uncleanly (crash, kill -9, power cut).
  const fs::path lock_path = options.dir / "buffer.lock";
  b->open_report_.unclean_shutdown = fs::exists(lock_path);
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    if (errno == EACCES || errno == EPERM) {
      return permissionError(lock_path, options.dir, "cannot be opened for writing");
    }
    return makeError("io", "cannot create " + lock_path.string() + ": " + std::strerror(errno));
  }
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd);
    return makeError("busy", "another omniedge is running with data dir " + options.dir.string());
  }
  b->lock_fd_ = lock_fd;

  // A recovery that a crash interrupted is finished before anything opens the file.
  if (auto r = b->finishInterruptedRecovery(); !r) {
    return r.error();
  }

  const bool existed = fs::exists(file);
  const int64_t size = existed ? static_cast<int64_t>(fs::file_size(file, ec)) : 0;
  // Before SQLite opens it for writing (the open and journal_mode=WAL may write): a file a
  // newer omniedge made is refused unchanged.
  if (auto r = schema::refuseNewer(file, schema::kBuffer); !r) {
    if (!b->open_report_.unclean_shutdown) {
      fs::remove(lock_path, ec);  // ours: the data dir is left as it was
    }
    return r.error();
  }
  auto conn = openConnection(options.dir, options.synchronous_full);
  std::string problem;
  if (!conn) {
    if (conn.error().code != "corrupt") {
      return conn.error();  // not corruption: leave every file where it is
    }
    problem = conn.error().message;
  } else {
    b->db_ = *conn;
    const schema::Layout layout{kFileName, kSchema.c_str(), kBufferMigrations};
    if (auto r = schema::upgrade(b->db_, file, layout); !r) {
      if (r.error().code != "corrupt") {
        return r.error();
      }
      problem = r.error().message;
    } else if (existed && (b->open_report_.unclean_shutdown || size < kAlwaysCheckBelow)) {
      b->open_report_.integrity_checked = true;
      sqlite3_stmt* st = nullptr;
      int rc = sqlite3_prepare_v2(b->db_, "PRAGMA quick_check", -1, &st, nullptr);
      if (rc == SQLITE_OK) {
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
          const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
          if (text != nullptr && std::strcmp(text, "ok") != 0 && problem.size() < 500) {
            problem += (problem.empty() ? "" : "; ") + std::string(text);
          }
        }
      }
      const int code = sqlite3_extended_errcode(b->db_);
      const std::string msg = sqlite3_errmsg(b->db_);
      sqlite3_finalize(st);
      if (rc != SQLITE_DONE && problem.empty()) {
        // quick_check could not read the file to the end. Only SQLite's word "corrupt" means
        // corrupt: an I/O error (EIO, a missing device) is reported and retried, never acted on.
        if (classify(code) != Failure::kCorrupt) {
          return makeError(codeOf(classify(code)) == std::string("busy") ? "busy" : "io",
                           "checking " + file.string() + " (PRAGMA quick_check) failed: " + msg +
                               "; the buffer was left where it is, retry later");
        }
        problem = msg;
      }
    }
  }
  if (!problem.empty()) {
    if (auto r = b->recover(problem); !r) {
      return r.error();
    }
  } else if (queryInt(b->db_, "SELECT count(*) FROM meta WHERE key = 'recovery.unreported'")
                 .value_or(0) > 0) {
    // A recovery (finished by this start or an earlier one) not reported yet.
    auto meta = [&](const char* key) {
      std::string v;
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(b->db_, "SELECT value FROM meta WHERE key = ?", -1, &st, nullptr) ==
          SQLITE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
          v = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
        }
      }
      sqlite3_finalize(st);
      return v;
    };
    b->open_report_.recovered = true;
    b->open_report_.problem = meta("recovery.problem");
    b->open_report_.moved_to = (options.dir / meta("recovery.moved_to")).string();
    b->open_report_.salvaged = std::atoll(meta("recovery.salvaged").c_str());
    b->open_report_.previous_epoch = meta("recovery.previous_epoch");
    b->open_report_.recovered_seqs = parseRanges(meta("recovery.recovered_seqs"));
    b->open_report_.unreadable_seqs = parseRanges(meta("recovery.unreadable_seqs"));
  }
  if (auto r = b->pickUpCorruptFiles(); !r) {
    return r.error();
  }
  if (auto r = b->loadEpoch(); !r) {
    return r.error();
  }
  if (auto r = b->prepare(); !r) {
    return r.error();
  }
  b->writer_ = std::thread([p = b.get()] {
    nameThisThread("oe-writer");
    p->writerLoop();
  });
  return b;
}

void Buffer::recoveryStep(std::string_view step) {
  if (options_.on_recovery_step) {
    options_.on_recovery_step(step);
  }
}

// Crash-safe recovery. The corrupt original stays where it is while its readable content is
// copied into buffer.db.salvage-<ms> (fsynced), which is then renamed buffer.db.salvaged-<ms>
// (the mark of a complete salvage; directory fsynced). Only then are the original's WAL and the
// original moved aside to buffer.db.corrupt-<ms>[-wal] and the salvaged file renamed
// buffer.db. A start that finds a buffer.db.salvaged-* finishes those renames; one that finds a
// buffer.db.salvage-* deletes it (incomplete) and, the original being still in place and
// corrupt, salvages again. See docs/reliability.md.
Result<void> Buffer::recover(const std::string& problem) {
  const fs::path& dir = options_.dir;
  const fs::path file = dir / kFileName;
  spdlog::error("buffer: {} is corrupt ({}); salvaging what can be read into a fresh buffer",
                file.string(), problem);
  if (db_ != nullptr) {
    sqlite3_close(db_);
    db_ = nullptr;
  }
  const int64_t ms = nowMs();
  const std::string aside_name = kCorruptPrefix + std::to_string(ms);
  const fs::path tmp = dir / (kSalvagingPrefix + std::to_string(ms));
  const fs::path done = dir / (kSalvagedPrefix + std::to_string(ms));
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::remove(fs::path(tmp.string() + "-journal"), ec);
  auto fail = [&](const std::string& why) -> Result<void> {
    fs::remove(tmp, ec);
    fs::remove(fs::path(tmp.string() + "-journal"), ec);
    return makeError("io", "buffer " + file.string() + " is corrupt (" + problem +
                               ") but could not be salvaged: " + why +
                               "; it was left where it is, and the next start tries again");
  };

  sqlite3* out = nullptr;
  if (sqlite3_open_v2(tmp.c_str(), &out, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    std::string msg = sqliteError(out, "create " + tmp.string());
    sqlite3_close(out);
    return fail(msg);
  }
  sqlite3_extended_result_codes(out, 1);
  if (auto r = execRc(out, (std::string(detail::kNewFilePragmas) +
                            "PRAGMA journal_mode=DELETE;PRAGMA synchronous=FULL;")
                               .c_str());
      !r) {
    sqlite3_close(out);
    return fail(r.message);
  }
  // The salvaged file is of today's layout and says so.
  const std::string created =
      kSchema + "PRAGMA user_version = " + std::to_string(schema::kBuffer) + ";";
  if (auto r = execRc(out, created.c_str()); !r) {
    sqlite3_close(out);
    return fail(r.message);
  }
  recoveryStep("salvage-created");
  auto got = salvageInto(out, file, aside_name, problem, /*fresh=*/true);
  sqlite3_close(out);
  if (!got) {
    return fail(got.error().message);
  }
  if (!syncPath(tmp, false)) {
    return fail("fsync " + tmp.string() + ": " + std::strerror(errno));
  }
  recoveryStep("salvage-written");
  fs::rename(tmp, done, ec);
  if (ec || !syncPath(dir, true)) {
    return fail("rename " + tmp.string() + ": " + (ec ? ec.message() : std::strerror(errno)));
  }
  recoveryStep("salvage-complete");
  spdlog::warn("buffer: salvaged {} pending events, {} quarantined, {} delivered POS ids",
               got->events, got->quarantined, got->delivered_ids);
  open_report_.recovered = true;
  open_report_.problem = problem;
  open_report_.moved_to = (dir / aside_name).string();
  open_report_.salvaged = got->events;
  open_report_.previous_epoch = got->previous_epoch;
  open_report_.recovered_seqs = got->recovered_seqs;
  open_report_.unreadable_seqs = got->unreadable_seqs;

  // From here on the salvage is complete: whatever happens, the next start finishes it.
  if (auto r = finishRecoveryFiles(ms); !r) {
    return r;
  }
  auto conn = openConnection(dir, options_.synchronous_full);
  if (!conn) {
    return conn.error();
  }
  db_ = *conn;
  return exec(db_, kSchema.c_str());
}

// The renames that end a recovery whose salvage (buffer.db.salvaged-<ms>) is complete. Each
// step is atomic and the directory is fsynced after it; any prefix of them is resumed by the
// next start. The WAL goes first: a WAL left beside the salvaged file would be applied to it.
Result<void> Buffer::finishRecoveryFiles(int64_t ms) {
  const fs::path& dir = options_.dir;
  const fs::path file = dir / kFileName;
  const fs::path aside = dir / (kCorruptPrefix + std::to_string(ms));
  const fs::path done = dir / (kSalvagedPrefix + std::to_string(ms));
  const fs::path wal(file.string() + "-wal");
  std::error_code ec;
  auto fail = [&](const std::string& what) -> Result<void> {
    return makeError("io", "finishing the recovery of " + file.string() + ": " + what +
                               "; the next start finishes it");
  };
  if (fs::exists(wal)) {
    fs::rename(wal, fs::path(aside.string() + "-wal"), ec);
    if (ec) {
      return fail("move " + wal.string() + " aside: " + ec.message());
    }
  }
  fs::remove(fs::path(file.string() + "-shm"), ec);
  if (!syncPath(dir, true)) {
    return fail(std::string("fsync ") + dir.string() + ": " + std::strerror(errno));
  }
  recoveryStep("wal-moved");
  if (fs::exists(file)) {
    // Never overwrite: the original goes to its own name even if (impossibly) one is taken.
    const fs::path target =
        fs::exists(aside) ? fs::path(aside.string() + "." + std::to_string(nowMs())) : aside;
    fs::rename(file, target, ec);
    if (ec || !syncPath(dir, true)) {
      return fail("move " + file.string() +
                  " aside: " + (ec ? ec.message() : std::strerror(errno)));
    }
  }
  recoveryStep("original-moved");
  fs::rename(done, file, ec);
  if (ec || !syncPath(dir, true)) {
    return fail("rename " + done.string() + ": " + (ec ? ec.message() : std::strerror(errno)));
  }
  recoveryStep("salvage-in-place");
  return {};
}

Result<void> Buffer::finishInterruptedRecovery() {
  const fs::path& dir = options_.dir;
  std::vector<int64_t> complete;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (startsWith(name, kSalvagingPrefix)) {
      // An incomplete salvage (and its journal): the original is still in place.
      spdlog::warn("buffer: removing {} left by an interrupted recovery", name);
      fs::remove(entry.path(), ec);
    } else if (auto ms = recoveryStamp(name, kSalvagedPrefix)) {
      complete.push_back(*ms);
    }
  }
  if (ec) {
    return makeError("io", "cannot list " + dir.string() + ": " + ec.message());
  }
  if (complete.empty()) {
    return {};
  }
  std::sort(complete.begin(), complete.end());
  // Only one can be in progress; an older one (never seen in practice) keeps its content as a
  // corrupt-* file, which pickUpCorruptFiles() copies from.
  for (std::size_t i = 0; i + 1 < complete.size(); ++i) {
    const std::string old = kSalvagedPrefix + std::to_string(complete[i]);
    fs::rename(dir / old, dir / (kCorruptPrefix + std::to_string(complete[i])), ec);
  }
  spdlog::warn("buffer: finishing the recovery an earlier start began");
  if (auto r = finishRecoveryFiles(complete.back()); !r) {
    return r;
  }
  open_report_.recovered = true;
  open_report_.resumed = true;
  return {};
}

// A buffer.db.corrupt-* whose content this buffer never received (its meta has no
// "salvaged:<name>"): left by a recovery interrupted under an older version, or copied in by
// hand. Its readable events, quarantine and POS dedup memory are copied in (ids already here
// are skipped), so nothing stays stranded in it.
Result<void> Buffer::pickUpCorruptFiles() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(options_.dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (recoveryStamp(name, kCorruptPrefix)) {
      names.push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    sqlite3_stmt* st = nullptr;
    bool known = false;
    if (sqlite3_prepare_v2(db_, "SELECT 1 FROM meta WHERE key = ?", -1, &st, nullptr) ==
        SQLITE_OK) {
      const std::string key = "salvaged:" + name;
      sqlite3_bind_text(st, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
      known = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    if (known) {
      continue;
    }
    auto got = salvageInto(db_, options_.dir / name, name, "", /*fresh=*/false);
    if (!got) {
      return makeError(got.error().code, got.error().message + " (copying from " + name +
                                             ", left by an " +
                                             "interrupted recovery; the next start tries again)");
    }
    spdlog::warn("buffer: {} was never salvaged completely: {} events copied from it again", name,
                 got->events);
    open_report_.picked_up.push_back(name);
    open_report_.picked_up_events += got->events;
    auto append = [](SeqRanges& to, const SeqRanges& from) {
      to.insert(to.end(), from.begin(), from.end());
      normaliseRanges(to);
    };
    append(open_report_.skipped_seqs, got->skipped_seqs);
    if (!got->recovered_seqs.empty() || !got->unreadable_seqs.empty()) {
      // Its events' old seqs belong to its own epoch (a recovery interrupted long ago).
      open_report_.previous_epoch = got->previous_epoch;
      append(open_report_.recovered_seqs, got->recovered_seqs);
      append(open_report_.unreadable_seqs, got->unreadable_seqs);
    }
  }
  return {};
}

// The epoch names the buffer's seq space for the centre's gap check. A file made before epochs
// existed gets one now, starting at its oldest pending event: what it delivered before was sent
// without seqs, and the centre must not expect those.
Result<void> Buffer::loadEpoch() {
  epoch_ = metaValue(db_, "epoch");
  if (!epoch_.empty()) {
    epoch_start_seq_ = std::max<int64_t>(1, std::atoll(metaValue(db_, "epoch_start_seq").c_str()));
    return {};
  }
  const auto oldest = queryInt(db_, "SELECT coalesce(min(seq), 0) FROM events");
  const auto high = highWater(db_);
  if (!oldest || !high) {
    return makeError("io", sqliteError(db_, "reading the seqs to start an epoch"));
  }
  epoch_ = makeUuidV7(nowMs());
  epoch_start_seq_ = *oldest > 0 ? *oldest : *high + 1;
  const std::string sql = "INSERT OR REPLACE INTO meta(key, value) VALUES('epoch', '" + epoch_ +
                          "'), ('epoch_start_seq', '" + std::to_string(epoch_start_seq_) + "')";
  if (auto r = execRc(db_, sql.c_str()); !r) {
    return openError(
        r.rc, "starting an epoch in " + (options_.dir / kFileName).string() + ": " + r.message,
        options_.dir);
  }
  return {};
}

}  // namespace omniedge::store
