// Recovery that cannot make things worse: only real corruption moves the buffer aside, the
// salvage is complete and synced before the original moves, a crash at any step is resumed by
// the next start, a corrupt-* file left unsalvaged is picked up again, and permission problems,
// I/O errors, a full disk or a missing -shm are errors to retry, never "corrupt".
#include <grp.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "agent/api/uuid.h"
#include "agent/store/buffer.h"
#include "tests/support/fault_vfs.h"
#include "tests/support/temp_dir.h"

using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::StoredEvent;
using omniedge::testing::FaultVfs;
using omniedge::testing::readFile;
using omniedge::testing::TempDir;
namespace fs = std::filesystem;

namespace {

int g_next = 0;

StoredEvent event(const std::string& type, std::size_t body_size = 300) {
  StoredEvent e;
  ++g_next;
  e.id = type == "pos.transaction" ? "store-1:ws-2:2026-11-30:" + std::to_string(g_next)
                                   : omniedge::makeUuidV7(1700000000000 + g_next);
  e.type = type;
  e.priority = omniedge::priorityOf(type);
  e.received_at_ms = 1700000000000 + g_next;
  e.body = "{\"id\":\"" + e.id + "\",\"pad\":\"" + std::string(body_size, 'y') + "\"}";
  return e;
}

BufferOptions options(const fs::path& dir) {
  BufferOptions o;
  o.dir = dir;
  o.min_free_disk = 0;
  return o;
}

std::unique_ptr<Buffer> openBuffer(const fs::path& dir) {
  auto b = Buffer::open(options(dir));
  INFO((b ? std::string() : b.error().message));
  REQUIRE(b.has_value());
  return std::move(*b);
}

// Byte for byte (a helper, so that a failure does not print megabytes).
bool sameContent(const fs::path& p, const std::string& content) { return readFile(p) == content; }

std::set<std::string> pendingIds(Buffer& b) {
  std::set<std::string> ids;
  int64_t after = 0;
  for (;;) {
    auto p = b.readPending(after, 1000, 64 << 20);
    REQUIRE(p.has_value());
    if (p->empty()) {
      return ids;
    }
    for (const auto& e : *p) {
      const auto start = e.body.find("\"id\":\"") + 6;
      ids.insert(e.body.substr(start, e.body.find('"', start) - start));
      after = e.seq;
    }
  }
}

std::vector<std::string> namesStartingWith(const fs::path& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) {
      out.push_back(name);
    }
  }
  return out;
}

// A buffer holding pending events, delivered POS ids (the dedup memory) and a quarantine.
struct Content {
  std::set<std::string> pending;
  std::vector<StoredEvent> delivered_pos;
  std::set<std::string> quarantined;
};

Content fillBuffer(const fs::path& dir) {
  Content c;
  auto b = openBuffer(dir);
  for (int i = 0; i < 5; ++i) {
    c.delivered_pos.push_back(event("pos.transaction"));
  }
  REQUIRE(b->append(c.delivered_pos).has_value());
  std::vector<StoredEvent> refused = {event("kiosk.bad"), event("kiosk.bad"), event("kiosk.bad")};
  REQUIRE(b->append(refused).has_value());
  auto p = b->readPending(0, 8, 1 << 20);
  REQUIRE(p.has_value());
  REQUIRE(p->size() == 8);
  b->acknowledge(p->at(0).seq, p->at(4).seq);
  b->quarantine(p->at(5).seq, p->at(7).seq, "refused: bad schema");
  b->syncAcknowledgements();
  for (const auto& e : refused) {
    c.quarantined.insert(e.id);
  }
  std::vector<StoredEvent> more;
  for (int i = 0; i < 40; ++i) {
    more.push_back(event(i % 3 == 0 ? "pos.transaction" : "kiosk.view", 1500));
  }
  REQUIRE(b->append(more).has_value());
  for (const auto& e : more) {
    c.pending.insert(e.id);
  }
  // A kiosk's request, ids the agent made: rows of several events, salvaged event by event.
  std::vector<StoredEvent> request;
  for (int i = 0; i < 40; ++i) {
    request.push_back(event("kiosk.view", 400));
    request.back().id_origin = omniedge::store::IdOrigin::kAgent;
    request.back().received_at_ms = 1700000099999;
  }
  REQUIRE(b->append(request).has_value());
  for (const auto& e : request) {
    c.pending.insert(e.id);
  }
  b->close();
  return c;
}

