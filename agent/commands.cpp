#include "agent/commands.h"

#include <spdlog/spdlog.h>

#include <array>
#include <initializer_list>

namespace omniedge {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxIdBytes = 128;
constexpr int64_t kDefaultLevelSeconds = 900;
constexpr int64_t kMaxLevelSeconds = 86400;
constexpr std::array<std::string_view, 7> kLevels = {"trace", "debug",    "info", "warn",
                                                     "error", "critical", "off"};
constexpr char kKnown[] =
    "diagnostics, flush, forget, ping, resync-profiles, retry-quarantine, set-log-level";

std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

Error bad(const std::string& message, const std::string& field = {}) {
  return makeError("invalid", message, field);
}

// Every argument given must be one of `allowed`.
Result<void> onlyArgs(const std::string& name, const json& args,
                      std::initializer_list<std::string_view> allowed) {
  for (const auto& [key, value] : args.items()) {
    bool known = false;
    for (const auto a : allowed) {
      known = known || a == key;
    }
    if (!known) {
      if (allowed.size() == 0) {
        return bad(name + " takes no arguments, got args." + key, "args." + key);
      }
      std::string names;
      for (const auto a : allowed) {
        names += (names.empty() ? "" : ", ") + std::string(a);
      }
      return bad("args." + key + " is not an argument of " + name + " (" + names + ")",
                 "args." + key);
    }
  }
  return {};
}

}  // namespace

CommandRunner::CommandRunner(store::InboxStore& journal, CommandTarget& target,
                             std::function<int64_t()> now_ms)
    : journal_(journal), target_(target), now_ms_(std::move(now_ms)) {}

CommandStats CommandRunner::stats() const {
  return {executed_.load(), answered_again_.load(), refused_.load()};
}

