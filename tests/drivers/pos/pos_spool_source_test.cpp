#include "drivers/pos/pos_spool_source.h"

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/recording_writer.h"
#include "tests/support/temp_dir.h"

namespace omniedge::pos {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::RecordingWriter;
using testing::TempDir;

std::string readFixture(const std::string& name) {
  std::ifstream in(std::string(OMNIEDGE_SOURCE_DIR) + "/tests/fixtures/poslog/" + name,
                   std::ios::binary);
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Written in place a while ago: settled, as a file is that a till finished long before.
void putOld(const TempDir& spool, const std::string& name, const std::string& content,
            int age_s = 60) {
  spool.write(name, content);
  fs::last_write_time(spool / name, fs::file_time_type::clock::now() - std::chrono::seconds(age_s));
}

// As a till should drop a file: written under a temporary name, then renamed into place.
void dropByRename(const TempDir& spool, const std::string& name, const std::string& content) {
  spool.write(name + ".part", content);
  fs::rename(spool / (name + ".part"), spool / name);
}

PosSpoolOptions optionsFor(const TempDir& spool) {
  PosSpoolOptions options;
  options.spool_dir = spool.path();
  options.store_id = "store-042";
  options.retry_backoff_ms = 0;  // tests retry at once; the default is 1 s
  return options;
}

// Polls until `done()` holds, at most `max_polls` times (a poll with nothing to do waits at
// most 500 ms).
template <class Done>
void pollUntil(Source& source, EventWriter& writer, Done done, int max_polls = 20) {
  for (int i = 0; i < max_polls && !done(); ++i) {
    (void)source.poll(writer, {});
  }
}

std::size_t filesIn(const fs::path& dir) {
  std::size_t n = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    n += entry.is_regular_file() ? 1 : 0;
  }
  return n;
}

std::vector<std::string> idsOf(const std::vector<Event>& events) {
  std::vector<std::string> ids;
  for (const Event& e : events) {
    ids.push_back(e.id);
  }
  return ids;
}

// Like the real buffer: an id already stored is ignored (and still acknowledged).
class DedupWriter final : public EventWriter {
 public:
  Result<AppendOutcome> append(std::vector<Event> events) override {
    AppendOutcome outcome;
    for (const Event& e : events) {
      outcome.ids.push_back(e.id);
      if (ids_.insert(e.id).second) {
        ++outcome.stored;
      } else {
        ++outcome.duplicates;
      }
    }
    last_ = outcome;
    return outcome;
  }
  Result<AppendOutcome> appendEach(std::vector<Event> events) override {
    return append(std::move(events));
  }
  std::size_t stored() const { return ids_.size(); }
  const AppendOutcome& last() const { return last_; }

 private:
  std::set<std::string> ids_;
  AppendOutcome last_;
};

// One line, so that it also serves as a JSON Lines file.
const char* const kOneSale = R"({"workstation":"31","sequence":"4711","business_day":"2026-11-22",)"
                             R"("lines":[{"item_id":"A","amount":12.50}]})";

TEST_CASE("the POS spool keeps a file until its events are durable", "[unit][pos]") {
  TempDir spool;
  putOld(spool, "0001.json", kOneSale);
  RecordingWriter writer;
  auto source = makePosSpool(optionsFor(spool));
  CHECK(source->name() == "pos");

  SECTION("append succeeds: events stored, file moved to processed/") {
    REQUIRE(source->poll(writer, {}).has_value());
    CHECK(writer.events().size() == 1);
    CHECK(writer.events()[0].id == "store-042:31:2026-11-22:4711");
    CHECK(spool.exists("processed/0001.json"));
    CHECK_FALSE(spool.exists("0001.json"));
  }
  SECTION("append fails: error returned, file kept where it was") {
    writer.failNextAppend();
    auto result = source->poll(writer, {});
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().code == "io");
    CHECK(spool.exists("0001.json"));
    CHECK(filesIn(spool / "processed") == 0);
    CHECK(filesIn(spool / "rejected") == 0);
  }
}

TEST_CASE("the real NCR day goes through the spool in one append", "[unit][pos]") {
  TempDir spool;
  putOld(spool, "ncr-acs-day.xml", readFixture("ncr-acs-day.xml"));
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  REQUIRE(source.poll(writer, {}).has_value());

  CHECK(writer.appendCalls() == 1);
  const std::vector<Event> events = writer.events();
  REQUIRE(events.size() == 51);
  std::size_t controls = 0;
  for (const Event& e : events) {
    controls += e.type == "pos.control" ? 1 : 0;
  }
  CHECK(controls == 9);
  CHECK(spool.exists("processed/ncr-acs-day.xml"));
  CHECK(fs::is_directory(spool / "rejected"));
  CHECK(filesIn(spool.path()) == 0);
  const PosSpoolStats stats = source.stats();
  CHECK(stats.files_processed == 1);
  CHECK(stats.events == 51);
  CHECK(stats.files_rejected == 0);
}

