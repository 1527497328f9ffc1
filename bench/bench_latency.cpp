// P2's latency half: single-event POST /v1/events at a fixed rate (an open-loop schedule, as
// wrk2 would do), each answered 202 only once the event is durable.
//
//   bench_latency --port P [--rate 1000] [--seconds 10] [--connections 4] [--event-bytes 500]
//
// Each connection is one keep-alive client sending at rate/connections. Latency is measured
// from the moment the request was due (so a stall delays, and counts against, the requests
// queued behind it: no coordinated omission) and, separately, from the moment it was sent.
// Prints "RESULT latency <sent> <ok> <achieved_rate> <p50_ms> <p99_ms> <p999_ms> <max_ms>
// <p99_service_ms>".
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

const char* arg(int argc, char** argv, const char* name, const char* fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) {
      return argv[i + 1];
    }
  }
  return fallback;
}

double pct(std::vector<double>& v, double p) {
  if (v.empty()) {
    return 0;
  }
  const auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

}  // namespace

int main(int argc, char** argv) {
  const int port = std::atoi(arg(argc, argv, "--port", "8787"));
  const double rate = std::strtod(arg(argc, argv, "--rate", "1000"), nullptr);
  const double seconds = std::strtod(arg(argc, argv, "--seconds", "10"), nullptr);
  const int conns = std::max(1, std::atoi(arg(argc, argv, "--connections", "4")));
  const std::size_t bytes = std::strtoull(arg(argc, argv, "--event-bytes", "500"), nullptr, 10);

  const std::string head = R"({"type":"kiosk.view","data":{"screen":"home","pad":")";
  const std::string tail = R"("}})";
  std::string body =
      head +
      std::string(bytes > head.size() + tail.size() ? bytes - head.size() - tail.size() : 1, 'p') +
      tail;

  const auto per_conn = static_cast<std::size_t>(rate * seconds / conns);
  const auto interval = std::chrono::duration<double>(conns / rate);
  std::mutex mu;
  std::vector<double> due_ms;
  std::vector<double> service_ms;
  std::atomic<std::size_t> sent{0};
  std::atomic<std::size_t> ok{0};
  const auto start = Clock::now() + std::chrono::milliseconds(200);
  std::vector<std::thread> threads;
  for (int c = 0; c < conns; ++c) {
    threads.emplace_back([&, c] {
      httplib::Client cli("127.0.0.1", port);
      cli.set_keep_alive(true);
      cli.set_tcp_nodelay(true);  // headers and body go out in separate writes
      cli.set_connection_timeout(5);
      cli.set_read_timeout(10);
      std::vector<double> my_due;
      std::vector<double> my_service;
      my_due.reserve(per_conn);
      my_service.reserve(per_conn);
      // Connections are staggered within one interval so they do not fire together.
      const auto offset =
          std::chrono::duration_cast<Clock::duration>(interval * (static_cast<double>(c) / conns));
      const auto hard_stop = start + std::chrono::duration<double>(seconds * 2 + 10);
      for (std::size_t i = 0; i < per_conn; ++i) {
        const auto due =
            start + offset +
            std::chrono::duration_cast<Clock::duration>(interval * static_cast<double>(i));
        std::this_thread::sleep_until(due);
        const auto t_send = Clock::now();
        if (t_send > hard_stop) {
          break;
        }
        auto res = cli.Post("/v1/events", body, "application/json");
        const auto t_done = Clock::now();
        ++sent;
        if (res && res->status == 202) {
          ++ok;
        }
        my_due.push_back(std::chrono::duration<double, std::milli>(t_done - due).count());
        my_service.push_back(std::chrono::duration<double, std::milli>(t_done - t_send).count());
      }
      std::lock_guard lock(mu);
      due_ms.insert(due_ms.end(), my_due.begin(), my_due.end());
      service_ms.insert(service_ms.end(), my_service.begin(), my_service.end());
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const double p50 = pct(due_ms, 0.50);
  const double p99 = pct(due_ms, 0.99);
  const double p999 = pct(due_ms, 0.999);
  const double mx = due_ms.empty() ? 0 : *std::max_element(due_ms.begin(), due_ms.end());
  const double s99 = pct(service_ms, 0.99);
  std::printf("RESULT latency %zu %zu %.0f %.3f %.3f %.3f %.3f %.3f\n", sent.load(), ok.load(),
              static_cast<double>(sent.load()) / elapsed, p50, p99, p999, mx, s99);
  return ok.load() == sent.load() ? 0 : 1;
}
