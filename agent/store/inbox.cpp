#include "agent/store/inbox.h"

#include <algorithm>
#include <utility>

#include "agent/store/schema.h"
#include "agent/store/wal_vfs.h"

namespace omniedge::store {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS inbound(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  topic TEXT NOT NULL,
  payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS commands(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  done INTEGER NOT NULL,
  result TEXT NOT NULL,
  at_ms INTEGER NOT NULL,
  reported INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS commands_age ON commands(at_ms);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
)sql";

// Version 0 is every inbox.db made before files carried a version: c9d6f2b's commands had no
// `reported` (an answer was sent once, at once); 9cbd455 on keep an answer until it is
// acknowledged. Answers of the older journal count as not acknowledged: sent again once (the
// centre matches answers by command id), instead of being lost.
Result<void> inboxToV1(sqlite3* db) {
  if (auto r = schema::exec(db, kSchema); !r) {
    return r;
  }
  if (!schema::hasColumn(db, "commands", "reported")) {
    return schema::exec(db, "ALTER TABLE commands ADD COLUMN reported INTEGER NOT NULL DEFAULT 0");
  }
  return {};
}

constexpr schema::Migration kInboxMigrations[] = {
    {1, "commands.reported", inboxToV1},
};
static_assert(std::size(kInboxMigrations) == schema::kInbox &&
              kInboxMigrations[schema::kInbox - 1].to == schema::kInbox);

std::string sqliteError(sqlite3* db, const std::string& what) {
  return "inbox " + what + ": " + (db != nullptr ? sqlite3_errmsg(db) : "out of memory");
}

// A statement prepared once; every use resets it (Use's destructor), so no read transaction is
// left open and no binding outlives its call.
class Stmt {
 public:
  Stmt() = default;
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool prepare(sqlite3* db, const char* sql) {
    return sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st_, nullptr) == SQLITE_OK;
  }
  sqlite3_stmt* get() const { return st_; }

 private:
  sqlite3_stmt* st_ = nullptr;
};

class Use {
 public:
  explicit Use(Stmt& s) : st_(s.get()) {}
  ~Use() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;
  Use& bind(int i, int64_t v) {
    sqlite3_bind_int64(st_, i, v);
    return *this;
  }
  Use& bind(int i, std::string_view v) {
    sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
    return *this;
  }
  Use& blob(int i, std::string_view v) {
    sqlite3_bind_blob(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
    return *this;
  }
  int step() { return sqlite3_step(st_); }
  bool done() {
    const int rc = step();
    return rc == SQLITE_DONE || rc == SQLITE_ROW;
  }
  int64_t integer(int i) const { return sqlite3_column_int64(st_, i); }
  std::string text(int i) const {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(st_, i));
    return p == nullptr ? std::string()
                        : std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(st_, i)));
  }

 private:
  sqlite3_stmt* st_;
};

}  // namespace

struct InboxStore::Statements {
  Stmt put, pending, remove, bytes_of, find_command, start_command, finish_command, forget_old,
      forget_excess, count_commands, get_meta, set_meta, delete_meta, report_command, unreported;
};

InboxStore::InboxStore(InboxOptions options)
    : options_(std::move(options)), st_(std::make_unique<Statements>()) {}

InboxStore::~InboxStore() {
  st_.reset();  // statements before the connection
  sqlite3_close(db_);
}

Result<void> InboxStore::exec(const char* sql) {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return makeError("io", sqliteError(db_, (options_.dir / "inbox.db").string()));
  }
  return {};
}

