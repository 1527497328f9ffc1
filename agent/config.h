// Configuration layers (contract §2): built-in defaults < config file < environment < command-line
// flags < remote config. One table of keys in config.cpp is the single definition of every option:
// its kind, default, range, whether the centre may set it remotely, and its help text.
#pragma once

#include <boost/program_options/options_description.hpp>
#include <boost/program_options/variables_map.hpp>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/api/result.h"

namespace omniedge::config {

/// Where a value came from, in the order the layers are applied.
enum class Origin { kDefault, kFile, kEnv, kFlag, kRemote };

/// "default", "file", "env", "flag", "remote".
std::string_view originName(Origin origin);

/// One effective setting.
struct Entry {
  /// Normalised: byte sizes and durations as a plain number, booleans "true"/"false", lists
  /// joined with "," (items trimmed, empty items dropped), enums in their canonical spelling.
  std::string value;
  Origin origin = Origin::kDefault;
  /// The config file's path, the environment variable's name, "--key" for a flag, the remote
  /// document ("store v5", "all v3") for a remote value, "" otherwise.
  std::string detail;
};

/// The effective configuration: every known key has exactly one entry. Immutable once built;
/// cheap enough to copy. Errors it reports have code "config" and `field` set to the key.
class Config {
 public:
  /// The normalised value of any key. An unknown key is a programming error: aborts.
  const std::string& str(std::string_view key) const;
  /// Int, duration (seconds) and byte-size (bytes) keys; aborts for any other kind of key.
  int64_t integer(std::string_view key) const;
  /// Bool keys; aborts for any other kind of key.
  bool boolean(std::string_view key) const;
  /// List keys (comma-separated); aborts for any other kind of key.
  std::vector<std::string> list(std::string_view key) const;
  const Entry& entry(std::string_view key) const;
  const std::map<std::string, Entry>& entries() const { return entries_; }

  /// One line per key, sorted by key and aligned: "key = value   (origin detail)".
  std::string toText() const;
  /// {"key": {"value": <number|bool|array|string>, "origin": "env", "detail": "OMNIEDGE_..."}}.
  nlohmann::json toJson() const;

  /// A copy with `settings` applied as the remote layer. Unknown keys, keys that are not
  /// remote-settable and bad values reject the whole set; the error names the key. Values are
  /// layered on this config: call it on the config without remote values (the one load()
  /// returned) to replace a previous remote set rather than add to it. `details` gives the
  /// Entry::detail of a key (which remote document set it, e.g. "store v5"); "" otherwise.
  Result<Config> withRemote(const std::map<std::string, std::string>& settings,
                            const std::map<std::string, std::string>& details = {}) const;

 private:
  friend class Builder;
  Config() = default;

  std::map<std::string, Entry> entries_;
};

/// What load() reads besides the built-in defaults.
struct Inputs {
  std::string file;  // "" = no config file
  /// The environment as (NAME, value). OMNIEDGE_* names a key (OMNIEDGE_MQTT_URL is mqtt.url);
  /// OMNIEDGE_CONFIG is the CLI's and ignored here; STATE_DIRECTORY gives data.dir's default.
  std::vector<std::pair<std::string, std::string>> env;
  /// (key, value) from the command line, in order; a later pair for the same key wins.
  std::vector<std::pair<std::string, std::string>> flags;
};

/// Defaults < file < env < flags. Every problem found is reported (one per line of the message);
/// a missing or unreadable file is an error naming the path.
Result<Config> load(const Inputs& in);

/// Defaults + that file only, for `omniedge config validate FILE`.
Result<Config> validateFile(const std::string& path);

/// The process environment (environ) as (NAME, value) pairs.
std::vector<std::pair<std::string, std::string>> processEnvironment();

/// Adds one `--key VALUE` string option per key, with its help text (range, default, whether
/// remote-settable). No defaults are registered, so flagsFrom() sees only what was given.
void addFlags(boost::program_options::options_description& desc);

/// The (key, value) pairs of the options addFlags() registered that were given on the command line.
std::vector<std::pair<std::string, std::string>> flagsFrom(
    const boost::program_options::variables_map& vm);

/// True for the keys the centre may change over MQTT; false for unknown keys.
bool isRemoteSettable(std::string_view key);

/// A URL as the url-kind keys accept it: scheme://host[:port][/path], IPv6 hosts in brackets.
struct Url {
  std::string scheme;  // lower-case: mqtt, mqtts, ws, wss, http or https
  std::string host;    // without brackets for IPv6
  uint16_t port = 0;   // the scheme's default when absent (1883, 8883, 80, 443)
  std::string path;    // "" or starting with "/"
};
/// Parses a URL of one of the schemes above; the error message says what is wrong.
Result<Url> parseUrl(std::string_view text);

/// "host:port" ("[::1]:8787" for IPv6); port 0-65535.
struct HostPort {
  std::string host;  // without brackets for IPv6
  uint16_t port = 0;
};
/// Parses "host:port"; the error message says what is wrong.
Result<HostPort> parseHostPort(std::string_view text);

}  // namespace omniedge::config
