// The buffer's packed bodies (agent/store/body_codec.h): one LZ4 block with the agent's
// dictionary when that is at least an eighth smaller (zstd frames of older versions still read),
// the JSON as TEXT otherwise, and every
// reader of a body (the sync engine's reads, retryQuarantine, the personal-data edit, the CLI's
// scan) getting the JSON back.
#include "agent/store/body_codec.h"

#include <sqlite3.h>
#include <zstd.h>
// A block packed the way packRun did before f6acc8c (the dictionary attached) is made here
// with LZ4's static-only API, which the agent links (agent/CMakeLists.txt).
#define LZ4_STATIC_LINKING_ONLY
#include <lz4.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "agent/api/uuid.h"
#include "agent/store/buffer.h"
#include "agent/store/schema.h"
#include "tests/support/temp_dir.h"

using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::EventEdit;
using omniedge::store::isRun;
using omniedge::store::kMaxRunBytes;
using omniedge::store::kMaxRunEvents;
using omniedge::store::packBody;
using omniedge::store::packRun;
using omniedge::store::StoredEvent;
using omniedge::store::unpackBody;
using omniedge::store::unpackRun;
using omniedge::testing::TempDir;

namespace omniedge::store {
extern const unsigned char kBodyDict[];  // agent/store/body_dict.zdict, embedded by CMake
extern const std::size_t kBodyDictSize;
}  // namespace omniedge::store

namespace {

// An envelope as Ingest makes one for a kiosk tap.
std::string envelope(const std::string& id, const std::string& extra = "") {
  return R"({"id":")" + id +
         R"(","type":"kiosk.tap","source":"kiosk:k-3","store_id":"store-042","occurred_at":)"
         R"("2026-12-04T10:15:02.481Z","received_at":"2026-12-04T10:15:02.484Z","customer":)"
         R"({"loyalty_id":"40000066677"},"data":{"screen":"offers","sku":"SKU-104233",)"
         R"("session":"9f1c2a7e55d04b31","dwell_ms":5120)" +
         extra + "}}";
}

StoredEvent event(const std::string& body_extra = "", const std::string& type = "kiosk.tap") {
  StoredEvent e;
  e.id = omniedge::makeUuidV7(1764843302481);
  e.type = type;
  e.priority = omniedge::priorityOf(type);
  e.received_at_ms = 1764843302484;
  e.body = envelope(e.id, body_extra);
  return e;
}

std::unique_ptr<Buffer> openBuffer(const TempDir& dir) {
  BufferOptions o;
  o.dir = dir.path();
  o.max_bytes = 1LL << 30;
  o.min_free_disk = 0;
  auto b = Buffer::open(o);
  REQUIRE(b.has_value());
  return std::move(*b);
}

// Each pending row's typeof(body) and stored length, read from the file itself.
std::vector<std::pair<std::string, int64_t>> storedForms(const TempDir& dir) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((dir.path() / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db,
                             "SELECT typeof(body), length(CAST(body AS BLOB)) FROM events "
                             "ORDER BY seq",
                             -1, &st, nullptr) == SQLITE_OK);
  std::vector<std::pair<std::string, int64_t>> out;
  while (sqlite3_step(st) == SQLITE_ROW) {
    out.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)),
                     sqlite3_column_int64(st, 1));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

// The first stored byte of the first pending row's body (its form's tag).
int firstBodyByte(const TempDir& dir) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((dir.path() / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT substr(body, 1, 1) FROM events ORDER BY seq LIMIT 1", -1,
                             &st, nullptr) == SQLITE_OK);
  int b = -1;
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) == 1) {
    b = static_cast<const unsigned char*>(sqlite3_column_blob(st, 0))[0];
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return b;
}

void execOn(const TempDir& dir, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open((dir.path() / "buffer.db").c_str(), &db) == SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  INFO((err != nullptr ? err : ""));
  sqlite3_free(err);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_OK);
}

}  // namespace

