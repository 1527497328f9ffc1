#include "agent/store/body_codec.h"

// LZ4's dictionary attachment (LZ4_attach_dictionary) is in its static-only API: the daemon links
// liblz4's archive (agent/CMakeLists.txt).
#define LZ4_STATIC_LINKING_ONLY
#include <lz4.h>
#include <zstd.h>

#include <cstdint>
#include <memory>
#include <optional>

namespace omniedge::store {

// agent/store/body_dict.zdict, embedded by CMake (body_dict_data.cpp in the build tree).
extern const unsigned char kBodyDict[];
extern const std::size_t kBodyDictSize;

namespace {

// Bodies are packed as one LZ4 block against the dictionary's bytes (schema version 4): a
// ~720-byte kiosk envelope packs in ~1.7 us and unpacks in ~0.27, 1.57x smaller (LZ4's
// acceleration 2, kAcceleration below: 1 packed 1.67x smaller for a third more CPU). zstd level -1
// with the same dictionary, what versions 2 and 3 packed (and still read here), comes out 1.66x
// smaller but takes ~2.7 us to pack and ~0.52 to unpack; packing is the largest single cost of
// an event on its way in (bench/bench_codec on 100k distinct envelopes; docs/benchmarks.md,
// "Bodies by LZ4"). No checksum: SQLite's WAL frames carry their own.
//
// The form: kLz4Tag, the JSON's length as a LEB128 varint, the LZ4 block. A zstd frame starts
// with 0x28, never with the tag; the tag names the dictionary too (a new one would get a new tag).
// kLz4NoIdTag (schema version 5): the same, of the JSON without its first member when that is
// the row's own id, `{"id":"<id>",` (Ingest writes it first): 36 characters of random hex the
// row's id column holds already, ~7% of a kiosk row, put back from that column on unpacking.
constexpr unsigned char kLz4Tag = 0xb4;
constexpr unsigned char kLz4NoIdTag = 0xb5;
// kLz4RunTag (schema version 6): a row of several events, the same form of what packRun()
// joined: for each event, its id's length (varint), the id, then twice its JSON's length plus 1
// when the JSON left out its first member `{"id":"<id>",` (varint), and that JSON.
// Packed against no dictionary, with acceleration 3 (kRunAcceleration): a block of 32 envelopes
// finds its matches in itself, and the dictionary made LZ4 copy its 16 KiB hash table and take
// its slower two-table path for ~1.7% fewer bytes. 0.66-0.77 us an event against 0.86-0.94 with
// the dictionary at acceleration 2, 3% more bytes (build/bench/bench_codec, "rows of 32";
// docs/benchmarks.md, "Less copying around packing").
// Unpacking stays against the dictionary: a block that never reaches back before its own start
// unpacks the same with it, so the blocks packed with it (before f6acc8c) read as before.
constexpr unsigned char kLz4RunTag = 0xb6;
constexpr int kRunAcceleration = 3;
constexpr std::string_view kIdHead = R"({"id":")";
constexpr std::string_view kIdTail = R"(",)";
constexpr std::size_t kMinPacked = 64;
// LZ4's acceleration: 2 looks at fewer positions for a match, ~25% less CPU for ~6% more bytes
// on kiosk envelopes, where packing was half of an HTTP worker's CPU per event (docs/
// benchmarks.md, "Packing with acceleration 2"). The format is the same: any acceleration reads
// back with the same call.
constexpr int kAcceleration = 2;
// The id body_dict.zdict was trained with (tools/body_dict/train); every zstd frame names it.
constexpr unsigned kDictId = 32769;

struct DCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};
struct Lz4Free {
  void operator()(LZ4_stream_t* s) const { LZ4_freeStream(s); }
};

// The dictionary's LZ4 hash table: made on first use, shared read-only by every thread (a
// stream only refers to it: LZ4_attach_dictionary), never freed.
const LZ4_stream_t* packDict() {
  static const LZ4_stream_t* dict = [] {
    LZ4_stream_t* d = LZ4_createStream();
    if (d != nullptr) {
      LZ4_loadDict(d, reinterpret_cast<const char*>(kBodyDict), static_cast<int>(kBodyDictSize));
    }
    return d;
  }();
  return dict;
}
const ZSTD_DDict* unpackDict() {
  static const ZSTD_DDict* dict = ZSTD_createDDict(kBodyDict, kBodyDictSize);
  return dict;
}

// One stream per packing thread (16 KiB); nullptr without memory (bodies are then stored as
// they are).
LZ4_stream_t* compressor() {
  thread_local std::unique_ptr<LZ4_stream_t, Lz4Free> stream{
      packDict() != nullptr ? LZ4_createStream() : nullptr};
  return stream.get();
}

