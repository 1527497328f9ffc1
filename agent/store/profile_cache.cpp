#include "agent/store/profile_cache.h"

#include <algorithm>
#include <set>
#include <utility>

#include "agent/api/time.h"
#include "agent/store/schema.h"
#include "drivers/kiosk/customer_key.h"

namespace omniedge::store {
namespace {

using nlohmann::json;

// A profile larger than this is refused: a bound on what one message can make us hold.
constexpr std::size_t kMaxProfileBytes = 64 * 1024;
// What the in-memory index costs beyond the bytes themselves (hash nodes, list node, strings'
// headers), estimated so that the memory bound counts what is really held.
constexpr std::size_t kEntryOverhead = 192;
constexpr std::size_t kKeyOverhead = 80;
constexpr std::string_view kLocalPrefix = "local:";

constexpr const char* kSchema =
    "CREATE TABLE IF NOT EXISTS profiles(id TEXT PRIMARY KEY, doc TEXT NOT NULL,"
    " heard_ms INTEGER NOT NULL, keys TEXT NOT NULL DEFAULT '', bytes INTEGER NOT NULL DEFAULT 0,"
    " refused INTEGER NOT NULL DEFAULT 0, local INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS profile_keys(key TEXT PRIMARY KEY, id TEXT NOT NULL)"
    " WITHOUT ROWID;";
// Built after a migration may have added the columns they name.
constexpr const char* kIndexes =
    "CREATE INDEX IF NOT EXISTS profile_keys_by_id ON profile_keys(id);"
    // Eviction order, and the counts at open without reading the documents.
    "CREATE INDEX IF NOT EXISTS profiles_by_heard ON profiles(heard_ms, bytes, local);";
constexpr const char* kColumns = "id, doc, heard_ms, keys, bytes, refused, local";

Error invalid(const std::string& field, const std::string& why) {
  return makeError("invalid", field + " " + why, field);
}

std::string joinKeys(const std::vector<std::string>& keys) {
  std::string out;
  for (const std::string& k : keys) {
    out += out.empty() ? "" : "\n";
    out += k;
  }
  return out;
}

std::vector<std::string> splitKeys(std::string_view text) {
  std::vector<std::string> keys;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    keys.emplace_back(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
  }
  return keys;
}

// The ConsentPurpose bits a profile refuses (consent.<purpose> == false).
unsigned refusedPurposes(const json& doc) {
  const auto consent = doc.find("consent");
  if (consent == doc.end() || !consent->is_object()) {
    return 0;
  }
  unsigned bits = 0;
  for (const auto& [name, bit] : {std::pair{"tracking", ConsentPurpose::kTracking},
                                  std::pair{"personalization", ConsentPurpose::kPersonalization},
                                  std::pair{"marketing", ConsentPurpose::kMarketing}}) {
    const auto v = consent->find(name);
    if (v != consent->end() && *v == false) {
      bits |= static_cast<unsigned>(bit);
    }
  }
  return bits;
}

std::string columnText(sqlite3_stmt* st, int i) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, i));
  return text != nullptr ? std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(st, i)))
                         : std::string();
}

// "{...}" + freshness, without parsing the document.
std::string withFreshness(const std::string& doc, int64_t heard_ms) {
  std::string out = doc;
  const std::string field = "\"freshness\":\"" + formatRfc3339Ms(heard_ms) + "\"";
  const std::size_t close = out.rfind('}');
  if (close == std::string::npos) {
    return "{" + field + "}";
  }
  const std::size_t before = out.find_last_not_of(" \n\r\t", close - 1);
  const bool empty = before == std::string::npos || out[before] == '{';
  out.insert(close, empty ? field : "," + field);
  return out;
}

}  // namespace

std::size_t ProfileCache::memoryBytes(const Entry& e) {
  std::size_t n = kEntryOverhead + e.doc.size() + e.id.size() * 3;
  for (const std::string& k : e.keys) {
    n += kKeyOverhead + k.size() * 2;
  }
  return n;
}

namespace {

// The logical bytes of an entry in profiles.db: its document, id and keys (each key also in
// profile_keys with the id).
std::size_t diskBytes(const std::string& id, const std::string& doc,
                      const std::vector<std::string>& keys) {
  std::size_t n = doc.size() + id.size();
  for (const std::string& k : keys) {
    n += k.size() * 2 + id.size();
  }
  return n;
}

}  // namespace

Result<std::unique_ptr<ProfileCache>> ProfileCache::open(const std::filesystem::path& dir) {
  ProfileCacheOptions options;
  options.dir = dir;
  return open(options);
}

