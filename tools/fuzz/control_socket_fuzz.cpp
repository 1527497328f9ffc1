// libFuzzer target: the control socket's protocol without the socket (agent/control_socket.h):
// the bytes a client sends, cut into recv() chunks of a size the input picks, framed by
// frameRequestChunk() as the I/O thread does, then answered by answerControlRequest() with a
// handler that echoes, throws, or answers with bytes that are not UTF-8.
// Checks: the request is exactly the bytes before the first newline (or all of them when the
// client closes), refused iff longer than the limit; every answer is one line of a JSON object
// with "ok", a refusal has an error and the code invalid_request or internal; the handler only
// ever sees objects within the nesting limit.  Run: tools/fuzz/run control_socket
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>

#include "agent/control_socket.h"
#include "agent/ingest/envelope.h"
#include "tools/fuzz/check.h"

namespace {

using nlohmann::json;
constexpr std::size_t kMaxRequest = 1024;
constexpr std::size_t kMaxDepth = 12;

json handler(const json& req) {
  FUZZ_CHECK(req.is_object());
  FUZZ_CHECK(omniedge::jsonNestingWithin(req.dump(), kMaxDepth));
  if (req.contains("throw")) throw std::runtime_error("handler failed on purpose");
  if (req.contains("bytes")) return json{{"ok", true}, {"bytes", std::string("a\xff\xfe z")}};
  return json{{"ok", true}, {"echo", req}};
}

void checkAnswer(const std::string& answer) {
  FUZZ_CHECK(!answer.empty() && answer.back() == '\n');
  FUZZ_CHECK(answer.find('\n') == answer.size() - 1);
  const json a = json::parse(answer, nullptr, false);
  FUZZ_CHECK(a.is_object() && a.contains("ok") && a["ok"].is_boolean());
  if (!a["ok"].get<bool>()) {
    FUZZ_CHECK(a.contains("error") && a["error"].is_string() && !a["error"].empty());
    FUZZ_CHECK(a["code"] == "invalid_request" || a["code"] == "internal");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::size_t chunk_size = 1 + data[0] % 97;
  const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);

  std::string in;
  bool complete = false;
  bool too_large = false;
  for (std::size_t at = 0; at < stream.size() && !complete && !too_large; at += chunk_size) {
    const auto chunk =
        omniedge::frameRequestChunk(in.size(), stream.substr(at, chunk_size), kMaxRequest);
    FUZZ_CHECK(chunk.take <= chunk_size);
    if (chunk.too_large) {
      too_large = true;
      break;
    }
    in.append(stream.substr(at, chunk.take));
    complete = chunk.complete;
  }
  const std::string_view line = stream.substr(0, stream.find('\n'));
  FUZZ_CHECK(too_large == (line.size() > kMaxRequest));
  if (too_large) return 0;
  FUZZ_CHECK(in == line);
  if (in.empty() && !complete) return 0;  // a client that closed without a byte: no answer

  checkAnswer(omniedge::answerControlRequest(in, kMaxDepth, handler));
  return 0;
}
