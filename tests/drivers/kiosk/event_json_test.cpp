#include "drivers/kiosk/event_json.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/api/time.h"

namespace omniedge::kiosk {
namespace {

constexpr std::size_t kMax = 1000;

// The error of parsing `body`, which must fail.
Error errorOf(std::string_view body, std::size_t max_events = kMax) {
  auto result = parseEvents(body, max_events, nullptr);
  REQUIRE_FALSE(result.has_value());
  return result.error();
}

TEST_CASE("a single event object becomes one event with every field", "[unit][kiosk]") {
  bool was_array = true;
  auto events = parseEvents(R"({
      "type": "kiosk.cart_add", "id": "0192f3b4-7c1e-7a2b-9c1d-5e6f7a8b9c0d",
      "source": "kiosk:7", "store_id": "store-042", "occurred_at": "2026-11-22T13:32:42.123Z",
      "customer": {"loyalty_id": "40000066677", "email": "A@B.example"},
      "data": {"sku": "123", "qty": 2}})",
                            kMax, &was_array);
  REQUIRE(events.has_value());
  CHECK_FALSE(was_array);
  REQUIRE(events->size() == 1);
  const Event& e = events->front();
  CHECK(e.type == "kiosk.cart_add");
  CHECK(e.id == "0192f3b4-7c1e-7a2b-9c1d-5e6f7a8b9c0d");
  CHECK(e.source == "kiosk:7");
  CHECK(e.store_id == "store-042");
  CHECK(e.occurred_at_ms == *parseRfc3339("2026-11-22T13:32:42.123Z"));
  CHECK(e.received_at_ms == 0);
  CHECK(e.customer.at("loyalty_id") == "40000066677");
  CHECK(e.customer.at("email") == "A@B.example");  // hashed later by the writer
  CHECK(e.data_json == R"({"sku":"123","qty":2})");
}

TEST_CASE("only type is required, the rest is left for ingest to fill in", "[unit][kiosk]") {
  auto events = parseEvents(R"({"type":"kiosk.view"})", kMax, nullptr);
  REQUIRE(events.has_value());
  REQUIRE(events->size() == 1);
  const Event& e = events->front();
  CHECK(e.id.empty());
  CHECK(e.source.empty());
  CHECK(e.store_id.empty());
  CHECK(e.occurred_at_ms == 0);
  CHECK(e.customer.empty());
  CHECK(e.data_json == "{}");
}

TEST_CASE("an array gives its events in order", "[unit][kiosk]") {
  bool was_array = false;
  auto events =
      parseEvents(R"([{"type":"a.b"},{"type":"c.d","data":{}},{"type":"e.f"}])", 3, &was_array);
  REQUIRE(events.has_value());
  CHECK(was_array);
  REQUIRE(events->size() == 3);
  CHECK((*events)[0].type == "a.b");
  CHECK((*events)[1].type == "c.d");
  CHECK((*events)[2].type == "e.f");
}

TEST_CASE("data is kept as the producer wrote it, minus whitespace", "[unit][kiosk]") {
  auto events = parseEvents(
      R"({"type":"a.b","data":{ "z": 1, "a": [1, 2.50, "x\"y z", null, true, -0.5e+3],
          "nested": {"k": "caf\u00e9 \ud83d\uded2 é"}, "big": 12345678901234567890 }})",
      kMax, nullptr);
  REQUIRE(events.has_value());
  const std::string& data = events->front().data_json;
  CHECK(data ==
        R"({"z":1,"a":[1,2.50,"x\"y z",null,true,-0.5e+3],"nested":{"k":"caf\u00e9 \ud83d\uded2 )"
        "\xc3\xa9\"},\"big\":12345678901234567890}");
  const auto parsed = nlohmann::json::parse(data);
  CHECK(parsed["nested"]["k"] == "caf\xc3\xa9 \xf0\x9f\x9b\x92 \xc3\xa9");
  CHECK(parsed["a"][2] == "x\"y z");
}

TEST_CASE("strings are decoded: escapes, surrogate pairs, UTF-8", "[unit][kiosk]") {
  auto events = parseEvents(
      R"({"type":"a.b","source":"k\u00e9\n\t\/\\\"\ud83d\uded2","store_id":"€"})", kMax, nullptr);
  REQUIRE(events.has_value());
  CHECK(events->front().source == "k\xc3\xa9\n\t/\\\"\xf0\x9f\x9b\x92");
  CHECK(events->front().store_id == "\xe2\x82\xac");
}

TEST_CASE("malformed JSON is invalid_json with the byte position", "[unit][kiosk]") {
  const Error e = errorOf(R"({"type": "a.b",, })");
  CHECK(e.code == "invalid_json");
  CHECK(e.message.rfind("malformed JSON at byte 16: ", 0) == 0);
  CHECK(errorOf("").code == "invalid_json");
  CHECK(errorOf(R"({"type":"a.b"} trailing)").code == "invalid_json");
  CHECK(errorOf("{\"type\":\"\xff\"}").code == "invalid_json");          // not UTF-8
  CHECK(errorOf("{\"type\":\"\xed\xa0\x80\"}").code == "invalid_json");  // UTF-8 surrogate
  CHECK(errorOf(R"({"type":"\ud800"})").code == "invalid_json");         // lone surrogate
  CHECK(errorOf(R"({"type":"a.b","data":{"x":1e999}})").code == "invalid_json");
  CHECK(errorOf(R"({"type":"a.b","data":{"x":01}})").code == "invalid_json");
  CHECK(errorOf(R"([{"type":"a.b"},])").code == "invalid_json");
  CHECK(errorOf("{\"type\":\"a\tb\"}").code == "invalid_json");  // raw control character
  CHECK(errorOf(std::string("{\"type\":\"a.b\"}\0", 15)).code == "invalid_json");
}

