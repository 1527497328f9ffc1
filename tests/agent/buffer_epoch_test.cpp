// The buffer's side of provable delivery (issue 14 point 7): an epoch naming the seq space, and
// the exact seq ranges of every eviction, quarantine, burnt seq and recovery.
#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "agent/api/uuid.h"
#include "agent/store/buffer.h"
#include "tests/support/fault_vfs.h"
#include "tests/support/temp_dir.h"

using omniedge::Priority;
using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::SeqRanges;
using omniedge::store::StoredEvent;
using omniedge::testing::FaultVfs;
using omniedge::testing::TempDir;

namespace {

StoredEvent makeEvent(const std::string& type, std::size_t body_size, int64_t ms) {
  StoredEvent e;
  e.id = omniedge::makeUuidV7(1700000000000 + ms);
  e.type = type;
  e.priority = omniedge::priorityOf(type);
  e.received_at_ms = 1700000000000 + ms;
  e.body = "{\"id\":\"" + e.id + "\",\"pad\":\"" + std::string(body_size, 'x') + "\"}";
  return e;
}

std::unique_ptr<Buffer> openBuffer(const TempDir& dir, int64_t max_bytes = 1LL << 30) {
  BufferOptions o;
  o.dir = dir.path();
  o.max_bytes = max_bytes;
  o.min_free_disk = 0;
  // Capacity, WAL sizes and spills are counted here in the bodies' JSON bytes (padding that
  // zstd would shrink to nothing); packed bodies have their own tests (body_codec_test.cpp).
  o.pack_bodies = false;
  auto b = Buffer::open(o);
  REQUIRE(b.has_value());
  return std::move(*b);
}

std::vector<int64_t> pendingSeqs(Buffer& b) {
  auto pending = b.readPending(0, 100000, 1 << 30);
  REQUIRE(pending.has_value());
  std::vector<int64_t> seqs;
  for (const auto& e : *pending) {
    seqs.push_back(e.seq);
  }
  return seqs;
}

int64_t count(const SeqRanges& ranges) {
  int64_t n = 0;
  for (const auto& [a, b] : ranges) {
    n += b - a + 1;
  }
  return n;
}

bool covers(const SeqRanges& ranges, int64_t seq) {
  for (const auto& [a, b] : ranges) {
    if (seq >= a && seq <= b) {
      return true;
    }
  }
  return false;
}

}  // namespace

TEST_CASE("a buffer has an epoch from its first open on, kept across restarts", "[unit][buffer]") {
  TempDir dir;
  std::string epoch;
  {
    auto b = openBuffer(dir);
    epoch = b->epoch();
    CHECK(omniedge::isUuid(epoch));
    CHECK(b->epochStartSeq() == 1);
    REQUIRE(b->append({makeEvent("kiosk.view", 50, 1)}).has_value());
  }
  auto b = openBuffer(dir);
  CHECK(b->epoch() == epoch);
  CHECK(b->epochStartSeq() == 1);
  TempDir other;
  CHECK(openBuffer(other)->epoch() != epoch);
}

TEST_CASE("a buffer made before epochs starts one at its oldest pending event", "[unit][buffer]") {
  TempDir dir;
  {
    auto b = openBuffer(dir);
    for (int i = 0; i < 5; ++i) {
      REQUIRE(b->append({makeEvent("kiosk.view", 50, i)}).has_value());
    }
    b->acknowledge(1, 2);
    b->syncAcknowledgements();
  }
  {
    // What an older version left: no epoch in meta.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open((dir / "buffer.db").c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "DELETE FROM meta WHERE key LIKE 'epoch%'", nullptr, nullptr,
                         nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  auto b = openBuffer(dir);
  CHECK(omniedge::isUuid(b->epoch()));
  CHECK(b->epochStartSeq() == 3);  // 1 and 2 went to the centre without seqs
}

TEST_CASE("an eviction reports exactly the seqs it took, and only low-priority ones",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir, 64 * 1024);
  // Beacons with a sale between every ten: the evicted ranges stop at each sale.
  for (int i = 0; i < 100; ++i) {
    REQUIRE(b->append({makeEvent(i % 10 == 5 ? "pos.transaction" : "beacon.enter", 400, i)})
                .has_value());
  }
  for (int i = 0; i < 30; ++i) {
    REQUIRE(b->append({makeEvent("pos.transaction", 400, 1000 + i)}).has_value());
  }
  const auto report = b->takeEvictions();
  REQUIRE(report.events > 0);
  CHECK(count(report.ranges) == report.events);
  // Every evicted seq is gone, every sale is still there.
  const auto pending = pendingSeqs(*b);
  for (const auto seq : pending) {
    CHECK_FALSE(covers(report.ranges, seq));
  }
  for (int64_t seq = 6; seq <= 100; seq += 10) {
    CHECK_FALSE(covers(report.ranges, seq));  // the sales among the beacons
  }
  CHECK(report.ranges.front().first == 1);
  CHECK(report.ranges.front().second == 5);  // stops before the first sale, seq 6
  // Put back, taken again whole.
  b->returnEvictions(report);
  CHECK(b->takeEvictions().ranges == report.ranges);
}

