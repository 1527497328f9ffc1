// The buffer under injected I/O faults (tests/support/fault_vfs.h: a wrapping SQLite VFS that
// fails the Nth write or sync of the WAL, or holds one up): statement-level rollback inside a
// group commit, a producer history with random faults, shutdown while acknowledgements fail,
// and the WAL's bound while a reader reads all the time.
#include <sqlite3.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "agent/api/uuid.h"
#include "agent/store/buffer.h"
#include "tests/support/fault_vfs.h"
#include "tests/support/temp_dir.h"

using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::StoredEvent;
using omniedge::testing::FaultVfs;
using omniedge::testing::TempDir;
using namespace std::chrono_literals;

namespace {

std::atomic<int64_t> g_counter{0};

StoredEvent event(const std::string& type, std::size_t body_size) {
  StoredEvent e;
  const int64_t n = ++g_counter;
  e.id = omniedge::makeUuidV7(1700000000000 + n);
  e.type = type;
  e.priority = omniedge::priorityOf(type);
  e.received_at_ms = 1700000000000 + n;
  e.body = "{\"id\":\"" + e.id + "\",\"pad\":\"" + std::string(body_size, 'x') + "\"}";
  return e;
}

std::vector<StoredEvent> events(int n, std::size_t body_size,
                                const std::string& type = "kiosk.view") {
  std::vector<StoredEvent> v;
  for (int i = 0; i < n; ++i) {
    v.push_back(event(type, body_size));
  }
  return v;
}

std::unique_ptr<Buffer> openBuffer(const TempDir& dir, BufferOptions o = {}) {
  o.dir = dir.path();
  o.min_free_disk = 0;
  // Capacity, WAL sizes and spills are counted here in the bodies' JSON bytes (padding that
  // zstd would shrink to nothing); packed bodies have their own tests (body_codec_test.cpp).
  o.pack_bodies = false;
  auto b = Buffer::open(o);
  REQUIRE(b.has_value());
  return std::move(*b);
}

// Waits (bounded) until `done` holds; false when it never did.
template <class F>
bool waitFor(F done, std::chrono::milliseconds timeout = 20s) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) {
      return false;
    }
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// Every pending event (seq -> body), read through the buffer itself.
std::map<int64_t, std::string> pendingOf(Buffer& b) {
  std::map<int64_t, std::string> out;
  int64_t after = 0;
  for (;;) {
    auto p = b.readPending(after, 1000, 64 << 20);
    REQUIRE(p.has_value());
    if (p->empty()) {
      return out;
    }
    for (auto& e : *p) {
      out.emplace(e.seq, std::move(e.body));
      after = e.seq;
    }
  }
}

bool holdsId(const std::map<int64_t, std::string>& pending, const std::string& id) {
  for (const auto& [seq, body] : pending) {
    if (body.find(id) != std::string::npos) {
      return true;
    }
  }
  return false;
}

// What the file says, through a connection of its own: events and bytes per priority, and the
// counters table. The buffer's stats must equal both.
struct FileCounts {
  int64_t events[3] = {0, 0, 0};
  int64_t bytes[3] = {0, 0, 0};
  int64_t counter_events[3] = {0, 0, 0};
  int64_t counter_bytes[3] = {0, 0, 0};
  int64_t quarantine = 0;
  int64_t counter_quarantine = 0;
};

