#include "cli/control_client.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

namespace omniedge {
namespace {

// Answers can be large (tail returns up to the daemon's ring of recent events).
constexpr std::size_t kMaxAnswer = 256 << 20;

int msLeft(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now())
                        .count();
  return left > 0 ? static_cast<int>(left) : 0;
}

}  // namespace

Result<nlohmann::json> controlRequest(const std::filesystem::path& socket_path,
                                      const nlohmann::json& request, int timeout_ms) {
  const std::string where = socket_path.string();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (where.size() >= sizeof(addr.sun_path)) {
    return makeError("io", where + ": path too long for a Unix socket");
  }
  std::memcpy(addr.sun_path, where.c_str(), where.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return makeError("io", where + ": " + std::strerror(errno));
  }
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    ::close(fd);
    switch (err) {
      case ENOENT:
        return makeError("absent", where + ": no such socket");
      case ECONNREFUSED:
        return makeError("refused", where + ": nobody listens (a daemon that stopped uncleanly)");
      case EACCES:
      case EPERM:
        return makeError("permission", where +
                                           ": permission denied (run as root or as a "
                                           "member of the service's group)");
      default:
        return makeError("io", where + ": " + std::strerror(err));
    }
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  const std::string line =
      request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::size_t sent = 0;
  std::string answer;
  bool complete = false;
  std::string failure;
  while (!complete && failure.empty()) {
    pollfd p{fd, static_cast<short>(sent < line.size() ? POLLOUT | POLLIN : POLLIN), 0};
    const int ready = poll(&p, 1, msLeft(deadline));
    if (ready == 0) {
      failure = "timeout";
      break;
    }
    if (ready < 0) {
      if (errno != EINTR) {
        failure = std::strerror(errno);
      }
      continue;
    }
    if ((p.revents & POLLIN) != 0) {
      sent = line.size();  // an answer before the whole request: it is about the request
    }
    if (sent < line.size()) {
      const ssize_t n = send(fd, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
        sent = line.size();  // the daemon answered early (busy, too large): read why
      } else if (n < 0 && errno != EINTR && errno != EAGAIN) {
        failure = std::strerror(errno);
      } else if (n > 0) {
        sent += static_cast<std::size_t>(n);
      }
      continue;
    }
    char buf[64 * 1024];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      answer.append(buf, static_cast<std::size_t>(n));
      complete = answer.back() == '\n';
      if (answer.size() > kMaxAnswer) {
        failure = "answer too large";
      }
    } else if (n == 0) {
      complete = !answer.empty();
      if (!complete) {
        failure = "the daemon closed the connection without answering";
      }
    } else if (errno != EINTR && errno != EAGAIN) {
      failure = std::strerror(errno);
    }
  }
  ::close(fd);
  if (failure == "timeout") {
    return makeError("timeout",
                     fmt::format("{}: no answer within {:.1f} s", where, timeout_ms / 1000.0));
  }
  if (!failure.empty()) {
    return makeError("io", where + ": " + failure);
  }
  auto parsed = nlohmann::json::parse(answer, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return makeError("io", where + ": the daemon answered something that is not a JSON object");
  }
  return parsed;
}

}  // namespace omniedge
