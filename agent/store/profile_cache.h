// The local profile cache: the customer profiles the centre pushes on R/profiles, kept in memory
// for the kiosk API and identity resolution, and in data.dir/profiles.db so that they are there
// at once after a restart, also with the uplink down.
#pragma once

#include <sqlite3.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "agent/api/identity_resolver.h"
#include "agent/api/result.h"

namespace omniedge::store {

struct ProfileUpdate {
  int upserts = 0;
  int deletes = 0;
};

class ProfileCache final : public IdentityResolver {
 public:
  /// Opens (creating) dir/profiles.db and loads every profile. Fails with "io".
  static Result<std::unique_ptr<ProfileCache>> open(const std::filesystem::path& dir);
  ~ProfileCache() override;
  ProfileCache(const ProfileCache&) = delete;
  ProfileCache& operator=(const ProfileCache&) = delete;

  /// Applies one R/profiles message, `{"upserts": [profile…], "deletes": ["key"…],
  /// "cursor": "…"}`, all or nothing. A profile needs an `id` and a `keys` array of
  /// strings. Fails with "invalid" naming the field ("upserts[2].keys"). Thread: one writer
  /// (the sync thread); concurrent readers are fine.
  Result<ProfileUpdate> apply(std::string_view payload, int64_t now_ms);

  /// The profile known under `key`, with `freshness` (when the cache last heard of it).
  /// Thread: any.
  std::optional<nlohmann::json> lookup(std::string_view key) const;

  std::size_t size() const;

  /// Adds `item` (a JSON object with sku, qty, ...) to the cart of the profile known as `key`:
  /// the same sku from the same channel adds to its qty. Durable before it is visible. Returns
  /// the updated cart; fails "not_found" for an unknown key, "io". Thread: any (serialised).
  Result<nlohmann::json> addCartItem(std::string_view key, const nlohmann::json& item,
                                     int64_t now_ms);

  // IdentityResolver
  std::map<std::string, std::string> customerFor(std::string_view key) const override;
  bool trackingRefused(const std::map<std::string, std::string>& customer) const override;

 private:
  struct Profile {
    nlohmann::json doc;
    int64_t heard_ms = 0;
  };
  ProfileCache() = default;
  void indexLocked(const std::string& id, const std::shared_ptr<const Profile>& p);
  void unindexLocked(const std::string& id);

  Result<void> persist(const std::string& id, const Profile& p);

  std::mutex write_mu_;  // one writer at a time: the sync thread's updates, kiosk cart adds
  sqlite3* db_ = nullptr;
  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const Profile>> by_id_;  // guarded by mu_
  std::unordered_map<std::string, std::string> id_by_key_;                 // guarded by mu_
};

}  // namespace omniedge::store
