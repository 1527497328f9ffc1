#include "sync/batch.h"

#if OMNIEDGE_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#else
#include <libdeflate.h>
#endif
#include <zconf.h>
#include <zlib.h>
#include <zstd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "agent/api/uuid.h"

namespace omniedge::sync {
namespace {

constexpr int kGzipLevel = 1;
constexpr int kGzipWindowBits = 31;  // zlib's inflate: 15 + 16, a gzip header and trailer
constexpr int kZstdLevel = 1;

// The compressor writes into a block allocated for it and not zero-filled (a std::string
// resized to the compressor's bound zero-filled ~650 KiB every 1,000 kiosk events), then the
// result is copied out at its size. Nothing is kept between batches: an idle agent holds no
// batch-sized buffer (docs/benchmarks.md, "Less copying around packing").
std::unique_ptr<char[]> outputBlock(std::size_t n) {
  return std::make_unique_for_overwrite<char[]>(n);
}

std::string jsonString(std::string_view text) {
  // Replace rather than throw on invalid UTF-8: a store id is operator input.
  return nlohmann::json(std::string(text))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

#if OMNIEDGE_HAVE_ISAL
// gzip by ISA-L's igzip, level 1, in one call over the whole batch (docs/architecture.md,
// "Libraries, and why each": 1.8x libdeflate's speed on our batches for 2% more bytes). Its level
// buffer holds the block's tokens before they are coded: the small one costs nothing in speed
// here and keeps the sync thread ~70 KiB, not ~300.
Result<std::string> gzipCompress(std::string_view data) {
  if (data.size() > std::numeric_limits<uint32_t>::max() / 4) {
    return makeError("io", "gzip: a batch of " + std::to_string(data.size()) +
                               " bytes is more than igzip takes");
  }
  thread_local std::string level_buf(ISAL_DEF_LVL1_SMALL, '\0');
  // Stored blocks are the worst case (5 bytes per 64 KiB) and igzip falls back to them; the
  // slack covers the gzip header and trailer. Should it ever be short, the retry has twice it.
  for (std::size_t bound = data.size() + data.size() / 64 + 1024;; bound *= 2) {
    const auto out = outputBlock(bound);
    isal_zstream z{};
    isal_deflate_stateless_init(&z);
    z.level = kGzipLevel;
    z.level_buf = reinterpret_cast<uint8_t*>(level_buf.data());
    z.level_buf_size = static_cast<uint32_t>(level_buf.size());
    z.gzip_flag = IGZIP_GZIP;
    z.flush = NO_FLUSH;
    z.end_of_stream = 1;
    z.next_in = reinterpret_cast<uint8_t*>(const_cast<char*>(data.data()));
    z.avail_in = static_cast<uint32_t>(data.size());
    z.next_out = reinterpret_cast<uint8_t*>(out.get());
    z.avail_out = static_cast<uint32_t>(bound);
    const int rc = isal_deflate_stateless(&z);
    if (rc == COMP_OK) {
      return std::string(out.get(), z.total_out);
    }
    if (rc != STATELESS_OVERFLOW || bound > 2 * data.size() + 4096) {
      return makeError("io", "gzip: isal_deflate_stateless failed (" + std::to_string(rc) + ")");
    }
  }
}
#else
// gzip by libdeflate where ISA-L is not built (Debian's armhf): whole-buffer DEFLATE, twice
// zlib's speed at level 1 with smaller output. One compressor per thread: allocating it costs
// more than compressing a batch.
struct DeflateCompressorDeleter {
  void operator()(libdeflate_compressor* c) const { libdeflate_free_compressor(c); }
};

Result<std::string> gzipCompress(std::string_view data) {
  thread_local std::unique_ptr<libdeflate_compressor, DeflateCompressorDeleter> c(
      libdeflate_alloc_compressor(kGzipLevel));
  if (!c) {
    return makeError("io", "libdeflate_alloc_compressor failed");
  }
  const std::size_t bound = libdeflate_gzip_compress_bound(c.get(), data.size());
  const auto out = outputBlock(bound);
  const std::size_t n =
      libdeflate_gzip_compress(c.get(), data.data(), data.size(), out.get(), bound);
  if (n == 0) {
    return makeError("io", "gzip: the output did not fit its bound");
  }
  return std::string(out.get(), n);
}
#endif

struct ZstdCCtxDeleter {
  void operator()(ZSTD_CCtx* ctx) const { ZSTD_freeCCtx(ctx); }
};
struct ZstdDStreamDeleter {
  void operator()(ZSTD_DStream* ds) const { ZSTD_freeDStream(ds); }
};

Result<std::string> zstdCompress(std::string_view data) {
  thread_local std::unique_ptr<ZSTD_CCtx, ZstdCCtxDeleter> ctx(ZSTD_createCCtx());
  if (!ctx) {
    return makeError("io", "ZSTD_createCCtx failed");
  }
  const std::size_t bound = ZSTD_compressBound(data.size());
  const auto out = outputBlock(bound);
  const std::size_t n =
      ZSTD_compressCCtx(ctx.get(), out.get(), bound, data.data(), data.size(), kZstdLevel);
  if (ZSTD_isError(n) != 0U) {
    return makeError("io", std::string("zstd: ") + ZSTD_getErrorName(n));
  }
  return std::string(out.get(), n);
}

Result<std::string> gunzip(std::string_view data, std::size_t max_bytes) {
  z_stream stream{};
  if (inflateInit2(&stream, kGzipWindowBits) != Z_OK) {
    return makeError("io", "inflateInit2 failed");
  }
  std::string out;
  std::array<char, 64 * 1024> chunk{};
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    stream.next_out = reinterpret_cast<Bytef*>(chunk.data());
    stream.avail_out = static_cast<uInt>(chunk.size());
    rc = inflate(&stream, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&stream);
      return makeError("invalid", "corrupt or truncated gzip stream");
    }
    out.append(chunk.data(), chunk.size() - stream.avail_out);
    if (out.size() > max_bytes) {
      inflateEnd(&stream);
      return makeError("too_large", "decompressed data exceeds the cap");
    }
    if (rc == Z_OK && stream.avail_in == 0 && stream.avail_out != 0) {
      inflateEnd(&stream);
      return makeError("invalid", "truncated gzip stream");
    }
  }
  inflateEnd(&stream);
  return out;
}

Result<std::string> unzstd(std::string_view data, std::size_t max_bytes) {
  std::unique_ptr<ZSTD_DStream, ZstdDStreamDeleter> ds(ZSTD_createDStream());
  if (!ds) {
    return makeError("io", "ZSTD_createDStream failed");
  }
  ZSTD_initDStream(ds.get());
  std::string out;
  std::array<char, 64 * 1024> chunk{};
  ZSTD_inBuffer in{data.data(), data.size(), 0};
  std::size_t last = 1;
  while (in.pos < in.size || last != 0) {
    ZSTD_outBuffer o{chunk.data(), chunk.size(), 0};
    last = ZSTD_decompressStream(ds.get(), &o, &in);
    if (ZSTD_isError(last) != 0U) {
      return makeError("invalid", std::string("zstd: ") + ZSTD_getErrorName(last));
    }
    out.append(chunk.data(), o.pos);
    if (out.size() > max_bytes) {
      return makeError("too_large", "decompressed data exceeds the cap");
    }
    if (in.pos == in.size && o.pos == 0 && last != 0) {
      return makeError("invalid", "truncated zstd frame");
    }
  }
  return out;
}

}  // namespace

