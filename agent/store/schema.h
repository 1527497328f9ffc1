// The layout version of every SQLite file the agent writes, and the forward migrations between
// layouts (see docs/reliability.md, "Upgrades and schema versions").
//
// A file's version is its `PRAGMA user_version`. Version 0 is every layout made before files
// carried a version (they all said 0), so a step from 0 must look at the tables and columns that
// are there. A newer agent opens every older file and upgrades it in one transaction at open; an
// older agent refuses a newer file before any writable connection touches it (no WAL switch, no
// journal, no checkpoint), with a message naming the file, its version and what it knows.
#pragma once

#include <sqlite3.h>

#include <filesystem>
#include <optional>
#include <span>
#include <string>

#include "agent/api/result.h"

namespace omniedge::store::schema {

// The version each file's newest layout has. Raise one together with a migration in its store
// (each store checks at compile time that its last migration reaches this number).
inline constexpr int kBuffer = 6;    // buffer.db   (store/buffer_open.cpp)
inline constexpr int kProfiles = 1;  // profiles.db (store/profile_cache.cpp)
inline constexpr int kInbox = 1;     // inbox.db    (store/inbox.cpp)
inline constexpr int kVisits = 1;    // visits.db   (omni/visits.cpp)

/// One forward step, from version `to - 1` to `to`. Runs inside the transaction of the open that
/// upgrades the file, on the writer's connection; returns an error (and writes nothing that
/// stays) when it cannot finish. Never throws.
struct Migration {
  int to;
  const char* what;  // for the log: "epochs, no AUTOINCREMENT, ..."
  Result<void> (*run)(sqlite3* db);
};

/// A file's layout: the SQL that creates its newest layout on a new, empty file, and the steps
/// from version 0 to the newest, in order (to = 1, 2, ...).
struct Layout {
  const char* file_name;  // "buffer.db"
  const char* create_sql;
  std::span<const Migration> migrations;
  constexpr int newest() const { return migrations.empty() ? 0 : migrations.back().to; }
};

/// The version `file` has, read without creating, locking or changing anything (a WAL left by a
/// crash is read into private memory). nullopt when there is no file, it is empty, or it cannot
/// be read as SQLite at all (the store's own open then says why). Only while no other process
/// writes the file. Thread: the caller's; blocks for a read of the file.
std::optional<int> peekVersion(const std::filesystem::path& file);

/// The message for a file a newer omniedge wrote.
std::string newerMessage(const std::filesystem::path& file, int version, int known);

/// Fails "schema" (newerMessage) when `file` has a version above `known`; reads only (see
/// peekVersion). To be called before any writable connection opens the file: SQLite's open and
/// the pragmas that follow it (journal_mode=WAL) may write.
Result<void> refuseNewer(const std::filesystem::path& file, int known);

/// refuseNewer() for every SQLite file of the agent in `dir` (buffer.db, profiles.db, inbox.db,
/// visits.db): the daemon calls it before it opens any of them, so that a newer file anywhere
/// stops the start before an older one is upgraded. Checks nothing while a daemon holds the
/// data dir's buffer.lock (it opened the files itself; a second daemon is refused "busy").
Result<void> refuseNewerFiles(const std::filesystem::path& dir);

/// What upgrade() did.
struct Upgraded {
  int from = 0;  // the file's version before (0 for a new file too)
  int to = 0;
  bool created = false;  // a new, empty file: create_sql ran
};

/// Brings the file open on `db` (writable, its pragmas set) to layout.newest(): a new empty file
/// gets create_sql, an older one every step above its version, in ONE transaction with its new
/// user_version; a file at the newest version is not written at all. Fails "schema" on a newer
/// file, "corrupt" when SQLite says the file is corrupt, "full", "busy", "permission" or "io"
/// otherwise, each with the step that failed; then nothing changed. Thread: the caller's; blocks
/// for the transaction (a step that rewrites a table takes time in proportion to it).
Result<Upgraded> upgrade(sqlite3* db, const std::filesystem::path& file, const Layout& layout);

// ---- helpers for migrations ---------------------------------------------------------------

/// Runs `sql`; its error classified like upgrade()'s.
Result<void> exec(sqlite3* db, const char* sql);
/// The error code for an SQLite result code ("corrupt", "full", "busy", "permission", "io").
const char* codeFor(int rc);
/// Whether `table` exists / has `column` / its CREATE statement contains `text`.
bool hasTable(sqlite3* db, const char* table);
bool hasColumn(sqlite3* db, const char* table, const char* column);
bool createSqlContains(sqlite3* db, const char* name, const char* text);

}  // namespace omniedge::store::schema