ZSTD_DCtx* decompressor() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxFree> ctx{ZSTD_createDCtx()};
  return ctx.get();
}

void bodyText(sqlite3_context* ctx, int argc, sqlite3_value** argv) {
  sqlite3_value* v = argv[0];
  if (sqlite3_value_type(v) != SQLITE_BLOB) {
    sqlite3_result_value(ctx, v);
    return;
  }
  const auto* p = static_cast<const char*>(sqlite3_value_blob(v));
  const auto n = static_cast<std::size_t>(sqlite3_value_bytes(v));
  // body_text(body, id): the row's id for a body that left it out.
  std::string_view id;
  if (argc > 1 && sqlite3_value_type(argv[1]) == SQLITE_TEXT) {
    const auto* i = reinterpret_cast<const char*>(sqlite3_value_text(argv[1]));
    id = std::string_view(i != nullptr ? i : "",
                          static_cast<std::size_t>(sqlite3_value_bytes(argv[1])));
  }
  const std::string_view blob(p != nullptr ? p : "", n);
  if (isRun(blob)) {
    // Every event's JSON, one per line: what a search of bodies (an edit's instr) looks at.
    auto events = unpackRun(blob, 0);
    if (!events) {
      sqlite3_result_null(ctx);
      return;
    }
    std::string all;
    for (const auto& e : *events) {
      all.append(all.empty() ? "" : "\n").append(e.json);
    }
    sqlite3_result_text64(ctx, all.data(), all.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
    return;
  }
  auto json = unpackBody(blob, id);
  if (!json) {
    sqlite3_result_null(ctx);
    return;
  }
  sqlite3_result_text64(ctx, json->data(), json->size(), SQLITE_TRANSIENT, SQLITE_UTF8);
}

void putVarint(std::string& out, uint64_t n) {
  for (;;) {
    const auto low = static_cast<unsigned char>(n & 0x7f);
    n >>= 7;
    out.push_back(static_cast<char>(n != 0 ? (low | 0x80) : low));
    if (n == 0) {
      return;
    }
  }
}

// A varint at `at` (advanced past it), at most 5 bytes; nullopt when it is cut or longer.
std::optional<uint64_t> getVarint(std::string_view in, std::size_t& at) {
  uint64_t v = 0;
  for (unsigned shift = 0; shift <= 28; shift += 7) {
    if (at >= in.size()) {
      return std::nullopt;
    }
    const auto b = static_cast<unsigned char>(in[at++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      return v;
    }
  }
  return std::nullopt;
}

// Whether `json` starts with exactly `{"id":"<id>",`: the member unpacking puts back.
bool startsWithId(std::string_view json, std::string_view id) {
  return !id.empty() && json.size() > kIdHead.size() + id.size() + kIdTail.size() &&
         json.starts_with(kIdHead) && json.substr(kIdHead.size()).starts_with(id) &&
         json.substr(kIdHead.size() + id.size()).starts_with(kIdTail);
}

}  // namespace

std::string packBody(std::string_view json, std::string_view id) {
  // Never a body unpackBody() would refuse to unpack (buffer.max_event_bytes allows 1 MiB).
  LZ4_stream_t* c =
      json.size() >= kMinPacked && json.size() <= kMaxUnpackedBody ? compressor() : nullptr;
  if (c == nullptr) {
    return {};
  }
  // The id left out only when the JSON starts with exactly the text unpacking will put back.
  const bool no_id = startsWithId(json, id);
  const std::string_view rest =
      no_id ? json.substr(kIdHead.size() + id.size() + kIdTail.size()) : json;
  const std::size_t want = json.size() - json.size() / 8;  // at least an eighth smaller
  std::string out(want, '\0');
  std::size_t head = 0;
  out[head++] = static_cast<char>(no_id ? kLz4NoIdTag : kLz4Tag);
  for (std::size_t n = rest.size();;) {  // at most 4 bytes under kMaxUnpackedBody
    const auto low = static_cast<unsigned char>(n & 0x7f);
    n >>= 7;
    out[head++] = static_cast<char>(n != 0 ? (low | 0x80) : low);
    if (n == 0) {
      break;
    }
  }
  LZ4_resetStream_fast(c);
  LZ4_attach_dictionary(c, packDict());
  const int n =
      LZ4_compress_fast_continue(c, rest.data(), out.data() + head, static_cast<int>(rest.size()),
                                 static_cast<int>(want - head), kAcceleration);
  if (n <= 0) {
    return {};  // does not fit in `want`: not worth it
  }
  out.resize(head + static_cast<std::size_t>(n));
  return out;
}

namespace {

// Either form's length, refused before anything is allocated.
Error overLimit(uint64_t size) {
  return makeError("corrupt", "a packed body says it holds " + std::to_string(size) +
                                  " bytes, over the limit of " + std::to_string(kMaxUnpackedBody));
}

// `prefix`: what goes before the block's bytes (the envelope's first member, kLz4NoIdTag).
Result<std::string> unpackLz4(std::string_view packed, std::string_view prefix) {
  uint64_t size = 0;
  std::size_t at = 1;
  for (unsigned shift = 0;; shift += 7) {
    if (shift > 28) {
      return makeError("corrupt",
                       "a packed body gives the length of its JSON in more than 5 bytes");
    }
    if (at >= packed.size()) {
      return makeError("corrupt", "a packed body (" + std::to_string(packed.size()) +
                                      " bytes) ends inside the length of its JSON");
    }
    const auto b = static_cast<unsigned char>(packed[at++]);
    size |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      break;
    }
  }
  if (size > kMaxUnpackedBody - prefix.size()) {  // the whole JSON, the id put back included
    return overLimit(size + prefix.size());
  }
  std::string out(prefix.size() + static_cast<std::size_t>(size), '\0');
  prefix.copy(out.data(), prefix.size());
  const int n = LZ4_decompress_safe_usingDict(
      packed.data() + at, out.data() + prefix.size(), static_cast<int>(packed.size() - at),
      static_cast<int>(size), reinterpret_cast<const char*>(kBodyDict),
      static_cast<int>(kBodyDictSize));
  if (n < 0 || static_cast<std::size_t>(n) != size) {
    return makeError("corrupt",
                     std::string("a packed body does not unpack: ") +
                         (n < 0 ? "LZ4 refuses its block" : "shorter than its header says"));
  }
  return out;
}

}  // namespace

