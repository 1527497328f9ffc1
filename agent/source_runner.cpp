#include "agent/source_runner.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <string>

#include "agent/api/thread_name.h"

namespace omniedge {

SourceRunner::SourceRunner(std::unique_ptr<Source> source, EventWriter& out,
                           std::chrono::milliseconds reason_log_every)
    : source_(std::move(source)), out_(out), reason_log_every_(reason_log_every) {}

SourceRunner::~SourceRunner() { stop(); }

void SourceRunner::start() {
  thread_ = std::jthread([this](std::stop_token stop) {
    nameThisThread("oe-" + std::string(source_->name()));
    loop(stop);
  });
}

void SourceRunner::stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    thread_.join();
  }
}

void SourceRunner::loop(std::stop_token stop) {
  std::mutex wait_mu;
  std::condition_variable_any wait_cv;
  std::string logged;  // the failure's reason as last logged
  auto logged_at = std::chrono::steady_clock::time_point{};
  bool changed = false;  // this failure's reason changed and that was logged
  while (!stop.stop_requested()) {
    auto r = source_->poll(out_, stop);
    if (r) {
      // A round that worked ends a failure only once the source says it is up again: the
      // beacon driver's rounds work between its reconnect attempts too.
      if (failing_.load() && source_->health().down.empty() && failing_.exchange(false)) {
        spdlog::info("{}: working again", source_->name());
      }
      continue;
    }
    ++errors_;
    {
      std::lock_guard lock(mu_);
      last_error_ = r.error().message;
    }
    // Log a failure once when it starts, not at every retry; status keeps the latest. A reason
    // that changes while it lasts (the connection lost, then the broker unreachable) is logged
    // too: the first change at once, later ones at most once per reason_log_every_, so that
    // reasons alternating at every retry do not fill the journal.
    const auto now = std::chrono::steady_clock::now();
    if (!failing_.exchange(true)) {
      spdlog::warn("{}: {}", source_->name(), r.error().message);
      logged = r.error().message;
      logged_at = now;
      changed = false;
    } else if (r.error().message != logged && (!changed || now - logged_at >= reason_log_every_)) {
      spdlog::warn("{}: still failing, now: {}", source_->name(), r.error().message);
      logged = r.error().message;
      logged_at = now;
      changed = true;
    }
    std::unique_lock lock(wait_mu);
    wait_cv.wait_for(lock, stop, std::chrono::seconds(1), [] { return false; });
  }
}

nlohmann::json SourceRunner::state() const {
  const SourceHealth health = source_->health();
  std::lock_guard lock(mu_);
  nlohmann::json counters = nlohmann::json::object();
  for (const auto& [name, value] : health.counters) {
    counters[name] = value;
  }
  const bool failing = failing_.load() || !health.down.empty();
  // One error count for the technician: rounds that failed plus inputs the source refused.
  return {{"name", std::string(source_->name())},
          {"state", !thread_.joinable() ? "stopped"
                    : failing           ? "failing"
                                        : "running"},
          {"errors", errors_.load() + health.input_errors},
          {"poll_errors", errors_.load()},
          {"input_errors", health.input_errors},
          // While failing, why; otherwise the latest refused input, else the last failure.
          {"last_error", !health.down.empty()                         ? health.down
                         : failing || health.last_input_error.empty() ? last_error_
                                                                      : health.last_input_error},
          {"counters", std::move(counters)}};
}

}  // namespace omniedge