Result<std::unique_ptr<InboxStore>> InboxStore::open(const InboxOptions& options) {
  std::unique_ptr<InboxStore> s(new InboxStore(options));
  const auto file = options.dir / "inbox.db";
  // Before SQLite opens it for writing: a file a newer omniedge made is refused unchanged.
  if (auto r = schema::refuseNewer(file, schema::kInbox); !r) {
    return r.error();
  }
  // Through the buffer's WAL VFS (wal_vfs.h): a message's two small commits (stored, then
  // removed once handled) go to the disk's sectors instead of rewriting 4 KiB pages. It relies
  // on synchronous=FULL from the first frame written, so that comes first.
  if (sqlite3_open_v2(file.c_str(), &s->db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      detail::coalescingWalVfs()) != SQLITE_OK) {
    return makeError("io", sqliteError(s->db_, "open " + file.string()));
  }
  sqlite3_busy_timeout(s->db_, 5000);
  if (auto r = s->exec("PRAGMA synchronous=FULL; PRAGMA journal_mode=WAL;"); !r) {
    return r.error();
  }
  if (auto r = schema::upgrade(s->db_, file, {"inbox.db", kSchema, kInboxMigrations}); !r) {
    return makeError(r.error().code, "inbox: " + r.error().message);
  }
  auto& st = *s->st_;
  const std::pair<Stmt*, const char*> statements[] = {
      {&st.put, "INSERT INTO inbound(topic, payload) VALUES(?, ?)"},
      {&st.pending, "SELECT id, topic, payload FROM inbound ORDER BY id LIMIT ?"},
      {&st.remove, "DELETE FROM inbound WHERE id = ? RETURNING length(topic) + length(payload)"},
      {&st.bytes_of,
       "SELECT count(*), coalesce(sum(length(topic) + length(payload)), 0) "
       "FROM inbound"},
      {&st.find_command, "SELECT name, done, result, at_ms FROM commands WHERE id = ?"},
      {&st.start_command,
       "INSERT OR IGNORE INTO commands(id, name, done, result, at_ms) VALUES(?, ?, 0, '', ?)"},
      {&st.finish_command, "UPDATE commands SET done = 1, result = ? WHERE id = ?"},
      {&st.forget_old, "DELETE FROM commands WHERE at_ms < ?"},
      {&st.forget_excess,
       "DELETE FROM commands WHERE id IN (SELECT id FROM commands ORDER BY at_ms, id "
       "LIMIT max(0, (SELECT count(*) FROM commands) - ?))"},
      {&st.count_commands, "SELECT count(*) FROM commands"},
      {&st.get_meta, "SELECT value FROM meta WHERE key = ?"},
      {&st.set_meta, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)"},
      {&st.delete_meta, "DELETE FROM meta WHERE key = ?"},
      {&st.report_command, "UPDATE commands SET reported = 1 WHERE id = ?"},
      {&st.unreported,
       "SELECT id, name, result, at_ms FROM commands WHERE done = 1 AND reported = 0 "
       "ORDER BY at_ms, id LIMIT ?"},
  };
  for (const auto& [stmt, sql] : statements) {
    if (!stmt->prepare(s->db_, sql)) {
      return makeError("io", sqliteError(s->db_, std::string("prepare '") + sql + "'"));
    }
  }
  {
    Use q(st.bytes_of);
    if (q.step() == SQLITE_ROW) {
      s->stats_.pending = static_cast<std::size_t>(q.integer(0));
      s->stats_.pending_bytes = q.integer(1);
    }
  }
  {
    Use q(st.count_commands);
    if (q.step() == SQLITE_ROW) {
      s->stats_.commands = static_cast<std::size_t>(q.integer(0));
    }
  }
  return s;
}

Result<int64_t> InboxStore::put(std::string_view topic, std::string_view payload) {
  std::lock_guard lock(mu_);
  const auto bytes = static_cast<int64_t>(topic.size() + payload.size());
  if (stats_.pending_bytes + bytes > options_.max_bytes) {
    ++stats_.refused;
    return makeError("full", "the inbound queue holds " + std::to_string(stats_.pending_bytes) +
                                 " bytes; a message of " + std::to_string(bytes) +
                                 " bytes would pass sync.inbound_max_bytes (" +
                                 std::to_string(options_.max_bytes) + ")");
  }
  Use q(st_->put);
  if (!q.bind(1, topic).blob(2, payload).done()) {
    ++stats_.refused;
    return makeError("io", sqliteError(db_, "put"));
  }
  ++stats_.pending;
  ++stats_.stored;
  stats_.pending_bytes += bytes;
  return static_cast<int64_t>(sqlite3_last_insert_rowid(db_));
}

Result<std::vector<InboundMessage>> InboxStore::pending(std::size_t max) {
  std::lock_guard lock(mu_);
  std::vector<InboundMessage> out;
  Use q(st_->pending);
  q.bind(1, static_cast<int64_t>(max));
  int rc = 0;
  while ((rc = q.step()) == SQLITE_ROW) {
    out.push_back(InboundMessage{q.integer(0), q.text(1), q.text(2)});
  }
  if (rc != SQLITE_DONE) {
    return makeError("io", sqliteError(db_, "read"));
  }
  return out;
}

