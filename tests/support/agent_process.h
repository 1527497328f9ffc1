// The real omniedge binary as a child process, configured only through OMNIEDGE_* variables,
// as an operator would run it. Killed with SIGKILL when the test wants a crash.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace omniedge::testing {

struct CliResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};

class AgentProcess {
 public:
  /// `data_dir` is the agent's data dir; `env` adds or overrides OMNIEDGE_* settings. The kiosk
  /// API gets a free port (http_port()) unless env sets OMNIEDGE_HTTP_LISTEN.
  AgentProcess(std::filesystem::path data_dir, std::map<std::string, std::string> env);
  /// SIGKILL if still running.
  ~AgentProcess();
  AgentProcess(const AgentProcess&) = delete;
  AgentProcess& operator=(const AgentProcess&) = delete;

  /// Runs the daemon through `prefix` (e.g. setpriv as another uid): `prefix... omniedge run`.
  void setLauncher(std::vector<std::string> prefix) { launcher_ = std::move(prefix); }
  /// The agent normally gets SIGKILL when the thread that started it ends (no agent outlives a
  /// test killed at its timeout); a test that starts it on a short-lived thread (NetLab::run)
  /// turns that off.
  void outliveStartingThread() { die_with_thread_ = false; }
  /// Starts `omniedge run` and waits until GET /v1/health answers 200 (false after `timeout`).
  bool start(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  /// SIGTERM and wait for the exit; returns the exit code.
  int stop();
  /// SIGKILL and wait: a crash, no goodbye.
  void kill9();
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  int httpPort() const { return http_port_; }
  const std::filesystem::path& dataDir() const { return data_dir_; }
  /// The daemon's log (stderr and stdout) so far, over all its runs.
  std::string log() const;

  /// Runs `omniedge ARGS...` with the same environment, waits, and returns its output.
  CliResult cli(const std::vector<std::string>& args) const;

  /// POSTs `body` to path on the kiosk API; returns (status, body). Status -1 when the
  /// connection failed (daemon down).
  std::pair<int, std::string> post(const std::string& path, const std::string& body,
                                   int timeout_s = 10) const;
  std::pair<int, std::string> get(const std::string& path) const;
  /// post() and get() send `Authorization: Bearer TOKEN` from now on ("" stops it).
  void setBearerToken(std::string token) { token_ = std::move(token); }

 private:
  std::vector<std::string> environment() const;

  std::filesystem::path data_dir_;
  std::filesystem::path log_path_;
  std::map<std::string, std::string> env_;
  int http_port_ = 0;
  pid_t pid_ = -1;
  std::vector<std::string> launcher_;
  bool die_with_thread_ = true;
  std::string token_;
};

}  // namespace omniedge::testing
