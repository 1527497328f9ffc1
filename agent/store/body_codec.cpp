#include "agent/store/body_codec.h"

#include <zstd.h>

#include <memory>

namespace omniedge::store {

// agent/store/body_dict.zdict, embedded by CMake (body_dict_data.cpp in the build tree).
extern const unsigned char kBodyDict[];
extern const std::size_t kBodyDictSize;

namespace {

// Level -1 with the dictionary: the dictionary's strings (keys, ids, timestamps) are matched as at
// level 1, but literals stay raw (no Huffman table per frame), so a ~600-byte envelope unpacks in
// ~0.2-0.5 us instead of ~0.6-1.0 (the sync thread unpacks every event of a drain), packs in
// ~1.2-2 us, and comes out 1.35-2.2x smaller (level 1: 1.4-2.9x; no dictionary at all: ~1.45x
// for 3.8 us to pack and 1.7 to unpack). Measured in docs/benchmarks.md ("Flash wear").
// No checksum: SQLite's WAL frames carry their own.
constexpr int kLevel = -1;
constexpr std::size_t kMinPacked = 64;
// The id body_dict.zdict was trained with (tools/body_dict/train); every packed body names it.
constexpr unsigned kDictId = 32769;

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

// Made on first use (a daemon that never packs never pays for them), shared read-only by every
// thread, never freed.
const ZSTD_CDict* packDict() {
  static const ZSTD_CDict* dict = ZSTD_createCDict(kBodyDict, kBodyDictSize, kLevel);
  return dict;
}
const ZSTD_DDict* unpackDict() {
  static const ZSTD_DDict* dict = ZSTD_createDDict(kBodyDict, kBodyDictSize);
  return dict;
}

ZSTD_CCtx* compressor() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxFree> ctx{[] {
    ZSTD_CCtx* c = ZSTD_createCCtx();
    if (c != nullptr && packDict() != nullptr) {
      ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);
      ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1);
      ZSTD_CCtx_refCDict(c, packDict());
    } else {
      ZSTD_freeCCtx(c);
      c = nullptr;  // no memory: bodies are stored as they are
    }
    return c;
  }()};
  return ctx.get();
}

ZSTD_DCtx* decompressor() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxFree> ctx{ZSTD_createDCtx()};
  return ctx.get();
}

void bodyText(sqlite3_context* ctx, int /*argc*/, sqlite3_value** argv) {
  sqlite3_value* v = argv[0];
  if (sqlite3_value_type(v) != SQLITE_BLOB) {
    sqlite3_result_value(ctx, v);
    return;
  }
  const auto* p = static_cast<const char*>(sqlite3_value_blob(v));
  const auto n = static_cast<std::size_t>(sqlite3_value_bytes(v));
  auto json = unpackBody(std::string_view(p != nullptr ? p : "", n));
  if (!json) {
    sqlite3_result_null(ctx);
    return;
  }
  sqlite3_result_text64(ctx, json->data(), json->size(), SQLITE_TRANSIENT, SQLITE_UTF8);
}

}  // namespace

std::string packBody(std::string_view json) {
  // Never a body unpackBody() would refuse to unpack (buffer.max_event_bytes allows 1 MiB).
  ZSTD_CCtx* c =
      json.size() >= kMinPacked && json.size() <= kMaxUnpackedBody ? compressor() : nullptr;
  if (c == nullptr) {
    return {};
  }
  const std::size_t want = json.size() - json.size() / 8;  // at least an eighth smaller
  std::string out(want, '\0');
  const std::size_t n = ZSTD_compress2(c, out.data(), out.size(), json.data(), json.size());
  if (ZSTD_isError(n) != 0) {
    ZSTD_CCtx_reset(c, ZSTD_reset_session_only);  // "destination too small": not worth it
    return {};
  }
  out.resize(n);
  return out;
}

Result<std::string> unpackBody(std::string_view packed) {
  const unsigned long long size = ZSTD_getFrameContentSize(packed.data(), packed.size());
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) {
    return makeError("corrupt", "a packed body (" + std::to_string(packed.size()) +
                                    " bytes) does not start with a zstd frame header that "
                                    "gives its size");
  }
  if (size > kMaxUnpackedBody) {
    return makeError("corrupt", "a packed body says it holds " + std::to_string(size) +
                                    " bytes, over the limit of " +
                                    std::to_string(kMaxUnpackedBody));
  }
  const unsigned dict_id = ZSTD_getDictID_fromFrame(packed.data(), packed.size());
  if (dict_id != 0 && dict_id != kDictId) {
    return makeError("corrupt", "a packed body names zstd dictionary " + std::to_string(dict_id) +
                                    ", which this agent does not have (it has " +
                                    std::to_string(kDictId) + ")");
  }
  ZSTD_DCtx* d = decompressor();
  const ZSTD_DDict* dict = dict_id != 0 ? unpackDict() : nullptr;
  if (d == nullptr || (dict_id != 0 && dict == nullptr)) {
    return makeError("io", "no memory for a zstd decompressor");
  }
  std::string out(static_cast<std::size_t>(size), '\0');
  const std::size_t n =
      dict != nullptr
          ? ZSTD_decompress_usingDDict(d, out.data(), out.size(), packed.data(), packed.size(),
                                       dict)
          : ZSTD_decompressDCtx(d, out.data(), out.size(), packed.data(), packed.size());
  if (ZSTD_isError(n) != 0 || n != out.size()) {
    return makeError("corrupt", std::string("a packed body does not unpack: ") +
                                    (ZSTD_isError(n) != 0 ? ZSTD_getErrorName(n)
                                                          : "shorter than its header says"));
  }
  return out;
}

Result<std::string> bodyColumn(sqlite3_stmt* st, int col) {
  const bool blob = sqlite3_column_type(st, col) == SQLITE_BLOB;  // before any conversion
  const auto* p = static_cast<const char*>(sqlite3_column_blob(st, col));
  const auto n = static_cast<std::size_t>(sqlite3_column_bytes(st, col));
  std::string_view raw(p != nullptr ? p : "", n);
  if (blob) {
    return unpackBody(raw);
  }
  return std::string(raw);
}

void bindBody(sqlite3_stmt* st, int index, const std::string& json, const std::string& packed) {
  if (!packed.empty()) {
    sqlite3_bind_blob(st, index, packed.data(), static_cast<int>(packed.size()), SQLITE_STATIC);
  } else {
    sqlite3_bind_text(st, index, json.data(), static_cast<int>(json.size()), SQLITE_STATIC);
  }
}

bool registerBodyFunctions(sqlite3* db) {
  return sqlite3_create_function_v2(db, "body_text", 1,
                                    SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS, nullptr,
                                    bodyText, nullptr, nullptr, nullptr) == SQLITE_OK;
}

}  // namespace omniedge::store