Result<std::unique_ptr<ProfileCache>> ProfileCache::open(const ProfileCacheOptions& options) {
  std::unique_ptr<ProfileCache> c(new ProfileCache(options));
  if (auto r = c->openDb(); !r) {
    return r.error();
  }
  // Counts from the index, then the most recently heard profiles into memory.
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(c->db_, "SELECT count(*), total(bytes), total(local) FROM profiles", -1,
                         &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    c->disk_count_ = static_cast<std::size_t>(sqlite3_column_int64(st, 0));
    c->disk_bytes_ = static_cast<std::size_t>(sqlite3_column_double(st, 1));
    c->local_count_ = static_cast<std::size_t>(sqlite3_column_double(st, 2));
  }
  sqlite3_finalize(st);
  st = nullptr;
  const std::string load =
      std::string("SELECT ") + kColumns + " FROM profiles ORDER BY heard_ms DESC";
  std::vector<std::shared_ptr<const Entry>> loaded;
  std::size_t bytes = 0;
  if (sqlite3_prepare_v2(c->db_, load.c_str(), -1, &st, nullptr) == SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) {
      auto e = std::make_shared<Entry>();
      fillEntry(st, *e);
      bytes += memoryBytes(*e);
      if (bytes > options.max_bytes) {
        break;
      }
      loaded.push_back(std::move(e));
    }
  }
  sqlite3_finalize(st);
  std::lock_guard lock(c->mu_);
  for (auto it = loaded.rbegin(); it != loaded.rend(); ++it) {  // the newest ends in front
    c->insertLocked(*it);
  }
  return c;
}

namespace {

// Files written before profiles were bounded hold only (id, doc, heard_ms): add the columns and
// the key index, reading each document once.
Result<void> addBoundColumns(sqlite3* db) {
  sqlite3_stmt* probe = nullptr;
  const bool current =
      sqlite3_prepare_v2(db, "SELECT keys, bytes, refused, local FROM profiles LIMIT 0", -1, &probe,
                         nullptr) == SQLITE_OK;
  sqlite3_finalize(probe);
  if (current) {
    return {};
  }
  // Inside schema::upgrade()'s transaction, which rolls back on failure.
  auto fail = [&] { return makeError("io", std::string("profiles: ") + sqlite3_errmsg(db)); };
  if (sqlite3_exec(db,
                   "ALTER TABLE profiles ADD COLUMN keys TEXT NOT NULL DEFAULT '';"
                   "ALTER TABLE profiles ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;"
                   "ALTER TABLE profiles ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;"
                   "ALTER TABLE profiles ADD COLUMN local INTEGER NOT NULL DEFAULT 0;",
                   nullptr, nullptr, nullptr) != SQLITE_OK) {
    return fail();
  }
  std::vector<std::pair<std::string, std::string>> rows;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT id, doc FROM profiles", -1, &st, nullptr) != SQLITE_OK) {
    return fail();
  }
  while (sqlite3_step(st) == SQLITE_ROW) {
    rows.emplace_back(columnText(st, 0), columnText(st, 1));
  }
  sqlite3_finalize(st);
  sqlite3_stmt* update = nullptr;
  sqlite3_stmt* key = nullptr;
  bool ok =
      sqlite3_prepare_v2(db, "UPDATE profiles SET keys = ?, bytes = ?, refused = ? WHERE id = ?",
                         -1, &update, nullptr) == SQLITE_OK &&
      sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO profile_keys(key, id) VALUES(?, ?)", -1, &key,
                         nullptr) == SQLITE_OK;
  for (const auto& [id, text] : rows) {
    const json doc = json::parse(text, nullptr, false);
    std::vector<std::string> keys;
    if (doc.is_object() && doc.contains("keys") && doc["keys"].is_array()) {
      for (const auto& k : doc["keys"]) {
        if (k.is_string()) {
          keys.push_back(kiosk::canonicalCustomerKey(k.get<std::string>()));
        }
      }
    }
    const std::string joined = joinKeys(keys);
    sqlite3_bind_text(update, 1, joined.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(update, 2, static_cast<int64_t>(diskBytes(id, text, keys)));
    sqlite3_bind_int(update, 3, doc.is_object() ? static_cast<int>(refusedPurposes(doc)) : 0);
    sqlite3_bind_text(update, 4, id.c_str(), -1, SQLITE_TRANSIENT);
    ok = ok && sqlite3_step(update) == SQLITE_DONE;
    sqlite3_reset(update);
    for (const std::string& k : keys) {
      sqlite3_bind_text(key, 1, k.c_str(), -1, SQLITE_TRANSIENT);
      sqlite3_bind_text(key, 2, id.c_str(), -1, SQLITE_TRANSIENT);
      ok = ok && sqlite3_step(key) == SQLITE_DONE;
      sqlite3_reset(key);
    }
  }
  sqlite3_finalize(update);
  sqlite3_finalize(key);
  if (!ok) {
    return fail();
  }
  return {};
}

