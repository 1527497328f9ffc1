// Upgrades: every layout of every SQLite file that shipped on main before files carried a
// schema version (tests/fixtures/schema/, one file each) opens in today's agent with its data,
// and a file a newer omniedge wrote is refused with a message and left byte for byte as it was.
#include "agent/store/schema.h"

#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "agent/store/buffer.h"
#include "agent/store/buffer_reader.h"
#include "agent/store/inbox.h"
#include "agent/store/profile_cache.h"
#include "tests/support/temp_dir.h"

namespace fs = std::filesystem;
namespace schema = omniedge::store::schema;
using omniedge::store::Buffer;
using omniedge::store::BufferOptions;
using omniedge::store::InboxOptions;
using omniedge::store::InboxStore;
using omniedge::store::ProfileCache;
using omniedge::store::ProfileCacheOptions;
using omniedge::testing::TempDir;

namespace {

const fs::path kFixtures = fs::path(OMNIEDGE_SOURCE_DIR) / "tests/fixtures/schema";

void copyFixture(const std::string& name, const fs::path& to) {
  REQUIRE(fs::exists(kFixtures / name));
  fs::copy_file(kFixtures / name, to, fs::copy_options::overwrite_existing);
  fs::permissions(to, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
}

std::string bytesOf(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Opens `file` with a plain connection and runs `f` on it.
void withDb(const fs::path& file, const std::function<void(sqlite3*)>& f) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK);
  f(db);
  sqlite3_close(db);
}

int64_t integer(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  const int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

int userVersion(const fs::path& file) {
  int v = -1;
  withDb(file, [&](sqlite3* db) { v = static_cast<int>(integer(db, "PRAGMA user_version")); });
  return v;
}

// Every table and index with its SQL, as a newer layout would be compared: (type, name) -> sql.
std::map<std::string, std::string> layoutOf(const fs::path& file) {
  std::map<std::string, std::string> out;
  withDb(file, [&](sqlite3* db) {
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db,
                               "SELECT type || ' ' || name, coalesce(sql, '') FROM sqlite_master "
                               "WHERE name NOT LIKE 'sqlite_%'",
                               -1, &st, nullptr) == SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
      out[reinterpret_cast<const char*>(sqlite3_column_text(st, 0))] =
          reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
    }
    sqlite3_finalize(st);
  });
  return out;
}

void stampVersion(const fs::path& file, int version) {
  withDb(file, [&](sqlite3* db) {
    const std::string sql = "PRAGMA user_version = " + std::to_string(version);
    REQUIRE(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  });
}

BufferOptions bufferOptions(const fs::path& dir) {
  BufferOptions o;
  o.dir = dir;
  o.min_free_disk = 0;
  return o;
}

// What a refusal must leave: the file's bytes, and no journal, WAL, -shm or buffer.lock it did
// not have.
struct Snapshot {
  std::map<std::string, std::string> files;
  explicit Snapshot(const fs::path& dir) {
    for (const auto& e : fs::directory_iterator(dir)) {
      files[e.path().filename().string()] = bytesOf(e.path());
    }
  }
};

// How the refusal of `file` at `version` starts.
std::string newerPrefix(const fs::path& file, int version) {
  return file.string() + " has schema version " + std::to_string(version) + ", but this omniedge (";
}

}  // namespace

