// What packing an envelope costs: store::packBody() (LZ4, the agent's dictionary attached) and
// unpackBody() on kiosk envelopes like the ones bench/post100.lua makes the agent store, each
// with its id as the buffer gives it (the id left to the row: schema version 5), against zstd
// level -1 with the same dictionary on the whole JSON (what schema versions 2 and 3 packed).
//
//   bench_codec [--n N]
//
// Each envelope is packed once: N distinct ones, as the daemon sees them. A loop over the 100
// envelopes of one request packed again and again is flattered: the CPU's branch predictors
// learn the inputs (LZ4 with the dictionary ~0.9 us per envelope that way, ~2.2 on distinct ones;
// docs/benchmarks.md, "Bodies by LZ4"). That figure is printed too (lz4_repeated_us).
//
// Then rows of several: the same envelopes 32 at a time through packRun() (a kiosk array's row),
// against LZ4 alone on the same blocks with the dictionary attached at acceleration 2 (packRun's
// LZ4 call before f6acc8c; that packRun, with its copies, took ~1.13 us an event here where
// this one takes ~0.91); each timed as the minimum of 7 alternating passes (the host is noisy).
// Prints "RESULT runs <pack_us> <ratio> <with_dict_us> <with_dict_ratio> <unpack_us>" (per event).
//
// Prints "RESULT codec <lz4_pack_us> <lz4_ratio> <lz4_unpack_us> <zstd_pack_us> <zstd_ratio>
// <zstd_unpack_us> <lz4_repeated_us> <bytes>" (microseconds per envelope; ratio = envelope bytes /
// packed bytes).
#define LZ4_STATIC_LINKING_ONLY
#include <lz4.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "agent/store/body_codec.h"
#include "bench/bench_events.h"

namespace omniedge::store {
// agent/store/body_dict.zdict, as the agent embeds it.
extern const unsigned char kBodyDict[];
extern const std::size_t kBodyDictSize;
}  // namespace omniedge::store

