// `omniedge status`: the daemon's own account when it answers, else what the buffer file tells
// (read-only) and where the CLI looked for the daemon.
#include "cli/status.h"

#include <fmt/format.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <iostream>
#include <sstream>

#include "agent/version.h"
#include "cli/buffer_file.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "cli/json_view.h"

namespace omniedge::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// 0 when the file does not exist, -1 when its size cannot be known (permission).
int64_t fileSize(const fs::path& p) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  if (ec) {
    return ec == std::errc::no_such_file_or_directory ? 0 : -1;
  }
  return static_cast<int64_t>(size);
}

// What the buffer alone can tell when the daemon does not answer.
json offlineStatus(const Loaded& loaded, const Daemon& daemon) {
  const config::Config& cfg = loaded.cfg;
  const fs::path dir = cfg.str("data.dir");
  json looked = json::array();
  std::istringstream lines(daemon.whereLooked(""));
  for (std::string line; std::getline(lines, line);) {
    looked.push_back(line);
  }
  const auto owner = store::bufferOwner(dir);
  json j = {{"daemon", "down"},
            {"looked_at", looked},
            {"version", kVersion},
            {"git_revision", kGitRevision},
            {"store_id", cfg.str("store.id")},
            {"tenant", cfg.str("store.tenant")},
            {"config_file", loaded.file}};
  if (daemon.deniedAccess()) {
    j["daemon"] = "no_access";  // it may well run: we may not talk to it
  } else if (owner == store::Owner::kDaemon) {
    // The lock is held, so a daemon runs; it just did not answer us.
    j["daemon"] = "not_answering";
  }
  std::error_code ec;
  const bool lock_left = fs::exists(dir / "buffer.lock", ec);
  struct statvfs vfs {};
  const int64_t free_bytes =
      statvfs(dir.c_str(), &vfs) == 0
          ? static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize)
          : -1;
  j["disk"] = {{"data_dir", dir.string()},
               {"buffer_file_bytes", fileSize(dir / "buffer.db")},
               {"wal_bytes", fileSize(dir / "buffer.db-wal")},
               {"free_bytes", free_bytes},
               {"unclean_shutdown", lock_left && owner == store::Owner::kNobody}};

  auto file = BufferFile::open(dir);
  if (!file) {
    j["buffer"] = {{"error", file.error().message}};
    return j;
  }
  j["buffer"] = {{"read", store::readModeName(file->mode())}};
  int64_t pending[3] = {0, 0, 0};
  int64_t bytes = 0;
  if (auto counts = store::readBufferCounts(file->db()); counts) {
    for (int p = 0; p < 3; ++p) {
      pending[p] = counts->events[p];
      bytes += counts->bytes[p];
    }
  } else {
    j["buffer"]["error"] = "the queue's counts could not be read from " +
                           (dir / "buffer.db").string() + ": " + counts.error().message;
  }
  const auto oldest = file->integer("SELECT received_ms FROM events ORDER BY seq LIMIT 1");
  j["queue"] = {
      {"pending", pending[0] + pending[1] + pending[2]},
      {"high", pending[0]},
      {"normal", pending[1]},
      {"low", pending[2]},
      {"bytes", bytes},
      {"oldest_pending_age_s", oldest ? std::max<int64_t>(0, nowMs() - *oldest) / 1000 : 0}};
  j["last_seq"] = file->maxSeq();
  if (file->hasTable("delivered")) {
    j["retained_delivered"] = file->integer("SELECT count(*) FROM delivered").value_or(0);
  }
  if (file->hasTable("quarantine")) {
    j["quarantine"] = {{"events", file->integer("SELECT count(*) FROM quarantine").value_or(0)}};
  }
  return j;
}

// The text view of a status document. Reads every field through json_view.h: a field that is
// missing or of another type leaves its part out, never breaks the view.
class StatusView {
 public:
  explicit StatusView(std::ostream& out) : out_(out) {}

  void line(const char* label, const std::string& text) {
    out_ << fmt::format("{:<9} ", label) << text << "\n";
  }
  void more(const std::string& text) { out_ << std::string(10, ' ') << text << "\n"; }

  static std::string ageOf(const json& j, const char* key, int64_t now) {
    const auto s = secondsSince(str(j, key), now);
    return s ? humanAge(*s) : "";
  }

