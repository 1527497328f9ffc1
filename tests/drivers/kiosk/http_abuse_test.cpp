// The kiosk API off loopback: slow, oversized, unfinished and guessing clients, with real
// sockets. Nothing here measures time: deadlines are generous bounds on waiting.
#include <zlib.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "drivers/kiosk/http_api.h"
#include "tests/support/raw_http_client.h"
#include "tests/support/recording_writer.h"

namespace omniedge::kiosk {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::RawHttpClient;
using testing::RecordingWriter;

constexpr const char* kToken = "valid-token-0123456789abcdef";

std::unique_ptr<HttpApi> startApi(HttpApiOptions options, EventWriter& writer) {
  if (options.host.empty()) {
    options.host = "127.0.0.1";
  }
  options.port = 0;
  auto api = std::make_unique<HttpApi>(
      std::move(options), writer,
      [] {
        return HealthReport{true, {}, false};
      },
      [] { return std::string(); });
  auto started = api->start();
  if (!started) {
    return nullptr;
  }
  return api;
}

std::string post(const std::string& body, const std::string& extra_headers = {}) {
  return "POST /v1/events HTTP/1.1\r\nHost: kiosk\r\nContent-Type: application/json\r\n" +
         extra_headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string get(const std::string& path, const std::string& token) {
  return "GET " + path + " HTTP/1.1\r\nHost: kiosk\r\nAuthorization: Bearer " + token + "\r\n\r\n";
}

// The value of an unlabelled metric line "name value".
uint64_t metric(const HttpApi& api, const std::string& line_start) {
  const std::string text = api.metricsText();
  const std::size_t at = text.find("\n" + line_start + " ");
  return at == std::string::npos ? 0 : std::stoull(text.substr(at + line_start.size() + 2));
}

std::string bodyOf(const std::string& response) {
  const std::size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? std::string() : response.substr(at + 4);
}

// Clients that open a request and then send one header byte per second per connection, for as
// long as they live: each would hold a thread-per-connection server's worker for ever.
class Slowloris {
 public:
  Slowloris(int port, int connections) {
    for (int i = 0; i < connections; ++i) {
      RawHttpClient c;
      if (c.connect("127.0.0.1", port)) {
        c.send("POST /v1/events HTTP/1.1\r\nHost: kiosk\r\nX-Slow: ");
        clients_.push_back(std::move(c));
      }
    }
    thread_ = std::thread([this] {
      while (!stop_) {
        for (RawHttpClient& c : clients_) {
          c.send("a");  // fails quietly once the server dropped it
        }
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, 1s, [this] { return stop_.load(); });
      }
    });
  }
  ~Slowloris() {
    stop_ = true;
    cv_.notify_all();
    thread_.join();
  }
  std::size_t opened() const { return clients_.size(); }

 private:
  std::vector<RawHttpClient> clients_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

TEST_CASE("slowloris clients hold no worker and pile nothing up, a valid client is served",
          "[integration][kiosk][abuse]") {
  RecordingWriter writer;
  HttpApiOptions options;
  options.threads = 1;  // one worker: had a trickling client taken it, nobody would be served
  options.max_connections = 16;
  options.header_timeout = 2s;
  auto api = startApi(options, writer);
  REQUIRE(api);

  Slowloris attack(api->port(), 40);
  REQUIRE(attack.opened() == 40);
  for (int round = 0; round < 3; ++round) {
    RawHttpClient valid;
    REQUIRE(valid.connect("127.0.0.1", api->port()));
    REQUIRE(valid.send(post(R"({"type":"kiosk.view"})")));
    const std::string answer = valid.response(20s);
    INFO("round " << round << ": " << answer);
    CHECK(valid.status(answer) == 202);
    CHECK(metric(*api, "omniedge_http_connections_open") <= 16);
    std::this_thread::sleep_for(1s);  // let the trickle go on between rounds
  }
  CHECK(writer.events().size() == 3);
  // The slow ones were closed: to make room, or when their head was late.
  const std::string text = api->metricsText();
  CAPTURE(text);
  const uint64_t evicted =
      metric(*api, "omniedge_http_connections_closed_total{reason=\"evicted\"}");
  const uint64_t late =
      metric(*api, "omniedge_http_connections_closed_total{reason=\"head_timeout\"}");
  CHECK(evicted + late >= 24);
}

TEST_CASE("connections beyond the limit never pile up: idle ones make room, else a quick 503",
          "[integration][kiosk][abuse]") {
  // A writer that holds every append until released: the requests stay in the workers.
  struct GateWriter final : EventWriter {
    Result<AppendOutcome> append(std::vector<Event> events) override {
      std::unique_lock lock(mu);
      ++waiting;
      cv.notify_all();
      cv.wait(lock, [this] { return open; });
      AppendOutcome out;
      for (std::size_t i = 0; i < events.size(); ++i) {
        out.ids.push_back("id");
      }
      out.stored = events.size();
      return out;
    }
    Result<AppendOutcome> appendEach(std::vector<Event> events) override {
      return append(std::move(events));
    }
    std::mutex mu;
    std::condition_variable cv;
    int waiting = 0;
    bool open = false;
  } writer;
  HttpApiOptions options;
  options.threads = 8;
  options.max_connections = 8;
  auto api = startApi(options, writer);
  REQUIRE(api);

  SECTION("idle connections are closed to let a request in") {
    std::vector<RawHttpClient> idle(20);
    for (RawHttpClient& c : idle) {
      REQUIRE(c.connect("127.0.0.1", api->port()));
    }
    {
      std::lock_guard lock(writer.mu);
      writer.open = true;
    }
    RawHttpClient valid;
    REQUIRE(valid.connect("127.0.0.1", api->port()));
    REQUIRE(valid.send(post(R"({"type":"kiosk.view"})")));
    const std::string answer = valid.response(20s);
    CHECK(valid.status(answer) == 202);
    CHECK(metric(*api, "omniedge_http_connections_open") <= 8);
    CHECK(metric(*api, "omniedge_http_connections_closed_total{reason=\"evicted\"}") >= 12);
  }
  SECTION("when every slot holds a request being served, a newcomer gets 503 at once") {
    std::vector<RawHttpClient> busy(8);
    for (RawHttpClient& c : busy) {
      REQUIRE(c.connect("127.0.0.1", api->port()));
      REQUIRE(c.send(post(R"({"type":"kiosk.view"})")));
    }
    {
      std::unique_lock lock(writer.mu);
      REQUIRE(writer.cv.wait_for(lock, 20s, [&] { return writer.waiting == 8; }));
    }
    RawHttpClient late;
    REQUIRE(late.connect("127.0.0.1", api->port()));
    const std::string refused = late.response(20s);
    INFO(refused);
    CHECK(late.status(refused) == 503);
    CHECK(refused.find("Retry-After: 1") != std::string::npos);
    CHECK(json::parse(bodyOf(refused))["error"]["code"] == "busy");
    CHECK(late.closedByServer(20s));
    CHECK(metric(*api, "omniedge_http_connections_refused_total{reason=\"connections\"}") == 1);
    {
      std::lock_guard lock(writer.mu);
      writer.open = true;
    }
    writer.cv.notify_all();
    for (RawHttpClient& c : busy) {
      CHECK(c.status(c.response(20s)) == 202);
    }
  }
  {
    std::lock_guard lock(writer.mu);
    writer.open = true;
  }
  writer.cv.notify_all();
}

TEST_CASE("oversized heads and too many header fields get 431, a huge request line 414",
          "[integration][kiosk][abuse]") {
  RecordingWriter writer;
  auto api = startApi({}, writer);
  REQUIRE(api);

  SECTION("one header field larger than the head may be") {
    RawHttpClient c;
    REQUIRE(c.connect("127.0.0.1", api->port()));
    REQUIRE(c.send("GET /v1/health HTTP/1.1\r\nX-Big: " + std::string(20000, 'x') + "\r\n\r\n"));
    const std::string answer = c.response(20s);
    CHECK(c.status(answer) == 431);
    const json e = json::parse(bodyOf(answer))["error"];
    CHECK(e["code"] == "headers_too_large");
    CHECK_THAT(e["message"].get<std::string>(), Catch::Contains("16384 bytes"));
  }
  SECTION("more header fields than allowed") {
    std::string request = "GET /v1/health HTTP/1.1\r\n";
    for (int i = 0; i < 100; ++i) {
      request += "X-H" + std::to_string(i) + ": v\r\n";
    }
    RawHttpClient c;
    REQUIRE(c.connect("127.0.0.1", api->port()));
    REQUIRE(c.send(request + "\r\n"));
    const std::string answer = c.response(20s);
    CHECK(c.status(answer) == 431);
    CHECK_THAT(bodyOf(answer), Catch::Contains("more than 64 header fields"));
  }
  SECTION("a request line longer than the head may be") {
    RawHttpClient c;
    REQUIRE(c.connect("127.0.0.1", api->port()));
    REQUIRE(c.send("GET /" + std::string(20000, 'a') + " HTTP/1.1\r\n"));
    CHECK(c.status(c.response(20s)) == 414);
  }
  SECTION("a header line without a colon") {
    RawHttpClient c;
    REQUIRE(c.connect("127.0.0.1", api->port()));
    REQUIRE(c.send("GET /v1/health HTTP/1.1\r\nno colon here\r\n\r\n"));
    CHECK(c.status(c.response(20s)) == 400);
  }
  SECTION("both Content-Length and chunked (request smuggling)") {
    RawHttpClient c;
    REQUIRE(c.connect("127.0.0.1", api->port()));
    REQUIRE(c.send(
        "POST /v1/events HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
    CHECK(c.status(c.response(20s)) == 400);
  }
  RawHttpClient after;
  REQUIRE(after.connect("127.0.0.1", api->port()));
  REQUIRE(after.send(post(R"({"type":"kiosk.view"})")));
  CHECK(after.status(after.response(20s)) == 202);
}

TEST_CASE("a client that never finishes its body gets 408 and is closed, others go on",
          "[integration][kiosk][abuse]") {
  RecordingWriter writer;
  HttpApiOptions options;
  options.body_timeout = 1s;
  options.threads = 1;
  auto api = startApi(options, writer);
  REQUIRE(api);

  RawHttpClient stuck;
  REQUIRE(stuck.connect("127.0.0.1", api->port()));
  REQUIRE(stuck.send(
      "POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
      "[{\"type\":"));
  RawHttpClient other;
  REQUIRE(other.connect("127.0.0.1", api->port()));
  REQUIRE(other.send(post(R"({"type":"kiosk.view"})")));
  CHECK(other.status(other.response(20s)) == 202);

  const std::string answer = stuck.response(20s);
  INFO(answer);
  CHECK(stuck.status(answer) == 408);
  CHECK(json::parse(bodyOf(answer))["error"]["code"] == "timeout");
  CHECK(stuck.closedByServer(20s));
  CHECK(writer.events().size() == 1);
  CHECK(metric(*api, "omniedge_http_connections_closed_total{reason=\"body_timeout\"}") == 1);
}

TEST_CASE("the lockout table stays bounded while addresses rotate, a valid token always passes",
          "[integration][kiosk][abuse][auth]") {
  RecordingWriter writer;
  HttpApiOptions options;
  options.tokens = {{kToken}};
  options.max_tracked_addresses = 16;
  auto api = startApi(options, writer);
  REQUIRE(api);

  SECTION("50 addresses guessing once each") {
    for (int host = 10; host < 60; ++host) {
      RawHttpClient c;
      REQUIRE(c.connect("127.0.0.1", api->port(), "127.0.0." + std::to_string(host)));
      REQUIRE(c.send(get("/v1/health", "guess")));
      CHECK(c.status(c.response(20s)) == 401);
      CHECK(api->trackedAddresses() <= 16);
    }
    CHECK(api->trackedAddresses() == 16);
    CHECK(metric(*api, "omniedge_http_auth_tracked_addresses") == 16);
    CHECK(metric(*api, "omniedge_http_auth_failures_total") == 50);
  }
  SECTION("an address locked out after 5 failures: 429 for guesses, in for the valid token") {
    RawHttpClient c;
    REQUIRE(c.connect("127.0.0.1", api->port(), "127.0.0.200"));
    for (int i = 0; i < 5; ++i) {
      REQUIRE(c.send(get("/v1/health", "guess-" + std::to_string(i))));
      CHECK(c.status(c.response(20s)) == 401);
    }
    REQUIRE(c.send(get("/v1/health", "guess-5")));
    const std::string locked = c.response(20s);
    CHECK(c.status(locked) == 429);
    CHECK(locked.find("Retry-After: ") != std::string::npos);
    REQUIRE(c.send(get("/v1/health", kToken)));
    CHECK(c.status(c.response(20s)) == 200);
    REQUIRE(c.send(
        post(R"({"type":"kiosk.view"})", std::string("Authorization: Bearer ") + kToken + "\r\n")));
    CHECK(c.status(c.response(20s)) == 202);
    CHECK(metric(*api, "omniedge_http_auth_lockouts_total") == 1);
    // Another address is not locked out by it.
    RawHttpClient neighbour;
    REQUIRE(neighbour.connect("127.0.0.1", api->port(), "127.0.0.201"));
    REQUIRE(neighbour.send(get("/v1/health", "guess")));
    CHECK(neighbour.status(neighbour.response(20s)) == 401);
  }
}

TEST_CASE("the lockout works on IPv6 too, and still lets a valid token in",
          "[integration][kiosk][abuse][auth]") {
  RecordingWriter writer;
  HttpApiOptions options;
  options.host = "::1";
  options.tokens = {{kToken}};
  auto api = startApi(options, writer);
  if (!api) {
    WARN("no IPv6 loopback here: skipped");
    return;
  }
  RawHttpClient c;
  REQUIRE(c.connect("::1", api->port()));
  for (int i = 0; i < 5; ++i) {
    REQUIRE(c.send(get("/metrics", "guess-" + std::to_string(i))));
    CHECK(c.status(c.response(20s)) == 401);
  }
  REQUIRE(c.send(get("/metrics", "guess")));
  CHECK(c.status(c.response(20s)) == 429);
  REQUIRE(c.send(get("/v1/health", kToken)));
  CHECK(c.status(c.response(20s)) == 200);
}

TEST_CASE("a chunk size near 2^64 is refused 413 and cannot make the body grow without bound",
          "[integration][kiosk]") {
  // The limits were once checked as sums (body so far + size): 1 + 0xffffffffffffffff wraps to
  // 0, passed both the body and the buffered-bytes limits, and the server then appended
  // whatever the client sent for as long as it sent it.
  RecordingWriter writer;
  HttpApiOptions options;
  options.max_body_bytes = 4096;
  auto api = startApi(options, writer);
  REQUIRE(api);
  for (const char* size : {"ffffffffffffffff", "fffffffffffffffe", "fffffffffffff000"}) {
    INFO("chunk size " << size);
    RawHttpClient c;
    REQUIRE(c.connect("127.0.0.1", api->port()));
    REQUIRE(c.send(std::string("POST /v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "1\r\n[\r\n") +
                   size + "\r\n" + std::string(8192, ' ')));
    const std::string answer = c.response(20s);
    CHECK(c.status(answer) == 413);
    CHECK_THAT(bodyOf(answer), Catch::Contains("the body exceeds 4096 bytes"));
  }
  CHECK(writer.events().empty());
  // Nothing is left reserved: a request of the full size is still taken.
  RawHttpClient c;
  REQUIRE(c.connect("127.0.0.1", api->port()));
  REQUIRE(c.send(post(R"({"type":"kiosk.after"})")));
  CHECK(c.status(c.response(20s)) == 202);
}

TEST_CASE("the server reads chunked, pipelined and gzip-encoded requests", "[integration][kiosk]") {
  RecordingWriter writer;
  auto api = startApi({}, writer);
  REQUIRE(api);
  RawHttpClient c;
  REQUIRE(c.connect("127.0.0.1", api->port()));

  SECTION("chunked, with an extension and a trailer") {
    REQUIRE(
        c.send("POST /v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5;ext=1\r\n{\"typ\r\n"
               "10\r\ne\":\"kiosk.view\"}\r\n"
               "0\r\nX-Trailer: 1\r\n\r\n"));
    CHECK(c.status(c.response(20s)) == 202);
    REQUIRE(writer.events().size() == 1);
  }
  SECTION("two requests in one send, answered in order on the same connection") {
    REQUIRE(c.send(post(R"({"type":"kiosk.first"})") + post(R"({"type":"kiosk.second"})") +
                   get("/v1/health", "")));
    CHECK(c.status(c.response(20s)) == 202);
    CHECK(c.status(c.response(20s)) == 202);
    CHECK(c.status(c.response(20s)) == 200);
    REQUIRE(writer.events().size() == 2);
    CHECK(writer.events()[0].type == "kiosk.first");
    CHECK(writer.events()[1].type == "kiosk.second");
  }
  SECTION("Content-Encoding: gzip") {
    const std::string plain = R"({"type":"kiosk.zipped"})";
    std::string zipped(256, '\0');
    z_stream zs{};
    REQUIRE(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(plain.data()));
    zs.avail_in = static_cast<uInt>(plain.size());
    zs.next_out = reinterpret_cast<Bytef*>(zipped.data());
    zs.avail_out = static_cast<uInt>(zipped.size());
    REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    zipped.resize(zs.total_out);
    deflateEnd(&zs);
    REQUIRE(c.send(post(zipped, "Content-Encoding: gzip\r\n")));
    CHECK(c.status(c.response(20s)) == 202);
    REQUIRE(writer.events().size() == 1);
    CHECK(writer.events()[0].type == "kiosk.zipped");

    REQUIRE(c.send(post(plain, "Content-Encoding: br\r\n")));
    const std::string refused = c.response(20s);
    CHECK(c.status(refused) == 415);
    CHECK_THAT(bodyOf(refused), Catch::Contains("Content-Encoding br is not supported"));
  }
}

}  // namespace
}  // namespace omniedge::kiosk
