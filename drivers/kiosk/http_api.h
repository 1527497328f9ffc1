// The kiosk / local HTTP API (contract §4): events in, health and metrics out.
#pragma once

#include <array>
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
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/event_metrics.h"
#include "agent/api/event_writer.h"
#include "agent/api/result.h"
#include "drivers/kiosk/http_server.h"

namespace omniedge::kiosk {

/// A bearer token and the event channels its holder may write with POST /v1/events.
struct ApiToken {
  std::string secret;
  std::vector<std::string> channels = {"kiosk"};  // of "kiosk", "beacon", "pos"
  std::vector<std::string> zones = {};  // GET /v1/stream shows only these (empty: every zone)
};

/// Parses http.tokens_file: one token per line, optionally followed by the channels it may
/// write (`<token> channels=kiosk,beacon`); without them a token writes kiosk.* only. A kiosk's
/// token may name the zones its engagement stream shows (`zones=entrance,shoes`). Blank
/// lines and lines starting with '#' are skipped; trailing whitespace is ignored. Fails with
/// "config" naming the line: an unknown channel or attribute, "agent" (agent.* events come
/// only from the agent), a token given twice, or no token at all.
/// Thread: any. Never throws.
Result<std::vector<ApiToken>> parseTokens(std::string_view text);

struct HttpApiOptions {
  std::string host = "127.0.0.1";
  int port = 8787;               // 0 = an ephemeral port, see HttpApi::port()
  std::vector<ApiToken> tokens;  // empty = no auth (loopback only; kiosk.* events only)
  std::size_t max_body_bytes = std::size_t{8} << 20;
  std::size_t max_events_per_request = 1000;
  int threads = 8;        // requests handled at once (idle connections hold none)
  int retry_after_s = 5;  // Retry-After of a 503 when the buffer pushes back
  // Connections and the limits of the request head (see HttpServerOptions).
  std::size_t max_connections = 256;
  std::size_t max_header_bytes = 16 * 1024;
  std::size_t max_headers = 64;
  std::chrono::milliseconds header_timeout{10000};
  std::chrono::milliseconds body_timeout{30000};
  std::chrono::milliseconds keep_alive_timeout{10000};
  // Brute force: this many failed authentications from one address (an IPv6 /64 counts as
  // one) within auth_window lock it out for auth_lockout; at most max_tracked_addresses are
  // remembered (the oldest forgotten first).
  int auth_max_failures = 5;
  std::chrono::seconds auth_window{60};
  std::chrono::seconds auth_lockout{60};
  std::size_t max_tracked_addresses = 1024;
  /// The cached profile (JSON) for a canonical key such as "loyalty:ID"; empty when unknown.
  /// Called on the server's threads. Unset: GET /v1/customers/{key} answers 404.
  std::function<std::optional<std::string>(const std::string& key)> customer_lookup;
  /// The cart (JSON) kept for a canonical key: the profile's, or one started at a kiosk for a
  /// customer the centre has not sent yet; empty when there is none. Called on the server's
  /// threads. Unset: the cart of customer_lookup's profile.
  std::function<std::optional<std::string>(const std::string& key)> cart_lookup;
  /// Adds an item (JSON {"sku","qty","price"?,"channel":"store"}) to the cart kept for `key`
  /// (canonical), starting one when the customer is not known yet, and returns the updated cart
  /// as JSON. Called on the server's threads, after the kiosk.cart_add event is durable.
  /// Unset: 404.
  std::function<Result<std::string>(const std::string& key, const std::string& item)> cart_add;
  /// True when the customer known as `key` (canonical) refuses personalization: GET
  /// /v1/customers/{key} and its cart then answer 403 "consent" instead of the profile.
  /// Called on the server's threads. Unset: never refused.
  std::function<bool(const std::string& key)> personalization_refused;
  std::string store_id;  // store.id: the first part of POS transaction ids
  // GET /v1/stream (server-sent events for the kiosks, see HttpApi::publish()).
  std::size_t max_streams = 32;                       // open at once; more: 503
  std::size_t stream_max_queued_bytes = 256 * 1024;   // per stream; oldest frames dropped
  std::chrono::milliseconds stream_heartbeat{15000};  // a comment line when quiet
};

/// A read-only GET route the owner mounts beside the API's own (the technician's web console):
/// called on the server's worker threads, concurrently, after the request passed the same
/// authentication as every route (and the server's limits on heads, bodies and connections).
/// It fills `res` (status, body, content type, headers) and may open a stream for server-sent
/// events by setting res.stream. Must not block for long: it holds a worker.
using GetHandler = std::function<void(const HttpRequest& req, HttpResponse& res)>;

struct HealthReport {
  bool ready = false;
  std::string reason;     // why not ready
  bool degraded = false;  // running, but producers are being refused (buffer full)
};

/// Serves contract §4's POST /v1/events, POST /v1/pos/transactions (the JSON transaction form of
/// docs/pos.md, mapped exactly as the POS spool maps it), GET /v1/customers/{key}[/cart],
/// POST /v1/customers/{key}/cart/items, GET /v1/health and GET /metrics.
/// With tokens configured every request needs `Authorization: Bearer <token>`; see
/// HttpApiOptions for the lockout. A valid token is never refused by the lockout.
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
  /// Thread: the owner's. Blocks only while binding.
  /// Fails with "config" when the host is not a loopback address and no tokens are configured,
  /// or with "io" naming the address when it cannot bind (port in use, unknown host), or
  /// "invalid_state" when already started. Never throws.
  Result<void> start();