TEST_CASE("every earlier buffer layout is upgraded at open and delivers its pending events",
          "[unit][schema][buffer]") {
  // The highest seq each file ever gave: the next event must get the one after it.
  const std::map<std::string, int64_t> highest = {{"buffer-7bdb017.db", 7},
                                                  {"buffer-359d2e8.db", 7},
                                                  {"buffer-865295e.db", 7},
                                                  {"buffer-bf9d976.db", 8},
                                                  {"buffer-ac89e2e.db", 8}};
  // "@2": the file as versions 1 and 2 left it (their layout is ac89e2e's, with a version);
  // "@2 copied": with its declaration worded otherwise, which the step to 3 does not edit in
  // place: it copies the table (as where SQLite refuses schema writes).
  const std::string generated =
      GENERATE("buffer-7bdb017.db", "buffer-359d2e8.db", "buffer-865295e.db", "buffer-bf9d976.db",
               "buffer-ac89e2e.db", "buffer-ac89e2e.db@2", "buffer-ac89e2e.db@2 copied");
  INFO(generated);
  const std::string name = generated.substr(0, generated.find('@'));
  const int version = name == generated ? 0 : std::stoi(generated.substr(name.size() + 1));
  const bool reworded = generated.find("copied") != std::string::npos;
  TempDir fresh;
  { REQUIRE(Buffer::open(bufferOptions(fresh.path())).has_value()); }
  TempDir dir;
  copyFixture(name, dir / "buffer.db");
  if (version > 0) {
    stampVersion(dir / "buffer.db", version);
  }
  if (reworded) {
    withDb(dir / "buffer.db", [](sqlite3* db) {
      REQUIRE(
          sqlite3_exec(db,
                       "PRAGMA writable_schema = ON;"
                       "UPDATE sqlite_master SET sql = replace(sql, 'id TEXT NOT NULL UNIQUE,', "
                       "'id TEXT UNIQUE NOT NULL,') WHERE name = 'events';"
                       "PRAGMA writable_schema = OFF;",
                       nullptr, nullptr, nullptr) == SQLITE_OK);
    });
  }
  REQUIRE(userVersion(dir / "buffer.db") == version);
  const auto eventsRoot = [&] {
    int64_t root = 0;
    withDb(dir / "buffer.db", [&](sqlite3* db) {
      root = integer(db, "SELECT rootpage FROM sqlite_master WHERE name = 'events'");
    });
    return root;
  };
  const int64_t root_before = eventsRoot();
  {
    auto opened = Buffer::open(bufferOptions(dir.path()));
    REQUIRE(opened.has_value());
    Buffer& b = **opened;
    auto pending = b.readPending(0, 100, 1 << 20);
    REQUIRE(pending.has_value());
    REQUIRE(pending->size() == 3);
    CHECK((*pending)[0].seq == 3);
    CHECK((*pending)[0].body.find("\"type\":\"pos.transaction\"") != std::string::npos);
    CHECK((*pending)[2].body.find("0189a000-0000-7000-8000-000000000005") != std::string::npos);
    CHECK(b.stats().pending[0] + b.stats().pending[1] + b.stats().pending[2] == 3);
    CHECK(!b.epoch().empty());

    // A new event never gets a seq the old agent already gave (also one only sqlite_sequence
    // remembered).
    omniedge::store::StoredEvent e;
    e.id = "0189a000-0000-7000-8000-0000000000aa";
    e.type = "kiosk.visit";
    e.priority = omniedge::priorityOf(e.type);
    e.received_at_ms = 1764000009000;
    e.body = R"({"id":"0189a000-0000-7000-8000-0000000000aa","type":"kiosk.visit"})";
    REQUIRE(b.append({e}).has_value());
    // The ids pending before the upgrade are still kept unique (schema version 3 keeps their
    // index entries as events_given_id's).
    omniedge::store::StoredEvent dup = e;
    dup.id = "0189a000-0000-7000-8000-000000000004";
    auto twice = b.append({dup});
    REQUIRE(twice.has_value());
    CHECK(twice->duplicates == 1);
    auto after = b.readPending(5, 10, 1 << 20);
    REQUIRE(after.has_value());
    REQUIRE(after->size() == 1);
    CHECK(after->front().seq == highest.at(name) + 1);

    // Deliverable: acknowledged, nothing stays pending.
    b.acknowledge(3, after->front().seq);
    b.syncAcknowledgements();
    auto left = b.readPending(0, 100, 1 << 20);
    REQUIRE(left.has_value());
    CHECK(left->empty());
  }
  CHECK(userVersion(dir / "buffer.db") == schema::kBuffer);
  withDb(dir / "buffer.db", [](sqlite3* db) {
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, 0))) == "ok");
    sqlite3_finalize(st);
  });
  // The step to 3 keeps the table where it was (edited in place), unless it had to copy it.
  if (version == 2) {
    CHECK((eventsRoot() == root_before) == !reworded);
  }
  // One layout whatever the file was made by: the same tables and indexes as a new buffer.
  CHECK(layoutOf(dir / "buffer.db") == layoutOf(fresh / "buffer.db"));
  // A new file has 2 KiB pages (fewer bytes per small commit); an older one keeps its 4 KiB
  // (changing it would rewrite the whole file).
  withDb(fresh / "buffer.db", [](sqlite3* db) { CHECK(integer(db, "PRAGMA page_size") == 2048); });
  withDb(dir / "buffer.db", [](sqlite3* db) { CHECK(integer(db, "PRAGMA page_size") == 4096); });
  // Upgraded once: opening it again is an ordinary open.
  REQUIRE(Buffer::open(bufferOptions(dir.path())).has_value());
}