namespace {

using Clock = std::chrono::steady_clock;

double microsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

// Kiosk envelopes of 718 bytes, what bench/post100.lua's ~500-byte events become once the agent
// has added id, source, store and times (serialised as Ingest does it: bench_events.h).
// With each its id, which the buffer's rows hold beside the body (packBody leaves it out).
std::vector<std::pair<std::string, std::string>> envelopes(std::size_t n) {
  std::minstd_rand rng(20261205);
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    auto e = omniedge::bench::makeEvent("bench", 718, rng);
    out.emplace_back(std::move(e.body), std::move(e.id));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = 100000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string_view(argv[i]) == "--n") {
      n = std::strtoull(argv[i + 1], nullptr, 10);
    }
  }
  n = std::max<std::size_t>(n, 1000);
  const auto all = envelopes(n);
  std::size_t in_bytes = 0;
  for (const auto& e : all) {
    in_bytes += e.first.size();
  }

  // LZ4 with the dictionary: the agent's own packBody(), each envelope once, then unpackBody()
  // on what it gave, 1,000 at a time (the daemon frees a request's bodies once they are stored:
  // holding all of them would time the page faults of fresh memory too).
  constexpr std::size_t kChunk = 1000;
  std::vector<std::string> packed(kChunk);
  double pack_total = 0;
  double unpack_total = 0;
  std::size_t lz4_bytes = 0;
  std::size_t unpacked_bytes = 0;
  for (std::size_t at = 0; at < all.size(); at += kChunk) {
    const std::size_t end = std::min(all.size(), at + kChunk);
    auto t0 = Clock::now();
    for (std::size_t i = at; i < end; ++i) {
      packed[i - at] = omniedge::store::packBody(all[i].first, all[i].second);
    }
    pack_total += microsSince(t0);
    t0 = Clock::now();
    for (std::size_t i = at; i < end; ++i) {
      if (auto json = omniedge::store::unpackBody(packed[i - at], all[i].second)) {
        unpacked_bytes += json->size();
      }
    }
    unpack_total += microsSince(t0);
    for (std::size_t i = at; i < end; ++i) {
      lz4_bytes += packed[i - at].empty() ? all[i].first.size() : packed[i - at].size();
      if (packed[i - at].empty()) {
        unpacked_bytes += all[i].first.size();  // stored as it is
      }
    }
  }
  const double lz4_us = pack_total / static_cast<double>(n);
  const double unpack_us = unpack_total / static_cast<double>(n);
  if (unpacked_bytes != in_bytes) {
    std::fprintf(stderr, "bench_codec: unpacking gave %zu bytes, not %zu\n", unpacked_bytes,
                 in_bytes);
    return 1;
  }

  // The flattered loop: the first 100 envelopes (one request of post100.lua), again and again.
  const std::size_t few = 100;
  const std::size_t rounds = n / few;
  auto t0 = Clock::now();
  std::size_t sink = 0;
  for (std::size_t r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < few; ++i) {
      sink += omniedge::store::packBody(all[i].first, all[i].second).size();
    }
  }
  const double repeated_us = microsSince(t0) / static_cast<double>(rounds * few);

  // zstd level -1 with the same dictionary, each envelope once.
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CDict* cdict =
      ZSTD_createCDict(omniedge::store::kBodyDict, omniedge::store::kBodyDictSize, -1);
  if (cctx == nullptr || cdict == nullptr) {
    std::fprintf(stderr, "bench_codec: zstd context\n");
    return 1;
  }
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  ZSTD_DDict* ddict = ZSTD_createDDict(omniedge::store::kBodyDict, omniedge::store::kBodyDictSize);
  if (dctx == nullptr || ddict == nullptr) {
    std::fprintf(stderr, "bench_codec: zstd context\n");
    return 1;
  }
  std::vector<std::string> frames(kChunk, std::string(ZSTD_compressBound(4096), '\0'));
  std::vector<std::size_t> frame_sizes(kChunk);
  std::string json(4096, '\0');
  std::size_t zstd_bytes = 0;
  double zstd_total = 0;
  double zstd_unpack_total = 0;
  for (std::size_t at = 0; at < all.size(); at += kChunk) {
    const std::size_t end = std::min(all.size(), at + kChunk);
    t0 = Clock::now();
    for (std::size_t i = at; i < end; ++i) {
      std::string& f = frames[i - at];
      frame_sizes[i - at] = ZSTD_compress_usingCDict(cctx, f.data(), f.size(), all[i].first.data(),
                                                     all[i].first.size(), cdict);
    }
    zstd_total += microsSince(t0);
    t0 = Clock::now();
    for (std::size_t i = at; i < end; ++i) {
      const std::size_t k = ZSTD_decompress_usingDDict(
          dctx, json.data(), json.size(), frames[i - at].data(), frame_sizes[i - at], ddict);
      if (ZSTD_isError(k) != 0U || k != all[i].first.size()) {
        std::fprintf(stderr, "bench_codec: zstd gave back %zu bytes, not %zu\n", k,
                     all[i].first.size());
        return 1;
      }
    }
    zstd_unpack_total += microsSince(t0);
    for (std::size_t i = at; i < end; ++i) {
      zstd_bytes += frame_sizes[i - at];
    }
  }
  const double zstd_us = zstd_total / static_cast<double>(n);
  const double zstd_unpack_us = zstd_unpack_total / static_cast<double>(n);
  ZSTD_freeDDict(ddict);
  ZSTD_freeDCtx(dctx);
  ZSTD_freeCDict(cdict);
  ZSTD_freeCCtx(cctx);

  // Rows of 32 (what Buffer::append makes of a kiosk array).
  constexpr std::size_t kRun = 32;
  const std::size_t rows = n / kRun;
  std::vector<std::string> raws;  // each row's block before LZ4, as packRun lays it out
  raws.reserve(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    std::string raw;
    for (std::size_t i = r * kRun; i < (r + 1) * kRun; ++i) {
      const std::string& id = all[i].second;
      const std::string_view rest = std::string_view(all[i].first).substr(id.size() + 9);
      auto putVarint = [&raw](uint64_t v) {
        for (; v >= 0x80; v >>= 7) {
          raw.push_back(static_cast<char>((v & 0x7f) | 0x80));
        }
        raw.push_back(static_cast<char>(v));
      };
      putVarint(id.size());
      raw += id;
      putVarint((rest.size() << 1) | 1);
      raw += rest;
    }
    raws.push_back(std::move(raw));
  }
  LZ4_stream_t* dict = LZ4_createStream();
  LZ4_stream_t* stream = LZ4_createStream();
  LZ4_loadDict(dict, reinterpret_cast<const char*>(omniedge::store::kBodyDict),
               static_cast<int>(omniedge::store::kBodyDictSize));
  std::string block(static_cast<std::size_t>(LZ4_compressBound(70000)), '\0');
  double run_us = 1e9;
  double dict_us = 1e9;
  double run_unpack_us = 1e9;
  std::size_t run_bytes = 0;
  std::size_t dict_bytes = 0;
  std::vector<std::string> run_packed(rows);
  std::vector<std::string_view> ids(kRun);
  std::vector<std::string_view> jsons(kRun);
  for (int pass = 0; pass < 7; ++pass) {
    run_bytes = 0;
    t0 = Clock::now();
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::size_t k = 0; k < kRun; ++k) {
        ids[k] = all[r * kRun + k].second;
        jsons[k] = all[r * kRun + k].first;
      }
      run_packed[r] = omniedge::store::packRun(ids, jsons);
      run_bytes += run_packed[r].size();
    }
    run_us = std::min(run_us, microsSince(t0) / static_cast<double>(rows * kRun));
    dict_bytes = 0;
    t0 = Clock::now();
    for (const std::string& raw : raws) {
      LZ4_resetStream_fast(stream);
      LZ4_attach_dictionary(stream, dict);
      dict_bytes += static_cast<std::size_t>(
          LZ4_compress_fast_continue(stream, raw.data(), block.data(), static_cast<int>(raw.size()),
                                     static_cast<int>(block.size()), 2));
    }
    dict_us = std::min(dict_us, microsSince(t0) / static_cast<double>(rows * kRun));
    t0 = Clock::now();
    for (const std::string& p : run_packed) {
      auto back = omniedge::store::unpackRun(p, kRun);
      if (!back || back->size() != kRun) {
        std::fprintf(stderr, "bench_codec: a row of %zu did not unpack\n", kRun);
        return 1;
      }
    }
    run_unpack_us = std::min(run_unpack_us, microsSince(t0) / static_cast<double>(rows * kRun));
  }
  LZ4_freeStream(stream);
  LZ4_freeStream(dict);
  std::size_t run_in = 0;
  for (std::size_t i = 0; i < rows * kRun; ++i) {
    run_in += all[i].first.size();
  }

  const double avg = static_cast<double>(in_bytes) / static_cast<double>(n);
  std::printf("%zu distinct envelopes of %.0f bytes on average, each packed once\n", n, avg);
  std::printf("  LZ4 + dictionary (packBody): %.3f us each, %.3fx smaller; unpackBody %.3f us\n",
              lz4_us, static_cast<double>(in_bytes) / static_cast<double>(lz4_bytes), unpack_us);
  std::printf("  zstd -1 + dictionary:        %.3f us each, %.3fx smaller; unpacking %.3f us\n",
              zstd_us, static_cast<double>(in_bytes) / static_cast<double>(zstd_bytes),
              zstd_unpack_us);
  std::printf("  LZ4, %zu envelopes packed %zu times over (flattered): %.3f us each (%zu)\n", few,
              rounds, repeated_us, sink % 10);
  std::printf(
      "  rows of %zu (packRun): %.3f us an event, %.3fx smaller; LZ4 alone with the dictionary "
      "at acceleration 2: %.3f us, %.3fx; unpackRun %.3f us an event\n",
      kRun, run_us, static_cast<double>(run_in) / static_cast<double>(run_bytes), dict_us,
      static_cast<double>(run_in) / static_cast<double>(dict_bytes + 4 * rows), run_unpack_us);
  std::printf("RESULT runs %.3f %.3f %.3f %.3f %.3f\n", run_us,
              static_cast<double>(run_in) / static_cast<double>(run_bytes), dict_us,
              static_cast<double>(run_in) / static_cast<double>(dict_bytes + 4 * rows),
              run_unpack_us);
  std::printf("RESULT codec %.3f %.3f %.3f %.3f %.3f %.3f %.3f %.0f\n", lz4_us,
              static_cast<double>(in_bytes) / static_cast<double>(lz4_bytes), unpack_us, zstd_us,
              static_cast<double>(in_bytes) / static_cast<double>(zstd_bytes), zstd_unpack_us,
              repeated_us, avg);
  return 0;
}
