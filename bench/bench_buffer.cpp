// P1: durable ingest through store::Buffer (synchronous=full) against a raw SQLite loop in the
// same run (quality.md). Also fills a buffer offline for the drain and start-up benchmarks.
//
//   bench_buffer p1 --dir DIR [--seconds S] [--events N]
//       raw loop (and raw drain), one row per transaction, every producer scenario, then the
//       raw loops again; prints "RESULT <name> <events> <seconds> <events_per_s>
//       <commits>" lines (ratios are computed by bench/run)
//   bench_buffer fill --dir DIR --events N --store ID [--event-bytes B]
//       appends N events of about B bytes (the stored envelope) in batches of 1000 and prints
//       "RESULT fill <events> <seconds> <events_per_s> <payload_bytes> <file_bytes>"
//   bench_buffer wal --dir DIR [--events N] [--event-bytes B]
//       the WAL's largest size (sampled every 2 ms) in three phases of N events each: full-speed
//       ingest (4 producers x 100 events per call, nobody reading), ingest while a sync-like
//       consumer reads and acknowledges at the same time, and the drain of an N-event backlog;
//       prints "RESULT wal_<phase> <events> <seconds> <events_per_s> <max_wal_bytes>"
//   bench_buffer raw --dir DIR --label NAME [--seconds S] [--events N]
//       one more pass of p1's raw insert loop, printed as "RESULT NAME ..." (bench/run takes
//       one before the HTTP load and one before the end-to-end run)
//
// Every loop is bounded in count and in time.
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/uuid.h"
#include "agent/ingest/ingest.h"
#include "agent/store/buffer.h"
#include "bench/bench_events.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kEventBytes = 500;

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_buffer: %s\n", what.c_str());
  std::exit(1);
}

void exec(sqlite3* db, const char* sql) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    die(std::string("SQLite: ") + (msg != nullptr ? msg : "?") + " in " + sql);
  }
}

std::string padding(std::size_t n, uint32_t seed) {
  static const char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s(n, 'x');
  std::minstd_rand rng(seed);
  for (auto& c : s) {
    c = kAlphabet[rng() % (sizeof(kAlphabet) - 1)];
  }
  return s;
}

struct Outcome {
  std::string name;
  uint64_t events = 0;
  double seconds = 0;
  uint64_t commits = 0;
};

void report(const Outcome& o) {
  std::printf("RESULT %s %llu %.3f %.0f %llu\n", o.name.c_str(),
              static_cast<unsigned long long>(o.events), o.seconds,
              o.seconds > 0 ? static_cast<double>(o.events) / o.seconds : 0.0,
              static_cast<unsigned long long>(o.commits));
  std::fflush(stdout);
}

// The drain ceiling: read 1000 rows in seq order, delete them by range, commit; one connection.
Outcome rawDrain(sqlite3* db, const std::string& name, double max_s) {
  sqlite3_stmt* sel = nullptr;
  sqlite3_stmt* del = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT 1000",
                         -1, &sel, nullptr) != SQLITE_OK ||
      sqlite3_prepare_v2(db, "DELETE FROM events WHERE seq BETWEEN ? AND ?", -1, &del, nullptr) !=
          SQLITE_OK) {
    die("prepare drain");
  }
  int64_t after = 0;
  uint64_t done = 0;
  uint64_t bytes = 0;
  const auto t0 = Clock::now();
  while (secondsSince(t0) < max_s) {
    sqlite3_bind_int64(sel, 1, after);
    int64_t first = -1;
    while (sqlite3_step(sel) == SQLITE_ROW) {
      const int64_t seq = sqlite3_column_int64(sel, 0);
      if (first < 0) {
        first = seq;
      }
      after = seq;
      bytes += static_cast<uint64_t>(sqlite3_column_bytes(sel, 1));
      ++done;
    }
    sqlite3_reset(sel);
    if (first < 0) {
      break;
    }
    exec(db, "BEGIN");
    sqlite3_bind_int64(del, 1, first);
    sqlite3_bind_int64(del, 2, after);
    if (sqlite3_step(del) != SQLITE_DONE) {
      die(std::string("delete: ") + sqlite3_errmsg(db));
    }
    sqlite3_reset(del);
    exec(db, "COMMIT");
  }
  Outcome o{name, done, secondsSince(t0)};
  sqlite3_finalize(sel);
  sqlite3_finalize(del);
  if (bytes == 0) {
    die("drain read nothing");
  }
  return o;
}