FileCounts countFile(const TempDir& dir) {
  FileCounts c;
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((dir / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr) == SQLITE_OK);
  const char* cost = "sum(length(CAST(body AS BLOB)) + length(id) + length(type) + 40)";
  REQUIRE(
      sqlite3_prepare_v2(
          db,
          ("SELECT prio, count(*), " + std::string(cost) + " FROM events GROUP BY prio").c_str(),
          -1, &st, nullptr) == SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW) {
    const auto p = sqlite3_column_int(st, 0);
    c.events[p] = sqlite3_column_int64(st, 1);
    c.bytes[p] = sqlite3_column_int64(st, 2);
  }
  sqlite3_finalize(st);
  int64_t saved_at = 0;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT prio, events, bytes FROM counters", -1, &st, nullptr) ==
          SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW) {
    const auto p = sqlite3_column_int(st, 0);
    if (p < 3) {
      c.counter_events[p] = sqlite3_column_int64(st, 1);
      c.counter_bytes[p] = sqlite3_column_int64(st, 2);
    } else if (p == 3) {
      saved_at = sqlite3_column_int64(st, 1);
    } else if (p == 4) {
      c.counter_quarantine = sqlite3_column_int64(st, 1);
    }
  }
  sqlite3_finalize(st);
  // The table may lag: by design it leaves out exactly the rows appended above the seq it was
  // saved at (transactions that only append do not rewrite it), and by no more than 4096 seqs.
  REQUIRE(sqlite3_prepare_v2(db,
                             ("SELECT prio, count(*), " + std::string(cost) +
                              ", max(seq) FROM events WHERE seq > ? GROUP BY prio")
                                 .c_str(),
                             -1, &st, nullptr) == SQLITE_OK);
  sqlite3_bind_int64(st, 1, saved_at);
  while (sqlite3_step(st) == SQLITE_ROW) {
    const auto p = sqlite3_column_int(st, 0);
    c.counter_events[p] += sqlite3_column_int64(st, 1);
    c.counter_bytes[p] += sqlite3_column_int64(st, 2);
    CHECK(sqlite3_column_int64(st, 3) - saved_at <= 4096);
  }
  sqlite3_finalize(st);
  REQUIRE(sqlite3_prepare_v2(db, "SELECT count(*) FROM quarantine", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  c.quarantine = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  return c;
}

// The buffer's counters are exact: equal to a count of the file, and to the counters table.
void checkCountersExact(const Buffer& b, const TempDir& dir) {
  const auto s = b.stats();
  const auto f = countFile(dir);
  for (int p = 0; p < 3; ++p) {
    INFO("priority " << p);
    CHECK(s.pending[p] == f.events[p]);
    CHECK(f.counter_events[p] == f.events[p]);
    CHECK(f.counter_bytes[p] == f.bytes[p]);
  }
  CHECK(s.pending_bytes == f.bytes[0] + f.bytes[1] + f.bytes[2]);
  CHECK(s.quarantine_events == f.quarantine);
  CHECK(f.counter_quarantine == f.quarantine);
}

// Starts append() of `batch` on a thread of its own; the result lands in `out`.
std::thread appendAsync(Buffer& b, std::vector<StoredEvent> batch,
                        std::optional<omniedge::Result<omniedge::store::AppendCounts>>& out) {
  return std::thread([&b, &out, batch = std::move(batch)]() mutable { out = b.append(batch); });
}

// Holds the writer in the WAL fsync of a commit while requests A, B, C queue behind it, in
// that order, so that the next group is exactly [A, B, C]. Returns the held request's thread.
struct HeldGroup {
  std::optional<omniedge::Result<omniedge::store::AppendCounts>> r0, ra, rb, rc;
  std::vector<std::thread> threads;
  void join() {
    for (auto& t : threads) {
      t.join();
    }
  }
};

void queueBehindHeldCommit(FaultVfs& vfs, Buffer& b, HeldGroup& g, std::vector<StoredEvent> a,
                           std::vector<StoredEvent> bb, std::vector<StoredEvent> c) {
  vfs.holdNext(FaultVfs::Op::kSync, FaultVfs::kWal);
  g.threads.push_back(appendAsync(b, events(1, 50), g.r0));
  REQUIRE(vfs.waitHeld(20000));
  g.threads.push_back(appendAsync(b, std::move(a), g.ra));
  REQUIRE(waitFor([&] { return b.stats().queued_requests == 1; }));
  g.threads.push_back(appendAsync(b, std::move(bb), g.rb));
  REQUIRE(waitFor([&] { return b.stats().queued_requests == 2; }));
  g.threads.push_back(appendAsync(b, std::move(c), g.rc));
  REQUIRE(waitFor([&] { return b.stats().queued_requests == 3; }));
}

}  // namespace