TEST_CASE("files that cannot be read go whole to rejected/, the good one beside them is read",
          "[unit][pos]") {
  TempDir spool;
  const std::string small = readFixture("ncr-acs-small.xml");
  std::string bad_amount = small;
  bad_amount.replace(bad_amount.find("<ExtendedAmount>1.26<"), 21, "<ExtendedAmount>1,26<");
  const std::string pretty_bad =  // one element per line: the .error names line 4
      "<POSLog>\n<Transaction><WorkstationID>1</WorkstationID><SequenceNumber>1</SequenceNumber>\n"
      "<BusinessDayDate>2026-11-22</BusinessDayDate><RetailTransaction>\n"
      "<Total TotalType=\"TransactionGrandAmount\">12.5O</Total>\n"
      "</RetailTransaction></Transaction></POSLog>\n";
  putOld(spool, "a-truncated.xml", small.substr(0, small.size() / 2), 70);
  putOld(spool, "b-bad-amount.xml", bad_amount, 69);
  putOld(spool, "c-pretty-bad.xml", pretty_bad, 68);
  putOld(spool, "d-xxe.xml",
         "<?xml version=\"1.0\"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n"
         "<POSLog>&x;</POSLog>",
         67);
  putOld(spool, "e-empty.xml", "", 66);
  putOld(spool, "f-bad.jsonl", std::string(kOneSale) + "\n{\"workstation\":\"1\"}\n", 65);
  putOld(spool, "g-bad.json", R"({"workstation":"1","sequence":"2","business_day":"x"})", 64);
  putOld(spool, "z-good.xml", small, 10);
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  pollUntil(source, writer, [&] { return filesIn(spool.path()) == 0; });

  CHECK(filesIn(spool.path()) == 0);
  CHECK(spool.exists("processed/z-good.xml"));
  CHECK(writer.events().size() == 2);  // only the good file's
  CHECK(writer.appendCalls() == 1);
  CHECK(source.stats().files_rejected == 7);

  const auto error = [&](const std::string& name) {
    REQUIRE(spool.exists("rejected/" + name));
    REQUIRE(spool.exists("rejected/" + name + ".error"));
    return spool.read("rejected/" + name + ".error");
  };
  CHECK_THAT(error("a-truncated.xml"), Catch::StartsWith("why: malformed XML") &&
                                           Catch::Contains("line: 1\n") &&
                                           Catch::Contains("element: near "));
  CHECK_THAT(error("b-bad-amount.xml"),
             Catch::Contains("\"1,26\" is not a decimal amount") &&
                 Catch::Contains("element: Transaction/RetailTransaction/LineItem/Sale/"
                                 "ExtendedAmount\n"));
  CHECK(error("c-pretty-bad.xml") ==
        "why: Total \"12.5O\" is not a decimal amount (like 12.50)\nline: 4\n"
        "element: Transaction/RetailTransaction/Total\n");
  CHECK_THAT(error("d-xxe.xml"), Catch::Contains("DOCTYPE") && Catch::Contains("line: 2\n") &&
                                     Catch::Contains("element: !DOCTYPE"));
  CHECK(error("e-empty.xml") == "why: the file is empty\n");
  CHECK_THAT(error("f-bad.jsonl"),
             Catch::Contains("sequence is required") && Catch::Contains("line: 2\n"));
  CHECK_THAT(error("g-bad.json"), Catch::Contains("element: business_day"));
}

TEST_CASE("the same file dropped twice gives the same ids, which the buffer ignores",
          "[unit][pos]") {
  TempDir spool;
  const std::string day = readFixture("ncr-acs-day.xml");
  PosSpoolSource source(optionsFor(spool));

  SECTION("the writer sees identical ids") {
    RecordingWriter writer;
    putOld(spool, "day.xml", day);
    REQUIRE(source.poll(writer, {}).has_value());
    putOld(spool, "day.xml", day);
    REQUIRE(source.poll(writer, {}).has_value());
    const std::vector<std::string> ids = idsOf(writer.events());
    REQUIRE(ids.size() == 102);
    CHECK(std::vector<std::string>(ids.begin(), ids.begin() + 51) ==
          std::vector<std::string>(ids.begin() + 51, ids.end()));
    CHECK(spool.exists("processed/day.xml"));
    CHECK(spool.exists("processed/day-1.xml"));  // the first copy is never overwritten
  }
  SECTION("a writer that ignores known ids stores them once") {
    DedupWriter writer;
    putOld(spool, "day.xml", day);
    REQUIRE(source.poll(writer, {}).has_value());
    CHECK(writer.last().stored == 51);
    putOld(spool, "day-again.xml", day);
    REQUIRE(source.poll(writer, {}).has_value());
    CHECK(writer.last().stored == 0);
    CHECK(writer.last().duplicates == 51);
    CHECK(writer.stored() == 51);
    CHECK(source.stats().duplicates == 51);
  }
}

