// libFuzzer target: the POS parsers (POSLog XML, JSON, JSON Lines) and the mapping to events
// must never crash, hang or read out of bounds, whatever a till writes; every event they make
// must serialise to valid JSON. Build and run: tools/fuzz/run [seconds]
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/api/json_string.h"
#include "drivers/pos/poslog_xml.h"
#include "drivers/pos/transaction.h"
#include "drivers/pos/transaction_json.h"

namespace {

void checkEvents(const omniedge::pos::Parsed& parsed) {
  for (const auto& tx : parsed.transactions) {
    const omniedge::Event e = omniedge::pos::toEvent(tx, "store-fuzz");
    if (!nlohmann::json::accept(e.data_json)) {
      std::abort();  // a mapping wrote invalid JSON
    }
    // Ingest's id rule: 1-128 characters of A-Z a-z 0-9 - _ . : @ (a refused id rejects the
    // whole file); and its limit for the source.
    const bool id_ok =
        !e.id.empty() && e.id.size() <= 128 && std::all_of(e.id.begin(), e.id.end(), [](char c) {
          return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.' || c == ':' || c == '@';
        });
    if (!id_ok || e.source.size() > 128) {
      std::abort();
    }
  }
}

// Every parse must stay within its budget, whatever it is given.
void checkBudget(const omniedge::pos::Parsed& parsed, std::size_t budget) {
  if (parsed.peak_memory > budget) {
    std::abort();
  }
  if (parsed.error && parsed.error->code == "too_large" && !parsed.transactions.empty()) {
    std::abort();  // all or nothing, also when the budget stops a parse
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  checkEvents(omniedge::pos::parsePosLog(text));
  bool was_array = false;
  checkEvents(omniedge::pos::parseJsonTransactions(text, 1000, &was_array));
  checkEvents(omniedge::pos::parseJsonLines(text));
  // Again with a small budget taken from the input, so that the parsers are also stopped at
  // every possible point (pugixml's out-of-memory unwinding, the JSON reader mid-tree).
  const std::size_t budget = size == 0 ? 0 : std::size_t{data[0]} * 64;
  const auto xml = omniedge::pos::parsePosLog(text, budget);
  checkBudget(xml, budget);
  checkEvents(xml);
  const auto json = omniedge::pos::parseJsonTransactions(text, 1000, &was_array, budget);
  checkBudget(json, budget);
  checkEvents(json);
  const auto lines = omniedge::pos::parseJsonLines(text, budget);
  checkBudget(lines, budget);
  checkEvents(lines);
  return 0;
}
