// The technician's and store manager's web console: a read-only page served on the kiosk API's
// listener under /console (Agent::mountHttp, so the API's authentication and limits apply),
// working without internet: the page, its script and its style are compiled into the binary.
//
//   GET /console               the page (cli/console/console.html)
//   GET /console/app.js        its script, GET /console/app.css its style (a strict CSP: no
//                              inline script or style, nothing from elsewhere)
//   GET /console/status.json   exactly what `omniedge status --json` shows (Agent::status())
//   GET /console/history.json  the last hour's samples (Agent::history()) for the plots
//   GET /console/events        server-sent events: the recent events, as they are stored
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "agent/store/buffer.h"
#include "drivers/kiosk/http_api.h"
#include "drivers/kiosk/http_server.h"

namespace omniedge::console {

/// What the console shows, as functions (the agent's in the daemon, fakes in tests). Each is
/// called on the kiosk API's worker threads or the console's pump thread, concurrently.
struct ConsoleSources {
  std::function<nlohmann::json()> status;   // Agent::status()
  std::function<nlohmann::json()> history;  // Agent::history()
  /// Agent::recentEvents(): the newest events with seq > after (at most limit), oldest first.
  std::function<std::vector<store::RecentEvent>(int64_t after, std::size_t limit)> recent;
};

struct ConsoleOptions {
  std::size_t max_streams = 8;                      // console.max_streams: more get 503
  std::size_t stream_max_queued_bytes = 64 * 1024;  // per page; oldest frames dropped beyond
  std::chrono::milliseconds heartbeat{15000};       // a comment line when nothing happens
  std::chrono::milliseconds poll{500};              // how often the ring is looked at
  std::size_t first_events = 50;                    // sent when a page opens its stream
  std::size_t max_events_per_poll = 200;            // newer ones win when more arrived
};

/// What the console's live list shows of an event: its envelope's seq, id, type, source and
/// times, and whether it names a customer. Never the customer's identifiers nor the data: a
/// store manager's screen is no place for them (the centre has the events). One JSON object
/// on one line. Thread: any.
std::string eventSummary(const store::RecentEvent& event);

/// Serves the console's routes (see the top of this file) through handler(). Owns a pump
/// thread that hands new events from the ring to the open streams, bounded by
/// ConsoleOptions. Stop it (stop() or the destructor) after the HTTP server that calls
/// handler() has stopped serving, or keep it alive until that server is gone.
class Console {
 public:
  Console(ConsoleSources sources, ConsoleOptions options);
  /// Stops the pump (see stop()).
  ~Console();
  Console(const Console&) = delete;
  Console& operator=(const Console&) = delete;

  /// The handler to mount on "/console" (kiosk::HttpApi::mount). Valid while this object
  /// lives. Thread: the server's workers, concurrently; never blocks beyond building an
  /// answer (a status document, a few KiB of history).
  kiosk::GetHandler handler();

  /// Ends every open stream and joins the pump thread within a poll period. Idempotent.
  /// Thread: the owner's. Never fails.
  void stop();

  /// Pages following the live events now. Thread: any.
  std::size_t openStreams() const;

 private:
  struct Subscriber {
    std::shared_ptr<kiosk::HttpStream> stream;
    int64_t after = 0;  // the highest seq this page was sent (or skipped)
  };

  void handle(const kiosk::HttpRequest& req, kiosk::HttpResponse& res);
  void openEvents(kiosk::HttpResponse& res);
  void pump(const std::stop_token& stop);

  const ConsoleSources sources_;
  const ConsoleOptions options_;
  mutable std::mutex mu_;
  mutable std::vector<Subscriber> subscribers_;  // guarded by mu_; closed ones pruned lazily
  std::condition_variable_any wake_;
  std::jthread pump_;
};

}  // namespace omniedge::console
