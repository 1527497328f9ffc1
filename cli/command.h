// What every subcommand shares: exit codes, parsing its command line (its own options, the
// positional arguments it takes, --help, and the configuration layers), finding what the
// service uses on a device, and talking to the daemon.
#pragma once

#include <boost/program_options.hpp>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "agent/api/result.h"
#include "agent/config.h"

namespace omniedge::cli {

namespace po = boost::program_options;

/// Exit codes (contract §1, plus 78 for a bad configuration in every command that reads one).
/// 77 (EX_NOPERM): `run` on a data dir this user may not write.
enum Exit : int {
  kOk = 0,
  kFailure = 1,
  kUsage = 2,
  kUnreachable = 3,
  kNoPermission = 77,
  kConfigError = 78
};

/// Where a store device keeps what the service uses (systemd/omniedge.service).
inline constexpr const char* kDeviceConfigFile = "/etc/omniedge/omniedge.conf";
inline constexpr const char* kDeviceStateDir = "/var/lib/omniedge";
inline constexpr const char* kDeviceRuntimeDir = "/run/omniedge";
inline constexpr const char* kSocketName = "omniedge.sock";

/// One subcommand as its --help shows it.
struct CommandSpec {
  std::string name;          // "tail", "config show"
  std::string synopsis;      // after the name: "[-n N] [--type GLOB] [--follow] [--json]"
  std::string summary;       // one line, for `omniedge --help`
  std::string details;       // paragraphs after the usage line
  std::size_t min_args = 0;  // positional arguments
  std::size_t max_args = 0;
  bool takes_config = true;  // --config FILE and every key as --key VALUE
  /// Registers the command's own options (besides --help).
  std::function<void(po::options_description&)> options;
};

/// A parsed command line.
struct Invocation {
  po::variables_map vm;
  std::vector<std::string> args;  // positional
  bool has(const char* option) const { return vm.count(option) != 0U; }
};

/// Parses argv[first..] for `spec`. Returns the invocation, or the exit code when the command
/// is done already: --help printed (0) or a usage error printed to stderr (2).
std::variant<Invocation, int> parseCommand(const CommandSpec& spec, int argc, char** argv,
                                           int first);

/// Prints `spec`'s help (usage, details, options) to `out`.
void printCommandHelp(const CommandSpec& spec, std::ostream& out);

/// Prints "omniedge NAME: MESSAGE" and where to find the usage to stderr; returns kUsage.
int usageError(const CommandSpec& spec, const std::string& message);

/// The effective configuration and where its file came from.
struct Loaded {
  config::Config cfg;
  std::string file;    // "" = none
  std::string origin;  // "--config", "OMNIEDGE_CONFIG", "found" (the device's), "" = none
  /// "configuration: /etc/omniedge/omniedge.conf" or "no configuration file (built-in
  /// defaults; the service reads /etc/omniedge/omniedge.conf)", for messages.
  std::string describe() const;
};

/// Loads the configuration as the service sees it: --config FILE, else $OMNIEDGE_CONFIG, else
/// /etc/omniedge/omniedge.conf when it exists; data.dir defaults to $STATE_DIRECTORY, else
/// /var/lib/omniedge when it exists (`device_layout`; not for `run`, which systemd starts with
/// its own settings). On failure prints the error naming the file to stderr.
std::optional<Loaded> loadConfig(const CommandSpec& spec, const Invocation& inv,
                                 bool device_layout = true);

/// The running daemon, reached over the first control socket that answers: the runtime
/// directory's ($RUNTIME_DIRECTORY, else /run/omniedge when it exists), then data.dir's.
class Daemon {
 public:
  explicit Daemon(const Loaded& loaded);

  /// Sends `request`; the answer (which may say {"ok": false}) or an error once every socket
  /// failed (see whereLooked()). Sticks to the socket that answered. Thread: the caller's.
  Result<nlohmann::json> request(const nlohmann::json& request, int timeout_ms = 5000);

  /// One line per place looked at and what was found there, for "daemon down" messages.
  std::string whereLooked(const std::string& indent) const;
  /// What to try next: `systemctl status omniedge`, --config.
  std::string advice(const std::string& indent) const;
  /// The whole "not running" message for commands that need the daemon.
  std::string notRunning(const std::string& command) const;
  /// Whether a socket exists but refused us (permission): the daemon may well be running.
  bool deniedAccess() const;
  const std::vector<std::string>& candidates() const { return candidates_; }

 private:
  const Loaded& loaded_;
  std::vector<std::string> candidates_;
  std::string answered_;                             // the socket that answered last
  std::vector<std::pair<std::string, Error>> seen_;  // what each socket said last time
};

/// The control socket paths to try for `cfg`, in order, without duplicates.
std::vector<std::string> controlSocketCandidates(const config::Config& cfg);

}  // namespace omniedge::cli
