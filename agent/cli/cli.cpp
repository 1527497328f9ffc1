#include "agent/cli/cli.h"

#include <openssl/crypto.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <boost/version.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include "agent/agent.h"
#include "agent/api/time.h"
#include "agent/cli/control_client.h"
#include "agent/cli/doctor.h"
#include "agent/config.h"
#include "agent/store/buffer.h"
#include "agent/version.h"

namespace omniedge {
namespace {

namespace po = boost::program_options;
namespace fs = std::filesystem;

constexpr int kOk = 0;
constexpr int kFailure = 1;
constexpr int kUsage = 2;
constexpr int kUnreachable = 3;
constexpr int kExConfig = 78;
// `run` when the data dir or buffer files cannot be written by this user (sysexits EX_NOPERM):
// systemd restarts it (not 78), so it starts by itself once the ownership is fixed.
constexpr int kExNoPerm = 77;

struct Command {
  const char* name;
  const char* summary;
};

constexpr Command kCommands[] = {
    {"run", "run the daemon in the foreground"},
    {"status", "version, uplink, queue and drivers; works when the daemon is down"},
    {"tail", "recent events from the buffer"},
    {"flush", "ask the daemon to sync now (--wait to wait for an empty queue)"},
    {"export", "write buffered events as JSON Lines (gzip if FILE ends in .gz)"},
    {"import", "re-ingest an export (ids already present are skipped)"},
    {"send-test-event", "send a test event through the whole pipeline, report its delivery"},
    {"doctor", "a check per line (disk, buffer, broker, TLS, certificates, clock); exit 1 on any"},
    {"config", "config show [--json] | config validate FILE"},
    {"retry-quarantine", "move every quarantined event back to the queue, to be sent again"},
    {"resync-profiles", "fetch the whole profile snapshot again over HTTPS"},
    {"version", "version, git revision, build type, library versions"},
};

void printUsage(std::ostream& out) {
  out << "usage: omniedge <command> [options]\n\ncommands:\n";
  for (const auto& c : kCommands) {
    out << "  " << c.name << std::string(17 - std::string(c.name).size(), ' ') << c.summary << "\n";
  }
  out << "\n`omniedge <command> --help` lists a command's options. Every command also takes\n"
         "--config FILE (or OMNIEDGE_CONFIG) and any configuration key as --key VALUE.\n";
}

// A parsed command line: its own options plus the configuration layers.
struct Parsed {
  po::variables_map vm;
  std::vector<std::string> positional;
};

std::optional<Parsed> parse(const std::string& command, int argc, char** argv, int first,
                            po::options_description own, int& exit_code) {
  po::options_description cfg("Configuration (any key also from the file or OMNIEDGE_*)");
  cfg.add_options()("config,c", po::value<std::string>(), "config file (default: OMNIEDGE_CONFIG)");
  config::addFlags(cfg);
  own.add_options()("help,h", "this help");
  po::options_description hidden;
  hidden.add_options()("positional", po::value<std::vector<std::string>>(), "");
  po::options_description all;
  all.add(own).add(cfg).add(hidden);
  po::positional_options_description pos;
  pos.add("positional", -1);
  Parsed p;
  try {
    std::vector<std::string> args(argv + first, argv + argc);
    po::store(po::command_line_parser(args).options(all).positional(pos).run(), p.vm);
    po::notify(p.vm);
  } catch (const po::error& e) {
    std::cerr << "omniedge " << command << ": " << e.what() << "\n";
    exit_code = kUsage;
    return std::nullopt;
  }
  if (p.vm.count("help") != 0U) {
    std::cout << "usage: omniedge " << command << " [options]\n\n" << own << "\n" << cfg;
    exit_code = kOk;
    return std::nullopt;
  }
  if (p.vm.count("positional") != 0U) {
    p.positional = p.vm["positional"].as<std::vector<std::string>>();
  }
  return p;
}

Result<config::Config> loadConfig(const po::variables_map& vm) {
  config::Inputs in;
  if (vm.count("config") != 0U) {
    in.file = vm["config"].as<std::string>();
  } else if (const char* f = std::getenv("OMNIEDGE_CONFIG"); f != nullptr && *f != '\0') {
    in.file = f;
  }
  in.env = config::processEnvironment();
  in.flags = config::flagsFrom(vm);
  return config::load(in);
}

void setupLogging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("omniedge");
  if (std::getenv("JOURNAL_STREAM") != nullptr) {
    logger->set_pattern("%l: %v");  // the journal adds time and unit
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
}

std::string humanBytes(int64_t b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, units[u]);
}

std::string humanDuration(int64_t s) {
  if (s < 60) {
    return fmt::format("{}s", s);
  }
  if (s < 3600) {
    return fmt::format("{}m {}s", s / 60, s % 60);
  }
  if (s < 86400) {
    return fmt::format("{}h {}m", s / 3600, s / 60 % 60);
  }
  return fmt::format("{}d {}h", s / 86400, s / 3600 % 24);
}

// ---- run --------------------------------------------------------------------------------

int cmdRun(int argc, char** argv) {
  po::options_description own("omniedge run");
  int code = kOk;
  auto p = parse("run", argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge run: configuration error:\n" << cfg.error().message << "\n";
    return kExConfig;
  }
  setupLogging(cfg->str("log.level"));
  // Signals are taken synchronously by the main thread (sigtimedwait): block them before any
  // thread starts so that every thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto agent = Agent::create(*cfg);
  if (!agent) {
    spdlog::critical("cannot start: {}", agent.error().message);
    if (agent.error().code == "permission") {
      return kExNoPerm;
    }
    return agent.error().code == "config" ? kExConfig : kFailure;
  }
  return (*agent)->run();
}

// ---- status -----------------------------------------------------------------------------

// What the buffer alone can tell when the daemon is down (read-only, never blocks a daemon).
nlohmann::json offlineStatus(const config::Config& cfg, const std::string& why) {
  nlohmann::json j = {{"daemon", "down"},
                      {"reason", why},
                      {"version", kVersion},
                      {"store_id", cfg.str("store.id")},
                      {"tenant", cfg.str("store.tenant")}};
  const fs::path dir = cfg.str("data.dir");
  auto db = store::openReadOnly(dir);
  if (!db) {
    j["buffer"] = {{"error", db.error().message}};
    return j;
  }
  int64_t pending[3] = {0, 0, 0};
  int64_t bytes = 0;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db->get(), "SELECT prio, events, bytes FROM counters", -1, &st, nullptr) ==
      SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) {
      const auto prio = sqlite3_column_int64(st, 0);
      if (prio >= 0 && prio < 3) {
        pending[prio] = sqlite3_column_int64(st, 1);
        bytes += sqlite3_column_int64(st, 2);
      }
    }
  }
  sqlite3_finalize(st);
  int64_t oldest = 0;
  if (sqlite3_prepare_v2(db->get(), "SELECT received_ms FROM events ORDER BY seq LIMIT 1", -1, &st,
                         nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    oldest = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  std::error_code ec;
  const auto file_bytes = fs::file_size(dir / "buffer.db", ec);
  j["queue"] = {
      {"pending", pending[0] + pending[1] + pending[2]},
      {"high", pending[0]},
      {"normal", pending[1]},
      {"low", pending[2]},
      {"bytes", bytes},
      {"oldest_pending_age_s", oldest > 0 ? std::max<int64_t>(0, now - oldest) / 1000 : 0}};
  j["disk"] = {{"data_dir", dir.string()},
               {"buffer_file_bytes", ec ? 0 : static_cast<int64_t>(file_bytes)},
               {"unclean_shutdown", fs::exists(dir / "buffer.lock")}};
  return j;
}

void printStatusText(const nlohmann::json& s) {
  const bool up = s.value("daemon", "") == "running";
  std::cout << "omniedge " << s.value("version", "?");
  if (up) {
    std::cout << "  daemon running (pid " << s.value("pid", 0) << ", up "
              << humanDuration(s.value("uptime_s", int64_t{0})) << ")\n";
  } else {
    std::cout << "  daemon DOWN (" << s.value("reason", "") << "); figures read from the buffer\n";
  }
  std::cout << "store     " << s.value("store_id", "") << " (tenant " << s.value("tenant", "")
            << ")";
  if (up) {
    std::cout << ", config version " << s.value("config_version", 0);
  }
  std::cout << "\n";
  if (up) {
    const auto& m = s["uplink"]["mqtt"];
    std::cout << "uplink    mqtt " << m.value("state", "") << " since " << m.value("since", "")
              << " (" << m.value("url", "") << "), " << m.value("events_delivered", 0)
              << " events delivered";
    if (!m.value("last_error", "").empty()) {
      std::cout << ", last error: " << m.value("last_error", "");
    }
    std::cout << "\n";
    const auto& h = s["uplink"]["https"];
    std::cout << "          https " << h.value("state", "");
    if (h.contains("base_url")) {
      std::cout << " since " << h.value("since", "") << " (" << h.value("base_url", "") << "), "
                << h.value("events", 0) << " events delivered";
      if (!h.value("last_error", "").empty()) {
        std::cout << ", last error" << (h.value("last_error_resolved", false) ? " (resolved)" : "")
                  << ": " << h.value("last_error", "");
      }
    }
    std::cout << "\n";
    if (s.contains("quarantine") && s["quarantine"].value("events", 0) > 0) {
      std::cout << "quarantine " << s["quarantine"].value("events", 0)
                << " events kept (latest reason: " << s["quarantine"].value("latest_reason", "")
                << "); `omniedge retry-quarantine` sends them again\n";
    }
  }
  if (s.contains("queue")) {
    const auto& q = s["queue"];
    std::cout << "queue     " << q.value("pending", 0) << " pending (high " << q.value("high", 0)
              << ", normal " << q.value("normal", 0) << ", low " << q.value("low", 0) << "), "
              << humanBytes(q.value("bytes", int64_t{0})) << ", oldest "
              << humanDuration(q.value("oldest_pending_age_s", int64_t{0})) << "\n";
  }
  if (up) {
    std::cout << fmt::format("rates     ingest {:.1f}/s, delivery {:.1f}/s\n",
                             s["rates"].value("ingest_per_s", 0.0),
                             s["rates"].value("delivery_per_s", 0.0));
    bool first = true;
    for (const auto& d : s["drivers"]) {
      std::cout << (first ? "drivers   " : "          ") << d.value("name", "") << " "
                << d.value("state", "");
      if (!d.value("listen", "").empty()) {
        std::cout << " (" << d.value("listen", "") << ")";
      }
      if (!d.value("last_error", "").empty()) {
        std::cout << ", " << d.value("errors", 0) << " errors, last: " << d.value("last_error", "");
      }
      std::cout << "\n";
      first = false;
    }
  }
  if (s.contains("disk")) {
    const auto& d = s["disk"];
    std::cout << "disk      buffer file " << humanBytes(d.value("buffer_file_bytes", int64_t{0}));
    if (d.contains("buffer_cap_bytes")) {
      std::cout << ", events " << humanBytes(d.value("buffer_used_bytes", int64_t{0})) << " of "
                << humanBytes(d.value("buffer_cap_bytes", int64_t{0})) << " allowed, "
                << humanBytes(d.value("free_bytes", int64_t{0})) << " free";
    }
    std::cout << " in " << d.value("data_dir", "") << "\n";
  }
}

int cmdStatus(int argc, char** argv) {
  po::options_description own("omniedge status");
  own.add_options()("json", "print JSON");
  int code = kOk;
  auto p = parse("status", argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge status: configuration error:\n" << cfg.error().message << "\n";
    return kUsage;
  }
  nlohmann::json s;
  auto answer = controlRequest(controlSocketPath(*cfg), {{"cmd", "status"}});
  if (answer && answer->value("ok", false)) {
    s = (*answer)["status"];
  } else {
    s = offlineStatus(*cfg, answer ? answer->value("error", "") : answer.error().message);
  }
  if (p->vm.count("json") != 0U) {
    std::cout << s.dump(2) << "\n";
  } else {
    printStatusText(s);
  }
  return kOk;
}

// ---- tail / export ----------------------------------------------------------------------

struct Row {
  int64_t seq;
  std::string type;
  std::string body;
  bool pending;
};

// Pending and (buffer.retain_delivered) delivered events, newest first or in order.
std::vector<Row> queryEvents(sqlite3* db, const std::string& where, const std::string& order,
                             int64_t limit, const std::function<void(sqlite3_stmt*)>& bind) {
  const std::string sql =
      "SELECT seq, type, body, pending FROM (SELECT seq, type, body, received_ms, 1 AS pending "
      "FROM events UNION ALL SELECT seq, type, body, received_ms, 0 AS pending FROM delivered) "
      "WHERE " +
      where + " ORDER BY seq " + order + " LIMIT " + std::to_string(limit);
  std::vector<Row> rows;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) != SQLITE_OK) {
    std::cerr << "omniedge: reading the buffer: " << sqlite3_errmsg(db) << "\n";
    return rows;
  }
  bind(st);
  while (sqlite3_step(st) == SQLITE_ROW) {
    rows.push_back(Row{
        sqlite3_column_int64(st, 0), reinterpret_cast<const char*>(sqlite3_column_text(st, 1)),
        reinterpret_cast<const char*>(sqlite3_column_text(st, 2)), sqlite3_column_int(st, 3) != 0});
  }
  sqlite3_finalize(st);
  return rows;
}

