// P8: the real POSLog day (915 KB, 51 transactions) parsed, and parsed AND durable, through the
// POS spool into the real buffer (store::Buffer + Ingest, synchronous=full) (quality.md).
//
//   bench_pos --fixture FILE --dir DIR [--rounds N] [--synthetic N]
//   bench_pos --spool-file FILE --dir DIR
//       Puts FILE into a fresh spool under DIR and polls a PosSpoolSource until the file is in
//       processed/ or rejected/ (events go to a writer that only counts them). Prints
//         RESULT pos_spool_file <events> <bytes> <ms> <processed|rejected>
//       Run it under /usr/bin/time -v for the peak RSS of reading, parsing and mapping FILE
//       (docs/pos.md, "Parse memory").
//   bench_pos --parse-file FILE [--max-memory BYTES]
//       Parses FILE as the spool would (by its extension) within the budget. Prints
//         RESULT pos_parse_memory <transactions> <bytes> <budget_peak_bytes> <ok|code>
//       budget_peak_bytes: the most the parse budget counted at once (what
//       pos.max_parse_memory must allow for this file).
//       FILE: the POSLog day (tests/fixtures/poslog/ncr-acs-day.xml); DIR: scratch, emptied.
//       Prints, for the real day and for a synthetic day of N transactions (default 20000):
//         RESULT pos_parse_<day|synthetic> <events> <bytes> <median_ms> <min_ms>
//             parsePosLog + the mapping to events, in memory, median of N rounds
//         RESULT pos_durable_<day|synthetic> <events> <bytes> <median_ms> <min_ms>
//             a file renamed into the spool -> PosSpoolSource::poll() -> one Ingest::append
//             (group commit, fsync) -> file moved to processed/ and the directories fsynced
//
// Every loop is bounded in count.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "agent/api/clock.h"
#include "agent/ingest/ingest.h"
#include "agent/ingest/pii.h"
#include "agent/store/buffer.h"
#include "drivers/pos/pos_spool_source.h"
#include "drivers/pos/poslog_xml.h"
#include "drivers/pos/transaction.h"
#include "drivers/pos/transaction_json.h"

namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_pos: %s\n", what.c_str());
  std::exit(1);
}

double msSince(SteadyClock::time_point t0) {
  return std::chrono::duration<double, std::milli>(SteadyClock::now() - t0).count();
}

std::string readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    die("cannot read " + path.string());
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void writeFile(const fs::path& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out) {
    die("cannot write " + path.string());
  }
}