TEST_CASE("when the writer pushes back the file stays, nothing moves, and a later poll succeeds",
          "[unit][pos]") {
  TempDir spool;
  putOld(spool, "0001.json", kOneSale);
  RecordingWriter writer;
  const std::string code = GENERATE(as<std::string>{}, "full", "stopping", "io");
  writer.failNextAppend(makeError(code, "pushed back"));

  SECTION("retried on the next poll after the backoff") {
    PosSpoolSource source(optionsFor(spool));
    auto first = source.poll(writer, {});
    REQUIRE_FALSE(first.has_value());
    CHECK(first.error().code == code);
    CHECK(spool.exists("0001.json"));
    CHECK(filesIn(spool / "processed") == 0);
    CHECK(filesIn(spool / "rejected") == 0);
    CHECK(writer.events().empty());
    CHECK(source.stats().retries == 1);

    REQUIRE(source.poll(writer, {}).has_value());
    CHECK(writer.events().size() == 1);
    CHECK(spool.exists("processed/0001.json"));
  }
  SECTION("not before the backoff") {
    PosSpoolOptions options = optionsFor(spool);
    options.retry_backoff_ms = 60000;
    PosSpoolSource source(options);
    REQUIRE_FALSE(source.poll(writer, {}).has_value());
    CHECK(source.poll(writer, {}).has_value());  // waits (≤ 500 ms), tries nothing
    CHECK(writer.appendCalls() == 1);
    CHECK(spool.exists("0001.json"));
  }
}

TEST_CASE("killed between the commit and the move: the file is read again with the same ids",
          "[unit][pos]") {
  TempDir spool;
  putOld(spool, "day.xml", readFixture("ncr-acs-day.xml"));
  DedupWriter buffer;
  RecordingWriter seen;
  std::vector<std::string> first_ids;
  {
    PosSpoolOptions options = optionsFor(spool);
    options.crash_after_append = true;  // test hook: return right after the append
    PosSpoolSource crashing(options);
    REQUIRE(crashing.poll(seen, {}).has_value());
    first_ids = idsOf(seen.events());
    REQUIRE(buffer.append(seen.events()).has_value());
    CHECK(spool.exists("day.xml"));  // committed, not moved
    CHECK(filesIn(spool / "processed") == 0);
  }
  RecordingWriter again;
  PosSpoolSource restarted(optionsFor(spool));
  REQUIRE(restarted.poll(again, {}).has_value());
  CHECK(idsOf(again.events()) == first_ids);
  REQUIRE(buffer.append(again.events()).has_value());
  CHECK(buffer.last().duplicates == 51);
  CHECK(buffer.stored() == 51);
  CHECK(spool.exists("processed/day.xml"));
  CHECK_FALSE(spool.exists("day.xml"));
}

TEST_CASE("keep_processed=false deletes a file once its events are durable", "[unit][pos]") {
  TempDir spool;
  putOld(spool, "0001.jsonl", kOneSale);
  PosSpoolOptions options = optionsFor(spool);
  options.keep_processed = false;
  PosSpoolSource source(options);
  RecordingWriter writer;
  REQUIRE(source.poll(writer, {}).has_value());
  CHECK(writer.events().size() == 1);
  CHECK(filesIn(spool.path()) == 0);
  CHECK(filesIn(spool / "processed") == 0);
}

TEST_CASE("half-written files, dotfiles, *.tmp and *.part are left alone", "[unit][pos]") {
  TempDir spool;
  spool.write("fresh.json", kOneSale);  // modified just now: may still be written to
  putOld(spool, ".hidden.json", kOneSale);
  putOld(spool, "upload.json.tmp", kOneSale);
  putOld(spool, "upload.json.part", kOneSale);
  putOld(spool, "notes.txt", "not a POS file");
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  REQUIRE(source.poll(writer, {}).has_value());
  CHECK(writer.events().empty());
  CHECK(spool.exists("fresh.json"));

  fs::last_write_time(spool / "fresh.json",
                      fs::file_time_type::clock::now() - std::chrono::seconds(5));
  pollUntil(
      source, writer, [&] { return !writer.events().empty(); }, 4);
  CHECK(writer.events().size() == 1);
  CHECK(spool.exists("processed/fresh.json"));
  for (const char* name : {".hidden.json", "upload.json.tmp", "upload.json.part", "notes.txt"}) {
    CHECK(spool.exists(name));
  }
}