void printEvent(const Row& r, bool json) {
  if (json) {
    std::cout << r.body << "\n";
    return;
  }
  auto e = nlohmann::json::parse(r.body, nullptr, false);
  if (e.is_discarded()) {
    std::cout << r.body << "\n";
    return;
  }
  std::string data = e.contains("data") ? e["data"].dump() : "{}";
  if (data.size() > 100) {
    data = data.substr(0, 97) + "...";
  }
  std::cout << e.value("occurred_at", "") << "  " << e.value("type", "") << "  "
            << e.value("id", "") << "  " << e.value("source", "") << "  " << data << "\n";
}

// Recent events from the running daemon's ring (delivered ones included); empty optional when
// no daemon answers.
std::optional<std::vector<Row>> daemonTail(const std::string& sock, int64_t after, int64_t limit,
                                           const std::string& glob) {
  auto answer = controlRequest(
      sock, {{"cmd", "tail"}, {"after_seq", after}, {"limit", limit}, {"type", glob}});
  if (!answer || !answer->value("ok", false)) {
    return std::nullopt;
  }
  std::vector<Row> rows;
  for (const auto& e : (*answer)["events"]) {
    rows.push_back(Row{e.value("seq", int64_t{0}), e.value("type", ""), e.value("body", ""), true});
  }
  return rows;
}