// Version 0 is every profiles.db made before files carried a version: b60fe88's (id, doc,
// heard_ms) and today's layout (4f1a2ed on), told apart by the columns there.
Result<void> profilesToV1(sqlite3* db) {
  if (auto r = schema::exec(db, kSchema); !r) {
    return r;
  }
  if (auto r = addBoundColumns(db); !r) {
    return r;
  }
  return schema::exec(db, kIndexes);
}

constexpr schema::Migration kProfilesMigrations[] = {
    {1, "bounded cache: keys, bytes, refused, local columns and their indexes", profilesToV1},
};
static_assert(std::size(kProfilesMigrations) == schema::kProfiles &&
              kProfilesMigrations[schema::kProfiles - 1].to == schema::kProfiles);

}  // namespace

Result<void> ProfileCache::openDb() {
  const auto file = options_.dir / "profiles.db";
  auto fail = [&](sqlite3* db) {
    return makeError("io", "profile cache " + file.string() + ": " +
                               (db != nullptr ? sqlite3_errmsg(db) : "cannot open"));
  };
  // Before SQLite opens it for writing: a file a newer omniedge made is refused unchanged.
  if (auto r = schema::refuseNewer(file, schema::kProfiles); !r) {
    return r;
  }
  if (sqlite3_open_v2(file.c_str(), &db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK ||
      // secure_delete: a consent change or an erasure must not leave the old document in
      // free space (profiles are small and rarely rewritten, so zeroing costs little).
      sqlite3_exec(db_,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;",
                   nullptr, nullptr, nullptr) != SQLITE_OK ||
      sqlite3_busy_timeout(db_, 5000) != SQLITE_OK) {
    return fail(db_);
  }
  static const std::string kCreate = std::string(kSchema) + kIndexes;
  if (auto r = schema::upgrade(db_, file, {"profiles.db", kCreate.c_str(), kProfilesMigrations});
      !r) {
    return makeError(r.error().code, "profile cache: " + r.error().message);
  }
  if (sqlite3_open_v2(file.c_str(), &rdb_, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) !=
          SQLITE_OK ||
      sqlite3_busy_timeout(rdb_, 5000) != SQLITE_OK) {
    return fail(rdb_);
  }
  return prepareStatements();
}

Result<void> ProfileCache::prepareStatements() {
  const std::string by_key = std::string("SELECT p.id, p.doc, p.heard_ms, p.keys, p.bytes,") +
                             " p.refused, p.local FROM profile_keys k JOIN profiles p" +
                             " ON p.id = k.id WHERE k.key = ?";
  const std::string by_id = std::string("SELECT ") + kColumns + " FROM profiles WHERE id = ?";
  const std::pair<sqlite3*, std::pair<sqlite3_stmt**, std::string>> statements[] = {
      {db_,
       {&put_, std::string("INSERT OR REPLACE INTO profiles(") + kColumns +
                   ") VALUES(?, ?, ?, ?, ?, ?, ?)"}},
      {db_, {&put_key_, "INSERT OR REPLACE INTO profile_keys(key, id) VALUES(?, ?)"}},
      {db_, {&drop_keys_, "DELETE FROM profile_keys WHERE id = ?"}},
      {db_, {&drop_, "DELETE FROM profiles WHERE id = ?"}},
      {db_, {&w_by_key_, by_key}},
      {db_, {&w_by_id_, by_id}},
      {db_, {&oldest_, "SELECT id FROM profiles ORDER BY heard_ms LIMIT 64"}},
      {rdb_, {&r_by_key_, by_key}},
      {rdb_, {&r_by_id_, by_id}},
  };
  for (const auto& [db, statement] : statements) {
    if (sqlite3_prepare_v3(db, statement.second.c_str(), -1, SQLITE_PREPARE_PERSISTENT,
                           statement.first, nullptr) != SQLITE_OK) {
      return makeError("io", std::string("profile cache: ") + sqlite3_errmsg(db));
    }
  }
  return {};
}

ProfileCache::~ProfileCache() {
  for (sqlite3_stmt* st :
       {put_, put_key_, drop_keys_, drop_, w_by_key_, w_by_id_, oldest_, r_by_key_, r_by_id_}) {
    sqlite3_finalize(st);
  }
  sqlite3_close(rdb_);
  sqlite3_close(db_);
}

// ---- memory (mu_ held) -----------------------------------------------------------------------

void ProfileCache::insertLocked(const std::shared_ptr<const Entry>& e) const {
  eraseLocked(e->id);
  lru_.push_front(e->id);
  by_id_.emplace(e->id, Slot{e, lru_.begin()});
  for (const std::string& key : e->keys) {
    id_by_key_[key] = e->id;
  }
  memory_bytes_ += memoryBytes(*e);
}

void ProfileCache::eraseLocked(const std::string& id) const {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) {
    return;
  }
  const Entry& e = *it->second.entry;
  for (const std::string& key : e.keys) {
    auto k = id_by_key_.find(key);
    if (k != id_by_key_.end() && k->second == id) {
      id_by_key_.erase(k);
    }
  }
  memory_bytes_ -= memoryBytes(e);
  lru_.erase(it->second.lru);
  by_id_.erase(it);
}

