// POST /v1/pos/transactions: the JSON transaction form over the kiosk HTTP API.
#include <httplib.h>

#include <catch2/catch.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "drivers/kiosk/http_api.h"
#include "tests/support/recording_writer.h"

namespace omniedge::pos {
namespace {

using kiosk::HealthReport;
using kiosk::HttpApi;
using kiosk::HttpApiOptions;
using nlohmann::json;
using testing::RecordingWriter;

struct Fixture {
  explicit Fixture(HttpApiOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    options.store_id = "store-042";
    api = std::make_unique<HttpApi>(
        std::move(options), writer,
        [] {
          return HealthReport{true, {}};
        },
        [this] { return api->metricsText(); });
    REQUIRE(api->start().has_value());
  }

  httplib::Client client() const {
    httplib::Client c("127.0.0.1", api->port());
    c.set_connection_timeout(5);
    c.set_read_timeout(10);
    return c;
  }

  RecordingWriter writer;
  std::unique_ptr<HttpApi> api;
};

json errorOf(const httplib::Result& res) { return json::parse(res->body).at("error"); }

constexpr const char* kSale =
    R"({"workstation":"31","sequence":"4711","business_day":"2026-11-22",
        "ended_at":"2026-11-22T13:32:42.123Z","currency":"EUR",
        "lines":[{"gtin":"04006381333931","quantity":1,"unit_price":12.50,"amount":12.50}],
        "tenders":[{"type":"CreditDebit","amount":12.50,"card_type":"Credit"}],
        "totals":{"grand":12.50,"tax":2.00},
        "customer":{"loyalty_id":"40000066677","email":"anna@example.org"}})";

TEST_CASE("POST /v1/pos/transactions answers 202 with deterministic ids once durable",
          "[integration][pos]") {
  Fixture f;
  auto c = f.client();

  SECTION("one transaction") {
    auto res = c.Post("/v1/pos/transactions", kSale, "application/json");
    REQUIRE(res);
    CHECK(res->status == 202);
    const json body = json::parse(res->body);
    CHECK(body["accepted"] == 1);
    CHECK(body["ids"] == json::array({"store-042:31:2026-11-22:4711"}));
    const std::vector<Event> events = f.writer.events();
    REQUIRE(events.size() == 1);
    const Event& e = events[0];
    CHECK(e.type == "pos.transaction");
    CHECK(e.source == "pos:31");
    CHECK(e.customer.at("loyalty_id") == "40000066677");
    CHECK(e.customer.at("email") == "anna@example.org");
    CHECK(json::parse(e.data_json)["totals"]["grand"].dump() == "12.5");  // a number
    CHECK(e.data_json.find("\"grand\":12.50") != std::string::npos);      // its digits kept
  }
  SECTION("an array, posted twice: the same ids both times") {
    const std::string body = std::string("[") + kSale +
                             R"(,{"workstation":"31","sequence":"4712","business_day":"2026-11-22",
             "control":{"operation":"NoSale"}}])";
    auto first = c.Post("/v1/pos/transactions", body, "application/json");
    auto second = c.Post("/v1/pos/transactions", body, "application/json");
    REQUIRE(first);
    REQUIRE(second);
    CHECK(first->status == 202);
    CHECK(json::parse(first->body)["ids"] == json::parse(second->body)["ids"]);
    CHECK(json::parse(first->body)["ids"][1] == "store-042:31:2026-11-22:4712");
    REQUIRE(f.writer.events().size() == 4);
    CHECK(f.writer.events()[1].type == "pos.control");
  }
}

TEST_CASE("POST /v1/pos/transactions refuses bad input naming the field", "[integration][pos]") {
  HttpApiOptions options;
  options.max_events_per_request = 2;
  Fixture f(options);
  auto c = f.client();

  SECTION("a bad amount in a single transaction") {
    auto res = c.Post("/v1/pos/transactions",
                      R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                          "lines":[{"amount":"12,50"}]})",
                      "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(errorOf(res)["code"] == "invalid");
    CHECK(errorOf(res)["field"] == "lines[0].amount");
  }
  SECTION("card data") {
    auto res = c.Post("/v1/pos/transactions",
                      R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                          "tenders":[{"type":"CreditDebit","pan":"4111111111111111"}]})",
                      "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(errorOf(res)["field"] == "tenders[0].pan");
    CHECK_THAT(errorOf(res)["message"].get<std::string>(), Catch::Contains("card data"));
  }
  SECTION("the second of an array") {
    auto res = c.Post("/v1/pos/transactions",
                      R"([{"workstation":"1","sequence":"1","business_day":"2026-11-22"},
                          {"workstation":"1","business_day":"2026-11-22"}])",
                      "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(errorOf(res)["field"] == "[1].sequence");
  }
  SECTION("malformed JSON") {
    auto res = c.Post("/v1/pos/transactions", "{\"workstation\":", "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(errorOf(res)["code"] == "invalid_json");
  }
  SECTION("the writer's own validation, with the index dropped for a single object") {
    f.writer.failNextAppend(
        makeError("invalid", "[0].customer.email is not an e-mail address", "[0].customer.email"));
    auto res = c.Post("/v1/pos/transactions", kSale, "application/json");
    REQUIRE(res);
    CHECK(res->status == 400);
    CHECK(errorOf(res)["field"] == "customer.email");
  }
  SECTION("more transactions than allowed: 413") {
    auto res =
        c.Post("/v1/pos/transactions", std::string("[") + kSale + "," + kSale + "," + kSale + "]",
               "application/json");
    REQUIRE(res);
    CHECK(res->status == 413);
    CHECK(errorOf(res)["code"] == "too_large");
  }
  SECTION("GET is 405") {
    auto res = c.Get("/v1/pos/transactions");
    REQUIRE(res);
    CHECK(res->status == 405);
  }
  CHECK(f.writer.events().empty());
}