std::optional<Compression> parseCompression(std::string_view name) {
  if (name == "none") {
    return Compression::kNone;
  }
  if (name == "gzip") {
    return Compression::kGzip;
  }
  if (name == "zstd") {
    return Compression::kZstd;
  }
  return std::nullopt;
}

std::string_view compressionName(Compression compression) {
  switch (compression) {
    case Compression::kNone:
      return "none";
    case Compression::kGzip:
      return "gzip";
    case Compression::kZstd:
      return "zstd";
  }
  return "none";
}

std::string buildBatchJson(std::string_view batch_id, std::string_view store_id,
                           std::string_view agent_version, const std::vector<PendingEvent>& events,
                           const SeqSpace& space) {
  std::string head = "{\"batch_id\":" + jsonString(batch_id) +
                     ",\"store_id\":" + jsonString(store_id) +
                     ",\"agent_version\":" + jsonString(agent_version) +
                     ",\"count\":" + std::to_string(events.size());
  if (!space.epoch.empty() && !events.empty()) {
    const int64_t first = events.front().seq;
    const int64_t last = events.back().seq;
    head += ",\"epoch\":" + jsonString(space.epoch) +
            ",\"epoch_start_seq\":" + std::to_string(space.epoch_start_seq) +
            ",\"seq_first\":" + std::to_string(first) + ",\"seq_last\":" + std::to_string(last);
    if (static_cast<int64_t>(events.size()) < last - first + 1) {
      // Holes (events delivered, evicted or quarantined before): say exactly what is here, so
      // that the centre needs no promise about the holes.
      head += ",\"seq_ranges\":[";
      int64_t run_first = first;
      for (std::size_t i = 1; i <= events.size(); ++i) {
        if (i == events.size() || events[i].seq != events[i - 1].seq + 1) {
          head += (run_first == first ? "[" : ",[") + std::to_string(run_first) + "," +
                  std::to_string(events[i - 1].seq) + "]";
          if (i < events.size()) {
            run_first = events[i].seq;
          }
        }
      }
      head += "]";
    }
  }
  head += ",\"events\":[";
  std::size_t size = head.size() + 2 + events.size();
  for (const auto& e : events) {
    size += e.body.size();
  }
  std::string out;
  out.reserve(size);
  out += head;
  for (std::size_t i = 0; i < events.size(); ++i) {
    if (i != 0) {
      out.push_back(',');
    }
    out += events[i].body;
  }
  out += "]}";
  return out;
}