TEST_CASE("a quarantine reports its reason and exactly the seqs it moved", "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  for (int i = 0; i < 10; ++i) {
    REQUIRE(b->append({makeEvent("kiosk.view", 50, i)}).has_value());
  }
  b->quarantine(3, 3, "HTTP 400 bad field");
  b->quarantine(7, 8, "HTTP 400 bad field");
  b->quarantine(5, 5, "too large");
  b->syncAcknowledgements();
  auto reports = b->takeQuarantines();
  REQUIRE(reports.size() == 2);
  std::sort(reports.begin(), reports.end(),
            [](const auto& x, const auto& y) { return x.reason < y.reason; });
  CHECK(reports[0].reason == "HTTP 400 bad field");
  CHECK(reports[0].ranges == SeqRanges{{3, 3}, {7, 8}});
  CHECK(reports[0].events == 3);
  CHECK(reports[1].reason == "too large");
  CHECK(reports[1].ranges == SeqRanges{{5, 5}});
  CHECK(b->takeQuarantines().empty());
  b->returnQuarantines(reports);
  CHECK(b->takeQuarantines().size() == 2);
}

TEST_CASE("seqs burnt by a transaction that rolled back are reported once a commit made them final",
          "[unit][buffer][fault]") {
  TempDir dir;
  FaultVfs vfs;
  auto b = openBuffer(dir);
  REQUIRE(b->append({makeEvent("kiosk.view", 50, 1)}).has_value());  // seq 1
  // Every WAL write fails: both attempts of the next group roll back after numbering it.
  vfs.fail(FaultVfs::Op::kWrite, FaultVfs::kWal, 0, 2, SQLITE_IOERR_WRITE);
  CHECK_FALSE(
      b->append({makeEvent("kiosk.view", 50, 2), makeEvent("kiosk.view", 50, 3)}).has_value());
  CHECK(b->takeEvictions().skipped.empty());  // not final yet: a crash now would reuse them
  vfs.clear();
  REQUIRE(b->append({makeEvent("kiosk.view", 50, 4)}).has_value());
  const auto report = b->takeEvictions();
  REQUIRE_FALSE(report.skipped.empty());
  const auto pending = pendingSeqs(*b);
  REQUIRE(pending.size() == 2);
  CHECK(pending[0] == 1);
  // Exactly the seqs between the two stored events: given to nobody.
  CHECK(report.skipped == SeqRanges{{2, pending[1] - 1}});
  CHECK(report.events == 0);
  b->close();
}

TEST_CASE("a recovered buffer starts a new epoch and names the old seqs it re-sent",
          "[unit][buffer]") {
  TempDir dir;
  std::string old_epoch;
  {
    auto b = openBuffer(dir);
    old_epoch = b->epoch();
    for (int i = 0; i < 50; ++i) {
      REQUIRE(b->append({makeEvent("pos.transaction", 1500, i)}).has_value());
    }
    b->acknowledge(1, 10);  // delivered before the corruption
    b->quarantine(11, 11, "refused");
    b->syncAcknowledgements();
  }
  {
    std::fstream f(dir / "buffer.db", std::ios::in | std::ios::out | std::ios::binary);
    const std::string junk(100, '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  auto b = openBuffer(dir);
  const auto& report = b->openReport();
  REQUIRE(report.recovered);
  CHECK(b->epoch() != old_epoch);
  // The header was lost: nothing readable, the old epoch unknown.
  CHECK(report.previous_epoch.empty());
  CHECK(report.recovered_seqs.empty());
}

TEST_CASE("a salvage from a readable corrupt file retires the old seqs of what it copied",
          "[unit][buffer]") {
  TempDir dir;
  std::string old_epoch;
  {
    auto b = openBuffer(dir);
    old_epoch = b->epoch();
    for (int i = 0; i < 60; ++i) {
      REQUIRE(b->append({makeEvent("pos.transaction", 1500, i)}).has_value());
    }
    b->acknowledge(1, 10);
    b->quarantine(11, 11, "refused");
    b->syncAcknowledgements();
  }
  {
    // Garbage over the 13th page, one of the events table's leaves.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open((dir / "buffer.db").c_str(), &db) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    const int64_t page_size = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    std::fstream f(dir / "buffer.db", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(page_size * 12);
    const std::string junk(static_cast<std::size_t>(page_size), '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  auto b = openBuffer(dir);
  const auto& report = b->openReport();
  REQUIRE(report.recovered);
  CHECK(report.previous_epoch == old_epoch);
  CHECK(b->epoch() != old_epoch);
  // Old seqs 12..60 were pending: each is either re-sent under a new seq or unreadable.
  for (int64_t seq = 12; seq <= 60; ++seq) {
    CAPTURE(seq);
    CHECK((covers(report.recovered_seqs, seq) || covers(report.unreadable_seqs, seq)));
  }
  CHECK(count(report.recovered_seqs) == report.salvaged);
  CHECK_FALSE(covers(report.recovered_seqs, 5));  // delivered before: not re-sent
  // The new epoch starts at the first salvaged event: the quarantine's new seqs lie below it.
  const auto pending = pendingSeqs(*b);
  REQUIRE_FALSE(pending.empty());
  CHECK(b->epochStartSeq() == pending.front());
  CHECK(b->stats().quarantine_events == 1);
}