int cmdTail(int argc, char** argv) {
  po::options_description own("omniedge tail");
  own.add_options()("lines,n", po::value<int64_t>()->default_value(20), "how many events")(
      "type", po::value<std::string>()->default_value("*"), "only types matching this glob")(
      "follow,f", "keep printing new events")("json", "print each event's JSON envelope");
  int code = kOk;
  auto p = parse("tail", argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge tail: configuration error:\n" << cfg.error().message << "\n";
    return kUsage;
  }
  const std::string glob = p->vm["type"].as<std::string>();
  const bool json = p->vm.count("json") != 0U;
  const int64_t lines = p->vm["lines"].as<int64_t>();
  const std::string sock = controlSocketPath(*cfg);

  // The daemon's ring has what was delivered a moment ago; without a daemon, the buffer file
  // (read-only) has what is still pending and what buffer.retain_delivered kept.
  std::shared_ptr<sqlite3> db;
  auto fetch = [&](int64_t after, int64_t limit, bool newest) -> std::vector<Row> {
    if (!db) {
      if (auto rows = daemonTail(sock, after, limit, glob)) {
        return *rows;
      }
      auto opened = store::openReadOnly(cfg->str("data.dir"));
      if (!opened) {
        std::cerr << "omniedge tail: " << opened.error().message << "\n";
        return {};
      }
      db = *opened;
    }
    auto rows = queryEvents(db.get(), "type GLOB ?1 AND seq > ?2", newest ? "DESC" : "ASC", limit,
                            [&](sqlite3_stmt* st) {
                              sqlite3_bind_text(st, 1, glob.c_str(), -1, SQLITE_TRANSIENT);
                              sqlite3_bind_int64(st, 2, after);
                            });
    if (newest) {
      std::reverse(rows.begin(), rows.end());
    }
    return rows;
  };
  int64_t last = 0;
  for (const auto& r : fetch(0, lines, true)) {
    printEvent(r, json);
    last = std::max(last, r.seq);
  }
  if (p->vm.count("follow") != 0U) {
    for (;;) {
      std::cout.flush();
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      for (const auto& r : fetch(last, 1000, false)) {
        printEvent(r, json);
        last = std::max(last, r.seq);
      }
    }
  }
  return kOk;
}

