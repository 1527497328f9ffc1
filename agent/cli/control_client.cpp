#include "agent/cli/control_client.h"

#include <poll.h>
#include <sys/socket.h>
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

Result<nlohmann::json> controlRequest(const std::filesystem::path& socket_path,
                                      const nlohmann::json& request, int timeout_ms) {
  sockaddr_un addr{};
  if (!fillAddress(socket_path, addr)) {
    return makeError("unreachable", "control socket path too long");
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return makeError("unreachable", std::strerror(errno));
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    return makeError("unreachable", "no daemon at " + socket_path.string() + " (" + err + ")");
  }
  std::string line;
  const bool ok = writeAll(fd, request.dump() + "\n") && readLine(fd, line, timeout_ms);
  ::close(fd);
  if (!ok) {
    return makeError("unreachable", "the daemon did not answer on " + socket_path.string());
  }
  auto answer = nlohmann::json::parse(line, nullptr, false);
  if (answer.is_discarded()) {
    return makeError("io", "the daemon answered something that is not JSON");
  }
  return answer;
}

}  // namespace omniedge
