#include "drivers/pos/transaction_json.h"

#include <catch2/catch.hpp>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "drivers/pos/poslog_xml.h"
#include "drivers/pos/transaction.h"

namespace omniedge::pos {
namespace {

using nlohmann::json;

constexpr std::size_t kNoLimit = std::numeric_limits<std::size_t>::max();

const char* const kSale = R"({
  "workstation": "31", "sequence": 4711, "business_day": "2026-11-22",
  "ended_at": "2026-11-22T13:32:42.123Z", "currency": "EUR", "operator_id": "94",
  "lines": [
    {"item_id": "SKU-1", "gtin": "04006381333931", "description": "Stift", "quantity": 2,
     "unit_price": 1.25, "amount": 2.50, "discount": 0.00},
    {"item_id": "SKU-2", "quantity": "1", "amount": "10.00", "voided": true}
  ],
  "tenders": [{"type": "CreditDebit", "amount": 12.50, "card_type": "Credit",
               "card_brand": "Visa"}],
  "totals": {"grand": 12.50, "tax": 1.99},
  "customer": {"loyalty_id": "0040000066677", "email": "anna@example.org"}
})";

TEST_CASE("a JSON transaction becomes the same event as its POSLog", "[unit][pos]") {
  bool was_array = true;
  const Parsed parsed = parseJsonTransactions(kSale, kNoLimit, &was_array);
  REQUIRE_FALSE(parsed.error);
  CHECK_FALSE(was_array);
  REQUIRE(parsed.transactions.size() == 1);
  const Event e = toEvent(parsed.transactions[0], "store-042");
  CHECK(e.id == "store-042:31:2026-11-22:4711");
  CHECK(e.type == "pos.transaction");
  CHECK(e.source == "pos:31");
  CHECK(e.occurred_at_ms == 1795354362123);
  CHECK(e.customer.at("loyalty_id") == "40000066677");
  CHECK(e.customer.at("email") == "anna@example.org");
  // The amounts keep their text: 2.50, 0.00, 12.50.
  CHECK(e.data_json ==
        R"({"workstation":"31","sequence":"4711","business_day":"2026-11-22",)"
        R"("ended_at":"2026-11-22T13:32:42.123Z","currency":"EUR","operator_id":"94",)"
        R"("kind":"sale","lines":[{"item_id":"SKU-1","gtin":"04006381333931",)"
        R"("description":"Stift","quantity":2,"unit_price":1.25,"amount":2.50,)"
        R"("discount":0.00},{"item_id":"SKU-2","quantity":1,"amount":10.00,"voided":true}],)"
        R"("tenders":[{"type":"CreditDebit","amount":12.50,"card_type":"Credit",)"
        R"("card_brand":"Visa"}],"totals":{"grand":12.50,"tax":1.99}})");

  SECTION("and the POSLog of it maps to the identical event") {
    const Parsed xml = parsePosLog(R"(<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/">
<Transaction><WorkstationID>31</WorkstationID><SequenceNumber>4711</SequenceNumber>
<BusinessDayDate>2026-11-22</BusinessDayDate><EndDateTime>2026-11-22T13:32:42.123Z</EndDateTime>
<OperatorID>94</OperatorID><CurrencyCode>EUR</CurrencyCode><RetailTransaction>
<LineItem><Sale><ItemID>SKU-1</ItemID><POSIdentity POSIDType="GTIN"><POSItemID>04006381333931</POSItemID></POSIdentity>
<Description>Stift</Description><RegularSalesUnitPrice>1.25</RegularSalesUnitPrice>
<ExtendedAmount>2.50</ExtendedAmount><ExtendedDiscountAmount>0.00</ExtendedDiscountAmount><Quantity>2</Quantity></Sale></LineItem>
<LineItem VoidFlag="true"><Sale><ItemID>SKU-2</ItemID><ExtendedAmount>10.00</ExtendedAmount><Quantity>1</Quantity></Sale></LineItem>
<LineItem><Tender TenderType="CreditDebit"><Amount>12.50</Amount><CreditDebit CardType="Credit" CreditDescription="Visa"/></Tender></LineItem>
<LineItem><LoyaltyMembership><LoyaltyID>0040000066677</LoyaltyID></LoyaltyMembership></LineItem>
<Customer><EMailAddress>anna@example.org</EMailAddress></Customer>
<Total TotalType="TransactionGrandAmount">12.50</Total><Total TotalType="TransactionTaxAmount">1.99</Total>
</RetailTransaction></Transaction></POSLog>)");
    REQUIRE_FALSE(xml.error);
    const Event x = toEvent(xml.transactions.at(0), "store-042");
    CHECK(x.id == e.id);
    CHECK(x.type == e.type);
    CHECK(x.source == e.source);
    CHECK(x.occurred_at_ms == e.occurred_at_ms);
    CHECK(x.customer == e.customer);
    CHECK(x.data_json == e.data_json);
  }
}

