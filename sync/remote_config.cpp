#include "sync/remote_config.h"

#include <fcntl.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "agent/api/time.h"

namespace omniedge::sync {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kStateFile[] = "remote-config.json";
constexpr int kStateFormat = 1;
constexpr std::size_t kMaxDocumentBytes = 64 * 1024;
constexpr std::size_t kMaxPayloadBytes = 128 * 1024;  // the document in base64, and a signature
constexpr std::size_t kMaxSettings = 256;
constexpr std::size_t kMaxValueBytes = 4096;
// triggers.rules: a JSON array of rule objects (agent/omni/trigger_rules.h), given as the array
// itself or as a string holding it; the config layer checks it as a whole. Up to most of a
// document, since a store's rules travel together.
constexpr std::string_view kRulesKey = "triggers.rules";
constexpr std::size_t kMaxRulesBytes = 48 * 1024;

int index(ConfigSource s) { return s == ConfigSource::kStore ? 0 : 1; }

std::string detailOf(ConfigSource s, int64_t version) {
  return "v" + std::to_string(version) +
         (s == ConfigSource::kStore ? " for this store" : " for all stores");
}

std::string sha256Hex(std::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : digest) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

// A value in a message, quoted and cut short.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

Error invalid(const std::string& field, const std::string& why) {
  // A key may be "" ({"": 1}): name it as written, never leave the field blank.
  const std::string name = field.empty() ? "\"\"" : field;
  return makeError("invalid", name + " " + why, name);
}

Result<std::string> settingValue(const std::string& key, const json& v) {
  const std::string field = "settings." + key;
  if (key == kRulesKey && (v.is_array() || v.is_string())) {
    std::string text = v.is_array() ? v.dump() : v.get<std::string>();
    if (text.size() > kMaxRulesBytes) {
      return invalid(field, "is longer than " + std::to_string(kMaxRulesBytes) + " bytes");
    }
    return text;
  }
  if (v.is_string()) {
    if (v.get_ref<const std::string&>().size() > kMaxValueBytes) {
      return invalid(field, "is longer than " + std::to_string(kMaxValueBytes) + " bytes");
    }
    return v.get<std::string>();
  }
  if (v.is_boolean()) {
    return std::string(v.get<bool>() ? "true" : "false");
  }
  if (v.is_number_unsigned()) {
    return std::to_string(v.get<uint64_t>());
  }
  if (v.is_number_integer()) {
    return std::to_string(v.get<int64_t>());
  }
  if (v.is_number_float()) {
    return v.dump();
  }
  if (v.is_array()) {
    std::string joined;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const auto& item = v[i];
      std::string text;
      if (item.is_string()) {
        text = item.get<std::string>();
      } else if (item.is_number()) {
        text = item.dump();
      } else {
        return invalid(field + "[" + std::to_string(i) + "]",
                       "must be a string or a number, got " + shown(item));
      }
      if (text.find(',') != std::string::npos) {
        return invalid(
            field + "[" + std::to_string(i) + "]",
            "must not contain ',' (list items are joined with commas), got " + shown(item));
      }
      joined += (i == 0 ? "" : ",") + text;
    }
    if (joined.size() > kMaxValueBytes) {
      return invalid(field, "is longer than " + std::to_string(kMaxValueBytes) + " bytes");
    }
    return joined;
  }
  return invalid(field, "must be a string, a number, a boolean or an array, got " + shown(v));
}

int64_t systemNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<std::string> readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return makeError("io", "cannot read " + path.string() + ": " + std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return makeError("io", "cannot read " + path.string());
  }
  return text.str();
}

// temp file, fsync, rename over, fsync the directory: the old or the new state, never a mix.
Result<void> writeAtomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  const auto fail = [&](const std::string& what) {
    return makeError("io", what + " " + tmp.string() + ": " + std::strerror(errno));
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    return fail("cannot create");
  }
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      auto e = fail("cannot write");
      ::close(fd);
      ::unlink(tmp.c_str());
      return e;
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    auto e = fail("cannot fsync");
    ::close(fd);
    ::unlink(tmp.c_str());
    return e;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    auto e = fail("cannot rename");
    ::unlink(tmp.c_str());
    return e;
  }
  const int dir = ::open(path.parent_path().empty() ? "." : path.parent_path().c_str(),
                         O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return {};
}

}  // namespace

