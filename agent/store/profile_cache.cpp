#include "agent/store/profile_cache.h"

#include <mutex>

#include "agent/api/time.h"

namespace omniedge::store {
namespace {

Error invalid(const std::string& field, const std::string& why) {
  return makeError("invalid", field + " " + why, field);
}

}  // namespace

Result<std::unique_ptr<ProfileCache>> ProfileCache::open(const std::filesystem::path& dir) {
  std::unique_ptr<ProfileCache> c(new ProfileCache());
  const auto file = dir / "profiles.db";
  if (sqlite3_open_v2(file.c_str(), &c->db_,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK ||
      sqlite3_exec(c->db_,
                   "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                   "CREATE TABLE IF NOT EXISTS profiles(id TEXT PRIMARY KEY, doc TEXT NOT NULL,"
                   " heard_ms INTEGER NOT NULL) WITHOUT ROWID;",
                   nullptr, nullptr, nullptr) != SQLITE_OK) {
    return makeError("io", "profile cache " + file.string() + ": " + sqlite3_errmsg(c->db_));
  }
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(c->db_, "SELECT id, doc, heard_ms FROM profiles", -1, &st, nullptr) ==
      SQLITE_OK) {
    std::unique_lock lock(c->mu_);
    while (sqlite3_step(st) == SQLITE_ROW) {
      auto doc = nlohmann::json::parse(reinterpret_cast<const char*>(sqlite3_column_text(st, 1)),
                                       nullptr, false);
      if (doc.is_discarded()) {
        continue;
      }
      auto p = std::make_shared<Profile>(Profile{std::move(doc), sqlite3_column_int64(st, 2)});
      c->indexLocked(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), p);
    }
  }
  sqlite3_finalize(st);
  return c;
}

ProfileCache::~ProfileCache() { sqlite3_close(db_); }

void ProfileCache::indexLocked(const std::string& id, const std::shared_ptr<const Profile>& p) {
  unindexLocked(id);
  by_id_[id] = p;
  for (const auto& key : p->doc["keys"]) {
    id_by_key_[key.get<std::string>()] = id;
  }
}

void ProfileCache::unindexLocked(const std::string& id) {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) {
    return;
  }
  for (const auto& key : it->second->doc["keys"]) {
    auto k = id_by_key_.find(key.get<std::string>());
    if (k != id_by_key_.end() && k->second == id) {
      id_by_key_.erase(k);
    }
  }
  by_id_.erase(it);
}