  void printUplink(const json& s, int64_t now) {
    const json& uplink = member(s, "uplink");
    const json& m = member(uplink, "mqtt");
    if (m.is_object()) {
      const std::string state = str(m, "state", "unknown");
      const std::string url = str(m, "url");
      const std::string since = ageOf(m, "since", now);
      std::string text;
      if (state == "connected") {
        text = "mqtt connected" + (since.empty() ? "" : " for " + since) +
               (url.empty() ? "" : " to " + url);
        if (has(m, "events_delivered")) {
          text += "; " + thousands(num(m, "events_delivered")) + " events delivered";
        }
      } else {
        text = "mqtt " + (state == "disconnected" ? std::string("DISCONNECTED") : state) +
               (since.empty() ? "" : " for " + since) + (url.empty() ? "" : " (" + url + ")");
        // An error is news only while it lasts: after a reconnect it is not shown.
        if (!str(m, "last_error").empty() && !flag(m, "last_error_resolved")) {
          text += ": " + str(m, "last_error");
        }
        std::optional<int64_t> next_in;
        for (const char* key : {"next_attempt_at", "next_reconnect_at"}) {
          if (auto ago = secondsSince(str(m, key), now)) {
            next_in = -*ago;
          }
        }
        for (const char* key : {"next_attempt_in_s", "next_reconnect_in_s"}) {
          if (has(m, key)) {
            next_in = num(m, key);
          }
        }
        if (has(m, "next_reconnect_in_ms")) {
          next_in = num(m, "next_reconnect_in_ms") / 1000;
        }
        if (next_in) {
          text += *next_in > 0 ? "; next attempt in " + humanAge(*next_in) : "; reconnecting now";
        }
      }
      line("uplink", text);
    }
    const json& h = member(uplink, "https");
    if (h.is_object()) {
      std::string state = str(h, "state", "unknown");
      std::replace(state.begin(), state.end(), '_', ' ');
      std::string text = "https " + state;
      const std::string since = ageOf(h, "since", now);
      if (!since.empty()) {
        text += " for " + since;
      }
      for (const char* key : {"base_url", "url"}) {
        if (!str(h, key).empty()) {
          text += " (" + str(h, key) + ")";
          break;
        }
      }
      if (has(h, "events")) {
        text += "; " + thousands(num(h, "events")) + " events delivered";
      }
      if (!str(h, "last_error").empty() && !flag(h, "last_error_resolved")) {
        text += ": " + str(h, "last_error");
      }
      if (auto ago = secondsSince(str(h, "next_attempt_at"), now); ago && *ago < 0) {
        text += "; next attempt in " + humanAge(-*ago);
      }
      m.is_object() ? more(text) : line("uplink", text);
    }
  }

  void printDrivers(const json& s) {
    const json& drivers = member(s, "drivers");
    if (!drivers.is_array()) {
      return;
    }
    Columns table;
    for (const auto& d : drivers) {
      std::string detail;
      for (const char* key : {"listen", "spool_dir", "url"}) {
        if (!str(d, key).empty()) {
          detail = str(d, key);
        }
      }
      std::string tail;
      const json& counters = member(d, "counters");
      if (counters.is_object()) {
        // The text view shows what happened, not every gauge: counters that are zero, and
        // byte figures, stay in --json.
        int shown = 0;
        for (const auto& [name, value] : counters.items()) {
          if (value.is_number() && value.get<int64_t>() != 0 && !name.ends_with("_bytes") &&
              name != "connected" && shown < 8) {
            tail += (tail.empty() ? "" : ", ") + thousands(value.get<int64_t>()) + " " + name;
            ++shown;
          }
        }
      }
      const int64_t errors = num(d, "errors");
      if (errors > 0) {
        tail +=
            (tail.empty() ? "" : ", ") + thousands(errors) + (errors == 1 ? " error" : " errors");
        if (num(d, "input_errors") > 0) {
          tail += " (" + thousands(num(d, "input_errors")) + " bad input)";
        }
      }
      if (!str(d, "last_error").empty() && (errors > 0 || str(d, "state") != "running")) {
        tail += (tail.empty() ? "" : "; ") + std::string("last error: ") + str(d, "last_error");
      }
      table.add({str(d, "name", "?"), str(d, "state", "?"), detail, tail});
    }
    std::ostringstream out;
    table.print(out);
    std::istringstream rows(out.str());
    bool first = true;
    for (std::string row; std::getline(rows, row); first = false) {
      first ? line("drivers", row) : more(row);
    }
  }