std::string_view sourceName(ConfigSource source) {
  return source == ConfigSource::kStore ? "store" : "all";
}

std::string ConfigReport::toJson() const {
  json j = {{"version", version},
            {"status", status},
            {"error", error},
            {"source", std::string(sourceName(source))},
            {"at", formatRfc3339Ms(at_ms)}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<ConfigDocument> parseConfigDocument(std::string_view bytes) {
  if (bytes.size() > kMaxDocumentBytes) {
    return makeError("invalid", "the document is " + std::to_string(bytes.size()) +
                                    " bytes, more than the " + std::to_string(kMaxDocumentBytes) +
                                    " a config may have");
  }
  const json doc = json::parse(bytes, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return makeError("invalid",
                     "the document is not a JSON object ({\"version\": N, \"settings\": {...}})");
  }
  ConfigDocument out;
  for (const auto& [field, value] : doc.items()) {
    if (field != "version" && field != "settings" && field != "expires_at") {
      return invalid(field,
                     "is not a field of a config document (version, settings, "
                     "expires_at)");
    }
  }
  if (!doc.contains("version")) {
    return invalid("version", "is required (an integer, higher than the last one sent)");
  }
  const auto& v = doc["version"];
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX) ||
      v.get<int64_t>() < 1) {
    return invalid("version", "must be an integer of at least 1, got " + shown(v));
  }
  out.version = v.get<int64_t>();
  if (!doc.contains("settings") || !doc["settings"].is_object()) {
    return invalid("settings", "is required (an object of configuration keys)");
  }
  if (doc["settings"].size() > kMaxSettings) {
    return invalid("settings", "has more than " + std::to_string(kMaxSettings) + " keys");
  }
  for (const auto& [key, value] : doc["settings"].items()) {
    auto text = settingValue(key, value);
    if (!text) {
      return text.error();
    }
    out.settings[key] = std::move(*text);
  }
  if (doc.contains("expires_at")) {
    const auto& e = doc["expires_at"];
    auto ms = e.is_string() ? parseRfc3339(e.get<std::string>()) : std::nullopt;
    if (!ms) {
      return invalid("expires_at",
                     "must be an RFC 3339 time (2027-01-31T00:00:00Z), got " + shown(e));
    }
    out.expires_at_ms = *ms;
  }
  return out;
}

RemoteConfig::RemoteConfig(RemoteConfigOptions options) : options_(std::move(options)) {}

int64_t RemoteConfig::now() const { return options_.now_ms ? options_.now_ms() : systemNowMs(); }

Result<std::unique_ptr<RemoteConfig>> RemoteConfig::open(RemoteConfigOptions options) {
  std::unique_ptr<RemoteConfig> rc(new RemoteConfig(std::move(options)));
  if (!rc->options_.verify_key_file.empty()) {
    auto pem = readFile(rc->options_.verify_key_file);
    if (!pem) {
      return makeError("config", "config.verify_key_file: " + pem.error().message,
                       "config.verify_key_file");
    }
    auto key = VerifyKey::fromPem(*pem);
    if (!key) {
      return makeError("config",
                       "config.verify_key_file '" + rc->options_.verify_key_file + "': " +
                           key.error().message + " (make one with `omniedge config keygen`)",
                       "config.verify_key_file");
    }
    rc->key_ = std::move(*key);
  }
  if (auto r = rc->load(); !r) {
    return r.error();
  }
  return rc;
}

Result<std::string> RemoteConfig::documentBytes(std::string_view payload,
                                                int64_t& version_hint) const {
  return openConfigEnvelope(payload, key_ ? &*key_ : nullptr, options_.verify_key_file,
                            version_hint);
}