TEST_CASE("files are read oldest first, then by name", "[unit][pos]") {
  TempDir spool;
  const auto sale = [](int sequence) {
    return R"({"workstation":"1","sequence":")" + std::to_string(sequence) +
           R"(","business_day":"2026-11-22"})";
  };
  putOld(spool, "a.json", sale(3), 10);
  putOld(spool, "b.json", sale(1), 60);
  putOld(spool, "d.json", sale(2), 30);
  putOld(spool, "c.json", sale(4), 10);
  fs::last_write_time(spool / "c.json", fs::last_write_time(spool / "a.json"));
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  pollUntil(source, writer, [&] { return writer.events().size() == 4; });
  CHECK(idsOf(writer.events()) ==
        std::vector<std::string>{"store-042:1:2026-11-22:1", "store-042:1:2026-11-22:2",
                                 "store-042:1:2026-11-22:3", "store-042:1:2026-11-22:4"});
}

TEST_CASE("JSON, JSON Lines and POSLog files all go through the spool", "[unit][pos]") {
  TempDir spool;
  putOld(spool, "a.json",
         R"([{"workstation":"1","sequence":"1","business_day":"2026-11-22"},
             {"workstation":"1","sequence":"2","business_day":"2026-11-22"}])",
         30);
  putOld(spool, "b.jsonl",
         "{\"workstation\":\"2\",\"sequence\":\"1\",\"business_day\":\"2026-11-22\"}\n"
         "{\"workstation\":\"2\",\"sequence\":\"2\",\"business_day\":\"2026-11-22\","
         "\"control\":{\"operation\":\"NoSale\"}}\n",
         20);
  putOld(spool, "C.XML", readFixture("ncr-acs-small.xml"), 10);
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  pollUntil(source, writer, [&] { return filesIn(spool.path()) == 0; });
  CHECK(writer.appendCalls() == 3);
  REQUIRE(writer.events().size() == 6);
  CHECK(writer.events()[3].type == "pos.control");
  CHECK(writer.events()[3].source == "pos:2");
  CHECK(filesIn(spool / "processed") == 3);
}

TEST_CASE("the writer's own refusal rejects the file, naming the transaction", "[unit][pos]") {
  TempDir spool;
  putOld(spool, "day.xml", readFixture("ncr-acs-small.xml"));
  RecordingWriter writer;
  // As Ingest words it: the event's field, which the spool tells as the transaction's.
  writer.failNextAppend(
      makeError("invalid", "occurred_at is more than a day in the future", "[1].occurred_at"));
  PosSpoolSource source(optionsFor(spool));
  REQUIRE(source.poll(writer, {}).has_value());
  REQUIRE(spool.exists("rejected/day.xml.error"));
  CHECK(spool.read("rejected/day.xml.error") ==
        "why: the agent refused transaction 161 of workstation 34: ended_at is more than a day "
        "in the future\n"
        "line: 1\n"
        "element: Transaction (ended_at)\n");
}

TEST_CASE("files over the size limit are rejected without being read", "[unit][pos]") {
  TempDir spool;
  {
    // 65 MiB, sparse: costs nothing on disk.
    const int fd = ::open((spool / "huge.xml").c_str(), O_WRONLY | O_CREAT, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, 65LL << 20) == 0);
    ::close(fd);
    fs::last_write_time(spool / "huge.xml",
                        fs::file_time_type::clock::now() - std::chrono::seconds(60));
  }
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  REQUIRE(source.poll(writer, {}).has_value());
  CHECK(writer.appendCalls() == 0);
  REQUIRE(spool.exists("rejected/huge.xml.error"));
  CHECK_THAT(spool.read("rejected/huge.xml.error"),
             Catch::Contains("68157440 bytes") && Catch::Contains("67108864"));
}

