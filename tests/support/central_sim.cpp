#include "tests/support/central_sim.h"

#include <fcntl.h>
#include <mqtt/async_client.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace omniedge::testing {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

SimResult centralSim(const std::vector<std::string>& args) {
  static std::atomic<int> counter{0};
  const std::string base =
      (std::filesystem::temp_directory_path() /
       ("central-sim-" + std::to_string(getpid()) + "-" + std::to_string(counter++)))
          .string();
  const std::string out = base + ".out";
  const std::string err = base + ".err";
  std::vector<std::string> argv = {"/usr/bin/python3",
                                   OMNIEDGE_SOURCE_DIR "/tools/central-sim/central-sim"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) {
    cargv.push_back(a.data());
  }
  cargv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    throw std::runtime_error("fork failed");
  }
  if (pid == 0) {
    const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(o, 1);
    dup2(e, 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  SimResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return r;
}

void publishMqtt(const std::string& url, const std::string& topic, const std::string& payload,
                 bool retained) {
  std::string uri = url;
  if (uri.rfind("mqtt://", 0) == 0) {
    uri = "tcp://" + uri.substr(7);
  }
  static std::atomic<int> counter{0};
  mqtt::async_client client(
      uri, "test-publisher-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
  mqtt::connect_options opts;
  opts.set_clean_session(true);
  opts.set_connect_timeout(10);
  if (!client.connect(opts)->wait_for(std::chrono::seconds(10))) {
    throw std::runtime_error("publishMqtt: no CONNACK from " + url);
  }
  auto msg = mqtt::make_message(topic, payload, 1, retained);
  if (!client.publish(msg)->wait_for(std::chrono::seconds(10))) {
    throw std::runtime_error("publishMqtt: no PUBACK from " + url);
  }
  client.disconnect()->wait_for(std::chrono::seconds(5));
}

}  // namespace omniedge::testing
