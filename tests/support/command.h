// Running a program (usually the real omniedge binary) as a user would: its own environment,
// stdout and stderr kept apart, bounded in time, optionally as another uid through setpriv.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace omniedge::testing {

struct CommandOutput {
  int exit_code = -1;  // 128 + signal when killed; -1 when it had to be killed at the deadline
  std::string out;
  std::string err;
};

/// Another identity for a child: setpriv --reuid/--regid, with these supplementary groups.
struct RunAs {
  unsigned uid = 0;
  unsigned gid = 0;
  std::vector<unsigned> groups;
  std::string umask;  // e.g. "027"; empty: inherited
  /// The argv prefix that runs a program as this identity.
  std::vector<std::string> prefix() const;
};

/// The test's environment without OMNIEDGE_* and systemd variables, plus `env`.
std::vector<std::string> cleanEnvironment(const std::map<std::string, std::string>& env);

/// Runs `argv` (argv[0] a path) with cleanEnvironment(env), stdin from /dev/null, in `cwd`
/// when given; SIGKILL at `timeout`.
CommandOutput runCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(60),
                         const std::string& cwd = "");

/// `omniedge ARGS...`, optionally as `as`.
CommandOutput omniedge(const std::vector<std::string>& args,
                       const std::map<std::string, std::string>& env = {},
                       const std::optional<RunAs>& as = std::nullopt,
                       std::chrono::milliseconds timeout = std::chrono::seconds(60));

/// Whether spawnProcess appends to the child's log or starts it anew.
enum class LogMode { kAppend, kTruncate };

/// fork + exec of `argv` (argv[0] a path): stdout, and stderr too unless `err_path` is given
/// (appended to), into `out_path` (inherited when empty); the whole environment `env`
/// (nullopt: the test's own); stdin from /dev/null, a clean signal mask, and, unless
/// `die_with_thread` is false, SIGKILL when the thread that spawned it ends (PR_SET_PDEATHSIG:
/// no child outlives a test killed at its timeout; it is the spawning THREAD that counts).
/// Throws when a log cannot be opened or fork fails; exit code 127 when exec does.
pid_t spawnProcess(const std::vector<std::string>& argv, const std::string& out_path,
                   const std::optional<std::vector<std::string>>& env = std::nullopt,
                   LogMode mode = LogMode::kAppend, const std::string& err_path = "",
                   bool die_with_thread = true);

/// Why fiu-run cannot run the agent here, "" when it can: fiu-utils is not installed, or this
/// is a sanitizer build (libfiu's preload library defines malloc, calloc and realloc, which the
/// ASan and TSan runtimes own: the agent dies of SIGSEGV before main).
std::string fiuUnavailable();

/// Waits for `pid` (restarting on EINTR): its exit code, or 128 + signal.
int waitExit(pid_t pid);

/// Waits for `pid` up to `timeout`; true when it ended and was reaped (or is not our child).
bool waitExit(pid_t pid, std::chrono::milliseconds timeout);

/// A long-running command (tail --follow) in the background, stdout and stderr to `out_path`.
class BackgroundCommand {
 public:
  BackgroundCommand(const std::vector<std::string>& argv,
                    const std::map<std::string, std::string>& env, std::string out_path);
  /// SIGKILL if still running.
  ~BackgroundCommand();
  BackgroundCommand(const BackgroundCommand&) = delete;
  BackgroundCommand& operator=(const BackgroundCommand&) = delete;
  /// What it printed so far.
  std::string output() const;
  /// SIGTERM and wait; returns the exit code (128 + signal).
  int stop();

 private:
  std::string out_path_;
  int pid_ = -1;
};

}  // namespace omniedge::testing