// A busy store's day in NCR ACS style: two items, a tender, a loyalty id per transaction.
std::string syntheticDay(std::size_t transactions) {
  std::string xml =
      "<?xml version=\"1.0\"?>\n<POSLog xmlns=\"http://www.nrf-arts.org/IXRetail/namespace/\" "
      "xmlns:acs=\"http://www.ncr.com/rsd/acs/tlog/markup/poslog/2.1\">\n";
  xml.reserve(transactions * 1500 + 200);
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

struct Timing {
  std::size_t events = 0;
  double median_ms = 0;
  double min_ms = 0;
};

Timing summarise(std::vector<double> ms, std::size_t events) {
  std::sort(ms.begin(), ms.end());
  return Timing{events, ms[ms.size() / 2], ms.front()};
}

Timing parseRounds(const std::string& xml, int rounds) {
  std::vector<double> ms;
  std::size_t events = 0;
  for (int r = 0; r < rounds; ++r) {
    std::string copy = xml;  // parsing is in place: each round gets a fresh text
    const auto t0 = SteadyClock::now();
    omniedge::pos::Parsed parsed = omniedge::pos::parsePosLog(std::move(copy));
    if (parsed.error) {
      die("parse: " + omniedge::pos::describe(*parsed.error));
    }
    std::vector<omniedge::Event> out;
    out.reserve(parsed.transactions.size());
    for (const auto& tx : parsed.transactions) {
      out.push_back(omniedge::pos::toEvent(tx, "bench"));
    }
    ms.push_back(msSince(t0));
    events = out.size();
  }
  return summarise(std::move(ms), events);
}

// Each round is a fresh agent: a new buffer (synchronous=full) with Ingest in front, and a
// PosSpoolSource already watching its spool (a first poll, not timed). The file is then
// dropped by rename, as a till does, and poll() is timed until the file is in processed/.
Timing durableRounds(const std::string& xml, const fs::path& dir, int rounds,
                     const std::string& label) {
  std::vector<double> ms;
  std::size_t events = 0;
  const omniedge::PiiHasher pii("bench-tenant-key-0123456789", "49");
  const omniedge::SystemClock clock;
  for (int r = 0; r < rounds; ++r) {
    const fs::path root = dir / (label + "-" + std::to_string(r));
    omniedge::store::BufferOptions buffer_options;
    buffer_options.dir = root / "data";
    buffer_options.synchronous_full = true;
    buffer_options.max_bytes = 8LL << 30;
    auto buffer = omniedge::store::Buffer::open(buffer_options);
    if (!buffer) {
      die("Buffer::open: " + buffer.error().message);
    }
    omniedge::Ingest ingest(omniedge::IngestOptions{"bench", 64 * 1024}, **buffer, pii, clock);
    omniedge::pos::PosSpoolOptions options;
    options.spool_dir = root / "spool";
    options.store_id = "bench";
    omniedge::pos::PosSpoolSource source(options);
    if (auto ready = source.poll(ingest, {}); !ready) {
      die("poll: " + ready.error().message);
    }
    const fs::path part = options.spool_dir / "day.xml.part";
    const fs::path file = options.spool_dir / "day.xml";
    writeFile(part, xml);
    const auto t0 = SteadyClock::now();
    fs::rename(part, file);
    for (int polls = 0; polls < 20 && fs::exists(file); ++polls) {
      auto result = source.poll(ingest, {});
      if (!result) {
        die("poll: " + result.error().message);
      }
    }
    ms.push_back(msSince(t0));
    if (fs::exists(file) || !fs::exists(options.spool_dir / "processed" / "day.xml")) {
      die("the spool did not take the file: " + source.stats().last_error);
    }
    events = static_cast<std::size_t>((*buffer)->stats().pending[0]);
    (*buffer)->close();
    fs::remove_all(root);
  }
  return summarise(std::move(ms), events);
}

// Accepts every append and keeps nothing: the harness measures the spool, not a buffer.
class CountingWriter final : public omniedge::EventWriter {
 public:
  omniedge::Result<omniedge::AppendOutcome> append(std::vector<omniedge::Event> events) override {
    omniedge::AppendOutcome outcome;
    for (const auto& e : events) {
      outcome.ids.push_back(e.id);
    }
    outcome.stored = events.size();
    count_ += events.size();
    return outcome;
  }
  omniedge::Result<omniedge::AppendOutcome> appendEach(
      std::vector<omniedge::Event> events) override {
    return append(std::move(events));
  }
  std::size_t count() const { return count_; }

 private:
  std::size_t count_ = 0;
};

int spoolOneFile(const fs::path& file, const fs::path& dir) {
  fs::remove_all(dir);
  omniedge::pos::PosSpoolOptions options;
  options.spool_dir = dir / "spool";
  options.store_id = "bench";
  omniedge::pos::PosSpoolSource source(options);
  CountingWriter writer;
  if (auto ready = source.poll(writer, {}); !ready) {
    die("poll: " + ready.error().message);
  }
  const fs::path target = options.spool_dir / file.filename();
  fs::copy_file(file, options.spool_dir / ("." + file.filename().string()));
  const auto t0 = SteadyClock::now();
  fs::rename(options.spool_dir / ("." + file.filename().string()), target);
  for (int polls = 0; polls < 100 && fs::exists(target); ++polls) {
    if (auto result = source.poll(writer, {}); !result) {
      die("poll: " + result.error().message);
    }
  }
  const double ms = msSince(t0);
  const bool rejected = fs::exists(options.spool_dir / "rejected" / file.filename());
  std::printf("RESULT pos_spool_file %zu %ju %.2f %s\n", writer.count(),
              static_cast<uintmax_t>(
                  fs::file_size(rejected ? options.spool_dir / "rejected" / file.filename()
                                         : options.spool_dir / "processed" / file.filename())),
              ms, rejected ? "rejected" : "processed");
  if (rejected) {
    std::printf(
        "%s",
        readFile(options.spool_dir / "rejected" / (file.filename().string() + ".error")).c_str());
  }
  fs::remove_all(dir);
  return 0;
}

int parseOneFile(const fs::path& file, std::size_t max_memory) {
  std::string text = readFile(file);
  const std::size_t bytes = text.size();
  const std::string name = file.filename().string();
  omniedge::pos::Parsed parsed;
  if (name.size() > 4 && name.substr(name.size() - 4) == ".xml") {
    parsed = omniedge::pos::parsePosLog(std::move(text), max_memory);
  } else if (name.size() > 6 && name.substr(name.size() - 6) == ".jsonl") {
    parsed = omniedge::pos::parseJsonLines(text, max_memory);
  } else {
    parsed = omniedge::pos::parseJsonTransactions(text, SIZE_MAX, nullptr, max_memory);
  }
  std::printf("RESULT pos_parse_memory %zu %zu %zu %s\n", parsed.transactions.size(), bytes,
              parsed.peak_memory, parsed.error ? parsed.error->code.c_str() : "ok");
  return 0;
}

void print(const char* name, const Timing& t, std::size_t bytes) {
  std::printf("RESULT %s %zu %zu %.2f %.2f\n", name, t.events, bytes, t.median_ms, t.min_ms);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  fs::path fixture;
  fs::path spool_file;
  fs::path parse_file;
  std::size_t max_memory = omniedge::pos::kDefaultMaxParseMemory;
  fs::path dir;
  int rounds = 15;
  std::size_t synthetic = 20000;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        die("missing value for " + arg);
      }
      return argv[++i];
    };
    if (arg == "--fixture") {
      fixture = next();
    } else if (arg == "--parse-file") {
      parse_file = next();
    } else if (arg == "--max-memory") {
      max_memory = static_cast<std::size_t>(std::strtoull(next().c_str(), nullptr, 10));
    } else if (arg == "--spool-file") {
      spool_file = next();
    } else if (arg == "--dir") {
      dir = next();
    } else if (arg == "--rounds") {
      rounds = std::clamp(std::atoi(next().c_str()), 1, 1000);
    } else if (arg == "--synthetic") {
      synthetic = static_cast<std::size_t>(std::clamp(std::atol(next().c_str()), 1L, 1000000L));
    } else {
      die("unknown argument " + arg +
          " (usage: bench_pos --fixture FILE --dir DIR [--rounds N] [--synthetic N])");
    }
  }
  if (!parse_file.empty()) {
    return parseOneFile(parse_file, max_memory);
  }
  if (!spool_file.empty() && !dir.empty()) {
    spdlog::set_level(spdlog::level::warn);
    return spoolOneFile(spool_file, dir);
  }
  if (fixture.empty() || dir.empty()) {
    die("usage: bench_pos --fixture FILE --dir DIR [--rounds N] [--synthetic N]");
  }
  spdlog::set_level(spdlog::level::warn);  // one info line per file otherwise
  fs::remove_all(dir);
  fs::create_directories(dir);

  const std::string day = readFile(fixture);
  const std::string big = syntheticDay(synthetic);
  const int big_rounds = std::max(1, rounds / 3);
  print("pos_parse_day", parseRounds(day, rounds), day.size());
  print("pos_parse_synthetic", parseRounds(big, big_rounds), big.size());

  print("pos_durable_day", durableRounds(day, dir, rounds, "day"), day.size());
  print("pos_durable_synthetic", durableRounds(big, dir, big_rounds, "synthetic"), big.size());
  fs::remove_all(dir);
  return 0;
}
