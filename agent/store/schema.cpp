#include "agent/store/schema.h"

#include <spdlog/spdlog.h>

#include <system_error>
#include <utility>

#include "agent/store/buffer_reader.h"
#include "agent/version.h"

namespace omniedge::store::schema {
namespace {

namespace fs = std::filesystem;

std::optional<int> userVersion(sqlite3* db) {
  sqlite3_stmt* st = nullptr;
  std::optional<int> v;
  if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    v = sqlite3_column_int(st, 0);
  }
  sqlite3_finalize(st);
  return v;
}

Error sqliteFailure(sqlite3* db, const std::string& what) {
  return makeError(codeFor(sqlite3_extended_errcode(db)), what + ": " + sqlite3_errmsg(db));
}

}  // namespace

const char* codeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return "corrupt";
    case SQLITE_FULL:
      return "full";
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "busy";
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_CANTOPEN:
      return "permission";
    default:
      return "io";
  }
}

Result<void> exec(sqlite3* db, const char* sql) {
  char* msg = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &msg);
  if (rc == SQLITE_OK) {
    return {};
  }
  std::string text = msg != nullptr ? msg : sqlite3_errmsg(db);
  sqlite3_free(msg);
  return makeError(codeFor(sqlite3_extended_errcode(db)), "SQLite: " + text);
}

bool hasTable(sqlite3* db, const char* table) {
  sqlite3_stmt* st = nullptr;
  bool found = false;
  if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", -1,
                         &st, nullptr) == SQLITE_OK) {
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    found = sqlite3_step(st) == SQLITE_ROW;
  }
  sqlite3_finalize(st);
  return found;
}

bool hasColumn(sqlite3* db, const char* table, const char* column) {
  sqlite3_stmt* st = nullptr;
  bool found = false;
  if (sqlite3_prepare_v2(db, "SELECT 1 FROM pragma_table_info(?) WHERE name = ?", -1, &st,
                         nullptr) == SQLITE_OK) {
    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, column, -1, SQLITE_STATIC);
    found = sqlite3_step(st) == SQLITE_ROW;
  }
  sqlite3_finalize(st);
  return found;
}

bool createSqlContains(sqlite3* db, const char* name, const char* text) {
  sqlite3_stmt* st = nullptr;
  bool found = false;
  if (sqlite3_prepare_v2(db,
                         "SELECT instr(upper(sql), upper(?)) > 0 FROM sqlite_master "
                         "WHERE name = ?",
                         -1, &st, nullptr) == SQLITE_OK) {
    sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
    found = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 1;
  }
  sqlite3_finalize(st);
  return found;
}

std::optional<int> peekVersion(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(file, ec) || fs::file_size(file, ec) == 0 || ec) {
    return std::nullopt;
  }
  auto db = openFileSnapshot(file);
  if (!db) {
    return std::nullopt;
  }
  return userVersion(db->get());
}

std::string newerMessage(const fs::path& file, int version, int known) {
  return file.string() + " has schema version " + std::to_string(version) +
         ", but this omniedge (" + kVersion + ") knows versions up to " + std::to_string(known) +
         ": the file was written by a newer omniedge. It was not changed. Upgrade omniedge, or "
         "move the file away (omniedge then starts with an empty one)";
}

Result<void> refuseNewer(const fs::path& file, int known) {
  if (auto v = peekVersion(file); v && *v > known) {
    return makeError("schema", newerMessage(file, *v, known));
  }
  return {};
}

Result<void> refuseNewerFiles(const fs::path& dir) {
  if (bufferOwner(dir) == Owner::kDaemon) {
    // Another daemon runs on this data dir and writes its files: reading them without a lock
    // could see a page mid-write. Buffer::open says "busy" just after, under buffer.lock.
    return {};
  }
  const std::pair<const char*, int> files[] = {{"buffer.db", kBuffer},
                                               {"profiles.db", kProfiles},
                                               {"inbox.db", kInbox},
                                               {"visits.db", kVisits}};
  for (const auto& [name, known] : files) {
    if (auto r = refuseNewer(dir / name, known); !r) {
      return r;
    }
  }
  return {};
}

Result<Upgraded> upgrade(sqlite3* db, const fs::path& file, const Layout& layout) {
  const int newest = layout.newest();
  Upgraded up;
  up.to = newest;
  const auto before = userVersion(db);
  if (!before) {
    return sqliteFailure(db, "reading the schema version of " + file.string());
  }
  up.from = *before;
  if (up.from > newest) {
    return makeError("schema", newerMessage(file, up.from, newest));
  }
  if (up.from == newest) {
    return up;  // nothing to write: a file at the newest layout is not touched
  }
  if (auto r = exec(db, "BEGIN IMMEDIATE"); !r) {
    return makeError(r.error().code, "upgrading " + file.string() + ": " + r.error().message);
  }
  auto fail = [&](const Error& e, const std::string& step) -> Result<Upgraded> {
    (void)exec(db, "ROLLBACK");
    return makeError(e.code, "upgrading " + file.string() + " " + step + ": " + e.message +
                                 "; the file was left as it was");
  };
  // Under the write lock now: what the file holds cannot change under us.
  const auto again = userVersion(db);
  if (!again) {
    return fail(sqliteFailure(db, "reading the schema version"), "");
  }
  up.from = *again;
  sqlite3_stmt* st = nullptr;
  bool empty = false;
  if (sqlite3_prepare_v2(db,
                         "SELECT count(*) = 0 FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
                         -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    empty = sqlite3_column_int(st, 0) == 1;
  } else {
    auto e = sqliteFailure(db, "listing the tables");
    sqlite3_finalize(st);
    return fail(e, "");
  }
  sqlite3_finalize(st);
  if (empty && up.from == 0) {
    up.created = true;
    if (auto r = exec(db, layout.create_sql); !r) {
      return fail(r.error(), "(creating its tables)");
    }
  } else {
    for (const Migration& m : layout.migrations) {
      if (m.to <= up.from) {
        continue;
      }
      if (auto r = m.run(db); !r) {
        return fail(r.error(), "from schema version " + std::to_string(m.to - 1) + " to " +
                                   std::to_string(m.to) + " (" + m.what + ")");
      }
    }
  }
  const std::string stamp = "PRAGMA user_version = " + std::to_string(newest);
  if (auto r = exec(db, stamp.c_str()); !r) {
    return fail(r.error(), "(setting its schema version)");
  }
  if (auto r = exec(db, "COMMIT"); !r) {
    return fail(r.error(), "(commit)");
  }
  if (!up.created) {
    spdlog::info("{}: upgraded from schema version {} to {}", file.string(), up.from, newest);
  }
  return up;
}

}  // namespace omniedge::store::schema
