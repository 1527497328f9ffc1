#include "agent/control_socket.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace omniedge {
namespace {

constexpr std::size_t kMaxRequest = 1 << 20;

bool fillAddress(const std::filesystem::path& p, sockaddr_un& addr) {
  addr = sockaddr_un{};
  addr.sun_family = AF_UNIX;
  const std::string s = p.string();
  if (s.size() >= sizeof(addr.sun_path)) {
    return false;
  }
  std::memcpy(addr.sun_path, s.c_str(), s.size() + 1);
  return true;
}

// Reads up to a newline; false on timeout, error or an over-long line.
bool readLine(int fd, std::string& line, int timeout_ms) {
  char buf[4096];
  for (;;) {
    const auto nl = line.find('\n');
    if (nl != std::string::npos) {
      line.resize(nl);
      return true;
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) {
      return false;
    }
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) {
      return !line.empty();
    }
    line.append(buf, static_cast<std::size_t>(n));
    if (line.size() > kMaxRequest) {
      return false;
    }
  }
}

bool writeAll(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) {
      return false;
    }
    off += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

ControlServer::ControlServer(std::filesystem::path socket_path, Handler handler)
    : path_(std::move(socket_path)), handler_(std::move(handler)) {}

ControlServer::~ControlServer() { stop(); }

Result<void> ControlServer::start() {
  sockaddr_un addr{};
  if (!fillAddress(path_, addr)) {
    return makeError("io", "control socket path too long: " + path_.string());
  }
  fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    return makeError("io", std::string("control socket: ") + std::strerror(errno));
  }
  ::unlink(path_.c_str());  // a stale socket of a dead daemon (the buffer lock guards liveness)
  const mode_t old = umask(0117);
  const int rc = bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old);
  if (rc != 0 || listen(fd_, 16) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    return makeError("io", "cannot listen on " + path_.string() + ": " + err);
  }
  chmod(path_.c_str(), 0660);
  thread_ = std::thread([this] { loop(); });
  return {};
}

void ControlServer::loop() {
  while (!stop_.load()) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) {
      continue;
    }
    const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      continue;
    }
    std::string line;
    nlohmann::json answer;
    if (!readLine(c, line, 2000)) {
      answer = {{"ok", false}, {"error", "no request line"}};
    } else {
      auto req = nlohmann::json::parse(line, nullptr, false);
      if (req.is_discarded() || !req.is_object()) {
        answer = {{"ok", false}, {"error", "request is not a JSON object"}};
      } else {
        answer = handler_(req);
      }
    }
    (void)writeAll(c, answer.dump() + "\n");
    ::close(c);
  }
}

void ControlServer::stop() {
  stop_.store(true);
  if (thread_.joinable()) {
    thread_.join();
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
  }
}

}  // namespace omniedge
