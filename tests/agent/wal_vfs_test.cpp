// The buffer's connections with synchronous=FULL write a commit's WAL frames in one write
// (agent/store/wal_vfs.h): what they commit is there for every other connection at once, large
// and spilling transactions included, and a write that fails is the commit's failure.
#include "agent/store/wal_vfs.h"

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "agent/store/buffer_sqlite.h"
#include "tests/support/fault_vfs.h"
#include "tests/support/temp_dir.h"

using omniedge::store::detail::coalescingWalVfs;
using omniedge::store::detail::openConnection;
using omniedge::testing::FaultVfs;
using omniedge::testing::TempDir;

namespace {

// A field of /proc/self/io: "syscw:" (write calls this process made so far: write, pwrite,
// writev...), "write_bytes:" (what it caused to be written to storage: page-cache pages it
// dirtied, direct writes' bytes).
long ownIo(const std::string& field) {
  std::ifstream io("/proc/self/io");
  std::string key;
  long value = 0;
  while (io >> key >> value) {
    if (key == field) {
      return value;
    }
  }
  return -1;
}
long writeCalls() { return ownIo("syscw:"); }

// Whether the file system of `dir` takes O_DIRECT writes of 512-byte sectors (ext4 on most
// disks does; tmpfs before Linux 6.6 and a device of 4 KiB sectors do not).
bool takesSectorWrites(const TempDir& dir) {
  const auto probe = dir / "direct-probe";
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return false;
  }
  void* sector = nullptr;
  bool ok = posix_memalign(&sector, 4096, 4096) == 0;
  if (ok) {
    std::memset(sector, 0, 4096);
    ok = ::pwrite(fd, sector, 512, 0) == 512;
  }
  std::free(sector);
  ::close(fd);
  std::filesystem::remove(probe);
  return ok;
}

void run(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  const std::string message = err != nullptr ? err : "";
  sqlite3_free(err);
  if (rc != SQLITE_OK) {  // no assertion otherwise: `-s` would print it inside a count of writes
    FAIL(sql << ": " << message);
  }
}