Result<std::string> compress(std::string_view data, Compression compression) {
  switch (compression) {
    case Compression::kGzip:
      return gzipCompress(data);
    case Compression::kZstd:
      return zstdCompress(data);
    case Compression::kNone:
      break;
  }
  return std::string(data);
}

Result<std::string> decompress(std::string_view data, std::size_t max_bytes) {
  if (data.size() >= 2 && static_cast<uint8_t>(data[0]) == 0x1f &&
      static_cast<uint8_t>(data[1]) == 0x8b) {
    return gunzip(data, max_bytes);
  }
  if (data.size() >= 4 && static_cast<uint8_t>(data[0]) == 0x28 &&
      static_cast<uint8_t>(data[1]) == 0xb5 && static_cast<uint8_t>(data[2]) == 0x2f &&
      static_cast<uint8_t>(data[3]) == 0xfd) {
    return unzstd(data, max_bytes);
  }
  if (data.size() > max_bytes) {
    return makeError("too_large", "data exceeds the cap");
  }
  return std::string(data);
}

Result<Batch> buildBatch(const std::vector<PendingEvent>& events, std::string_view store_id,
                         std::string_view agent_version, Compression compression,
                         const SeqSpace& space) {
  if (events.empty()) {
    return makeError("invalid", "a batch needs at least one event");
  }
  Batch batch;
  batch.id = makeUuidV7(std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count());
  batch.first_seq = events.front().seq;
  batch.last_seq = events.back().seq;
  batch.count = events.size();
  std::string json = buildBatchJson(batch.id, store_id, agent_version, events, space);
  batch.json_bytes = json.size();
  if (compression == Compression::kNone) {
    batch.payload = std::move(json);
    return batch;
  }
  auto packed = compress(json, compression);
  if (!packed) {
    return packed.error();
  }
  batch.payload = std::move(*packed);
  return batch;
}

}  // namespace omniedge::sync