TEST_CASE("an envelope packs with the dictionary and unpacks to the same bytes", "[unit][buffer]") {
  const std::string json = envelope(omniedge::makeUuidV7(1764843302481));
  const std::string packed = packBody(json);
  REQUIRE_FALSE(packed.empty());
  CHECK(packed.size() * 3 < json.size() * 2);                          // 321 -> ~170 bytes here
  CHECK(packed[0] == '\xb4');                                          // the LZ4 form's tag
  CHECK(packed[1] == static_cast<char>(0x80 | (json.size() & 0x7f)));  // the length, LEB128
  CHECK(packed[2] == static_cast<char>(json.size() >> 7));
  auto back = unpackBody(packed);
  REQUIRE(back.has_value());
  CHECK(*back == json);

  // Not worth it: short bodies, and bodies that do not shrink by an eighth.
  CHECK(packBody(R"({"id":"x","type":"kiosk.tap"})").empty());
  std::mt19937 rng(7);
  std::string noise(2000, '\0');
  for (auto& c : noise) {
    c = static_cast<char>(rng());
  }
  CHECK(packBody(noise).empty());
}

TEST_CASE("a body packed with its row's id leaves the id to the row and gets it back",
          "[unit][buffer]") {
  const std::string id = omniedge::makeUuidV7(1764843302481);
  const std::string json = envelope(id);
  const std::string with_id = packBody(json);
  const std::string packed = packBody(json, id);
  REQUIRE_FALSE(packed.empty());
  CHECK(packed[0] == '\xb5');  // the form without the id
  // {"id":"<36 characters>", is not stored: the row's id column holds it.
  const std::size_t rest = json.size() - (7 + id.size() + 2);
  CHECK(packed[1] == static_cast<char>(0x80 | (rest & 0x7f)));
  CHECK(packed[2] == static_cast<char>(rest >> 7));
  CHECK(packed.size() + 25 < with_id.size());
  auto back = unpackBody(packed, id);
  REQUIRE(back.has_value());
  CHECK(*back == json);

  // Without the row's id it cannot be rebuilt, and says so.
  auto no_id = unpackBody(packed);
  REQUIRE_FALSE(no_id.has_value());
  CHECK(no_id.error().code == "corrupt");
  CHECK(no_id.error().message == "a packed body left its id to the row, and the row has none");

  // The id is left out only when the JSON starts with exactly that member: another id, an id
  // the JSON spells escaped, or another first member keep the whole JSON.
  for (const auto& [body, row_id] : std::vector<std::pair<std::string, std::string>>{
           {envelope(id), "01a2494b-479b-70e0-a2f7-7acf4c7cde96"},
           {envelope(R"(a\"b)"), R"(a"b)"},
           {envelope(id), id.substr(0, 8)},
           {R"({"type":"kiosk.tap","id":")" + id + R"(",)" + envelope(id).substr(1), id}}) {
    const std::string kept = packBody(body, row_id);
    REQUIRE_FALSE(kept.empty());
    CHECK(kept[0] == '\xb4');
    auto json_back = unpackBody(kept, row_id);
    REQUIRE(json_back.has_value());
    CHECK(*json_back == body);
  }
}

TEST_CASE("a row of several events packs their ids and envelopes as one block and gives each back",
          "[unit][buffer]") {
  std::vector<std::string> ids;
  std::vector<std::string> jsons;
  for (int i = 0; i < 32; ++i) {
    ids.push_back(omniedge::makeUuidV7(1764843302481));
    // Most start with their own id (left out of the block); one spells another first member.
    jsons.push_back(i == 5 ? R"({"type":"kiosk.tap","n":5})"
                           : envelope(ids.back(), ",\"i\":" + std::to_string(i)));
  }
  const std::vector<std::string_view> id_views(ids.begin(), ids.end());
  const std::vector<std::string_view> json_views(jsons.begin(), jsons.end());
  const std::string run = packRun(id_views, json_views);
  REQUIRE_FALSE(run.empty());
  CHECK(isRun(run));
  std::size_t alone = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    alone += packBody(jsons[i], ids[i]).size() + ids[i].size();
  }
  INFO("32 packed alone with their ids: " << alone << " bytes; as one row: " << run.size());
  CHECK(run.size() * 5 < alone * 4);  // at least a fifth smaller than alone, ids included
  auto back = unpackRun(run, 32);
  REQUIRE(back.has_value());
  REQUIRE(back->size() == 32);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    CHECK((*back)[i].id == ids[i]);
    CHECK((*back)[i].json == jsons[i]);
  }
  CHECK(unpackRun(run, 0).has_value());  // any count from 2 to 32

  // A count the row does not hold, a block cut short, a body read as one event: each says why.
  auto wrong = unpackRun(run, 31);
  REQUIRE_FALSE(wrong.has_value());
  CHECK(wrong.error().code == "corrupt");
  CHECK(wrong.error().message == "a row says it holds 31 events and its block holds more");
  auto too_many = unpackRun(run, 33);
  REQUIRE_FALSE(too_many.has_value());
  CHECK(too_many.error().message ==
        "a row says it holds 33 events; a row of several holds 2 to 32");
  auto cut = unpackRun(std::string_view(run).substr(0, run.size() - 9), 32);
  REQUIRE_FALSE(cut.has_value());
  CHECK(cut.error().message.rfind("a row of several events does not unpack", 0) == 0);
  auto as_one = unpackBody(run, ids[0]);
  REQUIRE_FALSE(as_one.has_value());
  CHECK(as_one.error().message == "a row of several events where one event's body was expected");
  auto single = unpackRun(packBody(jsons[0], ids[0]), 2);
  REQUIRE_FALSE(single.has_value());
  CHECK(single.error().message == "a row of 2 events does not hold a block of several events");

  // What cannot be a row of several: one event, more than 32, more than kMaxRunBytes.
  CHECK(packRun({id_views[0]}, {json_views[0]}).empty());
  std::vector<std::string_view> many_ids(kMaxRunEvents + 1, id_views[0]);
  std::vector<std::string_view> many_jsons(kMaxRunEvents + 1, json_views[0]);
  CHECK(packRun(many_ids, many_jsons).empty());
  const std::string huge(kMaxRunBytes / 2, 'x');
  CHECK(packRun({id_views[0], id_views[1]}, {huge, huge}).empty());
}

