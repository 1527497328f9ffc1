#include "cli/console/console.h"

#include <algorithm>
#include <exception>
#include <utility>

#include "cli/console/console_assets.h"

namespace omniedge::console {
namespace {

using nlohmann::json;

constexpr std::string_view kPrefix = "/console";

// Nothing from elsewhere, no inline script or style (the page's own files only), no framing:
// whatever text an event carries can never run in the technician's browser.
constexpr const char* kPolicy =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

void secure(kiosk::HttpResponse& res) {
  res.set_header("Content-Security-Policy", kPolicy);
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Cache-Control", "no-store");
}

void answer(kiosk::HttpResponse& res, int status, std::string body, std::string_view type) {
  res.status = status;
  res.set_content(std::move(body), type);
  secure(res);
}

void refuse(kiosk::HttpResponse& res, int status, const std::string& code,
            const std::string& message) {
  answer(res, status, json{{"error", {{"code", code}, {"message", message}}}}.dump(),
         "application/json");
}

std::string dumpJson(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// One server-sent event; JSON dumped without indent holds no line break.
std::string frame(const store::RecentEvent& e) {
  return "event: recent\nid: " + std::to_string(e.seq) + "\ndata: " + eventSummary(e) + "\n\n";
}

}  // namespace

std::string eventSummary(const store::RecentEvent& event) {
  json out = {{"seq", event.seq}, {"type", event.type}};
  const json body = json::parse(event.body, nullptr, false);
  if (body.is_object()) {
    for (const char* key : {"id", "source", "occurred_at", "received_at"}) {
      if (auto it = body.find(key); it != body.end() && it->is_string()) {
        out[key] = *it;
      }
    }
    auto customer = body.find("customer");
    out["customer"] = customer != body.end() && customer->is_object() && !customer->empty();
  }
  return dumpJson(out);
}

Console::Console(ConsoleSources sources, ConsoleOptions options)
    : sources_(std::move(sources)), options_(options) {
  pump_ = std::jthread([this](const std::stop_token& stop) { pump(stop); });
}

Console::~Console() { stop(); }

kiosk::GetHandler Console::handler() {
  return [this](const kiosk::HttpRequest& req, kiosk::HttpResponse& res) { handle(req, res); };
}

void Console::handle(const kiosk::HttpRequest& req, kiosk::HttpResponse& res) {
  const std::string_view path = std::string_view(req.path).substr(kPrefix.size());
  try {
    if (path.empty() || path == "/") {
      answer(res, 200, std::string(kConsoleHtml), "text/html; charset=utf-8");
    } else if (path == "/app.js") {
      answer(res, 200, std::string(kConsoleJs), "text/javascript; charset=utf-8");
    } else if (path == "/app.css") {
      answer(res, 200, std::string(kConsoleCss), "text/css; charset=utf-8");
    } else if (path == "/status.json") {
      answer(res, 200, dumpJson(sources_.status()), "application/json");
    } else if (path == "/history.json") {
      answer(res, 200, dumpJson(sources_.history()), "application/json");
    } else if (path == "/events") {
      openEvents(res);
    } else {
      refuse(res, 404, "not_found", "no such page: " + req.path);
    }
  } catch (const std::exception& e) {
    res.reset();
    refuse(res, 500, "internal", std::string("the console failed: ") + e.what());
  }
}

void Console::openEvents(kiosk::HttpResponse& res) {
  auto stream = std::make_shared<kiosk::HttpStream>(options_.stream_max_queued_bytes, ": ping\n\n",
                                                    options_.heartbeat);
  // The newest few at once, so that the page is not empty until the next event.
  const auto first = sources_.recent(0, options_.first_events);
  std::string body = "retry: 3000\n\n";
  int64_t after = 0;
  for (const auto& e : first) {
    body += frame(e);
    after = std::max(after, e.seq);
  }
  if (body.size() > options_.stream_max_queued_bytes) {
    body = "retry: 3000\n\n";  // events larger than a page's share: they follow one by one
  }
  {
    std::lock_guard lock(mu_);
    // The server lets a stream go when its client leaves; only this list may still hold it.
    std::erase_if(subscribers_, [](const Subscriber& s) {
      return s.stream->closed() || s.stream.use_count() == 1;
    });
    if (subscribers_.size() >= options_.max_streams) {
      res.set_header("Retry-After", "5");
      refuse(res, 503, "busy",
             "every console stream is in use (" + std::to_string(options_.max_streams) +
                 ", console.max_streams); close a console page or retry shortly");
      return;
    }
    subscribers_.push_back(Subscriber{stream, after});
  }
  answer(res, 200, std::move(body), "text/event-stream");
  res.stream = std::move(stream);
  wake_.notify_all();
}

std::size_t Console::openStreams() const {
  std::lock_guard lock(mu_);
  std::erase_if(subscribers_, [](const Subscriber& s) {
    return s.stream->closed() || s.stream.use_count() == 1;
  });
  return subscribers_.size();
}

void Console::pump(const std::stop_token& stop) {
  std::mutex idle;
  while (!stop.stop_requested()) {
    {
      std::unique_lock lock(idle);
      wake_.wait_for(lock, stop, options_.poll, [] { return false; });
    }
    if (stop.stop_requested()) {
      break;
    }
    int64_t from = INT64_MAX;
    {
      std::lock_guard lock(mu_);
      std::erase_if(subscribers_, [](const Subscriber& s) {
        return s.stream->closed() || s.stream.use_count() == 1;
      });
      for (const auto& s : subscribers_) {
        from = std::min(from, s.after);
      }
    }
    if (from == INT64_MAX) {
      continue;  // nobody is watching: the ring is not even read
    }
    std::vector<store::RecentEvent> fresh;
    try {
      fresh = sources_.recent(from, options_.max_events_per_poll);
    } catch (const std::exception&) {
      continue;  // the next round tries again
    }
    if (fresh.empty()) {
      continue;
    }
    std::vector<std::string> frames;
    frames.reserve(fresh.size());
    for (const auto& e : fresh) {
      frames.push_back(frame(e));
    }
    std::lock_guard lock(mu_);
    for (auto& s : subscribers_) {
      for (std::size_t i = 0; i < fresh.size(); ++i) {
        if (fresh[i].seq > s.after) {
          s.stream->write(frames[i]);  // a page that does not read loses its oldest frames
        }
      }
      // Events older than this round's window were passed over for every page alike.
      s.after = std::max(s.after, fresh.back().seq);
    }
  }
}

void Console::stop() {
  if (pump_.joinable()) {
    pump_.request_stop();
    wake_.notify_all();
    pump_.join();
  }
  std::lock_guard lock(mu_);
  subscribers_.clear();  // the server ends each stream once it holds the last reference
}

}  // namespace omniedge::console