int cmdExport(int argc, char** argv) {
  po::options_description own("omniedge export");
  own.add_options()("out,o", po::value<std::string>()->required(),
                    "output file (.gz: gzip-compressed)")("since", po::value<std::string>(),
                                                          "received at or after (RFC 3339)")(
      "until", po::value<std::string>(), "received before (RFC 3339)")(
      "pending-only", "only events not yet delivered");
  int code = kOk;
  auto p = parse("export", argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge export: configuration error:\n" << cfg.error().message << "\n";
    return kUsage;
  }
  int64_t since = 0;
  int64_t until = INT64_MAX;
  for (const char* key : {"since", "until"}) {
    if (p->vm.count(key) != 0U) {
      auto t = parseRfc3339(p->vm[key].as<std::string>());
      if (!t) {
        std::cerr << "omniedge export: --" << key << " '" << p->vm[key].as<std::string>()
                  << "' is not an RFC 3339 timestamp\n";
        return kUsage;
      }
      (std::string(key) == "since" ? since : until) = *t;
    }
  }
  auto db = store::openReadOnly(cfg->str("data.dir"));
  if (!db) {
    std::cerr << "omniedge export: " << db.error().message << "\n";
    return kFailure;
  }
  const std::string out = p->vm["out"].as<std::string>();
  const bool gz = out.size() > 3 && out.compare(out.size() - 3, 3, ".gz") == 0;
  gzFile gzf = nullptr;
  std::ofstream plain;
  if (gz) {
    gzf = gzopen(out.c_str(), "wb6");
  } else {
    plain.open(out, std::ios::binary | std::ios::trunc);
  }
  if (gz ? gzf == nullptr : !plain) {
    std::cerr << "omniedge export: cannot write " << out << "\n";
    return kFailure;
  }
  const std::string where = std::string("received_ms >= ?1 AND received_ms < ?2 AND seq > ?3") +
                            (p->vm.count("pending-only") != 0U ? " AND pending = 1" : "");
  int64_t last = 0;
  int64_t n = 0;
  for (;;) {
    auto rows = queryEvents(db->get(), where, "ASC", 5000, [&](sqlite3_stmt* st) {
      sqlite3_bind_int64(st, 1, since);
      sqlite3_bind_int64(st, 2, until);
      sqlite3_bind_int64(st, 3, last);
    });
    if (rows.empty()) {
      break;
    }
    for (const auto& r : rows) {
      const std::string line = r.body + "\n";
      if (gz) {
        gzwrite(gzf, line.data(), static_cast<unsigned>(line.size()));
      } else {
        plain << line;
      }
      last = r.seq;
      ++n;
    }
  }
  const bool ok = gz ? gzclose(gzf) == Z_OK : static_cast<bool>(plain.flush());
  if (!ok) {
    std::cerr << "omniedge export: writing " << out << " failed\n";
    return kFailure;
  }
  std::cout << "exported " << n << " events to " << out << "\n";
  return kOk;
}

