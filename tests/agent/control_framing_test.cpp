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

namespace omniedge {
namespace {

// Found by the fuzz target control_socket (tests/fixtures/fuzz/control_socket/number-overflow):
// nlohmann throws out_of_range, not parse_error, for a number beyond a double; it escaped the
// worker thread and ended the daemon.
TEST_CASE("A control request with a number beyond a double gets an answer and the daemon lives on",
          "[unit][cli]") {
  const ControlServer::Handler handler = [](const nlohmann::json&) {
    return nlohmann::json{{"ok", true}};
  };
  const std::string line = answerControlRequest("{\"cmd\":\"status\",\"n\":1e400}", 72, handler);
  const auto answer = nlohmann::json::parse(line);
  CHECK(answer["ok"] == false);
  CHECK(answer["code"] == "invalid_request");
  CHECK(answer["error"] == "request is not JSON: number overflow parsing '1e400'");
}

}  // namespace
}  // namespace omniedge