// The ceiling: 16-byte time-ordered unique ids, 500-byte rows, 1000 rows per transaction
// (1 when `name` contains "single"), WAL, synchronous=FULL, one connection, a prepared
// statement. The rowid a plain INTEGER PRIMARY KEY, as the buffer's own table has it: until
// 2026-12-06 it was AUTOINCREMENT, whose sqlite_sequence update at every insert cost the loop
// 4-35% of its rate on a fast disk and flattered every ratio against it (docs/benchmarks.md,
// "The ceiling without AUTOINCREMENT").
Outcome rawLoop(const fs::path& dir, const std::string& name, uint64_t rows, double max_s,
                Outcome* drain) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  sqlite3* db = nullptr;
  if (sqlite3_open((dir / "raw.db").c_str(), &db) != SQLITE_OK) {
    die("cannot open raw.db");
  }
  exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
  const uint64_t per_txn = name.find("single") != std::string::npos ? 1 : 1000;
  exec(db,
       "CREATE TABLE events(seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, "
       "received_ms INTEGER NOT NULL, body TEXT NOT NULL)");
  sqlite3_stmt* ins = nullptr;
  if (sqlite3_prepare_v2(db, "INSERT INTO events(id, received_ms, body) VALUES(?,?,?)", -1, &ins,
                         nullptr) != SQLITE_OK) {
    die("prepare");
  }
  const std::string body = padding(kEventBytes, 7);
  std::mt19937_64 rng(42);
  uint64_t counter = 0;
  uint64_t done = 0;
  uint64_t commits = 0;
  const auto t0 = Clock::now();
  while (done < rows && secondsSince(t0) < max_s) {
    exec(db, "BEGIN");
    for (uint64_t i = 0; i < per_txn; ++i, ++done) {
      // 48-bit ms, 16-bit counter, 64 random bits: time-ordered like a UUIDv7.
      unsigned char id[16];
      const uint64_t hi = (static_cast<uint64_t>(nowMs()) << 16) | (++counter & 0xffff);
      const uint64_t lo = rng();
      for (int b = 0; b < 8; ++b) {
        id[b] = static_cast<unsigned char>(hi >> (56 - 8 * b));
        id[8 + b] = static_cast<unsigned char>(lo >> (56 - 8 * b));
      }
      sqlite3_bind_blob(ins, 1, id, sizeof id, SQLITE_STATIC);
      sqlite3_bind_int64(ins, 2, nowMs());
      sqlite3_bind_text(ins, 3, body.data(), static_cast<int>(body.size()), SQLITE_STATIC);
      if (sqlite3_step(ins) != SQLITE_DONE) {
        die(std::string("insert: ") + sqlite3_errmsg(db));
      }
      sqlite3_reset(ins);
    }
    exec(db, "COMMIT");
    ++commits;
  }
  Outcome o{name, done, secondsSince(t0), commits};
  sqlite3_finalize(ins);
  if (drain != nullptr) {
    *drain = rawDrain(db, name + "_drain", max_s);
  }
  sqlite3_close(db);
  fs::remove_all(dir);
  return o;
}