  void printQueue(const json& s) {
    const json& q = member(s, "queue");
    if (!q.is_object()) {
      return;
    }
    std::string text = thousands(num(q, "pending")) + " pending (high " +
                       thousands(num(q, "high")) + ", normal " + thousands(num(q, "normal")) +
                       ", low " + thousands(num(q, "low")) + "), " + humanBytes(num(q, "bytes"));
    if (num(q, "pending") > 0) {
      text += "; oldest pending " + humanAge(num(q, "oldest_pending_age_s"));
    }
    line("queue", text);
    const json& quarantine = member(s, "quarantine");
    if (num(quarantine, "events") > 0) {
      std::string qt = thousands(num(quarantine, "events")) +
                       " events refused by the centre, kept in the quarantine table";
      for (const char* key : {"latest_reason", "last_reason"}) {
        if (!str(quarantine, key).empty()) {
          qt += " (latest: " + str(quarantine, key) + ")";
          break;
        }
      }
      line("quarantine", qt);
      more("`omniedge retry-quarantine` queues them again once the centre takes them");
    }
  }

  void printBuffer(const json& s, bool up, int64_t now) {
    const json& d = member(s, "disk");
    if (!d.is_object()) {
      return;
    }
    std::string text = humanBytes(num(d, "buffer_file_bytes", -1)) + " file";
    if (num(d, "wal_bytes") > 0) {
      text += " + " + humanBytes(num(d, "wal_bytes")) + " WAL";
    }
    text += " in " + str(d, "data_dir");
    if (has(d, "buffer_cap_bytes")) {
      text += "; events " + humanBytes(num(d, "buffer_used_bytes")) + " of " +
              humanBytes(num(d, "buffer_cap_bytes")) + " allowed";
    }
    if (num(d, "free_bytes", -1) >= 0) {
      text += "; " + humanBytes(num(d, "free_bytes")) + " free on disk";
    }
    line("buffer", text);
    const json& counters = member(s, "counters");
    // Refusing producers now: the daemon says so (buffer_full), or it names since when.
    const auto full_for = secondsSince(str(d, "full_since"), now);
    if (flag(d, "buffer_full") || full_for) {
      std::string full = "FULL";
      if (full_for) {
        full += " for " + humanAge(*full_for);
      }
      full +=
          ": new POS and kiosk events are refused (HTTP 503, the POS spool waits) until the "
          "uplink drains it";
      if (num(counters, "rejected_full") > 0) {
        full += "; " + thousands(num(counters, "rejected_full")) + " appends refused";
      }
      if (const auto ago = secondsSince(str(d, "last_full_refusal_at"), now)) {
        full += ", the last " + humanAge(*ago) + " ago";
      }
      more(full);
    } else if (num(counters, "rejected_full") > 0) {
      more(thousands(num(counters, "rejected_full")) +
           " appends were refused since start because the buffer was full");
    }
    if (num(d, "io_errors") > 0) {
      more(thousands(num(d, "io_errors")) +
           " transactions failed on a disk error since start (retried; see `journalctl -u "
           "omniedge`, `omniedge doctor`)");
    }
    if (flag(d, "wal_kept")) {
      more("WAL KEPT: " + str(d, "wal_kept_reason", "a sync of buffer.db failed") +
           "; the WAL grows until a restart, whose recovery copies it into the file again: "
           "check the disk, then `systemctl restart omniedge`");
    }
    if (num(counters, "evicted") > 0) {
      more(thousands(num(counters, "evicted")) +
           " low-priority (beacon) events evicted to make room since start, each reported as "
           "agent.data_dropped");
    }
    if (up && flag(d, "unclean_shutdown_before_start")) {
      more("started after an unclean shutdown (the buffer was checked before anything ran)");
    }
    if (!up && flag(d, "unclean_shutdown")) {
      more(
          "unclean shutdown: the last run did not stop cleanly (buffer.lock is left); the next "
          "start checks the buffer first");
    }
    const json& buffer = member(s, "buffer");
    if (str(buffer, "read") == "wal" || str(buffer, "read") == "private-wal") {
      if (!up && num(d, "wal_bytes") > 0) {
        more("committed events still in the WAL were read from it (nothing was changed)");
      }
    }
    if (!str(buffer, "error").empty()) {
      more("cannot read the buffer: " + str(buffer, "error"));
    }
  }

