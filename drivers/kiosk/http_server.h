// A small HTTP/1.1 server for the kiosk API: one epoll thread reads every request head and body
// under deadlines and limits, a few worker threads run the handlers. Nothing about a client that
// has not sent a whole request ever reaches a worker, and everything is bounded: connections,
// head bytes and fields, body bytes (each and in total), and the time each phase may take.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "agent/api/result.h"

namespace omniedge::kiosk {

struct HttpHeader {
  std::string_view name;
  std::string_view value;
};

/// One request. The views point into the connection's buffer and stay valid until the answer
/// is written; the request is reused for the connection's next request.
struct HttpRequest {
  std::string_view method;
  std::string_view target;  // as sent, with the query
  std::string path;         // percent-decoded, without the query
  std::vector<HttpHeader> headers;
  std::string body;  // the whole body (de-chunked; still Content-Encoded: see decodeBody())
  std::string_view remote_addr;  // the peer's address as text ("127.0.0.1", "::1")
  sockaddr_storage peer{};       // the peer's address
  bool keep_alive = true;
  bool expect_continue = false;
  bool chunked = false;
  std::uint64_t content_length = 0;  // declared (0 when chunked or absent)
  // Set by the head handler for the request handler (what route, which caller); -1 unset.
  int route = -1;
  int caller = -1;

  /// The first header of that name (case-insensitive); empty when absent.
  std::string_view header(std::string_view name) const;
  bool hasHeader(std::string_view name) const;
};

/// The sending end of a response that stays open (server-sent events, GET /v1/stream): the
/// server writes its head and then whatever is written here, until either side closes it.
/// Bounded by bytes: when more than max_queued_bytes wait (a client that does not read), the
/// oldest writes are dropped whole and counted.
class HttpStream {
 public:
  /// `heartbeat` is written after `heartbeat_every` without anything else (": ping\n\n" for
  /// server-sent events), so that proxies and the client see the connection alive.
  HttpStream(std::size_t max_queued_bytes, std::string heartbeat,
             std::chrono::milliseconds heartbeat_every)
      : max_queued_bytes_(max_queued_bytes),
        heartbeat_(std::move(heartbeat)),
        heartbeat_every_(heartbeat_every) {}

  /// Queues `bytes` (one whole frame) for the client. False once the connection is gone.
  /// Thread: any. Never blocks on the network.
  bool write(std::string bytes);
  /// Whether the connection is gone (the client left, or the server stopped). Thread: any.
  bool closed() const;
  /// Frames dropped because the client did not keep up. Thread: any.
  uint64_t dropped() const;

 private:
  friend class HttpServer;
  // The server's side (its event thread): takes everything queued, attaches and detaches.
  std::string take();
  void attach(std::function<void()> wake);
  void detach();

  const std::size_t max_queued_bytes_;
  const std::string heartbeat_;
  const std::chrono::milliseconds heartbeat_every_;
  mutable std::mutex mu_;
  std::deque<std::string> queue_;  // guarded by mu_
  std::size_t queued_bytes_ = 0;   // guarded by mu_
  bool closed_ = false;            // guarded by mu_
  uint64_t dropped_ = 0;           // guarded by mu_
  std::function<void()> wake_;     // guarded by mu_: tells the server's event thread
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  bool close = false;  // close the connection after this answer
  /// Set by the head handler for an answer that stays open: the body is sent first, without a
  /// Content-Length, then what the stream is given, until either side closes it.
  std::shared_ptr<HttpStream> stream;

  void set_header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
  }
  void set_content(std::string content, std::string_view type) {
    body = std::move(content);
    content_type = type;
  }
  void reset();
};

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;                              // 0: an ephemeral port (see HttpServer::port())
  int workers = 8;                           // threads running handlers
  std::size_t max_connections = 256;         // open at once, idle keep-alive ones included
  std::size_t max_header_bytes = 16 * 1024;  // request line + header fields
  std::size_t max_headers = 64;              // header fields
  std::size_t max_body_bytes = std::size_t{8} << 20;
  std::size_t max_buffered_body_bytes = std::size_t{32} << 20;  // all connections together
  std::chrono::milliseconds header_timeout{10000};  // first byte of a request -> end of its head
  std::chrono::milliseconds body_timeout{30000};    // end of the head -> end of the body
  std::chrono::milliseconds keep_alive_timeout{10000};  // idle between requests
  std::chrono::milliseconds write_timeout{10000};       // to write one answer
};

/// What the head handler decided.
enum class HeadAction {
  kReadBody,  // read the body (if any) and run the request handler
  kRespond,   // answer with the response filled in now; the body is skipped
};

/// Counters, for metrics. Thread: any.
struct HttpServerStats {
  uint64_t accepted = 0;
  uint64_t open = 0;
  uint64_t refused_busy = 0;      // answered 503 at once: every connection slot held by a request
  uint64_t evicted = 0;           // idle or unfinished connections closed to make room
  uint64_t head_timeouts = 0;     // 408: the head did not arrive in time (slowloris)
  uint64_t body_timeouts = 0;     // 408: the body did not arrive in time
  uint64_t idle_closed = 0;       // keep-alive connections closed after keep_alive_timeout
  uint64_t head_too_large = 0;    // 431 / 414
  uint64_t malformed = 0;         // 400 / 501 / 505 from the protocol layer
  uint64_t body_budget_busy = 0;  // 503: all bodies together would exceed the budget
  uint64_t buffered_body_bytes = 0;
};

