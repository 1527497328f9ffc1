// libFuzzer target: the POS JSON readers (drivers/pos/transaction_json.h): one document (an
// object or an array of transactions) and JSON Lines. Same promises as the XML reader: no
// crash or hang, all or nothing with a code and a reason, at most max_transactions, events
// Ingest accepts, the memory budget kept also when it stops a parse.
// Run: tools/fuzz/run pos_json
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "drivers/pos/transaction_json.h"
#include "tools/fuzz/pos_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  bool was_array = false;
  const auto doc = omniedge::pos::parseJsonTransactions(text, 50, &was_array);
  omniedge::fuzz::checkParsed(doc);
  FUZZ_CHECK(doc.transactions.size() <= 50);
  if (doc.transactions.size() > 1) FUZZ_CHECK(was_array);
  omniedge::fuzz::checkParsed(omniedge::pos::parseJsonLines(text));
  const std::size_t budget = size == 0 ? 0 : std::size_t{data[0]} * 64;
  const auto small = omniedge::pos::parseJsonTransactions(text, 50, &was_array, budget);
  omniedge::fuzz::checkBudget(small, budget);
  omniedge::fuzz::checkParsed(small);
  const auto lines = omniedge::pos::parseJsonLines(text, budget);
  omniedge::fuzz::checkBudget(lines, budget);
  omniedge::fuzz::checkParsed(lines);
  return 0;
}
