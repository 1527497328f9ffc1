// SourceRunner: what `omniedge status` says about a driver, from its rounds and its health.
#include "agent/source_runner.h"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "tests/support/recording_writer.h"

namespace omniedge {
namespace {

// A source whose next rounds fail or work, and which says it is down, as the test tells it.
class ScriptedSource final : public Source {
 public:
  std::string_view name() const override { return "scripted"; }
  Result<void> poll(EventWriter& /*out*/, std::stop_token /*stop*/) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ++polls;
    if (failures_left.load() > 0) {
      --failures_left;
      std::lock_guard lock(mu_);
      return makeError("connect", reason_);
    }
    return {};
  }
  void setReason(std::string why) {
    std::lock_guard lock(mu_);
    reason_ = std::move(why);
  }
  SourceHealth health() const override {
    std::lock_guard lock(mu_);
    SourceHealth h;
    h.down = down_;
    return h;
  }
  void setDown(std::string why) {
    std::lock_guard lock(mu_);
    down_ = std::move(why);
  }

  std::atomic<int> failures_left{0};
  std::atomic<int> polls{0};

 private:
  mutable std::mutex mu_;
  std::string down_;
  std::string reason_ = "the broker went away";
};

// The default logger writing into a string for as long as it lives.
class LogCapture {
 public:
  LogCapture()
      : previous_(spdlog::default_logger()),
        logger_(std::make_shared<spdlog::logger>(
            "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(out_))) {
    logger_->set_pattern("%v");
    spdlog::set_default_logger(logger_);
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::string text() {
    logger_->flush();
    return out_.str();
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
  std::shared_ptr<spdlog::logger> logger_;
};

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++n;
  }
  return n;
}

// Waits until the runner's state is `want` (a poll takes ~5 ms; a failed one waits 1 s).
bool waitState(const SourceRunner& runner, const std::string& want) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    if (runner.state().at("state") == want) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

TEST_CASE("a driver stays failing while it says it is down, though its rounds work",
          "[source_runner]") {
  testing::RecordingWriter writer;
  auto owned = std::make_unique<ScriptedSource>();
  ScriptedSource& source = *owned;
  SourceRunner runner(std::move(owned), writer);
  runner.start();
  REQUIRE(waitState(runner, "running"));

  // A connect fails (one failed round) and the source goes on retrying with backoff: its rounds
  // between attempts work, yet status must not say "running" until it is connected again.
  source.setDown("the gateways' broker is unreachable at mqtt://127.0.0.1:1");
  source.failures_left = 1;
  REQUIRE(waitState(runner, "failing"));
  const int polls = source.polls.load();
  while (source.polls.load() < polls + 20) {  // rounds that work, while down
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto state = runner.state();
  CHECK(state.at("state") == "failing");
  CHECK(state.at("last_error") == "the gateways' broker is unreachable at mqtt://127.0.0.1:1");
  CHECK(state.at("poll_errors") == 1);

  source.setDown("");
  REQUIRE(waitState(runner, "running"));
  state = runner.state();
  CHECK(state.at("poll_errors") == 1);
  CHECK(state.at("last_error") == "the broker went away");  // the last failure, kept

  SECTION("a source that never says it is down works again after its next good round") {
    source.failures_left = 1;
    REQUIRE(waitState(runner, "failing"));
    CHECK(runner.state().at("last_error") == "the broker went away");
    REQUIRE(waitState(runner, "running"));
    CHECK(runner.state().at("poll_errors") == 2);
  }
  runner.stop();
  CHECK(runner.state().at("state") == "stopped");
}

TEST_CASE("a failure is logged when it starts and when its reason changes, not at every retry",
          "[source_runner]") {
  LogCapture log;
  testing::RecordingWriter writer;
  auto owned = std::make_unique<ScriptedSource>();
  ScriptedSource& source = *owned;
  // Later changes of the reason at most every 2.5 s (a minute in the daemon).
  SourceRunner runner(std::move(owned), writer, std::chrono::milliseconds(2500));
  // What scripts/demo's beacon driver meets when the gateways' broker stops: the connection is
  // lost, then every attempt finds the broker unreachable.
  source.setReason("lost the connection to the gateways' broker at mqtt://gw:1883");
  source.failures_left = 1000;  // every round fails; the runner waits 1 s after each
  runner.start();
  REQUIRE(waitState(runner, "failing"));
  source.setReason("the gateways' broker is unreachable at mqtt://gw:1883");
  const int at = source.polls.load();
  const auto wait_polls = [&](int n) {
    while (source.polls.load() < n) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  };
  const std::string unreachable =
      "scripted: still failing, now: the gateways' broker is unreachable at mqtt://gw:1883";
  wait_polls(at + 2);  // the first round with the new reason is done (~1 s in, within 2.5 s)
  std::string text = log.text();
  CHECK(count(text, "scripted: lost the connection") == 1);
  CHECK(count(text, unreachable) == 1);  // the first change at once
  wait_polls(at + 4);                    // the new reason, retried: not logged again
  text = log.text();
  CHECK(count(text, unreachable) == 1);
  CHECK(runner.state().at("last_error") == "the gateways' broker is unreachable at mqtt://gw:1883");

  // Reasons that alternate at every retry (~1 s apart) are logged at most once per interval:
  // four changes in ~4 s add at most two lines.
  for (int i = 0; i < 4; ++i) {
    const int before = source.polls.load();
    source.setReason(i % 2 == 0 ? "reason A" : "reason B");
    wait_polls(before + 1);
  }
  text = log.text();
  CHECK(count(text, "still failing") >= 2);
  CHECK(count(text, "still failing") <= 3);

  // A new failure after the source worked again starts afresh: its first change at once again.
  source.failures_left = 0;
  REQUIRE(waitState(runner, "running"));
  source.setReason("lost the connection to the gateways' broker at mqtt://gw:1883");
  source.failures_left = 1000;
  REQUIRE(waitState(runner, "failing"));
  const std::size_t lines = count(log.text(), "still failing");
  source.setReason("no answer from the gateways' broker at mqtt://gw:1883");
  wait_polls(source.polls.load() + 2);
  CHECK(count(log.text(), "still failing, now: no answer") == 1);
  CHECK(count(log.text(), "still failing") == lines + 1);
  runner.stop();
}

}  // namespace omniedge
