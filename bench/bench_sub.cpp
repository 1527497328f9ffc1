// The drain benchmark's verifier (P3): subscribes to the uplink topic (QoS 1), decompresses each
// batch (gzip or zstd), and counts distinct event ids until it has seen `--expect` of them or
// `--timeout` s passed.
//
//   bench_sub --url tcp://127.0.0.1:PORT --topic T --expect N [--type TYPE] [--timeout S]
//             [--ready FILE] [--progress FILE]
//
// With --type only events of that type are counted (the agent adds its own agent.* events).
// Writes the --ready FILE once subscribed; appends "<unix_ms> <distinct ids>" to the --progress
// FILE at most every 100 ms while batches arrive, and once more at the end (bench/run plots the
// drain from it). Prints
//   "RESULT sub <distinct> <messages> <events_with_dups> <first_msg_unix_ms> <done_unix_ms>
//    <wire_bytes> <json_bytes> <cpu_seconds>"
// and exits 0 when all N ids arrived, 1 otherwise.
#include <mqtt/async_client.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>
#if BENCH_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

namespace {

int64_t unixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

#if BENCH_HAVE_ISAL
// gzip by ISA-L's igzip, in one call (the agent's uplink compresses with it): zlib's inflate was
// ~60% of this subscriber's CPU, 1.1 us of its 1.9 an event, on the two cores the agent's end to
// end shares with it (docs/benchmarks.md, "Rows of several events in the agent"). The gzip
// trailer gives the size; the header and CRC-32 are checked.
bool gunzip(std::string_view in, std::string& out) {
  if (in.size() < 18) {
    return false;
  }
  uint32_t size = 0;
  std::memcpy(&size, in.data() + in.size() - 4, 4);  // ISIZE, little-endian (x86, arm64)
  out.resize(std::max<std::size_t>(size, 1));
  inflate_state st;
  isal_inflate_init(&st);
  st.crc_flag = ISAL_GZIP;
  st.next_in = reinterpret_cast<uint8_t*>(const_cast<char*>(in.data()));
  st.avail_in = static_cast<uint32_t>(in.size());
  st.next_out = reinterpret_cast<uint8_t*>(out.data());
  st.avail_out = static_cast<uint32_t>(out.size());
  const int rc = isal_inflate_stateless(&st);
  if (rc != ISAL_DECOMP_OK || st.total_out != size) {
    return false;
  }
  out.resize(st.total_out);
  return true;
}
#else
bool gunzip(std::string_view in, std::string& out) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) {  // +32: gzip or zlib header, detected
    return false;
  }
  out.resize(std::max<std::size_t>(in.size() * 8, 1 << 16));
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  int rc = Z_OK;
  for (int rounds = 0; rounds < 64 && rc != Z_STREAM_END; ++rounds) {
    if (zs.total_out == out.size()) {
      out.resize(out.size() * 2);
    }
    zs.next_out = reinterpret_cast<Bytef*>(out.data() + zs.total_out);
    zs.avail_out = static_cast<uInt>(out.size() - zs.total_out);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      break;
    }
  }
  out.resize(zs.total_out);
  inflateEnd(&zs);
  return rc == Z_STREAM_END;
}
#endif

// A zstd frame that states its size (the agent's do: ZSTD_compressCCtx writes it).
bool unzstd(std::string_view in, std::string& out) {
  const auto size = ZSTD_getFrameContentSize(in.data(), in.size());
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN || size > (1U << 30)) {
    return false;
  }
  out.resize(size);
  const auto n = ZSTD_decompress(out.data(), out.size(), in.data(), in.size());
  return ZSTD_isError(n) == 0 && n == size;
}

// The distinct ids seen. A canonical UUID (every id the agent makes, and most a client gives) is
// kept as its 16 bytes in one flat table, open-addressed with linear probing; anything else as a
// string. A node per id (std::unordered_set<std::string>: a bucket array, a node and a string on
// the heap) took ~0.45 us an event in cache misses at a few million ids; this table takes ~0.3 us
// less, on the two cores the subscriber shares with the agent whose end to end it counts
// (docs/benchmarks.md, "A leaner subscriber").
class IdSet {
 public:
  explicit IdSet(std::size_t expect) {
    std::size_t cap = 1024;
    while (cap < expect * 2 && cap < (std::size_t{1} << 23)) {
      cap *= 2;
    }
    table_ = Table(cap);
  }

  std::size_t size() const { return uuids_ + others_.size(); }

  // Queues a UUID for flush(); anything else is counted at once.
  void add(std::string_view id) {
    Slot key{};
    if (parseUuid(id, key)) {
      pending_.push_back(key);
    } else {
      others_.emplace(id);
    }
  }

  // Inserts the queued UUIDs (a message's worth), each slot prefetched a few ids ahead: one cache
  // (and TLB) miss per id, overlapped instead of in turn.
  void flush() {
    while ((uuids_ + pending_.size()) * 2 > table_.size()) {
      grow();
    }
    constexpr std::size_t kAhead = 8;
    for (std::size_t i = 0; i < pending_.size(); ++i) {
      if (i + kAhead < pending_.size()) {
        __builtin_prefetch(&table_[home(pending_[i + kAhead])], 1);
      }
      if (put(pending_[i])) {
        ++uuids_;
      }
    }
    pending_.clear();
  }

