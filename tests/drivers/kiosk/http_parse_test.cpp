// parseRequestHead (drivers/kiosk/http_parse.h): the request head parser the server runs and the
// fuzz target http_request runs alone (tools/fuzz/).
#include "drivers/kiosk/http_parse.h"

#include <catch2/catch.hpp>
#include <string>

namespace omniedge::kiosk {
namespace {

TEST_CASE("A request head parses into method, path, headers and framing without a server",
          "[unit][kiosk]") {
  const std::string head =
      "POST /v1/events%2Fx?dry=1 HTTP/1.1\r\nHost: kiosk\r\nContent-Length: 12\r\n"
      "Connection: close\r\n\r\nbody bytes are not read";
  HttpRequest req;
  bool http10 = true;
  REQUIRE_FALSE(parseRequestHead(head, 64, req, http10).has_value());
  CHECK(req.method == "POST");
  CHECK(req.target == "/v1/events%2Fx?dry=1");
  CHECK(req.path == "/v1/events/x");
  CHECK(req.header("host") == "kiosk");
  CHECK(req.content_length == 12);
  CHECK_FALSE(req.keep_alive);
  CHECK_FALSE(http10);
  CHECK(req.headers.size() == 3);
}

TEST_CASE("A request head is refused with the status the server answers and why", "[unit][kiosk]") {
  HttpRequest req;
  bool http10 = false;
  auto refused = [&](const std::string& head, std::size_t max_headers = 64) {
    auto r = parseRequestHead(head, max_headers, req, http10);
    REQUIRE(r.has_value());
    return *r;
  };
  CHECK(refused("GET /a HTTP/2.0\r\n\r\n").status == 505);
  CHECK(refused("GET a HTTP/1.1\r\n\r\n").status == 400);
  CHECK(refused("GET /a HTTP/1.1\r\nX: 1\r\nY: 2\r\n\r\n", 1).status == 431);
  CHECK(refused("GET /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").status == 501);
  CHECK(refused("GET /a HTTP/1.1\r\nExpect: later\r\n\r\n").status == 417);
  const HeadRefusal both =
      refused("POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
  CHECK(both.status == 400);
  CHECK(both.message == "Content-Length and Transfer-Encoding: chunked together");
}

}  // namespace
}  // namespace omniedge::kiosk
