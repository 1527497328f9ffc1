// The drain's publishing ceiling (issue 18): raw Paho C++ publishing QoS 1 messages as fast as
// the broker acknowledges them, with the agent's window of unacknowledged messages, and nothing
// else (no SQLite, no serialisation, no compression: the payloads are made before the clock).
//
//   bench_pub --url tcp://127.0.0.1:PORT --topic T --messages N --bytes B [--inflight W]
//
// Prints "RESULT pub <messages> <bytes_each> <inflight> <seconds> <messages_per_s>" and exits 0
// when every message was acknowledged (PUBACK), 1 otherwise.
#include <mqtt/async_client.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <vector>

namespace {

const char* arg(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) {
      return argv[i + 1];
    }
  }
  return fallback;
}

// Counts PUBACKs and lets the publisher wait for a free slot in the window.
class Window : public virtual mqtt::iaction_listener {
 public:
  explicit Window(int size) : size_(size) {}
  void acquire() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return inflight_ < size_; });
    ++inflight_;
  }
  bool waitAll(std::chrono::seconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return inflight_ == 0; });
  }
  uint64_t acked() {
    std::lock_guard lock(mu_);
    return acked_;
  }
  uint64_t failed() {
    std::lock_guard lock(mu_);
    return failed_;
  }

 private:
  void on_success(const mqtt::token& /*tok*/) override { done(true); }
  void on_failure(const mqtt::token& /*tok*/) override { done(false); }
  void done(bool ok) {
    std::lock_guard lock(mu_);
    --inflight_;
    ++(ok ? acked_ : failed_);
    cv_.notify_all();
  }
  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  int inflight_ = 0;
  uint64_t acked_ = 0;
  uint64_t failed_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const std::string url = arg(argc, argv, "--url", "tcp://127.0.0.1:1883");
  const std::string topic = arg(argc, argv, "--topic", "bench/pub");
  const auto messages = std::strtoull(arg(argc, argv, "--messages", "1000"), nullptr, 10);
  const auto bytes = std::strtoull(arg(argc, argv, "--bytes", "100000"), nullptr, 10);
  const int inflight = std::max(1, std::atoi(arg(argc, argv, "--inflight", "4")));

  // Random bytes: what a compressed batch looks like to the broker.
  std::mt19937_64 rng(42);
  std::vector<std::string> payloads(16, std::string(bytes, '\0'));
  for (auto& p : payloads) {
    for (auto& c : p) {
      c = static_cast<char>(rng());
    }
  }
  try {
    mqtt::async_client client(url, "bench-pub-" + std::to_string(::getpid()), nullptr);
    auto conn = mqtt::connect_options_builder().clean_session(true).keep_alive_interval(
        std::chrono::seconds(30));
    client.connect(conn.finalize())->wait();
    Window window(inflight);
    const auto t0 = std::chrono::steady_clock::now();
    for (uint64_t i = 0; i < messages; ++i) {
      window.acquire();
      auto msg = mqtt::make_message(topic, payloads[i % payloads.size()], 1, false);
      client.publish(msg, nullptr, window);
    }
    const bool all = window.waitAll(std::chrono::seconds(120));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("RESULT pub %llu %llu %d %.3f %.0f\n",
                static_cast<unsigned long long>(window.acked()),
                static_cast<unsigned long long>(bytes), inflight, secs,
                static_cast<double>(window.acked()) / secs);
    std::fflush(stdout);
    client.disconnect()->wait_for(std::chrono::seconds(2));
    return all && window.failed() == 0 && window.acked() == messages ? 0 : 1;
  } catch (const mqtt::exception& e) {
    std::fprintf(stderr, "bench_pub: %s\n", e.what());
    return 1;
  }
}