Result<std::string> openConfigEnvelope(std::string_view payload, const VerifyKey* key,
                                       std::string_view key_file, int64_t& version_hint) {
  if (payload.size() > kMaxPayloadBytes) {
    return makeError("invalid", "the message is " + std::to_string(payload.size()) +
                                    " bytes, more than a config may have (" +
                                    std::to_string(kMaxPayloadBytes) + ")");
  }
  const json j = json::parse(payload, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return makeError("invalid",
                     "not a JSON object: expected {\"document\": \"<base64>\", \"signature\": "
                     "\"<base64>\"} (or, without config.verify_key_file, the document itself)");
  }
  const bool envelope = j.contains("document") || j.contains("signature");
  const auto hint = [&](std::string_view bytes) {
    const json d = json::parse(bytes, nullptr, false);
    if (d.is_object() && d.contains("version") && d["version"].is_number_integer()) {
      version_hint = d["version"].get<int64_t>();
    }
  };
  if (!envelope) {
    hint(payload);
    if (key != nullptr) {
      return makeError("unsigned",
                       "unsigned config refused: config.verify_key_file is set, so a config must "
                       "come signed ({\"document\": \"<base64>\", \"signature\": \"<base64>\"}, "
                       "made with `omniedge config sign`)");
    }
    return std::string(payload);
  }
  for (const char* field : {"document", "signature"}) {
    if (!j.contains(field) || !j[field].is_string()) {
      return invalid(field, "is required in a signed config (a base64 string)");
    }
  }
  for (const auto& [field, value] : j.items()) {
    if (field != "document" && field != "signature") {
      return invalid(field, "is not a field of a signed config (document, signature)");
    }
  }
  auto document = base64Decode(j["document"].get_ref<const std::string&>());
  if (!document) {
    return invalid("document", "is not base64 (RFC 4648, standard alphabet, padded)");
  }
  hint(*document);
  auto signature = base64Decode(j["signature"].get_ref<const std::string&>());
  if (!signature) {
    return invalid("signature", "is not base64 (RFC 4648, standard alphabet, padded)");
  }
  if (key != nullptr && !key->verify(*document, *signature)) {
    return makeError("signature",
                     "bad signature: the Ed25519 signature does not verify with "
                     "config.verify_key_file '" +
                         std::string(key_file) +
                         "' over the document's bytes as carried (altered, or signed with "
                         "another key)");
  }
  return std::move(*document);
}

Result<RemoteConfig::Doc> RemoteConfig::checkDoc(ConfigSource source, std::string_view payload,
                                                 bool at_startup, int64_t& hint) const {
  auto bytes = documentBytes(payload, hint);
  if (!bytes) {
    return bytes.error();
  }
  auto doc = parseConfigDocument(*bytes);
  if (!doc) {
    return doc.error();
  }
  if (!at_startup) {
    const int64_t floor = floor_[index(source)];
    if (doc->version <= floor) {
      return makeError("version", "version " + std::to_string(doc->version) +
                                      " is not greater than " + std::to_string(floor) +
                                      ", the newest accepted from " +
                                      std::string(sourceName(source)) +
                                      " config: a replay or an older document");
    }
    if (doc->expires_at_ms && *doc->expires_at_ms <= now()) {
      return makeError("expired", "expired at " + formatRfc3339Ms(*doc->expires_at_ms) +
                                      " (agent time " + formatRfc3339Ms(now()) + ")");
    }
  }
  Doc d;
  d.version = doc->version;
  d.payload = std::string(payload);
  d.sha256 = sha256Hex(payload);
  d.settings = std::move(doc->settings);
  d.applied_ms = now();
  return d;
}

