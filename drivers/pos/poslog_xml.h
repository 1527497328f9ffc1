// ARTS POSLog XML (NRF IXRetail, with vendor extensions such as NCR ACS) -> transactions.
#pragma once

#include <cstddef>
#include <string>

#include "drivers/pos/transaction.h"

namespace omniedge::pos {

/// Reads a POSLog document (root POSLog, or a single Transaction). Elements are matched by
/// local name, so the IXRetail default namespace and any vendor prefix (acs:, ...) are read
/// alike. Each Transaction holding a RetailTransaction or a ControlTransaction gives one
/// Transaction; other kinds are counted in Parsed::skipped. See docs/pos.md for the mapping.
/// All or nothing: malformed XML, a DOCTYPE or ENTITY declaration (refused, never expanded), a
/// missing WorkstationID / SequenceNumber / BusinessDayDate, a bad date or amount make the
/// whole document fail with a ParseError naming the line and the element.
/// Memory: besides the text, the parse holds its XML tree, a line index (1/7 of the text) and
/// the transactions; when they would pass `max_memory` (pos.max_parse_memory) it stops there
/// and fails with code "too_large" (ParseBudget::error()), having freed it all.
/// Takes the text by value because it parses in place (no second copy of a large file).
/// Thread: any; concurrent parses on other threads each have their own budget (pugixml's
/// allocator is process-wide; see poslog_xml.cpp). CPU only, 4-10 ms per MB here. Never throws
/// (but bad_alloc).
Parsed parsePosLog(std::string xml, std::size_t max_memory = kDefaultMaxParseMemory);

}  // namespace omniedge::pos
