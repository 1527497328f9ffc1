#include "agent/store/buffer_reader.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <map>
#include <tuple>

#include "agent/store/buffer.h"
#include "tests/support/temp_dir.h"

namespace fs = std::filesystem;
using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::Owner;
using omniedge::store::ReadMode;
using omniedge::testing::TempDir;

namespace {

using Snapshot = std::map<std::string, std::tuple<int64_t, int64_t, unsigned, unsigned>>;
Snapshot snapshot(const fs::path& dir) {
  Snapshot s;
  for (const auto& e : fs::directory_iterator(dir)) {
    struct stat st {};
    REQUIRE(lstat(e.path().c_str(), &st) == 0);
    s[e.path().filename().string()] = {
        st.st_size, st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, st.st_mode, st.st_uid};
  }
  return s;
}

BufferOptions options(const TempDir& dir) {
  BufferOptions o;
  o.dir = dir.path();
  o.min_free_disk = 0;
  return o;
}

std::vector<omniedge::store::StoredEvent> events(int n) {
  std::vector<omniedge::store::StoredEvent> out;
  for (int i = 0; i < n; ++i) {
    omniedge::store::StoredEvent e;
    e.id = "ev-" + std::to_string(i);
    e.type = "kiosk.view";
    e.received_at_ms = 1700000000000 + i;
    e.body = R"({"id":")" + e.id + R"(","type":"kiosk.view"})";
    out.push_back(std::move(e));
  }
  return out;
}

// A daemon that stores `n` events and dies without closing anything (kill -9).
void crashAfterStoring(const TempDir& dir, int n) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto b = Buffer::open(options(dir));
    const bool ok = b.has_value() && (*b)->append(events(n)).has_value();
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

int64_t pendingCount(sqlite3* db) {
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT count(*) FROM events", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const int64_t n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

}  // namespace

TEST_CASE("the buffer reader creates and changes no file, after a clean stop or a crash",
          "[unit][cli]") {
  TempDir dir;
  SECTION("clean stop: no WAL, the file is read as immutable") {
    {
      auto b = Buffer::open(options(dir));
      REQUIRE(b.has_value());
      REQUIRE((*b)->append(events(7)).has_value());
      (*b)->close();
    }
    REQUIRE_FALSE(fs::exists(dir / "buffer.db-wal"));
    const auto before = snapshot(dir.path());
    auto r = omniedge::store::openBufferReadOnly(dir.path());
    REQUIRE(r.has_value());
    CHECK(r->mode == ReadMode::kImmutable);
    CHECK(pendingCount(r->db.get()) == 7);
    r->db.reset();
    CHECK(snapshot(dir.path()) == before);  // no buffer.db-wal or -shm created
  }
  SECTION("crash: the events still in the WAL are seen") {
    crashAfterStoring(dir, 9);
    REQUIRE(fs::file_size(dir / "buffer.db-wal") > 0);
    const auto before = snapshot(dir.path());
    auto r = omniedge::store::openBufferReadOnly(dir.path());
    REQUIRE(r.has_value());
    CHECK(r->mode == ReadMode::kWal);
    CHECK(pendingCount(r->db.get()) == 9);
    r->db.reset();
    CHECK(snapshot(dir.path()) == before);
  }
  SECTION("crash, and the -shm gone: the WAL is replayed in private memory") {
    crashAfterStoring(dir, 5);
    fs::remove(dir / "buffer.db-shm");
    const auto before = snapshot(dir.path());
    auto r = omniedge::store::openBufferReadOnly(dir.path());
    REQUIRE(r.has_value());
    CHECK(r->mode == ReadMode::kPrivateWal);
    CHECK(pendingCount(r->db.get()) == 5);
    r->db.reset();
    CHECK(snapshot(dir.path()) == before);
  }
  SECTION("no buffer at all") {
    auto r = omniedge::store::openBufferReadOnly(dir.path());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "not_found");
    CHECK(fs::is_empty(dir.path()));
  }
}

TEST_CASE("bufferOwner sees a daemon's lock without taking it", "[unit][cli]") {
  TempDir dir;
  CHECK(omniedge::store::bufferOwner(dir.path()) == Owner::kNobody);
  {
    auto b = Buffer::open(options(dir));
    REQUIRE(b.has_value());
    CHECK(omniedge::store::bufferOwner(dir.path()) == Owner::kDaemon);
    // Looking did not take the lock: a second owner is still refused, the first keeps it.
    CHECK(Buffer::open(options(dir)).error().code == "busy");
  }
  crashAfterStoring(dir, 1);
  CHECK(fs::exists(dir / "buffer.lock"));  // left by the crash
  CHECK(omniedge::store::bufferOwner(dir.path()) == Owner::kNobody);
}