Result<ProfileUpdate> ProfileCache::apply(std::string_view payload, int64_t now_ms) {
  std::lock_guard write(write_mu_);
  auto msg = nlohmann::json::parse(payload, nullptr, false);
  if (msg.is_discarded() || !msg.is_object()) {
    return makeError("invalid_json", "an R/profiles message must be a JSON object");
  }
  std::vector<std::pair<std::string, std::shared_ptr<const Profile>>> upserts;
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
      if (!p.contains("keys") || !p["keys"].is_array()) {
        return invalid(at + ".keys", "is required (an array of identity keys)");
      }
      for (const auto& k : p["keys"]) {
        if (!k.is_string() || k.get<std::string>().find(':') == std::string::npos) {
          return invalid(at + ".keys", "must hold keys like \"loyalty:ID\"");
        }
      }
      p.erase("freshness");  // ours to say
      upserts.emplace_back(p["id"].get<std::string>(),
                           std::make_shared<Profile>(Profile{p, now_ms}));
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
      deletes.push_back(k.get<std::string>());
    }
  }

  // Durable first, then visible.
  sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr);
  sqlite3_stmt* put = nullptr;
  sqlite3_stmt* del = nullptr;
  sqlite3_prepare_v2(db_, "INSERT OR REPLACE INTO profiles(id, doc, heard_ms) VALUES(?,?,?)", -1,
                     &put, nullptr);
  sqlite3_prepare_v2(db_, "DELETE FROM profiles WHERE id = ?", -1, &del, nullptr);
  bool ok = put != nullptr && del != nullptr;
  for (const auto& [id, p] : upserts) {
    const std::string doc = p->doc.dump();
    sqlite3_bind_text(put, 1, id.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(put, 2, doc.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(put, 3, now_ms);
    ok = ok && sqlite3_step(put) == SQLITE_DONE;
    sqlite3_reset(put);
  }
  std::vector<std::string> deleted_ids;
  {
    std::shared_lock lock(mu_);
    for (const auto& key : deletes) {
      auto it = id_by_key_.find(key);
      if (it != id_by_key_.end()) {
        deleted_ids.push_back(it->second);
      }
    }
  }
  for (const auto& id : deleted_ids) {
    sqlite3_bind_text(del, 1, id.c_str(), -1, SQLITE_TRANSIENT);
    ok = ok && sqlite3_step(del) == SQLITE_DONE;
    sqlite3_reset(del);
  }
  sqlite3_finalize(put);
  sqlite3_finalize(del);
  if (!ok || sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
    const std::string err = sqlite3_errmsg(db_);
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return makeError("io", "profile cache: " + err);
  }
  std::unique_lock lock(mu_);
  for (const auto& [id, p] : upserts) {
    indexLocked(id, p);
  }
  for (const auto& id : deleted_ids) {
    unindexLocked(id);
  }
  return ProfileUpdate{static_cast<int>(upserts.size()), static_cast<int>(deleted_ids.size())};
}

std::optional<nlohmann::json> ProfileCache::lookup(std::string_view key) const {
  std::shared_lock lock(mu_);
  auto k = id_by_key_.find(std::string(key));
  if (k == id_by_key_.end()) {
    return std::nullopt;
  }
  const auto& p = by_id_.at(k->second);
  nlohmann::json doc = p->doc;
  doc["freshness"] = formatRfc3339Ms(p->heard_ms);
  return doc;
}

Result<void> ProfileCache::persist(const std::string& id, const Profile& p) {
  sqlite3_stmt* put = nullptr;
  const std::string doc = p.doc.dump();
  bool ok =
      sqlite3_prepare_v2(db_, "INSERT OR REPLACE INTO profiles(id, doc, heard_ms) VALUES(?,?,?)",
                         -1, &put, nullptr) == SQLITE_OK;
  if (ok) {
    sqlite3_bind_text(put, 1, id.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(put, 2, doc.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(put, 3, p.heard_ms);
    ok = sqlite3_step(put) == SQLITE_DONE;
  }
  sqlite3_finalize(put);
  if (!ok) {
    return makeError("io", std::string("profile cache: ") + sqlite3_errmsg(db_));
  }
  return {};
}

Result<nlohmann::json> ProfileCache::addCartItem(std::string_view key, const nlohmann::json& item,
                                                 int64_t now_ms) {
  std::lock_guard write(write_mu_);
  std::string id;
  std::shared_ptr<const Profile> current;
  {
    std::shared_lock lock(mu_);
    auto k = id_by_key_.find(std::string(key));
    if (k == id_by_key_.end()) {
      return makeError("not_found", "no profile is cached for " + std::string(key));
    }
    id = k->second;
    current = by_id_.at(id);
  }
  auto next = std::make_shared<Profile>(*current);
  auto& cart = next->doc["cart"];
  if (!cart.is_object()) {
    cart = nlohmann::json::object();
  }
  if (!cart.contains("items") || !cart["items"].is_array()) {
    cart["items"] = nlohmann::json::array();
  }
  bool merged = false;
  for (auto& line : cart["items"]) {
    if (line.is_object() && line.value("sku", "") == item.value("sku", "") &&
        line.value("channel", "") == item.value("channel", "") && line["qty"].is_number_integer()) {
      line["qty"] = line["qty"].get<int64_t>() + item.value("qty", int64_t{1});
      merged = true;
      break;
    }
  }
  if (!merged) {
    cart["items"].push_back(item);
  }
  cart["updated_at"] = formatRfc3339Ms(now_ms);
  if (auto r = persist(id, *next); !r) {
    return r.error();
  }
  std::unique_lock lock(mu_);
  indexLocked(id, next);
  return cart;
}

std::size_t ProfileCache::size() const {
  std::shared_lock lock(mu_);
  return by_id_.size();
}

std::map<std::string, std::string> ProfileCache::customerFor(std::string_view key) const {
  std::shared_lock lock(mu_);
  std::map<std::string, std::string> out;
  auto k = id_by_key_.find(std::string(key));
  if (k == id_by_key_.end()) {
    return out;
  }
  const auto& p = by_id_.at(k->second);
  out["profile_id"] = k->second;
  for (const auto& key_json : p->doc["keys"]) {
    const std::string full = key_json.get<std::string>();
    if (full.rfind("loyalty:", 0) == 0) {
      out.try_emplace("loyalty_id", full.substr(8));
    } else if (full.rfind("app:", 0) == 0) {
      out.try_emplace("app_user_id", full.substr(4));
    }
  }
  return out;
}

bool ProfileCache::trackingRefused(const std::map<std::string, std::string>& customer) const {
  static const std::map<std::string, std::string> kPrefix = {{"loyalty_id", "loyalty:"},
                                                             {"app_user_id", "app:"},
                                                             {"email_sha256", "email_sha256:"},
                                                             {"phone_sha256", "phone_sha256:"},
                                                             {"beacon", ""}};
  std::shared_lock lock(mu_);
  auto refused = [](const Profile& p) {
    const auto& doc = p.doc;
    return doc.contains("consent") && doc["consent"].is_object() &&
           doc["consent"].contains("tracking") && doc["consent"]["tracking"] == false;
  };
  for (const auto& [field, value] : customer) {
    if (field == "profile_id") {
      auto it = by_id_.find(value);
      if (it != by_id_.end() && refused(*it->second)) {
        return true;
      }
      continue;
    }
    auto prefix = kPrefix.find(field);
    if (prefix == kPrefix.end()) {
      continue;
    }
    auto k = id_by_key_.find(prefix->second + value);
    if (k != id_by_key_.end() && refused(*by_id_.at(k->second))) {
      return true;
    }
  }
  return false;
}

}  // namespace omniedge::store
