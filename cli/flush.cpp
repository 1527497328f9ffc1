// `omniedge flush` and `omniedge send-test-event`: the two commands that need the daemon.
#include <sqlite3.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "cli/buffer_file.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "cli/json_view.h"

namespace omniedge::cli {
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

// The uplink in a few words, for "still pending" messages.
std::string uplinkWords(const json& status) {
  const json& m = member(member(status, "uplink"), "mqtt");
  std::string text = "uplink " + str(m, "state", "unknown");
  if (str(m, "state") != "connected" && !str(m, "last_error").empty()) {
    text += ": " + str(m, "last_error");
  }
  return text;
}

int runFlush(const CommandSpec& spec, const Invocation& inv) {
  int64_t wait_s = -1;
  if (inv.has("wait")) {
    wait_s = inv.vm["wait"].as<int64_t>();
    if (wait_s < 0) {
      return usageError(spec, "--wait SECONDS must be 0 or more, got " + std::to_string(wait_s));
    }
  }
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  Daemon daemon(*loaded);
  auto answer = daemon.request({{"cmd", "flush"}});
  if (!answer) {
    std::cerr << daemon.notRunning(spec.name);
    return kUnreachable;
  }
  if (!flag(*answer, "ok")) {
    std::cerr << "omniedge flush: the daemon refused: " << str(*answer, "error") << "\n";
    return kFailure;
  }
  if (wait_s < 0) {
    std::cout << "flush requested\n";
    return kOk;
  }
  const auto deadline = SteadyClock::now() + std::chrono::seconds(wait_s);
  json last;
  for (;;) {
    auto s = daemon.request({{"cmd", "status"}});
    if (!s || !flag(*s, "ok")) {
      std::cerr << "omniedge flush: the daemon stopped answering while waiting\n"
                << daemon.whereLooked("  ");
      return kUnreachable;
    }
    last = member(*s, "status");
    if (num(member(last, "queue"), "pending", -1) == 0) {
      std::cout << "queue empty: everything delivered\n";
      return kOk;
    }
    if (SteadyClock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::cerr << "omniedge flush: " << thousands(num(member(last, "queue"), "pending"))
            << " events still pending after " << wait_s << " s (" << uplinkWords(last)
            << "; see `omniedge status`)\n";
  return kFailure;
}

int runSendTestEvent(const CommandSpec& spec, const Invocation& inv) {
  const int64_t timeout_s = inv.vm["timeout"].as<int64_t>();
  if (timeout_s < 0) {
    return usageError(spec,
                      "--timeout SECONDS must be 0 or more, got " + std::to_string(timeout_s));
  }
  const std::string type = inv.vm["type"].as<std::string>();
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  Daemon daemon(*loaded);
  const auto start = SteadyClock::now();
  auto answer = daemon.request({{"cmd", "test_event"}, {"type", type}});
  if (!answer) {
    std::cerr << daemon.notRunning(spec.name);
    return kUnreachable;
  }
  if (!flag(*answer, "ok")) {
    // The daemon's ingest checks the type: a bad one is the user's, as a usage error.
    if (str(*answer, "code") == "invalid") {
      return usageError(spec, "--type '" + type + "': " + str(*answer, "error"));
    }
    std::cerr << "omniedge send-test-event: the daemon refused it: " << str(*answer, "error")
              << "\n";
    return kFailure;
  }
  const json& ids = member(*answer, "ids");
  const std::string id = ids.is_array() && !ids.empty() && ids[0].is_string()
                             ? ids[0].get<std::string>()
                             : std::string();
  std::cout << "accepted " << id << " (durable in the buffer)\n";
  const auto deadline = start + std::chrono::seconds(timeout_s);
  const std::filesystem::path dir = loaded->cfg.str("data.dir");
  for (;;) {
    // Pending while its row is in the events table; the daemon deletes it on the PUBACK. Its id
    // is one the daemon gave it as a producer would (`made` = 0): a lookup in events_given_id.
    bool pending = true;
    if (auto file = BufferFile::open(dir)) {
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(file->db(), "SELECT 1 FROM events WHERE id = ? AND made = 0", -1, &st,
                             nullptr) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id.c_str(), -1, SQLITE_TRANSIENT);
        pending = sqlite3_step(st) == SQLITE_ROW;
      }
      sqlite3_finalize(st);
    }
    const auto now = SteadyClock::now();
    if (!pending) {
      std::cout << "delivered: the centre's broker acknowledged it "
                << std::chrono::duration_cast<std::chrono::milliseconds>(now - start).count()
                << " ms after it was sent\n";
      return kOk;
    }
    if (now >= deadline) {
      std::string uplink;
      if (auto s = daemon.request({{"cmd", "status"}}); s && flag(*s, "ok")) {
        uplink = "; " + uplinkWords(member(*s, "status"));
      }
      std::cerr << "omniedge send-test-event: still pending after " << timeout_s << " s" << uplink
                << " (see `omniedge status`, `omniedge doctor`)\n";
      return kFailure;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

Command flushCommand() {
  CommandSpec spec;
  spec.name = "flush";
  spec.synopsis = "[--wait SECONDS]";
  spec.summary = "ask the daemon to sync now (--wait: until the queue is empty)";
  spec.details =
      "Needs the daemon (exit 3 when it does not answer). With --wait, exit 0 once nothing\n"
      "is pending, 1 if events are still pending when the time is up.";
  spec.options = [](po::options_description& o) {
    o.add_options()("wait", po::value<int64_t>()->value_name("SECONDS"),
                    "wait up to SECONDS (0 or more) for an empty queue");
  };
  return {spec, runFlush};
}

Command sendTestEventCommand() {
  CommandSpec spec;
  spec.name = "send-test-event";
  spec.synopsis = "[--type T] [--timeout SECONDS]";
  spec.summary = "send a test event through the whole pipeline, report its delivery";
  spec.details =
      "Needs the daemon (exit 3 when it does not answer). The event goes through ingest and\n"
      "the buffer like any other; exit 0 once the centre's broker acknowledged it, 1 if it\n"
      "is still pending after --timeout.";
  spec.options = [](po::options_description& o) {
    o.add_options()("type", po::value<std::string>()->default_value("agent.test")->value_name("T"),
                    "event type: lower-case dotted words, e.g. agent.test")(
        "timeout", po::value<int64_t>()->default_value(30)->value_name("SECONDS"),
        "how long to wait for the delivery");
  };
  return {spec, runSendTestEvent};
}

}  // namespace omniedge::cli