TEST_CASE("POST /v1/pos/transactions answers 503 with Retry-After when the buffer is full",
          "[integration][pos]") {
  Fixture f;
  auto c = f.client();
  f.writer.failNextAppend(makeError("full", "the buffer is full"));
  auto res = c.Post("/v1/pos/transactions", kSale, "application/json");
  REQUIRE(res);
  CHECK(res->status == 503);
  CHECK(res->get_header_value("Retry-After") == "5");
  CHECK(errorOf(res)["code"] == "full");
  CHECK(f.writer.events().empty());

  auto again = c.Post("/v1/pos/transactions", kSale, "application/json");
  REQUIRE(again);
  CHECK(again->status == 202);
  CHECK(f.api->metricsText().find(
            "omniedge_http_requests_total{route=\"/v1/pos/transactions\",code=\"202\"} 1") !=
        std::string::npos);
}

TEST_CASE("POST /v1/pos/transactions errors show the bad value and the till's own field names",
          "[integration][pos]") {
  Fixture f;
  auto c = f.client();
  const auto post = [&](const std::string& body) {
    auto res = c.Post("/v1/pos/transactions", body, "application/json");
    REQUIRE(res);
    return std::make_pair(res->status, errorOf(res));
  };

  SECTION("a bad amount shows the value the till sent") {
    auto [status, error] = post(R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                                    "lines":[{"amount":"12,50"}]})");
    CHECK(status == 400);
    CHECK(error["field"] == "lines[0].amount");
    CHECK(error["message"] ==
          "lines[0].amount must be a decimal number (like 12.50), not \"12,50\"");
  }
  SECTION("a bad number shows its digits, a long value is cut") {
    auto [status, error] = post(R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                                    "totals":{"grand":1e3}})");
    CHECK(status == 400);
    CHECK(error["field"] == "totals.grand");
    CHECK(error["message"] == "totals.grand must be a decimal number (like 12.50), not 1e3");
    auto [status2, error2] = post(
        R"({"workstation":"1","sequence":"1","business_day":"2026-11-22","tenders":[{"amount":")" +
        std::string(100, '7') + R"(x"}]})");
    CHECK(status2 == 400);
    CHECK(error2["message"] == "tenders[0].amount must be a decimal number (like 12.50), not \"" +
                                   std::string(40, '7') + "...\"");
  }
  SECTION("an ended_at the agent refuses is named ended_at, not occurred_at") {
    // Ingest's own words for the event it was given (agent/ingest/ingest.cpp).
    f.writer.failNextAppend(
        makeError("invalid", "occurred_at is more than a day in the future", "[0].occurred_at"));
    auto [status, error] = post(kSale);
    CHECK(status == 400);
    CHECK(error["code"] == "invalid");
    CHECK(error["field"] == "ended_at");
    CHECK(error["message"] == "ended_at is more than a day in the future");
  }
  SECTION("in an array, with its index") {
    f.writer.failNextAppend(
        makeError("invalid", "occurred_at is before 2000-01-01", "[1].occurred_at"));
    auto [status, error] = post(std::string("[") + kSale + "," + kSale + "]");
    CHECK(status == 400);
    CHECK(error["field"] == "[1].ended_at");
    CHECK(error["message"] == "[1].ended_at is before 2000-01-01");
  }
  SECTION("an oversized single event is named by its transaction, not [0]") {
    f.writer.failNextAppend(makeError(
        "too_large", "the event is 70123 bytes serialised; buffer.max_event_bytes allows 65536",
        "[0]"));
    auto [status, error] = post(kSale);
    CHECK(status == 413);
    CHECK(error["code"] == "too_large");
    CHECK(error["field"] == "");
    CHECK(error["message"] ==
          "the event of transaction 4711 of workstation 31 on 2026-11-22 is 70123 bytes "
          "serialised; buffer.max_event_bytes allows 65536");
  }
  SECTION("an oversized event of an array keeps its index as the field") {
    f.writer.failNextAppend(makeError(
        "too_large", "the event is 70123 bytes serialised; buffer.max_event_bytes allows 65536",
        "[1]"));
    auto [status, error] = post(std::string("[") + kSale + "," + kSale + "]");
    CHECK(status == 413);
    CHECK(error["field"] == "[1]");
    CHECK_THAT(error["message"].get<std::string>(),
               Catch::StartsWith("the event of transaction 4711 of workstation 31"));
  }
  SECTION("a body that would take more than its parse budget is refused") {
    // 7 MiB of empty lines (within the 8 MiB body limit): far more than the 64 MiB budget
    // once each is a line item.
    std::string body = R"({"workstation":"1","sequence":"1","business_day":"2026-11-22","lines":[)";
    body.reserve(7 << 20);
    while (body.size() < (std::size_t{7} << 20)) {
      body += "{},";
    }
    body += "{}]}";
    auto [status, error] = post(body);
    CHECK(status == 413);
    CHECK(error["code"] == "too_large");
    CHECK_THAT(error["message"].get<std::string>(),
               Catch::StartsWith("reading it would take more than 64 MiB of memory"));
  }
  CHECK(f.writer.events().empty());
}

}  // namespace
}  // namespace omniedge::pos