TEST_CASE("a row packed against the dictionary, as agents packed them before, unpacks the same",
          "[unit][buffer]") {
  // packRun packs against no dictionary; a block LZ4 packed against it (schema-6 agents until
  // f6acc8c) must still give every event back, and both must read the same.
  std::vector<std::string> ids;
  std::vector<std::string> jsons;
  std::string raw;  // packRun's block before LZ4: varint id length, id, varint 2*len+1, rest
  auto putVarint = [&raw](uint64_t v) {
    for (; v >= 0x80; v >>= 7) {
      raw.push_back(static_cast<char>((v & 0x7f) | 0x80));
    }
    raw.push_back(static_cast<char>(v));
  };
  for (int i = 0; i < 32; ++i) {
    ids.push_back(omniedge::makeUuidV7(1764843302481));
    jsons.push_back(envelope(ids.back(), ",\"i\":" + std::to_string(i)));
    const std::string rest = jsons.back().substr(std::strlen(R"({"id":")") + ids.back().size() + 2);
    putVarint(ids.back().size());
    raw += ids.back();
    putVarint((rest.size() << 1) | 1);
    raw += rest;
  }
  LZ4_stream_t* dict = LZ4_createStream();
  LZ4_stream_t* stream = LZ4_createStream();
  REQUIRE(dict != nullptr);
  REQUIRE(stream != nullptr);
  LZ4_loadDict(dict, reinterpret_cast<const char*>(omniedge::store::kBodyDict),
               static_cast<int>(omniedge::store::kBodyDictSize));
  LZ4_attach_dictionary(stream, dict);
  std::string block(static_cast<std::size_t>(LZ4_compressBound(static_cast<int>(raw.size()))),
                    '\0');
  const int n =
      LZ4_compress_fast_continue(stream, raw.data(), block.data(), static_cast<int>(raw.size()),
                                 static_cast<int>(block.size()), 2);
  LZ4_freeStream(stream);
  LZ4_freeStream(dict);
  REQUIRE(n > 0);
  std::string old_row(1, static_cast<char>(0xb6));
  for (uint64_t v = raw.size();; v >>= 7) {
    old_row.push_back(static_cast<char>(v >= 0x80 ? (v & 0x7f) | 0x80 : v));
    if (v < 0x80) {
      break;
    }
  }
  old_row.append(block.data(), static_cast<std::size_t>(n));

  const std::vector<std::string_view> id_views(ids.begin(), ids.end());
  const std::vector<std::string_view> json_views(jsons.begin(), jsons.end());
  const std::string new_row = packRun(id_views, json_views);
  REQUIRE_FALSE(new_row.empty());
  CHECK(new_row != old_row);  // packed differently ...
  for (const std::string& row : {old_row, new_row}) {
    auto back = unpackRun(row, 32);  // ... read the same
    REQUIRE(back.has_value());
    REQUIRE(back->size() == 32);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      CHECK((*back)[i].id == ids[i]);
      CHECK((*back)[i].json == jsons[i]);
    }
  }
}

