// The control socket: how the CLI talks to the running daemon (one JSON request per line,
// one JSON answer per line) over a Unix socket of mode 0660 in the runtime directory.
//
// Whoever can connect can send anything, slowly or not at all: requests are bounded in bytes,
// in nesting and in time, clients are served concurrently (one I/O thread multiplexes every
// connection, a few workers run the handler), and every malformed request gets an answer
// {"ok": false, "error": "...", "code": "invalid_request"} instead of an exception.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "agent/api/result.h"

namespace omniedge {

struct ControlLimits {
  std::size_t max_request_bytes = 1 << 20;   // one request line, newline excluded
  std::size_t max_buffered_bytes = 8 << 20;  // requests held at once (read, queued, handled)
  std::size_t max_depth = 72;    // nesting: an event may nest 64 deep (kiosk), plus the request
  std::size_t max_clients = 64;  // connections open at once (reading, handled, answered)
  std::size_t workers = 2;       // handlers running at once
  std::chrono::milliseconds request_timeout{2000};  // from accept to the request's last byte
  std::chrono::milliseconds answer_timeout{10000};  // for the client to take the whole answer
  /// A client connected this recently is not pushed out for a new one (its request may be on
  /// its way), so a flood of connections cannot push out a request about to arrive.
  std::chrono::milliseconds eviction_grace{250};
};

class ControlServer {
 public:
  /// Answers one request (a JSON object). Runs on a worker thread, possibly on two at once, so
  /// it must be thread-safe; it should return within a few seconds. An exception it throws is
  /// logged and answered as an internal error.
  using Handler = std::function<nlohmann::json(const nlohmann::json& request)>;

  ControlServer(std::filesystem::path socket_path, Handler handler, ControlLimits limits = {});
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  /// Binds the socket (replacing a stale one), mode 0660, and serves on its own threads.
  /// Fails "io" when it cannot listen. Thread: the caller's (once).
  Result<void> start();
  /// Stops within ~200 ms plus the longest handler in progress, closes every connection and
  /// removes the socket file. Thread: the one that called start(); idempotent.
  void stop();

 private:
  struct Client;
  struct Job {
    uint64_t client_id = 0;
    std::string request;
  };
  struct Done {
    uint64_t client_id = 0;
    std::string answer;
  };
  void ioLoop();
  void workerLoop();
  void acceptClients(std::chrono::steady_clock::time_point now);
  void readFrom(Client& c);
  void finishRequest(Client& c, std::string request);
  void answerNow(Client& c, const std::string& error);
  void flush(Client& c);
  std::size_t bufferedBytes() const;
  std::string handle(const std::string& request);

  std::filesystem::path path_;
  Handler handler_;
  ControlLimits limits_;
  int fd_ = -1;
  int wake_fd_ = -1;  // eventfd: a worker finished, or stop()
  std::atomic<bool> stop_{false};
  std::vector<std::unique_ptr<Client>> clients_;  // I/O thread only
  uint64_t next_client_id_ = 1;                   // I/O thread only
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::deque<Job> jobs_;   // guarded by mu_
  std::deque<Done> done_;  // guarded by mu_
  std::thread io_thread_;
  std::vector<std::thread> workers_;
};

/// How one chunk received on a connection extends the request being read (`have` bytes so
/// far): a request is one line, so its bytes end before the chunk's first newline (`complete`:
/// that newline came; the rest of the chunk is ignored, one request per connection), and
/// `too_large` when they would pass `max_request_bytes`. Pure: ControlServer's I/O thread runs
/// it on every recv(); the fuzz target tools/fuzz/control_socket_fuzz.cpp runs it alone.
/// Thread: any.
struct RequestChunk {
  std::size_t take = 0;  // bytes of the chunk that belong to the request
  bool complete = false;
  bool too_large = false;
};
RequestChunk frameRequestChunk(std::size_t have, std::string_view chunk,
                               std::size_t max_request_bytes);

/// The answer line (JSON and "\n") to one request as the control socket gives it: refused with
/// {"ok": false, "error": "...", "code": "invalid_request"} when it nests deeper than
/// `max_depth`, is not JSON or not an object; else `handler`'s answer, or {"ok": false, "code":
/// "internal"} when the handler throws (logged). Invalid UTF-8 in an answer is replaced, never
/// thrown. Thread: a worker (as ControlServer::Handler). Blocks as long as `handler`.
std::string answerControlRequest(const std::string& request, std::size_t max_depth,
                                 const ControlServer::Handler& handler);

}  // namespace omniedge