/// Thread: construction, start() and stop() on the owner's thread; the handlers are called as
/// their comments say.
class HttpServer {
 public:
  /// On the event thread, once a request's head is complete and before any of its body is
  /// read: authenticate, route, refuse early. Must not block. Filling `res` and returning
  /// kRespond answers at once (the body is never buffered).
  using HeadHandler = std::function<HeadAction(HttpRequest& req, HttpResponse& res)>;
  /// On a worker thread, with the whole body. May block (e.g. on a durable append).
  using RequestHandler = std::function<void(HttpRequest& req, HttpResponse& res)>;
  /// Fills the body of a refusal made by the protocol layer (400, 408, 413, 414, 431, 501, 503,
  /// 505); `req` is null when the request line did not parse. Event thread or a worker; must
  /// not block.
  using ErrorHandler = std::function<void(const HttpRequest* req, int status,
                                          std::string_view message, HttpResponse& res)>;

  HttpServer(HttpServerOptions options, HeadHandler on_head, RequestHandler on_request,
             ErrorHandler on_error);
  /// Stops (see stop()).
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// Binds host:port, then serves on its own threads until stop(). Fails with "io" naming the
  /// address (in use, unknown host) or "invalid_state" when already started. Never throws.
  /// Thread: the owner's; blocks only while binding.
  Result<void> start();

  /// Stops accepting, closes idle connections, lets requests being handled finish (their
  /// answers get a second to go out), and joins every thread. Idempotent.
  /// Thread: the owner's. Blocks as long as the handlers in flight.
  void stop();

  /// The bound port; 0 before start(). Thread: any.
  int port() const { return port_.load(); }

  /// Thread: any. Never blocks.
  HttpServerStats stats() const;

  /// Undoes the body's Content-Encoding (gzip, deflate; identity or none: nothing to do) in
  /// req.body, keeping at most `max` bytes. Fails "unsupported_media_type" for another encoding,
  /// "too_large" past `max`, "invalid" for a corrupt or truncated stream.
  /// Thread: any (a worker). Never throws.
  static Result<void> decodeBody(HttpRequest& req, std::size_t max);

  struct Conn;  // one connection (http_server.cpp)

 private:
  void loop();
  void workerLoop();
  void acceptAll();
  bool makeRoom();
  void onReadable(Conn& c);
  void onWritable(Conn& c);
  void readHead(Conn& c);
  bool parseHead(Conn& c, std::size_t head_end);
  void afterHead(Conn& c);
  void readBody(Conn& c);
  bool decodeChunks(Conn& c);
  void dispatch(Conn& c);
  void returned(Conn& c);
  // Event thread: the connections workers gave back (done_) and streams with something queued.
  void takeReturned();
  void startResponse(Conn& c);
  void finishResponse(Conn& c);
  void refuse(Conn& c, int status, std::string_view message);
  void closeConn(Conn& c);
  void lingerClose(Conn& c);
  void nextRequest(Conn& c);
  void sweep();
  void releaseBudget(Conn& c);
  void serialize(Conn& c, const HttpResponse& res) const;
  void startStream(Conn& c);
  void pumpStream(Conn& c);
  void setDeadline(Conn& c, std::chrono::milliseconds after);
  bool flush(Conn& c);

  const HttpServerOptions options_;
  const HeadHandler on_head_;
  const RequestHandler on_request_;
  const ErrorHandler on_error_;

  int listen_fd_ = -1;  // owner's thread until start() returns, then the event thread
  int epoll_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: stop, and connections coming back from the workers
  std::atomic<int> port_{0};
  std::atomic<bool> stopping_{false};
  std::thread event_thread_;
  std::vector<std::thread> workers_;

  // Event thread only (set by start() before it begins).
  std::size_t max_connections_ = 0;  // options_.max_connections, within RLIMIT_NOFILE
  std::vector<std::unique_ptr<Conn>> conns_;
  std::vector<Conn*> again_;                      // to read their next request this round
  std::vector<std::unique_ptr<Conn>> graveyard_;  // closed this round
  std::vector<Conn*> streams_;                    // connections streaming (HttpStream)
  std::atomic<bool> streams_ready_{false};        // a stream has something to send
  std::chrono::steady_clock::time_point next_sweep_{};
  std::size_t budget_used_ = 0;

  // Requests for the workers, and connections they are done with.
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<Conn*> queue_;    // guarded by queue_mu_
  bool workers_stop_ = false;  // guarded by queue_mu_
  std::mutex done_mu_;
  std::vector<Conn*> done_;  // guarded by done_mu_

  struct Counters {
    std::atomic<uint64_t> accepted{0}, open{0}, refused_busy{0}, evicted{0}, head_timeouts{0},
        body_timeouts{0}, idle_closed{0}, head_too_large{0}, malformed{0}, body_budget_busy{0},
        buffered_body_bytes{0};
  };
  mutable Counters counters_;
};

}  // namespace omniedge::kiosk