// `threads` producers, each appending `per_call` events per Buffer::append() call, until
// `max_events` in all or `max_s` seconds. Events are made before the clock starts.
Outcome bufferRun(const fs::path& dir, int threads, std::size_t per_call, uint64_t max_events,
                  double max_s) {
  fs::remove_all(dir);
  omniedge::store::BufferOptions opts;
  opts.dir = dir;
  opts.synchronous_full = true;
  opts.max_bytes = 8LL << 30;
  auto buf = omniedge::store::Buffer::open(opts);
  if (!buf) {
    die("Buffer::open: " + buf.error().message);
  }
  std::minstd_rand rng(11);
  const uint64_t per_thread_calls = max_events / per_call / static_cast<uint64_t>(threads);
  std::vector<std::vector<std::vector<omniedge::store::StoredEvent>>> work(threads);
  for (int t = 0; t < threads; ++t) {
    work[t].resize(per_thread_calls);
    for (auto& call : work[t]) {
      call.reserve(per_call);
      for (std::size_t i = 0; i < per_call; ++i) {
        call.push_back(omniedge::bench::makeEvent("bench", kEventBytes, rng));
      }
    }
  }
  std::atomic<uint64_t> stored{0};
  std::atomic<bool> failed{false};
  std::atomic<bool> go{false};
  const auto deadline_s = max_s;
  std::vector<std::thread> producers;
  Clock::time_point t0;
  for (int t = 0; t < threads; ++t) {
    producers.emplace_back([&, t] {
      while (!go.load()) {
        std::this_thread::yield();
      }
      for (auto& call : work[t]) {
        if (secondsSince(t0) >= deadline_s || failed.load()) {
          break;
        }
        auto r = (*buf)->append(std::move(call));
        if (!r) {
          std::fprintf(stderr, "append: %s\n", r.error().message.c_str());
          failed = true;
          break;
        }
        stored += r->stored;
      }
    });
  }
  t0 = Clock::now();
  go = true;
  for (auto& p : producers) {
    p.join();
  }
  const double secs = secondsSince(t0);
  const auto st = (*buf)->stats();
  (*buf)->close();
  if (failed) {
    die("an append failed");
  }
  Outcome o{"buffer_t" + std::to_string(threads) + "_b" + std::to_string(per_call), stored.load(),
            secs, st.commits};
  std::fprintf(
      stderr, "  %s: %llu events in %llu commits (%.1f events/commit)\n", o.name.c_str(),
      static_cast<unsigned long long>(o.events), static_cast<unsigned long long>(st.commits),
      st.commits > 0 ? static_cast<double>(o.events) / static_cast<double>(st.commits) : 0.0);
  fs::remove_all(dir);
  return o;
}

int fill(const fs::path& dir, uint64_t events, const std::string& store_id, std::size_t bytes) {
  omniedge::store::BufferOptions opts;
  opts.dir = dir;
  opts.synchronous_full = true;
  opts.max_bytes = 16LL << 30;
  auto buf = omniedge::store::Buffer::open(opts);
  if (!buf) {
    die("Buffer::open: " + buf.error().message);
  }
  std::minstd_rand rng(13);
  uint64_t payload = 0;
  uint64_t done = 0;
  const auto t0 = Clock::now();
  while (done < events && secondsSince(t0) < 600) {
    std::vector<omniedge::store::StoredEvent> batch;
    const uint64_t n = std::min<uint64_t>(1000, events - done);
    batch.reserve(n);
    for (uint64_t i = 0; i < n; ++i) {
      batch.push_back(omniedge::bench::makeEvent(store_id, bytes, rng));
      payload += batch.back().body.size();
    }
    auto r = (*buf)->append(std::move(batch));
    if (!r) {
      die("append: " + r.error().message);
    }
    done += r->stored;
  }
  const double secs = secondsSince(t0);
  (*buf)->close();
  std::error_code ec;
  const auto file_bytes = fs::file_size(dir / "buffer.db", ec);
  std::printf("RESULT fill %llu %.3f %.0f %llu %llu\n", static_cast<unsigned long long>(done), secs,
              static_cast<double>(done) / secs, static_cast<unsigned long long>(payload),
              static_cast<unsigned long long>(ec ? 0 : file_bytes));
  return done == events ? 0 : 1;
}

