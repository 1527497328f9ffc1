// libFuzzer target: the POSLog XML reader (drivers/pos/poslog_xml.h). Whatever a till writes, it
// never crashes, hangs or reads out of bounds; it takes a file whole or refuses it with a code
// and a reason; every transaction becomes an event Ingest accepts; a parse stays in its budget,
// also when the budget stops it at any point (pugixml's out-of-memory unwinding).
// Run: tools/fuzz/run poslog_xml
#include <cstddef>
#include <cstdint>
#include <string>

#include "drivers/pos/poslog_xml.h"
#include "tools/fuzz/pos_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  omniedge::fuzz::checkParsed(omniedge::pos::parsePosLog(text));
  // Again with a small budget taken from the input, so the parser is stopped everywhere.
  const std::size_t budget = size == 0 ? 0 : std::size_t{data[0]} * 64;
  const auto small = omniedge::pos::parsePosLog(text, budget);
  omniedge::fuzz::checkBudget(small, budget);
  omniedge::fuzz::checkParsed(small);
  return 0;
}