 private:
  struct Slot {
    uint64_t hi = 0;
    uint64_t lo = 0;
    bool used() const { return hi != 0 || lo != 0; }  // a nil UUID is kept among the others
  };

  // Zeroed anonymous memory in huge pages where the kernel gives them (madvise mode): the table
  // is touched at random, and 4 KiB pages would add a TLB miss to each cache miss.
  class Table {
   public:
    Table() = default;
    explicit Table(std::size_t n) : n_(n) {
      void* p = mmap(nullptr, n * sizeof(Slot), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
      if (p == MAP_FAILED) {
        std::perror("bench_sub: mmap");
        std::exit(2);
      }
      madvise(p, n * sizeof(Slot), MADV_HUGEPAGE);
      slots_ = static_cast<Slot*>(p);
    }
    Table(Table&& o) noexcept
        : slots_(std::exchange(o.slots_, nullptr)), n_(std::exchange(o.n_, 0)) {}
    Table& operator=(Table&& o) noexcept {
      std::swap(slots_, o.slots_);
      std::swap(n_, o.n_);
      return *this;
    }
    Table(const Table&) = delete;
    Table& operator=(const Table&) = delete;
    ~Table() {
      if (slots_ != nullptr) {
        munmap(slots_, n_ * sizeof(Slot));
      }
    }
    std::size_t size() const { return n_; }
    Slot& operator[](std::size_t i) { return slots_[i]; }

   private:
    Slot* slots_ = nullptr;
    std::size_t n_ = 0;
  };

  static int hexValue(char c) {
    if (c >= '0' && c <= '9') {
      return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
      return c - 'a' + 10;
    }
    return -1;
  }

  // 8-4-4-4-12 lower-case hex (the agent's own form). Upper case goes among the others: the
  // agent compares ids as written, so "A…" and "a…" are two ids to it and to this count.
  static bool parseUuid(std::string_view id, Slot& out) {
    if (id.size() != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-') {
      return false;
    }
    uint64_t half[2] = {0, 0};
    int nibbles = 0;
    for (const char c : id) {
      if (c == '-') {
        continue;
      }
      const int v = hexValue(c);
      if (v < 0) {
        return false;
      }
      half[nibbles / 16] = (half[nibbles / 16] << 4) | static_cast<uint64_t>(v);
      ++nibbles;
    }
    out = Slot{half[0], half[1]};
    return out.used();
  }

  std::size_t home(const Slot& k) const {
    // UUIDv7's low 62 bits are random; mixing in the high half covers ids that are not v7.
    return static_cast<std::size_t>(
               (k.lo ^ (k.hi * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL >> 17) &
           (table_.size() - 1);
  }

  bool put(const Slot& k) {
    for (std::size_t i = home(k);; i = (i + 1) & (table_.size() - 1)) {
      Slot& s = table_[i];
      if (!s.used()) {
        s = k;
        return true;
      }
      if (s.hi == k.hi && s.lo == k.lo) {
        return false;
      }
    }
  }

  void grow() {
    Table old(table_.size() * 2);
    std::swap(old, table_);
    for (std::size_t i = 0; i < old.size(); ++i) {
      if (old[i].used()) {
        put(old[i]);
      }
    }
  }

  Table table_;
  std::vector<Slot> pending_;
  std::size_t uuids_ = 0;
  std::unordered_set<std::string> others_;
};

class Counter {
 public:
  Counter(uint64_t expect, std::string type, const std::string& progress)
      : expect_(expect),
        type_prefix_(type.empty() ? "" : ",\"type\":\"" + type + "\""),
        ids_(static_cast<std::size_t>(std::min<uint64_t>(expect, 4'000'000))) {
    if (!progress.empty()) {
      progress_ = std::fopen(progress.c_str(), "w");
    }
  }
  ~Counter() {
    if (progress_ != nullptr) {
      std::fclose(progress_);
    }
  }
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void onPayload(std::string_view payload) {
    std::lock_guard lock(mu_);  // Paho calls back from one thread; the lock guards print()
    std::string_view json = payload;
    if (payload.size() >= 2 && static_cast<unsigned char>(payload[0]) == 0x1f &&
        static_cast<unsigned char>(payload[1]) == 0x8b) {
      if (!gunzip(payload, scratch_)) {
        bad_.fetch_add(1);
        return;
      }
      json = scratch_;
    } else if (payload.size() >= 4 && payload.substr(0, 4) == "\x28\xb5\x2f\xfd") {
      if (!unzstd(payload, scratch_)) {
        bad_.fetch_add(1);
        return;
      }
      json = scratch_;
    }
    // Every event envelope starts with {"id":"<uuid>" (agent/ingest/ingest.cpp serialiseEvent).
    static constexpr std::string_view kKey = "{\"id\":\"";
    wire_bytes_ += payload.size();
    json_bytes_ += json.size();
    if (first_ms_ == 0) {
      first_ms_ = unixMs();
    }
    ++messages_;
    for (std::size_t pos = json.find(kKey); pos != std::string_view::npos;
         pos = json.find(kKey, pos + kKey.size())) {
      const std::size_t start = pos + kKey.size();
      const std::size_t end = json.find('"', start);
      if (end == std::string_view::npos) {
        break;
      }
      if (!type_prefix_.empty() && json.substr(end + 1, type_prefix_.size()) != type_prefix_) {
        continue;  // not one of the events we count (agent.started and the like)
      }
      ++events_;
      ids_.add(json.substr(start, end - start));
    }
    ids_.flush();
    if (ids_.size() >= expect_ && done_ms_ == 0) {
      done_ms_ = unixMs();
      cv_.notify_all();
    }
    last_ms_ = unixMs();
    noteProgress(done_ms_ != 0);
  }

  // A line "<ms of the last arrival> <distinct ids>" when the count changed, at most every
  // 100 ms unless forced. Caller holds mu_.
  void noteProgress(bool force) {
    if (progress_ == nullptr || ids_.size() == progress_count_) {
      return;
    }
    if (force || last_ms_ - progress_ms_ >= 100) {
      progress_ms_ = last_ms_;
      progress_count_ = ids_.size();
      std::fprintf(progress_, "%lld %zu\n", static_cast<long long>(last_ms_), ids_.size());
      std::fflush(progress_);
    }
  }

  // Wakes every 100 ms to write the count of the last arrivals (the progress file always ends
  // with the count so far, even when the last batch came within 100 ms of the line before).
  bool waitDone(int timeout_s) {
    std::unique_lock lock(mu_);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (done_ms_ == 0 && std::chrono::steady_clock::now() < deadline) {
      cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return done_ms_ != 0; });
      noteProgress(true);
    }
    return done_ms_ != 0;
  }