TEST_CASE("a write that fails in the middle of a group fails only the request it broke",
          "[unit][fault][buffer]") {
  const int code = GENERATE(SQLITE_IOERR_WRITE, SQLITE_FULL);
  FaultVfs vfs;
  TempDir dir;
  BufferOptions o;
  o.max_group_bytes = 16 << 20;  // B (2.6 MB) joins A's group
  auto b = openBuffer(dir, o);
  REQUIRE(b->append(events(3, 100)).has_value());
  const int64_t seq_before = b->stats().last_seq;

  const auto a = events(1, 100);
  // Bigger than SQLite's page cache (2 MB): inserting it spills dirty pages into the WAL in
  // the middle of the statement, where the injected write error hits.
  const auto big = events(40, 64000);
  const auto c = events(1, 100);
  HeldGroup g;
  queueBehindHeldCommit(vfs, *b, g, a, big, c);
  vfs.fail(FaultVfs::Op::kWrite, FaultVfs::kWal, 0, 1, code);
  vfs.release();
  g.join();

  INFO("injected error " << code);
  CHECK(vfs.injected() == 1);
  REQUIRE(g.r0->has_value());
  // SQLite rolled back the whole transaction (A's rows too) and returned to autocommit; A and C
  // were not at fault and are committed by the second attempt; B gets the error.
  REQUIRE(g.ra->has_value());
  REQUIRE(g.rc->has_value());
  CHECK(g.ra->value().stored == 1);
  CHECK(g.rc->value().stored == 1);
  REQUIRE_FALSE(g.rb->has_value());
  CHECK(g.rb->error().code == (code == SQLITE_FULL ? "full" : "io"));
  CHECK(b->stats().io_errors == 1);

  auto pending = pendingOf(*b);
  CHECK(pending.size() == 6);  // 3 before, the held one, A, C
  CHECK(holdsId(pending, a[0].id));
  CHECK(holdsId(pending, c[0].id));
  for (const auto& e : big) {
    CHECK_FALSE(holdsId(pending, e.id));
  }
  for (const auto& r : b->recent(0, 100)) {
    CHECK(r.body.find(big[0].id) == std::string::npos);
  }
  checkCountersExact(*b, dir);

  // Seqs are unique and new, and an acknowledgement covers only its own batch: acknowledging
  // A's seq removes A and nothing else.
  int64_t seq_a = 0;
  for (const auto& [seq, body] : pending) {
    CHECK(seq > 0);
    if (body.find(a[0].id) != std::string::npos) {
      seq_a = seq;
    }
  }
  CHECK(seq_a > seq_before);
  b->acknowledge(seq_a, seq_a);
  REQUIRE(b->syncAcknowledgementsFor(20s));
  auto after = pendingOf(*b);
  CHECK(after.size() == 5);
  CHECK_FALSE(holdsId(after, a[0].id));
  CHECK(holdsId(after, c[0].id));

  // B, sent again, is stored with a seq above every seq given so far.
  const int64_t last = b->stats().last_seq;
  auto again = b->append(big);
  REQUIRE(again.has_value());
  CHECK(again->stored == big.size());
  for (const auto& [seq, body] : pendingOf(*b)) {
    if (body.find(big[0].id) != std::string::npos) {
      CHECK(seq > last);
    }
  }
  checkCountersExact(*b, dir);
  b->close();
  auto reopened = openBuffer(dir);
  CHECK(pendingOf(*reopened).size() == 5 + big.size());
  checkCountersExact(*reopened, dir);
}

TEST_CASE(
    "a commit whose WAL sync fails is retried once, and fails every producer if it fails "
    "again, without reusing a seq",
    "[unit][fault][buffer]") {
  const int failures = GENERATE(1, 2);
  FaultVfs vfs;
  TempDir dir;
  auto b = openBuffer(dir);
  REQUIRE(b->append(events(2, 100)).has_value());
  const auto a = events(2, 100);
  const auto bb = events(3, 100);
  const auto c = events(1, 100);
  HeldGroup g;
  queueBehindHeldCommit(vfs, *b, g, a, bb, c);
  vfs.fail(FaultVfs::Op::kSync, FaultVfs::kWal, 0, failures, SQLITE_IOERR_FSYNC);
  vfs.release();
  g.join();
  vfs.clear();
  INFO(failures << " failed fsync(s)");
  REQUIRE(g.r0->has_value());
  CHECK(vfs.injected() == failures);
  CHECK(b->stats().io_errors == static_cast<uint64_t>(failures));
  auto pending = pendingOf(*b);
  if (failures == 1) {
    // No request is to blame for a failed commit: all are tried again, and committed.
    CHECK(g.ra->has_value());
    CHECK(g.rb->has_value());
    CHECK(g.rc->has_value());
    CHECK(pending.size() == 3 + 6);
  } else {
    for (auto* r : {&g.ra, &g.rb, &g.rc}) {
      REQUIRE_FALSE((*r)->has_value());
      CHECK((*r)->error().code == "io");
    }
    CHECK(pending.size() == 3);
    for (const auto& e : a) {
      CHECK_FALSE(holdsId(pending, e.id));
    }
  }
  checkCountersExact(*b, dir);
  // The next event gets a seq above every one handed out, committed or not.
  const int64_t last_seen = pending.rbegin()->first;
  const auto d = events(1, 100);
  REQUIRE(b->append(d).has_value());
  auto now = pendingOf(*b);
  CHECK(now.rbegin()->first > last_seen);
  CHECK(holdsId(now, d[0].id));
  if (failures == 2) {
    // The failed attempts burnt their seqs: d's is above them too.
    CHECK(now.rbegin()->first > last_seen + 6);
  }
  b->close();
  auto reopened = openBuffer(dir);
  CHECK(pendingOf(*reopened).size() == now.size());
  checkCountersExact(*reopened, dir);
}