// ~1.4 KB per transaction (two lines, a tender, a loyalty id), like a busy store's POSLog.
std::string syntheticDay(std::size_t transactions) {
  std::string xml =
      "<?xml version=\"1.0\"?>\n<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/"
      "namespace/\" xmlns:acs=\"urn:acs\">\n";
  xml.reserve(transactions * 1300 + 200);
  for (std::size_t i = 0; i < transactions; ++i) {
    const std::string seq = std::to_string(i + 1);
    xml += "<Transaction><RetailStoreID>9</RetailStoreID><WorkstationID>" +
           std::to_string(i % 12 + 1) + "</WorkstationID><SequenceNumber>" + seq +
           "</SequenceNumber><BusinessDayDate>2026-11-22</BusinessDayDate>"
           "<EndDateTime>2026-11-22T12:00:00</EndDateTime><CurrencyCode>EUR</CurrencyCode>"
           "<RetailTransaction Version=\"2.1\">";
    for (int line = 0; line < 2; ++line) {
      xml += "<LineItem EntryMethod=\"Scanned\"><SequenceNumber>" + std::to_string(line + 1) +
             "</SequenceNumber><Sale ItemType=\"Stock\"><POSIdentity POSIDType=\"GTIN\"><POSItemID>"
             "0400638133393" +
             std::to_string(line) + "</POSItemID></POSIdentity><ItemID>0400638133393" +
             std::to_string(line) +
             "</ItemID><Description>SYNTHETIC ITEM</Description>"
             "<RegularSalesUnitPrice>2.99</RegularSalesUnitPrice><ExtendedAmount>2.99"
             "</ExtendedAmount><ExtendedDiscountAmount>0.00</ExtendedDiscountAmount>"
             "<Quantity>1</Quantity></Sale></LineItem>";
    }
    xml +=
        "<LineItem><Tender TenderType=\"Cash\"><Amount>5.98</Amount></Tender></LineItem>"
        "<LineItem><acs:LoyaltyMembership><acs:LoyaltyID>00000" +
        seq +
        "</acs:LoyaltyID></acs:LoyaltyMembership></LineItem>"
        "<Total TotalType=\"TransactionGrandAmount\">5.98</Total>"
        "<Total TotalType=\"TransactionTaxAmount\">0.57</Total>"
        "</RetailTransaction></Transaction>\n";
  }
  xml += "</POSLog>\n";
  return xml;
}

TEST_CASE("a 50 MB POSLog is read whole into one append when pos.max_parse_memory allows it",
          "[unit][pos]") {
  TempDir spool;
  const std::string xml = syntheticDay(40000);
  INFO("bytes: " << xml.size());
  CHECK(xml.size() > 50'000'000);
  CHECK(xml.size() < (std::size_t{64} << 20));
  putOld(spool, "big.xml", xml);
  RecordingWriter writer;
  PosSpoolOptions options = optionsFor(spool);
  options.max_parse_memory = std::size_t{256} << 20;  // its tree and transactions take ~175 MB
  PosSpoolSource source(options);
  // Bounded by the number of polls, not by time: parsing takes about a second here.
  pollUntil(
      source, writer, [&] { return writer.appendCalls() > 0; }, 5);
  CHECK(writer.appendCalls() == 1);
  const std::vector<Event> events = writer.events();
  REQUIRE(events.size() == 40000);
  const std::vector<std::string> ids = idsOf(events);
  CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == 40000);
  CHECK(events.back().customer.at("loyalty_id") == "40000");
  CHECK(spool.exists("processed/big.xml"));
}

TEST_CASE("poll() honours a stop request", "[unit][pos]") {
  TempDir spool;
  putOld(spool, "0001.json", kOneSale);
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  std::stop_source stopped;
  stopped.request_stop();
  REQUIRE(source.poll(writer, stopped.get_token()).has_value());
  CHECK(writer.events().empty());  // no new file is started once stop is requested
  CHECK(spool.exists("0001.json"));

  REQUIRE(source.poll(writer, {}).has_value());
  CHECK(writer.events().size() == 1);

  // Nothing to do: poll() waits, and a stop request ends the wait.
  std::stop_source stop;
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop.request_stop();
  });
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(source.poll(writer, stop.get_token()).has_value());
  stopper.join();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
}

TEST_CASE("a spool directory that cannot be used is an io error, not a crash", "[unit][pos]") {
  TempDir dir;
  dir.write("not-a-dir", "x");
  PosSpoolOptions options;
  options.spool_dir = dir / "not-a-dir";
  PosSpoolSource source(options);
  RecordingWriter writer;
  auto result = source.poll(writer, {});
  REQUIRE_FALSE(result.has_value());
  CHECK(result.error().code == "io");
  CHECK_THAT(result.error().message, Catch::Contains("not-a-dir"));
}