TEST_CASE("a packed body that is not whole says why, and never allocates what it claims",
          "[unit][buffer]") {
  const std::string packed = packBody(envelope("0192f3b4-7c1e-7a2b-9c1d-5e6f7a8b9c0d"));
  REQUIRE_FALSE(packed.empty());

  auto garbage = unpackBody("not a packed body at all");
  REQUIRE_FALSE(garbage.has_value());
  CHECK(garbage.error().code == "corrupt");
  CHECK_THAT(
      garbage.error().message,
      Catch::Contains("is neither an LZ4 body nor a zstd frame whose header gives its size"));

  auto cut = unpackBody(std::string_view(packed).substr(0, packed.size() - 5));
  REQUIRE_FALSE(cut.has_value());
  CHECK(cut.error().code == "corrupt");
  CHECK_THAT(cut.error().message, Catch::Contains("does not unpack"));
  auto headless = unpackBody(std::string_view(packed).substr(0, 2));  // inside the length
  REQUIRE_FALSE(headless.has_value());
  CHECK_THAT(headless.error().message, Catch::Contains("ends inside the length of its JSON"));
  std::string endless("\xb4", 1);  // a length that never ends
  endless.append(8, '\xff');
  auto never = unpackBody(endless);
  REQUIRE_FALSE(never.has_value());
  CHECK_THAT(never.error().message, Catch::Contains("its JSON in more than 5 bytes"));
  // A length that does not match what the block holds, longer and shorter.
  std::string longer = packed;
  longer[1] = static_cast<char>(static_cast<unsigned char>(longer[1]) + 1);
  auto l = unpackBody(longer);
  REQUIRE_FALSE(l.has_value());
  CHECK_THAT(l.error().message, Catch::Contains("does not unpack"));
  std::string shorter = packed;
  shorter[1] = static_cast<char>(static_cast<unsigned char>(shorter[1]) - 1);
  auto sh = unpackBody(shorter);
  REQUIRE_FALSE(sh.has_value());
  CHECK_THAT(sh.error().message, Catch::Contains("does not unpack"));

  // Lengths too long to be true (LEB128): refused before anything is allocated.
  std::string huge("\xb4\x80\x80\x80\x80\x80\x20", 7);
  huge.append(packed.substr(3));
  auto big = unpackBody(huge);
  REQUIRE_FALSE(big.has_value());
  CHECK_THAT(big.error().message, Catch::Contains("its JSON in more than 5 bytes"));
  std::string over("\xb4\x80\x80\x80\x80\x10", 6);  // 2^32, in the fifth byte
  over.append(packed.substr(3));
  auto o = unpackBody(over);
  REQUIRE_FALSE(o.has_value());
  CHECK_THAT(o.error().message, Catch::Contains("says it holds 4294967296 bytes"));
}

// Files of versions 2 and 3 hold bodies packed as zstd frames with the same dictionary: they
// read on after the upgrade, with the same checks as before.
TEST_CASE("bodies packed as zstd frames before version 4 unpack, and damaged ones say why",
          "[unit][buffer]") {
  const std::string json = envelope(omniedge::makeUuidV7(1764843302481));
  ZSTD_CCtx* c = ZSTD_createCCtx();
  REQUIRE(c != nullptr);
  const std::string_view dict(reinterpret_cast<const char*>(omniedge::store::kBodyDict),
                              omniedge::store::kBodyDictSize);
  std::string frame(ZSTD_compressBound(json.size()), '\0');
  const std::size_t n = ZSTD_compress_usingDict(c, frame.data(), frame.size(), json.data(),
                                                json.size(), dict.data(), dict.size(), -1);
  ZSTD_freeCCtx(c);
  REQUIRE(ZSTD_isError(n) == 0);
  frame.resize(n);
  REQUIRE(frame.compare(0, 4, "\x28\xb5\x2f\xfd") == 0);
  auto back = unpackBody(frame);
  REQUIRE(back.has_value());
  CHECK(*back == json);

  auto cut = unpackBody(std::string_view(frame).substr(0, frame.size() - 5));
  REQUIRE_FALSE(cut.has_value());
  CHECK_THAT(cut.error().message, Catch::Contains("does not unpack"));

  // A header claiming 2^40 bytes: magic, descriptor (8-byte content size, single segment).
  std::string huge("\x28\xb5\x2f\xfd\xe0", 5);
  const uint64_t size = uint64_t{1} << 40;
  huge.append(reinterpret_cast<const char*>(&size), 8);  // little-endian, as on every target
  huge.append(8, '\0');
  auto big = unpackBody(huge);
  REQUIRE_FALSE(big.has_value());
  CHECK_THAT(big.error().message, Catch::Contains("says it holds 1099511627776 bytes"));

  // A frame naming another dictionary: a 2-byte id field, after the window byte unless the
  // frame is a single segment.
  std::string other = frame;
  const auto fhd = static_cast<unsigned char>(other[4]);
  REQUIRE((fhd & 0x03) == 2);
  other[(fhd & 0x20) != 0 ? 5 : 6] = static_cast<char>(0x44);
  auto unknown = unpackBody(other);
  REQUIRE_FALSE(unknown.has_value());
  CHECK_THAT(unknown.error().message, Catch::Contains("names zstd dictionary"));
  CHECK_THAT(unknown.error().message, Catch::Contains("which this agent does not have"));
}

