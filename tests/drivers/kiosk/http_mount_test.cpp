// Routes mounted on the kiosk API (HttpApi::mount: how the web console is served).
#include <httplib.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <memory>
#include <string>

#include "drivers/kiosk/http_api.h"
#include "tests/support/recording_writer.h"

namespace omniedge::kiosk {
namespace {

using testing::RecordingWriter;

constexpr const char* kToken = "mount-token-0123456789";

struct Mounted {
  explicit Mounted(HttpApiOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    api = std::make_unique<HttpApi>(
        std::move(options), writer,
        [] {
          return HealthReport{true, {}, false};
        },
        [this] { return api->metricsText(); });
    auto mounted = api->mount("/console", [this](const HttpRequest& req, HttpResponse& res) {
      ++calls;
      res.status = 200;
      res.set_content("page for " + req.path, "text/plain");
    });
    REQUIRE(mounted.has_value());
    REQUIRE(api->start().has_value());
  }

  httplib::Client client() const {
    httplib::Client c("127.0.0.1", api->port());
    c.set_connection_timeout(5);
    c.set_read_timeout(10);
    return c;
  }

  RecordingWriter writer;
  std::atomic<int> calls{0};
  std::unique_ptr<HttpApi> api;
};

TEST_CASE("a mounted route serves GET and HEAD on its prefix and the paths under it",
          "[integration][kiosk][console]") {
  Mounted m;
  auto c = m.client();
  auto page = c.Get("/console");
  REQUIRE(page);
  CHECK(page->status == 200);
  CHECK(page->body == "page for /console");
  auto sub = c.Get("/console/status.json");
  REQUIRE(sub);
  CHECK(sub->body == "page for /console/status.json");
  auto head = c.Head("/console");
  REQUIRE(head);
  CHECK(head->status == 200);

  SECTION("other methods get 405, other paths 404, and the handler never sees them") {
    const int before = m.calls.load();
    auto post = c.Post("/console", "{}", "application/json");
    REQUIRE(post);
    CHECK(post->status == 405);
    CHECK(post->get_header_value("Allow") == "GET, HEAD");
    auto other = c.Get("/consoles");
    REQUIRE(other);
    CHECK(other->status == 404);
    CHECK(m.calls.load() == before);
  }
  SECTION("its requests are counted under its prefix, never the path asked for") {
    auto metrics = c.Get("/metrics");
    REQUIRE(metrics);
    CHECK(metrics->body.find("route=\"/console\",code=\"200\"") != std::string::npos);
    CHECK(metrics->body.find("status.json") == std::string::npos);
  }
}

TEST_CASE("a route cannot be mounted over the API's own, twice, or once serving",
          "[unit][kiosk][console]") {
  RecordingWriter writer;
  HttpApiOptions options;
  options.port = 0;
  HttpApi api(options, writer, {}, {});
  auto handler = [](const HttpRequest&, HttpResponse&) {};
  for (const char* bad : {"/v1", "/v1/console", "/metrics", "console", "/", "/console/", ""}) {
    INFO(bad);
    auto r = api.mount(bad, handler);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "config");
  }
  REQUIRE(api.mount("/console", handler).has_value());
  CHECK(api.mount("/console", handler).error().code == "config");
  REQUIRE(api.start().has_value());
  CHECK(api.mount("/other", handler).error().code == "invalid_state");
}

TEST_CASE("with tokens, a mounted route asks a browser for the token and takes it as Basic",
          "[integration][kiosk][console]") {
  HttpApiOptions options;
  options.tokens = {ApiToken{kToken}};
  Mounted m(options);
  auto c = m.client();

  auto none = c.Get("/console");
  REQUIRE(none);
  CHECK(none->status == 401);
  CHECK(none->get_header_value("WWW-Authenticate").rfind("Basic realm=", 0) == 0);
  CHECK(m.calls.load() == 0);

  httplib::Headers basic = {{"Authorization", "Basic bWFuYWdlcjptb3VudC10b2tlbi0wMTIzNDU2Nzg5"}};
  auto with_basic = c.Get("/console", basic);  // manager:mount-token-0123456789
  REQUIRE(with_basic);
  CHECK(with_basic->status == 200);
  auto with_bearer = c.Get("/console", {{"Authorization", std::string("Bearer ") + kToken}});
  REQUIRE(with_bearer);
  CHECK(with_bearer->status == 200);

  SECTION("a wrong Basic password is refused like a wrong token") {
    auto wrong = c.Get("/console", {{"Authorization", "Basic bWFuYWdlcjp3cm9uZw=="}});
    REQUIRE(wrong);
    CHECK(wrong->status == 401);
  }
  SECTION("the API's own routes still take the bearer token only") {
    auto health = c.Get("/v1/health", basic);
    REQUIRE(health);
    CHECK(health->status == 401);
    CHECK(health->get_header_value("WWW-Authenticate") == "Bearer");
  }
}

}  // namespace
}  // namespace omniedge::kiosk
