// The local profile cache: the customer profiles the centre pushes on R/profiles, kept in
// data.dir/profiles.db so that they are there at once after a restart, also with the uplink
// down, and the most recently used of them in memory for the kiosk API and identity resolution.
// Both are bounded by bytes: memory by profiles.max_bytes (least recently used out first; an
// evicted profile still answers from the file), the file by profiles.max_disk_bytes (the
// profiles the centre has not mentioned for the longest go first; it sends them again on a
// resync).
#pragma once

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agent/api/identity_resolver.h"
#include "agent/api/result.h"

namespace omniedge::store {

/// A profile whose consent refuses more purposes than before (or a new profile that refuses
/// some): what is already buffered of that customer must follow (agent/omni/privacy.h).
struct ConsentRefusal {
  std::string id;
  std::vector<std::string> keys;  // canonical; the profile's keys before and after the update
  unsigned added = 0;             // ConsentPurpose bits refused now and not before
};

struct ProfileUpdate {
  int upserts = 0;
  int deletes = 0;
  std::vector<ConsentRefusal> refusals;
};

/// What ProfileCache::forget() removed.
struct ProfileForget {
  int64_t profiles = 0;   // profiles (and kiosk carts) deleted
  int64_t keys = 0;       // their keys
  bool scrubbed = false;  // profiles.db-wal emptied (checkpoint TRUNCATE) afterwards
};

struct ProfileCacheOptions {
  std::filesystem::path dir;                           // profiles.db goes here
  std::size_t max_bytes = std::size_t{4} << 20;        // in memory
  std::size_t max_disk_bytes = std::size_t{64} << 20;  // in profiles.db (logical bytes)
};

/// For status. Bytes are logical: a profile's JSON, its id and keys (the memory figure adds a
/// fixed estimate of the index overhead per profile and key).
struct ProfileCacheStats {
  std::size_t in_memory = 0;
  std::size_t memory_bytes = 0;
  std::size_t memory_max_bytes = 0;
  uint64_t memory_evictions = 0;  // since start: least recently used, dropped from memory
  uint64_t disk_reads = 0;        // lookups answered from profiles.db (not in memory)
  std::size_t on_disk = 0;        // every profile (and kiosk cart) the agent knows
  std::size_t disk_bytes = 0;
  std::size_t disk_max_bytes = 0;
  uint64_t disk_evictions = 0;  // since start: dropped from profiles.db to stay under its cap
  std::size_t local_carts = 0;  // carts started at a kiosk for customers the centre has not sent
};

class ProfileCache final : public IdentityResolver {
 public:
  /// Opens (creating, or upgrading an older layout of) options.dir/profiles.db and loads the
  /// most recently heard profiles into memory, up to max_bytes. Fails with "io".
  /// Thread: the owner's; reads at most max_bytes of profiles.
  static Result<std::unique_ptr<ProfileCache>> open(const ProfileCacheOptions& options);
  /// open() with the default bounds.
  static Result<std::unique_ptr<ProfileCache>> open(const std::filesystem::path& dir);
  ~ProfileCache() override;
  ProfileCache(const ProfileCache&) = delete;
  ProfileCache& operator=(const ProfileCache&) = delete;

  /// Applies one R/profiles message, `{"upserts": [profile…], "deletes": ["key"…],
  /// "cursor": "…"}`, all or nothing. A profile needs an `id` and a `keys` array of strings
  /// like "loyalty:ID" (hex forms are matched case-insensitively), and at most 64 KiB of JSON.
  /// A profile that claims a key takes it from whichever profile or kiosk cart held it.
  /// Fails with "invalid" naming the field ("upserts[2].keys"), "invalid_json", or "io".
  /// Thread: one writer at a time (the sync thread; serialised with addCartItem); concurrent
  /// readers are fine. Blocks on one SQLite transaction.
  Result<ProfileUpdate> apply(std::string_view payload, int64_t now_ms);

  /// Erasure: deletes every profile and kiosk cart that holds one of `keys` (any spelling
  /// parseCustomerKey accepts) or whose id is one of `ids`, with its keys, durably, with
  /// secure_delete on; then clears free pages (VACUUM when any are left) and checkpoints and
  /// truncates the WAL so that profiles.db and profiles.db-wal keep no copy. Thread: as apply().
  /// Blocks on one transaction and the checkpoint (a VACUUM of at most max_disk_bytes).
  /// Fails "io" (nothing deleted).
  Result<ProfileForget> forget(const std::vector<std::string>& keys,
                               const std::vector<std::string>& ids);

  /// The profile known under `key`, with `freshness` (when the cache last heard of it); empty
  /// for unknown keys and for carts kept for customers the centre has not sent.
  /// Thread: any. From memory, else one indexed read of profiles.db.
  std::optional<nlohmann::json> lookup(std::string_view key) const;
  /// lookup() as JSON text, without parsing the stored profile (the kiosk API's path).
  std::optional<std::string> profileJson(std::string_view key) const;
  /// The cart kept for `key` (`{"items": [...], "updated_at": ...}`; `{"items": []}` for a
  /// known profile without one), also for a customer the centre has not sent yet; empty when
  /// there is neither. Thread: any. As lookup().
  std::optional<std::string> cartJson(std::string_view key) const;