std::string CommandRunner::answer(const std::string& id, const Result<json>& result) {
  json j = {{"id", id}, {"ok", result.has_value()}};
  if (result) {
    j["result"] = *result;
  } else {
    j["error"] = result.error().message;
  }
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string CommandRunner::handle(std::string_view payload) {
  const json msg = json::parse(payload, nullptr, false);
  const auto refuse = [&](const std::string& id, const Error& e) {
    ++refused_;
    spdlog::warn("command {}: refused: {}", id.empty() ? "(no id)" : id, e.message);
    return answer(id, e);
  };
  if (msg.is_discarded() || !msg.is_object()) {
    return refuse("", bad("not a JSON object: expected {\"id\": \"...\", \"name\": \"...\", "
                          "\"args\": {...}}"));
  }
  if (!msg.contains("id") || !msg["id"].is_string() ||
      msg["id"].get_ref<const std::string&>().empty() ||
      msg["id"].get_ref<const std::string&>().size() > kMaxIdBytes) {
    return refuse("", bad("id is required: a string of 1 to " + std::to_string(kMaxIdBytes) +
                              " bytes, got " + (msg.contains("id") ? shown(msg["id"]) : "none"),
                          "id"));
  }
  const std::string id = msg["id"].get<std::string>();
  if (!msg.contains("name") || !msg["name"].is_string()) {
    return refuse(id, bad("name is required (one of " + std::string(kKnown) + ")", "name"));
  }
  const std::string name = msg["name"].get<std::string>();
  json args = msg.contains("args") ? msg["args"] : json::object();
  if (args.is_null()) {
    args = json::object();
  }
  if (!args.is_object()) {
    return refuse(id, bad("args must be an object, got " + shown(args), "args"));
  }

  // At most once: an id seen before is answered from the journal.
  auto seen = journal_.findCommand(id);
  if (!seen) {
    return answer(id, makeError("io", "not run: the command journal cannot be read (" +
                                          seen.error().message + ")"));
  }
  if (*seen) {
    if ((*seen)->done) {
      ++answered_again_;
      spdlog::info("command {} ({}): seen before, its answer sent again", id, (*seen)->name);
      return (*seen)->result;
    }
    auto text = answer(id, makeError("interrupted",
                                     "not run again: the agent stopped while it ran this "
                                     "command (it may have taken effect)"));
    (void)journal_.commandFinished(id, text);
    return text;
  }

  // The command and its arguments, checked before anything runs.
  std::function<Result<json>()> run;
  if (name == "ping" || name == "flush" || name == "resync-profiles" || name == "diagnostics" ||
      name == "retry-quarantine") {
    if (auto r = onlyArgs(name, args, {}); !r) {
      return refuse(id, r.error());
    }
    if (name == "ping") {
      run = [this] { return Result<json>(target_.ping()); };
    } else if (name == "flush") {
      run = [this] { return Result<json>(target_.flush()); };
    } else if (name == "resync-profiles") {
      run = [this] { return target_.resyncProfiles(); };
    } else if (name == "diagnostics") {
      run = [this] { return Result<json>(target_.diagnostics(kMaxDiagnosticsBytes)); };
    } else {
      run = [this]() -> Result<json> {
        auto moved = target_.retryQuarantine();
        if (!moved) {
          return moved.error();
        }
        return json{{"moved", *moved}};
      };
    }
  } else if (name == "set-log-level") {
    if (auto r = onlyArgs(name, args, {"level", "duration"}); !r) {
      return refuse(id, r.error());
    }
    std::string levels;
    for (const auto l : kLevels) {
      levels += (levels.empty() ? "" : ", ") + std::string(l);
    }
    if (!args.contains("level") || !args["level"].is_string()) {
      return refuse(id, bad("args.level is required (" + levels + ")", "args.level"));
    }
    const std::string level = args["level"].get<std::string>();
    bool known = false;
    for (const auto l : kLevels) {
      known = known || l == level;
    }
    if (!known) {
      return refuse(id, bad("args.level must be one of " + levels + ", got " + shown(args["level"]),
                            "args.level"));
    }
    int64_t duration = kDefaultLevelSeconds;
    if (args.contains("duration")) {
      const auto& d = args["duration"];
      if (!d.is_number_integer() || d.get<int64_t>() < 1 || d.get<int64_t>() > kMaxLevelSeconds) {
        return refuse(id, bad("args.duration must be a whole number of seconds from 1 to " +
                                  std::to_string(kMaxLevelSeconds) + ", got " + shown(d),
                              "args.duration"));
      }
      duration = d.get<int64_t>();
    }
    run = [this, level, duration] { return target_.setLogLevel(level, duration); };
  } else if (name == "forget") {
    if (auto r = onlyArgs(name, args, {"key"}); !r) {
      return refuse(id, r.error());
    }
    // The key is personal data: it is never echoed (neither here nor in the answer).
    if (!args.contains("key") || !args["key"].is_string() ||
        args["key"].get<std::string>().empty() || args["key"].get<std::string>().size() > 512) {
      return refuse(id, bad("args.key is required (a customer key such as loyalty:ID, "
                            "app:ID, email:ADDRESS, phone:NUMBER, email_sha256:HEX, a beacon "
                            "id or profile:ID; at most 512 characters)",
                            "args.key"));
    }
    run = [this, key = args["key"].get<std::string>()] { return target_.forget(key); };
  } else {
    return refuse(id, bad("unknown command '" + name + "' (known: " + kKnown + ")", "name"));
  }

  if (auto started = journal_.commandStarted(id, name, now_ms_()); !started) {
    return answer(id, makeError("io", "not run: the command cannot be recorded first (" +
                                          started.error().message + ")"));
  }
  auto result = run();
  std::string text = answer(id, result);
  if (auto finished = journal_.commandFinished(id, text); !finished) {
    spdlog::warn("command {} ({}): answer not recorded: {}", id, name, finished.error().message);
  }
  ++executed_;
  spdlog::info("command {} ({}): {}", id, name,
               result ? std::string("done") : "failed: " + result.error().message);
  return text;
}

}  // namespace omniedge
