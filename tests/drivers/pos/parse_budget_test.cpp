// The parse budget (pos.max_parse_memory): files built to blow up a parser stop at the budget
// with a reason, while real days fit the default.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "drivers/pos/poslog_xml.h"
#include "drivers/pos/transaction.h"
#include "drivers/pos/transaction_json.h"

namespace omniedge::pos {
namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr std::size_t kNoLimit = static_cast<std::size_t>(-1);

std::string repeat(std::string_view unit, std::size_t times) {
  std::string out;
  out.reserve(unit.size() * times);
  for (std::size_t i = 0; i < times; ++i) {
    out += unit;
  }
  return out;
}

std::string readFixture(const std::string& name) {
  std::ifstream in(std::string(OMNIEDGE_SOURCE_DIR) + "/tests/fixtures/poslog/" + name,
                   std::ios::binary);
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The synthetic day of bench/bench_pos.cpp: ~1.5 KB a transaction, 41 elements and 11
// attributes each (two lines, a card tender, a loyalty id, two totals).
std::string syntheticDay(std::size_t transactions) {
  std::string xml =
      "<?xml version=\"1.0\"?>\n<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\" "
      "xmlns:acs=\"http://www.ncr.com/rsd/acs/tlog/markup/poslog/2.1\">\n";
  for (std::size_t i = 0; i < transactions; ++i) {
    const std::string seq = std::to_string(i + 1);
    xml += "<Transaction><RetailStoreID>9</RetailStoreID><WorkstationID>" +
           std::to_string(i % 12 + 1) + "</WorkstationID><SequenceNumber>" + seq +
           "</SequenceNumber><BusinessDayDate>2025-11-22</BusinessDayDate>"
           "<EndDateTime>2025-11-22T12:00:00</EndDateTime><CurrencyCode>EUR</CurrencyCode>"
           "<RetailTransaction Version=\"2.1\">";
    for (int line = 0; line < 2; ++line) {
      const std::string item = "0400638133393" + std::to_string(line);
      xml += "<LineItem EntryMethod=\"Scanned\"><SequenceNumber>" + std::to_string(line + 1) +
             "</SequenceNumber><Sale ItemType=\"Stock\"><POSIdentity POSIDType=\"GTIN\">"
             "<POSItemID>" +
             item + "</POSItemID></POSIdentity><ItemID>" + item +
             "</ItemID><Description>SYNTHETIC ITEM</Description>"
             "<RegularSalesUnitPrice>2.99</RegularSalesUnitPrice><ExtendedAmount>2.99"
             "</ExtendedAmount><ExtendedDiscountAmount>0.00</ExtendedDiscountAmount>"
             "<Quantity>1</Quantity></Sale></LineItem>";
    }
    xml +=
        "<LineItem><Tender TenderType=\"CreditDebit\"><Amount>5.98</Amount><Authorization>"
        "<AuthorizationCode>123456</AuthorizationCode></Authorization><CreditDebit "
        "CardType=\"Debit\"/></Tender></LineItem><LineItem><acs:LoyaltyMembership>"
        "<acs:LoyaltyID>00000" +
        seq +
        "</acs:LoyaltyID></acs:LoyaltyMembership></LineItem>"
        "<Total TotalType=\"TransactionGrandAmount\">5.98</Total>"
        "<Total TotalType=\"TransactionTaxAmount\">0.39</Total>"
        "</RetailTransaction></Transaction>\n";
  }
  xml += "</POSLog>\n";
  return xml;
}

const char* const kHeader = R"("workstation":"1","sequence":"1","business_day":"2026-11-22")";

TEST_CASE("the real day and a synthetic 20,000-transaction day fit the default budget",
          "[unit][pos]") {
  const Parsed day = parsePosLog(readFixture("ncr-acs-day.xml"));
  REQUIRE_FALSE(day.error);
  CHECK(day.transactions.size() == 51);
  CHECK(day.peak_memory < 4 * kMiB);

  const std::string big = syntheticDay(20000);
  INFO("bytes: " << big.size());
  const Parsed parsed = parsePosLog(big);
  REQUIRE_FALSE(parsed.error);
  CHECK(parsed.transactions.size() == 20000);
  CHECK(parsed.peak_memory <= kDefaultMaxParseMemory);
  // ...and the same day is refused, with the reason, by a budget it does not fit.
  const Parsed tight = parsePosLog(big, parsed.peak_memory / 2);
  REQUIRE(tight.error);
  CHECK(tight.error->code == "too_large");
  CHECK(tight.transactions.empty());
}

TEST_CASE("a POSLog of millions of empty elements stops at the parse budget", "[unit][pos]") {
  const std::string xml = "<POSLog>" + repeat("<a/>", 2'000'000) + "</POSLog>";  // 8 MB
  const Parsed parsed = parsePosLog(xml, 16 * kMiB);
  REQUIRE(parsed.error);
  CHECK(parsed.error->code == "too_large");
  CHECK(parsed.error->reason ==
        "reading it would take more than 16 MiB of memory (the parse budget): it holds too many "
        "elements or values");
  CHECK(parsed.peak_memory <= 16 * kMiB);
  // Without a budget that file takes many times its size (what made the agent OOM).
  const Parsed unbounded = parsePosLog(xml, kNoLimit);
  CHECK_FALSE(unbounded.error);
  CHECK(unbounded.peak_memory > 100 * kMiB);
}

TEST_CASE("empty Sale lines are charged as they are made", "[unit][pos]") {
  const std::string xml = std::string("<POSLog><Transaction><WorkstationID>1</WorkstationID>") +
                          "<SequenceNumber>1</SequenceNumber><BusinessDayDate>2026-11-22" +
                          "</BusinessDayDate><RetailTransaction><LineItem>" +
                          repeat("<Sale/>", 400'000) +
                          "</LineItem></RetailTransaction></Transaction></POSLog>";
  const Parsed bounded = parsePosLog(xml, 64 * kMiB);
  REQUIRE(bounded.error);
  CHECK(bounded.error->code == "too_large");
  CHECK(bounded.peak_memory <= 64 * kMiB);
}

TEST_CASE("a JSON array of empty arrays is refused at its first element", "[unit][pos]") {
  const std::string text = "[" + repeat("[],", 3'000'000) + "[]]";
  const Parsed parsed = parseJsonTransactions(text, kNoLimit, nullptr);
  REQUIRE(parsed.error);
  CHECK(parsed.error->code == "invalid");
  CHECK(parsed.error->element == "[0]");
  CHECK(parsed.peak_memory < 4096);  // nothing was built past it
}

TEST_CASE("JSON holding millions of values stops at the parse budget", "[unit][pos]") {
  struct Case {
    std::string name;
    std::string text;
  };
  const auto c = GENERATE(
      Case{"values under an unknown field", "{\"x\":[" + repeat("[],", 3'000'000) + "[]]}"},
      Case{"empty lines of one transaction",
           std::string("{") + kHeader + ",\"lines\":[" + repeat("{},", 3'000'000) + "{}]}"},
      Case{"empty lines in an array of transactions",
           std::string("[{") + kHeader + ",\"lines\":[" + repeat("{},", 3'000'000) + "{}]}]"},
      Case{"long strings",
           "{\"x\":[" + repeat("\"" + std::string(1000, 'a') + "\",", 40'000) + "\"\"]}"});
  INFO(c.name);
  const Parsed parsed = parseJsonTransactions(c.text, kNoLimit, nullptr, 16 * kMiB);
  REQUIRE(parsed.error);
  CHECK(parsed.error->code == "too_large");
  CHECK_THAT(parsed.error->reason, Catch::Contains("more than 16 MiB of memory"));
  CHECK(parsed.peak_memory <= 16 * kMiB);

  const Parsed lines = parseJsonLines(c.text, 16 * kMiB);  // the same as one JSON Lines line
  REQUIRE(lines.error);
  CHECK(lines.error->code == "too_large");
  CHECK(lines.error->line == 1);
  CHECK(lines.peak_memory <= 16 * kMiB);
}

TEST_CASE("an array of transactions holds one transaction's values at a time", "[unit][pos]") {
  // 2000 transactions of 50 lines: as one tree ~40 MB of JSON values; mapped element by
  // element only the transactions (~25 MB) and one element's values.
  std::string text = "[";
  for (int i = 0; i < 2000; ++i) {
    text += std::string(i > 0 ? "," : "") + "{\"workstation\":\"1\",\"sequence\":\"" +
            std::to_string(i) + "\",\"business_day\":\"2026-11-22\",\"lines\":[" +
            repeat(R"({"item_id":"SKU-12345","quantity":1,"amount":"2.50"},)", 49) +
            R"({"item_id":"SKU-12345","quantity":1,"amount":"2.50"}]})";
  }
  text += "]";
  const Parsed parsed = parseJsonTransactions(text, kNoLimit, nullptr);
  REQUIRE_FALSE(parsed.error);
  REQUIRE(parsed.transactions.size() == 2000);
  std::size_t transactions = 0;
  for (const Transaction& tx : parsed.transactions) {
    transactions += footprint(tx);
  }
  CHECK(parsed.peak_memory < transactions * 3 / 2);
}

TEST_CASE("an array past max_transactions stops at the element past it", "[unit][pos]") {
  const std::string one = std::string("{") + kHeader + "}";
  const std::string text = "[" + repeat(one + ",", 100'000) + one + "]";
  const Parsed parsed = parseJsonTransactions(text, 1000, nullptr);
  REQUIRE(parsed.error);
  CHECK(parsed.error->code == "too_large");
  CHECK(parsed.error->reason ==
        "more than 1000 transactions in one request; at most 1000 are "
        "accepted");
  CHECK(parsed.peak_memory < 2 * kMiB);
}

TEST_CASE("random bytes are refused with a reason", "[unit][pos]") {
  std::mt19937_64 random(12);
  std::string bytes(4 * kMiB, '\0');
  for (std::size_t i = 0; i < bytes.size(); i += 8) {
    const uint64_t r = random();
    std::memcpy(bytes.data() + i, &r, 8);
  }
  const Parsed xml = parsePosLog(bytes);
  REQUIRE(xml.error);
  CHECK(xml.error->code == "invalid_xml");
  CHECK_FALSE(xml.error->reason.empty());
  const Parsed json = parseJsonTransactions(bytes, kNoLimit, nullptr);
  REQUIRE(json.error);
  CHECK(json.error->code == "invalid_json");
  const Parsed lines = parseJsonLines(bytes);
  REQUIRE(lines.error);
  CHECK(lines.error->code == "invalid_json");
}

TEST_CASE("XML parses on several threads keep their own budgets", "[unit][pos]") {
  // pugixml's allocator is process-wide; the budget it charges is the calling thread's.
  const std::string day = readFixture("ncr-acs-day.xml");
  const std::string bomb = "<POSLog>" + repeat("<a/>", 500'000) + "</POSLog>";
  std::vector<Parsed> days(4);
  std::vector<Parsed> bombs(4);
  {
    std::vector<std::jthread> threads;
    for (std::size_t t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int round = 0; round < 3; ++round) {
          days[t] = parsePosLog(day);
          bombs[t] = parsePosLog(bomb, 4 * kMiB);
        }
      });
    }
  }
  for (std::size_t t = 0; t < 4; ++t) {
    CHECK_FALSE(days[t].error);
    CHECK(days[t].transactions.size() == 51);
    REQUIRE(bombs[t].error);
    CHECK(bombs[t].error->code == "too_large");
  }
}

}  // namespace
}  // namespace omniedge::pos
