// SourceRunner: what `omniedge status` says about a driver, from its rounds and its health.
#include "agent/source_runner.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
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
      return makeError("connect", "the broker went away");
    }
    return {};
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
};

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

}  // namespace omniedge