// ---- flush ------------------------------------------------------------------------------

int cmdFlush(int argc, char** argv) {
  po::options_description own("omniedge flush");
  own.add_options()("wait", po::value<int>(), "wait up to SECONDS for an empty queue");
  int code = kOk;
  auto p = parse("flush", argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge flush: configuration error:\n" << cfg.error().message << "\n";
    return kUsage;
  }
  const std::string sock = controlSocketPath(*cfg);
  auto answer = controlRequest(sock, {{"cmd", "flush"}});
  if (!answer) {
    std::cerr << "omniedge flush: " << answer.error().message << "\n";
    return kUnreachable;
  }
  if (p->vm.count("wait") == 0U) {
    std::cout << "flush requested\n";
    return kOk;
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(p->vm["wait"].as<int>());
  int64_t pending = -1;
  for (;;) {
    auto s = controlRequest(sock, {{"cmd", "status"}});
    if (!s) {
      std::cerr << "omniedge flush: " << s.error().message << "\n";
      return kUnreachable;
    }
    pending = (*s)["status"]["queue"].value("pending", int64_t{-1});
    if (pending == 0) {
      std::cout << "queue empty: everything delivered\n";
      return kOk;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::cerr << "omniedge flush: " << pending << " events still pending after "
            << p->vm["wait"].as<int>() << " s\n";
  return kFailure;
}

// ---- retry-quarantine / resync-profiles ---------------------------------------------------

// A command the daemon carries out at once: `control` is its control-socket name.
int cmdDaemonAction(int argc, char** argv, const std::string& name, const std::string& control) {
  po::options_description own("omniedge " + name);
  int code = kOk;
  auto p = parse(name, argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge " << name << ": configuration error:\n" << cfg.error().message << "\n";
    return kUsage;
  }
  auto answer = controlRequest(controlSocketPath(*cfg), {{"cmd", control}}, 60000);
  if (!answer) {
    std::cerr << "omniedge " << name << ": " << answer.error().message << "\n";
    return kUnreachable;
  }
  if (!answer->value("ok", false)) {
    std::cerr << "omniedge " << name << ": " << answer->value("error", "refused") << "\n";
    return kFailure;
  }
  if (answer->contains("moved")) {
    std::cout << (*answer)["moved"].get<int64_t>() << " quarantined events queued again\n";
  } else {
    std::cout << name << " requested\n";
  }
  return kOk;
}

// ---- import / send-test-event ------------------------------------------------------------

// Sends the events gathered so far to the daemon in one request; false (message printed) on
// a refusal.
bool sendImportChunk(const std::string& sock, nlohmann::json& chunk, int64_t& stored,
                     int64_t& duplicates) {
  if (chunk.empty()) {
    return true;
  }
  auto answer = controlRequest(sock, {{"cmd", "import"}, {"events", chunk}}, 60000);
  chunk = nlohmann::json::array();
  if (!answer || !answer->value("ok", false)) {
    std::cerr << "omniedge import: "
              << (answer ? answer->value("error", "refused") : answer.error().message) << "\n";
    return false;
  }
  stored += answer->value("stored", int64_t{0});
  duplicates += answer->value("duplicates", int64_t{0});
  return true;
}

int cmdImport(int argc, char** argv) {
  po::options_description own("omniedge import FILE (JSON Lines, .gz allowed)");
  int code = kOk;
  auto p = parse("import", argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  if (p->positional.size() != 1) {
    std::cerr << "usage: omniedge import FILE\n";
    return kUsage;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge import: configuration error:\n" << cfg.error().message << "\n";
    return kUsage;
  }
  const std::string sock = controlSocketPath(*cfg);
  if (!controlRequest(sock, {{"cmd", "status"}})) {
    std::cerr << "omniedge import: the daemon is not running (events go in through it)\n";
    return kUnreachable;
  }
  // gzread reads plain files too.
  gzFile in = gzopen(p->positional[0].c_str(), "rb");
  if (in == nullptr) {
    std::cerr << "omniedge import: cannot read " << p->positional[0] << "\n";
    return kFailure;
  }
  nlohmann::json chunk = nlohmann::json::array();
  std::size_t chunk_bytes = 0;
  int64_t stored = 0;
  int64_t duplicates = 0;
  int64_t line_no = 0;
  std::string line;
  std::vector<char> buf(1 << 16);
  bool ok = true;
  for (;;) {
    const char* got = gzgets(in, buf.data(), static_cast<int>(buf.size()));
    if (got != nullptr) {
      line += got;
      if (line.empty() || line.back() != '\n') {
        continue;  // a longer line: keep reading
      }
    }
    if (!line.empty()) {
      ++line_no;
      auto j = nlohmann::json::parse(line, nullptr, false);
      line.clear();
      if (j.is_discarded()) {
        std::cerr << "omniedge import: line " << line_no << " is not JSON\n";
        ok = false;
        break;
      }
      chunk_bytes += j.dump().size();
      chunk.push_back(std::move(j));
      // The control socket takes requests up to 1 MiB: stay well below.
      if (chunk.size() >= 500 || chunk_bytes > 512 * 1024) {
        if (!(ok = sendImportChunk(sock, chunk, stored, duplicates))) {
          break;
        }
        chunk_bytes = 0;
      }
    }
    if (got == nullptr) {
      break;
    }
  }
  gzclose(in);
  ok = ok && sendImportChunk(sock, chunk, stored, duplicates);
  std::cout << "imported " << stored << " events, skipped " << duplicates << " already present ("
            << line_no << " lines read)\n";
  return ok ? kOk : kFailure;
}

int cmdSendTestEvent(int argc, char** argv) {
  po::options_description own("omniedge send-test-event");
  own.add_options()("type", po::value<std::string>()->default_value("agent.test"), "event type")(
      "timeout", po::value<int>()->default_value(30), "seconds to wait for delivery");
  int code = kOk;
  auto p = parse("send-test-event", argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge send-test-event: configuration error:\n" << cfg.error().message << "\n";
    return kUsage;
  }
  const auto start = std::chrono::steady_clock::now();
  auto answer = controlRequest(controlSocketPath(*cfg),
                               {{"cmd", "test_event"}, {"type", p->vm["type"].as<std::string>()}});
  if (!answer) {
    std::cerr << "omniedge send-test-event: " << answer.error().message << "\n";
    return kUnreachable;
  }
  if (!answer->value("ok", false)) {
    std::cerr << "omniedge send-test-event: " << answer->value("error", "refused") << "\n";
    return kFailure;
  }
  const std::string id = (*answer)["ids"][0].get<std::string>();
  std::cout << "accepted " << id << " (durable in the buffer)\n";
  auto db = store::openReadOnly(cfg->str("data.dir"));
  if (!db) {
    std::cerr << "omniedge send-test-event: " << db.error().message << "\n";
    return kFailure;
  }
  const auto deadline = start + std::chrono::seconds(p->vm["timeout"].as<int>());
  for (;;) {
    sqlite3_stmt* st = nullptr;
    bool pending = true;
    if (sqlite3_prepare_v2(db->get(), "SELECT 1 FROM events WHERE id = ?", -1, &st, nullptr) ==
        SQLITE_OK) {
      sqlite3_bind_text(st, 1, id.c_str(), -1, SQLITE_TRANSIENT);
      pending = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    const auto now = std::chrono::steady_clock::now();
    if (!pending) {
      std::cout << "delivered: the centre's broker acknowledged it "
                << std::chrono::duration_cast<std::chrono::milliseconds>(now - start).count()
                << " ms after it was sent\n";
      return kOk;
    }
    if (now >= deadline) {
      std::cerr << "omniedge send-test-event: still pending after " << p->vm["timeout"].as<int>()
                << " s (see `omniedge status`)\n";
      return kFailure;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

int cmdDoctor(int argc, char** argv) {
  po::options_description own("omniedge doctor");
  own.add_options()("json", "print JSON");
  int code = kOk;
  auto p = parse("doctor", argc, argv, 2, own, code);
  if (!p) {
    return code;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge doctor: configuration error:\n" << cfg.error().message << "\n";
    return kUsage;
  }
  return printDoctorReport(runDoctorChecks(*cfg), p->vm.count("json") != 0U, std::cout);
}

// ---- config / version -------------------------------------------------------------------

int cmdConfig(int argc, char** argv) {
  if (argc < 3 || (std::string(argv[2]) != "show" && std::string(argv[2]) != "validate")) {
    std::cerr << "usage: omniedge config show [--json] | omniedge config validate FILE\n";
    return kUsage;
  }
  const std::string sub = argv[2];
  po::options_description own("omniedge config " + sub);
  if (sub == "show") {
    own.add_options()("json", "print JSON");
  }
  int code = kOk;
  auto p = parse("config " + sub, argc, argv, 3, own, code);
  if (!p) {
    return code;
  }
  if (sub == "validate") {
    if (p->positional.size() != 1) {
      std::cerr << "usage: omniedge config validate FILE\n";
      return kUsage;
    }
    auto cfg = config::validateFile(p->positional[0]);
    if (!cfg) {
      std::cerr << p->positional[0] << ": invalid\n" << cfg.error().message << "\n";
      return kFailure;
    }
    std::cout << p->positional[0] << ": valid\n";
    return kOk;
  }
  auto cfg = loadConfig(p->vm);
  if (!cfg) {
    std::cerr << "omniedge config show: configuration error:\n" << cfg.error().message << "\n";
    return kFailure;
  }
  if (p->vm.count("json") != 0U) {
    std::cout << cfg->toJson().dump(2) << "\n";
  } else {
    std::cout << cfg->toText();
  }
  return kOk;
}

int cmdVersion() {
  std::cout << "omniedge " << kVersion << " (git " << kGitRevision << ", " << kBuildType << ")\n"
            << "  sqlite " << sqlite3_libversion() << "\n"
            << "  " << OpenSSL_version(OPENSSL_VERSION) << "\n"
            << "  zlib " << zlibVersion() << "\n"
            << "  spdlog " << SPDLOG_VER_MAJOR << "." << SPDLOG_VER_MINOR << "." << SPDLOG_VER_PATCH
            << "\n"
            << "  boost " << BOOST_VERSION / 100000 << "." << BOOST_VERSION / 100 % 1000 << "\n";
  return kOk;
}

}  // namespace

int runCli(int argc, char** argv) {
  if (argc < 2) {
    printUsage(std::cerr);
    return kUsage;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    printUsage(std::cout);
    return kOk;
  }
  if (cmd == "run") {
    return cmdRun(argc, argv);
  }
  if (cmd == "status") {
    return cmdStatus(argc, argv);
  }
  if (cmd == "tail") {
    return cmdTail(argc, argv);
  }
  if (cmd == "flush") {
    return cmdFlush(argc, argv);
  }
  if (cmd == "export") {
    return cmdExport(argc, argv);
  }
  if (cmd == "import") {
    return cmdImport(argc, argv);
  }
  if (cmd == "send-test-event") {
    return cmdSendTestEvent(argc, argv);
  }
  if (cmd == "doctor") {
    return cmdDoctor(argc, argv);
  }
  if (cmd == "config") {
    return cmdConfig(argc, argv);
  }
  if (cmd == "version" || cmd == "--version") {
    return cmdVersion();
  }
  if (cmd == "retry-quarantine") {
    return cmdDaemonAction(argc, argv, cmd, "retry_quarantine");
  }
  if (cmd == "resync-profiles") {
    return cmdDaemonAction(argc, argv, cmd, "resync_profiles");
  }
  std::cerr << "omniedge: unknown command '" << cmd << "'\n\n";
  printUsage(std::cerr);
  return kUsage;
}

}  // namespace omniedge
