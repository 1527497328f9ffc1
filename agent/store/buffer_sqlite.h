// SQLite helpers shared by the buffer's two files: buffer.cpp (the running buffer: writer,
// readers, stats) and buffer_open.cpp (opening, checking and recovering the files). Internal to
// agent/store; not an interface.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "agent/api/result.h"

namespace omniedge::store::detail {

inline constexpr const char* kFileName = "buffer.db";

// What a stored row costs in the buffer's accounting, beyond its strings: rowid, record header,
// the id index entry. The accounting is in these logical bytes, so eviction frees exactly what it
// counts.
inline constexpr int64_t kRowOverhead = 40;
// Rows of the counters table beside the three priorities (0, 1, 2: events, bytes).
inline constexpr int kCounterLastSeq = 3;     // events = the highest seq ever given, as saved
inline constexpr int kCounterQuarantine = 4;  // events, bytes of the quarantine
// The strings of a row in SQL, in bytes (a TEXT's length() counts characters: a body with
// non-ASCII text would be counted in by its bytes and out by its characters, and the counters
// would drift). Every statement that counts rows uses it; C++ counts std::string::size().
#define OMNIEDGE_ROW_STRINGS_SQL "(length(CAST(body AS BLOB)) + length(id) + length(type))"

int64_t nowMs();
std::string sqliteError(sqlite3* db, const std::string& what);

// The kinds of failure the buffer tells apart. Only kCorrupt may ever move the file aside.
enum class Failure { kCorrupt, kPermission, kFull, kBusy, kIo };
Failure classify(int rc);
const char* codeOf(Failure f);

// The result of one SQL text run to completion, with SQLite's code kept for classify().
struct ExecResult {
  int rc = SQLITE_OK;
  std::string message;
  explicit operator bool() const { return rc == SQLITE_OK; }
};
ExecResult execRc(sqlite3* db, const char* sql);
Result<void> exec(sqlite3* db, const char* sql);
// One integer from a query; nullopt when it cannot be read.
std::optional<int64_t> queryInt(sqlite3* db, const char* sql);
// Whether `db`'s events table has the column `n` (schema version 6: rows of several events).
bool hasRunColumn(sqlite3* db);
// The highest seq `db` has ever given (counters row 3, events, delivered, quarantine); nullopt
// when it cannot be read.
std::optional<int64_t> highWater(sqlite3* db);

// How an event is stored: an id already in the buffer, or a high-priority one delivered within
// the dedup window, is not stored again (re-reading a POS file never yields a second event).
extern const char* const kInsertEventSql;

/// Opens dir/buffer.db read-write for the buffer (WAL, its pragmas). Fails "corrupt" only on
/// SQLITE_CORRUPT / SQLITE_NOTADB; "permission" when the files or the dir are not ours to write
/// (the message says whose they are and the fix); "full", "busy" or "io" otherwise.
Result<sqlite3*> openConnection(const std::filesystem::path& dir, bool synchronous_full);

}  // namespace omniedge::store::detail
