// Starts the daemon the way systemd would for Type=notify and times how long it takes to send
// READY=1 (P5): a datagram socket is passed in NOTIFY_SOCKET, the clock starts just before
// fork().
//
//   bench_launch --log FILE --pidfile FILE [--timeout S] -- COMMAND ARGS...
//   bench_launch --free-port     prints a TCP port on 127.0.0.1 that was free a moment ago
//
// The child gets its own session, stdout and stderr go to FILE. Once READY=1 arrives the
// launcher writes the child's pid to --pidfile, prints "RESULT launch <pid> <ready_ms>" and
// exits 0, leaving the daemon running (bench/run stops it by pid). If the child exits or the
// timeout passes first, the child is killed and the launcher exits 1.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

// Binds port 0 on 127.0.0.1 and reports what the kernel chose.
int printFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::perror("bench_launch: free port");
    return 1;
  }
  std::printf("%d\n", ntohs(a.sin_port));
  close(fd);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--free-port") == 0) {
    return printFreePort();
  }
  std::string log = "/dev/null";
  std::string pidfile;
  int timeout_s = 60;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    if (i + 1 >= argc) {
      break;
    }
    if (a == "--log") {
      log = argv[++i];
    } else if (a == "--pidfile") {
      pidfile = argv[++i];
    } else if (a == "--timeout") {
      timeout_s = std::atoi(argv[++i]);
    }
  }
  if (i >= argc || pidfile.empty()) {
    std::fprintf(stderr, "usage: bench_launch --log FILE --pidfile FILE [--timeout S] -- CMD...\n");
    return 2;
  }
  const std::string sock_path = pidfile + ".notify";
  unlink(sock_path.c_str());
  const int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (sock < 0 || sock_path.size() >= sizeof(addr.sun_path)) {
    std::perror("bench_launch: socket");
    return 1;
  }
  std::strncpy(addr.sun_path, sock_path.c_str(), sizeof(addr.sun_path) - 1);
  if (bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("bench_launch: bind");
    return 1;
  }
  setenv("NOTIFY_SOCKET", sock_path.c_str(), 1);

  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("bench_launch: fork");
    return 1;
  }
  if (pid == 0) {
    setsid();
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[i], argv + i);
    std::perror("bench_launch: exec");
    _exit(127);
  }

  const auto deadline = t0 + std::chrono::seconds(timeout_s);
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{sock, POLLIN, 0};
    if (poll(&p, 1, 20) > 0) {
      const ssize_t n = recv(sock, buf, sizeof(buf) - 1, 0);
      if (n > 0) {
        buf[n] = '\0';
        const std::string msg(buf);
        if (msg.find("READY=1") != std::string::npos) {
          const double ms =
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                  .count();
          std::ofstream(pidfile) << pid << "\n";
          std::printf("RESULT launch %d %.1f\n", static_cast<int>(pid), ms);
          unlink(sock_path.c_str());
          return 0;
        }
      }
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      std::fprintf(stderr, "bench_launch: the daemon exited (status %d) before READY=1; see %s\n",
                   status, log.c_str());
      unlink(sock_path.c_str());
      return 1;
    }
  }
  std::fprintf(stderr, "bench_launch: no READY=1 within %d s; killing %d\n", timeout_s,
               static_cast<int>(pid));
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  unlink(sock_path.c_str());
  return 1;
}