TEST_CASE("an array of JSON transactions, and control transactions", "[unit][pos]") {
  bool was_array = false;
  const Parsed parsed = parseJsonTransactions(
      R"([{"workstation":"1","sequence":"1","business_day":"2026-11-22",
           "lines":[{"item_id":"A","amount":-5.00,"return":true}]},
          {"workstation":"1","sequence":"2","ended_at":"2026-11-22T08:00:00",
           "control":{"operation":"OperatorSignOn","reason":"shift start"}},
          {"workstation":"1","sequence":"3","business_day":"2026-11-22","kind":"void"}])",
      kNoLimit, &was_array);
  REQUIRE_FALSE(parsed.error);
  CHECK(was_array);
  REQUIRE(parsed.transactions.size() == 3);
  const Event refund = toEvent(parsed.transactions[0], "s");
  CHECK(json::parse(refund.data_json)["kind"] == "return");
  const Event control = toEvent(parsed.transactions[1], "s");
  CHECK(control.type == "pos.control");
  CHECK(control.id == "s:1:2026-11-22:2");  // the day from ended_at (no offset: UTC)
  CHECK(json::parse(control.data_json) ==
        json::parse(R"({"workstation":"1","sequence":"2","business_day":"2026-11-22",
          "ended_at":"2026-11-22T08:00:00.000Z","operation":"OperatorSignOn",
          "reason":"shift start"})"));
  CHECK(json::parse(toEvent(parsed.transactions[2], "s").data_json)["kind"] == "void");
}

struct BadCase {
  const char* body;
  const char* element;
  const char* reason_part;
};

TEST_CASE("bad JSON transactions are refused naming the field", "[unit][pos]") {
  const BadCase c = GENERATE(
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                  "lines":[{"amount":"12,50"}]})",
              "lines[0].amount", "decimal number"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                  "lines":[{"amount":1e3}]})",
              "lines[0].amount", "decimal number"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                  "tenders":[{"type":"CreditDebit","card_number":"4111111111111111"}]})",
              "tenders[0].card_number", "card data"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                  "tenders":[{"authorization_code":"123456"}]})",
              "tenders[0].authorization_code", "card data"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22","store":"x"})",
              "store", "not a field"},
      BadCase{R"({"sequence":"1","business_day":"2026-11-22"})", "workstation", "required"},
      BadCase{R"({"workstation":"1","business_day":"2026-11-22"})", "sequence", "required"},
      BadCase{R"({"workstation":"1","sequence":"1"})", "business_day", "required"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"22.11.2026"})", "business_day",
              "YYYY-MM-DD"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                  "ended_at":"noon"})",
              "ended_at", "RFC 3339"},
      BadCase{R"({"workstation":true,"sequence":"1","business_day":"2026-11-22"})", "workstation",
              "string"},
      BadCase{R"({"workstation":"1","sequence":1.5,"business_day":"2026-11-22"})", "sequence",
              "whole number"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22","kind":"gift"})",
              "kind", "sale, return or void"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                  "customer":{"phone":"+49301234"}})",
              "customer.phone", "not a field"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22",
                  "control":{"operation":"NoSale"},"lines":[{"amount":1}]})",
              "control", "cannot come with lines"},
      BadCase{R"({"workstation":"1","sequence":"1","business_day":"2026-11-22","lines":{}})",
              "lines", "must be an array"});
  INFO(c.body);
  const Parsed parsed = parseJsonTransactions(c.body, kNoLimit, nullptr);
  REQUIRE(parsed.error);
  CHECK(parsed.transactions.empty());
  CHECK(parsed.error->code == "invalid");
  CHECK(parsed.error->element == c.element);
  CHECK_THAT(parsed.error->reason, Catch::Contains(c.reason_part));
}

