// `omniedge run`: the daemon in the foreground (what systemd starts).
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include "agent/agent.h"
#include "cli/commands.h"
#include "cli/console/console.h"

namespace omniedge::cli {
namespace {

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

int runDaemon(const CommandSpec& spec, const Invocation& inv) {
  // The daemon reads only what it is given (systemd: --config and $STATE_DIRECTORY).
  auto loaded = loadConfig(spec, inv, false);
  if (!loaded) {
    return kConfigError;
  }
  setupLogging(loaded->cfg.str("log.level"));
  // Signals are taken synchronously by the main thread (sigtimedwait): block them before any
  // thread starts so that every thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);  // reload (systemd: ExecReload)
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto agent = Agent::create(loaded->cfg);
  if (!agent) {
    spdlog::critical("cannot start: {}", agent.error().message);
    if (agent.error().code == "permission") {
      // The data dir or buffer files are not this user's: systemd restarts it (not 78), so it
      // starts by itself once the ownership is fixed.
      return kNoPermission;
    }
    // A file a newer omniedge wrote (code "schema") stays so until omniedge is upgraded:
    // restarting would only repeat the refusal.
    return agent.error().code == "config" || agent.error().code == "schema" ? kConfigError
                                                                            : kFailure;
  }
  // SIGHUP reads the same file, environment and flags again.
  config::Inputs in;
  in.file = loaded->file;
  in.env = config::processEnvironment();
  in.flags = config::flagsFrom(inv.vm);
  (*agent)->setReload([in] { return config::load(in); });
  // The web console on the kiosk API's listener (cli/console/console.h). It outlives the
  // agent's HTTP server: the agent is destroyed (its server stopped) before the console.
  std::unique_ptr<Agent> daemon = std::move(*agent);
  console::ConsoleOptions co;
  co.max_streams = static_cast<std::size_t>(loaded->cfg.integer("console.max_streams"));
  auto web = std::make_unique<console::Console>(
      console::ConsoleSources{[a = daemon.get()] { return a->status(); },
                              [a = daemon.get()] { return a->history(); },
                              [a = daemon.get()](int64_t after, std::size_t limit) {
                                return a->recentEvents(after, limit);
                              }},
      co);
  if (auto r = daemon->mountHttp("/console", web->handler()); !r) {
    spdlog::critical("web console: {}", r.error().message);
    return kFailure;
  }
  const int code = daemon->run();
  web->stop();     // no page follows events any more
  daemon.reset();  // stops the HTTP server if run() returned before it did
  return code;
}

}  // namespace

Command runCommand() {
  CommandSpec spec;
  spec.name = "run";
  spec.summary = "run the daemon in the foreground (what systemd starts)";
  spec.details =
      "Runs until SIGTERM or SIGINT; tells systemd READY=1 once drivers and store are up.\n"
      "Reads --config FILE or $OMNIEDGE_CONFIG only (the unit passes --config\n"
      "/etc/omniedge/omniedge.conf); data.dir defaults to $STATE_DIRECTORY, else\n"
      "./omniedge-data. Exit 78 on a bad configuration (systemd does not restart then), 77\n"
      "when the data dir is not this user's to write, 78 too when a file in it was written by a\n"
      "newer omniedge (it is left unchanged).";
  return {spec, runDaemon};
}

}  // namespace omniedge::cli
