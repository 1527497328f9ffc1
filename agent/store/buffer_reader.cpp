#include "agent/store/buffer_reader.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "agent/store/body_codec.h"
#include "agent/store/buffer.h"
#include "agent/store/buffer_sqlite.h"
#include "agent/store/schema.h"

namespace omniedge::store {
namespace {

namespace fs = std::filesystem;

// Two read-only VFSes: over "unix" (WAL with a shared, read-only -shm) and over "unix-none"
// (no locks at all, for a WAL replayed into private memory with locking_mode=EXCLUSIVE). Both
// open every file without O_RDWR and O_CREAT, and refuse to delete, so no way through SQLite
// can create or change a file in the data dir.
constexpr const char* kVfsShared = "omniedge-readonly";
constexpr const char* kVfsPrivate = "omniedge-readonly-nolock";

struct ReadOnlyVfs {
  sqlite3_vfs vfs{};
  sqlite3_vfs* base = nullptr;
};
ReadOnlyVfs g_shared;
ReadOnlyVfs g_private;

int openReadOnlyFile(ReadOnlyVfs& v, const char* name, sqlite3_file* file, int flags,
                     int* out_flags) {
  flags &= ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_DELETEONCLOSE |
             SQLITE_OPEN_EXCLUSIVE);
  flags |= SQLITE_OPEN_READONLY;
  return v.base->xOpen(v.base, name, file, flags, out_flags);
}

int sharedOpen(sqlite3_vfs*, const char* name, sqlite3_file* file, int flags, int* out_flags) {
  return openReadOnlyFile(g_shared, name, file, flags, out_flags);
}
int privateOpen(sqlite3_vfs*, const char* name, sqlite3_file* file, int flags, int* out_flags) {
  return openReadOnlyFile(g_private, name, file, flags, out_flags);
}
int refuseDelete(sqlite3_vfs*, const char*, int) { return SQLITE_IOERR_DELETE; }

void registerVfs(ReadOnlyVfs& v, const char* base_name, const char* name,
                 int (*open)(sqlite3_vfs*, const char*, sqlite3_file*, int, int*)) {
  v.base = sqlite3_vfs_find(base_name);
  if (v.base == nullptr) {
    return;
  }
  // Every other method is the base's own; they only read pVfs for fields copied here.
  v.vfs = *v.base;
  v.vfs.pNext = nullptr;
  v.vfs.zName = name;
  v.vfs.xOpen = open;
  v.vfs.xDelete = refuseDelete;
  sqlite3_vfs_register(&v.vfs, 0);
}

bool vfsReady() {
  static std::once_flag once;
  std::call_once(once, [] {
    registerVfs(g_shared, "unix", kVfsShared, sharedOpen);
    registerVfs(g_private, "unix-none", kVfsPrivate, privateOpen);
  });
  return g_shared.base != nullptr && g_private.base != nullptr;
}

std::string uriPath(const fs::path& file) {
  // RFC 3986 percent-encoding of everything but unreserved characters and '/'.
  std::error_code ec;
  fs::path absolute = fs::absolute(file, ec);
  if (ec) {
    absolute = file;
  }
  std::string out = "file:";
  for (const unsigned char c : absolute.string()) {
    if (std::isalnum(c) != 0 || c == '/' || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[4];
      std::snprintf(buf, sizeof(buf), "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

Error permissionError(const fs::path& what) {
  struct stat st {};
  std::string owner;
  if (::stat(what.c_str(), &st) == 0) {
    owner = " (" + ownerText(st) + ")";
  }
  return makeError("permission", "cannot read " + what.string() + owner +
                                     ": permission denied; run as root or as a member of the "
                                     "service's group (the data dir must be group-readable)");
}

struct Opened {
  sqlite3* db = nullptr;
  int rc = SQLITE_OK;
  std::string message;
};

// Opens and runs a first read, so that failing to get in shows here.
Opened tryOpen(const std::string& uri, const char* vfs, bool exclusive) {
  Opened o;
  o.rc = sqlite3_open_v2(uri.c_str(), &o.db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, vfs);
  if (o.rc == SQLITE_OK) {
    sqlite3_extended_result_codes(o.db, 1);
    sqlite3_busy_timeout(o.db, 2000);
    (void)registerBodyFunctions(o.db);  // body_text(), for whoever reads bodies in SQL
    // A read-only connection cannot checkpoint anyway; say so, so that close never tries.
    sqlite3_db_config(o.db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
    const char* sql = exclusive
                          ? "PRAGMA locking_mode=EXCLUSIVE; SELECT count(*) FROM sqlite_master"
                          : "SELECT count(*) FROM sqlite_master";
    o.rc = sqlite3_exec(o.db, sql, nullptr, nullptr, nullptr);
  }
  if (o.rc != SQLITE_OK) {
    o.message = o.db != nullptr ? sqlite3_errmsg(o.db) : "out of memory";
    sqlite3_close(o.db);
    o.db = nullptr;
  }
  return o;
}

int userVersion(sqlite3* db) {
  sqlite3_stmt* st = nullptr;
  int v = 0;
  if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    v = sqlite3_column_int(st, 0);
  }
  sqlite3_finalize(st);
  return v;
}

bool present(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

}  // namespace

std::string ownerText(const struct stat& st) {
  std::string user = std::to_string(st.st_uid);
  std::string group_name = std::to_string(st.st_gid);
  if (const passwd* pw = getpwuid(st.st_uid); pw != nullptr) {
    user = pw->pw_name;
  }
  if (const struct group* gr = getgrgid(st.st_gid); gr != nullptr) {
    group_name = gr->gr_name;
  }
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return user + ":" + group_name + ", mode " + mode;
}

const char* readModeName(ReadMode mode) {
  switch (mode) {
    case ReadMode::kWal:
      return "wal";
    case ReadMode::kPrivateWal:
      return "private-wal";
    case ReadMode::kImmutable:
      return "immutable";
  }
  return "wal";
}

Owner bufferOwner(const fs::path& dir) {
  const fs::path lock = dir / "buffer.lock";
  struct stat st {};
  if (::stat(lock.c_str(), &st) != 0) {
    return errno == ENOENT ? Owner::kNobody : Owner::kUnknown;
  }
  // /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 fe:00:10953267 0 EOF" (major:minor in hex).
  std::ifstream locks("/proc/locks");
  if (locks) {
    char id[64];
    std::snprintf(id, sizeof(id), "%02x:%02x:%llu", major(st.st_dev), minor(st.st_dev),
                  static_cast<unsigned long long>(st.st_ino));  // NOLINT(runtime/int)
    for (std::string line; std::getline(locks, line);) {
      std::istringstream fields(line);
      std::string n, kind, advisory, type, pid, inode;
      fields >> n >> kind;
      if (kind == "->") {  // a waiter: "1: -> FLOCK ..."
        fields >> kind;
      }
      fields >> advisory >> type >> pid >> inode;
      if (kind == "FLOCK" && inode == id) {
        return Owner::kDaemon;
      }
    }
    return Owner::kNobody;
  }
  // No /proc: a shared flock for an instant (a daemon starting in that instant is refused
  // and restarted by systemd).
  const int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Owner::kUnknown;
  }
  const bool held = ::flock(fd, LOCK_SH | LOCK_NB) != 0;
  ::close(fd);  // releases the shared lock if we got it
  return held ? Owner::kDaemon : Owner::kNobody;
}

Result<ReadOnlyBuffer> openBufferReadOnly(const fs::path& dir) {
  const fs::path file = dir / "buffer.db";
  std::error_code ec;
  const auto status = fs::status(file, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    if (ec == std::errc::permission_denied) {
      return permissionError(dir);
    }
    return makeError("io", "cannot read " + file.string() + ": " + ec.message());
  }
  if (!fs::exists(status)) {
    return makeError("not_found", "no buffer at " + file.string());
  }
  if (::access(file.c_str(), R_OK) != 0) {
    return errno == EACCES
               ? permissionError(file)
               : makeError("io", "cannot read " + file.string() + ": " + std::strerror(errno));
  }
  if (!vfsReady()) {
    return makeError("io", "SQLite has no unix VFS");
  }
  const fs::path wal = file.string() + "-wal";
  const fs::path shm = file.string() + "-shm";
  for (const auto& f : {wal, shm}) {
    if (present(f) && ::access(f.c_str(), R_OK) != 0) {
      return permissionError(f);
    }
  }
  const std::string uri = uriPath(file);
  const auto keep = [&file](sqlite3* db, ReadMode mode) -> Result<ReadOnlyBuffer> {
    ReadOnlyBuffer b{std::shared_ptr<sqlite3>(db, [](sqlite3* p) { sqlite3_close(p); }), mode};
    // A newer omniedge's layout may mean something else by the same tables: say so instead of
    // showing numbers that could be wrong. An older layout is read as it is (status and export
    // look for the tables they need); the daemon upgrades it at its next start.
    const int version = userVersion(db);
    if (version > schema::kBuffer) {
      return makeError("schema", schema::newerMessage(file, version, schema::kBuffer));
    }
    return b;
  };

  if (present(wal) && present(shm)) {
    auto o = tryOpen(uri + "?readonly_shm=1", kVfsShared, false);
    if (o.rc == SQLITE_OK) {
      return keep(o.db, ReadMode::kWal);
    }
    if ((o.rc & 0xff) != SQLITE_CANTOPEN) {
      return makeError("io", "reading " + file.string() + ": " + o.message);
    }
    // The WAL or the -shm went away meanwhile (a daemon stopped): decide again below.
  }
  // From here on nobody may be writing: a private or immutable view of a file that a daemon
  // changes underneath would read torn pages.
  if (bufferOwner(dir) == Owner::kDaemon) {
    return makeError("io", "the daemon owns " + file.string() +
                               " but its WAL cannot be read; try again, or ask the daemon");
  }
  if (present(wal)) {
    auto o = tryOpen(uri, kVfsPrivate, true);
    if (o.rc == SQLITE_OK) {
      return keep(o.db, ReadMode::kPrivateWal);
    }
    return makeError("io", "reading " + file.string() + " with its WAL: " + o.message);
  }
  auto o = tryOpen(uri + "?immutable=1", kVfsShared, false);
  if (o.rc == SQLITE_OK) {
    return keep(o.db, ReadMode::kImmutable);
  }
  return makeError("io", "reading " + file.string() + ": " + o.message);
}

Result<std::shared_ptr<sqlite3>> openFileSnapshot(const fs::path& file) {
  if (!vfsReady()) {
    return makeError("io", "SQLite has no unix VFS");
  }
  const std::string uri = uriPath(file);
  auto o = present(file.string() + "-wal") ? tryOpen(uri, kVfsPrivate, true)
                                           : tryOpen(uri + "?immutable=1", kVfsShared, false);
  if (o.rc != SQLITE_OK) {
    return makeError("io", "reading " + file.string() + ": " + o.message);
  }
  return std::shared_ptr<sqlite3>(o.db, [](sqlite3* p) { sqlite3_close(p); });
}

Result<std::shared_ptr<sqlite3>> openReadOnly(const fs::path& dir) {
  auto r = openBufferReadOnly(dir);
  if (!r) {
    return r.error();
  }
  return r->db;
}

Result<BufferCounts> readBufferCounts(sqlite3* db) {
  BufferCounts c;
  bool have_quarantine = false;
  auto failed = [&](const char* what) {
    return makeError("io", std::string(what) + ": " + sqlite3_errmsg(db));
  };
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(db, "SELECT prio, events, bytes FROM counters", -1, &st, nullptr);
  if (rc == SQLITE_OK) {
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const auto p = sqlite3_column_int64(st, 0);
      const auto events = sqlite3_column_int64(st, 1);
      const auto bytes = sqlite3_column_int64(st, 2);
      if (p >= 0 && p < 3) {
        c.events[p] = events;
        c.bytes[p] = bytes;
      } else if (p == detail::kCounterLastSeq) {
        c.last_seq = events;
        c.saved = true;
      } else if (p == detail::kCounterQuarantine) {
        c.quarantine_events = events;
        c.quarantine_bytes = bytes;
        have_quarantine = true;
      }
    }
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) {
    return failed("reading the counters");
  }
  if (!have_quarantine && schema::hasTable(db, "quarantine")) {
    // A buffer from before the quarantine had its counter: count it (it is small).
    st = nullptr;
    rc = sqlite3_prepare_v2(
        db, "SELECT count(*), coalesce(sum(" OMNIEDGE_ROW_STRINGS_SQL "), 0) FROM quarantine", -1,
        &st, nullptr);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
      c.quarantine_events = sqlite3_column_int64(st, 0);
      c.quarantine_bytes = sqlite3_column_int64(st, 1) + c.quarantine_events * detail::kRowOverhead;
      rc = SQLITE_DONE;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
      return failed("counting the quarantine");
    }
  }
  // Without its seq row the table is as every transaction left it: the buffer saves the whole
  // table at its first commit, and omniedge before 2026-12-03 (and the first layouts, whose
  // highest seq was in sqlite_sequence) at every commit.
  c.saved_last_seq = c.last_seq;
  if (!c.saved) {
    return c;
  }
  // What the table lacks is exactly the rows above the seq it was saved at: seqs only grow, and
  // a transaction that deletes a row saves the table.
  st = nullptr;
  // Events and rows apart: a row of several events (schema version 6) counts its `n` events and
  // its bytes once.
  const bool runs = detail::hasRunColumn(db);
  rc = sqlite3_prepare_v2(db,
                          runs ? "SELECT prio, sum(n), sum(" OMNIEDGE_ROW_STRINGS_SQL
                                 "), max(seq + n - 1), count(*) FROM events WHERE seq > ? "
                                 "GROUP BY prio"
                               : "SELECT prio, count(*), sum(" OMNIEDGE_ROW_STRINGS_SQL
                                 "), max(seq), count(*) FROM events WHERE seq > ? GROUP BY prio",
                          -1, &st, nullptr);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, c.saved_last_seq);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      const auto p = sqlite3_column_int64(st, 0);
      if (p >= 0 && p < 3) {
        c.events[p] += sqlite3_column_int64(st, 1);
        c.bytes[p] +=
            sqlite3_column_int64(st, 2) + sqlite3_column_int64(st, 4) * detail::kRowOverhead;
      }
      c.last_seq = std::max<int64_t>(c.last_seq, sqlite3_column_int64(st, 3));
    }
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) {
    return failed("counting the events appended since the counters were saved");
  }
  return c;
}

}  // namespace omniedge::store