void ProfileCache::shrinkLocked() const {
  while (memory_bytes_ > options_.max_bytes && !lru_.empty()) {
    const std::string id = lru_.back();
    eraseLocked(id);
    ++memory_evictions_;
  }
}

void ProfileCache::promote(const std::shared_ptr<const Entry>& e, uint64_t seen_generation) const {
  std::lock_guard lock(mu_);
  ++disk_reads_;
  // A write since the read may have changed or removed it: then the file's answer is given
  // but not kept.
  if (generation_ == seen_generation && by_id_.find(e->id) == by_id_.end()) {
    insertLocked(e);
    shrinkLocked();
  }
}

// ---- reads -------------------------------------------------------------------------------------

std::shared_ptr<const ProfileCache::Entry> ProfileCache::readDisk(sqlite3_stmt* st,
                                                                  const std::string& value) const {
  std::shared_ptr<Entry> e;
  std::lock_guard lock(read_mu_);
  sqlite3_bind_text(st, 1, value.c_str(), static_cast<int>(value.size()), SQLITE_STATIC);
  if (sqlite3_step(st) == SQLITE_ROW) {
    e = std::make_shared<Entry>();
    fillEntry(st, *e);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return e;
}

std::shared_ptr<const ProfileCache::Entry> ProfileCache::find(const std::string& key) const {
  uint64_t generation = 0;
  {
    std::lock_guard lock(mu_);
    auto k = id_by_key_.find(key);
    if (k != id_by_key_.end()) {
      Slot& slot = by_id_.at(k->second);
      lru_.splice(lru_.begin(), lru_, slot.lru);
      return slot.entry;
    }
    if (by_id_.size() >= disk_count_) {
      return nullptr;  // everything the file holds is in memory: no need to ask it
    }
    generation = generation_;
  }
  auto e = readDisk(r_by_key_, key);
  if (e) {
    promote(e, generation);
  }
  return e;
}

std::shared_ptr<const ProfileCache::Entry> ProfileCache::findById(const std::string& id) const {
  uint64_t generation = 0;
  {
    std::lock_guard lock(mu_);
    auto it = by_id_.find(id);
    if (it != by_id_.end()) {
      return it->second.entry;
    }
    if (by_id_.size() >= disk_count_) {
      return nullptr;
    }
    generation = generation_;
  }
  auto e = readDisk(r_by_id_, id);
  if (e) {
    promote(e, generation);
  }
  return e;
}

std::optional<std::string> ProfileCache::profileJson(std::string_view key) const {
  auto e = find(kiosk::canonicalCustomerKey(key));
  if (!e || e->local) {
    return std::nullopt;
  }
  return withFreshness(e->doc, e->heard_ms);
}

std::optional<nlohmann::json> ProfileCache::lookup(std::string_view key) const {
  auto text = profileJson(key);
  if (!text) {
    return std::nullopt;
  }
  return json::parse(*text, nullptr, false);
}

std::optional<std::string> ProfileCache::cartJson(std::string_view key) const {
  auto e = find(kiosk::canonicalCustomerKey(key));
  if (!e) {
    return std::nullopt;
  }
  const json doc = json::parse(e->doc, nullptr, false);
  if (doc.is_object() && doc.contains("cart") && doc["cart"].is_object()) {
    return doc["cart"].dump();
  }
  return json{{"items", json::array()}}.dump();
}

std::size_t ProfileCache::size() const {
  std::lock_guard lock(mu_);
  return disk_count_;
}

ProfileCacheStats ProfileCache::stats() const {
  std::lock_guard lock(mu_);
  ProfileCacheStats s;
  s.in_memory = by_id_.size();
  s.memory_bytes = memory_bytes_;
  s.memory_max_bytes = options_.max_bytes;
  s.memory_evictions = memory_evictions_;
  s.disk_reads = disk_reads_;
  s.on_disk = disk_count_;
  s.disk_bytes = disk_bytes_;
  s.disk_max_bytes = options_.max_disk_bytes;
  s.disk_evictions = disk_evictions_;
  s.local_carts = local_count_;
  return s;
}

std::map<std::string, std::string> ProfileCache::customerFor(std::string_view key) const {
  std::map<std::string, std::string> out;
  auto e = find(kiosk::canonicalCustomerKey(key));
  if (!e || e->local) {
    return out;
  }
  out["profile_id"] = e->id;
  for (const std::string& full : e->keys) {
    if (full.rfind("loyalty:", 0) == 0) {
      out.try_emplace("loyalty_id", full.substr(8));
    } else if (full.rfind("app:", 0) == 0) {
      out.try_emplace("app_user_id", full.substr(4));
    }
  }
  return out;
}

std::shared_ptr<const ProfileCache::Entry> ProfileCache::entryFor(
    const std::map<std::string, std::string>& customer) const {
  static const std::map<std::string, std::string, std::less<>> kPrefix = {
      {"loyalty_id", "loyalty:"},
      {"app_user_id", "app:"},
      {"email_sha256", "email_sha256:"},
      {"phone_sha256", "phone_sha256:"},
      {"beacon", ""}};
  for (const auto& [field, value] : customer) {
    std::shared_ptr<const Entry> e;
    if (field == "profile_id") {
      e = findById(value);
    } else if (auto prefix = kPrefix.find(field); prefix != kPrefix.end()) {
      e = find(kiosk::canonicalCustomerKey(prefix->second + value));
    }
    if (e && !e->local) {
      return e;
    }
  }
  return nullptr;
}

bool ProfileCache::refused(const std::map<std::string, std::string>& customer,
                           ConsentPurpose purpose) const {
  // Every key is asked: should two keys of one event lead to two profiles, a refusal by either
  // wins (privacy first).
  for (const auto& [field, value] : customer) {
    const auto e = entryFor({{field, value}});
    if (e && (e->refused & static_cast<unsigned>(purpose)) != 0) {
      return true;
    }
  }
  return false;
}

std::optional<nlohmann::json> ProfileCache::profileFor(
    const std::map<std::string, std::string>& customer) const {
  const auto e = entryFor(customer);
  if (!e) {
    return std::nullopt;
  }
  auto doc = nlohmann::json::parse(e->doc, nullptr, false);
  if (doc.is_discarded()) {
    return std::nullopt;
  }
  return doc;
}

// ---- writes (write_mu_ held) -----------------------------------------------------------------

struct ProfileCache::Txn {
  std::size_t count = 0;  // what the file holds, as the transaction goes
  std::size_t bytes = 0;
  std::size_t local = 0;
  uint64_t evicted = 0;
  std::set<std::string> gone;  // ids whose copy in memory is stale
};

Result<ProfileCache::Txn> ProfileCache::beginLocked() {
  Txn txn;
  {
    std::lock_guard lock(mu_);
    txn.count = disk_count_;
    txn.bytes = disk_bytes_;
    txn.local = local_count_;
  }
  if (sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return rollbackLocked();
  }
  return txn;
}

void ProfileCache::fillEntry(sqlite3_stmt* st, Entry& e) {
  e.id = columnText(st, 0);
  e.doc = columnText(st, 1);
  e.heard_ms = sqlite3_column_int64(st, 2);
  e.keys = splitKeys(columnText(st, 3));
  e.bytes = static_cast<std::size_t>(sqlite3_column_int64(st, 4));
  e.refused = static_cast<unsigned>(sqlite3_column_int(st, 5));
  e.local = sqlite3_column_int(st, 6) != 0;
}

// On the write connection, which sees the transaction's own changes (memory does not yet).
std::shared_ptr<ProfileCache::Entry> ProfileCache::rowLocked(sqlite3_stmt* st,
                                                             const std::string& value) {
  std::shared_ptr<Entry> e;
  sqlite3_bind_text(st, 1, value.c_str(), static_cast<int>(value.size()), SQLITE_STATIC);
  if (sqlite3_step(st) == SQLITE_ROW) {
    e = std::make_shared<Entry>();
    fillEntry(st, *e);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return e;
}

bool ProfileCache::dropLocked(Txn& txn, const std::string& id) {
  auto row = rowLocked(w_by_id_, id);
  if (!row) {
    return true;
  }
  bool ok = true;
  for (sqlite3_stmt* st : {drop_keys_, drop_}) {
    sqlite3_bind_text(st, 1, id.c_str(), static_cast<int>(id.size()), SQLITE_STATIC);
    ok = ok && sqlite3_step(st) == SQLITE_DONE;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  --txn.count;
  txn.bytes -= std::min(txn.bytes, row->bytes);
  txn.local -= row->local && txn.local > 0 ? 1 : 0;
  txn.gone.insert(id);
  return ok;
}

bool ProfileCache::putLocked(Txn& txn, const Entry& e) {
  const std::string keys = joinKeys(e.keys);
  sqlite3_bind_text(put_, 1, e.id.c_str(), static_cast<int>(e.id.size()), SQLITE_STATIC);
  sqlite3_bind_text(put_, 2, e.doc.c_str(), static_cast<int>(e.doc.size()), SQLITE_STATIC);
  sqlite3_bind_int64(put_, 3, e.heard_ms);
  sqlite3_bind_text(put_, 4, keys.c_str(), static_cast<int>(keys.size()), SQLITE_STATIC);
  sqlite3_bind_int64(put_, 5, static_cast<int64_t>(e.bytes));
  sqlite3_bind_int(put_, 6, static_cast<int>(e.refused));
  sqlite3_bind_int(put_, 7, e.local ? 1 : 0);
  bool ok = sqlite3_step(put_) == SQLITE_DONE;
  sqlite3_reset(put_);
  sqlite3_clear_bindings(put_);
  for (const std::string& key : e.keys) {
    sqlite3_bind_text(put_key_, 1, key.c_str(), static_cast<int>(key.size()), SQLITE_STATIC);
    sqlite3_bind_text(put_key_, 2, e.id.c_str(), static_cast<int>(e.id.size()), SQLITE_STATIC);
    ok = ok && sqlite3_step(put_key_) == SQLITE_DONE;
    sqlite3_reset(put_key_);
    sqlite3_clear_bindings(put_key_);
  }
  ++txn.count;
  txn.bytes += e.bytes;
  txn.local += e.local ? 1 : 0;
  txn.gone.insert(e.id);  // replaced by the new copy in commitLocked
  return ok;
}

// Keeps the file under max_disk_bytes: the profiles heard of least recently go (never those in
// `keep`, written by this transaction).
bool ProfileCache::capLocked(Txn& txn, const std::vector<std::string>& keep) {
  while (txn.bytes > options_.max_disk_bytes) {
    std::vector<std::string> oldest;
    while (sqlite3_step(oldest_) == SQLITE_ROW) {
      oldest.push_back(columnText(oldest_, 0));
    }
    sqlite3_reset(oldest_);
    bool progress = false;
    for (const std::string& id : oldest) {
      if (txn.bytes <= options_.max_disk_bytes) {
        break;
      }
      if (std::find(keep.begin(), keep.end(), id) != keep.end()) {
        continue;
      }
      if (!dropLocked(txn, id)) {
        return false;
      }
      ++txn.evicted;
      progress = true;
    }
    if (!progress) {
      break;  // only what this transaction wrote is left: it stays, over the cap
    }
  }
  return true;
}

Error ProfileCache::rollbackLocked() {
  const std::string err = sqlite3_errmsg(db_);
  sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  return makeError("io", "profile cache: " + err);
}

uint64_t ProfileCache::generation() const {
  std::lock_guard lock(mu_);
  return generation_;
}

// Durable first, then visible.
Result<void> ProfileCache::commitLocked(Txn& txn, std::vector<Entry> fresh) {
  if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return rollbackLocked();
  }
  std::lock_guard lock(mu_);
  for (const std::string& id : txn.gone) {
    eraseLocked(id);
  }
  for (Entry& e : fresh) {
    insertLocked(std::make_shared<const Entry>(std::move(e)));
  }
  ++generation_;
  disk_count_ = txn.count;
  disk_bytes_ = txn.bytes;
  local_count_ = txn.local;
  disk_evictions_ += txn.evicted;
  shrinkLocked();
  return {};
}

Result<ProfileUpdate> ProfileCache::apply(std::string_view payload, int64_t now_ms) {
  std::lock_guard write(write_mu_);
  auto msg = json::parse(payload, nullptr, false);
  if (msg.is_discarded() || !msg.is_object()) {
    return makeError("invalid_json", "an R/profiles message must be a JSON object");
  }
  std::vector<Entry> upserts;
  std::vector<std::string> deletes;
  if (msg.contains("upserts")) {
    if (!msg["upserts"].is_array()) {
      return invalid("upserts", "must be an array");
    }
    for (std::size_t i = 0; i < msg["upserts"].size(); ++i) {
      auto& p = msg["upserts"][i];
      const std::string at = "upserts[" + std::to_string(i) + "]";
      if (!p.is_object() || !p.contains("id") || !p["id"].is_string() ||
          p["id"].get<std::string>().empty()) {
        return invalid(at + ".id", "is required (a non-empty string)");
      }
      if (p["id"].get<std::string>().rfind(kLocalPrefix, 0) == 0) {
        return invalid(at + ".id", "must not start with \"local:\" (kept for kiosk carts)");
      }
      if (!p.contains("keys") || !p["keys"].is_array()) {
        return invalid(at + ".keys", "is required (an array of identity keys)");
      }
      Entry e;
      e.id = p["id"].get<std::string>();
      for (const auto& k : p["keys"]) {
        if (!k.is_string() || k.get<std::string>().find(':') == std::string::npos) {
          return invalid(at + ".keys", "must hold keys like \"loyalty:ID\"");
        }
        std::string key = kiosk::canonicalCustomerKey(k.get<std::string>());
        if (std::find(e.keys.begin(), e.keys.end(), key) == e.keys.end()) {
          e.keys.push_back(std::move(key));
        }
      }
      p.erase("freshness");  // ours to say
      e.doc = p.dump(-1, ' ', false, json::error_handler_t::replace);
      if (e.doc.size() > kMaxProfileBytes) {
        return invalid(at, "is larger than " + std::to_string(kMaxProfileBytes) + " bytes");
      }
      e.refused = refusedPurposes(p);
      e.heard_ms = now_ms;
      e.bytes = diskBytes(e.id, e.doc, e.keys);
      upserts.push_back(std::move(e));
    }
  }
  if (msg.contains("deletes")) {
    if (!msg["deletes"].is_array()) {
      return invalid("deletes", "must be an array of keys");
    }
    for (const auto& k : msg["deletes"]) {
      if (!k.is_string()) {
        return invalid("deletes", "must be an array of keys");
      }
      deletes.push_back(kiosk::canonicalCustomerKey(k.get<std::string>()));
    }
  }

  auto begun = beginLocked();
  if (!begun) {
    return begun.error();
  }
  Txn& txn = *begun;
  std::vector<std::string> written;
  std::map<std::string, std::vector<std::string>> stolen;  // id -> keys another profile took
  std::vector<ConsentRefusal> refusals;
  for (const Entry& u : upserts) {
    const auto before = rowLocked(w_by_id_, u.id);
    if (const unsigned added = u.refused & ~(before ? before->refused : 0u); added != 0) {
      ConsentRefusal r{u.id, u.keys, added};
      if (before) {
        for (const std::string& k : before->keys) {
          if (std::find(r.keys.begin(), r.keys.end(), k) == r.keys.end()) {
            r.keys.push_back(k);
          }
        }
      }
      refusals.push_back(std::move(r));
    }
    for (const std::string& key : u.keys) {
      if (auto holder = rowLocked(w_by_key_, key); holder && holder->id != u.id) {
        stolen[holder->id].push_back(key);
      }
    }
    if (!dropLocked(txn, u.id) || !putLocked(txn, u)) {
      return rollbackLocked();
    }
    written.push_back(u.id);
  }
  // A profile that lost keys keeps the others; one left without keys, or a kiosk cart whose
  // customer the centre now sends, goes (the centre's profile carries the cart from then on:
  // it received every kiosk.cart_add).
  for (const auto& [id, keys] : stolen) {
    if (std::find(written.begin(), written.end(), id) != written.end()) {
      continue;
    }
    auto row = rowLocked(w_by_id_, id);
    if (!row || !dropLocked(txn, id)) {
      if (row) {
        return rollbackLocked();
      }
      continue;
    }
    // Through a reference: clang before 16 cannot capture a structured binding (tools/fuzz).
    const std::vector<std::string>& taken = keys;
    std::erase_if(row->keys, [&](const std::string& k) {
      return std::find(taken.begin(), taken.end(), k) != taken.end();
    });
    if (row->local || row->keys.empty()) {
      continue;
    }
    row->bytes = diskBytes(row->id, row->doc, row->keys);
    if (!putLocked(txn, *row)) {
      return rollbackLocked();
    }
  }
  int deleted = 0;
  for (const std::string& key : deletes) {
    if (auto row = rowLocked(w_by_key_, key)) {
      if (!dropLocked(txn, row->id)) {
        return rollbackLocked();
      }
      std::erase(written, row->id);
      ++deleted;
    }
  }
  if (!capLocked(txn, written)) {
    return rollbackLocked();
  }
  const int upserted = static_cast<int>(upserts.size());
  std::vector<Entry> fresh;
  for (Entry& u : upserts) {
    if (std::find(written.begin(), written.end(), u.id) != written.end()) {
      fresh.push_back(std::move(u));
    }
  }
  if (auto r = commitLocked(txn, std::move(fresh)); !r) {
    return r.error();
  }
  return ProfileUpdate{upserted, deleted, std::move(refusals)};
}

Result<ProfileForget> ProfileCache::forget(const std::vector<std::string>& keys,
                                           const std::vector<std::string>& ids) {
  std::lock_guard write(write_mu_);
  auto begun = beginLocked();
  if (!begun) {
    return begun.error();
  }
  Txn& txn = *begun;
  std::set<std::string> victims;
  for (const std::string& key : keys) {
    if (auto row = rowLocked(w_by_key_, kiosk::canonicalCustomerKey(key))) {
      victims.insert(row->id);
    }
  }
  for (const std::string& id : ids) {
    if (rowLocked(w_by_id_, id)) {
      victims.insert(id);
    }
  }
  ProfileForget out;
  for (const std::string& id : victims) {
    auto row = rowLocked(w_by_id_, id);
    if (!row) {
      continue;
    }
    if (!dropLocked(txn, id)) {
      return rollbackLocked();
    }
    ++out.profiles;
    out.keys += static_cast<int64_t>(row->keys.size());
  }
  if (auto r = commitLocked(txn, {}); !r) {
    return r.error();
  }
  // secure_delete zeroed the rows; free pages from before it was on (an older file) and the
  // WAL's copies of the old pages go too.
  sqlite3_stmt* st = nullptr;
  int64_t free_pages = 0;
  if (sqlite3_prepare_v2(db_, "PRAGMA freelist_count", -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    free_pages = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  if (out.profiles > 0 && free_pages > 0) {
    (void)sqlite3_exec(db_, "VACUUM", nullptr, nullptr, nullptr);
  }
  // Our own reader is held off meanwhile, so only another process can keep the WAL busy.
  std::lock_guard reading(read_mu_);
  for (int attempt = 0; attempt < 3 && !out.scrubbed; ++attempt) {
    out.scrubbed = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr,
                                             nullptr) == SQLITE_OK;
  }
  return out;
}

Result<nlohmann::json> ProfileCache::addCartItem(std::string_view key, const nlohmann::json& item,
                                                 int64_t now_ms) {
  std::lock_guard write(write_mu_);
  const std::string canonical = kiosk::canonicalCustomerKey(key);
  auto begun = beginLocked();
  if (!begun) {
    return begun.error();
  }
  Txn& txn = *begun;
  Entry next;
  json doc;
  if (auto current = rowLocked(w_by_key_, canonical)) {
    next = *current;
    doc = json::parse(current->doc, nullptr, false);
    if (!doc.is_object()) {
      doc = json::object();
    }
  } else {
    // A customer the centre has not sent (yet): the cart is kept under the key alone.
    next.id = std::string(kLocalPrefix) + canonical;
    next.keys = {canonical};
    next.local = true;
    next.heard_ms = now_ms;
    doc = {{"id", next.id}, {"keys", {canonical}}, {"local", true}};
  }
  auto& cart = doc["cart"];
  if (!cart.is_object()) {
    cart = json::object();
  }
  if (!cart.contains("items") || !cart["items"].is_array()) {
    cart["items"] = json::array();
  }
  bool merged = false;
  for (auto& line : cart["items"]) {
    if (line.is_object() && line.value("sku", "") == item.value("sku", "") &&
        line.value("channel", "") == item.value("channel", "") && line.contains("qty") &&
        line["qty"].is_number_integer()) {
      line["qty"] = line["qty"].get<int64_t>() + item.value("qty", int64_t{1});
      merged = true;
      break;
    }
  }
  if (!merged) {
    cart["items"].push_back(item);
  }
  cart["updated_at"] = formatRfc3339Ms(now_ms);
  json answer = cart;
  next.doc = doc.dump(-1, ' ', false, json::error_handler_t::replace);
  next.bytes = diskBytes(next.id, next.doc, next.keys);
  if (!dropLocked(txn, next.id) || !putLocked(txn, next) || !capLocked(txn, {next.id})) {
    return rollbackLocked();
  }
  std::vector<Entry> fresh;
  fresh.push_back(std::move(next));
  if (auto r = commitLocked(txn, std::move(fresh)); !r) {
    return r.error();
  }
  return answer;
}

}  // namespace omniedge::store
