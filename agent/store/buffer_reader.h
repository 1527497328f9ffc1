// Reading the buffer from outside the daemon (status, tail, export, doctor): never writes,
// never creates a file, never takes a lock the daemon could wait for.
//
// A plain SQLITE_OPEN_READONLY connection is not enough: on a WAL database it creates
// buffer.db-wal and -shm when they are missing (owned by whoever ran the CLI) and writes the
// -shm when it can. So every file is opened read-only through a VFS that refuses to create or
// delete, and the connection picks one of three ways in (see ReadMode).
#pragma once

#include <sqlite3.h>
#include <sys/stat.h>

#include <filesystem>
#include <memory>
#include <string>

#include "agent/api/result.h"

namespace omniedge::store {

enum class ReadMode {
  /// buffer.db-wal and -shm are there: an ordinary WAL reader beside the daemon, its -shm
  /// opened read-only. With no daemon (a crash left them), SQLite reads the WAL into private
  /// memory instead of the -shm, so committed events still in the WAL are seen.
  kWal,
  /// A WAL without its -shm and no daemon: the WAL is replayed into private memory.
  kPrivateWal,
  /// No WAL (the daemon stopped cleanly and checkpointed): the file alone, as immutable.
  kImmutable,
};

/// "wal", "private-wal", "immutable".
const char* readModeName(ReadMode mode);

/// "user:group, mode 0640" of a file's stat, for messages that tell a technician whose file
/// refuses access (numeric ids when the names are unknown). Thread: any.
std::string ownerText(const struct stat& st);

/// Whether a daemon holds data dir's buffer.lock (its flock) right now.
enum class Owner { kDaemon, kNobody, kUnknown };
/// Looks in /proc/locks (takes no lock); when that cannot be read, briefly tries a shared flock
/// on buffer.lock. kUnknown when neither works (buffer.lock unreadable, no /proc). Thread: any.
Owner bufferOwner(const std::filesystem::path& dir);

struct ReadOnlyBuffer {
  std::shared_ptr<sqlite3> db;
  ReadMode mode = ReadMode::kWal;
};

/// Opens dir/buffer.db for reading only (see ReadMode). Fails "not_found" when there is no
/// buffer, "permission" when the files cannot be read (the message says which and what to do),
/// "io" otherwise. The first query has been run: a failure to get in is reported here, not at
/// the caller's first statement. Thread: the caller's; the connection is single-threaded.
Result<ReadOnlyBuffer> openBufferReadOnly(const std::filesystem::path& dir);

/// Opens any SQLite file for reading only as it is on disk: its WAL, when there is one, replayed
/// into private memory (kPrivateWal), else the file alone (kImmutable). Creates, locks and
/// changes nothing. Only while no other process writes the file (the daemon's own open, under
/// buffer.lock, reading a file's schema version before it opens it for writing). Fails "io".
/// Thread: the caller's; the connection is single-threaded.
Result<std::shared_ptr<sqlite3>> openFileSnapshot(const std::filesystem::path& file);

/// The buffer's counts as its file has them: the `counters` table, plus the rows appended since
/// it was last saved (a transaction that only appends leaves the table alone: docs/
/// architecture.md, "Schema"). Exact for any committed state, after a crash too. Fails "io".
/// Thread: the connection's.
struct BufferCounts {
  int64_t events[3] = {0, 0, 0};  // pending events by priority
  int64_t bytes[3] = {0, 0, 0};   // their logical bytes (strings + 40 per row)
  int64_t last_seq = 0;           // the highest seq ever given (saved, or the highest row since)
  int64_t saved_last_seq = 0;     // the seq the table was saved at
  bool saved = false;             // the table has its seq row (else it was never saved by a
                                  // version that may leave it behind: it is exact as it is)
  int64_t quarantine_events = 0;
  int64_t quarantine_bytes = 0;
};
Result<BufferCounts> readBufferCounts(sqlite3* db);

}  // namespace omniedge::store