RemoteLayer RemoteConfig::layerOf(const Docs& docs) {
  RemoteLayer layer;
  if (docs.all) {
    layer.all_version = docs.all->version;
    for (const auto& [key, value] : docs.all->settings) {
      layer.settings[key] = value;
      layer.details[key] = detailOf(ConfigSource::kAll, docs.all->version);
    }
  }
  if (docs.store) {
    layer.store_version = docs.store->version;
    for (const auto& [key, value] : docs.store->settings) {
      layer.settings[key] = value;
      layer.details[key] = detailOf(ConfigSource::kStore, docs.store->version);
    }
  }
  return layer;
}

RemoteConfig::Outcome RemoteConfig::receive(ConfigSource source, std::string_view payload) {
  std::lock_guard lock(mu_);
  const int i = index(source);
  Outcome out;
  const std::string sha = sha256Hex(payload);
  if (sha == seen_[i] || sha == handled_[i]) {
    return out;  // kIgnored: retained, handed over again at every subscribe
  }
  handled_[i] = sha;
  ConfigReport r;
  r.source = source;
  r.at_ms = now();
  auto reject = [&](const Error& e) {
    r.status = "rejected";
    r.error = e.message;
    out.verdict = Verdict::kRejected;
    out.report = r;
    report(r);
    spdlog::warn("remote config: {} config version {} rejected: {}", sourceName(source), r.version,
                 e.message);
    return out;
  };
  auto doc = checkDoc(source, payload, false, r.version);
  if (!doc) {
    return reject(doc.error());
  }
  r.version = doc->version;
  // The document alone must be valid (an `all` document is meant for every store), then
  // together with the other topic's.
  if (auto alone = options_.check(doc->settings); !alone) {
    return reject(alone.error());
  }
  Docs next = docs_;
  next.of(source) = *doc;
  RemoteLayer layer = layerOf(next);
  if (auto merged = options_.check(layer.settings); !merged) {
    return reject(makeError(
        merged.error().code,
        merged.error().message + " (with " +
            std::string(sourceName(source == ConfigSource::kStore ? ConfigSource::kAll
                                                                  : ConfigSource::kStore)) +
            " config applied)",
        merged.error().field));
  }
  // Persist first: what is applied survives a restart, and a replay after it is refused.
  const Docs saved_docs = docs_;
  const Docs saved_good = good_;
  const bool saved_confirmed = confirmed_;
  const int64_t saved_floor = floor_[i];
  const std::string saved_seen = seen_[i];
  const auto saved_report = last_report_;
  if (confirmed_) {
    good_ = docs_;
  }
  docs_ = next;
  confirmed_ = false;
  floor_[i] = doc->version;
  seen_[i] = sha;
  last_source_ = source;
  r.status = "applied";
  last_report_ = r;
  if (auto w = persistLocked(); !w) {
    docs_ = saved_docs;
    good_ = saved_good;
    confirmed_ = saved_confirmed;
    floor_[i] = saved_floor;
    seen_[i] = saved_seen;
    last_report_ = saved_report;
    return reject(makeError("io", "cannot keep it: " + w.error().message));
  }
  out.verdict = Verdict::kAccepted;
  out.report = r;
  out.layer = std::move(layer);
  spdlog::info("remote config: {} config version {} accepted ({} settings)", sourceName(source),
               doc->version, doc->settings.size());
  return out;
}

RemoteLayer RemoteConfig::layer() const {
  std::lock_guard lock(mu_);
  return layerOf(docs_);
}

bool RemoteConfig::confirmed() const {
  std::lock_guard lock(mu_);
  return confirmed_;
}

RemoteLayer RemoteConfig::lastKnownGood() const {
  std::lock_guard lock(mu_);
  return layerOf(confirmed_ ? docs_ : good_);
}

Result<void> RemoteConfig::confirm() {
  std::lock_guard lock(mu_);
  if (confirmed_) {
    return {};
  }
  good_ = docs_;
  confirmed_ = true;
  return persistLocked();
}