TEST_CASE("acknowledgements that cannot be committed are kept, retried and never counted as done",
          "[unit][fault][buffer]") {
  FaultVfs vfs;
  TempDir dir;
  auto b = openBuffer(dir);
  REQUIRE(b->append(events(50, 200)).has_value());
  auto p = b->readPending(0, 1000, 64 << 20);
  REQUIRE(p.has_value());
  const int64_t first = p->front().seq;
  const int64_t last = p->back().seq;
  vfs.fail(FaultVfs::Op::kWrite, FaultVfs::kWal, 0, 3, SQLITE_IOERR_WRITE);
  b->acknowledge(first, first + 9);
  b->quarantine(first + 10, first + 19, "refused: schema");
  // The writer keeps them and tries again (every 200 ms) until the disk takes them.
  REQUIRE(b->syncAcknowledgementsFor(30s));
  CHECK(vfs.injected() == 3);
  const auto s = b->stats();
  CHECK(s.acknowledged == 10);
  CHECK(s.quarantined == 10);
  CHECK(s.quarantine_events == 10);
  CHECK(s.pending[1] == 30);
  CHECK(s.io_errors >= 1);
  auto rest = pendingOf(*b);
  CHECK(rest.size() == 30);
  CHECK(rest.begin()->first == first + 20);
  CHECK(rest.rbegin()->first == last);
  checkCountersExact(*b, dir);
}

TEST_CASE("acknowledged ranges of mixed priorities take exactly their rows out of each counter",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  // pos.* (high), kiosk.* (normal) and beacon.* (low) interleaved, bodies of different sizes.
  std::vector<StoredEvent> mixed;
  const std::vector<std::string> types = {"pos.transaction", "kiosk.view", "beacon.enter"};
  for (int i = 0; i < 90; ++i) {
    mixed.push_back(
        event(types[static_cast<std::size_t>(i % 3)], 50 + 7 * static_cast<std::size_t>(i)));
  }
  REQUIRE(b->append(mixed).has_value());
  auto p = b->readPending(0, 1000, 64 << 20);
  REQUIRE(p.has_value());
  REQUIRE(p->size() == 90);
  const int64_t first = p->front().seq;
  b->acknowledge(first, first);             // one high
  b->acknowledge(first + 1, first + 1);     // one normal
  b->acknowledge(first + 5, first + 5);     // one low
  b->acknowledge(first + 10, first + 39);   // ten of each
  b->acknowledge(first + 80, first + 200);  // past the last seq
  REQUIRE(b->syncAcknowledgementsFor(30s));
  const auto s = b->stats();
  CHECK(s.acknowledged == 3 + 30 + 10);
  CHECK(s.pending[0] == 30 - 1 - 10 - 3);
  CHECK(s.pending[1] == 30 - 1 - 10 - 3);
  CHECK(s.pending[2] == 30 - 1 - 10 - 4);
  checkCountersExact(*b, dir);
  b.reset();
  auto reopened = openBuffer(dir);
  checkCountersExact(*reopened, dir);
}

