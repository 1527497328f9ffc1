// libFuzzer target: the POS parsers (POSLog XML, JSON, JSON Lines) and the mapping to events
// must never crash, hang or read out of bounds, whatever a till writes; every event they make
// must serialise to valid JSON. Build and run: tools/fuzz/run [seconds]
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
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  checkEvents(omniedge::pos::parsePosLog(text));
  bool was_array = false;
  checkEvents(omniedge::pos::parseJsonTransactions(text, 1000, &was_array));
  checkEvents(omniedge::pos::parseJsonLines(text));
  return 0;
}