RemoteConfig::Outcome RemoteConfig::rollBack(const std::string& reason) {
  std::lock_guard lock(mu_);
  Outcome out;
  const auto& given_up = docs_.of(last_source_);
  const auto& back_to = good_.of(last_source_);
  ConfigReport r;
  r.source = last_source_;
  r.version = given_up ? given_up->version : 0;
  r.status = "rolled_back";
  r.at_ms = now();
  r.error = reason + "; back to " +
            (back_to ? "version " + std::to_string(back_to->version)
                     : std::string("no ") + std::string(sourceName(last_source_)) + " config");
  docs_ = good_;
  confirmed_ = true;
  last_report_ = r;
  if (auto w = persistLocked(); !w) {
    spdlog::error("remote config: rollback not persisted: {}", w.error().message);
  }
  out.verdict = Verdict::kAccepted;
  out.report = r;
  out.layer = layerOf(docs_);
  spdlog::warn("remote config: {} config version {} rolled back: {}", sourceName(r.source),
               r.version, r.error);
  return out;
}

std::vector<ConfigReport> RemoteConfig::takeStartupReports() {
  std::lock_guard lock(mu_);
  return std::exchange(startup_reports_, {});
}

std::optional<ConfigReport> RemoteConfig::lastReport() const {
  std::lock_guard lock(mu_);
  return last_report_;
}

void RemoteConfig::setCheck(LayerCheck check) {
  std::lock_guard lock(mu_);
  options_.check = std::move(check);
}

void RemoteConfig::report(const ConfigReport& r) {
  last_report_ = r;
  if (auto w = persistLocked(); !w) {
    spdlog::warn("remote config: report not persisted: {}", w.error().message);
  }
}

