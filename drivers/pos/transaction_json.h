// The JSON transaction form (docs/pos.md) -> transactions: `*.json` and `*.jsonl` spool files
// and the body of POST /v1/pos/transactions.
#pragma once

#include <cstddef>
#include <string_view>

#include "drivers/pos/transaction.h"

namespace omniedge::pos {

/// One transaction object, or an array of up to `max_transactions` of them. Strict: unknown
/// fields, a field given twice, wrong JSON types, bad amounts and dates are errors; fields that
/// would carry card data (card_number, pan, authorization_code, ...) are refused by name.
/// ParseError::element names the field: "lines[0].amount" in a single object,
/// "[2].lines[0].amount" in an array (ParseError::line is set for malformed JSON).
/// Codes: "invalid_json" (malformed), "invalid" (a field), "too_large" (more than
/// max_transactions), "empty" (nothing but whitespace, or an empty array).
/// `*was_array` (when not null) tells whether the text was an array, also on failure.
/// Memory: the elements of an array are mapped as they complete, so besides the text the parse
/// holds one transaction's JSON values and the transactions made so far; when that would pass
/// `max_memory` (pos.max_parse_memory) it stops and fails with "too_large"
/// (ParseBudget::error()), as it does at the element past max_transactions.
/// Thread: any (no shared state). CPU only. Never throws (but bad_alloc).
Parsed parseJsonTransactions(std::string_view text, std::size_t max_transactions, bool* was_array,
                             std::size_t max_memory = kDefaultMaxParseMemory);

/// JSON Lines: one transaction object per line; blank lines are skipped. An error names its
/// line (ParseError::line) and the field within that line's object. All or nothing. Memory as
/// above: one line's values at a time, and the transactions, within `max_memory`.
/// Thread: any. CPU only. Never throws (but bad_alloc).
Parsed parseJsonLines(std::string_view text, std::size_t max_memory = kDefaultMaxParseMemory);

}  // namespace omniedge::pos
