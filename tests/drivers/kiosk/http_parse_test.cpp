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

namespace omniedge::kiosk {
namespace {

// Runs a chunked body through ChunkedBody in pieces of `piece` bytes, as a socket delivers it.
ChunkedBody::Step dechunk(const std::string& in, std::size_t piece, std::string& body,
                          const ChunkedBody::Limits& limits) {
  ChunkedBody chunks;
  std::string buf;
  ChunkedBody::Step step;
  for (std::size_t at = 0; at < in.size(); at += piece) {
    buf += in.substr(at, piece);
    std::size_t pos = 0;
    do {
      step = chunks.decode(buf, pos, body, limits);
    } while (step.kind == ChunkedBody::Step::Kind::kChunk);
    buf.erase(0, pos);
    if (step.kind != ChunkedBody::Step::Kind::kMore) {
      break;
    }
  }
  return step;
}

TEST_CASE("A chunked body decodes the same whole and byte by byte, within its limits",
          "[unit][kiosk]") {
  using Kind = ChunkedBody::Step::Kind;
  const ChunkedBody::Limits limits{64, 32, 64};
  for (std::size_t piece : {std::size_t{1}, std::size_t{3}, std::size_t{1000}}) {
    INFO("pieces of " << piece);
    std::string body;
    auto step =
        dechunk("5;ext=1\r\nhello\r\n3\r\n, w\r\n0\r\nX-Trailer: 1\r\n\r\n", piece, body, limits);
    CHECK(step.kind == Kind::kDone);
    CHECK(body == "hello, w");

    // A size near 2^64 after a first chunk: once added to the body so far it wrapped to a
    // small number, passed the limit and let the body grow for as long as the client sent.
    body.clear();
    step = dechunk("1\r\n[\r\nffffffffffffffff\r\n" + std::string(200, 'x'), piece, body, limits);
    REQUIRE(step.kind == Kind::kRefused);
    CHECK(step.refusal.status == 413);
    CHECK(step.refusal.message == "the body exceeds 64 bytes");
    CHECK(body == "[");

    body.clear();
    step =
        dechunk("40\r\n" + std::string(64, 'a') + "\r\n1\r\nb\r\n0\r\n\r\n", piece, body, limits);
    CHECK(step.kind == Kind::kRefused);
    CHECK(step.refusal.status == 413);

    body.clear();
    step = dechunk("3\r\nabcX\r\n", piece, body, limits);
    CHECK(step.kind == Kind::kRefused);
    CHECK(step.refusal.message == "malformed chunked body: a chunk's data is not followed by CRLF");

    body.clear();
    step = dechunk("0x3\r\nabc\r\n", piece, body, limits);
    CHECK(step.refusal.message == "malformed chunk size");

    // Too long is too long, whether the line came whole or in pieces.
    body.clear();
    step = dechunk("1;" + std::string(40, 'e') + "\r\na\r\n0\r\n\r\n", piece, body, limits);
    CHECK(step.refusal.status == 400);
    CHECK(step.refusal.message == "a chunk size line is too long");

    body.clear();
    step = dechunk(
        "0\r\nA: " + std::string(25, 'v') + "\r\nB: " + std::string(25, 'v') + "\r\nC: 1\r\n\r\n",
        piece, body, limits);
    CHECK(step.refusal.status == 431);
  }
}

}  // namespace
}  // namespace omniedge::kiosk