Result<void> RemoteConfig::persistLocked() {
  const auto docJson = [](const std::optional<Doc>& d) -> json {
    if (!d) {
      return nullptr;
    }
    return {{"version", d->version},
            {"payload", base64Encode(d->payload)},
            {"sha256", d->sha256},
            {"settings", d->settings},
            {"applied_at", formatRfc3339Ms(d->applied_ms)}};
  };
  json state = {
      {"format", kStateFormat},
      {"docs", {{"store", docJson(docs_.store)}, {"all", docJson(docs_.all)}}},
      {"good", {{"store", docJson(good_.store)}, {"all", docJson(good_.all)}}},
      {"confirmed", confirmed_},
      {"floor", {{"store", floor_[0]}, {"all", floor_[1]}}},
      {"seen", {{"store", seen_[0]}, {"all", seen_[1]}}},
  };
  if (last_report_) {
    state["last_report"] = json::parse(last_report_->toJson());
  }
  return writeAtomically(options_.dir / kStateFile,
                         state.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
}

Result<void> RemoteConfig::load() {
  const fs::path path = options_.dir / kStateFile;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return {};
  }
  auto text = readFile(path);
  if (!text) {
    return text.error();
  }
  const json state = json::parse(*text, nullptr, false);
  const auto fileDoc = [](const json& j) -> std::optional<Doc> {
    if (!j.is_object()) {
      return std::nullopt;
    }
    auto payload = base64Decode(j.value("payload", ""));
    if (!payload) {
      return std::nullopt;
    }
    Doc d;
    d.version = j.value("version", int64_t{0});
    d.payload = std::move(*payload);
    d.sha256 = j.value("sha256", "");
    if (auto ms = parseRfc3339(j.value("applied_at", ""))) {
      d.applied_ms = *ms;
    }
    return d;
  };
  if (state.is_discarded() || !state.is_object() || state.value("format", 0) != kStateFormat) {
    const fs::path aside = path.string() + ".unreadable-" + std::to_string(now());
    fs::rename(path, aside, ec);
    ConfigReport r;
    r.status = "rejected";
    r.at_ms = now();
    r.error = "the applied remote config kept in " + path.string() +
              " could not be read (moved to " + aside.string() +
              "); running on the local configuration until the centre sends a config again";
    startup_reports_.push_back(r);
    last_report_ = r;
    spdlog::error("remote config: {}", r.error);
    return {};
  }
  try {
    for (auto s : {ConfigSource::kStore, ConfigSource::kAll}) {
      const std::string name(sourceName(s));
      docs_.of(s) = fileDoc(state["docs"][name]);
      good_.of(s) = fileDoc(state["good"][name]);
      floor_[index(s)] = state["floor"].value(name, int64_t{0});
      seen_[index(s)] = state["seen"].value(name, "");
    }
    confirmed_ = state.value("confirmed", true);
    if (state.contains("last_report") && state["last_report"].is_object()) {
      const auto& lr = state["last_report"];
      ConfigReport r;
      r.version = lr.value("version", int64_t{0});
      r.status = lr.value("status", "");
      r.error = lr.value("error", "");
      r.source = lr.value("source", "store") == "all" ? ConfigSource::kAll : ConfigSource::kStore;
      if (auto ms = parseRfc3339(lr.value("at", ""))) {
        r.at_ms = *ms;
      }
      last_report_ = r;
    }
  } catch (const json::exception& e) {
    return makeError("io", "remote config state " + path.string() + ": " + e.what());
  }

  // Check again what was applied: the verify key may have changed, or this binary may know
  // other keys than the one that accepted it.
  bool changed = false;
  for (Docs* docs : {&docs_, &good_}) {
    for (auto s : {ConfigSource::kStore, ConfigSource::kAll}) {
      auto& d = docs->of(s);
      if (!d) {
        continue;
      }
      int64_t hint = 0;
      auto checked = checkDoc(s, d->payload, true, hint);
      Result<void> valid = checked ? options_.check(checked->settings) : checked.error();
      if (checked && valid) {
        checked->applied_ms = d->applied_ms;
        d = std::move(*checked);
        continue;
      }
      if (docs == &docs_) {
        ConfigReport r;
        r.source = s;
        r.version = d->version;
        r.status = "rejected";
        r.at_ms = now();
        r.error = "the applied version " + std::to_string(d->version) +
                  " is not valid any more and is not applied: " + valid.error().message;
        startup_reports_.push_back(r);
        last_report_ = r;
        spdlog::error("remote config: {} config: {}", sourceName(s), r.error);
      }
      d.reset();
      changed = true;
    }
  }
  if (auto merged = options_.check(layerOf(docs_).settings); !merged) {
    // Each alone is fine, together they are not (a changed binary): keep the store's own.
    ConfigReport r;
    r.source = ConfigSource::kAll;
    r.version = docs_.all ? docs_.all->version : 0;
    r.status = "rejected";
    r.at_ms = now();
    r.error =
        "the applied config is not valid any more with this store's own: " + merged.error().message;
    startup_reports_.push_back(r);
    last_report_ = r;
    docs_.all.reset();
    changed = true;
  }
  if (changed) {
    if (auto w = persistLocked(); !w) {
      spdlog::warn("remote config: {}", w.error().message);
    }
  }
  return {};
}

Result<RemoteLayer> readAppliedLayer(const std::filesystem::path& dir) {
  const fs::path path = dir / kStateFile;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return RemoteLayer{};
  }
  auto text = readFile(path);
  if (!text) {
    return text.error();
  }
  const json state = json::parse(*text, nullptr, false);
  if (state.is_discarded() || !state.is_object() || !state.contains("docs")) {
    return makeError("io", path.string() + " is not a remote config state");
  }
  RemoteLayer layer;
  try {
    for (auto s : {ConfigSource::kAll, ConfigSource::kStore}) {
      const auto& d = state["docs"][std::string(sourceName(s))];
      if (!d.is_object()) {
        continue;
      }
      const int64_t version = d.value("version", int64_t{0});
      (s == ConfigSource::kStore ? layer.store_version : layer.all_version) = version;
      for (const auto& [key, value] : d["settings"].items()) {
        layer.settings[key] = value.get<std::string>();
        layer.details[key] = detailOf(s, version);
      }
    }
  } catch (const json::exception& e) {
    return makeError("io", path.string() + ": " + e.what());
  }
  return layer;
}

}  // namespace omniedge::sync