TEST_CASE("a buffer a newer omniedge wrote is refused with a clear message and left unchanged",
          "[unit][schema][buffer]") {
  TempDir dir;
  copyFixture("buffer-ac89e2e.db", dir / "buffer.db");
  const int newer = schema::kBuffer + 4;
  stampVersion(dir / "buffer.db", newer);
  REQUIRE(!fs::exists(dir / "buffer.db-wal"));
  const Snapshot before(dir.path());

  auto opened = Buffer::open(bufferOptions(dir.path()));
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().code == "schema");
  const std::string& msg = opened.error().message;
  CHECK_THAT(msg, Catch::StartsWith((dir / "buffer.db").string() + " has schema version " +
                                    std::to_string(newer) + ", but this omniedge ("));
  CHECK_THAT(msg, Catch::Contains("knows versions up to " + std::to_string(schema::kBuffer)));
  CHECK_THAT(msg, Catch::Contains("written by a newer omniedge. It was not changed"));

  const Snapshot after(dir.path());
  CHECK(after.files == before.files);  // same bytes, and no -wal, -shm or -journal made
  CHECK(!fs::exists(dir / "buffer.db-journal"));
  CHECK(!fs::exists(dir / "buffer.db-wal"));
}

TEST_CASE("a newer version only in the WAL a crash left is refused too, and nothing is replayed",
          "[unit][schema][buffer]") {
  TempDir dir;
  { REQUIRE(Buffer::open(bufferOptions(dir.path())).has_value()); }
  // A newer agent upgraded the file and was killed before any checkpoint: the new version is
  // in buffer.db-wal only.
  withDb(dir / "buffer.db", [&](sqlite3* db) {
    REQUIRE(sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "PRAGMA user_version = 9", nullptr, nullptr, nullptr) == SQLITE_OK);
  });
  REQUIRE(fs::file_size(dir / "buffer.db-wal") > 0);
  const std::string db_bytes = bytesOf(dir / "buffer.db");
  const std::string wal_bytes = bytesOf(dir / "buffer.db-wal");

  auto opened = Buffer::open(bufferOptions(dir.path()));
  REQUIRE_FALSE(opened.has_value());
  CHECK(opened.error().code == "schema");
  CHECK_THAT(opened.error().message, Catch::Contains("has schema version 9"));
  CHECK(bytesOf(dir / "buffer.db") == db_bytes);
  CHECK(bytesOf(dir / "buffer.db-wal") == wal_bytes);
}

TEST_CASE("the CLI's read-only reader refuses a newer buffer and reads an older one",
          "[unit][schema][buffer]") {
  TempDir dir;
  copyFixture("buffer-7bdb017.db", dir / "buffer.db");
  {
    auto r = omniedge::store::openBufferReadOnly(dir.path());
    REQUIRE(r.has_value());
    CHECK(integer(r->db.get(), "SELECT count(*) FROM events") == 3);
  }
  stampVersion(dir / "buffer.db", schema::kBuffer + 1);
  const std::string bytes = bytesOf(dir / "buffer.db");
  auto r = omniedge::store::openBufferReadOnly(dir.path());
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == "schema");
  CHECK_THAT(r.error().message,
             Catch::StartsWith(newerPrefix(dir / "buffer.db", schema::kBuffer + 1)));
  CHECK(bytesOf(dir / "buffer.db") == bytes);
}

TEST_CASE("every earlier profiles.db layout opens with its profiles", "[unit][schema][profiles]") {
  const std::string name = GENERATE("profiles-b60fe88.db", "profiles-4f1a2ed.db");
  INFO(name);
  TempDir dir;
  copyFixture(name, dir / "profiles.db");
  {
    ProfileCacheOptions o;
    o.dir = dir.path();
    auto cache = ProfileCache::open(o);
    REQUIRE(cache.has_value());
    auto gold = (*cache)->lookup("loyalty:GOLD-0001");
    REQUIRE(gold.has_value());
    CHECK((*gold)["tier"] == "gold");
  }
  CHECK(userVersion(dir / "profiles.db") == schema::kProfiles);
  TempDir fresh;
  {
    ProfileCacheOptions o;
    o.dir = fresh.path();
    REQUIRE(ProfileCache::open(o).has_value());
  }
  CHECK(layoutOf(dir / "profiles.db") == layoutOf(fresh / "profiles.db"));
}

TEST_CASE("every earlier inbox.db layout opens with its messages and command journal",
          "[unit][schema][inbox]") {
  // c9d6f2b's journal has no `reported` column: before versions, today's agent could not open
  // it at all ("no such column: reported").
  const std::string name = GENERATE("inbox-c9d6f2b.db", "inbox-9cbd455.db");
  INFO(name);
  TempDir dir;
  copyFixture(name, dir / "inbox.db");
  InboxOptions o;
  o.dir = dir.path();
  auto inbox = InboxStore::open(o);
  REQUIRE(inbox.has_value());
  auto pending = (*inbox)->pending(10);
  REQUIRE(pending.has_value());
  REQUIRE(pending->size() == 1);
  CHECK(pending->front().payload == R"({"id":"c-2","name":"ping"})");
  auto seen = (*inbox)->findCommand("c-1");
  REQUIRE(seen.has_value());
  REQUIRE(seen->has_value());
  CHECK((*seen)->done);
  CHECK((*seen)->name == "flush");
  auto unreported = (*inbox)->unreportedCommands(10);
  REQUIRE(unreported.has_value());
  CHECK(unreported->size() == 1);
  inbox->reset();
  CHECK(userVersion(dir / "inbox.db") == schema::kInbox);
}