  /// Stops accepting, lets requests in flight finish and joins the threads. Idempotent.
  /// Thread: the owner's. Blocks until in-flight appends return. Never fails or throws.
  void stop();

  /// Serves GET and HEAD on `prefix` and every path under it (`prefix` + "/...") with
  /// `handler`; other methods get 405. Authentication is the API's: with tokens configured a
  /// mounted route also takes the token as the password of HTTP Basic authentication (any user
  /// name), so that a browser can ask for it, and its 401 says so (WWW-Authenticate: Basic).
  /// Thread: the owner's, before start(). Fails "invalid_state" once started, "config" for a
  /// prefix that is not "/name" or that would shadow the API's own routes (/v1, /metrics) or
  /// another mount. Never throws.
  Result<void> mount(std::string prefix, GetHandler handler);

  /// The bound port (the ephemeral one when options.port was 0); 0 before start().
  /// Thread: any. Does not block.
  int port() const;

  /// Requests answered, by route and status, as Prometheus text
  /// (omniedge_http_requests_total{route="/v1/events",code="202"} 12), accepted events,
  /// connection and authentication counters. Routes are the templates
  /// ("/v1/customers/{key}"), never a customer's key.
  /// Thread: any. Blocks only on a short internal lock. Never fails.
  std::string metricsText() const;

  /// Where requests refused before they reach the writer (unparsable JSON, a POS sale that
  /// cannot be mapped, a channel the caller may not write) are counted as rejected events (one
  /// per request: their events cannot be told apart); the writer counts its own refusals.
  /// Null: nowhere. Thread: the owner, before start(); `metrics` must outlive this object.
  void setMetrics(EventMetrics* metrics) { event_metrics_ = metrics; }

  /// Sends `json` (one JSON object) as `event: engagement` to every stream whose filter takes
  /// `zone` (a stream without a zone filter takes every engagement; "" is no zone).
  /// Thread: any. Never blocks on the network (a slow client loses its oldest frames).
  void publish(std::string_view zone, std::string_view json);

  /// Streams open now. Thread: any.
  std::size_t openStreams() const;

  /// Addresses the brute-force lockout remembers now (at most max_tracked_addresses).
  /// Thread: any. Never blocks.
  std::size_t trackedAddresses() const { return tracked_.load(); }

 private:
  enum class Route {
    kEvents,
    kPos,
    kCustomer,
    kCustomerCart,
    kCartItems,
    kHealth,
    kMetrics,
    kStream,
    kOther,
    kMounted,  // mounts_[0]; mounts_[i] is kMounted + i
  };
  static constexpr int kRoutes = 9;  // the API's own (kMounted and after are mounts_)
  struct Mount {
    std::string prefix;
    GetHandler handler;
  };

