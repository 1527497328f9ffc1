// The promises of every POS reader (drivers/pos/), checked by poslog_xml_fuzz and pos_json_fuzz.
#pragma once
#include <nlohmann/json.hpp>

#include "drivers/pos/transaction.h"
#include "tools/fuzz/check.h"

namespace omniedge::fuzz {

/// All or nothing; an error says what and where; every transaction becomes an event that
/// Ingest takes (id rule, source length, JSON data).
inline void checkParsed(const pos::Parsed& parsed) {
  if (parsed.error) {
    FUZZ_CHECK(parsed.transactions.empty());
    FUZZ_CHECK(!parsed.error->code.empty());
    FUZZ_CHECK(!parsed.error->reason.empty());
  }
  for (const auto& tx : parsed.transactions) {
    const Event e = pos::toEvent(tx, "store-fuzz");
    FUZZ_CHECK(nlohmann::json::accept(e.data_json));
    FUZZ_CHECK(validId(e.id));
    FUZZ_CHECK(e.source.size() <= 128);
    FUZZ_CHECK(e.type == "pos.transaction" || e.type == "pos.control");
    FUZZ_CHECK(pos::transactionId("store-fuzz", tx) == e.id);  // deterministic
  }
}

/// A parse stays within its memory budget, also when the budget stops it.
inline void checkBudget(const pos::Parsed& parsed, std::size_t budget) {
  FUZZ_CHECK(parsed.peak_memory <= budget);
  if (parsed.error && parsed.error->code == "too_large") FUZZ_CHECK(parsed.transactions.empty());
}

}  // namespace omniedge::fuzz