TEST_CASE("profiles.db and inbox.db a newer omniedge wrote are refused unchanged",
          "[unit][schema][profiles][inbox]") {
  TempDir dir;
  copyFixture("profiles-4f1a2ed.db", dir / "profiles.db");
  copyFixture("inbox-9cbd455.db", dir / "inbox.db");
  stampVersion(dir / "profiles.db", schema::kProfiles + 1);
  stampVersion(dir / "inbox.db", schema::kInbox + 2);
  const Snapshot before(dir.path());

  ProfileCacheOptions po;
  po.dir = dir.path();
  auto cache = ProfileCache::open(po);
  REQUIRE_FALSE(cache.has_value());
  CHECK(cache.error().code == "schema");
  CHECK_THAT(cache.error().message,
             Catch::StartsWith(newerPrefix(dir / "profiles.db", schema::kProfiles + 1)));

  InboxOptions io;
  io.dir = dir.path();
  auto inbox = InboxStore::open(io);
  REQUIRE_FALSE(inbox.has_value());
  CHECK(inbox.error().code == "schema");
  CHECK_THAT(inbox.error().message,
             Catch::StartsWith(newerPrefix(dir / "inbox.db", schema::kInbox + 2)));

  CHECK(Snapshot(dir.path()).files == before.files);
}

TEST_CASE("the daemon's up-front check names the first newer file of the data dir",
          "[unit][schema]") {
  TempDir dir;
  copyFixture("buffer-ac89e2e.db", dir / "buffer.db");
  copyFixture("visits-fad2525.db", dir / "visits.db");
  CHECK(schema::refuseNewerFiles(dir.path()).has_value());
  stampVersion(dir / "visits.db", schema::kVisits + 1);
  auto r = schema::refuseNewerFiles(dir.path());
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == "schema");
  CHECK_THAT(r.error().message,
             Catch::StartsWith(newerPrefix(dir / "visits.db", schema::kVisits + 1)));
}

namespace {

omniedge::Result<void> createA(sqlite3* db) { return schema::exec(db, "CREATE TABLE a(x)"); }
omniedge::Result<void> failing(sqlite3* db) {
  return schema::exec(db, "INSERT INTO nowhere VALUES(1)");
}

sqlite3* openRaw(const fs::path& file) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) ==
          SQLITE_OK);
  return db;
}

}  // namespace

TEST_CASE("the steps of an upgrade are one transaction: a failing step leaves the file as it was",
          "[unit][schema]") {
  TempDir dir;
  const fs::path file = dir / "x.db";
  sqlite3* db = openRaw(file);
  REQUIRE(sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr) == SQLITE_OK);
  const schema::Migration steps[] = {{1, "table a", createA}, {2, "a step that fails", failing}};
  auto r = schema::upgrade(db, file, {"x.db", "CREATE TABLE t(x)", steps});
  sqlite3_close(db);
  REQUIRE_FALSE(r.has_value());
  CHECK_THAT(r.error().message, Catch::Contains("from schema version 1 to 2 (a step that fails)"));
  CHECK_THAT(r.error().message, Catch::Contains("no such table: nowhere"));
  CHECK(userVersion(file) == 0);
  CHECK(layoutOf(file).count("table a") == 0);
}

TEST_CASE("a file already at the newest version is not written by its open", "[unit][schema]") {
  TempDir dir;
  const fs::path file = dir / "x.db";
  const schema::Migration steps[] = {{1, "table a", createA}};
  const schema::Layout layout{"x.db", "CREATE TABLE a(x)", steps};
  {
    sqlite3* db = openRaw(file);
    auto r = schema::upgrade(db, file, layout);
    sqlite3_close(db);
    REQUIRE(r.has_value());
    CHECK(r->created);
    CHECK(r->to == 1);
  }
  const std::string bytes = bytesOf(file);
  sqlite3* db = openRaw(file);
  auto r = schema::upgrade(db, file, layout);
  sqlite3_close(db);
  REQUIRE(r.has_value());
  CHECK(r->from == 1);
  CHECK_FALSE(r->created);
  CHECK(bytesOf(file) == bytes);
}