TEST_CASE("a file that arrives by rename is read at once, without waiting to settle",
          "[integration][pos]") {
  TempDir spool;
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  REQUIRE(source.poll(writer, {}).has_value());  // sets up the watch; nothing there yet
  dropByRename(spool, "0001.json", kOneSale);    // mtime: now
  pollUntil(
      source, writer, [&] { return !writer.events().empty(); }, 3);
  CHECK(writer.events().size() == 1);
  CHECK(spool.exists("processed/0001.json"));

  SECTION("also while poll() waits") {
    std::thread dropper([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      dropByRename(spool, "0002.json",
                   R"({"workstation":"31","sequence":"4712","business_day":"2026-11-22"})");
    });
    pollUntil(
        source, writer, [&] { return writer.events().size() == 2; }, 3);
    dropper.join();
    CHECK(writer.events().size() == 2);
  }
}

TEST_CASE("a file still settling is not overtaken by a newer one that arrived by rename",
          "[integration][pos]") {
  // After a restart, a file the till wrote just before is found by the first scan and waits to
  // settle; a file renamed into place after the restart is complete at once. Read in arrival
  // order, the newer sale reached the centre first (reorders in R1's verdicts).
  TempDir spool;
  spool.write("0001.json", kOneSale);  // in place, mtime now: settles for settle_ms
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  REQUIRE(source.poll(writer, {}).has_value());  // the watch, and 0001.json seen settling
  CHECK(writer.events().empty());
  dropByRename(spool, "0002.json",
               R"({"workstation":"31","sequence":"4712","business_day":"2026-11-22"})");
  pollUntil(
      source, writer, [&] { return writer.events().size() == 2; }, 10);
  REQUIRE(writer.events().size() == 2);
  CHECK(writer.events()[0].id == "store-042:31:2026-11-22:4711");
  CHECK(writer.events()[1].id == "store-042:31:2026-11-22:4712");

  SECTION("but one that keeps changing holds the newer files for 2 x settle_ms at most") {
    spool.write("0003.json", kOneSale);
    REQUIRE(source.poll(writer, {}).has_value());
    dropByRename(spool, "0004.json",
                 R"({"workstation":"31","sequence":"4713","business_day":"2026-11-22"})");
    for (int i = 0; i < 40 && writer.events().size() < 3; ++i) {
      std::ofstream(spool / "0003.json", std::ios::app) << " ";  // still being written
      (void)source.poll(writer, {});
    }
    REQUIRE(writer.events().size() == 3);
    CHECK(writer.events()[2].id == "store-042:31:2026-11-22:4713");
  }
}

std::string repeat(std::string_view unit, std::size_t times) {
  std::string out;
  out.reserve(unit.size() * times);
  for (std::size_t i = 0; i < times; ++i) {
    out += unit;
  }
  return out;
}

std::string randomBytes(std::size_t size) {
  std::mt19937_64 random(7);
  std::string bytes(size, '\0');
  for (std::size_t i = 0; i + 8 <= size; i += 8) {
    const uint64_t r = random();
    std::memcpy(bytes.data() + i, &r, 8);
  }
  return bytes;
}

TEST_CASE("files over the parse budget go to rejected/ and the next file is read", "[unit][pos]") {
  TempDir spool;
  // The shapes of issue 12: millions of empty elements, a JSON object of millions of values, a
  // transaction of millions of empty lines; then 60 MiB of random bytes; then a good file.
  putOld(spool, "a-empty-elements.xml", "<POSLog>" + repeat("<a/>", 2'000'000) + "</POSLog>", 90);
  putOld(spool, "b-values.json", "{\"x\":[" + repeat("[],", 3'000'000) + "[]]}", 89);
  putOld(spool, "c-lines.jsonl",
         R"({"workstation":"1","sequence":"1","business_day":"2026-11-22","lines":[)" +
             repeat("{},", 3'000'000) + "{}]}",
         88);
  putOld(spool, "d-random.xml", randomBytes(std::size_t{60} << 20), 87);
  putOld(spool, "e-good.json", kOneSale, 10);
  RecordingWriter writer;
  PosSpoolOptions options = optionsFor(spool);
  options.max_parse_memory = std::size_t{16} << 20;
  PosSpoolSource source(options);
  pollUntil(source, writer, [&] { return filesIn(spool.path()) == 0; });

  REQUIRE(writer.events().size() == 1);
  CHECK(writer.events()[0].id == "store-042:31:2026-11-22:4711");
  CHECK(spool.exists("processed/e-good.json"));
  for (const char* name : {"a-empty-elements.xml", "b-values.json", "c-lines.jsonl"}) {
    INFO(name);
    REQUIRE(spool.exists(std::string("rejected/") + name + ".error"));
    CHECK_THAT(spool.read(std::string("rejected/") + name + ".error"),
               Catch::StartsWith("why: reading it would take more than 16 MiB of memory (the "
                                 "parse budget): it holds too many elements or values "
                                 "(pos.max_parse_memory; split the file into several)\n"));
  }
  REQUIRE(spool.exists("rejected/d-random.xml.error"));
  CHECK_THAT(spool.read("rejected/d-random.xml.error"), Catch::StartsWith("why: malformed XML"));
  const PosSpoolStats stats = source.stats();
  CHECK(stats.files_rejected == 4);
  CHECK(stats.budget_refusals == 3);
  CHECK(stats.files_processed == 1);
}

