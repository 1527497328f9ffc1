// The uplink batch (contract §5): pending event bodies wrapped in one JSON document, optionally
// compressed. Bodies are spliced in as they are stored, never parsed or re-serialised.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/outbox.h"
#include "agent/api/result.h"

namespace omniedge::sync {

enum class Compression { kNone, kGzip, kZstd };

/// "none" | "gzip" | "zstd" (the values of `sync.compression`); nullopt for anything else.
std::optional<Compression> parseCompression(std::string_view name);
/// The config spelling of `compression`.
std::string_view compressionName(Compression compression);

/// The buffer's seq space, for the centre's gap check (issue 14 point 7): every batch says
/// which epoch and which seqs it covers, so the centre can prove it holds every event.
struct SeqSpace {
  std::string epoch;            // "" = the batch carries no seq fields
  int64_t epoch_start_seq = 1;  // the first seq the epoch ever gave
};

/// The batch document `{"batch_id":…,"store_id":…,"agent_version":…,"count":N,"epoch":…,
/// "epoch_start_seq":K,"seq_first":A,"seq_last":B,["seq_ranges":[[a,b],…],]"events":[…]}`
/// with each body copied verbatim (each must already be one JSON object). The seq fields only
/// with a non-empty `space.epoch`; `seq_ranges` (exactly the seqs held) only when the batch has
/// holes (count < seq_last - seq_first + 1). Thread: any. Never blocks, never fails.
std::string buildBatchJson(std::string_view batch_id, std::string_view store_id,
                           std::string_view agent_version, const std::vector<PendingEvent>& events,
                           const SeqSpace& space = {});

/// `data` compressed: kGzip is a gzip stream (1f 8b, zlib level 1), kZstd a zstd frame
/// (level 1), kNone a copy. Thread: any (per-thread compression contexts are reused).
/// Fails with "io" only when the compressor itself fails (out of memory). Never throws.
Result<std::string> compress(std::string_view data, Compression compression);

/// The inverse of compress(), format detected from the magic bytes (gzip 1f 8b, zstd
/// 28 b5 2f fd; anything else is returned as is). Output is capped at `max_bytes`.
/// Thread: any. Fails with "invalid" on a corrupt or truncated stream, "too_large" past the cap.
Result<std::string> decompress(std::string_view data, std::size_t max_bytes = std::size_t{1} << 30);

/// One batch ready to publish.
struct Batch {
  std::string id;         // batch_id, a UUIDv7 (agent/api/uuid.h)
  int64_t first_seq = 0;  // the buffer range it covers, for Outbox::acknowledge()
  int64_t last_seq = 0;
  std::size_t count = 0;       // events in it
  std::size_t json_bytes = 0;  // size before compression
  std::string payload;         // what goes on the wire
};

/// Wraps `events` (non-empty, seq order) into a compressed batch with a fresh batch_id.
/// Thread: any. Fails with "invalid" when `events` is empty, "io" when compression fails.
Result<Batch> buildBatch(const std::vector<PendingEvent>& events, std::string_view store_id,
                         std::string_view agent_version, Compression compression,
                         const SeqSpace& space = {});

}  // namespace omniedge::sync