TEST_CASE("the buffer stores packed bodies as BLOBs and gives the JSON back to every reader",
          "[unit][buffer]") {
  TempDir dir;
  auto b = openBuffer(dir);
  StoredEvent big = event(R"(,"query":"gift card pickup locker store hours")");
  StoredEvent small;
  small.id = "tiny-1";
  small.type = "kiosk.ping";
  small.received_at_ms = 1764843302484;
  small.body = R"({"id":"tiny-1","type":"kiosk.ping"})";
  REQUIRE(b->append({big, small}).has_value());

  const auto forms = storedForms(dir);  // the WAL is read too: the file is opened by SQLite
  REQUIRE(forms.size() == 2);
  CHECK(forms[0].first == "blob");
  CHECK(forms[0].second * 3 < static_cast<int64_t>(big.body.size()) * 2);
  CHECK(forms[1].first == "text");
  CHECK(firstBodyByte(dir) == 0xb5);  // the envelope starts with its id: left to the row
  // The accounting counts what the rows hold, as SQL counts it after a restart.
  CHECK(b->stats().pending_bytes == forms[0].second + forms[1].second +
                                        static_cast<int64_t>(big.id.size() + big.type.size() +
                                                             small.id.size() + small.type.size()) +
                                        2 * 40);

  auto pending = b->readPending(0, 10, 1 << 20);
  REQUIRE(pending.has_value());
  REQUIRE(pending->size() == 2);
  CHECK(pending->at(0).body == big.body);
  CHECK(pending->at(1).body == small.body);
  // The byte limit is in JSON bytes, what the batch will carry.
  auto one = b->readPending(0, 10, big.body.size() + 1);
  REQUIRE(one.has_value());
  CHECK(one->size() == 1);

  // Quarantined and moved back: the BLOB moves as a BLOB.
  b->quarantine(pending->at(0).seq, pending->at(1).seq, "HTTP 422: schema");
  b->syncAcknowledgements();
  auto moved = b->retryQuarantine();
  REQUIRE(moved.has_value());
  CHECK(*moved == 2);
  auto again = b->readPending(0, 10, 1 << 20);
  REQUIRE(again.has_value());
  REQUIRE(again->size() == 2);
  CHECK(again->at(0).body == big.body);
  CHECK(again->at(1).body == small.body);
  const auto before_edit = b->stats().pending_bytes;

  // The personal-data edit finds a needle inside a packed body and rewrites it, packed again.
  auto report = b->editEvents(
      {"40000066677"},
      [](const std::string&, const std::string& body) {
        EventEdit e;
        e.action = EventEdit::Action::kReplace;
        e.body = body;
        const auto at = e.body.find("40000066677");
        e.body.replace(at, 11, "erased");
        return e;
      },
      false);
  REQUIRE(report.has_value());
  CHECK(report->pending_replaced == 1);
  auto edited = b->readPending(0, 10, 1 << 20);
  REQUIRE(edited.has_value());
  REQUIRE(edited->size() == 2);
  CHECK(edited->at(0).body.find("40000066677") == std::string::npos);
  CHECK(edited->at(0).body.find(R"("loyalty_id":"erased")") != std::string::npos);
  CHECK(storedForms(dir)[0].first == "blob");
  const auto forms_after = storedForms(dir);
  CHECK(b->stats().pending_bytes == before_edit - forms[0].second + forms_after[0].second);

  // After a restart the counters are recounted from the rows: the same.
  const auto running = b->stats().pending_bytes;
  b.reset();
  auto reopened = openBuffer(dir);
  CHECK(reopened->stats().pending_bytes == running);
}