  /// Every profile (and kiosk cart) known, in memory or only in profiles.db. Thread: any.
  std::size_t size() const;
  /// Thread: any. Never blocks on I/O.
  ProfileCacheStats stats() const;
  /// Bumped by every write that commits (apply(), addCartItem()): whoever keeps something
  /// derived from profiles (the triggers' facts) derives it again when this moved.
  /// Thread: any. Never blocks on I/O.
  uint64_t generation() const;

  /// Adds `item` (a JSON object with sku, qty, ...) to the cart of the profile known as `key`:
  /// the same sku from the same channel adds to its qty. For a key no profile has, the cart is
  /// kept locally (a kiosk may start a cart for a customer the centre has not sent yet) until a
  /// profile claims the key. Durable before it is visible. Returns the updated cart; fails "io".
  /// Thread: any (serialised with apply()).
  Result<nlohmann::json> addCartItem(std::string_view key, const nlohmann::json& item,
                                     int64_t now_ms);

  // IdentityResolver
  std::map<std::string, std::string> customerFor(std::string_view key) const override;
  bool refused(const std::map<std::string, std::string>& customer,
               ConsentPurpose purpose) const override;
  /// The profile (parsed, without freshness) of an event's customer, by any of its keys
  /// (loyalty_id, app_user_id, email_sha256, phone_sha256, beacon, profile_id); empty when
  /// none is known. Thread: any. As lookup().
  std::optional<nlohmann::json> profileFor(
      const std::map<std::string, std::string>& customer) const;

 private:
  struct Entry {
    std::string id;
    std::string doc;  // compact JSON as the centre sent it (or a kiosk cart), no freshness
    std::vector<std::string> keys;  // canonical
    int64_t heard_ms = 0;
    unsigned refused = 0;   // ConsentPurpose bits whose consent is false
    bool local = false;     // a kiosk cart for a customer the centre has not sent
    std::size_t bytes = 0;  // logical size on disk
  };
  struct Slot {
    std::shared_ptr<const Entry> entry;
    std::list<std::string>::iterator lru;
  };

  struct Txn;  // a write transaction's bookkeeping (profile_cache.cpp)

  explicit ProfileCache(const ProfileCacheOptions& options) : options_(options) {}
  Result<void> openDb();
  Result<void> prepareStatements();
  static void fillEntry(sqlite3_stmt* st, Entry& e);

  // Readers: the entry for a canonical key (or an id), from memory, else from profiles.db
  // (then kept in memory).
  std::shared_ptr<const Entry> find(const std::string& key) const;
  std::shared_ptr<const Entry> findById(const std::string& id) const;
  std::shared_ptr<const Entry> entryFor(const std::map<std::string, std::string>& customer) const;
  std::shared_ptr<const Entry> readDisk(sqlite3_stmt* st, const std::string& value) const;
  void promote(const std::shared_ptr<const Entry>& e, uint64_t seen_generation) const;

  // The writer (write_mu_ held), inside a transaction: the file is the truth, memory follows
  // once the transaction committed (commitLocked).
  std::shared_ptr<Entry> rowLocked(sqlite3_stmt* st, const std::string& value);
  bool dropLocked(Txn& txn, const std::string& id);
  bool putLocked(Txn& txn, const Entry& e);
  bool capLocked(Txn& txn, const std::vector<std::string>& keep);
  Result<void> commitLocked(Txn& txn, std::vector<Entry> fresh);
  Error rollbackLocked();
  /// BEGIN, with the transaction's bookkeeping taken from the current counts.
  Result<Txn> beginLocked();

  // Memory (mu_ held).
  void insertLocked(const std::shared_ptr<const Entry>& e) const;
  void eraseLocked(const std::string& id) const;
  void shrinkLocked() const;
  static std::size_t memoryBytes(const Entry& e);

  const ProfileCacheOptions options_;

  std::mutex write_mu_;    // one writer at a time: the sync thread's updates, kiosk cart adds
  sqlite3* db_ = nullptr;  // guarded by write_mu_
  sqlite3_stmt* put_ = nullptr;
  sqlite3_stmt* put_key_ = nullptr;
  sqlite3_stmt* drop_keys_ = nullptr;
  sqlite3_stmt* drop_ = nullptr;
  sqlite3_stmt* w_by_key_ = nullptr;
  sqlite3_stmt* w_by_id_ = nullptr;
  sqlite3_stmt* oldest_ = nullptr;

  mutable std::mutex read_mu_;  // the read connection, for memory misses
  sqlite3* rdb_ = nullptr;      // guarded by read_mu_
  sqlite3_stmt* r_by_key_ = nullptr;
  sqlite3_stmt* r_by_id_ = nullptr;

  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, Slot> by_id_;             // guarded by mu_
  mutable std::unordered_map<std::string, std::string> id_by_key_;  // guarded by mu_
  mutable std::list<std::string> lru_;     // ids, most recent first; guarded by mu_
  mutable std::size_t memory_bytes_ = 0;   // guarded by mu_
  mutable uint64_t memory_evictions_ = 0;  // guarded by mu_
  mutable uint64_t disk_reads_ = 0;        // guarded by mu_
  mutable uint64_t generation_ = 0;        // bumped by every write; guarded by mu_
  std::size_t disk_count_ = 0;             // guarded by mu_ (written under write_mu_ too)
  std::size_t disk_bytes_ = 0;             // guarded by mu_ (written under write_mu_ too)
  std::size_t local_count_ = 0;            // guarded by mu_ (written under write_mu_ too)
  uint64_t disk_evictions_ = 0;            // guarded by mu_
};

}  // namespace omniedge::store
