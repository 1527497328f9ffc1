// libFuzzer target: the kiosk HTTP server's request path without a socket
// (drivers/kiosk/http_parse.h parseRequestHead, then HttpServer::decodeBody on what follows the
// head, with the request's Content-Encoding). The chunked framing and the search for the head's
// end stay inside the server's event loop (they work on its connection buffer under deadlines);
// tests/drivers/kiosk cover them through real sockets.
// Checks: a refusal has a status the server answers with and a message; an accepted head has a
// method of token characters, a path starting with '/', at most max_headers fields with names
// of token characters and values without CR or NUL, never both framings, and every view inside
// the input; a decoded body stays within its limit, a failure has a known code.
// Run: tools/fuzz/run http_request
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

  // The body as the server hands it to a handler (not de-chunked here), then decoded.
  req.body.assign(rest.substr(0, req.content_length > 0 ? req.content_length : rest.size()));
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