TEST_CASE("a packed body that no longer unpacks is quarantined with the reason, the rest flow",
          "[unit][buffer]") {
  TempDir dir;
  {
    auto b = openBuffer(dir);
    REQUIRE(b->append({event(",\"n\":1"), event(",\"n\":2"), event(",\"n\":3")}).has_value());
  }
  // A row's body damaged under SQLite (a bad sector, a stray write): still a BLOB, no longer a
  // frame that unpacks. And an older agent's TEXT row beside it.
  execOn(dir,
         "UPDATE events SET body = CAST(substr(body, 1, 20) AS BLOB) WHERE seq = "
         "(SELECT min(seq) + 1 FROM events);"
         "INSERT INTO events(seq, id, type, prio, received_ms, body) VALUES(100, 'old-1', "
         "'kiosk.tap', 1, 0, '{\"id\":\"old-1\",\"type\":\"kiosk.tap\"}')");
  auto b = openBuffer(dir);
  auto pending = b->readPending(0, 10, 1 << 20);
  REQUIRE(pending.has_value());
  REQUIRE(pending->size() == 3);
  CHECK(pending->at(0).body.find("\"n\":1") != std::string::npos);
  CHECK(pending->at(1).body.find("\"n\":3") != std::string::npos);
  CHECK(pending->at(2).body == "{\"id\":\"old-1\",\"type\":\"kiosk.tap\"}");
  b->syncAcknowledgements();
  const auto st = b->stats();
  CHECK(st.pending[1] == 3);
  CHECK(st.quarantined == 1);
  CHECK_THAT(st.quarantine_last_reason, Catch::StartsWith("stored body unreadable: "));
  CHECK_THAT(st.quarantine_last_reason, Catch::Contains("does not unpack"));
}

// A version-3 file (bodies packed as zstd frames) opened by this agent: upgraded to the newest
// version in place, its zstd bodies read on beside new LZ4 ones, and an older agent now refuses
// it.
TEST_CASE("a version-3 buffer with zstd bodies upgrades to the newest and its bodies read on",
          "[unit][buffer]") {
  TempDir dir;
  StoredEvent old = event(R"(,"query":"written by version 3")");
  {
    auto b = openBuffer(dir);
    REQUIRE(b->append({old}).has_value());
  }
  ZSTD_CCtx* c = ZSTD_createCCtx();
  REQUIRE(c != nullptr);
  std::string frame(ZSTD_compressBound(old.body.size()), '\0');
  const std::size_t n =
      ZSTD_compress_usingDict(c, frame.data(), frame.size(), old.body.data(), old.body.size(),
                              omniedge::store::kBodyDict, omniedge::store::kBodyDictSize, -1);
  ZSTD_freeCCtx(c);
  REQUIRE(ZSTD_isError(n) == 0);
  std::string hex;
  for (std::size_t i = 0; i < n; ++i) {
    static constexpr char kDigits[] = "0123456789abcdef";
    hex += kDigits[static_cast<unsigned char>(frame[i]) >> 4];
    hex += kDigits[static_cast<unsigned char>(frame[i]) & 0x0f];
  }
  execOn(dir, "UPDATE events SET body = x'" + hex + "' WHERE id = '" + old.id +
                  "'; PRAGMA user_version = 3");

  auto b = openBuffer(dir);
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((dir.path() / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  CHECK(sqlite3_column_int(st, 0) == omniedge::store::schema::kBuffer);
  sqlite3_finalize(st);
  sqlite3_close(db);

  StoredEvent fresh = event(R"(,"query":"written by version 4")");
  REQUIRE(b->append({fresh}).has_value());
  const auto forms = storedForms(dir);
  REQUIRE(forms.size() == 2);
  CHECK(forms[0] == std::make_pair(std::string("blob"), static_cast<int64_t>(n)));
  CHECK(forms[1].first == "blob");
  auto pending = b->readPending(0, 10, 1 << 20);
  REQUIRE(pending.has_value());
  REQUIRE(pending->size() == 2);
  CHECK(pending->at(0).body == old.body);
  CHECK(pending->at(1).body == fresh.body);
  CHECK(b->stats().quarantined == 0);
}