Result<void> InboxStore::remove(int64_t id) {
  std::lock_guard lock(mu_);
  Use q(st_->remove);
  q.bind(1, id);
  const int rc = q.step();
  if (rc == SQLITE_ROW) {
    stats_.pending_bytes -= q.integer(0);
    --stats_.pending;
    if (q.step() != SQLITE_DONE) {
      return makeError("io", sqliteError(db_, "remove"));
    }
    return {};
  }
  if (rc != SQLITE_DONE) {
    return makeError("io", sqliteError(db_, "remove"));
  }
  return {};  // already gone
}

Result<std::optional<CommandRecord>> InboxStore::findCommand(const std::string& id) {
  std::lock_guard lock(mu_);
  Use q(st_->find_command);
  q.bind(1, id);
  const int rc = q.step();
  if (rc == SQLITE_DONE) {
    return std::optional<CommandRecord>();
  }
  if (rc != SQLITE_ROW) {
    return makeError("io", sqliteError(db_, "find command"));
  }
  return std::optional<CommandRecord>(
      CommandRecord{id, q.text(0), q.integer(1) != 0, q.text(2), q.integer(3)});
}

Result<void> InboxStore::commandStarted(const std::string& id, const std::string& name,
                                        int64_t now_ms) {
  std::lock_guard lock(mu_);
  if (!Use(st_->forget_old).bind(1, now_ms - options_.command_ttl_ms).done()) {
    return makeError("io", sqliteError(db_, "forget old commands"));
  }
  // One below the bound: the record added next makes it max_commands.
  const auto keep = static_cast<int64_t>(options_.max_commands) - 1;
  if (!Use(st_->forget_excess).bind(1, std::max<int64_t>(0, keep)).done()) {
    return makeError("io", sqliteError(db_, "forget old commands"));
  }
  if (!Use(st_->start_command).bind(1, id).bind(2, name).bind(3, now_ms).done()) {
    return makeError("io", sqliteError(db_, "record command"));
  }
  Use q(st_->count_commands);
  if (q.step() == SQLITE_ROW) {
    stats_.commands = static_cast<std::size_t>(q.integer(0));
  }
  return {};
}

Result<void> InboxStore::commandFinished(const std::string& id, const std::string& result_json) {
  std::lock_guard lock(mu_);
  if (!Use(st_->finish_command).bind(1, result_json).bind(2, id).done()) {
    return makeError("io", sqliteError(db_, "record command result"));
  }
  return {};
}

Result<void> InboxStore::commandReported(const std::string& id) {
  std::lock_guard lock(mu_);
  if (!Use(st_->report_command).bind(1, id).done()) {
    return makeError("io", sqliteError(db_, "record a command answer sent"));
  }
  return {};
}

Result<std::vector<CommandRecord>> InboxStore::unreportedCommands(std::size_t max) {
  std::lock_guard lock(mu_);
  std::vector<CommandRecord> out;
  Use q(st_->unreported);
  q.bind(1, static_cast<int64_t>(max));
  int rc = 0;
  while ((rc = q.step()) == SQLITE_ROW) {
    out.push_back(CommandRecord{q.text(0), q.text(1), true, q.text(2), q.integer(3)});
  }
  if (rc != SQLITE_DONE) {
    return makeError("io", sqliteError(db_, "read unsent answers"));
  }
  return out;
}

Result<std::string> InboxStore::meta(const std::string& key) {
  std::lock_guard lock(mu_);
  Use q(st_->get_meta);
  q.bind(1, key);
  const int rc = q.step();
  if (rc == SQLITE_ROW) {
    return q.text(0);
  }
  if (rc != SQLITE_DONE) {
    return makeError("io", sqliteError(db_, "read " + key));
  }
  return std::string();
}

Result<void> InboxStore::setMeta(const std::string& key, const std::string& value) {
  std::lock_guard lock(mu_);
  const bool ok = value.empty() ? Use(st_->delete_meta).bind(1, key).done()
                                : Use(st_->set_meta).bind(1, key).bind(2, value).done();
  if (!ok) {
    return makeError("io", sqliteError(db_, "write " + key));
  }
  return {};
}

InboxStats InboxStore::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace omniedge::store