int64_t one(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

// A second connection through SQLite's default VFS: what any reader or the CLI sees.
sqlite3* plainReader(const TempDir& dir) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((dir / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  return db;
}

// The buffer's connection with synchronous=FULL (through the coalescing VFS), and a table t.
sqlite3* openTable(const TempDir& dir) {
  auto conn = openConnection(dir.path(), true);
  REQUIRE(conn);
  run(*conn, "CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)");
  return *conn;
}

// An INSERT of n rows into t whose body is `body`.
std::string rows(int n, const std::string& body) {
  return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < " +
         std::to_string(n) + ") INSERT INTO t(body) SELECT " + body + " FROM c";
}

// n rows of `size` bytes, each commit of `per_commit` rows.
void insertRows(sqlite3* db, int n, int size, int per_commit) {
  for (int i = 0; i < n; i += per_commit) {
    run(db, "BEGIN");
    run(db, rows(per_commit, "randomblob(" + std::to_string(size) + ")"));
    run(db, "COMMIT");
  }
}

}  // namespace

TEST_CASE(
    "a commit's WAL frames are written in a write call per 4 KiB instead of two per frame, and "
    "every commit is seen at once by another connection",
    "[unit][buffer]") {
  TempDir dir;
  sqlite3* db = openTable(dir);
  insertRows(db, 1, 10, 1);  // the WAL exists, its header written
  const auto wal = dir / "buffer.db-wal";

  sqlite3* reader = plainReader(dir);
  for (int round = 1; round <= 20; ++round) {
    const auto size_before = static_cast<long>(std::filesystem::file_size(wal));
    const long before = writeCalls();
    insertRows(db, 40, 1000, 40);  // ~25 pages of 2 KiB: ~50 frame writes through SQLite
    const long calls = writeCalls() - before;
    const long bytes = static_cast<long>(std::filesystem::file_size(wal)) - size_before;
    INFO("round " << round << ": " << calls << " write calls for " << bytes << " bytes");
    CHECK(bytes > 40 * 1000);
    CHECK(calls <= bytes / 4096 + 2);
    CHECK(one(reader, "SELECT count(*) FROM t") == 1 + 40 * round);
  }
  CHECK(one(reader, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'") ==
        1);
  sqlite3_close(reader);

  SECTION("over synchronous=NORMAL SQLite's own VFS writes the frames, two calls each") {
    auto normal = openConnection(dir.path(), false);
    REQUIRE(normal);
    const auto size_before = static_cast<long>(std::filesystem::file_size(wal));
    const long before = writeCalls();
    insertRows(*normal, 40, 1000, 40);
    const long bytes = static_cast<long>(std::filesystem::file_size(wal)) - size_before;
    CHECK(writeCalls() - before >= 2 * (bytes / (2048 + 24)));
    sqlite3_close(*normal);
  }
  sqlite3_close(db);
}

TEST_CASE(
    "transactions over the write size the VFS holds, and ones that spill pages to the WAL "
    "before they commit, are stored whole",
    "[unit][buffer]") {
  TempDir dir;
  sqlite3* db = openTable(dir);
  // 128 KiB is where the unix VFS's single write would have written nothing: sizes around it.
  for (int bytes : {64 * 1024, 128 * 1024 - 24, 128 * 1024, 128 * 1024 + 2072, 3 << 20}) {
    insertRows(db, 1, bytes, 1);
  }
  // A page cache of 10 pages: SQLite writes pages to the WAL mid-transaction, reads them back,
  // changes them again and rewrites their frames' checksums at the commit.
  run(db, "PRAGMA cache_size=10");
  run(db, "BEGIN");
  run(db, rows(3000, "randomblob(700)"));
  run(db, "UPDATE t SET body = zeroblob(600) WHERE id % 3 = 0");
  run(db, "COMMIT");
  sqlite3* reader = plainReader(dir);
  CHECK(one(reader, "SELECT count(*) FROM t") == 5 + 3000);
  CHECK(one(reader, "SELECT sum(length(body)) FROM t WHERE id > 5") == 2000 * 700 + 1000 * 600);
  CHECK(one(reader, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'") ==
        1);
  sqlite3_close(reader);
  sqlite3_close(db);
}

TEST_CASE(
    "a WAL write that fails under the coalescing VFS fails its commit, and nothing of it "
    "is stored",
    "[unit][buffer]") {
  FaultVfs faults;  // the default VFS now; the coalescing VFS goes over it
  TempDir dir;
  REQUIRE(coalescingWalVfs() != nullptr);
  sqlite3* db = openTable(dir);
  insertRows(db, 10, 100, 10);

  const int error = GENERATE(SQLITE_IOERR_WRITE, SQLITE_FULL);
  faults.fail(FaultVfs::Op::kWrite, FaultVfs::kWal, 0, 1, error);
  run(db, "BEGIN");
  run(db, rows(50, "randomblob(1000)"));
  CHECK(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr) == error);
  CHECK(faults.injected() == 1);
  if (sqlite3_get_autocommit(db) == 0) {
    run(db, "ROLLBACK");
  }
  sqlite3* reader = plainReader(dir);
  CHECK(one(reader, "SELECT count(*) FROM t") == 10);
  insertRows(db, 5, 100, 5);  // the next commit goes through
  CHECK(one(reader, "SELECT count(*) FROM t") == 15);
  sqlite3_close(reader);
  sqlite3_close(db);
}

TEST_CASE(
    "a WAL write that fails in the middle of a transaction that spills pages loses none of the "
    "frames held before it: what commits is whole",
    "[unit][buffer]") {
  FaultVfs faults;
  TempDir dir;
  sqlite3* db = openTable(dir);
  insertRows(db, 5, 100, 5);
  run(db, "PRAGMA cache_size=10");  // pages spill to the WAL and are read back from it

  // The first, second or fifth write of the WAL fails: held frames of earlier statements are
  // then still to be written when the next statement or the commit needs them.
  const int64_t skip = GENERATE(0, 1, 4);
  faults.fail(FaultVfs::Op::kWrite, FaultVfs::kWal, skip, 1, SQLITE_IOERR_WRITE);
  run(db, "BEGIN");
  const int first =
      sqlite3_exec(db, rows(1500, "randomblob(700)").c_str(), nullptr, nullptr, nullptr);
  const int second =
      sqlite3_get_autocommit(db) == 0
          ? sqlite3_exec(db, rows(1500, "randomblob(500)").c_str(), nullptr, nullptr, nullptr)
          : SQLITE_ABORT;
  const int commit = sqlite3_get_autocommit(db) == 0
                         ? sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr)
                         : SQLITE_ABORT;
  if (sqlite3_get_autocommit(db) == 0) {
    run(db, "ROLLBACK");
  }
  INFO("skip " << skip << ": first " << first << ", second " << second << ", commit " << commit);
  CHECK(faults.injected() == 1);
  const int64_t expect_rows =
      commit == SQLITE_OK ? (first == SQLITE_OK ? 1500 : 0) + (second == SQLITE_OK ? 1500 : 0) : 0;
  const int64_t expect_bytes = commit == SQLITE_OK ? (first == SQLITE_OK ? 1500 * 700 : 0) +
                                                         (second == SQLITE_OK ? 1500 * 500 : 0)
                                                   : 0;
  sqlite3* reader = plainReader(dir);
  CHECK(one(reader, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'") ==
        1);
  CHECK(one(reader, "SELECT count(*) FROM t") == 5 + expect_rows);
  CHECK(one(reader, "SELECT coalesce(sum(length(body)), 0) FROM t WHERE id > 5") == expect_bytes);
  insertRows(db, 5, 100, 5);  // the next transaction goes through
  CHECK(one(reader, "SELECT count(*) FROM t") == 10 + expect_rows);
  sqlite3_close(reader);
  sqlite3_close(db);
}

TEST_CASE(
    "a commit of a few pages goes to the disk's sectors directly: each writes less than the "
    "page-cache page a commit used to dirty, and every byte of it reads back, also after a "
    "kill -9, among large commits and another connection's checkpoints and writes",
    "[unit][buffer]") {
  TempDir dir;
  sqlite3* db = openTable(dir);
  insertRows(db, 1, 10, 1);
  sqlite3* reader = plainReader(dir);

  // 300 lone commits of one row each (about a compressed event), here and through SQLite's own
  // VFS on a file set up the same way: through the page cache each commit dirtied (and, synced,
  // wrote back) at least one 4 KiB page, 1.6 on average; directly, the frame's 2,072 bytes in
  // 512-byte sectors.
  const auto bytesOf300Commits = [](sqlite3* conn) {
    const long before = ownIo("write_bytes:");
    insertRows(conn, 300, 250, 1);
    return ownIo("write_bytes:") - before;
  };
  const long direct = bytesOf300Commits(db);
  TempDir plain_dir;
  sqlite3* plain = nullptr;
  REQUIRE(sqlite3_open_v2((plain_dir / "buffer.db").c_str(), &plain,
                          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) == SQLITE_OK);
  run(plain,
      "PRAGMA page_size=2048; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
      "CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)");
  insertRows(plain, 1, 10, 1);
  const long cached = bytesOf300Commits(plain);
  sqlite3_close(plain);
  if (!takesSectorWrites(dir)) {
    WARN("the file system of " << dir.path()
                               << " takes no 512-byte O_DIRECT writes: frames went through the "
                                  "page cache");
  } else if (cached == 0) {
    WARN("the file system of " << dir.path() << " writes to no device (tmpfs): nothing to count");
  } else {
    INFO(direct / 300 << " bytes written per commit directly, " << cached / 300
                      << " through the page cache");
    CHECK(direct * 10 < cached * 7);
  }
  CHECK(one(reader, "SELECT count(*) FROM t") == 301);

  // Lone commits between large ones (through the page cache) and spilling ones, while a second
  // writing connection checkpoints (rewinding and truncating the WAL) and writes its own rows:
  // a remembered sector must never be written back over what another connection wrote.
  auto other = openConnection(dir.path(), true);
  REQUIRE(other);
  int64_t count = 301;
  int64_t bytes = one(reader, "SELECT sum(length(body)) FROM t");
  for (int round = 0; round < 30; ++round) {
    insertRows(db, 7, 100 + 37 * round, 1);
    insertRows(db, 50, 900, 50);
    run(*other,
        round % 2 == 0 ? "PRAGMA wal_checkpoint(RESTART)" : "PRAGMA wal_checkpoint(TRUNCATE)");
    insertRows(*other, 3, 333, 1);
    insertRows(db, 5, 1500, 1);
    count += 7 + 50 + 3 + 5;
    bytes += 7 * (100 + 37 * round) + 50 * 900 + 3 * 333 + 5 * 1500;
    REQUIRE(one(reader, "SELECT count(*) FROM t") == count);
    REQUIRE(one(reader, "SELECT sum(length(body)) FROM t") == bytes);
  }
  sqlite3_close(*other);
  CHECK(one(reader, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'") ==
        1);
  sqlite3_close(reader);
  sqlite3_close(db);

  // A child commits rows one by one and says each one it committed; it is killed mid-stream.
  // The WAL's recovery then checks every frame's checksum: each one said is there.
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(pipe_fds[0]);
    auto conn = openConnection(dir.path(), true);
    if (!conn) {
      _exit(3);
    }
    for (int i = 1;; ++i) {
      const std::string sql = "INSERT INTO t(id, body) VALUES (" + std::to_string(100000 + i) +
                              ", randomblob(" + std::to_string(200 + i % 900) + "))";
      if (sqlite3_exec(*conn, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
        _exit(4);
      }
      if (::write(pipe_fds[1], &i, sizeof i) != sizeof i) {
        _exit(5);
      }
    }
  }
  ::close(pipe_fds[1]);
  int said = 0;
  int got = 0;
  while (said < 2000 && ::read(pipe_fds[0], &got, sizeof got) == sizeof got) {
    said = got;
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  ::close(pipe_fds[0]);
  REQUIRE(said >= 2000);
  reader = plainReader(dir);
  CHECK(one(reader, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'") ==
        1);
  CHECK(one(reader, "SELECT count(*) FROM t") >= count + said);
  CHECK(one(reader,
            ("SELECT count(*) FROM t WHERE id BETWEEN 100001 AND " + std::to_string(100000 + said))
                .c_str()) == said);
  sqlite3_close(reader);
}

TEST_CASE(
    "a connection that wrote a WAL's first frame does not write back its remembered sector over "
    "the frame another connection wrote there after rewinding the WAL",
    "[unit][buffer]") {
  TempDir dir;
  if (!takesSectorWrites(dir)) {
    WARN("the file system of " << dir.path() << " takes no 512-byte O_DIRECT writes");
    return;
  }
  sqlite3* a = openTable(dir);
  run(a, "INSERT INTO t(id, body) VALUES (1, 'one'), (2, 'two')");
  auto b = openConnection(dir.path(), true);
  REQUIRE(b);
  const auto wal = dir / "buffer.db-wal";
  // A rewinds the WAL and writes one frame (the header and 2,072 bytes: the 2,104th byte is in
  // the fifth sector, which A keeps); then B does the same with other bytes, ending at the same
  // place; then A writes the next frame from there.
  run(a, "PRAGMA wal_checkpoint(TRUNCATE)");
  run(a, "UPDATE t SET body = 'A-first' WHERE id = 1");
  REQUIRE(std::filesystem::file_size(wal) == 2560);
  run(*b, "PRAGMA wal_checkpoint(TRUNCATE)");
  run(*b, "UPDATE t SET body = 'B-second' WHERE id = 2");
  REQUIRE(std::filesystem::file_size(wal) == 2560);
  run(a, "UPDATE t SET body = 'A-third' WHERE id = 1");

  // What a crash would leave: the file and its WAL, recovered by a new reader, which checks
  // every frame's checksum: B's frame must be whole.
  TempDir crashed;
  std::filesystem::copy_file(dir / "buffer.db", crashed / "buffer.db");
  std::filesystem::copy_file(wal, crashed / "buffer.db-wal");
  sqlite3* reader = plainReader(crashed);
  CHECK(one(reader, "SELECT count(*) FROM t WHERE id = 1 AND body = 'A-third'") == 1);
  CHECK(one(reader, "SELECT count(*) FROM t WHERE id = 2 AND body = 'B-second'") == 1);
  sqlite3_close(reader);
  sqlite3_close(*b);
  sqlite3_close(a);
}
