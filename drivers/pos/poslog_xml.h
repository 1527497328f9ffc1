// ARTS POSLog XML (NRF IXRetail, with vendor extensions such as NCR ACS) -> transactions.
#pragma once

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
/// Takes the text by value because it parses in place (no second copy of a large file).
/// Thread: any (no shared state). CPU only, 4-10 ms per MB here. Never throws (but bad_alloc).
Parsed parsePosLog(std::string xml);

}  // namespace omniedge::pos
