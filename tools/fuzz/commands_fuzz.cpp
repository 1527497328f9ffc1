// libFuzzer target: R/cmd payloads (agent/commands.h CommandRunner::handle) with the real command
// journal (agent/store/inbox.h, SQLite in a tmpfs folder) and a target that counts what it is
// asked to do. Checks: every payload gets exactly one answer, a JSON object with the message's
// id (or "" when it has none) and "ok"; a refusal carries an error; the same payload again is
// answered with the same text and runs nothing (at most once); the key of a `forget` is never
// echoed.  Run: tools/fuzz/run commands
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "agent/commands.h"
#include "agent/store/inbox.h"
#include "tools/fuzz/check.h"

namespace {

using nlohmann::json;

struct CountingTarget : omniedge::CommandTarget {
  int calls = 0;
  json ping() override { return ++calls, json{{"version", "fuzz"}}; }
  json flush() override { return ++calls, json{{"pending", 0}}; }
  omniedge::Result<json> resyncProfiles() override { return ++calls, json::object(); }
  omniedge::Result<json> setLogLevel(const std::string& level, int64_t s) override {
    ++calls;
    if (s % 2 == 0) return omniedge::makeError("config", "even durations fail here");
    return json{{"level", level}, {"duration", s}};
  }
  json diagnostics(std::size_t) override { return ++calls, json{{"status", "ok"}}; }
  omniedge::Result<int64_t> retryQuarantine() override { return ++calls, int64_t{3}; }
  omniedge::Result<json> forget(const std::string&) override {
    return ++calls, json{{"profiles", 1}};
  }
};

struct State {
  std::filesystem::path dir;
  std::unique_ptr<omniedge::store::InboxStore> journal;
  CountingTarget target;
  std::unique_ptr<omniedge::CommandRunner> runner;
  int64_t now = 1764000000000;
};
State* state = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  state = new State;
  const char* shm = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
  state->dir = std::filesystem::path(shm) / ("omniedge-fuzz-cmd-" + std::to_string(getpid()));
  std::filesystem::remove_all(state->dir);
  std::filesystem::create_directories(state->dir);
  omniedge::store::InboxOptions options;
  options.dir = state->dir;
  auto journal = omniedge::store::InboxStore::open(options);
  FUZZ_CHECK(journal.has_value());
  state->journal = std::move(*journal);
  state->runner = std::make_unique<omniedge::CommandRunner>(*state->journal, state->target,
                                                            [] { return state->now; });
  std::atexit([] { std::filesystem::remove_all(state->dir); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view payload(reinterpret_cast<const char*>(data), size);
  state->now += 1000;
  const std::string first = state->runner->handle(payload);
  const json a = json::parse(first, nullptr, false);
  FUZZ_CHECK(a.is_object() && a.contains("id") && a["id"].is_string());
  FUZZ_CHECK(a.contains("ok") && a["ok"].is_boolean());
  if (!a["ok"].get<bool>()) {
    FUZZ_CHECK(a.contains("error") && a["error"].is_string() &&
               !a["error"].get<std::string>().empty());
  }
  const json msg = json::parse(payload, nullptr, false);
  const bool has_id = msg.is_object() && msg.contains("id") && msg["id"].is_string() &&
                      !msg["id"].get<std::string>().empty() &&
                      msg["id"].get<std::string>().size() <= 128;
  FUZZ_CHECK(a["id"] == (has_id ? msg["id"].get<std::string>() : std::string()));
  if (has_id && msg.contains("name") && msg["name"] == "forget" && msg.contains("args") &&
      msg["args"].is_object() && msg["args"].contains("key") && msg["args"]["key"].is_string()) {
    const std::string key = msg["args"]["key"].get<std::string>();
    if (key.size() >= 6 && msg["id"].get<std::string>().find(key) == std::string::npos) {
      FUZZ_CHECK(first.find(key) == std::string::npos);
    }
  }
  // At most once: the same message again is answered from the journal and runs nothing.
  const int calls = state->target.calls;
  const std::string again = state->runner->handle(payload);
  FUZZ_CHECK(state->target.calls == calls);
  if (has_id) FUZZ_CHECK(json::parse(again, nullptr, false)["id"] == a["id"]);
  if (has_id && a["ok"].get<bool>()) FUZZ_CHECK(again == first);
  return 0;
}