// Samples the size of DIR/buffer.db-wal every 2 ms on its own thread and keeps the largest.
class WalSampler {
 public:
  explicit WalSampler(fs::path wal) : wal_(std::move(wal)), thread_([this] { run(); }) {}
  ~WalSampler() { stop(); }
  WalSampler(const WalSampler&) = delete;
  WalSampler& operator=(const WalSampler&) = delete;
  uint64_t stop() {
    stop_ = true;
    if (thread_.joinable()) {
      thread_.join();
    }
    return max_;
  }

 private:
  void run() {
    while (!stop_) {
      std::error_code ec;
      const auto size = fs::file_size(wal_, ec);
      if (!ec && size > max_) {
        max_ = size;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  fs::path wal_;
  std::atomic<bool> stop_{false};
  uint64_t max_ = 0;
  std::thread thread_;
};

// Reads pending events in order and acknowledges them like the sync engine does: up to
// `inflight` batches of 1000 read ahead, each acknowledged once it is the oldest of them.
// Returns when `target` events were acknowledged, or `stop` is set and nothing is left.
uint64_t consume(omniedge::store::Buffer& buf, uint64_t target, const std::atomic<bool>& stop,
                 double max_s) {
  std::deque<std::pair<int64_t, int64_t>> inflight;
  int64_t after = 0;
  uint64_t acked = 0;
  const auto t0 = Clock::now();
  while (acked < target && secondsSince(t0) < max_s) {
    auto batch = buf.readPending(after, 1000, 1 << 20);
    if (!batch) {
      die("readPending: " + batch.error().message);
    }
    if (!batch->empty()) {
      inflight.emplace_back(batch->front().seq, batch->back().seq);
      after = batch->back().seq;
      acked += batch->size();
    }
    if (inflight.size() > 8 || (batch->empty() && !inflight.empty())) {
      buf.acknowledge(inflight.front().first, inflight.front().second);
      inflight.pop_front();
    } else if (batch->empty()) {
      if (stop) {
        break;
      }
      buf.waitForNewer(after, 20);
    }
  }
  while (!inflight.empty()) {
    buf.acknowledge(inflight.front().first, inflight.front().second);
    inflight.pop_front();
  }
  buf.syncAcknowledgements();
  return acked;
}

// One phase of `bench_buffer wal`: a fresh buffer (or the one left by the previous phase),
// `producers` threads appending `events` in all, a consumer when `drain` is set.
void walPhase(const fs::path& dir, const std::string& name, uint64_t events, std::size_t bytes,
              int producers, bool drain, bool keep) {
  if (!keep) {
    fs::remove_all(dir);
  }
  omniedge::store::BufferOptions opts;
  opts.dir = dir;
  opts.synchronous_full = true;
  opts.max_bytes = 16LL << 30;
  auto buf = omniedge::store::Buffer::open(opts);
  if (!buf) {
    die("Buffer::open: " + buf.error().message);
  }
  const uint64_t backlog = [&] {
    const auto s = (*buf)->stats();
    return static_cast<uint64_t>(s.pending[0] + s.pending[1] + s.pending[2]);
  }();
  const uint64_t calls = producers > 0 ? events / 100 / static_cast<uint64_t>(producers) : 0;
  WalSampler sampler(dir / "buffer.db-wal");
  std::atomic<bool> produced{false};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < producers; ++t) {
    // Events are made on the producer's thread (this phase measures the WAL, not the rate).
    threads.emplace_back([&, t] {
      std::minstd_rand rng(17 + t);
      for (uint64_t c = 0; c < calls; ++c) {
        std::vector<omniedge::store::StoredEvent> call;
        call.reserve(100);
        for (int i = 0; i < 100; ++i) {
          call.push_back(omniedge::bench::makeEvent("bench", bytes, rng));
        }
        if (auto r = (*buf)->append(std::move(call)); !r) {
          die("append: " + r.error().message);
        }
      }
    });
  }
  uint64_t consumed = 0;
  std::thread consumer;
  if (drain) {
    consumer = std::thread([&] {
      consumed =
          consume(**buf, backlog + calls * 100 * static_cast<uint64_t>(producers), produced, 600);
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  produced = true;
  if (consumer.joinable()) {
    consumer.join();
  }
  const double secs = secondsSince(t0);
  const uint64_t max_wal = sampler.stop();
  const uint64_t n = drain ? consumed : calls * 100 * static_cast<uint64_t>(producers);
  std::printf("RESULT wal_%s %llu %.3f %.0f %llu\n", name.c_str(),
              static_cast<unsigned long long>(n), secs, static_cast<double>(n) / secs,
              static_cast<unsigned long long>(max_wal));
  std::fflush(stdout);
  (*buf)->close();
}

const char* arg(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 2; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) {
      return argv[i + 1];
    }
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: bench_buffer p1 --dir DIR [--seconds S] [--events N]\n"
                 "       bench_buffer fill --dir DIR --events N --store ID [--event-bytes B]\n"
                 "       bench_buffer wal --dir DIR [--events N] [--event-bytes B]\n"
                 "       bench_buffer raw --dir DIR --label NAME [--seconds S] [--events N]\n");
    return 2;
  }
  const std::string mode = argv[1];
  const fs::path dir = arg(argc, argv, "--dir", "");
  if (dir.empty()) {
    die("--dir is required");
  }
  if (mode == "fill") {
    return fill(dir, std::strtoull(arg(argc, argv, "--events", "200000"), nullptr, 10),
                arg(argc, argv, "--store", "bench"),
                std::strtoull(arg(argc, argv, "--event-bytes", "500"), nullptr, 10));
  }
  if (mode == "wal") {
    const uint64_t n = std::strtoull(arg(argc, argv, "--events", "1000000"), nullptr, 10);
    const std::size_t bytes = std::strtoull(arg(argc, argv, "--event-bytes", "500"), nullptr, 10);
    walPhase(dir / "wal", "ingest", n, bytes, 4, false, false);
    walPhase(dir / "wal", "ingest_and_drain", n, bytes, 4, true, false);
    walPhase(dir / "wal", "fill", n, bytes, 4, false, false);
    walPhase(dir / "wal", "drain", 0, bytes, 0, true, true);
    fs::remove_all(dir / "wal");
    return 0;
  }
  if (mode != "p1" && mode != "raw") {
    die("unknown mode " + mode);
  }
  const double secs = std::strtod(arg(argc, argv, "--seconds", "4"), nullptr);
  const uint64_t events = std::strtoull(arg(argc, argv, "--events", "300000"), nullptr, 10);
  if (mode == "raw") {
    // One more pass of the raw insert ceiling, later in bench/run: the host's speed drifts
    // within a run, and a ratio is only fair against a ceiling measured near it.
    report(rawLoop(dir / "raw", arg(argc, argv, "--label", "raw_again"), events, secs, nullptr));
    fs::remove_all(dir / "raw");
    return 0;
  }
  const uint64_t single_cap = std::min<uint64_t>(events, 100000);

  Outcome drain;
  report(rawLoop(dir / "raw", "raw_before", events, secs, &drain));
  report(drain);
  // What one producer appending one event at a time can reach at best: an fsync per event.
  report(rawLoop(dir / "raw", "raw_single", events, std::min(secs, 2.0), nullptr));
  for (int threads : {1, 4, 16}) {
    report(bufferRun(dir / "buf", threads, 1, single_cap, secs));
  }
  for (int threads : {1, 4, 16}) {
    report(bufferRun(dir / "buf", threads, 100, events, secs));
  }
  report(rawLoop(dir / "raw", "raw_after", events, secs, &drain));
  report(drain);
  return 0;
}