TEST_CASE("a file whose first bytes cannot begin its format is refused without being read whole",
          "[unit][pos]") {
  TempDir spool;
  const std::string small = readFixture("ncr-acs-small.xml");
  // 8 MiB of text after the wrong start; the parse budget (1 MiB here) would refuse it as
  // "too many elements" if the file were read and parsed.
  putOld(spool, "a-text.xml", "garbage\n" + std::string(8 << 20, 'x'), 70);
  putOld(spool, "b-lines.json", "\n\r\n  hello " + std::string(1000, 'y'), 69);
  putOld(spool, "c-binary.jsonl", std::string("\x01\x9F") + std::string(100, '{'), 68);
  putOld(spool, "y-bom.xml", "\xEF\xBB\xBF\n  " + small, 11);
  putOld(spool, "z-sale.jsonl", "\n\n" + std::string(kOneSale) + "\n", 10);
  PosSpoolOptions options = optionsFor(spool);
  options.max_parse_memory = 1 << 20;
  PosSpoolSource source(options);
  RecordingWriter writer;
  pollUntil(source, writer, [&] { return filesIn(spool.path()) == 0; });

  CHECK(spool.exists("processed/y-bom.xml"));  // a byte order mark and blank lines are fine
  CHECK(spool.exists("processed/z-sale.jsonl"));
  CHECK(source.stats().files_rejected == 3);
  CHECK(source.stats().budget_refusals == 0);
  CHECK(spool.read("rejected/a-text.xml.error") ==
        "why: malformed XML: it starts with 'g' at byte 0 where '<' must be (the rest of the "
        "file was not read)\nline: 1\n");
  CHECK_THAT(spool.read("rejected/b-lines.json.error"),
             Catch::StartsWith("why: malformed JSON: it starts with 'h' at byte 5 where '{' or "
                               "'[' must be") &&
                 Catch::Contains("line: 3\n"));
  CHECK_THAT(spool.read("rejected/c-binary.jsonl.error"),
             Catch::StartsWith("why: malformed JSON: it starts with byte 0x01 at byte 0 "));
  CHECK(spool.read("rejected/a-text.xml").size() == (8u << 20) + 8);  // moved whole
}

TEST_CASE("the file size limit is pos.max_file_bytes", "[unit][pos]") {
  TempDir spool;
  putOld(spool, "big.json", std::string(kOneSale) + std::string(2000, ' '));
  PosSpoolOptions options = optionsFor(spool);
  options.max_file_bytes = 1024;
  PosSpoolSource source(options);
  RecordingWriter writer;
  REQUIRE(source.poll(writer, {}).has_value());
  CHECK(writer.appendCalls() == 0);
  REQUIRE(spool.exists("rejected/big.json.error"));
  CHECK_THAT(spool.read("rejected/big.json.error"),
             Catch::Contains("files up to 1024 bytes are read (pos.max_file_bytes"));
  CHECK(source.stats().budget_refusals == 1);
}

TEST_CASE("health() tells status how many files were rejected and the last one with why",
          "[unit][pos]") {
  TempDir spool;
  putOld(spool, "0001.json", kOneSale, 30);
  putOld(spool, "0002.json", R"({"workstation":"1","sequence":"2","business_day":"x"})", 20);
  putOld(spool, "0003.xml", "<POSLog><Transaction>", 10);
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  CHECK(source.health().input_errors == 0);
  CHECK(source.health().last_input_error.empty());
  pollUntil(source, writer, [&] { return filesIn(spool.path()) == 0; });

  const SourceHealth health = source.health();
  CHECK(health.input_errors == 2);
  CHECK_THAT(health.last_input_error,
             Catch::StartsWith("0003.xml: malformed XML: ") && Catch::Contains("(line 1"));
  const auto counter = [&](const std::string& name) {
    for (const auto& [key, value] : health.counters) {
      if (key == name) {
        return value;
      }
    }
    FAIL("no counter " << name);
    return uint64_t{0};
  };
  CHECK(counter("files_processed") == 1);
  CHECK(counter("files_rejected") == 2);
  CHECK(counter("events") == 1);
  CHECK(counter("budget_refusals") == 0);
  CHECK(counter("processed_pruned") == 0);
  CHECK(counter("retries") == 0);
}

