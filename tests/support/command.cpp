#include "tests/support/command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tests/support/temp_dir.h"

extern char** environ;

namespace omniedge::testing {

std::vector<std::string> RunAs::prefix() const {
  std::vector<std::string> p = {"/usr/bin/setpriv", "--reuid=" + std::to_string(uid),
                                "--regid=" + std::to_string(gid)};
  if (groups.empty()) {
    p.push_back("--clear-groups");
  } else {
    std::string list;
    for (const auto g : groups) {
      list += (list.empty() ? "" : ",") + std::to_string(g);
    }
    p.push_back("--groups=" + list);
  }
  if (!umask.empty()) {
    p.insert(p.end(), {"/bin/sh", "-c", "umask " + umask + " && exec \"$0\" \"$@\""});
  }
  return p;
}

std::vector<std::string> cleanEnvironment(const std::map<std::string, std::string>& env) {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string s = *e;
    if (s.rfind("OMNIEDGE_", 0) != 0 && s.rfind("RUNTIME_DIRECTORY=", 0) != 0 &&
        s.rfind("STATE_DIRECTORY=", 0) != 0 && s.rfind("NOTIFY_SOCKET=", 0) != 0) {
      out.push_back(s);
    }
  }
  for (const auto& [k, v] : env) {
    out.push_back(k + "=" + v);
  }
  return out;
}

CommandOutput runCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env,
                         std::chrono::milliseconds timeout, const std::string& cwd) {
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe failed");
  }
  std::vector<std::string> envs = cleanEnvironment(env);
  std::vector<char*> args;
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : envs) {
    envp.push_back(const_cast<char*>(e.c_str()));
  }
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    throw std::runtime_error("fork failed");
  }
  if (pid == 0) {
    const int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (!cwd.empty() && chdir(cwd.c_str()) != 0) {
      _exit(126);
    }
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  CommandOutput r;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool killed = false;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    if (left <= 0 && !killed) {
      kill(pid, SIGKILL);
      killed = true;
    }
    if (poll(fds, 2, left > 0 ? static_cast<int>(left) : 100) < 0 && errno != EINTR) {
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd >= 0 && fds[i].revents != 0) {
        char buf[8192];
        const ssize_t n = read(fds[i].fd, buf, sizeof(buf));
        if (n > 0) {
          (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
        } else if (n == 0 || errno != EINTR) {
          close(fds[i].fd);
          fds[i].fd = -1;
          --open_fds;
        }
      }
    }
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (killed) {
    r.exit_code = -1;
  } else if (WIFEXITED(status)) {
    r.exit_code = WEXITSTATUS(status);
  } else {
    r.exit_code = 128 + WTERMSIG(status);
  }
  return r;
}

pid_t spawnProcess(const std::vector<std::string>& argv, const std::string& out_path,
                   const std::optional<std::vector<std::string>>& env, LogMode mode,
                   const std::string& err_path, bool die_with_thread) {
  // Everything the child needs is built before fork: after it, only async-signal-safe calls.
  std::vector<char*> args;
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  std::vector<char*> envp;
  if (env) {
    for (const auto& e : *env) {
      envp.push_back(const_cast<char*>(e.c_str()));
    }
    envp.push_back(nullptr);
  }
  auto open_log = [](const std::string& path, bool truncate) {
    if (path.empty()) {
      return -1;
    }
    const int fd =
        open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : O_APPEND), 0644);
    if (fd < 0) {
      throw std::runtime_error("cannot open " + path + " for a child's output");
    }
    return fd;
  };
  const int out = open_log(out_path, mode == LogMode::kTruncate);
  int err = out;
  try {
    if (!err_path.empty()) {
      err = open_log(err_path, false);
    }
  } catch (...) {
    if (out >= 0) close(out);
    throw;
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    if (die_with_thread) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) {
        _exit(127);  // the parent ended between fork and prctl
      }
    }
    const int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, 0);
    if (out >= 0) dup2(out, 1);
    if (err >= 0) dup2(err, 2);
    // The test process may block signals; the child starts with a clean mask.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (env) {
      execve(args[0], args.data(), envp.data());
    } else {
      execv(args[0], args.data());
    }
    _exit(127);
  }
  if (out >= 0) close(out);
  if (err >= 0 && err != out) close(err);
  if (pid < 0) {
    throw std::runtime_error("fork failed");
  }
  return pid;
}

std::string fiuUnavailable() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return "a sanitizer build: libfiu's preload library defines malloc, which the sanitizer owns";
#else
  if (access("/usr/bin/fiu-run", X_OK) != 0 || access("/usr/bin/fiu-ctrl", X_OK) != 0) {
    return "fiu-utils is not installed (Debian package fiu-utils)";
  }
  return "";
#endif
}

int waitExit(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool waitExit(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    const pid_t r = waitpid(pid, nullptr, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

CommandOutput omniedge(const std::vector<std::string>& args,
                       const std::map<std::string, std::string>& env,
                       const std::optional<RunAs>& as, std::chrono::milliseconds timeout) {
  std::vector<std::string> argv;
  if (as) {
    argv = as->prefix();
  }
  argv.push_back(OMNIEDGE_BINARY);
  argv.insert(argv.end(), args.begin(), args.end());
  return runCommand(argv, env, timeout);
}

BackgroundCommand::BackgroundCommand(const std::vector<std::string>& argv,
                                     const std::map<std::string, std::string>& env,
                                     std::string out_path)
    : out_path_(std::move(out_path)) {
  pid_ = spawnProcess(argv, out_path_, cleanEnvironment(env), LogMode::kTruncate);
}

BackgroundCommand::~BackgroundCommand() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::string BackgroundCommand::output() const { return readFile(out_path_); }

int BackgroundCommand::stop() {
  if (pid_ <= 0) {
    return -1;
  }
  kill(pid_, SIGTERM);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace omniedge::testing
