// GET /v1/stream: server-sent events for the kiosks (engagements from the local triggers).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "drivers/kiosk/http_api.h"
#include "tests/support/recording_writer.h"

namespace omniedge::kiosk {
namespace {

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using testing::RecordingWriter;

struct Fixture {
  explicit Fixture(HttpApiOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    api = std::make_unique<HttpApi>(
        std::move(options), writer,
        [] {
          return HealthReport{true, ""};
        },
        [] { return std::string(); });
    REQUIRE(api->start().has_value());
  }
  RecordingWriter writer;
  std::unique_ptr<HttpApi> api;
};

// A client holding a stream open over a plain socket.
class Listener {
 public:
  Listener(int port, const std::string& target, const std::string& token = {}) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0);
    std::string request = "GET " + target + " HTTP/1.1\r\nHost: x\r\n";
    if (!token.empty()) {
      request += "Authorization: Bearer " + token + "\r\n";
    }
    request += "\r\n";
    REQUIRE(::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(request.size()));
  }
  ~Listener() { close(); }
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

  /// Reads until what came holds `needle`; false after `within` or when the server closed.
  bool waitFor(const std::string& needle, std::chrono::milliseconds within = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (text.find(needle) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        return false;
      }
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        return false;
      }
      text.append(buf, static_cast<std::size_t>(n));
    }
    return true;
  }

  std::string text;

 private:
  int fd_ = -1;
};

template <class F>
bool eventually(F&& f) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!f()) {
    if (std::chrono::steady_clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

}  // namespace

TEST_CASE("a kiosk stream gets the engagements of its zone as server-sent events",
          "[unit][kiosk][stream]") {
  Fixture f;
  Listener entrance(f.api->port(), "/v1/stream?zone=entrance");
  Listener all(f.api->port(), "/v1/stream");
  REQUIRE(entrance.waitFor(": subscribed\n\n"));
  REQUIRE(all.waitFor(": subscribed\n\n"));
  CHECK_THAT(entrance.text, Contains("HTTP/1.1 200 OK\r\n") &&
                                Contains("Content-Type: text/event-stream\r\n") &&
                                Contains("Cache-Control: no-store\r\n"));
  CHECK(entrance.text.find("Content-Length") == std::string::npos);
  CHECK(f.api->openStreams() == 2);

  f.api->publish("tills", R"({"rule":"r1","zone":"tills"})");
  f.api->publish("entrance", "{\"rule\":\"r2\",\n\"zone\":\"entrance\"}");
  REQUIRE(entrance.waitFor("\"r2\""));
  // One data line per frame, whatever the JSON's layout.
  CHECK_THAT(entrance.text,
             Contains("event: engagement\ndata: {\"rule\":\"r2\", \"zone\":\"entrance\"}\n\n"));
  CHECK(entrance.text.find("\"r1\"") == std::string::npos);  // published first, another zone
  REQUIRE(all.waitFor("\"r2\""));
  CHECK_THAT(all.text, Contains("\"r1\""));

  SECTION("a client that leaves frees its stream") {
    entrance.close();
    all.close();
    CHECK(eventually([&] { return f.api->openStreams() == 0; }));
  }
}

TEST_CASE("a token's zones bound what its stream may follow", "[unit][kiosk][stream]") {
  HttpApiOptions options;
  auto tokens =
      parseTokens("shoe-kiosk-token-0123456789 zones=shoes,socks\nall-token-0123456789\n");
  REQUIRE(tokens.has_value());
  CHECK((*tokens)[0].zones == std::vector<std::string>{"shoes", "socks"});
  CHECK((*tokens)[1].zones.empty());
  options.tokens = *tokens;
  Fixture f(options);

  Listener refused(f.api->port(), "/v1/stream?zone=entrance", "shoe-kiosk-token-0123456789");
  REQUIRE(refused.waitFor("\r\n\r\n"));
  CHECK_THAT(refused.text, Contains("HTTP/1.1 403") && Contains("not 'entrance'"));

  Listener anonymous(f.api->port(), "/v1/stream");
  REQUIRE(anonymous.waitFor("\r\n\r\n"));
  CHECK_THAT(anonymous.text, Contains("HTTP/1.1 401"));

  Listener shoes(f.api->port(), "/v1/stream", "shoe-kiosk-token-0123456789");
  REQUIRE(shoes.waitFor(": subscribed\n\n"));
  f.api->publish("entrance", R"({"rule":"e"})");
  f.api->publish("socks", R"({"rule":"s"})");
  REQUIRE(shoes.waitFor("\"s\""));
  CHECK(shoes.text.find("\"e\"") == std::string::npos);
}

TEST_CASE("token lines with a bad zones= attribute are refused naming the line",
          "[unit][kiosk][stream]") {
  auto empty = parseTokens("a-token-0123456789 zones=shoes,,socks\n");
  REQUIRE_FALSE(empty.has_value());
  CHECK_THAT(empty.error().message, Contains("line 1") && Contains("empty zone"));
  auto twice = parseTokens("ok\na-token-0123456789 zones=a zones=b\n");
  REQUIRE_FALSE(twice.has_value());
  CHECK_THAT(twice.error().message, Contains("line 2") && Contains("zones= is given twice"));
}

TEST_CASE("kiosk streams are bounded in number and heartbeat when quiet", "[unit][kiosk][stream]") {
  HttpApiOptions options;
  options.max_streams = 1;
  options.stream_heartbeat = 200ms;
  Fixture f(options);
  Listener first(f.api->port(), "/v1/stream");
  REQUIRE(first.waitFor(": subscribed\n\n"));
  Listener second(f.api->port(), "/v1/stream");
  REQUIRE(second.waitFor("\r\n\r\n"));
  CHECK_THAT(second.text, Contains("HTTP/1.1 503") && Contains("every kiosk stream is in use"));
  REQUIRE(first.waitFor(": ping\n\n"));
}

TEST_CASE("a stream whose client does not read drops its oldest frames, never grows",
          "[unit][kiosk][stream]") {
  HttpStream stream(100, ": ping\n\n", 15s);
  for (int i = 0; i < 10; ++i) {
    CHECK(stream.write(std::string(30, 'x')));
  }
  CHECK(stream.dropped() == 7);  // 3 frames of 30 bytes fit within 100
  CHECK_FALSE(stream.closed());
}

}  // namespace omniedge::kiosk
