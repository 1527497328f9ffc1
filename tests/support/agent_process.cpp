#include "tests/support/agent_process.h"

#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <stdexcept>
#include <thread>

#include "tests/support/command.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

namespace omniedge::testing {

AgentProcess::AgentProcess(std::filesystem::path data_dir, std::map<std::string, std::string> env)
    : data_dir_(std::move(data_dir)), env_(std::move(env)) {
  std::filesystem::create_directories(data_dir_);
  log_path_ = data_dir_.parent_path() / (data_dir_.filename().string() + ".log");
  if (env_.count("OMNIEDGE_HTTP_LISTEN") == 0) {
    http_port_ = freePort();
    env_["OMNIEDGE_HTTP_LISTEN"] = "127.0.0.1:" + std::to_string(http_port_);
  } else {
    const auto& l = env_["OMNIEDGE_HTTP_LISTEN"];
    http_port_ = std::stoi(l.substr(l.rfind(':') + 1));
  }
  env_["OMNIEDGE_DATA_DIR"] = data_dir_.string();
  env_.try_emplace("OMNIEDGE_STORE_ID", "store-042");
  env_.try_emplace("OMNIEDGE_LOG_LEVEL", "info");
}

AgentProcess::~AgentProcess() {
  if (pid_ > 0) {
    kill9();
  }
}

std::vector<std::string> AgentProcess::environment() const {
  // The test's own OMNIEDGE_* and systemd variables must not leak into the agent.
  return cleanEnvironment(env_);
}

bool AgentProcess::start(std::chrono::milliseconds timeout) {
  std::vector<std::string> argv = launcher_;
  argv.insert(argv.end(), {OMNIEDGE_BINARY, "run"});
  pid_ =
      spawnProcess(argv, log_path_.string(), environment(), LogMode::kAppend, "", die_with_thread_);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    if (get("/v1/health").first == 200) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

int AgentProcess::stop() {
  if (pid_ <= 0) {
    return -1;
  }
  ::kill(pid_, SIGTERM);
  const int code = waitExit(pid_);
  pid_ = -1;
  return code;
}

void AgentProcess::kill9() {
  if (pid_ <= 0) {
    return;
  }
  ::kill(pid_, SIGKILL);
  waitExit(pid_);
  pid_ = -1;
}

std::string AgentProcess::log() const { return readFile(log_path_); }

CliResult AgentProcess::cli(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {OMNIEDGE_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string out = (data_dir_.parent_path() / "cli.out").string();
  const pid_t pid = spawnProcess(argv, out, environment(), LogMode::kTruncate);
  CliResult r;
  r.exit_code = waitExit(pid);
  r.out = readFile(out);
  return r;
}

std::pair<int, std::string> AgentProcess::post(const std::string& path, const std::string& body,
                                               int timeout_s) const {
  httplib::Client c("127.0.0.1", http_port_);
  c.set_connection_timeout(2);
  c.set_read_timeout(timeout_s);
  c.set_write_timeout(timeout_s);
  if (!token_.empty()) {
    c.set_bearer_token_auth(token_);
  }
  auto res = c.Post(path.c_str(), body, "application/json");
  if (!res) {
    return {-1, ""};
  }
  return {res->status, res->body};
}

std::pair<int, std::string> AgentProcess::get(const std::string& path) const {
  httplib::Client c("127.0.0.1", http_port_);
  c.set_connection_timeout(1);
  c.set_read_timeout(5);
  if (!token_.empty()) {
    c.set_bearer_token_auth(token_);
  }
  auto res = c.Get(path.c_str());
  if (!res) {
    return {-1, ""};
  }
  return {res->status, res->body};
}

}  // namespace omniedge::testing