Result<std::string> unpackBody(std::string_view packed, std::string_view id) {
  if (isRun(packed)) {
    return makeError("corrupt", "a row of several events where one event's body was expected");
  }
  if (!packed.empty() && static_cast<unsigned char>(packed[0]) == kLz4Tag) {
    return unpackLz4(packed, {});
  }
  if (!packed.empty() && static_cast<unsigned char>(packed[0]) == kLz4NoIdTag) {
    if (id.empty()) {
      return makeError("corrupt", "a packed body left its id to the row, and the row has none");
    }
    if (id.size() > kMaxUnpackedBody / 2) {
      return makeError("corrupt", "a packed body left its id to the row, and the row's id is " +
                                      std::to_string(id.size()) + " bytes long");
    }
    std::string prefix;
    prefix.reserve(kIdHead.size() + id.size() + kIdTail.size());
    prefix.append(kIdHead).append(id).append(kIdTail);
    return unpackLz4(packed, prefix);
  }
  // A zstd frame, as versions 2 and 3 packed them.
  const unsigned long long size = ZSTD_getFrameContentSize(packed.data(), packed.size());
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) {
    return makeError("corrupt", "a packed body (" + std::to_string(packed.size()) +
                                    " bytes) is neither an LZ4 body nor a zstd frame whose "
                                    "header gives its size");
  }
  if (size > kMaxUnpackedBody) {
    return overLimit(size);
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

std::string packRun(const std::vector<std::string_view>& ids,
                    const std::vector<std::string_view>& jsons) {
  if (ids.size() != jsons.size() || ids.size() < 2 || ids.size() > kMaxRunEvents) {
    return {};
  }
  std::size_t total = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    total += ids[i].size() + jsons[i].size() + 10;
  }
  std::string raw;
  raw.reserve(std::min(total, kMaxRunBytes));  // one allocation, no growing copies
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const bool no_id = startsWithId(jsons[i], ids[i]);
    const std::string_view rest =
        no_id ? jsons[i].substr(kIdHead.size() + ids[i].size() + kIdTail.size()) : jsons[i];
    if (raw.size() + ids[i].size() + rest.size() + 10 > kMaxRunBytes) {
      return {};
    }
    putVarint(raw, ids[i].size());
    raw.append(ids[i]);
    putVarint(raw, (static_cast<uint64_t>(rest.size()) << 1) | (no_id ? 1 : 0));
    raw.append(rest);
  }
  LZ4_stream_t* c = compressor();
  if (c == nullptr) {
    return {};
  }
  // LZ4 writes into a block allocated for it and not zero-filled, then the result is copied out
  // at its size: a string resized to LZ4's bound (~23 KiB a row) and cut after was zero-filled
  // first, which cost more than a third of packing the row's events.
  const int bound = LZ4_compressBound(static_cast<int>(raw.size()));
  const auto block = std::make_unique_for_overwrite<char[]>(static_cast<std::size_t>(bound));
  LZ4_resetStream_fast(c);
  LZ4_attach_dictionary(c, nullptr);
  const int n = LZ4_compress_fast_continue(c, raw.data(), block.get(), static_cast<int>(raw.size()),
                                           bound, kRunAcceleration);
  if (n <= 0) {
    return {};
  }
  std::string out;
  out.reserve(11 + static_cast<std::size_t>(n));
  out.push_back(static_cast<char>(kLz4RunTag));
  putVarint(out, raw.size());
  out.append(block.get(), static_cast<std::size_t>(n));
  return out;
}

