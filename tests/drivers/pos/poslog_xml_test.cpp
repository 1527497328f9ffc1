#include "drivers/pos/poslog_xml.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "drivers/pos/transaction.h"

namespace omniedge::pos {
namespace {

using nlohmann::json;

std::string readFixture(const std::string& name) {
  std::ifstream in(std::string(OMNIEDGE_SOURCE_DIR) + "/tests/fixtures/poslog/" + name,
                   std::ios::binary);
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<Event> eventsOf(const Parsed& parsed, const std::string& store = "store-042") {
  std::vector<Event> events;
  for (const Transaction& tx : parsed.transactions) {
    events.push_back(toEvent(tx, store));
  }
  return events;
}

// Expected values for ncr-acs-day.xml, derived independently of this code with Python's
// xml.etree.ElementTree: for every Transaction, WorkstationID, SequenceNumber,
// BusinessDayDate, the Total with TotalType TransactionGrandAmount / TransactionTaxAmount, the
// count of LineItems holding a Sale or Return, the count of Tender line items, and the text of
// any acs:LoyaltyID with its leading zeros stripped.
struct ExpectedSale {
  const char* workstation;
  const char* sequence;
  const char* business_day;
  const char* grand;
  const char* tax;
  std::size_t lines;
  std::size_t tenders;
  const char* loyalty_id;
};
const std::vector<ExpectedSale> kDaySales = {
    {"31", "114", "2017-10-01", "20.45", "0.94", 6, 1, ""},
    {"3", "86", "2017-10-01", "9.00", "0.00", 3, 1, ""},
    {"2", "297", "2017-10-01", "7.48", "0.00", 4, 1, ""},
    {"1", "376", "2017-10-01", "354.21", "5.32", 74, 1, ""},
    {"2", "298", "2017-10-01", "9.90", "0.91", 1, 1, ""},
    {"32", "113", "2017-10-01", "14.75", "0.00", 4, 1, ""},
    {"2", "299", "2017-10-01", "5.27", "0.00", 1, 1, ""},
    {"3", "87", "2017-10-01", "91.84", "3.63", 23, 1, ""},
    {"34", "99", "2017-10-01", "30.22", "0.37", 8, 1, ""},
    {"32", "114", "2017-10-01", "10.20", "0.94", 1, 1, ""},
    {"31", "115", "2017-10-01", "43.90", "1.77", 9, 1, ""},
    {"34", "100", "2017-10-01", "17.38", "0.00", 2, 2, ""},
    {"1", "377", "2017-10-01", "202.84", "2.46", 38, 1, "2067842957"},
    {"3", "88", "2017-10-01", "19.30", "0.40", 5, 1, ""},
    {"3", "89", "2017-10-01", "1.07", "0.00", 2, 2, ""},
    {"32", "115", "2017-10-01", "7.92", "0.39", 4, 2, ""},
    {"31", "116", "2017-10-01", "29.66", "0.81", 7, 1, ""},
    {"3", "90", "2017-10-01", "69.34", "5.57", 7, 2, ""},
    {"34", "101", "2017-10-01", "11.88", "0.00", 4, 1, ""},
    {"1", "378", "2017-10-01", "73.34", "0.00", 22, 1, ""},
    {"2", "300", "2017-10-01", "292.01", "7.79", 64, 1, "2063720416"},
    {"3", "91", "2017-10-01", "24.78", "1.01", 5, 2, ""},
    {"32", "116", "2017-10-01", "21.51", "0.54", 4, 1, ""},
    {"2", "301", "2017-10-01", "45.51", "2.00", 12, 2, ""},
    {"1", "379", "2017-10-01", "159.00", "6.89", 26, 1, ""},
    {"1", "380", "2017-10-01", "12.96", "0.00", 4, 1, ""},
    {"1", "381", "2017-10-01", "2.00", "0.00", 1, 1, ""},
    {"32", "117", "2017-10-01", "5.58", "0.00", 2, 2, ""},
    {"31", "117", "2017-10-01", "13.68", "0.00", 2, 2, ""},
    {"34", "102", "2017-10-01", "14.69", "0.00", 3, 1, ""},
    {"3", "92", "2017-10-01", "181.77", "2.53", 32, 1, "40001807503"},
    {"32", "118", "2017-10-01", "47.54", "2.75", 5, 1, ""},
    {"3", "93", "2017-10-01", "55.73", "1.36", 12, 1, ""},
    {"31", "118", "2017-10-01", "12.98", "0.00", 2, 1, ""},
    {"3", "94", "2017-10-01", "124.53", "5.75", 14, 1, ""},
    {"1", "382", "2017-10-01", "48.90", "1.21", 11, 2, ""},
    {"31", "119", "2017-10-01", "9.49", "0.00", 2, 1, ""},
    {"2", "302", "2017-10-01", "440.13", "1.81", 106, 1, "2062264897"},
    {"1", "383", "2017-10-01", "20.13", "0.00", 5, 1, ""},
    {"34", "105", "2017-10-01", "12.00", "0.00", 1, 1, ""},
    {"3", "95", "2017-10-01", "17.09", "0.00", 6, 1, ""},
    {"2", "303", "2017-10-01", "51.76", "0.00", 8, 1, ""},
};
// The same script: ControlTransactions, with the first child element that is not ReasonCode.
const std::vector<std::vector<std::string>> kDayControls = {
    {"5", "61", "OperatorSignOn"},  {"5", "62", "OperatorSignOn"},
    {"5", "63", "OperatorSignOff"}, {"5", "64", "OperatorSignOn"},
    {"5", "65", "NoSale"},          {"5", "66", "NoSale"},
    {"5", "67", "OperatorSignOff"}, {"34", "103", "OperatorSignOff"},
    {"34", "104", "OperatorSignOn"}};
// Sum of the 42 grand totals (Python's decimal.Decimal).
constexpr const char* kDayGrandTotal = "2643.72";

// The JSON text of the event's totals, as written (a json::dump() would drop trailing zeros).
std::pair<std::string, std::string> totalsText(const Event& e) {
  static const std::regex kTotals(R"re("totals":\{"grand":([-0-9.]+),"tax":([-0-9.]+)\})re");
  std::smatch m;
  REQUIRE(std::regex_search(e.data_json, m, kTotals));
  return {m[1].str(), m[2].str()};
}

// Cents of a decimal text with at most two fraction digits ("2643.72" -> 264372).
long long cents(const std::string& text) {
  const std::size_t dot = text.find('.');
  long long whole = std::stoll(text.substr(0, dot));
  long long fraction = 0;
  if (dot != std::string::npos) {
    std::string f = text.substr(dot + 1);
    f.resize(2, '0');
    fraction = std::stoll(f);
  }
  return whole * 100 + (text.front() == '-' ? -fraction : fraction);
}

TEST_CASE("the real NCR ACS day becomes 42 pos.transaction and 9 pos.control events",
          "[unit][pos]") {
  const Parsed parsed = parsePosLog(readFixture("ncr-acs-day.xml"));
  REQUIRE_FALSE(parsed.error);
  CHECK(parsed.skipped == 0);
  const std::vector<Event> events = eventsOf(parsed);
  REQUIRE(events.size() == 51);

  std::map<std::string, const Event*> by_id;
  std::size_t sales = 0;
  std::size_t controls = 0;
  for (const Event& e : events) {
    by_id[e.id] = &e;
    sales += e.type == "pos.transaction" ? 1 : 0;
    controls += e.type == "pos.control" ? 1 : 0;
    CHECK(e.source == "pos:" + json::parse(e.data_json)["workstation"].get<std::string>());
    CHECK(e.occurred_at_ms > 0);
    CHECK(e.store_id.empty());  // ingest fills it
  }
  CHECK(sales == 42);
  CHECK(controls == 9);
  CHECK(by_id.size() == 51);  // ids are unique

  long long grand_cents = 0;
  std::set<std::string> loyalty_ids;
  for (const ExpectedSale& want : kDaySales) {
    const std::string id = std::string("store-042:") + want.workstation + ":" + want.business_day +
                           ":" + want.sequence;
    INFO(id);
    REQUIRE(by_id.count(id) == 1);
    const Event& e = *by_id[id];
    CHECK(e.type == "pos.transaction");
    const json data = json::parse(e.data_json);
    CHECK(data["kind"] == "sale");
    CHECK(data["currency"] == "USD");
    CHECK(data["lines"].size() == want.lines);
    CHECK(data["tenders"].size() == want.tenders);
    // The amounts keep the till's digits: compare the JSON text, not a double.
    const auto [grand, tax] = totalsText(e);
    CHECK(grand == want.grand);
    CHECK(tax == want.tax);
    grand_cents += cents(grand);
    if (*want.loyalty_id != '\0') {
      REQUIRE(e.customer.count("loyalty_id") == 1);
      CHECK(e.customer.at("loyalty_id") == want.loyalty_id);
      loyalty_ids.insert(e.customer.at("loyalty_id"));
    } else {
      CHECK(e.customer.empty());
    }
  }
  CHECK(grand_cents == cents(kDayGrandTotal));
  CHECK(loyalty_ids.size() == 4);

  for (const auto& want : kDayControls) {
    const std::string id = "store-042:" + want[0] + ":2017-10-01:" + want[1];
    INFO(id);
    REQUIRE(by_id.count(id) == 1);
    const json data = json::parse(by_id[id]->data_json);
    CHECK(by_id[id]->type == "pos.control");
    CHECK(data["operation"] == want[2]);
    CHECK_FALSE(data.contains("lines"));
  }
}

TEST_CASE("a POSLog line and tender are mapped field by field", "[unit][pos]") {
  const Parsed parsed = parsePosLog(readFixture("ncr-acs-small.xml"));
  REQUIRE_FALSE(parsed.error);
  const std::vector<Event> events = eventsOf(parsed);
  REQUIRE(events.size() == 2);

  CHECK(events[0].id == "store-042:34:2017-09-30:160");
  CHECK(events[0].type == "pos.control");
  CHECK(events[0].data_json ==
        R"({"workstation":"34","sequence":"160","business_day":"2017-09-30",)"
        R"("ended_at":"2017-10-01T02:01:31.000Z","currency":"USD","operator_id":"94",)"
        R"("operation":"OperatorSignOn","reason":"Valid SignOn"})");

  const Event& sale = events[1];
  CHECK(sale.id == "store-042:34:2017-09-30:161");
  CHECK(sale.type == "pos.transaction");
  CHECK(sale.source == "pos:34");
  // EndDateTime 2017-10-01T02:01:31 has no offset: read as UTC.
  CHECK(sale.occurred_at_ms == 1506823374000);
  CHECK(sale.customer == std::map<std::string, std::string>{{"loyalty_id", "40000066677"}});
  CHECK(sale.data_json ==
        R"({"workstation":"34","sequence":"161","business_day":"2017-09-30",)"
        R"("ended_at":"2017-10-01T02:02:54.000Z","currency":"USD","operator_id":"94",)"
        R"("kind":"sale","lines":[{"item_id":"00000000067591","gtin":"00000000067591",)"
        R"("description":"APPLE HONEYCRISP ORG","quantity":0.42,"unit_price":2.99,)"
        R"("amount":1.26,"discount":0.00}],"tenders":[{"type":"CreditDebit","amount":1.07,)"
        R"("card_type":"Debit"}],"totals":{"grand":1.07,"tax":0.00}})");
}

TEST_CASE("no card number, authorisation code or reference number reaches an event",
          "[unit][pos]") {
  // Every AuthorizationCode and ReferenceNumber of the day (35 each), and the other data of
  // the file that must stay at the till: the age check's birth date, operators' names, the
  // signature's SVG path.
  const std::string xml = readFixture("ncr-acs-day.xml");
  std::vector<std::string> secrets = {"1980-01-01",      "John R",   "Isaiah M",
                                      "M70,37",          "svg",      "Authorization",
                                      "ReferenceNumber", "Birthdate"};
  for (const char* tag : {"<AuthorizationCode>", "<ReferenceNumber>"}) {
    std::size_t count = 0;
    for (std::size_t at = xml.find(tag); at != std::string::npos; at = xml.find(tag, at + 1)) {
      const std::size_t start = at + std::string(tag).size();
      secrets.push_back(xml.substr(start, xml.find('<', start) - start));
      ++count;
    }
    CHECK(count == 35);
  }
  std::string everything;
  for (const Event& e : eventsOf(parsePosLog(xml))) {
    everything += e.id + e.source + e.data_json;
    for (const auto& [key, value] : e.customer) {
      everything += key + value;
    }
  }
  for (const std::string& secret : secrets) {
    INFO(secret);
    CHECK(everything.find(secret) == std::string::npos);
  }

  SECTION("nor an ARTS PrimaryAccountNumber or expiry date, masked or not") {
    const Parsed parsed =
        parsePosLog(R"(<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/">
<Transaction><WorkstationID>1</WorkstationID><SequenceNumber>9</SequenceNumber>
<BusinessDayDate>2026-11-22</BusinessDayDate><RetailTransaction><LineItem><Tender TenderType="CreditDebit">
<Amount>10.00</Amount><CreditDebit CardType="Credit"><PrimaryAccountNumber>4111111111111111</PrimaryAccountNumber>
<MaskedPAN>411111******1111</MaskedPAN><ExpirationDate>2812</ExpirationDate></CreditDebit>
<Authorization><AuthorizationCode>A1B2C3</AuthorizationCode></Authorization></Tender></LineItem>
</RetailTransaction></Transaction></POSLog>)");
    REQUIRE_FALSE(parsed.error);
    const std::string data = eventsOf(parsed).at(0).data_json;
    for (const char* secret : {"4111", "1111", "2812", "A1B2C3", "******"}) {
      INFO(secret);
      CHECK(data.find(secret) == std::string::npos);
    }
    CHECK(json::parse(data)["tenders"] ==
          json::parse(R"([{"type":"CreditDebit","amount":10.00,"card_type":"Credit"}])"));
  }
}

// A small POSLog, one element per line, so that errors have lines to name.
std::string oneSale(const std::string& amount = "12.50", const std::string& extra = {}) {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"                           // 1
         "<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\">\n"       // 2
         "<Transaction>\n"                                                        // 3
         "<WorkstationID>7</WorkstationID><SequenceNumber>42</SequenceNumber>\n"  // 4
         "<BusinessDayDate>2026-11-22</BusinessDayDate>\n"                        // 5
         "<EndDateTime>2026-11-22T13:32:42.123+01:00</EndDateTime>\n"             // 6
         "<RetailTransaction>\n"                                                  // 7
         "<LineItem><Sale><ItemID>SKU-1</ItemID>\n"                               // 8
         "<ExtendedAmount>" +
         amount + "</ExtendedAmount></Sale></LineItem>\n"  // 9
         + extra +
         "</RetailTransaction>\n"
         "</Transaction>\n"
         "</POSLog>\n";
}

TEST_CASE("a bad amount refuses the whole document, naming line and element", "[unit][pos]") {
  const std::string bad = GENERATE(as<std::string>{}, "12,50", "1e3", "12.5.0", "abc", "-", "1 2");
  const Parsed parsed = parsePosLog(oneSale(bad));
  REQUIRE(parsed.error);
  CHECK(parsed.transactions.empty());
  CHECK(parsed.error->code == "invalid");
  CHECK(parsed.error->line == 9);
  CHECK(parsed.error->element == "Transaction/RetailTransaction/LineItem/Sale/ExtendedAmount");
  CHECK_THAT(parsed.error->reason, Catch::Contains("is not a decimal amount"));
  CHECK_THAT(describe(*parsed.error), Catch::Contains("line: 9\n"));
}

TEST_CASE("good amounts keep their digits in JSON number syntax", "[unit][pos]") {
  CHECK(normaliseDecimal("12.50") == "12.50");
  CHECK(normaliseDecimal(" -0.19 ") == "-0.19");
  CHECK(normaliseDecimal("+007.10") == "7.10");
  CHECK(normaliseDecimal(".5") == "0.5");
  CHECK(normaliseDecimal("5.") == "5");
  CHECK(normaliseDecimal("000") == "0");
  CHECK_FALSE(normaliseDecimal(""));
  CHECK_FALSE(normaliseDecimal("."));
  CHECK_FALSE(normaliseDecimal("1,5"));
  CHECK_FALSE(normaliseDecimal("0x10"));
  CHECK_FALSE(normaliseDecimal(std::string(31, '9')));
  const Parsed parsed = parsePosLog(oneSale("0012.500"));
  REQUIRE_FALSE(parsed.error);
  CHECK_THAT(eventsOf(parsed)[0].data_json, Catch::Contains(R"("amount":12.500})"));
}

TEST_CASE("a truncated document is refused with the line where it ends", "[unit][pos]") {
  const std::string xml = oneSale();
  const Parsed parsed = parsePosLog(xml.substr(0, xml.find("</Sale>")));
  REQUIRE(parsed.error);
  CHECK(parsed.error->code == "invalid_xml");
  CHECK(parsed.error->line == 9);
  CHECK_THAT(parsed.error->reason, Catch::StartsWith("malformed XML"));
  CHECK_THAT(parsed.error->element, Catch::Contains("Sale"));
  CHECK(parsed.transactions.empty());

  const std::string day = readFixture("ncr-acs-day.xml");
  const Parsed cut = parsePosLog(day.substr(0, day.size() / 2));
  REQUIRE(cut.error);
  CHECK(cut.error->line == 1);  // the NCR day is one line
}

TEST_CASE("DOCTYPE and ENTITY declarations are refused, never expanded", "[unit][pos]") {
  const std::string xxe =
      "<?xml version=\"1.0\"?>\n"
      "<!DOCTYPE POSLog [ <!ENTITY xxe SYSTEM \"file:///etc/passwd\"> ]>\n" +
      oneSale("&xxe;").substr(std::string("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n").size());
  const Parsed parsed = parsePosLog(xxe);
  REQUIRE(parsed.error);
  CHECK(parsed.error->code == "refused");
  CHECK(parsed.error->line == 2);
  CHECK(parsed.error->element == "!DOCTYPE");
  CHECK_THAT(parsed.error->reason, Catch::Contains("DOCTYPE"));

  SECTION("a billion laughs is refused before anything is parsed") {
    const Parsed laughs = parsePosLog(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 "
        "\"&lol;&lol;&lol;\">]><POSLog>&lol2;</POSLog>");
    REQUIRE(laughs.error);
    CHECK(laughs.error->code == "refused");
  }
}

TEST_CASE("empty and foreign documents are refused with a reason", "[unit][pos]") {
  CHECK(parsePosLog("").error->code == "empty");
  CHECK(parsePosLog(" \n\t\n").error->code == "empty");
  const Parsed html = parsePosLog("<html><body/></html>");
  REQUIRE(html.error);
  CHECK_THAT(html.error->reason, Catch::Contains("not POSLog"));
  const Parsed text = parsePosLog("just text");
  REQUIRE(text.error);
  CHECK(text.error->code == "invalid_xml");
}

TEST_CASE("a transaction without workstation or sequence is refused, naming the element",
          "[unit][pos]") {
  std::string xml = oneSale();
  xml.replace(xml.find("<WorkstationID>7</WorkstationID>"), 32, "");
  const Parsed parsed = parsePosLog(xml);
  REQUIRE(parsed.error);
  CHECK(parsed.error->line == 3);
  CHECK(parsed.error->element == "Transaction/WorkstationID");

  std::string bad_day = oneSale();
  bad_day.replace(bad_day.find("2026-11-22</Business"), 10, "22.11.2026");
  const Parsed day = parsePosLog(bad_day);
  REQUIRE(day.error);
  CHECK(day.error->line == 5);
  CHECK(day.error->element == "Transaction/BusinessDayDate");

  std::string bad_time = oneSale();
  bad_time.replace(bad_time.find("2026-11-22T13:32:42.123+01:00"), 29, "yesterday noon");
  const Parsed time = parsePosLog(bad_time);
  REQUIRE(time.error);
  CHECK(time.error->line == 6);
}

TEST_CASE("elements are matched by local name whatever the prefix", "[unit][pos]") {
  // The IXRetail namespace under a prefix, a vendor's own prefix for loyalty and customer, and
  // ARTS spellings: LoyaltyAccount, Customer/EMail, Return lines, TransactionStatus.
  const std::string xml = R"(<?xml version="1.0"?>
<ix:POSLog xmlns:ix="http://www.nrf-arts.org/IXRetail/namespace/" xmlns:vs="urn:visma:pos">
 <ix:Transaction>
  <ix:WorkstationID>K 2/3</ix:WorkstationID><ix:SequenceNumber>0815</ix:SequenceNumber>
  <ix:BusinessDayDate>2026-11-22</ix:BusinessDayDate>
  <ix:EndDateTime>2026-11-22T10:00:00Z</ix:EndDateTime><ix:CurrencyCode>EUR</ix:CurrencyCode>
  <ix:RetailTransaction>
   <ix:LineItem><ix:Return><ix:POSIdentity POSIDType="EAN13"><ix:POSItemID>4006381333931</ix:POSItemID></ix:POSIdentity>
    <ix:Description>  Stift  </ix:Description><ix:ActualSalesUnitPrice>-1.99</ix:ActualSalesUnitPrice>
    <ix:ExtendedAmount>-1.99</ix:ExtendedAmount><ix:Quantity>1</ix:Quantity></ix:Return></ix:LineItem>
   <ix:LineItem><ix:Tender TenderType="Cash"><ix:Amount>-1.99</ix:Amount></ix:Tender></ix:LineItem>
   <ix:LoyaltyAccount><ix:LoyaltyAccountID>LOY-77</ix:LoyaltyAccountID></ix:LoyaltyAccount>
   <vs:Customer><vs:EMail><vs:EMailAddress> Anna@Example.org </vs:EMailAddress></vs:EMail></vs:Customer>
   <ix:Total TotalType="TransactionGrandAmount">-1.99</ix:Total>
  </ix:RetailTransaction>
 </ix:Transaction>
 <ix:Transaction CancelFlag="true">
  <ix:WorkstationID>3</ix:WorkstationID><ix:SequenceNumber>9</ix:SequenceNumber>
  <ix:EndDateTime>2026-11-22T23:30:00-02:00</ix:EndDateTime>
  <ix:RetailTransaction TransactionStatus="Tendered"><ix:Customer><ix:CustomerID>C-1</ix:CustomerID></ix:Customer></ix:RetailTransaction>
 </ix:Transaction>
 <ix:Transaction>
  <ix:WorkstationID>3</ix:WorkstationID><ix:SequenceNumber>10</ix:SequenceNumber>
  <ix:BusinessDayDate>2026-11-22</ix:BusinessDayDate>
  <ix:TenderControlTransaction/>
 </ix:Transaction>
</ix:POSLog>)";
  const Parsed parsed = parsePosLog(xml);
  REQUIRE_FALSE(parsed.error);
  CHECK(parsed.skipped == 1);
  const std::vector<Event> events = eventsOf(parsed, "store 042");
  REQUIRE(events.size() == 2);

  // "K 2/3" is not id-safe: a readable hint and a hash of the exact fields (docs/pos.md).
  CHECK(events[0].id == "store-042:K-2-3:2026-11-22:0815:2ac665c4158d868133434ab01500b38a");
  CHECK(events[0].source == "pos:K-2-3");
  CHECK(events[0].customer.at("loyalty_id") == "LOY-77");
  CHECK(events[0].customer.at("email") == "Anna@Example.org");  // ingest normalises, hashes
  const json data = json::parse(events[0].data_json);
  CHECK(data["workstation"] == "K 2/3");
  CHECK(data["kind"] == "return");
  CHECK(data["currency"] == "EUR");
  CHECK(data["lines"] == json::parse(R"([{"gtin":"4006381333931","item_id":"4006381333931",
      "description":"Stift","unit_price":-1.99,"amount":-1.99,"quantity":1,"return":true}])"));
  CHECK(data["totals"] == json::parse(R"({"grand":-1.99})"));
  CHECK(events[0].data_json.find("Anna") == std::string::npos);  // never in data

