// libFuzzer target: the kiosk HTTP server's request path without a socket
// (drivers/kiosk/http_parse.h): parseRequestHead, then for a chunked request the ChunkedBody
// framing on what follows the head, then HttpServer::decodeBody with the request's
// Content-Encoding. The search for the head's end stays inside the server's event loop (it works
// on its connection buffer under deadlines); tests/drivers/kiosk cover it through real sockets.
// Checks: a refusal has a status the server answers with and a message; an accepted head has a
// method of token characters, a path starting with '/', at most max_headers fields with names
// of token characters and values without CR or NUL, never both framings, and every view inside
// the input; the chunked framing gives the same outcome (kind, body, bytes used, refusal) fed
// whole and fed in pieces, never a body over its limit; a decoded body stays within its limit,
// a failure has a known code.
// Run: tools/fuzz/run http_request
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "drivers/kiosk/http_parse.h"
#include "drivers/kiosk/http_server.h"
#include "tools/fuzz/check.h"

namespace k = omniedge::kiosk;

namespace {

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

bool token(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && std::string_view("!#$%&'*+-.^_`|~").find(c) == std::string_view::npos) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::string_view in(input);
  // Where the server would cut the head: the first blank line (LF LF or LF CR LF).
  std::size_t end = std::string_view::npos;
  for (std::size_t i = in.find('\n'); i != std::string_view::npos; i = in.find('\n', i + 1)) {
    if (i + 1 < in.size() && in[i + 1] == '\n') {
      end = i + 2;
      break;
    }
    if (i + 2 < in.size() && in[i + 1] == '\r' && in[i + 2] == '\n') {
      end = i + 3;
      break;
    }
  }
  const std::string_view head = in.substr(0, end);
  const std::string_view rest = end == std::string_view::npos ? "" : in.substr(end);

  k::HttpRequest req;
  bool http10 = false;
  constexpr std::size_t kMaxHeaders = 16;
  const auto refusal = k::parseRequestHead(head, kMaxHeaders, req, http10);
  if (refusal) {
    const int s = refusal->status;
    FUZZ_CHECK(s == 400 || s == 417 || s == 431 || s == 501 || s == 505);
    FUZZ_CHECK(!refusal->message.empty());
    return 0;
  }
  FUZZ_CHECK(token(req.method) && inside(req.method, head));
  FUZZ_CHECK(inside(req.target, head) && req.target.starts_with("/"));
  FUZZ_CHECK(req.path.starts_with("/") && req.path.find('\0') == std::string::npos);
  FUZZ_CHECK(req.headers.size() <= kMaxHeaders);
  for (const auto& h : req.headers) {
    FUZZ_CHECK(token(h.name) && inside(h.name, head) && inside(h.value, head));
    FUZZ_CHECK(h.value.find('\r') == std::string_view::npos &&
               h.value.find('\0') == std::string_view::npos &&
               h.value.find('\n') == std::string_view::npos);
  }
  FUZZ_CHECK(!(req.chunked && req.hasHeader("Content-Length")));
  if (http10) FUZZ_CHECK(!req.expect_continue);

  // The body as the server hands it to a handler: de-chunked, or Content-Length bytes.
  if (req.chunked) {
    using Kind = k::ChunkedBody::Step::Kind;
    const k::ChunkedBody::Limits limits{4096, 64, 256};
    // Whole: everything that followed the head at once.
    k::ChunkedBody whole;
    std::size_t used = 0;
    std::string body;
    k::ChunkedBody::Step step;
    do {
      step = whole.decode(rest, used, body, limits);
      FUZZ_CHECK(body.size() <= limits.max_body && used <= rest.size());
    } while (step.kind == Kind::kChunk);
    // In pieces of 1 to 7 bytes, the used part dropped between them, as a socket delivers it.
    k::ChunkedBody cut;
    std::string buf;
    std::string cut_body;
    std::size_t cut_used = 0;
    k::ChunkedBody::Step cut_step;
    const std::size_t piece = 1 + size % 7;
    for (std::size_t at = 0;;) {
      buf.append(rest.substr(std::min(at, rest.size()), piece));
      at += piece;
      std::size_t pos = 0;
      do {
        cut_step = cut.decode(buf, pos, cut_body, limits);
        FUZZ_CHECK(cut_body.size() <= limits.max_body);
      } while (cut_step.kind == Kind::kChunk);
      buf.erase(0, pos);
      cut_used += pos;
      if (cut_step.kind != Kind::kMore || at >= rest.size()) break;
    }
    FUZZ_CHECK(step.kind == cut_step.kind);
    if (step.kind == Kind::kRefused) {
      const int s = step.refusal.status;
      FUZZ_CHECK(s == 400 || s == 413 || s == 431);
      FUZZ_CHECK(!step.refusal.message.empty());
      FUZZ_CHECK(s == cut_step.refusal.status && step.refusal.message == cut_step.refusal.message);
      return 0;
    }
    if (step.kind != Kind::kDone) return 0;
    FUZZ_CHECK(body == cut_body && used == cut_used);
    req.body = std::move(body);
  } else {
    req.body.assign(rest.substr(0, req.content_length > 0 ? req.content_length : rest.size()));
  }
  const std::size_t max = 4096;
  const auto decoded = k::HttpServer::decodeBody(req, max);
  if (decoded) {
    FUZZ_CHECK(req.body.size() <= max);
  } else {
    const auto& c = decoded.error().code;
    FUZZ_CHECK(c == "unsupported_media_type" || c == "too_large" || c == "invalid");
    FUZZ_CHECK(!decoded.error().message.empty());
  }
  return 0;
}