bool isRun(std::string_view packed) {
  return !packed.empty() && static_cast<unsigned char>(packed[0]) == kLz4RunTag;
}

Result<std::vector<RunEvent>> unpackRun(std::string_view packed, int64_t n) {
  if (!isRun(packed)) {
    return makeError("corrupt", "a row of " + std::to_string(n) +
                                    " events does not hold a block of several events");
  }
  if (n != 0 && (n < 2 || n > static_cast<int64_t>(kMaxRunEvents))) {
    return makeError("corrupt", "a row says it holds " + std::to_string(n) +
                                    " events; a row of several holds 2 to " +
                                    std::to_string(kMaxRunEvents));
  }
  std::size_t at = 1;
  const auto size = getVarint(packed, at);
  if (!size) {
    return makeError("corrupt", "a row of several events gives no readable length");
  }
  if (*size > kMaxRunBytes) {
    return overLimit(*size);
  }
  // Into a block not zero-filled first (each event is copied out of it).
  const auto block = std::make_unique_for_overwrite<char[]>(static_cast<std::size_t>(*size));
  const std::string_view raw(block.get(), static_cast<std::size_t>(*size));
  const int got = LZ4_decompress_safe_usingDict(
      packed.data() + at, block.get(), static_cast<int>(packed.size() - at),
      static_cast<int>(raw.size()), reinterpret_cast<const char*>(kBodyDict),
      static_cast<int>(kBodyDictSize));
  if (got < 0 || static_cast<std::size_t>(got) != raw.size()) {
    return makeError("corrupt",
                     std::string("a row of several events does not unpack: ") +
                         (got < 0 ? "LZ4 refuses its block" : "shorter than its header says"));
  }
  std::vector<RunEvent> out;
  out.reserve(static_cast<std::size_t>(n));
  std::size_t p = 0;
  while (p < raw.size()) {
    const auto id_len = getVarint(raw, p);
    if (!id_len || *id_len > raw.size() - p) {
      return makeError("corrupt", "a row of several events has an id cut short");
    }
    RunEvent e;
    e.id.assign(raw, p, static_cast<std::size_t>(*id_len));
    p += static_cast<std::size_t>(*id_len);
    const auto json_len = getVarint(raw, p);
    if (!json_len || (*json_len >> 1) > raw.size() - p) {
      return makeError("corrupt", "a row of several events has an envelope cut short");
    }
    const auto len = static_cast<std::size_t>(*json_len >> 1);
    if ((*json_len & 1) != 0) {
      e.json.reserve(kIdHead.size() + e.id.size() + kIdTail.size() + len);
      e.json.append(kIdHead).append(e.id).append(kIdTail);
    }
    e.json.append(raw, p, len);
    p += len;
    out.push_back(std::move(e));
    if (out.size() > (n != 0 ? static_cast<std::size_t>(n) : kMaxRunEvents)) {
      break;
    }
  }
  if (n == 0 ? out.size() < 2 || out.size() > kMaxRunEvents
             : out.size() != static_cast<std::size_t>(n)) {
    return makeError(
        "corrupt",
        "a row says it holds " + std::to_string(n) + " events and its block holds " +
            (out.size() > static_cast<std::size_t>(n) ? "more" : std::to_string(out.size())));
  }
  return out;
}

Result<std::string> bodyColumn(sqlite3_stmt* st, int col, int id_col) {
  const bool blob = sqlite3_column_type(st, col) == SQLITE_BLOB;  // before any conversion
  const auto* p = static_cast<const char*>(sqlite3_column_blob(st, col));
  const auto n = static_cast<std::size_t>(sqlite3_column_bytes(st, col));
  std::string_view raw(p != nullptr ? p : "", n);
  if (blob) {
    const auto* i = reinterpret_cast<const char*>(sqlite3_column_text(st, id_col));
    const auto k = static_cast<std::size_t>(sqlite3_column_bytes(st, id_col));
    return unpackBody(raw, std::string_view(i != nullptr ? i : "", k));
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
  constexpr int kFlags = SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_INNOCUOUS;
  return sqlite3_create_function_v2(db, "body_text", 1, kFlags, nullptr, bodyText, nullptr, nullptr,
                                    nullptr) == SQLITE_OK &&
         sqlite3_create_function_v2(db, "body_text", 2, kFlags, nullptr, bodyText, nullptr, nullptr,
                                    nullptr) == SQLITE_OK;
}

}  // namespace omniedge::store
