#include "agent/commands.h"

#include <spdlog/spdlog.h>

#include <catch2/catch.hpp>

#include "agent/log_ring.h"
#include "tests/support/temp_dir.h"

namespace omniedge {
namespace {

using Catch::Matchers::Contains;
using nlohmann::json;

class FakeTarget final : public CommandTarget {
 public:
  int pings = 0;
  std::string level;
  int64_t duration = 0;
  json ping() override { return {{"pong", ++pings}}; }
  json flush() override { return {{"pending", 0}}; }
  Result<json> resyncProfiles() override { return makeError("io", "disk gone"); }
  Result<json> setLogLevel(const std::string& l, int64_t d) override {
    level = l;
    duration = d;
    return json{{"level", l}};
  }
  json diagnostics(std::size_t max_bytes) override { return {{"max", max_bytes}}; }
  Result<int64_t> retryQuarantine() override { return int64_t{3}; }
  Result<json> forget(const std::string& key) override {
    forgotten = key;
    return json{{"subject", "sha256:00"}, {"complete", true}};
  }
  std::string forgotten;
};

struct Fixture {
  testing::TempDir dir;
  std::unique_ptr<store::InboxStore> journal;
  FakeTarget target;
  std::unique_ptr<CommandRunner> runner;
  Fixture() {
    store::InboxOptions o;
    o.dir = dir.path();
    auto opened = store::InboxStore::open(o);
    REQUIRE(opened);
    journal = std::move(*opened);
    runner = std::make_unique<CommandRunner>(*journal, target, [] { return int64_t{1000}; });
  }
  json handle(const std::string& payload) { return json::parse(runner->handle(payload)); }
};

TEST_CASE("a command id runs once, a redelivery gets the stored answer", "[unit][commands]") {
  Fixture f;
  const auto first = f.handle(R"({"id": "c1", "name": "ping", "args": {}})");
  CHECK(first == json{{"id", "c1"}, {"ok", true}, {"result", {{"pong", 1}}}});
  const auto again = f.handle(R"({"id": "c1", "name": "ping"})");
  CHECK(again == first);
  CHECK(f.target.pings == 1);
  CHECK(f.runner->stats().executed == 1);
  CHECK(f.runner->stats().answered_again == 1);
  // Another runner on the same journal (the agent restarted): still answered, not run.
  CommandRunner after(*f.journal, f.target, [] { return int64_t{2000}; });
  CHECK(json::parse(after.handle(R"({"id": "c1", "name": "ping"})")) == first);
  CHECK(f.target.pings == 1);
}

TEST_CASE("a command the agent died running is not run again", "[unit][commands]") {
  Fixture f;
  REQUIRE(f.journal->commandStarted("c2", "ping", 500));
  const auto r = f.handle(R"({"id": "c2", "name": "ping"})");
  CHECK(r["ok"] == false);
  CHECK_THAT(r["error"].get<std::string>(), Contains("not run again"));
  CHECK(f.target.pings == 0);
  CHECK(f.handle(R"({"id": "c2", "name": "ping"})") == r);
}

TEST_CASE("malformed commands, unknown names and bad arguments are answered ok:false with why",
          "[unit][commands]") {
  Fixture f;
  const auto error = [&](const std::string& payload) {
    const auto r = f.handle(payload);
    CHECK(r["ok"] == false);
    return std::pair(r["id"].get<std::string>(), r["error"].get<std::string>());
  };
  CHECK_THAT(error("not json").second, Contains("not a JSON object"));
  CHECK_THAT(error(R"({"name": "ping"})").second, Contains("id is required"));
  CHECK_THAT(error(R"({"id": 5, "name": "ping"})").second, Contains("got 5"));
  CHECK(error(R"({"id": ")" + std::string(200, 'x') + R"(", "name": "ping"})").first.empty());
  CHECK(error(R"({"id": "n1"})") ==
        std::pair<std::string, std::string>(
            "n1",
            "name is required (one of diagnostics, flush, forget, ping, resync-profiles, "
            "retry-quarantine, set-log-level)"));
  CHECK_THAT(error(R"({"id": "n2", "name": "reboot"})").second,
             Contains("unknown command 'reboot'"));
  CHECK_THAT(error(R"({"id": "n3", "name": "ping", "args": [1]})").second,
             Contains("args must be an object"));
  CHECK_THAT(error(R"({"id": "n4", "name": "flush", "args": {"wait": 5}})").second,
             Contains("flush takes no arguments, got args.wait"));
  CHECK_THAT(error(R"({"id": "n5", "name": "set-log-level", "args": {}})").second,
             Contains("args.level is required"));
  CHECK_THAT(error(R"({"id": "n6", "name": "set-log-level", "args": {"level": "verbose"}})").second,
             Contains("args.level must be one of") && Contains("\"verbose\""));
  CHECK_THAT(
      error(R"({"id": "n7", "name": "set-log-level", "args": {"level": "debug", "duration": -1}})")
          .second,
      Contains("args.duration must be a whole number of seconds from 1 to 86400, got -1"));
  CHECK_THAT(error(R"({"id": "n8", "name": "set-log-level", "args": {"level": "debug", "for": 9}})")
                 .second,
             Contains("args.for is not an argument of set-log-level (level, duration)"));
  CHECK(f.target.level.empty());
  CHECK(f.runner->stats().refused == 12);
  CHECK(f.runner->stats().executed == 0);
  // Refused commands are not journaled: the same id with good arguments runs.
  CHECK(f.handle(R"({"id": "n5", "name": "set-log-level", "args": {"level": "debug"}})")["ok"] ==
        true);
  CHECK(f.target.level == "debug");
  CHECK(f.target.duration == 900);
}

TEST_CASE("each command reaches its target, a failure is answered with its reason",
          "[unit][commands]") {
  Fixture f;
  CHECK(f.handle(R"({"id": "a", "name": "retry-quarantine"})")["result"]["moved"] == 3);
  CHECK(f.handle(R"({"id": "b", "name": "diagnostics"})")["result"]["max"] ==
        CommandRunner::kMaxDiagnosticsBytes);
  const auto failed = f.handle(R"({"id": "c", "name": "resync-profiles"})");
  CHECK(failed["ok"] == false);
  CHECK(failed["error"] == "disk gone");
  CHECK(
      f.handle(R"({"id": "d", "name": "set-log-level", "args": {"level": "warn", "duration": 60}})")
          ["result"]["level"] == "warn");
  CHECK(f.target.duration == 60);
}

TEST_CASE("forget takes one customer key and never echoes it in a refusal",
          "[unit][commands][erasure]") {
  Fixture f;
  const auto ok = f.handle(R"({"id": "f1", "name": "forget", "args": {"key": "loyalty:L1"}})");
  CHECK(ok["ok"] == true);
  CHECK(f.target.forgotten == "loyalty:L1");
  CHECK(ok.dump().find("L1\"") == std::string::npos);
  const auto missing = f.handle(R"({"id": "f2", "name": "forget", "args": {}})");
  CHECK(missing["ok"] == false);
  CHECK_THAT(missing["error"].get<std::string>(), Contains("args.key is required"));
  const auto wrong = f.handle(R"({"id": "f3", "name": "forget", "args": {"key": 7}})");
  CHECK(wrong["ok"] == false);
  CHECK(wrong["error"].get<std::string>().find('7') == std::string::npos);
  const auto extra = f.handle(
      R"({"id": "f4", "name": "forget", "args": {"key": "app:A", "email": "jane@example.com"}})");
  CHECK(extra["ok"] == false);
  CHECK_THAT(extra["error"].get<std::string>(),
             Contains("args.email is not an argument of forget (key)"));
}

TEST_CASE("the recent-log ring keeps the newest warnings and errors, bounded", "[unit][commands]") {
  auto ring = std::make_shared<RecentLogSink>(3, 1000, 20);
  spdlog::logger logger("ring-test", ring);
  logger.set_level(spdlog::level::trace);
  logger.info("not kept");
  logger.warn("w1");
  logger.error("e1");
  logger.warn("w2");
  logger.critical("a message longer than twenty bytes");
  const auto lines = ring->lines();
  REQUIRE(lines.size() == 3);
  CHECK(lines[0].message == "e1");
  CHECK(lines[0].level == "error");
  CHECK(lines[1].message == "w2");
  CHECK(lines[1].level == "warning");
  CHECK(lines[2].message == "a message longer tha...");
}

}  // namespace
}  // namespace omniedge