  void print(const json& s) {
    const int64_t now = nowMs();
    const std::string daemon = str(s, "daemon");
    const bool up = daemon == "running";
    std::string head = "omniedge " + str(s, "version", "?");
    if (up) {
      head += ": daemon running (pid " + std::to_string(num(s, "pid")) + ", up " +
              humanAge(num(s, "uptime_s")) + ")";
      out_ << head << "\n";
    } else {
      head += daemon == "not_answering"
                  ? ": the daemon holds the buffer but does NOT ANSWER on its control socket"
              : daemon == "no_access"
                  ? ": the daemon's control socket is not yours to use (permission denied)"
                  : ": daemon DOWN (not running)";
      out_ << head << "\n";
      const json& looked = member(s, "looked_at");
      if (looked.is_array() && !looked.empty()) {
        more("no control socket answered:");
        for (const auto& l : looked) {
          if (l.is_string()) {
            more("  " + l.get<std::string>());
          }
        }
      }
      if (daemon == "no_access") {
        more("run as root or as a member of the service's group (omniedge)");
      } else {
        more(
            "try `systemctl status omniedge`; if the daemon runs with another configuration, "
            "pass the same --config FILE");
      }
      if (!str(s, "daemon_error").empty()) {
        more("the daemon answered: " + str(s, "daemon_error"));
      }
      more("what follows was read from the buffer file, read-only");
    }
    std::string store = str(s, "store_id") + ", tenant " + str(s, "tenant");
    if (up) {
      store += ", config version " + std::to_string(num(s, "config_version"));
    }
    line("store", store);
    if (up) {
      printUplink(s, now);
    }
    printQueue(s);
    if (up) {
      const json& r = member(s, "rates");
      line("rates", fmt::format("ingest {:.1f}/s, delivery {:.1f}/s", real(r, "ingest_per_s"),
                                real(r, "delivery_per_s")));
      printDrivers(s);
      const json& profiles = member(s, "profiles");
      if (profiles.is_object()) {
        std::string text = thousands(num(profiles, "in_memory")) + " in memory (" +
                           humanBytes(num(profiles, "memory_bytes")) + " of " +
                           humanBytes(num(profiles, "memory_max_bytes")) + "), " +
                           thousands(num(profiles, "on_disk")) + " on disk (" +
                           humanBytes(num(profiles, "disk_bytes")) + ")";
        if (num(profiles, "local_carts") > 0) {
          text += ", " + thousands(num(profiles, "local_carts")) + " local carts";
        }
        line("profiles", text);
      } else if (has(s, "profiles_cached")) {
        line("profiles", thousands(num(s, "profiles_cached")) + " cached");
      }
    }
    printBuffer(s, up, now);
  }

 private:
  std::ostream& out_;
};

int run(const CommandSpec& spec, const Invocation& inv) {
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  Daemon daemon(*loaded);
  json s;
  auto answer = daemon.request({{"cmd", "status"}});
  if (answer && flag(*answer, "ok") && member(*answer, "status").is_object()) {
    s = (*answer)["status"];
  } else {
    s = offlineStatus(*loaded, daemon);
    if (answer) {
      s["daemon_error"] = str(*answer, "error", "refused the status request");
    }
  }
  if (inv.has("json")) {
    std::cout << s.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    printStatusText(s, std::cout);
  }
  return kOk;
}

}  // namespace

void printStatusText(const nlohmann::json& status, std::ostream& out) {
  StatusView(out).print(status);
}

Command statusCommand() {
  CommandSpec spec;
  spec.name = "status";
  spec.synopsis = "[--json]";
  spec.summary = "daemon, uplink, queue, drivers and disk; works when the daemon is down";
  spec.details =
      "Asks the daemon over its control socket. When no daemon answers, says where it looked\n"
      "and reads the buffer file instead (read-only: nothing in the data dir is created or\n"
      "changed, and events a crash left in the WAL are counted). Exit 0 either way.";
  spec.options = [](po::options_description& o) {
    o.add_options()("json", "print the status document as JSON");
  };
  return {spec, run};
}

}  // namespace omniedge::cli