  void print() {
    std::lock_guard lock(mu_);
    noteProgress(true);
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const double cpu_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    std::printf("RESULT sub %zu %llu %llu %lld %lld %llu %llu %.2f\n", ids_.size(),
                static_cast<unsigned long long>(messages_),
                static_cast<unsigned long long>(events_), static_cast<long long>(first_ms_),
                static_cast<long long>(done_ms_), static_cast<unsigned long long>(wire_bytes_),
                static_cast<unsigned long long>(json_bytes_), cpu_s);
    if (bad_.load() > 0) {
      std::fprintf(stderr, "bench_sub: %llu payloads failed to decompress\n",
                   static_cast<unsigned long long>(bad_.load()));
    }
    std::fflush(stdout);
  }

 private:
  const uint64_t expect_;
  const std::string type_prefix_;
  std::mutex mu_;
  std::condition_variable cv_;
  IdSet ids_;
  std::string scratch_;
  uint64_t messages_ = 0;
  uint64_t wire_bytes_ = 0;  // as published (gzip)
  uint64_t json_bytes_ = 0;  // after gunzip
  uint64_t events_ = 0;
  int64_t first_ms_ = 0;
  int64_t done_ms_ = 0;
  std::FILE* progress_ = nullptr;
  int64_t last_ms_ = 0;      // when the last batch was counted
  int64_t progress_ms_ = 0;  // the time on the last progress line
  std::size_t progress_count_ = 0;
  std::atomic<uint64_t> bad_{0};
};

const char* arg(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) {
      return argv[i + 1];
    }
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string url = arg(argc, argv, "--url", "tcp://127.0.0.1:1883");
  const std::string topic = arg(argc, argv, "--topic", "omniedge/v1/+/+/events");
  const uint64_t expect = std::strtoull(arg(argc, argv, "--expect", "1"), nullptr, 10);
  const int timeout_s = std::atoi(arg(argc, argv, "--timeout", "120"));
  const std::string ready = arg(argc, argv, "--ready", "");

  Counter counter(expect, arg(argc, argv, "--type", ""), arg(argc, argv, "--progress", ""));
  try {
    // The pid too: two subscribers started in the same millisecond must not take each other's
    // session.
    mqtt::async_client client(
        url, "bench-sub-" + std::to_string(getpid()) + "-" + std::to_string(unixMs()), nullptr);
    client.set_message_callback([&](mqtt::const_message_ptr msg) {
      const auto& p = msg->get_payload_ref();
      counter.onPayload(std::string_view(p.data(), p.size()));
    });
    auto conn = mqtt::connect_options_builder().clean_session(true).keep_alive_interval(
        std::chrono::seconds(30));
    client.connect(conn.finalize())->wait();
    client.subscribe(topic, 1)->wait();
    if (!ready.empty()) {
      std::ofstream(ready) << "subscribed\n";
    }
    const bool ok = counter.waitDone(timeout_s);
    counter.print();
    client.disconnect()->wait_for(std::chrono::seconds(2));
    return ok ? 0 : 1;
  } catch (const mqtt::exception& e) {
    std::fprintf(stderr, "bench_sub: %s\n", e.what());
    counter.print();
    return 1;
  }
}