// Garbage over the root page of the id index: quick_check fails, the events table itself (and
// so every pending event) can still be read.
void corruptIdIndex(const fs::path& dir) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((dir / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db,
                             "SELECT pageno FROM dbstat WHERE name = 'events_given_id' "
                             "ORDER BY pageno LIMIT 1",
                             -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const int64_t page = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  REQUIRE(sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const int64_t page_size = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  std::fstream f(dir / "buffer.db", std::ios::in | std::ios::out | std::ios::binary);
  f.seekp((page - 1) * page_size);
  const std::string junk(static_cast<std::size_t>(page_size), '\x5a');
  f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
}

// Everything a completed recovery must show, however many starts it took.
void checkRecovered(const fs::path& dir, const Content& c, const std::string& original) {
  auto b = openBuffer(dir);
  const auto& report = b->openReport();
  CHECK(report.recovered);
  CHECK(report.salvaged == static_cast<int64_t>(c.pending.size()));
  CHECK(report.problem.find("Page") != std::string::npos);
  CHECK(pendingIds(*b) == c.pending);
  CHECK(b->stats().quarantine_events == static_cast<int64_t>(c.quarantined.size()));
  CHECK(b->stats().quarantine_last_reason == "refused: bad schema");
  // The POS dedup memory came along: the delivered sales are refused a second time.
  auto again = b->append(c.delivered_pos);
  REQUIRE(again.has_value());
  CHECK(again->duplicates == c.delivered_pos.size());
  // The original is kept aside, byte for byte; nothing of the recovery is left over.
  const auto aside = namesStartingWith(dir, "buffer.db.corrupt-");
  INFO(aside.size() << (aside.size() > 1 ? aside[0] + " " + aside[1] : ""));
  REQUIRE(aside.size() == 1);
  CHECK(fs::path(report.moved_to).filename() == aside[0]);
  CHECK(sameContent(dir / aside[0], original));
  CHECK(namesStartingWith(dir, "buffer.db.salvage").empty());
  CHECK(report.picked_up.empty());
  // And the next start has nothing left to report.
  b->close();
  auto next = openBuffer(dir);
  CHECK_FALSE(next->openReport().recovered);
  CHECK(pendingIds(*next) == c.pending);
}

}  // namespace

TEST_CASE("a corrupt buffer is salvaged whole: pending events, quarantine and POS dedup memory",
          "[unit][buffer]") {
  TempDir dir;
  const auto c = fillBuffer(dir.path());
  corruptIdIndex(dir.path());
  const auto original = readFile(dir / "buffer.db");
  checkRecovered(dir.path(), c, original);
}

TEST_CASE("a recovery interrupted at any step is finished by the next start", "[unit][buffer]") {
  const std::string step = GENERATE("salvage-created", "salvage-written", "salvage-complete",
                                    "wal-moved", "original-moved", "salvage-in-place");
  INFO("the process ends at " << step);
  TempDir dir;
  const auto c = fillBuffer(dir.path());
  corruptIdIndex(dir.path());
  const auto original = readFile(dir / "buffer.db");

  // A child process starts the recovery and ends abruptly (_exit: no destructor, no close) right
  // after the step, as a crash or a power cut after the step's fsync would leave it.
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto o = options(dir.path());
    o.on_recovery_step = [&](std::string_view s) {
      if (s == step) {
        _exit(0);
      }
    };
    auto b = Buffer::open(o);
    _exit(b ? 3 : 4);  // the step never came
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);

  // The original stays where it is, untouched, until the salvaged copy is complete and synced.
  const bool original_moved = step == "original-moved" || step == "salvage-in-place";
  if (!original_moved) {
    CHECK(sameContent(dir / "buffer.db", original));
  }
  checkRecovered(dir.path(), c, original);
}

TEST_CASE("a buffer.db.corrupt-* left behind unsalvaged is picked up again, once",
          "[unit][buffer]") {
  TempDir dir;
  // As an interrupted recovery of an older version left it: the content sits in the corrupt-*
  // file only.
  const auto c = fillBuffer(dir.path());
  fs::rename(dir / "buffer.db", dir / "buffer.db.corrupt-1700000000000");
  std::set<std::string> expected = c.pending;
  {
    auto b = openBuffer(dir.path());
    const auto& report = b->openReport();
    REQUIRE(report.picked_up.size() == 1);
    CHECK(report.picked_up[0] == "buffer.db.corrupt-1700000000000");
    CHECK(report.picked_up_events == static_cast<int64_t>(c.pending.size()));
    CHECK(pendingIds(*b) == c.pending);
    CHECK(b->stats().quarantine_events == 3);
    auto again = b->append(c.delivered_pos);
    REQUIRE(again.has_value());
    CHECK(again->duplicates == c.delivered_pos.size());
    const auto fresh = event("kiosk.view");
    REQUIRE(b->append({fresh}).has_value());
    expected.insert(fresh.id);
  }
  auto b = openBuffer(dir.path());
  CHECK(b->openReport().picked_up.empty());
  CHECK(pendingIds(*b) == expected);  // not copied twice
  CHECK(b->stats().quarantine_events == 3);
  CHECK(fs::exists(dir / "buffer.db.corrupt-1700000000000"));  // kept for the technician
}

