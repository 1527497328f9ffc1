// Remote config (contract §5): the signed, versioned documents the centre publishes on
// R/config/desired and omniedge/v1/{tenant}/all/config/desired. This checks them (signature,
// shape, version, expiry, the settings through a callback), keeps the accepted ones and the
// last-known-good ones in data.dir/remote-config.json, and rolls back. It never sees
// agent/config: the agent passes the settings check in, and applies the layer itself.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/result.h"
#include "sync/signing.h"

namespace omniedge::sync {

/// Which topic a document came on: the store's own, or the tenant's `all`.
enum class ConfigSource { kStore, kAll };
/// "store" or "all".
std::string_view sourceName(ConfigSource source);

/// What R/config/reported carries (retained): `{"version": N, "status": "applied" |
/// "rejected" | "rolled_back", "error": "…", "source": "store" | "all", "at": "…"}`.
struct ConfigReport {
  int64_t version = 0;  // 0 when the document did not say (not JSON, no version)
  std::string status;
  std::string error;  // "" when applied
  ConfigSource source = ConfigSource::kStore;
  int64_t at_ms = 0;
  std::string toJson() const;
};

/// A document as the agent reads it: `{"version": N, "settings": {…}, "expires_at": "…"}`.
struct ConfigDocument {
  int64_t version = 0;
  /// Values as the config layers take them: strings as they are, numbers in decimal, booleans
  /// "true"/"false", arrays of strings or numbers joined with ",".
  std::map<std::string, std::string> settings;
  std::optional<int64_t> expires_at_ms;
};

/// Checks a document's own shape: a JSON object with an integer `version` >= 1, a `settings`
/// object (at most 256 keys, values strings, numbers, booleans or arrays of them), an optional
/// RFC 3339 `expires_at`, nothing else; at most 64 KiB. Fails "invalid" naming the field.
/// Thread: any. Used by the agent and by `omniedge config sign` before it signs.
Result<ConfigDocument> parseConfigDocument(std::string_view bytes);

/// The document inside a config payload as it comes off the wire: the envelope
/// {"document": "<base64>", "signature": "<base64>"} opened and its Ed25519 signature checked
/// with `key`, or, when `key` is null, also a bare document (unsigned configs are refused
/// while a key is set). `key_file` only names the key in messages. `version_hint` gets the
/// document's version when it can be read at all (for the report). Pure: no I/O, no state
/// (RemoteConfig::receive() runs it first; the fuzz target remote_config_signed runs it alone).
/// Fails "invalid" (not a JSON object, too large, a field missing, extra or not base64; `field`
/// names it), "unsigned" or "signature". Thread: any. Never throws (but bad_alloc).
Result<std::string> openConfigEnvelope(std::string_view payload, const VerifyKey* key,
                                       std::string_view key_file, int64_t& version_hint);

/// The remote layer in effect: the settings of both documents merged, the store's own winning
/// per key.
struct RemoteLayer {
  std::map<std::string, std::string> settings;
  /// For each key, the document it came from: "v5 for this store", "v3 for all stores".
  std::map<std::string, std::string> details;
  int64_t store_version = 0;  // 0: no document
  int64_t all_version = 0;
};

/// Checks settings against the local configuration (the agent: Config::withRemote). Returns a
/// "config" error naming the key when they cannot be applied. Must not block for long.
using LayerCheck = std::function<Result<void>(const std::map<std::string, std::string>&)>;

struct RemoteConfigOptions {
  std::filesystem::path dir;        // data.dir: the state is dir/remote-config.json
  std::string verify_key_file;      // config.verify_key_file; "" accepts unsigned documents
  LayerCheck check;                 // required
  std::function<int64_t()> now_ms;  // empty: the system clock
};

/// The documents accepted and the last-known-good ones, with their versions, persisted
/// atomically (temp file, fsync, rename, fsync of the directory) before they are returned.
///
/// Versions only rise, per topic: the highest version ever accepted (also one later rolled
/// back) is kept on disk, so a replayed or older document is refused after a restart too.
/// A payload identical to the one applied (or rolled back) from its topic is ignored silently:
/// config is retained, so the broker hands it over again at every subscribe.
///
/// Thread: any; calls are serialised by an internal mutex (held while the state is written).
class RemoteConfig {
 public:
  /// Reads the verify key and the persisted state. The applied documents are checked again
  /// (signature with the current key, settings with `check`): one that fails is left out of the
  /// layer and reported (takeStartupReports()). Fails "config" naming config.verify_key_file
  /// when the key cannot be read or is not an Ed25519 public key, "io" when the state cannot
  /// be read (a state file that does not parse is moved aside and reported, not fatal).
  static Result<std::unique_ptr<RemoteConfig>> open(RemoteConfigOptions options);