TEST_CASE("in an array the field names the transaction's index", "[unit][pos]") {
  bool was_array = false;
  const Parsed parsed = parseJsonTransactions(
      R"([{"workstation":"1","sequence":"1","business_day":"2026-11-22"},
          {"workstation":"1","business_day":"2026-11-22"}])",
      kNoLimit, &was_array);
  REQUIRE(parsed.error);
  CHECK(was_array);
  CHECK(parsed.error->element == "[1].sequence");
  CHECK(parsed.error->reason == "[1].sequence is required");
  CHECK(parsed.transactions.empty());

  const Parsed too_many = parseJsonTransactions(
      R"([{"workstation":"1","sequence":"1","business_day":"2026-11-22"},
          {"workstation":"1","sequence":"2","business_day":"2026-11-22"}])",
      1, nullptr);
  REQUIRE(too_many.error);
  CHECK(too_many.error->code == "too_large");
  CHECK(parseJsonTransactions("[]", kNoLimit, nullptr).error->code == "empty");
  CHECK(parseJsonTransactions("[1]", kNoLimit, nullptr).error->element == "[0]");
}

TEST_CASE("malformed JSON names the line", "[unit][pos]") {
  const Parsed parsed = parseJsonTransactions(
      "{\n\"workstation\": \"1\",\n\"sequence\": \"1\",\n\"business_day\": 2026-11-22\n}", kNoLimit,
      nullptr);
  REQUIRE(parsed.error);
  CHECK(parsed.error->code == "invalid_json");
  CHECK(parsed.error->line == 4);
  CHECK_THAT(parsed.error->reason, Catch::StartsWith("malformed JSON"));

  const Parsed twice =
      parseJsonTransactions(R"({"workstation":"1","workstation":"2"})", kNoLimit, nullptr);
  REQUIRE(twice.error);
  CHECK_THAT(twice.error->reason, Catch::Contains("more than once"));
  CHECK(parseJsonTransactions(std::string(100, '[') + std::string(100, ']'), kNoLimit, nullptr)
            .error->code == "invalid_json");
  CHECK(parseJsonTransactions("  ", kNoLimit, nullptr).error->code == "empty");
}

TEST_CASE("JSON Lines: one transaction a line, errors name the line", "[unit][pos]") {
  const std::string good =
      "{\"workstation\":\"1\",\"sequence\":\"1\",\"business_day\":\"2026-11-22\"}\n"
      "\n"
      "{\"workstation\":\"1\",\"sequence\":\"2\",\"business_day\":\"2026-11-22\"}\r\n";
  const Parsed parsed = parseJsonLines(good);
  REQUIRE_FALSE(parsed.error);
  REQUIRE(parsed.transactions.size() == 2);
  CHECK(parsed.transactions[1].source_line == 3);

  const Parsed bad_amount =
      parseJsonLines(good +
                     "{\"workstation\":\"1\",\"sequence\":\"3\",\"business_day\":\"2026-11-22\","
                     "\"totals\":{\"grand\":\"ten\"}}\n");
  REQUIRE(bad_amount.error);
  CHECK(bad_amount.error->line == 4);
  CHECK(bad_amount.error->element == "totals.grand");
  CHECK(bad_amount.transactions.empty());

  const Parsed broken = parseJsonLines(good + "{\"workstation\":\n");
  REQUIRE(broken.error);
  CHECK(broken.error->code == "invalid_json");
  CHECK(broken.error->line == 4);

  const Parsed array = parseJsonLines("[{\"workstation\":\"1\"}]\n");
  REQUIRE(array.error);
  CHECK(array.error->line == 1);
  CHECK_THAT(array.error->reason, Catch::Contains("one transaction object"));

  CHECK(parseJsonLines("\n\n").error->code == "empty");
}

}  // namespace
}  // namespace omniedge::pos
