// The buffer's background checkpoint (agent/store/checkpointer.h) on real SQLite files: it
// copies the WAL into the file while a writer goes on committing, and never blocks that writer.
#include "agent/store/checkpointer.h"

#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

#include "tests/support/fault_vfs.h"
#include "tests/support/temp_dir.h"

using omniedge::store::detail::Checkpointer;
using omniedge::testing::FaultVfs;
using omniedge::testing::TempDir;

namespace {

sqlite3* openWal(const std::filesystem::path& file) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) ==
          SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", nullptr, nullptr,
                       nullptr) == SQLITE_OK);
  sqlite3_wal_autocheckpoint(db, 0);
  return db;
}

int walHook(void* frames, sqlite3* /*db*/, const char* /*name*/, int n) {
  *static_cast<int*>(frames) = n;
  return SQLITE_OK;
}

// One transaction of `rows` rows of 2 KB; SQLITE_OK or what the commit said.
int commitRows(sqlite3* db, int rows) {
  std::string sql = "BEGIN IMMEDIATE;";
  for (int i = 0; i < rows; ++i) {
    sql += "INSERT INTO t(body) VALUES (randomblob(2000));";
  }
  sql += "COMMIT;";
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    (void)sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  return rc;
}

}  // namespace

TEST_CASE(
    "the checkpointer copies the WAL into the file while the writer goes on committing, and "
    "the writer's RESTART then only rewinds it",
    "[unit][buffer]") {
  TempDir dir;
  const auto file = dir.path() / "buffer.db";
  sqlite3* writer = openWal(file);
  int frames = 0;
  sqlite3_wal_hook(writer, walHook, &frames);
  REQUIRE(sqlite3_exec(writer, "CREATE TABLE t(seq INTEGER PRIMARY KEY, body BLOB)", nullptr,
                       nullptr, nullptr) == SQLITE_OK);
  for (int i = 0; i < 20; ++i) {
    REQUIRE(commitRows(writer, 100) == SQLITE_OK);  // ~4 MB of WAL
  }
  const int before = frames;
  REQUIRE(before > 900);
  const auto file_before = std::filesystem::file_size(file);

  Checkpointer checkpointer(openWal(file), 4096 + 24, 64 << 10);
  CHECK_FALSE(checkpointer.take().copied);  // nothing asked for yet
  checkpointer.request();
  // Commits go on meanwhile and never wait: with no busy timeout at all, a checkpoint that took
  // the write lock would make one of them fail with SQLITE_BUSY.
  sqlite3_busy_timeout(writer, 0);
  int commits = 0;
  while (checkpointer.busy() && commits < 200) {
    REQUIRE(commitRows(writer, 2) == SQLITE_OK);
    ++commits;
  }
  const auto pass = checkpointer.take();
  INFO(commits << " commits during the pass");
  CHECK(pass.copied);
  CHECK(pass.rc == SQLITE_OK);
  CHECK(pass.frames >= before);
  // The pages are in the file now, not only in the WAL.
  CHECK(std::filesystem::file_size(file) >= file_before + 3'000'000);

  // The writer's RESTART copies what was committed since and the next commit rewinds the WAL.
  int log = -1;
  int copied = -1;
  sqlite3_busy_timeout(writer, 250);
  REQUIRE(sqlite3_wal_checkpoint_v2(writer, nullptr, SQLITE_CHECKPOINT_RESTART, &log, &copied) ==
          SQLITE_OK);
  CHECK(log == copied);
  REQUIRE(commitRows(writer, 1) == SQLITE_OK);
  CHECK(frames < 10);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(writer, "SELECT count(*) FROM t", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  CHECK(sqlite3_column_int(st, 0) == 2000 + 2 * commits + 1);
  sqlite3_finalize(st);
  sqlite3_close(writer);
}

TEST_CASE("a checkpointer asked for a pass and destroyed at once stops without hanging",
          "[unit][buffer]") {
  TempDir dir;
  const auto file = dir.path() / "buffer.db";
  sqlite3* writer = openWal(file);
  REQUIRE(sqlite3_exec(writer, "CREATE TABLE t(seq INTEGER PRIMARY KEY, body BLOB)", nullptr,
                       nullptr, nullptr) == SQLITE_OK);
  REQUIRE(commitRows(writer, 50) == SQLITE_OK);
  {
    Checkpointer checkpointer(openWal(file), 4096 + 24, 64 << 10);
    checkpointer.request();
  }
  sqlite3_close(writer);
  SUCCEED("destroyed");
}

TEST_CASE(
    "a pass whose sync of the file fails after SQLite counted its pages as copied says so, and "
    "one that SQLite refused itself does not",
    "[unit][buffer][fault]") {
  FaultVfs vfs;  // before every connection
  TempDir dir;
  const auto file = dir.path() / "buffer.db";
  sqlite3* writer = openWal(file);
  REQUIRE(sqlite3_exec(writer, "CREATE TABLE t(seq INTEGER PRIMARY KEY, body BLOB)", nullptr,
                       nullptr, nullptr) == SQLITE_OK);
  for (int i = 0; i < 5; ++i) {
    REQUIRE(commitRows(writer, 100) == SQLITE_OK);
  }
  Checkpointer checkpointer(openWal(file), 4096 + 24, 1 << 30);
  vfs.fail(FaultVfs::Op::kSync, FaultVfs::kMainDb, 0, -1, SQLITE_IOERR_FSYNC);

  // Nobody writes: the pass reaches the WAL's end, SQLite syncs the file itself, the sync fails
  // and SQLite does not count the frames as copied (they are copied again next time).
  checkpointer.request();
  const auto refused = checkpointer.take();
  CHECK(refused.copied);
  CHECK(refused.rc != SQLITE_OK);
  CHECK_FALSE(refused.unsynced);

  // A reader holds an older snapshot, so the pass stops short of the WAL's end: SQLite counts
  // what it copied without syncing, and the checkpointer's own sync fails.
  sqlite3* reader = openWal(file);
  REQUIRE(sqlite3_exec(reader, "BEGIN; SELECT count(*) FROM t;", nullptr, nullptr, nullptr) ==
          SQLITE_OK);
  REQUIRE(commitRows(writer, 100) == SQLITE_OK);
  checkpointer.request();
  const auto failed = checkpointer.take();
  CHECK(failed.copied);
  CHECK(failed.unsynced);
  CHECK(failed.rc == SQLITE_IOERR_FSYNC);
  CHECK_THAT(failed.error, Catch::Contains("syncing buffer.db"));
  REQUIRE(sqlite3_exec(reader, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(reader);

  vfs.clear();
  REQUIRE(commitRows(writer, 1) == SQLITE_OK);
  checkpointer.request();
  const auto next = checkpointer.take();
  CHECK(next.copied);
  CHECK_FALSE(next.unsynced);  // each pass says it for itself
  CHECK(next.rc == SQLITE_OK);
  sqlite3_close(writer);
}