// Sets a file's mtime `days` days (and an hour) into the past.
void age(const fs::path& path, int days) {
  fs::last_write_time(path, fs::file_time_type::clock::now() - std::chrono::hours(24 * days + 1));
}

TEST_CASE("processed files are kept for pos.keep_processed_days, then deleted", "[unit][pos]") {
  TempDir spool;
  spool.write("processed/eight-days.xml", "<POSLog/>");
  spool.write("processed/six-days.xml", "<POSLog/>");
  spool.write("processed/thirty-days.json", kOneSale);
  age(spool / "processed/eight-days.xml", 8);
  age(spool / "processed/six-days.xml", 6);
  age(spool / "processed/thirty-days.json", 30);
  // A till's file from a month ago, only now dropped: its days count from now.
  putOld(spool, "late.json", kOneSale, 30 * 86400);
  RecordingWriter writer;
  PosSpoolOptions options = optionsFor(spool);

  SECTION("the default: 7 days, checked at start and then every prune_interval") {
    options.prune_interval_s = 1;
    PosSpoolSource source(options);
    REQUIRE(source.poll(writer, {}).has_value());
    CHECK_FALSE(spool.exists("processed/eight-days.xml"));
    CHECK_FALSE(spool.exists("processed/thirty-days.json"));
    CHECK(spool.exists("processed/six-days.xml"));
    REQUIRE(spool.exists("processed/late.json"));
    CHECK(source.stats().processed_pruned == 2);

    age(spool / "processed/six-days.xml", 9);  // as if two more days had passed
    // A poll with nothing to do waits up to 500 ms: a few of them pass the interval.
    pollUntil(
        source, writer, [&] { return !spool.exists("processed/six-days.xml"); }, 10);
    CHECK_FALSE(spool.exists("processed/six-days.xml"));
    CHECK(spool.exists("processed/late.json"));
    CHECK(source.stats().processed_pruned == 3);
  }
  SECTION("keep_processed_days = 1") {
    options.keep_processed_days = 1;
    PosSpoolSource source(options);
    REQUIRE(source.poll(writer, {}).has_value());
    CHECK(filesIn(spool / "processed") == 1);
    CHECK(spool.exists("processed/late.json"));
  }
  SECTION("keep_processed_days = 0: deleted once durable, nothing kept") {
    options.keep_processed_days = 0;
    PosSpoolSource source(options);
    REQUIRE(source.poll(writer, {}).has_value());
    CHECK(writer.events().size() == 1);
    CHECK_FALSE(spool.exists("processed/late.json"));
    CHECK_FALSE(spool.exists("late.json"));
  }
  SECTION("rejected files are left for a person to look at") {
    spool.write("rejected/old.xml", "<POSLog");
    age(spool / "rejected/old.xml", 30);
    PosSpoolSource source(options);
    REQUIRE(source.poll(writer, {}).has_value());
    CHECK(spool.exists("rejected/old.xml"));
  }
}

TEST_CASE("what status and .error files show of a rejected file is valid UTF-8 and short",
          "[unit][pos]") {
  CHECK(forPeople("K\xC3\xA4se 12,50") == "K\xC3\xA4se 12,50");  // UTF-8 kept
  CHECK(forPeople("K\xE4se") == "K\xEF\xBF\xBDse");              // Latin-1: U+FFFD
  CHECK(forPeople("a\nb\x01") ==
        "a\xEF\xBF\xBD"
        "b\xEF\xBF\xBD");  // no control chars
  CHECK(forPeople(std::string(400, 'x'), 10) == std::string(10, 'x') + "...");
  CHECK(forPeople("\xC3\xA4\xC3\xA4", 3) == "\xC3\xA4...");  // whole characters

  TempDir spool;
  putOld(spool, "r\xE4ndom.xml", randomBytes(std::size_t{1} << 20));
  RecordingWriter writer;
  PosSpoolSource source(optionsFor(spool));
  REQUIRE(source.poll(writer, {}).has_value());
  const SourceHealth health = source.health();
  REQUIRE(health.input_errors == 1);
  INFO(health.last_input_error);
  CHECK_THAT(health.last_input_error, Catch::StartsWith("r\xEF\xBF\xBDndom.xml: malformed XML"));
  CHECK(health.last_input_error.size() < 1100);
  CHECK_NOTHROW(json(health.last_input_error).dump());  // what `omniedge status` sends
}

}  // namespace
}  // namespace omniedge::pos
