#include "drivers/kiosk/http_api.h"

#include <httplib.h>

#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/recording_writer.h"

namespace omniedge::kiosk {
namespace {

using nlohmann::json;
using testing::RecordingWriter;

// An HttpApi on 127.0.0.1, an ephemeral port, with a RecordingWriter behind it.
struct Fixture {
  explicit Fixture(HttpApiOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    api = std::make_unique<HttpApi>(
        std::move(options), writer,
        [this] {
          return HealthReport{ready.load(), "buffer not open"};
        },
        [this] { return "omniedge_up 1\n" + api->metricsText(); });
    auto started = api->start();
    REQUIRE(started.has_value());
    REQUIRE(api->port() > 0);
  }

  httplib::Client client() const {
    httplib::Client c("127.0.0.1", api->port());
    c.set_keep_alive(true);
    c.set_tcp_nodelay(true);
    c.set_connection_timeout(5);
    c.set_read_timeout(10);
    return c;
  }

  RecordingWriter writer;
  std::atomic<bool> ready{true};
  std::unique_ptr<HttpApi> api;
};

json errorBody(const httplib::Result& res) { return json::parse(res->body).at("error"); }

// True once `response` holds a whole HTTP response (headers and Content-Length bytes of body).
bool isComplete(const std::string& response) {
  const std::size_t headers_end = response.find("\r\n\r\n");
  if (headers_end == std::string::npos) {
    return false;
  }
  const std::size_t length_at = response.find("Content-Length: ");
  const std::size_t length =
      length_at < headers_end ? std::stoul(response.substr(length_at + 16)) : 0;
  return response.size() >= headers_end + 4 + length;
}

// Sends `request` as is on a new connection to 127.0.0.1:port and returns the first response.
// For what httplib::Client cannot send: no Content-Type, Expect: 100-continue, garbage.
std::string rawExchange(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    std::array<char, 4096> buffer{};
    while (!isComplete(response)) {
      const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
      if (n <= 0) {
        break;
      }
      response.append(buffer.data(), static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return response;
}

TEST_CASE("POST /v1/events answers 202 with the ids once the writer took them",
          "[integration][kiosk]") {
  Fixture f;
  auto c = f.client();

  SECTION("a single event") {
    auto res = c.Post("/v1/events", R"({"type":"kiosk.view","id":"given-1"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 202);
    CHECK(res->get_header_value("Content-Type") == "application/json");
    const json body = json::parse(res->body);
    CHECK(body["accepted"] == 1);
    CHECK(body["ids"] == json::array({"given-1"}));
    REQUIRE(f.writer.events().size() == 1);
    CHECK(f.writer.events()[0].type == "kiosk.view");
  }
  SECTION("an array, on a kept-alive connection, twice") {
    for (int round = 0; round < 2; ++round) {
      auto res = c.Post("/v1/events", R"([{"type":"kiosk.a"},{"type":"kiosk.c","data":{"x":1}}])",
                        "application/json; charset=utf-8");
      REQUIRE(res);
      CHECK(res->status == 202);
      const json body = json::parse(res->body);
      CHECK(body["accepted"] == 2);
      CHECK(body["ids"].size() == 2);
    }
    CHECK(f.writer.events().size() == 4);
    CHECK(f.writer.events()[1].data_json == R"({"x":1})");
  }
  SECTION("without a Content-Type") {
    const std::string body = R"({"type":"kiosk.a"})";
    const std::string response =
        rawExchange(f.api->port(),
                    "POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    "Content-Length: " +
                        std::to_string(body.size()) + "\r\n\r\n" + body);
    CHECK(response.rfind("HTTP/1.1 202", 0) == 0);
    CHECK(f.writer.events().size() == 1);
  }
}

TEST_CASE("bad events get 400 naming the field, and nothing of them is taken",
          "[integration][kiosk]") {
  Fixture f;
  auto c = f.client();

  SECTION("a single object: the field reads without the index") {
    auto res = c.Post("/v1/events", R"({"id":"x"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    const json e = errorBody(res);
    CHECK(e["code"] == "invalid");
    CHECK(e["field"] == "type");
    CHECK(e["message"] == "type is required");
  }
  SECTION("an array: the field keeps the index") {
    auto res = c.Post("/v1/events", R"([{"type":"kiosk.a"},{"type":3}])", "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    const json e = errorBody(res);
    CHECK(e["code"] == "invalid");
    CHECK(e["field"] == "[1].type");
  }
  SECTION("malformed JSON") {
    auto res = c.Post("/v1/events", R"({"type":)", "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(errorBody(res)["code"] == "invalid_json");
  }
  SECTION("the writer's own validation") {
    f.writer.failNextAppend(
        makeError("invalid", "[0].type does not match the pattern", "[0].type"));
    auto res = c.Post("/v1/events", R"({"type":"NOPE"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(errorBody(res)["field"] == "type");
  }
  SECTION("a content type that cannot be JSON is 415") {
    auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/xml");
    REQUIRE(res);
    CHECK(res->status == 415);
    CHECK(errorBody(res)["code"] == "unsupported_media_type");
  }
  CHECK(f.writer.events().empty());
}

TEST_CASE("curl's default form content type is read as JSON", "[integration][kiosk]") {
  Fixture f;
  auto c = f.client();
  auto res = c.Post("/v1/events", R"({"type":"kiosk.view"})", "application/x-www-form-urlencoded");
  REQUIRE(res);
  CHECK(res->status == 202);
  CHECK(f.writer.events().size() == 1);
}

TEST_CASE("too large: bodies and event counts over the limits get 413", "[integration][kiosk]") {
  HttpApiOptions options;
  options.max_body_bytes = 1024;
  options.max_events_per_request = 3;
  Fixture f(options);
  auto c = f.client();
  const std::string big = R"({"type":"kiosk.a","data":{"pad":")" + std::string(4000, 'x') + "\"}}";

  SECTION("by Content-Length") {
    auto res = c.Post("/v1/events", big, "application/json");
    REQUIRE(res);
    CHECK(res->status == 413);
    CHECK(errorBody(res)["code"] == "too_large");
  }
  SECTION("chunked, without a Content-Length") {
    std::size_t sent = 0;
    auto res = c.Post(
        "/v1/events",
        [&](std::size_t, httplib::DataSink& sink) {
          if (sent < 20000) {
            sink.write(std::string(500, ' ').data(), 500);  // JSON whitespace
            sent += 500;
          } else {
            sink.done();
          }
          return true;
        },
        "application/json");
    REQUIRE(res);
    CHECK(res->status == 413);
  }
  SECTION("Expect: 100-continue is refused before the body is sent") {
    const std::string response =
        rawExchange(f.api->port(),
                    "POST /v1/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n");
    CAPTURE(response);
    CHECK(response.rfind("HTTP/1.1 413", 0) == 0);
    CHECK(response.find(R"("code":"too_large")") != std::string::npos);
  }
  SECTION("more events than allowed in one request") {
    auto res =
        c.Post("/v1/events",
               R"([{"type":"kiosk.a"},{"type":"kiosk.a"},{"type":"kiosk.a"},{"type":"kiosk.a"}])",
               "application/json");
    REQUIRE(res);
    CHECK(res->status == 413);
  }
  SECTION("the writer says too_large") {
    f.writer.failNextAppend(makeError("too_large", "[0].data is over 64 KiB", "[0].data"));
    auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 413);
    CHECK(errorBody(res)["field"] == "data");
  }
  // The server is still there, and the same connection still works.
  auto again = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
  REQUIRE(again);
  CHECK(again->status == 202);
  CHECK(f.writer.events().size() == 1);
}

TEST_CASE("backpressure and buffer failures map to 503 with Retry-After and 500",
          "[integration][kiosk]") {
  HttpApiOptions options;
  options.retry_after_s = 7;
  Fixture f(options);
  auto c = f.client();

  SECTION("full") {
    f.writer.failNextAppend(makeError("full", "the buffer is full"));
    auto res = c.Post("/v1/events", R"({"type":"kiosk.sale"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 503);
    CHECK(res->get_header_value("Retry-After") == "7");
    CHECK(errorBody(res)["code"] == "full");
  }
  SECTION("stopping") {
    f.writer.failNextAppend(makeError("stopping", "the agent is stopping"));
    auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 503);
    CHECK(res->get_header_value("Retry-After") == "7");
  }
  SECTION("io") {
    f.writer.failNextAppend(makeError("io", "disk I/O error"));
    auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 500);
    CHECK(errorBody(res)["code"] == "io");
  }
  // The next one goes through.
  auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
  REQUIRE(res);
  CHECK(res->status == 202);
}

TEST_CASE("with tokens, every request needs a valid bearer token", "[integration][kiosk]") {
  HttpApiOptions options;
  options.tokens = {{"old-token"}, {"s3cret-token"}};
  Fixture f(options);
  auto c = f.client();

  SECTION("no token: 401 with WWW-Authenticate, nothing taken") {
    auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 401);
    CHECK(res->get_header_value("WWW-Authenticate") == "Bearer");
    CHECK(errorBody(res)["code"] == "unauthorized");
    auto health = c.Get("/v1/health");
    REQUIRE(health);
    CHECK(health->status == 401);
    CHECK(f.writer.appendCalls() == 0);
  }
  SECTION("a wrong token: 401") {
    c.set_bearer_token_auth("s3cret-tokem");
    auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 401);
    auto prefix = c.Get("/metrics", {{"Authorization", "Bearer s3cret"}});
    REQUIRE(prefix);
    CHECK(prefix->status == 401);
  }
  SECTION("either configured token: accepted") {
    c.set_bearer_token_auth("s3cret-token");
    auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 202);
    auto other = f.client();
    other.set_bearer_token_auth("old-token");
    auto health = other.Get("/v1/health");
    REQUIRE(health);
    CHECK(health->status == 200);
  }
  SECTION("Expect: 100-continue without a token is refused before the body is sent") {
    const std::string response =
        rawExchange(f.api->port(),
                    "POST /v1/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n");
    CAPTURE(response);
    CHECK(response.rfind("HTTP/1.1 401", 0) == 0);
    CHECK(response.find("WWW-Authenticate: Bearer") != std::string::npos);
  }
  SECTION("5 failures from one address: 429 with Retry-After, but the right token still works") {
    for (int i = 0; i < 5; ++i) {
      auto res = c.Get("/v1/health", {{"Authorization", "Bearer guess-" + std::to_string(i)}});
      REQUIRE(res);
      CHECK(res->status == 401);
    }
    auto locked = c.Get("/v1/health", {{"Authorization", "Bearer guess-5"}});
    REQUIRE(locked);
    CHECK(locked->status == 429);
    const int retry_after = std::stoi(locked->get_header_value("Retry-After"));
    CHECK(retry_after > 0);
    CHECK(retry_after <= 60);
    CHECK(errorBody(locked)["code"] == "too_many_requests");
    CHECK(f.writer.appendCalls() == 0);

    c.set_bearer_token_auth("s3cret-token");
    auto res = c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json");
    REQUIRE(res);
    CHECK(res->status == 202);
    CHECK(f.writer.events().size() == 1);
  }
}

TEST_CASE("GET /v1/health reports readiness", "[integration][kiosk]") {
  Fixture f;
  auto c = f.client();
  auto ready = c.Get("/v1/health");
  REQUIRE(ready);
  CHECK(ready->status == 200);
  CHECK(json::parse(ready->body) == json{{"status", "ready"}});

  f.ready = false;
  auto not_ready = c.Get("/v1/health");
  REQUIRE(not_ready);
  CHECK(not_ready->status == 503);
  CHECK(json::parse(not_ready->body) ==
        json{{"status", "not_ready"}, {"reason", "buffer not open"}});
}

TEST_CASE("GET /metrics serves Prometheus text with the request counts", "[integration][kiosk]") {
  Fixture f;
  auto c = f.client();
  REQUIRE(c.Post("/v1/events", R"({"type":"kiosk.a"})", "application/json")->status == 202);
  REQUIRE(c.Post("/v1/events", R"({"type":"kiosk.a"},{"type":"kiosk.c"}])", "application/json")
              ->status == 400);
  REQUIRE(c.Get("/nowhere")->status == 404);

  auto res = c.Get("/metrics");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->get_header_value("Content-Type") == "text/plain; version=0.0.4");
  CHECK(res->body.find("omniedge_up 1\n") == 0);
  CHECK(res->body.find("omniedge_http_requests_total{route=\"/v1/events\",code=\"202\"} 1\n") !=
        std::string::npos);
  CHECK(res->body.find("omniedge_http_requests_total{route=\"/v1/events\",code=\"400\"} 1\n") !=
        std::string::npos);
  CHECK(res->body.find("omniedge_http_requests_total{route=\"other\",code=\"404\"} 1\n") !=
        std::string::npos);
  CHECK(res->body.find("omniedge_http_events_accepted_total 1\n") != std::string::npos);
  CHECK(f.api->metricsText().find("route=\"/metrics\",code=\"200\"} 1\n") != std::string::npos);
}

TEST_CASE("unknown paths are 404 and wrong methods 405, as JSON", "[integration][kiosk]") {
  Fixture f;
  auto c = f.client();
  auto missing = c.Post("/v1/nope", R"({"type":"kiosk.a"})", "application/json");
  REQUIRE(missing);
  CHECK(missing->status == 404);
  CHECK(errorBody(missing)["code"] == "not_found");

  auto get_events = c.Get("/v1/events");
  REQUIRE(get_events);
  CHECK(get_events->status == 405);
  CHECK(errorBody(get_events)["code"] == "method_not_allowed");

  auto post_health = c.Post("/v1/health", "{}", "application/json");
  REQUIRE(post_health);
  CHECK(post_health->status == 405);
  CHECK(f.writer.appendCalls() == 0);

  const std::string garbage = rawExchange(f.api->port(), "BLAH\r\n\r\n");
  CAPTURE(garbage);
  CHECK(garbage.rfind("HTTP/1.1 400", 0) == 0);
  CHECK(garbage.find(R"("code":"bad_request")") != std::string::npos);
}

TEST_CASE("POST /v1/events takes only the channels the caller may write", "[integration][kiosk]") {
  SECTION("on loopback without tokens: kiosk.* only, the field and the channel named") {
    Fixture f;
    auto c = f.client();
    auto pos = c.Post("/v1/events", R"({"type":"pos.transaction"})", "application/json");
    REQUIRE(pos);
    CHECK(pos->status == 400);
    json e = errorBody(pos);
    CHECK(e["code"] == "channel_not_allowed");
    CHECK(e["field"] == "type");
    CHECK_THAT(e["message"].get<std::string>(), Catch::Contains("pos.transaction") &&
                                                    Catch::Contains("/v1/pos/transactions") &&
                                                    Catch::Contains("may write kiosk.*"));

    auto agent = c.Post("/v1/events", R"([{"type":"kiosk.view"},{"type":"agent.started"}])",
                        "application/json");
    REQUIRE(agent);
    CHECK(agent->status == 400);
    e = errorBody(agent);
    CHECK(e["field"] == "[1].type");
    CHECK_THAT(e["message"].get<std::string>(), Catch::Contains("only from the agent"));

    auto unknown = c.Post("/v1/events", R"({"type":"foo.bar"})", "application/json");
    REQUIRE(unknown);
    CHECK(unknown->status == 400);
    CHECK_THAT(errorBody(unknown)["message"].get<std::string>(),
               Catch::Contains("'foo' is not a channel"));

    auto beacon = c.Post("/v1/events", R"({"type":"beacon.enter"})", "application/json");
    REQUIRE(beacon);
    CHECK(beacon->status == 400);
    CHECK(f.writer.appendCalls() == 0);

    auto kiosk = c.Post("/v1/events", R"({"type":"kiosk.view"})", "application/json");
    REQUIRE(kiosk);
    CHECK(kiosk->status == 202);
  }
  SECTION("a token granted beacon.* may write it; a plain token may not") {
    HttpApiOptions options;
    options.tokens = {{"plain-token"}, {"gateway-token", {"kiosk", "beacon"}}};
    Fixture f(options);
    auto plain = f.client();
    plain.set_bearer_token_auth("plain-token");
    auto refused = plain.Post("/v1/events", R"({"type":"beacon.enter"})", "application/json");
    REQUIRE(refused);
    CHECK(refused->status == 400);
    CHECK_THAT(errorBody(refused)["message"].get<std::string>(),
               Catch::Contains("may not write beacon.*"));
    auto gateway = f.client();
    gateway.set_bearer_token_auth("gateway-token");
    auto taken = gateway.Post("/v1/events", R"([{"type":"beacon.enter"},{"type":"kiosk.view"}])",
                              "application/json");
    REQUIRE(taken);
    CHECK(taken->status == 202);
    auto pos = gateway.Post("/v1/events", R"({"type":"pos.transaction"})", "application/json");
    REQUIRE(pos);
    CHECK(pos->status == 400);
    CHECK_THAT(errorBody(pos)["message"].get<std::string>(),
               Catch::Contains("may write kiosk.*, beacon.*"));
    REQUIRE(f.writer.events().size() == 2);
    CHECK(f.writer.events()[0].type == "beacon.enter");
  }
}

TEST_CASE("customer routes read keys in their forms, hex in any case", "[integration][kiosk]") {
  const std::string hash(64, 'c');
  HttpApiOptions options;
  std::vector<std::string> asked;
  std::mutex asked_mu;
  options.customer_lookup = [&](const std::string& key) -> std::optional<std::string> {
    std::lock_guard lock(asked_mu);
    asked.push_back(key);
    if (key == "email_sha256:" + hash) {
      return R"({"id":"c-1","segments":["vip"]})";
    }
    return std::nullopt;
  };
  std::map<std::string, json> carts;
  options.cart_lookup = [&](const std::string& key) -> std::optional<std::string> {
    std::lock_guard lock(asked_mu);
    auto found = carts.find(key);
    return found == carts.end() ? std::nullopt : std::optional<std::string>(found->second.dump());
  };
  options.cart_add = [&](const std::string& key, const std::string& item) -> Result<std::string> {
    std::lock_guard lock(asked_mu);
    json& cart = carts[key];
    cart["items"].push_back(json::parse(item));
    return cart.dump();
  };
  Fixture f(options);
  auto c = f.client();

  SECTION("an upper-case hash finds the profile") {
    auto res = c.Get("/v1/customers/email_sha256:" + std::string(64, 'C'));
    REQUIRE(res);
    CHECK(res->status == 200);
    CHECK(json::parse(res->body)["id"] == "c-1");
    CHECK(asked.back() == "email_sha256:" + hash);
  }
  SECTION("a key of no known form is a 400 naming the forms") {
    auto res = c.Get("/v1/customers/bogus");
    REQUIRE(res);
    CHECK(res->status == 400);
    const json e = errorBody(res);
    CHECK(e["field"] == "key");
    CHECK_THAT(e["message"].get<std::string>(),
               Catch::Contains("'bogus' is not a customer key") && Catch::Contains("loyalty:ID"));
    CHECK(asked.empty());
  }
  SECTION("an unknown but well-formed key is a 404") {
    auto res = c.Get("/v1/customers/loyalty:NOBODY");
    REQUIRE(res);
    CHECK(res->status == 404);
  }
  SECTION("a cart can start for a customer the cache does not know; kiosk.cart_add goes up") {
    auto added = c.Post("/v1/customers/IBEACON:F7826DA6-4FA2-4E98-8024-BC5B71E0893E:1:2/cart/items",
                        R"({"sku":"SKU-1","qty":2})", "application/json");
    REQUIRE(added);
    CHECK(added->status == 201);
    CHECK(json::parse(added->body)["items"][0]["sku"] == "SKU-1");
    const std::vector<Event> events = f.writer.events();
    REQUIRE(events.size() == 1);
    const Event& e = events[0];
    CHECK(e.type == "kiosk.cart_add");
    CHECK(e.customer.at("beacon") == "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:2");
    auto cart = c.Get("/v1/customers/ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:1:2/cart");
    REQUIRE(cart);
    CHECK(cart->status == 200);
    CHECK(json::parse(cart->body)["items"][0]["qty"] == 2);
  }
  SECTION("metrics label customer routes by template and real status, never by key") {
    REQUIRE(c.Get("/v1/customers/email_sha256:" + hash)->status == 200);
    REQUIRE(c.Get("/v1/customers/loyalty:SECRET-1")->status == 404);
    REQUIRE(c.Get("/v1/customers/loyalty:SECRET-1/cart")->status == 404);
    const std::string text = f.api->metricsText();
    CHECK_THAT(text,
               Catch::Contains(
                   "omniedge_http_requests_total{route=\"/v1/customers/{key}\",code=\"200\"} 1\n"));
    CHECK_THAT(text,
               Catch::Contains(
                   "omniedge_http_requests_total{route=\"/v1/customers/{key}\",code=\"404\"} 1\n"));
    CHECK_THAT(
        text,
        Catch::Contains(
            "omniedge_http_requests_total{route=\"/v1/customers/{key}/cart\",code=\"404\"} 1\n"));
    CHECK(text.find("SECRET") == std::string::npos);
    CHECK(text.find("code=\"-1\"") == std::string::npos);
  }
}

TEST_CASE("GET /v1/health says degraded, with the reason, when producers are refused",
          "[integration][kiosk]") {
  RecordingWriter writer;
  HttpApiOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  HttpApi api(
      options, writer,
      [] {
        return HealthReport{false, "buffer full: new events are refused with 503", true};
      },
      [] { return std::string(); });
  REQUIRE(api.start().has_value());
  httplib::Client c("127.0.0.1", api.port());
  auto res = c.Get("/v1/health");
  REQUIRE(res);
  CHECK(res->status == 503);
  CHECK(json::parse(res->body) ==
        json{{"status", "degraded"}, {"reason", "buffer full: new events are refused with 503"}});
}

TEST_CASE("start refuses what it cannot do safely or at all", "[integration][kiosk]") {
  RecordingWriter writer;
  auto healthy = [] { return HealthReport{true, {}}; };
  auto no_metrics = [] { return std::string(); };

  SECTION("a non-loopback address without tokens") {
    HttpApiOptions options;
    options.host = "0.0.0.0";
    options.port = 0;
    HttpApi api(options, writer, healthy, no_metrics);
    auto started = api.start();
    REQUIRE_FALSE(started.has_value());
    CHECK(started.error().code == "config");
    CHECK(started.error().message.find("0.0.0.0") != std::string::npos);
    CHECK(api.port() == 0);
  }
  SECTION("a port in use, named in the error") {
    HttpApiOptions options;
    options.port = 0;
    HttpApi first(options, writer, healthy, no_metrics);
    REQUIRE(first.start().has_value());
    options.port = first.port();
    HttpApi second(options, writer, healthy, no_metrics);
    auto started = second.start();
    REQUIRE_FALSE(started.has_value());
    CHECK(started.error().code == "io");
    CHECK(started.error().message.find("127.0.0.1:" + std::to_string(first.port())) !=
          std::string::npos);
  }
  SECTION("loopback without tokens, then stop and start again") {
    HttpApiOptions options;
    options.host = "::1";
    options.port = 0;
    HttpApi api(options, writer, healthy, no_metrics);
    REQUIRE(api.start().has_value());
    CHECK_FALSE(api.start().has_value());  // already started
    api.stop();
    api.stop();
    REQUIRE(api.start().has_value());
  }
}

TEST_CASE("a customer who refuses personalization gets no profile or cart answers at the kiosk",
          "[integration][kiosk][consent]") {
  HttpApiOptions options;
  options.customer_lookup = [](const std::string&) -> std::optional<std::string> {
    return R"({"id":"c-1","segments":["vip"],"cart":{"items":[]}})";
  };
  options.personalization_refused = [](const std::string& key) {
    return key == "loyalty:NO-PERS-1";
  };
  Fixture f(options);
  auto c = f.client();
  for (const std::string path :
       {"/v1/customers/loyalty:NO-PERS-1", "/v1/customers/loyalty:NO-PERS-1/cart"}) {
    INFO(path);
    auto res = c.Get(path);
    REQUIRE(res);
    CHECK(res->status == 403);
    const json e = errorBody(res);
    CHECK(e["code"] == "consent");
    CHECK(e["message"] == "this customer does not consent to personalization");
    CHECK(res->body.find("vip") == std::string::npos);
  }
  auto other = c.Get("/v1/customers/loyalty:YES-1");
  REQUIRE(other);
  CHECK(other->status == 200);
}

}  // namespace
}  // namespace omniedge::kiosk