TEST_CASE("close() returns while acknowledgements keep failing, and their events stay pending",
          "[unit][fault][buffer]") {
  const int code = GENERATE(SQLITE_IOERR_WRITE, SQLITE_FULL);
  FaultVfs vfs;
  TempDir dir;
  {
    auto b = openBuffer(dir);
    REQUIRE(b->append(events(100, 200)).has_value());
    auto p = b->readPending(0, 1000, 64 << 20);
    REQUIRE(p.has_value());
    INFO("every WAL write fails with " << code);
    vfs.fail(FaultVfs::Op::kWrite, FaultVfs::kWal, 0, -1, code);
    b->acknowledge(p->front().seq, p->back().seq);
    CHECK_FALSE(b->syncAcknowledgementsFor(500ms));
    const auto t0 = std::chrono::steady_clock::now();
    b->close();
    const auto took = std::chrono::steady_clock::now() - t0;
    std::printf("close() with every WAL write failing (%d): %lld ms\n", code,
                static_cast<long long>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
    // SIGTERM must end (the unit's TimeoutStopSec is 20 s); loosely bounded, not a benchmark.
    CHECK(took < 10s);
    CHECK(b->stats().acknowledged == 0);
    CHECK_FALSE(b->syncAcknowledgementsFor(0ms));  // left, not done
  }
  vfs.clear();
  auto b = openBuffer(dir);
  CHECK(pendingOf(*b).size() == 100);  // sent again: at least once
  checkCountersExact(*b, dir);
}

TEST_CASE(
    "a producer history under random write and sync faults: every event acknowledged to "
    "a producer is delivered, no failed one is stored, counters stay exact",
    "[unit][fault][buffer]") {
  FaultVfs vfs;
  TempDir dir;
  BufferOptions o;
  o.max_group_bytes = 4 << 20;  // groups larger than the page cache: faults also hit spills
  auto b = openBuffer(dir, o);

  std::mutex mu;
  std::set<std::string> ok_ids;      // append() answered ok
  std::set<std::string> failed_ids;  // append() answered an error
  std::map<std::string, uint64_t> failed_by_code;
  std::set<std::string> delivered;  // read by the consumer (sent to the centre)
  uint64_t appends = 0;
  std::atomic<bool> producing{true};
  std::atomic<bool> consumer_ok{true};

  // The sync engine's part: reads in order, acknowledges batches after a few are in flight.
  std::thread consumer([&] {
    std::deque<std::pair<int64_t, int64_t>> inflight;
    int64_t after = 0;
    int64_t last_seq = 0;
    for (;;) {
      auto batch = b->readPending(after, 200, 1 << 20);
      if (!batch) {
        consumer_ok = false;
        continue;
      }
      if (!batch->empty()) {
        std::lock_guard lock(mu);
        for (const auto& e : *batch) {
          if (e.seq <= last_seq) {
            consumer_ok = false;  // seqs must only grow
          }
          last_seq = e.seq;
          const auto start = e.body.find("\"id\":\"") + 6;
          delivered.insert(e.body.substr(start, e.body.find('"', start) - start));
        }
        inflight.emplace_back(batch->front().seq, batch->back().seq);
        after = batch->back().seq;
      }
      if (inflight.size() > 3 || (batch->empty() && !inflight.empty())) {
        b->acknowledge(inflight.front().first, inflight.front().second);
        inflight.pop_front();
      } else if (batch->empty()) {
        if (!producing) {
          break;
        }
        b->waitForNewer(after, 20);
      }
    }
  });

  struct Phase {
    FaultVfs::Op op;
    double p;
    int error;
  };
  // A group commit writes hundreds of WAL frames: per-write rates are low.
  const std::vector<Phase> phases = {{FaultVfs::Op::kWrite, 0.004, SQLITE_IOERR_WRITE},
                                     {FaultVfs::Op::kSync, 0.10, SQLITE_IOERR_FSYNC},
                                     {FaultVfs::Op::kWrite, 0.004, SQLITE_FULL}};
  uint32_t seed = 20261201;
  for (const auto& phase : phases) {
    vfs.failRandomly(phase.op, FaultVfs::kWal, phase.p, seed++, phase.error);
    std::vector<std::thread> producers;
    for (int t = 0; t < 6; ++t) {
      producers.emplace_back([&, t] {
        std::minstd_rand rng(seed * 7 + static_cast<uint32_t>(t));
        for (int i = 0; i < 60; ++i) {
          const int n = 1 + static_cast<int>(rng() % 40);
          const std::size_t size = rng() % 10 == 0 ? 60000 : 300 + rng() % 2000;
          auto batch = events(n, size, rng() % 5 == 0 ? "pos.transaction" : "kiosk.view");
          auto r = b->append(batch);
          std::lock_guard lock(mu);
          ++appends;
          for (const auto& e : batch) {
            (r ? ok_ids : failed_ids).insert(e.id);
          }
          if (!r) {
            ++failed_by_code[r.error().code];
          }
        }
      });
    }
    for (auto& t : producers) {
      t.join();
    }
  }
  vfs.clear();
  producing = false;
  consumer.join();
  REQUIRE(b->syncAcknowledgementsFor(30s));
  CHECK(consumer_ok);
  checkCountersExact(*b, dir);
  const auto stats = b->stats();
  b->close();

  auto reopened = openBuffer(dir);
  std::set<std::string> still_pending;
  for (const auto& [seq, body] : pendingOf(*reopened)) {
    const auto start = body.find("\"id\":\"") + 6;
    still_pending.insert(body.substr(start, body.find('"', start) - start));
  }
  checkCountersExact(*reopened, dir);

  uint64_t lost = 0;
  for (const auto& id : ok_ids) {
    if (delivered.count(id) == 0 && still_pending.count(id) == 0) {
      ++lost;
    }
  }
  uint64_t phantom = 0;  // an event its producer was told had failed, yet stored
  for (const auto& id : failed_ids) {
    if (delivered.count(id) != 0 || still_pending.count(id) != 0) {
      ++phantom;
    }
  }
  std::printf(
      "producer history: %llu appends, %zu events acknowledged to producers, %zu refused "
      "(%llu io, %llu full requests); %lld faults injected, %llu transactions rolled back; "
      "%zu delivered, %zu still pending after reopening; lost %llu, failed-but-stored %llu\n",
      static_cast<unsigned long long>(appends), ok_ids.size(), failed_ids.size(),
      static_cast<unsigned long long>(failed_by_code["io"]),
      static_cast<unsigned long long>(failed_by_code["full"]),
      static_cast<long long>(vfs.injected()), static_cast<unsigned long long>(stats.io_errors),
      delivered.size(), still_pending.size(), static_cast<unsigned long long>(lost),
      static_cast<unsigned long long>(phantom));
  CHECK(vfs.injected() > 10);
  CHECK_FALSE(failed_ids.empty());  // the faults did reach producers
  CHECK(lost == 0);
  CHECK(phantom == 0);
  CHECK(stats.appended == ok_ids.size());
}

TEST_CASE(
    "the WAL stays bounded while a reader reads all the time and the writer appends and "
    "acknowledges",
    "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> max_wal{0};
  // A reader that is nearly always inside a read transaction: it re-reads the whole backlog.
  std::thread reader([&] {
    while (!stop) {
      int64_t after = 0;
      for (int i = 0; i < 50 && !stop; ++i) {
        auto p = b->readPending(after, 500, 4 << 20);
        if (!p || p->empty()) {
          break;
        }
        after = p->back().seq;
      }
    }
  });
  std::thread sampler([&] {
    while (!stop) {
      std::error_code ec;
      const auto size = std::filesystem::file_size(dir / "buffer.db-wal", ec);
      if (!ec && size > max_wal) {
        max_wal = size;
      }
      std::this_thread::sleep_for(1ms);
    }
  });
  // 80 MB appended in groups of 400 KB while the oldest half is acknowledged as it goes.
  int64_t acked_to = 0;
  for (int i = 0; i < 200; ++i) {
    REQUIRE(b->append(events(200, 2000)).has_value());
    if (i % 4 == 3) {
      auto p = b->readPending(acked_to, 400, 64 << 20);
      REQUIRE(p.has_value());
      if (!p->empty()) {
        b->acknowledge(p->front().seq, p->back().seq);
        acked_to = p->back().seq;
      }
    }
  }
  REQUIRE(b->syncAcknowledgementsFor(30s));
  stop = true;
  reader.join();
  sampler.join();
  const auto s = b->stats();
  INFO("largest WAL seen " << max_wal << " bytes, the buffer's own peak " << s.wal_peak_bytes);
  // Without the writer's RESTART checkpoints the WAL takes everything written (80+ MB here).
  CHECK(max_wal < (24u << 20));
  CHECK(s.wal_peak_bytes < (24 << 20));
  CHECK(s.wal_bytes <= s.wal_peak_bytes);
}

TEST_CASE(
    "after the file's sync failed behind a checkpoint the WAL is never rewound again in that "
    "run, and the next start has every event",
    "[unit][fault][buffer]") {
  FaultVfs vfs;  // before every connection
  TempDir dir;
  int64_t appended = 0;
  {
    auto b = openBuffer(dir);
    REQUIRE(b->append(events(100, 2000)).has_value());
    appended += 100;
    // A reader (a CLI) holds an old snapshot, so the checkpointer's pass stops short of the WAL's
    // end: SQLite counts the pages it copied without syncing them, and the checkpointer's own
    // sync of the file fails.
    sqlite3* reader = nullptr;
    REQUIRE(sqlite3_open_v2((dir.path() / "buffer.db").c_str(), &reader, SQLITE_OPEN_READONLY,
                            nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_exec(reader, "BEGIN; SELECT count(*) FROM events;", nullptr, nullptr,
                         nullptr) == SQLITE_OK);
    vfs.fail(FaultVfs::Op::kSync, FaultVfs::kMainDb, 0, -1, SQLITE_IOERR_FSYNC);
    for (int i = 0; i < 30; ++i) {  // ~12 MB
      REQUIRE(b->append(events(200, 2000)).has_value());
      appended += 200;
    }
    REQUIRE(sqlite3_exec(reader, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(reader);
    // The disk works again: a RESTART would now succeed and rewind the WAL over frames whose
    // pages the kernel may have dropped. It must not happen.
    vfs.clear();
    for (int i = 0; i < 30; ++i) {
      REQUIRE(b->append(events(200, 2000)).has_value());
      appended += 200;
    }
    CHECK(b->stats().wal_bytes > (20 << 20));
    // What `omniedge status` shows a technician: the WAL is kept, and why.
    CHECK(b->stats().wal_kept);
    CHECK_THAT(b->stats().wal_kept_reason, Catch::Contains("I/O error"));
    b->close();
  }
  // Still there, with everything (a close would otherwise fold it into the file and remove it).
  const auto wal = dir.path() / "buffer.db-wal";
  REQUIRE(std::filesystem::exists(wal));
  CHECK(std::filesystem::file_size(wal) > (20u << 20));
  CHECK(std::filesystem::exists(dir.path() / "buffer.lock"));  // the next start checks the file
  auto again = openBuffer(dir);
  CHECK(again->openReport().unclean_shutdown);
  const auto s = again->stats();
  CHECK(s.pending[0] + s.pending[1] + s.pending[2] == appended);
  CHECK(pendingOf(*again).size() == static_cast<std::size_t>(appended));
  // and it checkpoints again: the WAL is rewound under the next 12 MB
  for (int i = 0; i < 30; ++i) {
    REQUIRE(again->append(events(200, 2000)).has_value());
  }
  CHECK(again->stats().wal_bytes < (20 << 20));
}

TEST_CASE("producers wait while the writer's queue holds more than max_queue_bytes",
          "[unit][fault][buffer]") {
  FaultVfs vfs;
  TempDir dir;
  BufferOptions o;
  o.max_queue_bytes = 10000;
  auto b = openBuffer(dir, o);
  // The writer is held in a commit; 6 producers of ~8 KB each arrive meanwhile.
  vfs.holdNext(FaultVfs::Op::kSync, FaultVfs::kWal);
  std::optional<omniedge::Result<omniedge::store::AppendCounts>> first;
  std::thread t0 = appendAsync(*b, events(1, 50), first);
  REQUIRE(vfs.waitHeld(20000));
  std::vector<std::optional<omniedge::Result<omniedge::store::AppendCounts>>> results(6);
  std::vector<std::thread> producers;
  for (auto& r : results) {
    producers.push_back(appendAsync(*b, events(1, 8000), r));
  }
  REQUIRE(waitFor([&] { return b->stats().queued_requests >= 1; }));
  // However long we look, the queue never holds more than the bound (one request fits alone).
  std::size_t most = 0;
  for (int i = 0; i < 2000; ++i) {
    const auto s = b->stats();
    most = std::max(most, s.queued_bytes);
    CHECK(s.queued_requests == 1);
    std::this_thread::yield();
  }
  CHECK(most <= 10000);
  vfs.release();
  t0.join();
  for (auto& t : producers) {
    t.join();
  }
  for (auto& r : results) {
    CHECK(r->has_value());  // all stored, one after the other
  }
  CHECK(b->stats().pending[1] == 7);
}
