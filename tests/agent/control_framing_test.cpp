// frameRequestChunk and answerControlRequest (agent/control_socket.h): the control socket's
// protocol without the socket, as the server and the fuzz target control_socket run it.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "agent/control_socket.h"

namespace omniedge {
namespace {

using nlohmann::json;

TEST_CASE("A control request ends at the first newline, however the bytes are cut", "[unit][cli]") {
  const std::string sent = "{\"cmd\":\"status\"}\nignored";
  for (std::size_t cut = 1; cut <= sent.size(); ++cut) {
    std::string in;
    bool complete = false;
    for (std::size_t at = 0; at < sent.size() && !complete; at += cut) {
      const RequestChunk c =
          frameRequestChunk(in.size(), std::string_view(sent).substr(at, cut), 64);
      REQUIRE_FALSE(c.too_large);
      in.append(sent, at, c.take);
      complete = c.complete;
    }
    CHECK(complete);
    CHECK(in == "{\"cmd\":\"status\"}");
  }
  CHECK(frameRequestChunk(60, "12345", 64).too_large);
  CHECK_FALSE(frameRequestChunk(60, "1234\nmore", 64).too_large);
}

TEST_CASE("Every control request gets one JSON line, also when the handler throws", "[unit][cli]") {
  const ControlServer::Handler handler = [](const json& req) -> json {
    if (req.contains("throw")) {
      throw std::runtime_error("boom");
    }
    return json{{"ok", true}, {"bytes", std::string("a\xff")}};
  };
  const auto answer = [&](const std::string& request) {
    const std::string line = answerControlRequest(request, 4, handler);
    REQUIRE(line.back() == '\n');
    return json::parse(line);
  };
  CHECK(answer("[[[[[1]]]]]")["code"] == "invalid_request");
  CHECK(answer("{\"a\":").at("error").get<std::string>().starts_with("request is not JSON"));
  CHECK(answer("[1]")["error"] == "request must be a JSON object, not array");
  CHECK(answer("{\"throw\":1}")["code"] == "internal");
  CHECK(answer("{}")["bytes"] == "a\xEF\xBF\xBD");  // not UTF-8: replaced, never thrown
}

}  // namespace
}  // namespace omniedge
