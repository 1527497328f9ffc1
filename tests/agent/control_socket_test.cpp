#include "agent/control_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <stdexcept>

#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::ControlLimits;
using omniedge::ControlServer;
using omniedge::testing::TempDir;

namespace {

int connectTo(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  return fd;
}

// Reads until the server closes (or 10 s pass): the answer.
std::string answerOn(int fd) {
  std::string answer;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 10000) <= 0) {
      return answer;
    }
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) {
      return answer;
    }
    answer.append(buf, static_cast<std::size_t>(n));
  }
}

json ask(const std::string& path, const std::string& request) {
  const int fd = connectTo(path);
  (void)!send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  shutdown(fd, SHUT_WR);
  auto answer = json::parse(answerOn(fd), nullptr, false);
  close(fd);
  return answer;
}

}  // namespace

TEST_CASE("the control server answers a handler's exception and keeps serving", "[unit][cli]") {
  TempDir dir;
  const std::string path = (dir / "c.sock").string();
  ControlServer server(path, [](const json& r) -> json {
    if (r.value("cmd", "") == "boom") {
      throw std::runtime_error("kaput");
    }
    return {{"ok", true}};
  });
  REQUIRE(server.start().has_value());
  const auto boom = ask(path, R"({"cmd":"boom"})"
                              "\n");
  CHECK(boom["ok"] == false);
  CHECK(boom["code"] == "internal");
  CHECK_THAT(boom["error"].get<std::string>(), Catch::Contains("kaput"));
  CHECK(ask(path, R"({"cmd":"fine"})"
                  "\n")["ok"] == true);
}

TEST_CASE("with every slot taken by silent clients, the oldest gives way to a new one",
          "[unit][cli]") {
  TempDir dir;
  const std::string path = (dir / "c.sock").string();
  ControlLimits limits;
  limits.max_clients = 3;
  limits.request_timeout = 60s;  // only eviction can free a slot here
  limits.eviction_grace = 0ms;
  ControlServer server(
      path,
      [](const json&) {
        return json{{"ok", true}};
      },
      limits);
  REQUIRE(server.start().has_value());
  std::vector<int> silent;
  for (int i = 0; i < 3; ++i) {
    silent.push_back(connectTo(path));
  }
  CHECK(ask(path, R"({"cmd":"status"})"
                  "\n")["ok"] == true);
  const auto first = json::parse(answerOn(silent[0]), nullptr, false);
  CHECK(first["ok"] == false);
  CHECK_THAT(first["error"].get<std::string>(), Catch::Contains("another client needed"));
  for (const int fd : silent) {
    close(fd);
  }
}

TEST_CASE("a silent client is answered at the request deadline, a huge one at the size limit",
          "[unit][cli]") {
  TempDir dir;
  const std::string path = (dir / "c.sock").string();
  ControlLimits limits;
  limits.request_timeout = 200ms;
  limits.max_request_bytes = 1024;
  std::atomic<int> handled{0};
  ControlServer server(
      path,
      [&handled](const json&) {
        ++handled;
        return json{{"ok", true}};
      },
      limits);
  REQUIRE(server.start().has_value());
  const int fd = connectTo(path);
  const auto silent = json::parse(answerOn(fd), nullptr, false);
  close(fd);
  CHECK_THAT(silent["error"].get<std::string>(), Catch::Contains("not complete within 200 ms"));
  const auto huge = ask(path, std::string(5000, ' ') + "\n");
  CHECK_THAT(huge["error"].get<std::string>(), Catch::Contains("larger than 1 KiB"));
  CHECK(handled.load() == 0);
}

TEST_CASE("stop() returns with clients connected and removes the socket", "[unit][cli]") {
  TempDir dir;
  const std::string path = (dir / "c.sock").string();
  auto server = std::make_unique<ControlServer>(path, [](const json&) { return json{}; });
  REQUIRE(server->start().has_value());
  const int fd = connectTo(path);
  server->stop();
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK(answerOn(fd).empty());  // closed without an answer: the daemon is stopping
  close(fd);
}