  struct AddrKey {
    std::array<uint8_t, 16> bytes{};
    bool operator==(const AddrKey&) const = default;
  };
  struct AddrKeyHash {
    std::size_t operator()(const AddrKey& k) const;
  };
  struct Failures {
    int count = 0;
    std::chrono::steady_clock::time_point first{};  // of the current window
    std::chrono::steady_clock::time_point last{};
    std::chrono::steady_clock::time_point locked_until{};
  };

  HeadAction onHead(HttpRequest& req, HttpResponse& res);
  void onRequest(HttpRequest& req, HttpResponse& res);
  void onError(const HttpRequest* req, int status, std::string_view message, HttpResponse& res);
  // Authenticates `req`: the index of its token in options_.tokens (-1: no tokens configured),
  // or nullopt after filling a 401 or 429 into res.
  // `browser`: a mounted route, which also takes the token as a Basic password.
  std::optional<int> authenticate(const HttpRequest& req, HttpResponse& res, bool browser);
  // The index in mounts_ of the mount serving `path`, or -1.
  int mountFor(std::string_view path) const;
  std::string_view routeName(Route route) const;
  void recordFailure(const AddrKey& key, std::chrono::steady_clock::time_point now);
  unsigned channelsOf(int caller) const;
  void handleEvents(HttpResponse& res, std::string body, unsigned channels);
  // A request refused before the writer saw it, counted in event_metrics_ (if any).
  void countRefused(Channel channel, std::string_view code);
  void handlePosTransactions(HttpResponse& res, std::string body);
  // Appends `events` and answers 202 with their ids, or the writer's error.
  void answerAppend(HttpResponse& res, std::vector<Event> events, bool was_array);
  // Appends; on failure answers the error (400/413/503/500) and returns nullopt.
  std::optional<AppendOutcome> appendOrRefuse(HttpResponse& res, std::vector<Event> events,
                                              bool was_array);
  void handleCustomer(HttpResponse& res, const std::string& key, bool cart);
  void handleCartAdd(HttpResponse& res, const std::string& key, std::string body);
  void handleHealth(HttpResponse& res);
  void handleMetrics(HttpResponse& res);
  void countRequest(Route route, int status);
  // GET /v1/stream, on the event thread: opens the stream or fills a refusal into `res`.
  void openStream(const HttpRequest& req, HttpResponse& res);

  const HttpApiOptions options_;
  EventWriter& writer_;
  const std::function<HealthReport()> health_;
  const std::function<std::string()> metrics_;
  std::vector<unsigned> token_channels_;  // by token index
  EventMetrics* event_metrics_ = nullptr;
  std::vector<Mount> mounts_;  // set by mount() before start(), read-only once serving

  // Set and cleared by start()/stop() on the owner's thread; read by metricsText() from any.
  // Never held while the server stops: a worker answering GET /metrics may need it.
  mutable std::mutex server_mu_;
  std::shared_ptr<HttpServer> server_;  // guarded by server_mu_
  std::atomic<int> port_{0};

  // The lockout: touched only on the server's event thread (authentication happens there,
  // before any body is read).
  std::unordered_map<AddrKey, Failures, AddrKeyHash> failures_;
  std::atomic<std::size_t> tracked_{0};
  std::atomic<uint64_t> auth_failures_{0};
  std::atomic<uint64_t> lockouts_{0};

  // The kiosk streams (GET /v1/stream).
  struct Subscriber {
    std::shared_ptr<HttpStream> stream;
    std::vector<std::string> zones;  // empty: every zone
  };
  mutable std::mutex streams_mu_;
  mutable std::vector<Subscriber> streams_;  // guarded by streams_mu_; closed ones pruned lazily
  std::atomic<uint64_t> stream_frames_{0};
  std::atomic<uint64_t> stream_refused_{0};

  mutable std::mutex stats_mu_;
  std::map<std::pair<Route, int>, uint64_t> requests_;  // guarded by stats_mu_
  uint64_t events_accepted_ = 0;                        // guarded by stats_mu_
};

}  // namespace omniedge::kiosk
