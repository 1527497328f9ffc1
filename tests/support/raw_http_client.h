// A raw TCP client for HTTP tests that need what a library client cannot do: pick the source
// address, trickle bytes, send malformed or unfinished requests, watch the server close.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace omniedge::testing {

class RawHttpClient {
 public:
  RawHttpClient() = default;
  ~RawHttpClient() { close(); }
  RawHttpClient(const RawHttpClient&) = delete;
  RawHttpClient& operator=(const RawHttpClient&) = delete;
  RawHttpClient(RawHttpClient&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  RawHttpClient& operator=(RawHttpClient&& other) noexcept {
    if (this != &other) {
      close();
      fd_ = other.fd_;
      other.fd_ = -1;
    }
    return *this;
  }

  /// Connects to host:port (an IPv4 or IPv6 literal), from `source` when given (e.g.
  /// "127.0.0.42"). False when it cannot (no IPv6 here, say).
  bool connect(const std::string& host, int port, const std::string& source = {}) {
    close();
    sockaddr_storage to{};
    socklen_t to_len = 0;
    if (!address(host, port, to, to_len)) {
      return false;
    }
    fd_ = ::socket(to.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) {
      return false;
    }
    if (!source.empty()) {
      sockaddr_storage from{};
      socklen_t from_len = 0;
      if (!address(source, 0, from, from_len) ||
          ::bind(fd_, reinterpret_cast<sockaddr*>(&from), from_len) != 0) {
        close();
        return false;
      }
    }
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&to), to_len) != 0) {
      close();
      return false;
    }
    return true;
  }

  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        return false;
      }
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  /// The next whole response (head and Content-Length body), or what came before the server
  /// closed or `within` ran out.
  std::string response(std::chrono::milliseconds within = std::chrono::seconds(20)) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (!complete()) {
      if (!readSome(deadline)) {
        break;
      }
    }
    const std::size_t size = completeSize();
    std::string out = pending_.substr(0, size == 0 ? pending_.size() : size);
    pending_.erase(0, out.size());
    return out;
  }

  /// True once the server closed the connection (EOF or reset) within `within`; the bytes that
  /// came before are dropped.
  bool closedByServer(std::chrono::milliseconds within = std::chrono::seconds(20)) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (std::chrono::steady_clock::now() < deadline) {
      if (!readSome(deadline)) {
        return eof_;
      }
    }
    return false;
  }

  int status(const std::string& response) const {
    return response.rfind("HTTP/1.1 ", 0) == 0 ? std::atoi(response.c_str() + 9) : -1;
  }

  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    pending_.clear();
    eof_ = false;
  }
  bool open() const { return fd_ >= 0; }

 private:
  static bool address(const std::string& host, int port, sockaddr_storage& out, socklen_t& len) {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&out);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&out);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
      v4->sin_family = AF_INET;
      v4->sin_port = htons(static_cast<uint16_t>(port));
      len = sizeof(sockaddr_in);
      return true;
    }
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
      v6->sin6_family = AF_INET6;
      v6->sin6_port = htons(static_cast<uint16_t>(port));
      len = sizeof(sockaddr_in6);
      return true;
    }
    return false;
  }

  // Appends what arrives before the deadline; false on EOF, error or deadline.
  bool readSome(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (fd_ < 0 || left.count() <= 0) {
      return false;
    }
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      return false;
    }
    char buf[16384];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    pending_.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  // The size of the first whole response in pending_, 0 when it is not all there.
  std::size_t completeSize() const {
    const std::size_t head_end = pending_.find("\r\n\r\n");
    if (head_end == std::string::npos) {
      return 0;
    }
    std::size_t length = 0;
    const std::size_t at = pending_.find("Content-Length: ");
    if (at != std::string::npos && at < head_end) {
      length = std::strtoul(pending_.c_str() + at + 16, nullptr, 10);
    }
    const std::size_t total = head_end + 4 + length;
    return pending_.size() >= total ? total : 0;
  }
  bool complete() const { return completeSize() != 0; }

  int fd_ = -1;
  std::string pending_;
  bool eof_ = false;
};

}  // namespace omniedge::testing
