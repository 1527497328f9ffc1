// Runs one Source on its own thread: polls it until stopped, and keeps its state for status.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "agent/api/event_writer.h"
#include "agent/api/source.h"

namespace omniedge {

class SourceRunner {
 public:
  /// `reason_log_every`: while a failure lasts, a changed reason is logged at once the first
  /// time, then at most this often (status always has the latest).
  SourceRunner(std::unique_ptr<Source> source, EventWriter& out,
               std::chrono::milliseconds reason_log_every = std::chrono::seconds(60));
  ~SourceRunner();
  SourceRunner(const SourceRunner&) = delete;
  SourceRunner& operator=(const SourceRunner&) = delete;

  /// Starts the thread. Thread: the owner.
  void start();
  /// Asks the source to stop and joins (a poll returns within ~1 s). Thread: the owner.
  void stop();
  /// New settings for the source, as `fresh`: true when it takes them in place (see
  /// Source::adopt), false when the caller must replace the runner. Thread: any.
  bool adopt(Source& fresh) { return source_->adopt(fresh); }
  /// {"name", "state": "running" | "failing" | "stopped", "errors" (failed rounds + refused
  /// inputs), "poll_errors", "input_errors", "last_error", "counters" (the source's own)}.
  /// Thread: any.
  nlohmann::json state() const;

 private:
  void loop(std::stop_token stop);

  std::unique_ptr<Source> source_;
  EventWriter& out_;
  std::chrono::milliseconds reason_log_every_;
  std::atomic<uint64_t> errors_{0};
  std::atomic<bool> failing_{false};
  mutable std::mutex mu_;
  std::string last_error_;  // guarded by mu_
  std::jthread thread_;
};

}  // namespace omniedge
