// The pure part of the kiosk HTTP server's request parsing: the request head, read apart from
// the socket, deadlines and buffers (http_server.cpp finds where a head ends and runs this on
// it). Its own header so that the fuzz target tools/fuzz/http_request_fuzz.cpp and tests can
// reach it without a server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "drivers/kiosk/http_server.h"

namespace omniedge::kiosk {

/// Why a request head is refused: the status to answer (400 malformed, 417 an Expect other than
/// 100-continue, 431 too many header fields, 501 a Transfer-Encoding other than chunked, 505 an
/// HTTP version other than 1.0 and 1.1) and the message for the client.
struct HeadRefusal {
  int status = 400;
  std::string message;
};

/// Parses a request head: the request line and the header fields up to the blank line that ends
/// them (`head` may hold that blank line; bytes after it are never read). Fills `req`'s method,
/// target, path (percent-decoded, without the query), headers, keep_alive, expect_continue,
/// chunked and content_length (body, route and caller are reset), and `http10`; the views in
/// `req` point into `head`, which must outlive them. At most `max_headers` header fields.
/// Refuses CR or NUL inside a line, a target that is not a path, Content-Length that is not one
/// decimal number (or several that differ), and Content-Length with chunked together (request
/// smuggling). Pure: no I/O, no state.
/// Thread: any. Never throws (but bad_alloc). Returns nullopt when the head is accepted.
std::optional<HeadRefusal> parseRequestHead(std::string_view head, std::size_t max_headers,
                                            HttpRequest& req, bool& http10);

/// The chunked body framing (RFC 9112 §7.1) apart from the socket: the state of one body being
/// read, and the step that reads what has come so far. The server keeps one per connection and
/// feeds it its input buffer; tools/fuzz/http_request_fuzz.cpp feeds it alone, in pieces.
struct ChunkedBody {
  enum class Phase { kSize, kData, kDataEnd, kTrailer };
  struct Limits {
    std::size_t max_body = 0;     // the decoded body, all chunks together (413 beyond)
    std::size_t max_line = 1024;  // a chunk size line or a trailer line (400 beyond)
    std::size_t max_trailer = 0;  // the trailer's lines together (431 beyond)
  };
  struct Step {
    enum class Kind { kMore, kChunk, kDone, kRefused };
    Kind kind = Kind::kMore;
    std::uint64_t size = 0;  // kChunk: a chunk of this size begins; it fits max_body
    HeadRefusal refusal;     // kRefused: 400, 413 or 431 and the message for the client
  };

  Phase phase = Phase::kSize;
  std::uint64_t left = 0;  // bytes of the current chunk still to come
  std::size_t trailer_bytes = 0;

  /// Reads `in` from `pos` (advanced past what it used), appending chunk data to `body`. Stops
  /// when the input is used up or holds only part of a line (kMore: call again with the unused
  /// rest and what came after it), after each chunk size line (kChunk: the caller may refuse
  /// the chunk for a budget of its own, else calls again), at the blank line that ends the
  /// trailer (kDone; `pos` is just after it), or at the first error (kRefused): a line that is
  /// not a size, data not followed by CRLF, a line over max_line, a trailer over max_trailer,
  /// a body over max_body. `body` never grows beyond max_body, and the outcome does not depend
  /// on how the input was cut. Pure. Never throws (but bad_alloc).
  Step decode(std::string_view in, std::size_t& pos, std::string& body, const Limits& limits);
};

}  // namespace omniedge::kiosk
