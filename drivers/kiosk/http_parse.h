// The pure part of the kiosk HTTP server's request parsing: the request head, read apart from
// the socket, deadlines and buffers (http_server.cpp finds where a head ends and runs this on
// it). Its own header so that the fuzz target tools/fuzz/http_request_fuzz.cpp and tests can
// reach it without a server.
#pragma once

#include <cstddef>
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

}  // namespace omniedge::kiosk