TEST_CASE("a buffer this process cannot write is a permission error, never corruption",
          "[unit][buffer]") {
  if (geteuid() != 0) {
    WARN("not root: cannot create files owned by another user here; skipped");
    return;
  }
  TempDir dir;
  REQUIRE(chmod(dir.path().c_str(), 0711) == 0);
  const fs::path data = dir / "data";
  fs::create_directories(data);
  {
    auto b = openBuffer(data);
    REQUIRE(b->append({event("pos.transaction"), event("kiosk.view")}).has_value());
  }
  // As after one run as root: the data dir belongs to the service user, the buffer to root.
  const uid_t nobody = 65534;
  REQUIRE(chown(data.c_str(), nobody, nobody) == 0);
  REQUIRE(chmod((data / "buffer.db").c_str(), 0600) == 0);
  const auto before = readFile(data / "buffer.db");

  int fds[2];
  REQUIRE(pipe(fds) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    if (setgroups(0, nullptr) != 0 || setresgid(nobody, nobody, nobody) != 0 ||
        setresuid(nobody, nobody, nobody) != 0) {
      _exit(5);
    }
    auto b = Buffer::open(options(data));
    const std::string out = b ? std::string("opened") : b.error().code + "\n" + b.error().message;
    (void)!write(fds[1], out.data(), out.size());
    _exit(0);
  }
  ::close(fds[1]);
  std::string said;
  char buf[4096];
  for (ssize_t n = 0; (n = read(fds[0], buf, sizeof buf)) > 0;) {
    said.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  INFO(said);
  CHECK(said.rfind("permission\n", 0) == 0);
  // The message names the file, its owner and the fix.
  CHECK(said.find((data / "buffer.db").string()) != std::string::npos);
  CHECK(said.find("owned by root") != std::string::npos);
  CHECK(said.find("chown -R nobody") != std::string::npos);
  CHECK(said.find("Nothing was moved") != std::string::npos);
  // ... and the buffer is where it was, as it was.
  CHECK(sameContent(data / "buffer.db", before));
  CHECK(namesStartingWith(data, "buffer.db.").empty());
  auto b = openBuffer(data);  // root can still use it
  CHECK_FALSE(b->openReport().recovered);
  CHECK(b->stats().pending[0] + b->stats().pending[1] == 2);
}

TEST_CASE(
    "an I/O error while opening or checking the buffer is an error to retry, never "
    "corruption",
    "[unit][fault][buffer]") {
  const int skip = GENERATE(0, 6);  // fail the first read, or reads during quick_check
  INFO("reads of buffer.db fail after " << skip);
  TempDir dir;
  {
    auto b = openBuffer(dir.path());
    std::vector<StoredEvent> v;
    for (int i = 0; i < 200; ++i) {
      v.push_back(event("kiosk.view", 2000));
    }
    REQUIRE(b->append(v).has_value());
  }
  dir.write("buffer.lock", "");  // an unclean shutdown: the whole file is checked
  const auto before = readFile(dir / "buffer.db");
  {
    FaultVfs vfs;
    vfs.fail(FaultVfs::Op::kRead, FaultVfs::kMainDb, skip, -1, SQLITE_IOERR_READ);
    auto r = Buffer::open(options(dir.path()));
    REQUIRE_FALSE(r.has_value());
    INFO(r.error().message);
    CHECK(r.error().code == "io");
    CHECK(r.error().message.find("buffer.db") != std::string::npos);
    CHECK(vfs.injected() > 0);
  }
  CHECK(sameContent(dir / "buffer.db", before));
  CHECK(namesStartingWith(dir.path(), "buffer.db.").empty());
  auto b = openBuffer(dir.path());
  CHECK_FALSE(b->openReport().recovered);
  CHECK(b->stats().pending[1] == 200);
}

TEST_CASE("a full disk while creating the buffer is an error to retry, never corruption",
          "[unit][fault][buffer]") {
  TempDir dir;
  {
    FaultVfs vfs;
    vfs.fail(FaultVfs::Op::kWrite, FaultVfs::kAnyFile, 0, -1, SQLITE_FULL);
    auto r = Buffer::open(options(dir.path()));
    REQUIRE_FALSE(r.has_value());
    INFO(r.error().message);
    CHECK(r.error().code == "full");
  }
  CHECK(namesStartingWith(dir.path(), "buffer.db.").empty());
  auto b = openBuffer(dir.path());
  CHECK_FALSE(b->openReport().recovered);
  REQUIRE(b->append({event("kiosk.view")}).has_value());
}

TEST_CASE("a WAL left by a crash without its -shm is read back, not declared corrupt",
          "[unit][buffer]") {
  TempDir dir;
  std::set<std::string> ids;
  std::vector<StoredEvent> v;
  for (int i = 0; i < 20; ++i) {
    v.push_back(event("kiosk.view"));
    ids.insert(v.back().id);
  }
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto b = Buffer::open(options(dir.path()));
    if (!b || !(*b)->append(v)) {
      _exit(3);
    }
    _exit(0);  // a crash: the committed events are in the WAL only
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(fs::exists(dir / "buffer.db-wal"));
  fs::remove(dir / "buffer.db-shm");
  auto b = openBuffer(dir.path());
  CHECK(b->openReport().unclean_shutdown);
  CHECK_FALSE(b->openReport().recovered);
  CHECK(pendingIds(*b) == ids);
}
