// How the buffer stores an event's body: the envelope's JSON as TEXT, or, when LZ4 with the
// agent's dictionary makes it at least an eighth smaller, packed as a BLOB (one LZ4 block behind
// a tag and the JSON's length; bodies packed by schema versions 2 and 3 are zstd frames, read
// on as they are). SQLite's column type tells packed from JSON, so files written before bodies
// were packed read on unchanged. Packing is done by the producer's
// thread (Buffer::append), unpacking by whoever reads a body; in SQL, body_text(body, id) gives the
// JSON of either. Internal to agent/store and the CLI's read of the file.
#pragma once

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/result.h"

namespace omniedge::store {

/// The largest body unpacked (a frame that says it holds more is refused, never allocated):
/// far above buffer.max_event_bytes' own limit.
inline constexpr std::size_t kMaxUnpackedBody = 16u << 20;

/// `json` packed (LZ4 with the dictionary) when that is at least an eighth smaller (and `json`
/// at least 64 bytes); empty otherwise (store the JSON as it is). With the row's `id`, a JSON
/// that starts `{"id":"<id>",` is packed without that member (unpackBody puts it back from the
/// same id). Thread: any.
std::string packBody(std::string_view json, std::string_view id = {});

/// A row of several events (schema version 6, events.n > 1): the events of one request whose ids
/// Ingest made, of one type, priority and receipt time, stored as one LZ4 block at the first one's
/// seq. One block of up to kMaxRunEvents envelopes packs ~1.3x smaller than each alone and the
/// writer stores one row where it stored n (docs/benchmarks.md, "Rows of several events").
inline constexpr std::size_t kMaxRunEvents = 32;
/// The most JSON a row of several events holds (its events' ids and envelopes together).
inline constexpr std::size_t kMaxRunBytes = 64u << 10;

/// One event of a row of several.
struct RunEvent {
  std::string id;
  std::string json;
};

/// The events' ids and JSON packed as one row of several (they must number 2 to kMaxRunEvents and
/// hold at most kMaxRunBytes together); empty when they cannot be (then each is stored alone).
/// Thread: any.
std::string packRun(const std::vector<std::string_view>& ids,
                    const std::vector<std::string_view>& jsons);

/// Whether a stored BLOB is a row of several events (packRun) rather than one body.
bool isRun(std::string_view packed);

/// The events of a row of several, in seq order; fails "corrupt" (naming the reason) unless
/// `packed` is one whole packRun() block of exactly `n` events (n = 0: of 2 to kMaxRunEvents).
/// Thread: any.
Result<std::vector<RunEvent>> unpackRun(std::string_view packed, int64_t n);

/// The JSON of a packed body, any form; `id` is the row's id (needed by a body packed without
/// it). Fails "corrupt" (naming the reason) on anything that is not one whole packed body of at
/// most kMaxUnpackedBody bytes (a row of several events included: unpackRun reads those).
/// Thread: any.
Result<std::string> unpackBody(std::string_view packed, std::string_view id = {});

/// Column `col` of the current row as the envelope's JSON: TEXT as it is, a BLOB unpacked with
/// the row's id from column `id_col`.
Result<std::string> bodyColumn(sqlite3_stmt* st, int col, int id_col);

/// Binds a body in its stored form: `packed` (a BLOB) when not empty, else `json` (TEXT). The
/// strings must outlive the statement's step.
void bindBody(sqlite3_stmt* st, int index, const std::string& json, const std::string& packed);

/// Adds body_text(x, id) to `db`: x unpacked when it is a packed BLOB (id: the row's), x itself
/// otherwise, NULL for a BLOB that does not unpack; body_text(x) for bodies that kept their id.
/// A row of several events gives its events' JSON, one per line (what a search of bodies needs).
/// False when SQLite refused it.
bool registerBodyFunctions(sqlite3* db);

}  // namespace omniedge::store