  enum class Verdict {
    kIgnored,   // the payload applied (or rolled back) last from this topic, again
    kRejected,  // nothing changes; report says why
    kAccepted,  // persisted: the agent applies `layer`
  };
  struct Outcome {
    Verdict verdict = Verdict::kIgnored;
    ConfigReport report;  // kRejected: "rejected"; kAccepted: "applied" (once applied)
    RemoteLayer layer;    // kAccepted: the new layer (both documents)
  };

  /// One message from the store's topic or the `all` topic. Checks, in order: JSON, the
  /// signature (when a verify key is set; unsigned documents are refused then), the document's
  /// shape, the version (greater than every one accepted from that topic), expires_at, the
  /// document's settings alone and merged with the other topic's. Only then is anything
  /// persisted. Blocks for the state write (one fsync).
  Outcome receive(ConfigSource source, std::string_view payload);

  /// The layer in effect now.
  RemoteLayer layer() const;
  /// False from receive() accepting a layer until confirm() or rollBack().
  bool confirmed() const;
  /// The layer last confirmed (what rollBack() returns to).
  RemoteLayer lastKnownGood() const;

  /// The agent applied the layer and the uplink works with it: it becomes the last-known-good.
  /// Fails "io" (the state could not be written; it is kept in memory).
  Result<void> confirm();

  /// Back to the last-known-good layer, persisted; the documents given up stay refused (their
  /// versions are burned). The report is "rolled_back" for the newest document given up, with
  /// `reason`.
  Outcome rollBack(const std::string& reason);

  /// Reports from open() (an applied document that is not valid any more), once.
  std::vector<ConfigReport> takeStartupReports();
  /// The latest report made (persisted), to publish again at every connect.
  std::optional<ConfigReport> lastReport() const;

  /// Replaces the settings check (the local configuration changed, e.g. on reload).
  void setCheck(LayerCheck check);

 private:
  struct Doc {
    int64_t version = 0;
    std::string payload;  // as received
    std::string sha256;   // of the payload
    std::map<std::string, std::string> settings;
    int64_t applied_ms = 0;
  };
  struct Docs {
    std::optional<Doc> store;
    std::optional<Doc> all;
    std::optional<Doc>& of(ConfigSource s) { return s == ConfigSource::kStore ? store : all; }
    const std::optional<Doc>& of(ConfigSource s) const {
      return s == ConfigSource::kStore ? store : all;
    }
  };

  explicit RemoteConfig(RemoteConfigOptions options);
  Result<void> load();
  Result<void> persistLocked();
  int64_t now() const;
  static RemoteLayer layerOf(const Docs& docs);
  /// The document inside a payload, its signature checked; `version_hint` gets its version
  /// when it can be read at all (for the report).
  Result<std::string> documentBytes(std::string_view payload, int64_t& version_hint) const;
  /// The document checked (all but the settings); `version_hint` as for documentBytes().
  Result<Doc> checkDoc(ConfigSource source, std::string_view payload, bool at_startup,
                       int64_t& version_hint) const;
  void report(const ConfigReport& r);

  RemoteConfigOptions options_;
  std::optional<VerifyKey> key_;
  mutable std::mutex mu_;
  Docs docs_;                  // guarded by mu_
  Docs good_;                  // guarded by mu_
  bool confirmed_ = true;      // guarded by mu_
  int64_t floor_[2] = {0, 0};  // guarded by mu_: highest version accepted, per topic
  std::string seen_[2];        // guarded by mu_: sha256 of the payload applied last
  std::string handled_[2];     // guarded by mu_: sha256 of the payload handled last
  ConfigSource last_source_ = ConfigSource::kStore;  // guarded by mu_
  std::optional<ConfigReport> last_report_;          // guarded by mu_
  std::vector<ConfigReport> startup_reports_;        // guarded by mu_
};

/// The layer the daemon applied, as persisted in `dir` (for `omniedge config show`), without
/// checking it again. An absent file is an empty layer. Fails "io". Thread: any.
Result<RemoteLayer> readAppliedLayer(const std::filesystem::path& dir);

}  // namespace omniedge::sync
