// A data dir left owned by root after one run as root, then the service started as its own
// user: the daemon must refuse to start with a clear error and exit code 77, and leave the
// buffer (and the POS dedup memory in it) exactly where and as it was, never "corrupt".
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

using omniedge::testing::AgentProcess;
using omniedge::testing::readFile;
using omniedge::testing::TempDir;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

extern char** environ;

namespace {

// Runs `omniedge run` as uid/gid 65534 through setpriv; returns (exit code, output). Killed
// after 30 s (it must exit at once).
std::pair<int, std::string> runAsNobody(const fs::path& data, const fs::path& log) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string s = *e;
    if (s.rfind("OMNIEDGE_", 0) != 0 && s.rfind("RUNTIME_DIRECTORY=", 0) != 0 &&
        s.rfind("STATE_DIRECTORY=", 0) != 0 && s.rfind("NOTIFY_SOCKET=", 0) != 0) {
      env.push_back(s);
    }
  }
  env.push_back("OMNIEDGE_DATA_DIR=" + data.string());
  env.push_back("OMNIEDGE_HTTP_LISTEN=127.0.0.1:" + std::to_string(omniedge::testing::freePort()));
  env.push_back("OMNIEDGE_MQTT_URL=mqtt://127.0.0.1:" +
                std::to_string(omniedge::testing::freePort()));
  env.push_back("OMNIEDGE_STORE_ID=store-042");
  std::vector<std::string> args = {"/usr/bin/setpriv",
                                   "--reuid=65534",
                                   "--regid=65534",
                                   "--clear-groups",
                                   "--",
                                   OMNIEDGE_BINARY,
                                   "run"};
  std::vector<char*> argv;
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& e : env) {
    envp.push_back(e.data());
  }
  envp.push_back(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return {-1, readFile(log)};
    }
    std::this_thread::sleep_for(20ms);
  }
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), readFile(log)};
}

}  // namespace

TEST_CASE("a buffer left owned by root stops the start with exit 77 and the fix, and is kept",
          "[integration][buffer]") {
  if (geteuid() != 0 || !fs::exists("/usr/bin/setpriv")) {
    WARN("needs root and setpriv to run the daemon as another user: skipped");
    return;
  }
  TempDir tmp;
  REQUIRE(chmod(tmp.path().c_str(), 0711) == 0);
  const fs::path data = tmp / "data";
  std::string id;
  {
    // One run as root: it leaves buffer.db (and profiles.db) owned by root.
    AgentProcess agent(data,
                       {{"OMNIEDGE_MQTT_URL",
                         "mqtt://127.0.0.1:" + std::to_string(omniedge::testing::freePort())}});
    REQUIRE(agent.start());
    auto [status, body] = agent.post("/v1/events", R"({"type":"kiosk.view","data":{"n":1}})");
    REQUIRE(status == 202);
    id = nlohmann::json::parse(body)["ids"][0].get<std::string>();
    REQUIRE(agent.stop() == 0);
  }
  // The service user owns its state dir (StateDirectory=), as systemd makes it.
  REQUIRE(chown(data.c_str(), 65534, 65534) == 0);
  const auto before = readFile(data / "buffer.db");

  auto [code, out] = runAsNobody(data, tmp / "nobody.log");
  INFO(out);
  CHECK(code == 77);
  CHECK(out.find((data / "buffer.db").string()) != std::string::npos);
  CHECK(out.find("owned by root") != std::string::npos);
  CHECK(out.find("chown -R nobody") != std::string::npos);
  CHECK(out.find("corrupt") == std::string::npos);
  CHECK((readFile(data / "buffer.db") == before));
  for (const auto& entry : fs::directory_iterator(data)) {
    CHECK(entry.path().filename().string().rfind("buffer.db.", 0) != 0);
  }

  // Run as root again (as after the fix): the event is still there, nothing was recovered.
  AgentProcess agent(data, {{"OMNIEDGE_MQTT_URL",
                             "mqtt://127.0.0.1:" + std::to_string(omniedge::testing::freePort())}});
  REQUIRE(agent.start());
  auto st = agent.cli({"status", "--json"});
  REQUIRE(st.exit_code == 0);
  CHECK(agent.log().find("agent.buffer_recovered") == std::string::npos);
  CHECK(nlohmann::json::parse(st.out)["queue"]["pending"].get<int>() >= 1);
  CHECK(agent.stop() == 0);
}
