// The kiosk / local HTTP API (contract §4): events in, health and metrics out.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/event_writer.h"
#include "agent/api/result.h"

namespace httplib {
class ContentReader;
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace omniedge::kiosk {

struct HttpApiOptions {
  std::string host = "127.0.0.1";
  int port = 8787;                  // 0 = an ephemeral port, see HttpApi::port()
  std::vector<std::string> tokens;  // bearer tokens; empty = no auth (loopback only)
  std::size_t max_body_bytes = std::size_t{8} << 20;
  std::size_t max_events_per_request = 1000;
  int threads = 8;               // connections served at once (a keep-alive connection holds one)
  int retry_after_s = 5;         // Retry-After of a 503 when the buffer pushes back
  int keep_alive_timeout_s = 1;  // idle keep-alive connections close after this; bounds stop()
  /// The cached profile (JSON) for a key such as "loyalty:ID"; empty when unknown. Called on the
  /// server's threads. Unset: GET /v1/customers/... answers 404.
  std::function<std::optional<std::string>(const std::string& key)> customer_lookup;
  /// Adds an item (JSON {"sku","qty","price"?,"channel":"store"}) to the cached cart of `key`
  /// and returns the updated cart as JSON; fails "not_found" for an unknown key. Called on the
  /// server's threads, after the kiosk.cart_add event is durable. Unset: 404.
  std::function<Result<std::string>(const std::string& key, const std::string& item)> cart_add;
  std::string store_id;  // store.id: the first part of POS transaction ids
};

struct HealthReport {
  bool ready = false;
  std::string reason;  // why not ready
};

/// Serves contract §4's POST /v1/events, POST /v1/pos/transactions (the JSON transaction form of
/// docs/pos.md, mapped exactly as the POS spool maps it), GET /v1/health and GET /metrics.
/// With tokens configured every request needs `Authorization: Bearer <token>`; an address that
/// fails 5 times within 60 s is answered 429 for 60 s.
class HttpApi {
 public:
  /// `writer`, and whatever the callbacks use, must outlive this object. `health` and `metrics`
  /// are called on the server's threads, concurrently; `metrics` returns Prometheus text.
  HttpApi(HttpApiOptions options, EventWriter& writer, std::function<HealthReport()> health,
          std::function<std::string()> metrics);
  /// Stops the server (see stop()).
  ~HttpApi();
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  /// Binds host:port and serves on its own threads until stop().
  /// Thread: the owner's. Blocks only while binding and until the server accepts (ms).
  /// Fails with "config" when the host is not a loopback address and no tokens are configured,
  /// or with "io" naming the address when it cannot bind (port in use, unknown host), or
  /// "invalid_state" when already started. Never throws.
  Result<void> start();

  /// Stops accepting, lets requests in flight finish and joins the threads. Idempotent.
  /// Thread: the owner's. Blocks until in-flight appends return and idle keep-alive
  /// connections time out (keep_alive_timeout_s). Never fails or throws.
  void stop();

  /// The bound port (the ephemeral one when options.port was 0); 0 before start().
  /// Thread: any. Does not block.
  int port() const;

  /// Requests answered, by route and status, as Prometheus text
  /// (omniedge_http_requests_total{route="/v1/events",code="202"} 12), plus accepted events.
  /// Thread: any. Blocks only on a short internal lock. Never fails.
  std::string metricsText() const;

 private:
  enum class Access { kAllowed, kDenied };

  void installRoutes();
  Access checkAccess(const httplib::Request& req, httplib::Response& res);
  // Runs a route's handler: turns exceptions into 500s and counts the answer.
  void serve(const httplib::Request& req, httplib::Response& res,
             const std::function<void()>& handler);
  void routeEvents(const httplib::Request& req, httplib::Response& res,
                   const httplib::ContentReader& reader);
  void routeOther(const httplib::Request& req, httplib::Response& res,
                  const httplib::ContentReader* reader);
  void handleEvents(httplib::Response& res, std::string body);
  void handlePosTransactions(httplib::Response& res, std::string body);
  // Appends `events` and answers 202 with their ids, or the writer's error.
  void answerAppend(httplib::Response& res, std::vector<Event> events, bool was_array);
  // Appends; on failure answers the error (400/413/503/500) and returns nullopt.
  std::optional<AppendOutcome> appendOrRefuse(httplib::Response& res, std::vector<Event> events,
                                              bool was_array);
  void handleCartAdd(httplib::Response& res, const std::string& key, std::string body);
  void handleHealth(httplib::Response& res);
  void handleMetrics(httplib::Response& res);
  void countRequest(const httplib::Request& req, const httplib::Response& res);

  struct Failures {
    std::vector<std::chrono::steady_clock::time_point> recent;  // within the window
    std::chrono::steady_clock::time_point locked_until{};
  };

  const HttpApiOptions options_;
  EventWriter& writer_;
  const std::function<HealthReport()> health_;
  const std::function<std::string()> metrics_;

  std::unique_ptr<httplib::Server> server_;  // owner's thread only (start/stop)
  std::thread thread_;                       // owner's thread only
  std::atomic<int> port_{0};

  mutable std::mutex auth_mu_;
  std::map<std::string, Failures> failures_;  // by remote address; guarded by auth_mu_

  mutable std::mutex stats_mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // guarded by stats_mu_
  uint64_t events_accepted_ = 0;                              // guarded by stats_mu_
};

}  // namespace omniedge::kiosk