  // No BusinessDayDate: the UTC date of the end; a cancelled transaction is a void.
  CHECK(events[1].id == "store-042:3:2026-11-23:9");
  CHECK(json::parse(events[1].data_json)["kind"] == "void");
  CHECK(events[1].customer.at("loyalty_id") == "C-1");
}

TEST_CASE("voided, cancelled and suspended transactions are kind void", "[unit][pos]") {
  const std::string status = GENERATE(as<std::string>{}, "Voided", "Cancelled", "Suspended");
  std::string xml = oneSale();
  xml.replace(xml.find("<RetailTransaction>"), 19,
              "<RetailTransaction><TransactionStatus>" + status + "</TransactionStatus>");
  const Parsed parsed = parsePosLog(xml);
  REQUIRE_FALSE(parsed.error);
  CHECK(json::parse(eventsOf(parsed)[0].data_json)["kind"] == "void");
  CHECK(json::parse(eventsOf(parsePosLog(oneSale()))[0].data_json)["kind"] == "sale");
}

TEST_CASE("text that is not UTF-8 still gives valid JSON", "[unit][pos]") {
  std::string xml = oneSale();
  xml.replace(xml.find("SKU-1"), 5, "K\xE4se");  // Latin-1, undeclared
  const Parsed parsed = parsePosLog(xml);
  REQUIRE_FALSE(parsed.error);
  const json data = json::parse(eventsOf(parsed)[0].data_json);
  CHECK(data["lines"][0]["item_id"] == "K\xEF\xBF\xBDse");
}

}  // namespace
}  // namespace omniedge::pos