TEST_CASE("absurdly deep nesting is refused, not recursed into", "[unit][kiosk]") {
  const std::string deep =
      R"({"type":"a.b","data":{"x":)" + std::string(100000, '[') + std::string(100000, ']') + "}}";
  const Error e = errorOf(deep);
  CHECK(e.code == "invalid_json");
  CHECK(e.message.find("nested deeper") != std::string::npos);
  // Brackets inside strings do not count.
  auto ok = parseEvents(R"({"type":"a.b","data":{"x":")" + std::string(1000, '[') + "\"}}", kMax,
                        nullptr);
  CHECK(ok.has_value());
}

TEST_CASE("malformed JSON wins over a bad field earlier in the body", "[unit][kiosk]") {
  CHECK(errorOf(R"([{"colour":"red"},{"type":"a.b",}])").code == "invalid_json");
  CHECK(errorOf(R"([{"colour":"red"},{"type":"a.b"}])").code == "invalid");
}

TEST_CASE("each bad field is named with its index and the reason", "[unit][kiosk]") {
  struct Case {
    std::string body;
    std::string field;
    std::string reason;
  };
  const auto c = GENERATE(values<Case>({
      {R"({"id":"x"})", "[0].type", "is required"},
      {R"({"type":7})", "[0].type", "must be a string"},
      {R"({"type":null})", "[0].type", "must be a string"},
      {R"({"type":"a.b","id":1})", "[0].id", "must be a string"},
      {R"({"type":"a.b","source":{}})", "[0].source", "must be a string"},
      {R"({"type":"a.b","store_id":[]})", "[0].store_id", "must be a string"},
      {R"({"type":"a.b","occurred_at":"yesterday"})", "[0].occurred_at",
       "is not an RFC 3339 timestamp"},
      {R"({"type":"a.b","occurred_at":1700000000})", "[0].occurred_at", "must be a string"},
      {R"({"type":"a.b","received_at":"2026-11-22T13:32:42Z"})", "[0].received_at",
       "not accepted from producers"},
      {R"({"type":"a.b","customer":"x"})", "[0].customer", "must be an object"},
      {R"({"type":"a.b","customer":{"email":5}})", "[0].customer.email", "must be a string"},
      {R"({"type":"a.b","customer":{"ssn":"1"}})", "[0].customer.ssn", "unknown field"},
      {R"({"type":"a.b","data":[1]})", "[0].data", "must be an object"},
      {R"({"type":"a.b","data":"{}"})", "[0].data", "must be an object"},
      {R"({"type":"a.b","colour":"red"})", "[0].colour", "unknown field"},
      {R"([{"type":"a.b"},{"type":"c.d"},{"type":"e.f","customer":{"email":false}}])",
       "[2].customer.email", "must be a string"},
      {R"([{"type":"a.b"},{"type":"c.d","occurred_at":"2026-13-01T00:00:00Z"}])", "[1].occurred_at",
       "is not an RFC 3339 timestamp"},
      {R"([{"type":"a.b"},{"kind":"c.d"}])", "[1].kind", "unknown field"},
      {R"([{"type":"a.b"},{}])", "[1].type", "is required"},
      {R"({"type":"a.b","id":"1","id":"2"})", "[0].id", "appears more than once"},
      {R"({"type":"a.b","customer":{"email":"a","email":"b"}})", "[0].customer.email",
       "appears more than once"},
  }));
  CAPTURE(c.body);
  const Error e = errorOf(c.body);
  CHECK(e.code == "invalid");
  CHECK(e.field == c.field);
  CHECK(e.message.find(c.field) == 0);
  CHECK(e.message.find(c.reason) != std::string::npos);
}

TEST_CASE("every known customer key is accepted", "[unit][kiosk]") {
  auto events = parseEvents(R"({"type":"a.b","customer":{"loyalty_id":"1","app_user_id":"2",
      "profile_id":"3","beacon":"4","email":"5","phone":"6","email_sha256":"7",
      "phone_sha256":"8"}})",
                            kMax, nullptr);
  REQUIRE(events.has_value());
  CHECK(events->front().customer.size() == 8);
}

TEST_CASE("array shape errors: empty, too many, not objects, not an event", "[unit][kiosk]") {
  SECTION("an empty array is invalid") {
    bool was_array = false;
    auto result = parseEvents("[]", kMax, &was_array);
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().code == "invalid");
    CHECK(was_array);
  }
  SECTION("more than max_events is too_large") {
    const Error e = errorOf(R"([{"type":"a.b"},{"type":"a.b"},{"type":"a.b"}])", 2);
    CHECK(e.code == "too_large");
    CHECK(e.message.find("at most 2") != std::string::npos);
  }
  SECTION("an array element that is not an object names its index") {
    const Error e = errorOf(R"([{"type":"a.b"}, "c.d"])");
    CHECK(e.code == "invalid");
    CHECK(e.field == "[1]");
    CHECK(e.message.find("must be an object") != std::string::npos);
  }
  SECTION("a scalar body is invalid") {
    CHECK(errorOf(R"("a.b")").code == "invalid");
    CHECK(errorOf("42").code == "invalid");
    CHECK(errorOf("null").code == "invalid");
  }
}

}  // namespace
}  // namespace omniedge::kiosk
