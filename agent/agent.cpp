#include "agent/agent.h"

#include <fnmatch.h>
#include <malloc.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "agent/api/event_metrics.h"
#include "agent/api/time.h"
#include "agent/api/uuid.h"
#include "agent/commands.h"
#include "agent/control_socket.h"
#include "agent/ingest/envelope.h"
#include "agent/ingest/ingest.h"
#include "agent/ingest/pii.h"
#include "agent/log_ring.h"
#include "agent/omni/privacy.h"
#include "agent/omni/trigger_rules.h"
#include "agent/omni/triggers.h"
#include "agent/omni/visits.h"
#include "agent/resident.h"
#include "agent/source_runner.h"
#include "agent/store/buffer.h"
#include "agent/store/inbox.h"
#include "agent/store/profile_cache.h"
#include "agent/store/schema.h"
#include "agent/systemd_notify.h"
#include "agent/version.h"
#include "drivers/builtin.h"
#include "drivers/kiosk/customer_key.h"
#include "drivers/kiosk/http_api.h"
#include "sync/https_uplink.h"
#include "sync/remote_config.h"
#include "sync/sync_engine.h"

namespace omniedge {
namespace {

namespace fs = std::filesystem;

Result<std::string> readSecretFile(const std::string& path, const std::string& key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return makeError("config", key + ": cannot read '" + path + "'", key);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) {
    s.pop_back();
  }
  return s;
}

// http.tokens_file: a token per line, optionally with the channels it may write
// (kiosk::parseTokens says how).
Result<std::vector<kiosk::ApiToken>> readTokens(const std::string& path) {
  auto text = readSecretFile(path, "http.tokens_file");
  if (!text) {
    return text.error();
  }
  auto tokens = kiosk::parseTokens(*text);
  if (!tokens) {
    return makeError("config", "http.tokens_file '" + path + "': " + tokens.error().message,
                     "http.tokens_file");
  }
  for (const kiosk::ApiToken& token : *tokens) {
    if (token.secret.size() < 16) {
      // The lockout slows guessing from one address, but never refuses a valid token: what
      // really keeps guesses out is the token's length.
      spdlog::warn(
          "http.tokens_file: a token of only {} characters is easy to guess; use 32 "
          "random characters or more (e.g. openssl rand -hex 16)",
          token.secret.size());
    }
  }
  return tokens;
}

// What the health check remembers between calls: when the buffer last refused an append.
struct FullWatch {
  std::mutex mu;
  uint64_t rejected = 0;   // guarded by mu
  int64_t changed_ms = 0;  // guarded by mu
};

nlohmann::json profilesJson(const store::ProfileCacheStats& s) {
  return {
      {"in_memory", s.in_memory},
      {"memory_bytes", s.memory_bytes},
      {"memory_max_bytes", s.memory_max_bytes},
      {"memory_evictions", s.memory_evictions},
      {"disk_reads", s.disk_reads},
      {"on_disk", s.on_disk},
      {"disk_bytes", s.disk_bytes},
      {"disk_max_bytes", s.disk_max_bytes},
      {"disk_evictions", s.disk_evictions},
      {"local_carts", s.local_carts},
  };
}

// Store-visit journeys (status "visits"); {"enabled": false} when visits.enabled is off.
nlohmann::json visitsJson(const omni::VisitTracker* visits) {
  if (visits == nullptr) {
    return {{"enabled", false}};
  }
  const auto s = visits->stats();
  return {{"enabled", true},           {"open", s.open},
          {"bytes", s.bytes},          {"emitted", s.emitted},
          {"refused", s.refused},      {"capacity_closed", s.capacity_closed},
          {"last_error", s.last_error}};
}

nlohmann::json queueJson(const store::BufferStats& s, int64_t now_ms) {
  return {
      {"pending", s.pending[0] + s.pending[1] + s.pending[2]},
      {"high", s.pending[0]},
      {"normal", s.pending[1]},
      {"low", s.pending[2]},
      {"bytes", s.pending_bytes},
      {"oldest_pending_age_s",
       s.oldest_pending_ms > 0 ? std::max<int64_t>(0, now_ms - s.oldest_pending_ms) / 1000 : 0},
  };
}

// Events per second over a sliding window of housekeeping samples.
class Rate {
 public:
  void sample(int64_t now_ms, uint64_t total) {
    samples_.emplace_back(now_ms, total);
    while (samples_.size() > 2 && now_ms - samples_.front().first > 10000) {
      samples_.pop_front();
    }
  }
  double perSecond() const {
    if (samples_.size() < 2) {
      return 0;
    }
    const auto& [t0, v0] = samples_.front();
    const auto& [t1, v1] = samples_.back();
    return t1 > t0 ? static_cast<double>(v1 - v0) * 1000.0 / static_cast<double>(t1 - t0) : 0;
  }

 private:
  std::deque<std::pair<int64_t, uint64_t>> samples_;
};

// A control request's fields, read strictly: a wrong type, a value out of range or an unknown
// field is an answer naming the field, never an exception out of the control thread.
class RequestFields {
 public:
  explicit RequestFields(const nlohmann::json& request) : r_(request) {}

  Result<void> only(std::initializer_list<std::string_view> allowed) const {
    for (const auto& [key, value] : r_.items()) {
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        std::string names;
        for (const auto a : allowed) {
          names += (names.empty() ? "" : ", ") + std::string(a);
        }
        return makeError("invalid_request",
                         "unknown field '" + key + "' for this command (known: " + names + ")",
                         key);
      }
    }
    return {};
  }

  Result<std::string> text(const char* key, std::string fallback, std::size_t max_bytes) const {
    if (!r_.contains(key)) {
      return fallback;
    }
    const auto& v = r_[key];
    if (!v.is_string() || v.get_ref<const std::string&>().size() > max_bytes) {
      return bad(key, "must be a string of at most " + std::to_string(max_bytes) + " bytes");
    }
    return v.get<std::string>();
  }

  Result<int64_t> integer(const char* key, int64_t fallback, int64_t min, int64_t max) const {
    if (!r_.contains(key)) {
      return fallback;
    }
    const auto& v = r_[key];
    const bool ok = (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(max) &&
                     static_cast<int64_t>(v.get<uint64_t>()) >= min) ||
                    (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= min &&
                     v.get<int64_t>() <= max);
    if (!ok) {
      return bad(key,
                 "must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
    }
    return v.get<int64_t>();
  }

  Result<bool> boolean(const char* key, bool fallback) const {
    if (!r_.contains(key)) {
      return fallback;
    }
    if (!r_[key].is_boolean()) {
      return bad(key, "must be true or false");
    }
    return r_[key].get<bool>();
  }

 private:
  Error bad(const char* key, const std::string& why) const {
    std::string got = r_[key].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (got.size() > 40) {
      got = got.substr(0, 37) + "...";
    }
    return makeError("invalid_request", std::string("field '") + key + "' " + why + ", got " + got,
                     key);
  }

  const nlohmann::json& r_;
};

nlohmann::json refusal(const Error& e) {
  nlohmann::json j = {{"ok", false}, {"error", e.message}, {"code", e.code}};
  if (!e.field.empty()) {
    j["field"] = e.field;
  }
  return j;
}

// Ingest names a field of a request's i-th event "[i].type": split it for the CLI, which knows
// which line of its file the i-th event came from. Without an index (a full buffer), the whole
// request was refused.
nlohmann::json refusalAt(const Error& e) {
  nlohmann::json j = refusal(e);
  const std::string& field = e.field;
  if (field.size() > 2 && field.front() == '[') {
    const auto close = field.find(']');
    if (close != std::string::npos) {
      j["index"] = std::strtoull(field.c_str() + 1, nullptr, 10);
      j["field"] = field.substr(std::min(field.size(), close + 2));
    }
  }
  return j;
}

// What the drivers take from the configuration (beacon.*, pos.*).
drivers::BuiltinSettings driverSettings(const config::Config& cfg, const std::string& store_id,
                                        const std::string& buffer_epoch) {
  drivers::BuiltinSettings ds;
  ds.store_id = store_id;
  ds.buffer_epoch = buffer_epoch;
  ds.pos_spool_dir = cfg.str("pos.spool_dir");
  ds.pos_keep_processed = cfg.boolean("pos.keep_processed");
  ds.pos_keep_processed_days = static_cast<int>(cfg.integer("pos.keep_processed_days"));
  ds.pos_rescan_interval_s = static_cast<int>(cfg.integer("pos.rescan_interval"));
  ds.pos_max_file_bytes = cfg.integer("pos.max_file_bytes");
  ds.pos_max_parse_memory = cfg.integer("pos.max_parse_memory");
  ds.beacon_mqtt_url = cfg.str("beacon.mqtt_url");
  ds.beacon_topics = cfg.list("beacon.topics");
  ds.beacon_zones = cfg.list("beacon.zones");
  ds.beacon_exit_after_s = cfg.integer("beacon.exit_after");
  ds.beacon_enter_after_sightings = static_cast<int>(cfg.integer("beacon.enter_after_sightings"));
  ds.beacon_ignore_prefixes = cfg.list("beacon.ignore_prefixes");
  ds.beacon_max_tracked = cfg.integer("beacon.max_tracked");
  ds.beacon_qos = static_cast<int>(cfg.integer("beacon.qos"));
  ds.beacon_window_s = cfg.integer("beacon.window");
  ds.beacon_switch_margin_db = static_cast<int>(cfg.integer("beacon.switch_margin_db"));
  ds.beacon_switch_hold_s = cfg.integer("beacon.switch_hold");
  ds.beacon_scanner_offsets = cfg.list("beacon.scanner_offsets");
  ds.beacon_max_message_bytes = cfg.integer("beacon.max_message_bytes");
  ds.beacon_queue_max_bytes = cfg.integer("beacon.queue_max_bytes");
  ds.beacon_pending_max_bytes = cfg.integer("beacon.pending_max_bytes");
  ds.beacon_max_state_bytes = cfg.integer("beacon.max_state_bytes");
  return ds;
}

std::string topicRoot(const config::Config& cfg) {
  return "omniedge/v1/" + cfg.str("store.tenant") + "/" + cfg.str("store.id");
}

// The tenant-wide config topic, outside R.
std::string allConfigTopic(const config::Config& cfg) {
  return "omniedge/v1/" + cfg.str("store.tenant") + "/all/config/desired";
}

struct UplinkOptions {
  sync::MqttOptions mqtt;
  sync::SyncOptions sync;
};

// What the uplink takes from the configuration (mqtt.*, sync.*). Fails reading
// mqtt.password_file.
Result<UplinkOptions> uplinkOptions(const config::Config& cfg) {
  UplinkOptions u;
  const std::string store_id = cfg.str("store.id");
  sync::MqttOptions& mo = u.mqtt;
  mo.urls = cfg.list("mqtt.url");
  mo.url = mo.urls.empty() ? std::string() : mo.urls.front();
  mo.client_id = cfg.str("mqtt.client_id").empty()
                     ? "omniedge-" + cfg.str("store.tenant") + "-" + store_id
                     : cfg.str("mqtt.client_id");
  mo.username = cfg.str("mqtt.username");
  if (!cfg.str("mqtt.password_file").empty()) {
    auto pw = readSecretFile(cfg.str("mqtt.password_file"), "mqtt.password_file");
    if (!pw) {
      return pw.error();
    }
    mo.password = *pw;
  }
  mo.ca_file = cfg.str("mqtt.ca_file");
  mo.cert_file = cfg.str("mqtt.cert_file");
  mo.key_file = cfg.str("mqtt.key_file");
  mo.keepalive_s = static_cast<int>(cfg.integer("mqtt.keepalive"));
  mo.version = sync::parseMqttVersion(cfg.str("mqtt.version")).value_or(sync::MqttVersion::kAuto);
  mo.topic_root = topicRoot(cfg);
  mo.reconnect_min_ms = static_cast<int>(cfg.integer("mqtt.reconnect_min") * 1000);
  mo.reconnect_max_ms = static_cast<int>(cfg.integer("mqtt.reconnect_max") * 1000);
  mo.max_packet_bytes = cfg.integer("mqtt.max_packet_bytes");

  sync::SyncOptions& so = u.sync;
  so.store_id = store_id;
  so.agent_version = kVersion;
  so.batch_max_events = static_cast<std::size_t>(cfg.integer("sync.batch_max_events"));
  so.batch_max_bytes = static_cast<std::size_t>(cfg.integer("sync.batch_max_bytes"));
  so.compression =
      sync::parseCompression(cfg.str("sync.compression")).value_or(sync::Compression::kGzip);
  so.max_inflight = static_cast<int>(cfg.integer("sync.max_inflight"));
  so.max_bytes_per_sec = cfg.integer("sync.max_bytes_per_sec");
  so.status_interval_s = static_cast<int>(cfg.integer("sync.status_interval"));
  so.inbound_max_bytes = static_cast<std::size_t>(cfg.integer("sync.inbound_max_bytes"));
  const std::string root = topicRoot(cfg);
  so.inbound = {root + "/profiles", root + "/config/desired", allConfigTopic(cfg), root + "/cmd"};
  return u;
}

// Reports of seq ranges (evicted, quarantined, skipped, recovered) for the centre's gap check:
// `data` gets "epoch", "ranges" and "reason" (tools/central-sim/README.md). Many ranges are cut
// into several events (`part`, `parts`), each well below buffer.max_event_bytes; all of them go
// in one append, all or nothing.
std::vector<Event> rangeReports(const std::string& type, const std::string& source,
                                const std::string& epoch, const std::string& reason,
                                const store::SeqRanges& ranges, const nlohmann::json& extra,
                                std::size_t max_event_bytes) {
  const std::size_t per_event = std::max<std::size_t>(8, (max_event_bytes / 2) / 48);
  const std::size_t parts = std::max<std::size_t>(1, (ranges.size() + per_event - 1) / per_event);
  std::vector<Event> out;
  for (std::size_t part = 0; part < parts; ++part) {
    nlohmann::json data = extra;
    data["epoch"] = epoch;
    data["reason"] = reason;
    nlohmann::json list = nlohmann::json::array();
    for (std::size_t i = part * per_event; i < std::min(ranges.size(), (part + 1) * per_event);
         ++i) {
      list.push_back({ranges[i].first, ranges[i].second});
    }
    data["ranges"] = std::move(list);
    if (parts > 1) {
      data["part"] = part + 1;
      data["parts"] = parts;
    }
    Event e;
    e.type = type;
    e.source = source;
    e.data_json = data.dump();
    out.push_back(std::move(e));
  }
  return out;
}

int64_t seqCount(const store::SeqRanges& ranges) {
  int64_t n = 0;
  for (const auto& [a, b] : ranges) {
    n += b - a + 1;
  }
  return n;
}

}  // namespace

// The commands from the centre, acting on the agent (definitions in the section at the end).
class Agent::CentreCommands final : public CommandTarget {
 public:
  explicit CentreCommands(Agent& agent) : agent_(agent) {}
  // CommandTarget
  nlohmann::json ping() override;
  nlohmann::json flush() override;
  Result<nlohmann::json> resyncProfiles() override;
  Result<nlohmann::json> setLogLevel(const std::string& level, int64_t duration_s) override;
  nlohmann::json diagnostics(std::size_t max_bytes) override;
  Result<int64_t> retryQuarantine() override;
  Result<nlohmann::json> forget(const std::string& key) override;

 private:
  Agent& agent_;
};

struct Agent::Parts {
  config::Config cfg;
  SystemClock clock;
  std::unique_ptr<PiiHasher> pii;
  std::unique_ptr<store::Buffer> buffer;
  std::unique_ptr<store::ProfileCache> profiles;
  std::unique_ptr<Ingest> ingest;
  // Store-visit journeys and attribution (null with visits.enabled=false): Ingest's enricher
  // and an observer; its thread is started and stopped by run().
  std::unique_ptr<omni::VisitTracker> visits;
  // Consent on buffered data and erasure (agent/omni/privacy.h).
  std::unique_ptr<omni::Privacy> privacy;
  std::unique_ptr<kiosk::HttpApi> http;
  // Local triggers (agent/omni/triggers.h): observes ingest, tells the kiosk streams of `http`;
  // declared after both so that it goes first.
  std::unique_ptr<omni::TriggerEngine> triggers;
  std::unique_ptr<sync::SyncEngine> sync;
  // The HTTPS uplink: null when https.base_url is empty; replaced by applyConfig (main
  // thread), read by any thread through Agent::https().
  std::shared_ptr<sync::HttpsUplink> https;  // guarded by https_mu
  mutable std::mutex https_mu;
  // Shared by both uplinks: who sends which seqs, and sync.max_bytes_per_sec for their sum.
  std::shared_ptr<sync::ClaimBook> claims;
  std::shared_ptr<sync::RateLimit> rate;
  std::unique_ptr<ControlServer> control;
  std::vector<std::unique_ptr<SourceRunner>> sources;
  std::string store_id;
  std::string tenant;
  std::string http_listen;
  int64_t started_ms = 0;
  std::atomic<bool> stopping{false};
  std::atomic<bool> running{false};  // run() started the parts
  std::atomic<int> config_version{0};
  // Events by channel and reason, and batch latencies: counted by Ingest and both uplinks.
  std::shared_ptr<EventMetrics> metrics = std::make_shared<EventMetrics>();
  mutable std::mutex rates_mu;
  Rate ingest_rate;    // guarded by rates_mu
  Rate delivery_rate;  // guarded by rates_mu
  // The web console's plots: totals and queue depth every console.sample_interval.
  std::unique_ptr<History> history;
  uint64_t dropped_reported = 0;

  // Remote config, commands and profiles from the centre (see the section at the end).
  config::Config base_cfg;                         // the local layers (defaults, file, env, flags)
  std::function<Result<config::Config>()> reload;  // SIGHUP: base_cfg read again
  // The last SIGHUP reload, for status (main thread writes, status() reads).
  mutable std::mutex reload_mu;
  nlohmann::json last_reload;  // guarded by reload_mu
  mutable std::mutex live_mu;
  std::shared_ptr<const config::Config> live;  // guarded by live_mu: the effective config
  mutable std::mutex sources_mu;               // guards `sources` (applyConfig replaces runners)
  std::unique_ptr<store::InboxStore> inbox;
  std::unique_ptr<sync::RemoteConfig> remote;
  std::unique_ptr<CentreCommands> command_target;
  std::unique_ptr<CommandRunner> commands;
  std::shared_ptr<RecentLogSink> log_ring;
  std::string topic_root;
  std::string topic_all_config;
  std::mutex pending_mu;
  std::optional<std::pair<sync::RemoteLayer, sync::ConfigReport>> pending_layer;  // pending_mu
  std::mutex level_mu;
  int64_t level_until_ms = 0;  // guarded by level_mu: a temporary log level ends then (0: none)
  // Main thread only: a config that changed the uplink, until the uplink proves it.
  struct UplinkWatch {
    uint64_t generation = 0;
    int64_t deadline_ms = 0;
    std::string url;
  };
  std::optional<UplinkWatch> watch;
  std::atomic<int64_t> watch_deadline_ms{0};  // the watch's deadline, for status (0: none)

  Parts(config::Config base, config::Config effective)
      : cfg(std::move(effective)), base_cfg(std::move(base)) {
    live = std::make_shared<const config::Config>(cfg);
  }
};

Agent::Agent(std::unique_ptr<Parts> parts) : p_(std::move(parts)) {}

Agent::~Agent() {
  if (p_->http) {
    p_->http->stop();
  }
  for (auto& s : p_->sources) {
    s->stop();
  }
  if (p_->visits) {
    p_->visits->stop();
  }
  if (p_->triggers) {
    p_->triggers->stop();
  }
  if (p_->control) {
    p_->control->stop();
  }
  if (p_->sync) {
    p_->sync->stop();
  }
  if (auto https = this->https()) {
    https->stop();
  }
  if (p_->buffer) {
    p_->buffer->close();
  }
  if (p_->log_ring) {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), p_->log_ring), sinks.end());
  }
}

std::string controlSocketPath(const config::Config& cfg) {
  const char* runtime = std::getenv("RUNTIME_DIRECTORY");
  fs::path dir =
      runtime != nullptr && *runtime != '\0' ? fs::path(runtime) : fs::path(cfg.str("data.dir"));
  return (dir / "omniedge.sock").string();
}

Result<std::unique_ptr<PiiHasher>> makePiiHasher(const config::Config& cfg) {
  std::string hmac_key;
  if (!cfg.str("identity.hmac_key_file").empty()) {
    auto key = PiiHasher::readKeyFile(cfg.str("identity.hmac_key_file"));
    if (!key) {
      return key.error();
    }
    hmac_key = *key;
  } else {
    spdlog::warn(
        "identity.hmac_key_file is not set: e-mail and phone hashes are plain SHA-256, which can "
        "be brute-forced; set a tenant key");
  }
  std::string region = cfg.str("identity.default_region");
  if (region.empty() && !cfg.str("identity.default_country_code").empty()) {
    region = PiiHasher::regionForCallingCode(cfg.str("identity.default_country_code"),
                                             cfg.str("identity.phone_module"));
    if (region.empty()) {
      return makeError("config",
                       "identity.default_country_code '" +
                           cfg.str("identity.default_country_code") +
                           "' is no country's calling code; set identity.default_region (e.g. GB)",
                       "identity.default_country_code");
    }
  }
  if (const auto module = PiiHasher::phoneModulePath(cfg.str("identity.phone_module"));
      access(module.c_str(), R_OK) != 0) {
    spdlog::warn(
        "the phone number module {} is missing: events with phone numbers will be refused "
        "(reinstall omniedge, or set identity.phone_module)",
        module);
  }
  return std::make_unique<PiiHasher>(hmac_key, region,
                                     parseDataPiiPolicy(cfg.str("identity.data_pii")),
                                     cfg.str("identity.phone_module"));
}

store::BufferOptions bufferOptions(const config::Config& cfg) {
  store::BufferOptions bo;
  bo.dir = cfg.str("data.dir");
  bo.synchronous_full = cfg.str("buffer.synchronous") == "full";
  bo.max_bytes = cfg.integer("buffer.max_bytes");
  bo.min_free_disk = cfg.integer("buffer.min_free_disk");
  bo.retain_delivered_s = cfg.integer("buffer.retain_delivered");
  bo.commit_window = std::chrono::microseconds(cfg.integer("buffer.commit_window_us"));
  bo.recent_max_bytes = static_cast<std::size_t>(cfg.integer("buffer.recent_max_bytes"));
  return bo;
}

IngestOptions ingestOptions(const config::Config& cfg) {
  IngestOptions io;
  io.store_id = cfg.str("store.id");
  io.max_event_bytes = static_cast<std::size_t>(cfg.integer("buffer.max_event_bytes"));
  return io;
}

Result<std::unique_ptr<store::ProfileCache>> openProfileCache(const config::Config& cfg) {
  store::ProfileCacheOptions po;
  po.dir = cfg.str("data.dir");
  po.max_bytes = static_cast<std::size_t>(cfg.integer("profiles.max_bytes"));
  po.max_disk_bytes = static_cast<std::size_t>(cfg.integer("profiles.max_disk_bytes"));
  return store::ProfileCache::open(po);
}

Result<std::unique_ptr<Agent>> Agent::create(const config::Config& local_cfg) {
  // A file a newer omniedge wrote stops the start before any file is opened or upgraded.
  if (auto r = store::schema::refuseNewerFiles(local_cfg.str("data.dir")); !r) {
    return r.error();
  }
  // The remote layer the centre pushed (kept in data.dir) goes on the local layers first:
  // every part is built from the effective configuration.
  std::unique_ptr<sync::RemoteConfig> remote;
  {
    sync::RemoteConfigOptions ro;
    ro.dir = local_cfg.str("data.dir");
    ro.verify_key_file = local_cfg.str("config.verify_key_file");
    ro.check = [base = local_cfg](const std::map<std::string, std::string>& settings) {
      auto checked = base.withRemote(settings);
      return checked ? Result<void>() : Result<void>(checked.error());
    };
    auto opened = sync::RemoteConfig::open(std::move(ro));
    if (!opened) {
      return opened.error();
    }
    remote = std::move(*opened);
  }
  const auto layer = remote->layer();
  auto effective = local_cfg.withRemote(layer.settings, layer.details);
  if (!effective) {
    return effective.error();  // checked by RemoteConfig::open(): a programming error
  }
  const config::Config& cfg = *effective;
  spdlog::set_level(spdlog::level::from_str(cfg.str("log.level")));
  auto p = std::make_unique<Parts>(local_cfg, cfg);
  p->remote = std::move(remote);
  // Recent warnings and errors for `diagnostics`, from here on (start-up warnings included).
  p->log_ring = std::make_shared<RecentLogSink>();
  spdlog::default_logger()->sinks().push_back(p->log_ring);
  p->store_id = cfg.str("store.id");
  p->tenant = cfg.str("store.tenant");
  p->started_ms = p->clock.nowMs();

  auto pii = makePiiHasher(cfg);
  if (!pii) {
    return pii.error();
  }
  p->pii = std::move(*pii);

  const store::BufferOptions bo = bufferOptions(cfg);
  auto buffer = store::Buffer::open(bo);
  if (!buffer) {
    return buffer.error();
  }
  p->buffer = std::move(*buffer);

  auto profiles = openProfileCache(cfg);
  if (!profiles) {
    return profiles.error();
  }
  p->profiles = std::move(*profiles);

  store::InboxOptions inbox_options;
  inbox_options.dir = bo.dir;
  inbox_options.max_bytes = cfg.integer("sync.inbound_max_bytes");
  auto inbox = store::InboxStore::open(inbox_options);
  if (!inbox) {
    return inbox.error();
  }
  p->inbox = std::move(*inbox);

  p->ingest = std::make_unique<Ingest>(ingestOptions(cfg), *p->buffer, *p->pii, p->clock,
                                       p->profiles.get());
  p->ingest->setMetrics(p->metrics.get());
  if (cfg.boolean("visits.enabled")) {
    omni::VisitOptions vo;
    vo.dir = bo.dir;
    vo.store_id = p->store_id;
    vo.synchronous_full = bo.synchronous_full;
    vo.timeout_ms = cfg.integer("visits.timeout") * 1000;
    vo.max_bytes = static_cast<std::size_t>(cfg.integer("visits.max_bytes"));
    auto visits = omni::VisitTracker::open(vo, p->profiles.get(), p->clock);
    if (!visits) {
      return visits.error();
    }
    p->visits = std::move(*visits);
    p->ingest->setEnricher(p->visits.get());
    p->ingest->addObserver(p->visits.get());
  }
  p->privacy = std::make_unique<omni::Privacy>(
      *p->buffer, *p->profiles, *p->pii, bo.dir,
      [ingest = p->ingest.get()](std::vector<Event> events) -> Result<void> {
        if (auto r = ingest->append(std::move(events)); !r) {
          return r.error();
        }
        return {};
      });
  p->privacy->setPolicy(omni::ConsentPolicy::fromList(cfg.list("consent.on_refusal")));
  p->privacy->setPosSpoolDir(cfg.str("pos.spool_dir"));
  p->ingest->setRefusalDrop([privacy = p->privacy.get()](std::string_view type) {
    return privacy->dropsOnTrackingRefusal(type);
  });
  if (p->visits) {
    p->privacy->addHolder(p->visits.get());  // erasure reaches open visits
  }

  auto listen = config::parseHostPort(cfg.str("http.listen"));
  if (!listen) {
    return listen.error();
  }
  kiosk::HttpApiOptions ho;
  ho.host = listen->host;
  ho.port = listen->port;
  ho.store_id = p->store_id;
  ho.threads = static_cast<int>(cfg.integer("http.workers"));
  ho.max_connections = static_cast<std::size_t>(cfg.integer("http.max_connections"));
  ho.max_header_bytes = static_cast<std::size_t>(cfg.integer("http.max_header_bytes"));
  ho.max_headers = static_cast<std::size_t>(cfg.integer("http.max_headers"));
  ho.max_body_bytes = static_cast<std::size_t>(cfg.integer("http.max_body_bytes"));
  ho.header_timeout = std::chrono::seconds(cfg.integer("http.header_timeout"));
  ho.body_timeout = std::chrono::seconds(cfg.integer("http.body_timeout"));
  ho.keep_alive_timeout = std::chrono::seconds(cfg.integer("http.keepalive_timeout"));
  ho.max_streams = static_cast<std::size_t>(cfg.integer("triggers.stream_max_connections"));
  ho.customer_lookup = [cache = p->profiles.get()](const std::string& key) {
    return cache->profileJson(key);
  };
  ho.cart_lookup = [cache = p->profiles.get()](const std::string& key) {
    return cache->cartJson(key);
  };
  ho.personalization_refused = [cache = p->profiles.get()](const std::string& key) {
    auto [field, value] = kiosk::customerFieldOf(key);
    return cache->refused(std::map<std::string, std::string>{{field, value}},
                          ConsentPurpose::kPersonalization);
  };
  ho.cart_add = [cache = p->profiles.get(), clock = &p->clock](
                    const std::string& key, const std::string& item) -> Result<std::string> {
    auto cart = cache->addCartItem(key, nlohmann::json::parse(item), clock->nowMs());
    if (!cart) {
      return cart.error();
    }
    return cart->dump();
  };
  p->http_listen = cfg.str("http.listen");
  p->history = std::make_unique<History>(cfg.integer("console.sample_interval") * 1000);
  if (!cfg.str("http.tokens_file").empty()) {
    auto tokens = readTokens(cfg.str("http.tokens_file"));
    if (!tokens) {
      return tokens.error();
    }
    ho.tokens = std::move(*tokens);
  }

  const drivers::BuiltinSettings ds = driverSettings(cfg, p->store_id, p->buffer->epoch());
  auto sources = drivers::makeBuiltinSources(ds);
  if (!sources) {
    return sources.error();
  }
  for (auto& source : *sources) {
    p->sources.push_back(std::make_unique<SourceRunner>(std::move(source), *p->ingest));
  }

  auto uplink = uplinkOptions(cfg);
  if (!uplink) {
    return uplink.error();
  }
  p->topic_root = topicRoot(cfg);
  p->topic_all_config = allConfigTopic(cfg);
  // Both uplinks drain one queue (sync/claims.h) under one bandwidth cap.
  uplink->sync.space = sync::SeqSpace{p->buffer->epoch(), p->buffer->epochStartSeq()};
  uplink->sync.claims = std::make_shared<sync::ClaimBook>();
  uplink->sync.rate = std::make_shared<sync::RateLimit>(uplink->sync.max_bytes_per_sec);
  uplink->sync.metrics = p->metrics;

  std::unique_ptr<Agent> agent(new Agent(std::move(p)));
  Parts& parts = *agent->p_;
  Agent* self = agent.get();
  parts.http = std::make_unique<kiosk::HttpApi>(
      ho, *parts.ingest,
      [self, seen = std::make_shared<FullWatch>()] {
        kiosk::HealthReport h;
        const auto s = self->p_->buffer->stats();
        if (self->p_->stopping.load()) {
          h.reason = "stopping";
          return h;
        }
        // Producers are refused when the buffer is full and nothing low-priority is left to
        // evict for them, or when an append was refused lately (the counter moved within the
        // last 10 s) while it is still near full. A buffer filled with beacon.* events is not
        // degraded: kiosk and POS events still get in by evicting them.
        const int64_t now = self->p_->clock.nowMs();
        bool refused_lately = false;
        {
          std::lock_guard lock(seen->mu);
          if (s.rejected_full != seen->rejected) {
            seen->rejected = s.rejected_full;
            seen->changed_ms = now;
          }
          refused_lately = seen->changed_ms > 0 && now - seen->changed_ms < 10'000;
        }
        const bool near_full = s.cap_bytes > 0 && s.used_bytes >= s.cap_bytes - s.cap_bytes / 100;
        if (near_full && (s.pending[2] == 0 || refused_lately)) {
          h.degraded = true;
          h.reason = fmt::format(
              "buffer full ({} of {} bytes used, nothing left to evict): new events are refused "
              "with 503 until the uplink drains it; {} appends refused since start",
              s.used_bytes, s.cap_bytes, s.rejected_full);
          return h;
        }
        h.ready = true;
        return h;
      },
      [self] { return self->metricsText(); });
  parts.http->setMetrics(parts.metrics.get());
  {
    // Local triggers: the hold-out key is the tenant's when there is one, so that a customer
    // is held out of a rule in every store alike.
    std::string tenant_key;
    if (!cfg.str("identity.hmac_key_file").empty()) {
      auto key = PiiHasher::readKeyFile(cfg.str("identity.hmac_key_file"));
      if (!key) {
        return key.error();
      }
      tenant_key = *key;
    }
    auto key = omni::holdoutKey(tenant_key, cfg.str("data.dir"));
    if (!key) {
      return key.error();
    }
    omni::TriggerOptions to;
    to.max_state_bytes = static_cast<std::size_t>(cfg.integer("triggers.max_state_bytes"));
    to.holdout_key = std::move(*key);
    parts.triggers = std::make_unique<omni::TriggerEngine>(
        std::move(to), *parts.profiles, *parts.ingest, parts.clock,
        [http = parts.http.get()](const omni::Engagement& e) { http->publish(e.zone, e.json); });
    auto rules = omni::parseTriggerRules(cfg.str("triggers.rules"));
    if (!rules) {
      return rules.error();  // checked by the config layer: not expected
    }
    parts.triggers->setRules(std::move(*rules));
    parts.ingest->addObserver(parts.triggers.get());
    parts.privacy->addHolder(parts.triggers.get());  // erasure reaches rate limits and facts
  }
  parts.sync = std::make_unique<sync::SyncEngine>(
      *parts.buffer, uplink->mqtt, uplink->sync, [self] { return self->uplinkStatusJson(); },
      [self](const std::string& topic, const std::string& payload) {
        self->onCentreMessage(topic, payload);
      });
  parts.sync->setInbox(parts.inbox.get());
  parts.sync->setConnectMessages([self] {
    // The latest config report again: one made while offline reaches the centre.
    std::vector<sync::MqttMessage> out;
    if (auto r = self->p_->remote->lastReport()) {
      out.push_back({self->p_->topic_root + "/config/reported", r->toJson(), true});
    }
    return out;
  });
  parts.command_target = std::make_unique<CentreCommands>(*self);
  parts.commands = std::make_unique<CommandRunner>(*parts.inbox, *parts.command_target,
                                                   [self] { return self->p_->clock.nowMs(); });

  parts.claims = uplink->sync.claims;
  parts.rate = uplink->sync.rate;
  parts.https = self->makeHttpsUplink(parts.cfg);
  parts.control = std::make_unique<ControlServer>(
      controlSocketPath(parts.cfg),
      [self](const nlohmann::json& r) { return self->handleControl(r); });
  return agent;
}

std::shared_ptr<sync::HttpsUplink> Agent::makeHttpsUplink(const config::Config& cfg) {
  Parts& p = *p_;
  if (cfg.str("https.base_url").empty()) {
    return nullptr;
  }
  Agent* self = this;
  sync::HttpsOptions hs;
  hs.client.base_url = cfg.str("https.base_url");
  hs.client.ca_file = cfg.str("https.ca_file");
  hs.client.cert_file = cfg.str("https.cert_file");
  hs.client.key_file = cfg.str("https.key_file");
  hs.client.insecure_skip_verify = cfg.boolean("https.insecure_skip_verify");
  hs.client.pinned_pubkey = cfg.str("https.pinned_pubkey");
  hs.client.timeout_s = static_cast<int>(cfg.integer("https.timeout"));
  hs.client.user_agent = std::string("omniedge/") + kVersion;
  if (hs.client.insecure_skip_verify) {
    spdlog::warn(
        "https.insecure_skip_verify is true: the HTTPS server's certificate is NOT verified; "
        "anyone on the path can read and change what goes to the centre");
  }
  hs.store_id = p.store_id;
  hs.agent_version = kVersion;
  hs.space = sync::SeqSpace{p.buffer->epoch(), p.buffer->epochStartSeq()};
  hs.batch_max_events = static_cast<std::size_t>(cfg.integer("sync.batch_max_events"));
  hs.batch_max_bytes = static_cast<std::size_t>(cfg.integer("sync.batch_max_bytes"));
  hs.backfill_threshold = cfg.integer("sync.backfill_threshold");
  hs.failover_after_ms = static_cast<int>(cfg.integer("https.failover_after") * 1000);
  hs.retry_min_ms = static_cast<int>(cfg.integer("mqtt.reconnect_min") * 1000);
  hs.retry_max_ms = static_cast<int>(cfg.integer("mqtt.reconnect_max") * 1000);
  hs.pending_count = [buffer = p.buffer.get()] {
    const auto st = buffer->stats();
    return st.pending[0] + st.pending[1] + st.pending[2];
  };
  hs.cursor_file = fs::path(cfg.str("data.dir")) / "profiles.cursor";
  hs.profile_resync_after_ms = cfg.integer("sync.profile_resync_after") * 1000;
  hs.metrics = p.metrics;
  return std::make_shared<sync::HttpsUplink>(
      *p.buffer, hs, p.claims, p.rate, [self](const std::string& payload) -> Result<void> {
        auto r = self->p_->profiles->apply(payload, self->p_->clock.nowMs());
        if (!r) {
          return r.error();
        }
        spdlog::debug("profiles: snapshot page: {} upserted, {} deleted", r->upserts, r->deletes);
        self->applyRefusals(r->refusals);
        return {};
      });
}

std::shared_ptr<sync::HttpsUplink> Agent::https() const {
  std::lock_guard lock(p_->https_mu);
  return p_->https;
}

std::string Agent::uplinkStatusJson() const {
  nlohmann::json j = {
      {"state", "online"},
      {"version", kVersion},
      {"started_at", formatRfc3339Ms(p_->started_ms)},
      {"config_version", p_->config_version.load()},
  };
  // The epoch and the highest seq given so far let the centre see the tail after the last
  // batch (tools/central-sim/README.md): with nothing pending, every seq up to seq_last arrived
  // or was reported dropped. Read together with the queue, from one snapshot.
  const auto st = p_->buffer->stats();
  j["epoch"] = p_->buffer->epoch();
  j["seq_last"] = st.last_seq;
  j["queue"] = queueJson(st, p_->clock.nowMs());
  return j.dump();
}

// The `uplink.https` object of status (docs in sync/https_uplink.h).
nlohmann::json httpsStatusJson(const sync::HttpsUplink* https) {
  if (https == nullptr) {
    return {{"state", "not_configured"}};
  }
  const auto h = https->status();
  auto at = [](int64_t ms) { return ms > 0 ? formatRfc3339Ms(ms) : std::string(); };
  return {
      {"state", h.state},
      {"since", at(h.since_ms)},
      {"base_url", h.base_url},
      {"last_error", h.last_error},
      {"last_error_at", at(h.last_error_ms)},
      {"last_error_resolved", h.last_error_resolved},
      {"next_attempt_at", h.state == "backoff" ? at(h.next_attempt_ms) : ""},
      {"last_status_code", h.last_status_code},
      {"requests", h.requests},
      {"batches", h.batches},
      {"batches_conflict", h.batches_conflict},
      {"events", h.events},
      {"bytes_sent", h.bytes_sent},
      {"batches_refused", h.batches_refused},
      {"quarantined", h.quarantined},
      {"backfill_floor_seq", h.floor_seq},
      {"profiles",
       {{"pending", h.profiles_pending},
        {"pages", h.profile_pages},
        {"received", h.profiles_received},
        {"last_snapshot_at", at(h.profiles_last_ms)},
        {"cursor", h.profiles_cursor}}},
  };
}

// The newest quarantined events (`omniedge retry-quarantine` sends them all again).
nlohmann::json quarantineList(store::Buffer& buffer) {
  nlohmann::json list = nlohmann::json::array();
  if (auto q = buffer.quarantined(10); q) {
    for (const auto& e : *q) {
      list.push_back({{"seq", e.seq},
                      {"id", e.id},
                      {"type", e.type},
                      {"quarantined_at", formatRfc3339Ms(e.quarantined_ms)},
                      {"reason", e.reason}});
    }
  }
  return list;
}

nlohmann::json Agent::status() const {
  const int64_t now = p_->clock.nowMs();
  const auto s = p_->buffer->stats();
  const auto u = p_->sync->status();
  double ingest_rate = 0;
  double delivery_rate = 0;
  {
    std::lock_guard lock(p_->rates_mu);
    ingest_rate = p_->ingest_rate.perSecond();
    delivery_rate = p_->delivery_rate.perSecond();
  }
  nlohmann::json drivers = nlohmann::json::array(
      {{{"name", "kiosk-http"}, {"state", "running"}, {"listen", p_->http_listen}}});
  {
    std::lock_guard lock(p_->sources_mu);
    for (const auto& source : p_->sources) {
      drivers.push_back(source->state());
    }
  }
  struct statvfs vfs {};
  int64_t free_bytes = -1;
  if (statvfs(p_->cfg.str("data.dir").c_str(), &vfs) == 0) {
    free_bytes = static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
  }
  nlohmann::json out = {
      {"daemon", "running"},
      {"pid", static_cast<int64_t>(getpid())},
      {"version", kVersion},
      {"git_revision", kGitRevision},
      {"started_at", formatRfc3339Ms(p_->started_ms)},
      {"uptime_s", (now - p_->started_ms) / 1000},
      {"store_id", p_->store_id},
      {"tenant", p_->tenant},
      {"config_version", p_->config_version.load()},
      {"profiles_cached", p_->profiles->size()},
      {"profiles", profilesJson(p_->profiles->stats())},
      {"visits", visitsJson(p_->visits.get())},
      {"uplink",
       {{"mqtt",
         {{"state", u.connected ? "connected" : "disconnected"},
          {"since", u.since_ms > 0 ? formatRfc3339Ms(u.since_ms) : ""},
          {"url", u.url},
          {"node", u.node},
          {"nodes", liveConfig()->list("mqtt.url")},
          {"mqtt_version", u.mqtt_version == 5   ? "5"
                           : u.mqtt_version == 4 ? "3.1.1"
                                                 : ""},
          {"last_error", u.last_error},
          {"last_error_at", u.last_error_ms > 0 ? formatRfc3339Ms(u.last_error_ms) : ""},
          {"last_error_resolved", u.last_error_resolved},
          {"next_attempt_at",
           !u.connected && u.next_attempt_ms > 0 ? formatRfc3339Ms(u.next_attempt_ms) : ""},
          {"connect_attempts", u.connect_attempts},
          {"reconnects", u.reconnects},
          {"max_packet_bytes", u.max_packet_bytes},
          {"max_packet_source", u.max_packet_source},
          {"batches_sent", u.batches_sent},
          {"batches_acked", u.batches_acked},
          {"batches_refused", u.batches_refused},
          {"batches_split", u.batches_split},
          {"events_delivered", u.events_delivered},
          {"events_quarantined", u.events_quarantined},
          {"events_held", u.events_held},
          {"bytes_sent", u.bytes_sent},
          {"inflight_batches", u.inflight}}},
        {"https", httpsStatusJson(https().get())}}},
      {"quarantine",
       {{"events", s.quarantine_events},
        {"bytes", s.quarantine_bytes},
        {"quarantined_since_start", s.quarantined},
        {"retried_since_start", s.quarantine_retried},
        {"latest_reason",
         !s.quarantine_last_reason.empty() ? s.quarantine_last_reason : u.last_quarantine_reason},
        {"oldest_at", s.quarantine_oldest_ms > 0 ? formatRfc3339Ms(s.quarantine_oldest_ms) : ""},
        {"latest_at", u.last_quarantine_ms > 0 ? formatRfc3339Ms(u.last_quarantine_ms) : ""}}},
      {"epoch", p_->buffer->epoch()},
      {"seq_last", s.last_seq},
      {"quarantined_events", quarantineList(*p_->buffer)},
      {"queue", queueJson(s, now)},
      {"rates", {{"ingest_per_s", ingest_rate}, {"delivery_per_s", delivery_rate}}},
      {"drivers", drivers},
      {"counters",
       {{"appended", s.appended},
        {"duplicates", s.duplicates},
        {"delivered", s.acknowledged},
        {"evicted", s.evicted},
        {"rejected_full", s.rejected_full},
        {"commits", s.commits},
        {"commit_windows", s.commit_windows},
        {"reads_from_ring", s.reads_from_ring},
        {"reads_from_file", s.reads_from_file}}},
      {"disk",
       {{"data_dir", p_->cfg.str("data.dir")},
        {"buffer_file_bytes", s.file_bytes},
        {"wal_bytes", s.wal_bytes},
        {"buffer_used_bytes", s.used_bytes},
        {"buffer_cap_bytes", s.cap_bytes},
        // Producers are being refused: the last request was refused "full", none got in since.
        {"buffer_full", s.full_since_ms > 0},
        {"full_since", s.full_since_ms > 0 ? formatRfc3339Ms(s.full_since_ms) : ""},
        {"last_full_refusal_at", s.last_full_ms > 0 ? formatRfc3339Ms(s.last_full_ms) : ""},
        {"io_errors", s.io_errors},
        {"wal_kept", s.wal_kept},
        {"wal_kept_reason", s.wal_kept_reason},
        {"unclean_shutdown_before_start", p_->buffer->openReport().unclean_shutdown},
        {"free_bytes", free_bytes}}},
  };
  addRemoteStatus(out);
  return out;
}

nlohmann::json Agent::history() const {
  nlohmann::json at = nlohmann::json::array();
  nlohmann::json ingested = nlohmann::json::array();
  nlohmann::json delivered = nlohmann::json::array();
  nlohmann::json queue = nlohmann::json::array();
  nlohmann::json queue_bytes = nlohmann::json::array();
  for (const HistorySample& h : p_->history->samples()) {
    at.push_back(h.at_ms);
    ingested.push_back(h.ingested);
    delivered.push_back(h.delivered);
    queue.push_back(h.queue);
    queue_bytes.push_back(h.queue_bytes);
  }
  return {{"interval_s", p_->history->intervalMs() / 1000},
          {"capacity", p_->history->capacity()},
          {"samples",
           {{"at_ms", std::move(at)},
            {"ingested", std::move(ingested)},
            {"delivered", std::move(delivered)},
            {"queue", std::move(queue)},
            {"queue_bytes", std::move(queue_bytes)}}}};
}

std::vector<store::RecentEvent> Agent::recentEvents(int64_t after_seq, std::size_t limit) const {
  return p_->buffer->recent(after_seq, limit);
}

Result<void> Agent::mountHttp(std::string prefix, kiosk::GetHandler handler) {
  return p_->http->mount(std::move(prefix), std::move(handler));
}

namespace {

// A label value as the exposition format wants it: backslash, quote and newline escaped.
std::string labelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (const char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// The process's resident set from /proc/self/statm (pages), in bytes; -1 when unreadable.
int64_t residentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0;
  int64_t resident = 0;
  if (!(statm >> size >> resident)) {
    return -1;
  }
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace

// Every family is documented in docs/metrics.md: keep the two in step.
std::string Agent::metricsText() const {
  const auto s = p_->buffer->stats();
  const auto u = p_->sync->status();
  const EventMetrics& em = *p_->metrics;
  const int64_t now = p_->clock.nowMs();
  std::string m;
  m.reserve(16 * 1024);
  auto family = [&m](std::string_view name, std::string_view type, std::string_view help) {
    m += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto sample = [&m](std::string_view name, const std::string& labels, auto value) {
    m += fmt::format("{}{} {}\n", name, labels.empty() ? labels : "{" + labels + "}", value);
  };
  auto line = [&](const char* name, const char* type, const char* help, auto value,
                  const std::string& labels = "") {
    family(name, type, help);
    sample(name, labels, value);
  };

  // Events through the pipeline, by channel (the first part of the type, a fixed set).
  family("omniedge_events_ingested_total", "counter",
         "Events accepted into the buffer (stored, or already there), by channel.");
  for (std::size_t c = 0; c < kChannelCount; ++c) {
    sample("omniedge_events_ingested_total", fmt::format("channel=\"{}\"", kChannelNames[c]),
           em.ingestedCount(static_cast<Channel>(c)));
  }
  family("omniedge_events_delivered_total", "counter",
         "Events in batches the centre acknowledged (MQTT PUBACK, HTTPS 2xx), by channel; a "
         "batch sent again after a lost connection counts again.");
  for (std::size_t c = 0; c < kChannelCount; ++c) {
    sample("omniedge_events_delivered_total", fmt::format("channel=\"{}\"", kChannelNames[c]),
           em.deliveredCount(static_cast<Channel>(c)));
  }
  family("omniedge_events_rejected_total", "counter",
         "Events refused at ingest, by channel and reason (invalid, too_large, full, stopping, "
         "io, other); a request refused as a whole counts each of its events.");
  for (std::size_t c = 0; c < kChannelCount; ++c) {
    for (std::size_t r = 0; r < kRejectReasonCount; ++r) {
      sample("omniedge_events_rejected_total",
             fmt::format("channel=\"{}\",reason=\"{}\"", kChannelNames[c], kRejectReasonNames[r]),
             em.rejectedCount(static_cast<Channel>(c), static_cast<RejectReason>(r)));
    }
  }
  family("omniedge_events_dropped_total", "counter",
         "Events dropped on purpose, by channel and reason: consent (the customer refused "
         "tracking), evicted (low priority, to make room when the buffer is full).");
  for (std::size_t c = 0; c < kChannelCount; ++c) {
    const auto channel = static_cast<Channel>(c);
    sample("omniedge_events_dropped_total",
           fmt::format("channel=\"{}\",reason=\"consent\"", kChannelNames[c]),
           em.consentDroppedCount(channel));
    // Only Priority::kLow is ever evicted, and beacon.* is the only low-priority channel.
    sample("omniedge_events_dropped_total",
           fmt::format("channel=\"{}\",reason=\"evicted\"", kChannelNames[c]),
           channel == Channel::kBeacon ? s.evicted : 0);
  }
  line("omniedge_events_appended_total", "counter", "Events stored in the buffer.", s.appended);
  line("omniedge_events_duplicate_total", "counter", "Events ignored as already buffered.",
       s.duplicates);
  line("omniedge_events_evicted_total", "counter", "Low-priority events evicted when full.",
       s.evicted);
  line("omniedge_appends_rejected_full_total", "counter", "Appends pushed back: buffer full.",
       s.rejected_full);

  // The queue.
  static constexpr std::array<const char*, 3> kPriorities = {"high", "normal", "low"};
  family("omniedge_buffer_pending", "gauge", "Events waiting for delivery, by priority.");
  for (std::size_t p = 0; p < 3; ++p) {
    sample("omniedge_buffer_pending", fmt::format("priority=\"{}\"", kPriorities[p]), s.pending[p]);
  }
  family("omniedge_buffer_pending_bytes", "gauge",
         "Bytes of the events waiting for delivery, by priority.");
  for (std::size_t p = 0; p < 3; ++p) {
    sample("omniedge_buffer_pending_bytes", fmt::format("priority=\"{}\"", kPriorities[p]),
           s.pending_bytes_by_priority[p]);
  }
  line("omniedge_buffer_oldest_pending_age_seconds", "gauge",
       "Age of the oldest event waiting for delivery (since it was received); 0 when none.",
       s.oldest_pending_ms > 0
           ? static_cast<double>(std::max<int64_t>(0, now - s.oldest_pending_ms)) / 1000.0
           : 0.0);
  line("omniedge_buffer_bytes", "gauge", "Bytes the pending events occupy.", s.used_bytes);
  line("omniedge_buffer_cap_bytes", "gauge", "What the buffer may grow to now.", s.cap_bytes);
  line("omniedge_buffer_file_bytes", "gauge", "Size of buffer.db.", s.file_bytes);
  line("omniedge_buffer_wal_bytes", "gauge", "Size of buffer.db-wal.", s.wal_bytes);
  line("omniedge_buffer_wal_kept", "gauge",
       "1 when a failed sync of buffer.db keeps the WAL until a restart (check the disk).",
       s.wal_kept ? 1 : 0);
  line("omniedge_buffer_io_errors_total", "counter",
       "Buffer transactions rolled back on an I/O error or a full disk.", s.io_errors);
  {
    struct statvfs vfs {};
    const std::string dir = p_->cfg.str("data.dir");
    if (statvfs(dir.c_str(), &vfs) == 0) {
      line("omniedge_data_dir_free_bytes", "gauge",
           "Bytes free for the agent on the data dir's filesystem.",
           static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize));
    }
  }
  if (const int64_t rss = residentBytes(); rss >= 0) {
    line("omniedge_process_resident_memory_bytes", "gauge", "Resident memory of the agent.", rss);
  }
  line("omniedge_config_version", "gauge",
       "Version of the remote configuration in force (0: none applied).",
       p_->config_version.load());

  // The uplinks.
  const auto https = this->https();
  std::optional<sync::HttpsStatus> h;
  if (https) {
    h = https->status();
  }
  const auto https_up = [](const sync::HttpsStatus& st) {
    return st.state == "backoff" || st.state == "unavailable" || st.state == "stopped" ? 0 : 1;
  };
  family("omniedge_uplink_connected", "gauge",
         "1 while the uplink can deliver (MQTT connected; HTTPS not backing off), with the node "
         "in use (or tried last).");
  sample("omniedge_uplink_connected", fmt::format("link=\"mqtt\",node=\"{}\"", labelValue(u.url)),
         u.connected ? 1 : 0);
  if (h) {
    sample("omniedge_uplink_connected",
           fmt::format("link=\"https\",node=\"{}\"", labelValue(h->base_url)), https_up(*h));
  }
  family("omniedge_uplink_reconnects_total", "counter",
         "MQTT: successful connects after the first; HTTPS: deliveries right after a failure.");
  sample("omniedge_uplink_reconnects_total", "link=\"mqtt\"", u.reconnects);
  if (h) {
    sample("omniedge_uplink_reconnects_total", "link=\"https\"", h->recoveries);
  }
  family("omniedge_uplink_batch_latency_seconds", "histogram",
         "Time from publishing a batch to its PUBACK (MQTT) or from a batch request to its 2xx "
         "(HTTPS).");
  for (std::size_t l = 0; l < kLinkCount; ++l) {
    em.batchLatency(static_cast<Link>(l))
        .appendSamples(m, "omniedge_uplink_batch_latency_seconds",
                       fmt::format("link=\"{}\"", kLinkNames[l]));
  }
  line("omniedge_mqtt_connected", "gauge", "1 while the uplink is connected.", u.connected ? 1 : 0);
  line("omniedge_mqtt_batches_sent_total", "counter", "Batches published.", u.batches_sent);
  line("omniedge_mqtt_reconnects_total", "counter", "Uplink reconnects.", u.reconnects);
  line("omniedge_mqtt_connect_attempts_total", "counter", "Uplink connection attempts.",
       u.connect_attempts);
  line("omniedge_mqtt_batches_acked_total", "counter", "Batches PUBACKed by the broker.",
       u.batches_acked);
  line("omniedge_mqtt_batches_refused_total", "counter",
       "Batches the broker refused (PUBACK >= 0x80, or it closed the connection after them).",
       u.batches_refused);
  line("omniedge_mqtt_bytes_sent_total", "counter", "Batch payload bytes published.", u.bytes_sent);
  line("omniedge_mqtt_inflight_batches", "gauge", "Batches awaiting their PUBACK.", u.inflight);
  line("omniedge_mqtt_max_packet_bytes", "gauge", "Bound on every batch PUBLISH.",
       u.max_packet_bytes);
  line("omniedge_mqtt_events_quarantined_total", "counter",
       "Events the uplink moved to the quarantine (the broker will never take them).",
       u.events_quarantined);
  if (h) {
    line("omniedge_https_up", "gauge",
         "1 while the HTTPS uplink is usable (not backing off, libcurl loaded).", https_up(*h));
    line("omniedge_https_backfilling", "gauge",
         "1 while HTTPS sends batches (backfill or MQTT failover).",
         h->state == "backfill" || h->state == "failover" ? 1 : 0);
    line("omniedge_https_requests_total", "counter", "Batch POSTs made over HTTPS.", h->requests);
    line("omniedge_https_batches_total", "counter", "Batches delivered over HTTPS (2xx or 409).",
         h->batches);
    line("omniedge_https_events_total", "counter", "Events in batches delivered over HTTPS.",
         h->events);
    line("omniedge_https_bytes_sent_total", "counter", "Batch bodies sent over HTTPS (gzip).",
         h->bytes_sent);
    line("omniedge_https_batches_refused_total", "counter",
         "HTTPS batches answered with a 4xx about the batch.", h->batches_refused);
    line("omniedge_https_events_quarantined_total", "counter",
         "Events moved to the quarantine after an HTTPS 4xx.", h->quarantined);
    line("omniedge_https_last_status_code", "gauge", "Status of the latest HTTPS answer.",
         h->last_status_code);
    line("omniedge_https_profile_pages_total", "counter", "Profile snapshot pages fetched.",
         h->profile_pages);
  }
  line("omniedge_quarantine_events", "gauge", "Events in the quarantine table.",
       s.quarantine_events);
  line("omniedge_quarantine_bytes", "gauge", "Bytes of the events in the quarantine table.",
       s.quarantine_bytes);

  // The drivers: the kiosk API (this listener) and one runner per configured source.
  {
    std::vector<nlohmann::json> drivers;
    {
      std::lock_guard lock(p_->sources_mu);
      for (const auto& source : p_->sources) {
        drivers.push_back(source->state());
      }
    }
    static constexpr std::array<const char*, 3> kStates = {"running", "failing", "stopped"};
    family("omniedge_driver_state", "gauge",
           "1 for the state each driver is in (running, failing, stopped), 0 for the others.");
    for (const char* state : kStates) {
      sample("omniedge_driver_state", fmt::format("driver=\"kiosk-http\",state=\"{}\"", state),
             std::string_view(state) == "running" ? 1 : 0);
    }
    for (const auto& d : drivers) {
      const std::string name = labelValue(d.value("name", std::string()));
      const std::string now_state = d.value("state", std::string());
      for (const char* state : kStates) {
        sample("omniedge_driver_state", fmt::format("driver=\"{}\",state=\"{}\"", name, state),
               now_state == state ? 1 : 0);
      }
    }
    family("omniedge_driver_errors_total", "counter",
           "Failed polls plus inputs the driver refused (a POS file moved to rejected/, a "
           "malformed gateway message); the kiosk API's refusals are "
           "omniedge_http_requests_total.");
    for (const auto& d : drivers) {
      sample("omniedge_driver_errors_total",
             fmt::format("driver=\"{}\"", labelValue(d.value("name", std::string()))),
             d.value("errors", uint64_t{0}));
    }
  }
  {
    const auto t = p_->triggers->stats();
    m += "# HELP omniedge_triggers_total Trigger evaluations by outcome (docs/omnichannel.md).\n"
         "# TYPE omniedge_triggers_total counter\n";
    for (const auto& [outcome, n] :
         {std::pair{"fired", t.fired}, std::pair{"held_out", t.held_out},
          std::pair{"shown", t.shown}, std::pair{"rate_limited", t.rate_limited},
          std::pair{"no_personalization", t.no_personalization},
          std::pair{"no_marketing", t.no_marketing}, std::pair{"queue_dropped", t.queue_dropped},
          std::pair{"append_failed", t.append_failed}}) {
      m += fmt::format("omniedge_triggers_total{{outcome=\"{}\"}} {}\n", outcome, n);
    }
    line("omniedge_triggers_rules", "gauge", "Trigger rules in force.", t.rules);
    line("omniedge_triggers_state_bytes", "gauge",
         "Memory held for triggers (profile facts, rate limits).", t.state_bytes);
  }
  m += p_->http->metricsText();
  return m;
}

nlohmann::json Agent::handleControl(const nlohmann::json& request) {
  constexpr const char* kCommands =
      "status, tail, flush, import, test_event, retry_quarantine, resync_profiles, forget";
  if (!request.contains("cmd") || !request["cmd"].is_string()) {
    return refusal(makeError("invalid_request",
                             std::string("field 'cmd' must be a string, one of ") + kCommands,
                             "cmd"));
  }
  const std::string cmd = request["cmd"].get<std::string>();
  const RequestFields fields(request);
  if (cmd == "status" || cmd == "flush") {
    if (auto r = fields.only({"cmd"}); !r) {
      return refusal(r.error());
    }
    if (cmd == "flush") {
      return {{"ok", true}, {"result", p_->command_target->flush()}};
    }
    return {{"ok", true}, {"status", status()}};
  }
  // The same actions as the centre's commands (R/cmd), from the technician's CLI.
  if (cmd == "retry_quarantine" || cmd == "resync_profiles") {
    if (auto r = fields.only({"cmd"}); !r) {
      return refusal(r.error());
    }
    if (cmd == "retry_quarantine") {
      // The writer moves them back (new seqs) in its own transactions: milliseconds to seconds.
      auto moved = p_->command_target->retryQuarantine();
      if (!moved) {
        return refusal(moved.error());
      }
      return {{"ok", true}, {"moved", *moved}};
    }
    auto r = p_->command_target->resyncProfiles();
    if (!r) {
      return refusal(r.error());
    }
    return {{"ok", true}, {"result", *r}};
  }
  if (cmd == "forget") {
    auto only = fields.only({"cmd", "key", "dry_run"});
    if (!only) {
      return refusal(only.error());
    }
    if (!request.contains("key") || !request["key"].is_string()) {
      return refusal(makeError("invalid_request", "field 'key' is required (a string)", "key"));
    }
    if (request.contains("dry_run") && !request["dry_run"].is_boolean()) {
      return refusal(
          makeError("invalid_request", "field 'dry_run' must be true or false", "dry_run"));
    }
    auto r =
        p_->privacy->forget(request["key"].get<std::string>(), request.value("dry_run", false));
    if (!r) {
      return refusal(r.error());
    }
    return {{"ok", true}, {"result", *r}};
  }
  if (cmd == "tail") {
    constexpr auto kRing = static_cast<int64_t>(store::Buffer::kRecentEvents);
    auto only = fields.only({"cmd", "after_seq", "limit", "type"});
    auto after = fields.integer("after_seq", 0, 0, INT64_MAX);
    auto limit = fields.integer("limit", 20, 0, kRing);
    auto glob = fields.text("type", "*", 256);
    for (const Error* e : {only ? nullptr : &only.error(), after ? nullptr : &after.error(),
                           limit ? nullptr : &limit.error(), glob ? nullptr : &glob.error()}) {
      if (e != nullptr) {
        return refusal(*e);
      }
    }
    // From the ring of recent events: delivered events have left the file already.
    const int64_t last_seq = p_->buffer->stats().last_seq;
    auto rows = p_->buffer->recent(*after, store::Buffer::kRecentEvents);
    std::vector<const store::RecentEvent*> matching;
    for (const auto& r : rows) {
      if (fnmatch(glob->c_str(), r.type.c_str(), 0) == 0) {
        matching.push_back(&r);
      }
    }
    const std::size_t skip =
        matching.size() > static_cast<std::size_t>(*limit) ? matching.size() - *limit : 0;
    nlohmann::json events = nlohmann::json::array();
    for (std::size_t i = skip; i < matching.size(); ++i) {
      events.push_back(
          {{"seq", matching[i]->seq}, {"type", matching[i]->type}, {"body", matching[i]->body}});
    }
    return {{"ok", true},
            {"events", std::move(events)},
            {"last_seq", std::max(last_seq, rows.empty() ? int64_t{0} : rows.back().seq)},
            {"ring_oldest_seq", rows.empty() ? int64_t{0} : rows.front().seq},
            {"ring_events", rows.size()},
            {"ring_size", kRing}};
  }
  if (cmd == "test_event") {
    auto only = fields.only({"cmd", "type"});
    auto type = fields.text("type", "agent.test", 256);
    if (!only || !type) {
      return refusal(!only ? only.error() : type.error());
    }
    Event e;
    // Given here, not by Ingest: an id in the index, which `omniedge send-test-event` looks up
    // until the event is delivered (store::IdOrigin).
    e.id = makeUuidV7(p_->clock.nowMs());
    e.type = *type;
    e.source = "cli";
    e.data_json = R"({"note":"omniedge send-test-event"})";
    // The worker waits for this group commit like any producer (milliseconds).
    auto r = p_->ingest->append({std::move(e)});
    if (!r) {
      return refusalAt(r.error());
    }
    return {{"ok", true}, {"ids", r->ids}, {"stored", r->stored}, {"duplicates", r->duplicates}};
  }
  if (cmd == "import") {
    auto only = fields.only({"cmd", "events", "dry_run"});
    auto dry_run = fields.boolean("dry_run", false);
    if (!only || !dry_run) {
      return refusal(!only ? only.error() : dry_run.error());
    }
    if (!request.contains("events") || !request["events"].is_array()) {
      return refusal(
          makeError("invalid_request", "field 'events' must be an array of events", "events"));
    }
    const auto& list = request["events"];
    std::vector<Event> events;
    events.reserve(list.size());
    for (std::size_t i = 0; i < list.size(); ++i) {
      auto e = eventFromEnvelope(list[i], "events[" + std::to_string(i) + "]");
      if (!e) {
        nlohmann::json j = refusal(e.error());
        j["index"] = i;
        return j;
      }
      events.push_back(std::move(*e));
    }
    if (*dry_run) {
      // Ingest's own checks, without storing: `import` names a bad line before importing any.
      const int64_t now = p_->clock.nowMs();
      for (std::size_t i = 0; i < events.size(); ++i) {
        if (auto prepared = p_->ingest->prepare(events[i], i, now); !prepared) {
          return refusalAt(prepared.error());
        }
      }
      return {{"ok", true}, {"valid", events.size()}};
    }
    auto r = p_->ingest->appendExported(std::move(events));
    if (!r) {
      return refusalAt(r.error());
    }
    return {{"ok", true},
            {"stored", r->stored},
            {"duplicates", r->duplicates},
            {"consent_dropped", r->consent_dropped}};
  }
  return refusal(makeError("invalid_request",
                           "unknown command '" + cmd + "' (known: " + kCommands + ")", "cmd"));
}

void Agent::housekeeping() {
  p_->privacy->tick();
  const int64_t now = p_->clock.nowMs();
  const auto s = p_->buffer->stats();
  {
    std::lock_guard lock(p_->rates_mu);
    p_->ingest_rate.sample(now, s.appended);
    p_->delivery_rate.sample(now, s.acknowledged);
  }
  p_->history->offer({now, static_cast<int64_t>(s.appended), static_cast<int64_t>(s.acknowledged),
                      s.pending[0] + s.pending[1] + s.pending[2], s.pending_bytes});
  // Every eviction and quarantine is reported upstream with the seqs it took, so the centre can
  // tell them from a loss: nothing is dropped silently.
  const std::string& epoch = p_->buffer->epoch();
  const auto max_event = static_cast<std::size_t>(p_->cfg.integer("buffer.max_event_bytes"));
  const auto dropped = p_->buffer->takeEvictions();
  if (!dropped.empty()) {
    std::vector<Event> reports;
    if (dropped.events > 0) {
      spdlog::warn("buffer: evicted {} low-priority events ({} bytes) to make room", dropped.events,
                   dropped.bytes);
      reports =
          rangeReports("agent.data_dropped", "agent", epoch,
                       "buffer full: low-priority events evicted oldest-first", dropped.ranges,
                       {{"priority", "low"},
                        {"events", dropped.events},
                        {"bytes", dropped.bytes},
                        {"oldest_received_at", formatRfc3339Ms(dropped.oldest_received_ms)},
                        {"newest_received_at", formatRfc3339Ms(dropped.newest_received_ms)},
                        {"evicted_total", s.evicted}},
                       max_event);
    }
    if (!dropped.skipped.empty()) {
      auto more = rangeReports(
          "agent.seqs_skipped", "agent", epoch,
          "no event: seqs numbered by a buffer transaction that rolled back (nothing was lost)",
          dropped.skipped, {{"events", 0}, {"seqs", seqCount(dropped.skipped)}}, max_event);
      reports.insert(reports.end(), more.begin(), more.end());
    }
    if (auto r = p_->ingest->append(std::move(reports)); !r) {
      // Kept for the next round: every eviction reaches the centre.
      p_->buffer->returnEvictions(dropped);
      spdlog::error("buffer: could not record agent.data_dropped yet: {}", r.error().message);
    }
  }
  const auto quarantined = p_->buffer->takeQuarantines();
  if (!quarantined.empty()) {
    std::vector<Event> reports;
    for (const auto& q : quarantined) {
      auto more = rangeReports("agent.data_quarantined", "agent", epoch, q.reason, q.ranges,
                               {{"events", q.events},
                                {"bytes", q.bytes},
                                {"quarantine_events_now", s.quarantine_events},
                                {"retry", "omniedge retry-quarantine"}},
                               max_event);
      reports.insert(reports.end(), more.begin(), more.end());
    }
    if (auto r = p_->ingest->append(std::move(reports)); !r) {
      p_->buffer->returnQuarantines(quarantined);
      spdlog::error("buffer: could not record agent.data_quarantined yet: {}", r.error().message);
    }
  }
}

namespace {

// SIGTERM ends the daemon within 5 s (contract §7), whatever a part does while it stops. Each
// part is bounded on its own (a request in flight is abandoned, a client trickling bytes is cut,
// the uplink's disconnect has a timeout); this is the backstop for what nobody foresaw, e.g. a
// write the disk never finishes. Leaving then is safe: every acknowledged event is already
// committed, and the next start reports the unclean stop like any crash.
class StopDeadline {
 public:
  static constexpr auto kLimit = std::chrono::milliseconds(4500);

  StopDeadline()
      : thread_([this] {
          std::unique_lock lock(mu_);
          if (!cv_.wait_for(lock, kLimit, [this] { return done_; })) {
            spdlog::critical(
                "stopping took more than {} ms, still waiting for {}: leaving now (every "
                "acknowledged event is already on disk; the next start reports an unclean stop)",
                kLimit.count(), stage_);
            spdlog::default_logger()->flush();
            std::_Exit(1);
          }
        }) {}
  ~StopDeadline() {
    done();
    thread_.join();
  }
  StopDeadline(const StopDeadline&) = delete;
  StopDeadline& operator=(const StopDeadline&) = delete;

  /// Names the part being stopped now, for the message. Thread: the main thread.
  void at(const char* stage) {
    std::lock_guard lock(mu_);
    stage_ = stage;
  }
  /// Everything stopped in time. Thread: the main thread.
  void done() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const char* stage_ = "the start of the stop";  // guarded by mu_
  bool done_ = false;                            // guarded by mu_
  std::thread thread_;                           // last: starts once the members exist
};

}  // namespace

int Agent::run() {
  Parts& p = *p_;
  const auto& report = p.buffer->openReport();
  if (report.recovered || !report.picked_up.empty()) {
    const auto max_event = static_cast<std::size_t>(p.cfg.integer("buffer.max_event_bytes"));
    const nlohmann::json about = {
        {"problem", report.problem},          {"moved_to", report.moved_to},
        {"salvaged_events", report.salvaged}, {"resumed", report.resumed},
        {"picked_up", report.picked_up},      {"picked_up_events", report.picked_up_events},
        {"new_epoch", p.buffer->epoch()}};
    std::vector<Event> events;
    if (!report.previous_epoch.empty()) {
      // The corrupt file's seqs of the events salvaged are retired: those events are pending
      // again under new seqs of the new epoch (the centre de-duplicates on id).
      events = rangeReports("agent.buffer_recovered", "agent", report.previous_epoch,
                            "buffer file corrupt: its pending events were recovered and are sent "
                            "again with seqs of epoch " +
                                p.buffer->epoch(),
                            report.recovered_seqs, about, max_event);
      if (!report.unreadable_seqs.empty()) {
        auto lost =
            rangeReports("agent.data_dropped", "agent", report.previous_epoch,
                         "buffer file corrupt: these seqs could not be read from it",
                         report.unreadable_seqs, {{"moved_to", report.moved_to}}, max_event);
        events.insert(events.end(), lost.begin(), lost.end());
      }
    } else {
      Event e;
      e.type = "agent.buffer_recovered";
      e.source = "agent";
      e.data_json = about.dump();
      events.push_back(std::move(e));
    }
    if (!report.skipped_seqs.empty()) {
      auto skipped = rangeReports(
          "agent.seqs_skipped", "agent", p.buffer->epoch(),
          "no event: seqs passed over while picking up " +
              (report.picked_up.empty() ? std::string("a corrupt file") : report.picked_up.front()),
          report.skipped_seqs, {{"events", 0}}, max_event);
      events.insert(events.end(), skipped.begin(), skipped.end());
    }
    if (auto r = p.ingest->append(std::move(events)); !r) {
      spdlog::error("could not record agent.buffer_recovered: {}", r.error().message);
    }
  }
  if (p.visits) {
    p.visits->start(*p.ingest);
  }
  if (auto r = p.http->start(); !r) {
    spdlog::critical("kiosk API: {}", r.error().message);
    return r.error().code == "config" ? 78 : 1;
  }
  p.triggers->start();
  for (auto& source : p.sources) {
    source->start();
  }
  if (auto r = p.control->start(); !r) {
    spdlog::critical("control socket: {}", r.error().message);
    return 1;
  }
  p.sync->start();
  remoteStart();
  if (auto https = this->https()) {
    https->start();
  }
  p.running.store(true);
  {
    Event e;
    e.type = "agent.started";
    e.source = "agent";
    e.data_json = nlohmann::json{{"version", kVersion},
                                 {"unclean_shutdown_before", report.unclean_shutdown},
                                 {"pending_at_start", p.buffer->stats().pending[0] +
                                                          p.buffer->stats().pending[1] +
                                                          p.buffer->stats().pending[2]}}
                      .dump();
    (void)p.ingest->append({e});
  }
  spdlog::info("omniedge {} running: store {} (tenant {}), kiosk API on {}, uplink {}{}", kVersion,
               p.store_id, p.tenant, p.http_listen, p.cfg.str("mqtt.url"),
               https() ? " and " + p.cfg.str("https.base_url") : std::string());
  systemdNotify("READY=1");

  const bool watchdog = systemdWatchdogInterval().has_value();
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  auto last_tick = std::chrono::steady_clock::now();
  // Memory given back (resident.h): start-up's code pages at READY and again 2 s later (the
  // first connection attempts, the drivers' first scans), and after a burst of work, once the
  // buffer has neither taken nor delivered an event for kQuietRelease: the code pages its paths
  // touched, the buffer's SQLite page caches, and the heap malloc keeps free.
  constexpr auto kQuietRelease = std::chrono::seconds(60);
  const auto release_memory = [&p](const char* why) {
    if (p.buffer && !p.buffer->releaseMemory(std::chrono::seconds(1))) {
      spdlog::debug("{}: the buffer's writer is busy; its page cache stays", why);
    }
    const std::size_t kb = releaseStartupPages();
    const bool trimmed = malloc_trim(0) == 1;
    spdlog::debug("{}: {} kB of code and read-only data pages given back{}", why, kb,
                  trimmed ? ", and free heap" : "");
  };
  release_memory("ready");
  bool released_startup = false;
  const auto started_at = last_tick;
  const auto activity = [&p] {  // events taken and delivered so far
    const auto st = p.buffer->stats();
    return st.appended + st.acknowledged;
  };
  uint64_t activity_seen = activity();
  uint64_t activity_at_release = activity_seen;
  auto activity_changed_at = last_tick;
  for (;;) {
    timespec timeout{0, 250 * 1000 * 1000};
    const int sig = sigtimedwait(&set, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("received {}, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      break;
    }
    if (sig == SIGHUP) {
      systemdNotify("RELOADING=1");
      reloadLocalConfig();
      systemdNotify("READY=1");
    }
    if (watchdog) {
      systemdNotify("WATCHDOG=1");
    }
    remoteTick();
    const auto now = std::chrono::steady_clock::now();
    if (now - last_tick >= std::chrono::seconds(1)) {
      last_tick = now;
      housekeeping();
      if (!released_startup && now - started_at >= std::chrono::seconds(2)) {
        released_startup = true;
        release_memory("start-up over");
      }
      if (const uint64_t seen = activity(); seen != activity_seen) {
        activity_seen = seen;
        activity_changed_at = now;
      } else if (activity_seen != activity_at_release &&
                 now - activity_changed_at >= kQuietRelease) {
        activity_at_release = activity_seen;
        release_memory("quiet for a minute");
      }
    }
  }
  systemdNotify("STOPPING=1");
  p.stopping.store(true);
  StopDeadline deadline;
  deadline.at("the kiosk API");
  p.http->stop();
  deadline.at("the drivers");
  for (auto& source : p.sources) {
    source->stop();
  }
  if (p.visits) {
    deadline.at("visits");
    p.visits->stop();  // after the producers: their last events reach visits.db
  }
  deadline.at("the control socket");
  p.control->stop();
  deadline.at("the MQTT uplink");
  p.sync->stop();
  if (auto https = this->https()) {
    deadline.at("the HTTPS uplink");
    https->stop();
  }
  deadline.at("the buffer's last commit");
  p.buffer->close();
  deadline.done();
  spdlog::info("stopped cleanly");
  return 0;
}

// ---- Remote config, commands and profiles from the centre --------------------------------
//
// onCentreMessage() runs on the sync thread, for each message the inbox kept, in arrival order.
// A config is checked and persisted there (sync::RemoteConfig) and applied on the main thread
// (remoteTick(), every 250 ms): applying may restart parts, the uplink among them.

namespace {

// Connection settings of the uplink (a change reconnects it); the reconnect bounds are not.
bool uplinkConnectionChanged(const config::Config& a, const config::Config& b) {
  for (const auto& [key, entry] : b.entries()) {
    if (key.starts_with("mqtt.") && key != "mqtt.reconnect_min" && key != "mqtt.reconnect_max" &&
        a.str(key) != entry.value) {
      return true;
    }
  }
  return false;
}

// Values that must never leave the store in diagnostics. Today every secret is a file whose
// path is shown and whose content is never read into the config; this catches a future key.
bool secretKey(const std::string& key) {
  if (key.ends_with("_file")) {
    return false;
  }
  return key.find("password") != std::string::npos || key.find("token") != std::string::npos ||
         key.find("secret") != std::string::npos;
}

}  // namespace

std::shared_ptr<const config::Config> Agent::liveConfig() const {
  std::lock_guard lock(p_->live_mu);
  return p_->live;
}

Result<ConfigChange> Agent::applyConfig(const config::Config& next) {
  Parts& p = *p_;
  const auto old = liveConfig();
  ConfigChange change;
  bool log_level = false;
  bool data_pii = false;
  bool uplink = false;
  bool https_link = false;           // the HTTPS uplink restarts with the new settings
  bool triggers = false;             // the trigger rules are replaced
  std::vector<std::string> drivers;  // names of the drivers to restart
  const auto restartDriver = [&drivers](const char* name) {
    if (std::find(drivers.begin(), drivers.end(), name) == drivers.end()) {
      drivers.emplace_back(name);
    }
  };
  for (const auto& [key, entry] : next.entries()) {
    if (old->str(key) == entry.value) {
      continue;
    }
    change.keys.push_back(key);
    if (key == "log.level") {
      log_level = true;
    } else if (key == "identity.data_pii") {
      data_pii = true;
    } else if (key == "consent.on_refusal") {
      // applied below, with every change
    } else if (key == "config.rollback_after") {
      // read when a config is applied
    } else if (key == "sync.inbound_max_bytes") {
      uplink = true;  // the memory bound at once; the inbox file's at the next start
      change.restart_needed.push_back(key);
    } else if (key.starts_with("mqtt.") || key.starts_with("sync.")) {
      uplink = true;
      // What the HTTPS uplink also reads (its batches, thresholds and retry bounds).
      https_link = https_link || key.starts_with("sync.batch_") ||
                   key == "sync.backfill_threshold" || key == "sync.profile_resync_after" ||
                   key.starts_with("mqtt.reconnect_");
    } else if (key.starts_with("https.")) {
      https_link = true;
    } else if (key.starts_with("pos.")) {
      restartDriver("pos");
    } else if (key.starts_with("beacon.")) {
      restartDriver("beacon");
    } else if (key == "triggers.rules") {
      triggers = true;
    } else {
      change.restart_needed.push_back(key);
    }
  }

  // Everything that can fail, before anything changes.
  std::optional<UplinkOptions> up;
  if (uplink) {
    auto u = uplinkOptions(next);
    if (!u) {
      return u.error();
    }
    up = std::move(*u);
  }
  std::optional<std::vector<omni::TriggerRule>> rules;
  if (triggers) {
    auto parsed = omni::parseTriggerRules(next.str("triggers.rules"));
    if (!parsed) {
      return parsed.error();
    }
    rules = std::move(*parsed);
  }
  std::vector<std::unique_ptr<Source>> fresh;
  if (!drivers.empty()) {
    drivers::BuiltinSettings ds = driverSettings(next, p.store_id, p.buffer->epoch());
    const auto wanted = [&drivers](const char* name) {
      return std::find(drivers.begin(), drivers.end(), name) != drivers.end();
    };
    if (!wanted("pos")) {
      ds.pos_spool_dir.clear();
    }
    if (!wanted("beacon")) {
      ds.beacon_mqtt_url.clear();
    }
    auto made = drivers::makeBuiltinSources(ds);
    if (!made) {
      return made.error();
    }
    fresh = std::move(*made);
  }

  {
    std::lock_guard lock(p.live_mu);
    p.live = std::make_shared<const config::Config>(next);
  }
  if (log_level) {
    {
      std::lock_guard lock(p.level_mu);
      p.level_until_ms = 0;  // the configured level wins over a temporary one
    }
    spdlog::set_level(spdlog::level::from_str(next.str("log.level")));
  }
  if (data_pii) {
    p.pii->setDataPolicy(parseDataPiiPolicy(next.str("identity.data_pii")));
  }
  if (rules) {
    spdlog::info("triggers: {} rule(s) now", rules->size());
    p.triggers->setRules(std::move(*rules));
  }
  p.privacy->setPolicy(omni::ConsentPolicy::fromList(next.list("consent.on_refusal")));
  p.privacy->setPosSpoolDir(next.str("pos.spool_dir"));
  if (up) {
    change.uplink_generation = p.sync->reconfigure(up->mqtt, up->sync);
    change.uplink_reconnects = uplinkConnectionChanged(*old, next);
  }
  if (https_link) {
    // Restarted in-process with the same claims: a request in flight is abandoned and its
    // events stay pending for whichever link sends next.
    auto https_next = makeHttpsUplink(next);
    std::shared_ptr<sync::HttpsUplink> https_gone;
    {
      std::lock_guard lock(p.https_mu);
      https_gone = std::exchange(p.https, https_next);
    }
    if (https_gone) {
      https_gone->stop();
    }
    if (https_next && p.running.load()) {
      https_next->start();
    }
    spdlog::info("config: the HTTPS uplink {}", https_next ? "restarted with the new settings"
                                                           : "is off (https.base_url is empty)");
  }
  for (const auto& name : drivers) {
    std::unique_ptr<Source> source;
    for (auto& s : fresh) {
      if (s && s->name() == name) {
        source = std::move(s);
      }
    }
    std::unique_ptr<SourceRunner> gone;
    bool start = false;
    {
      std::lock_guard lock(p.sources_mu);
      auto it = std::find_if(p.sources.begin(), p.sources.end(), [&name](const auto& r) {
        return r->state().value("name", "") == name;
      });
      if (it != p.sources.end() && source && (*it)->adopt(*source)) {
        // In place: the beacon driver keeps who is where for new zones and offsets. The fresh
        // source was only looked at; it never started.
        spdlog::info("config: the {} driver took the new settings in place", name);
        continue;
      }
      auto runner = source ? std::make_unique<SourceRunner>(std::move(source), *p.ingest) : nullptr;
      if (it != p.sources.end()) {
        gone = std::move(*it);
        if (runner) {
          *it = std::move(runner);
        } else {
          p.sources.erase(it);
        }
      } else if (runner) {
        p.sources.push_back(std::move(runner));
      }
      start = true;
    }
    // The old one first: both would read the same spool, or connect with the same client id.
    if (gone) {
      gone->stop();
    }
    if (start) {
      std::lock_guard lock(p.sources_mu);
      for (auto& r : p.sources) {
        if (r->state().value("name", "") == name) {
          r->start();
        }
      }
      spdlog::info("config: the {} driver restarted with the new settings", name);
    }
  }
  if (!change.keys.empty()) {
    std::string keys;
    for (const auto& k : change.keys) {
      keys += (keys.empty() ? "" : ", ") + k;
    }
    spdlog::info("config: applied {}{}", keys,
                 change.uplink_reconnects ? " (the uplink reconnects with the new settings)" : "");
  }
  for (const auto& k : change.restart_needed) {
    spdlog::warn("config: {} changed; it takes effect at the next start of the daemon", k);
  }
  return change;
}

void Agent::onCentreMessage(const std::string& topic, const std::string& payload) {
  Parts& p = *p_;
  if (topic == p.topic_root + "/profiles") {
    auto r = p.profiles->apply(payload, p.clock.nowMs());
    if (!r) {
      spdlog::warn("profiles: update refused: {}", r.error().message);
      return;
    }
    spdlog::debug("profiles: {} upserted, {} deleted", r->upserts, r->deletes);
    applyRefusals(r->refusals);
    // The cursor the next HTTPS snapshot continues from (resync-profiles forgets it).
    if (payload.find("\"cursor\"") != std::string::npos) {
      const auto msg = nlohmann::json::parse(payload, nullptr, false);
      if (msg.is_object() && msg.contains("cursor") && msg["cursor"].is_string()) {
        if (auto saved = p.inbox->setMeta("profile_cursor", msg["cursor"].get<std::string>());
            !saved) {
          spdlog::warn("profiles: cursor not kept: {}", saved.error().message);
        }
        if (auto https = this->https()) {
          https->noteProfileCursor(msg["cursor"].get<std::string>());
        }
      }
    }
  } else if (topic == p.topic_root + "/config/desired") {
    receiveConfig(false, payload);
  } else if (topic == p.topic_all_config) {
    receiveConfig(true, payload);
  } else if (topic == p.topic_root + "/cmd") {
    publishCommandResult(p.commands->handle(payload));
  }
}

void Agent::receiveConfig(bool all_stores, const std::string& payload) {
  Parts& p = *p_;
  if (payload.empty()) {
    // The centre removed the retained document; what was applied stays (send a new version
    // with other settings to change it).
    spdlog::info("remote config: the {} config was cleared on the broker; the applied one stays",
                 all_stores ? "all-stores" : "store");
    return;
  }
  auto out = p.remote->receive(all_stores ? sync::ConfigSource::kAll : sync::ConfigSource::kStore,
                               payload);
  switch (out.verdict) {
    case sync::RemoteConfig::Verdict::kIgnored:
      return;
    case sync::RemoteConfig::Verdict::kRejected:
      publishConfigReport(out.report);
      return;
    case sync::RemoteConfig::Verdict::kAccepted: {
      std::lock_guard lock(p.pending_mu);
      p.pending_layer.emplace(std::move(out.layer), std::move(out.report));
      return;
    }
  }
}

void Agent::publishCommandResult(const std::string& result) {
  // The journal keeps the answer until the broker has it: one lost with the connection or a
  // crash is sent again (at the next start), not only when the centre asks again.
  std::string id;
  const auto doc = nlohmann::json::parse(result, nullptr, false);
  if (doc.is_object() && doc.contains("id") && doc["id"].is_string()) {
    id = doc["id"].get<std::string>();
  }
  p_->sync->publish({p_->topic_root + "/cmd/result", result, false}, [self = this, id] {
    if (id.empty()) {
      return;
    }
    if (auto r = self->p_->inbox->commandReported(id); !r) {
      spdlog::warn("command {}: {}", id, r.error().message);
    }
  });
}

void Agent::publishConfigReport(const sync::ConfigReport& report) {
  p_->sync->publish({p_->topic_root + "/config/reported", report.toJson(), true});
}

void Agent::applyRemoteLayer(const sync::RemoteLayer& layer, const sync::ConfigReport& report) {
  Parts& p = *p_;
  auto next = p.base_cfg.withRemote(layer.settings, layer.details);
  Result<ConfigChange> change = next ? applyConfig(*next) : Result<ConfigChange>(next.error());
  sync::ConfigReport final_report = report;
  std::vector<std::string> keys;
  if (!change) {
    auto back = p.remote->rollBack("not applied: " + change.error().message);
    if (auto restored = p.base_cfg.withRemote(back.layer.settings, back.layer.details)) {
      (void)applyConfig(*restored);
    }
    p.config_version = static_cast<int>(back.layer.store_version);
    final_report = back.report;
  } else {
    keys = change->keys;
    p.config_version = static_cast<int>(layer.store_version);
    if (change->uplink_reconnects) {
      const int64_t wait_s = liveConfig()->integer("config.rollback_after");
      p.watch = Parts::UplinkWatch{change->uplink_generation, p.clock.nowMs() + wait_s * 1000,
                                   liveConfig()->str("mqtt.url")};
      p.watch_deadline_ms = p.watch->deadline_ms;
      spdlog::info(
          "remote config: the uplink has {} s to connect to {}, or the config is rolled "
          "back (config.rollback_after)",
          wait_s, p.watch->url);
    } else if (!p.watch) {
      // Nothing it changed can cut the store off: good at once. (While an uplink change
      // waits for its proof, nothing is confirmed: a rollback goes back before both.)
      if (auto r = p.remote->confirm(); !r) {
        spdlog::warn("remote config: {}", r.error().message);
      }
    }
  }
  publishConfigReport(final_report);
  Event e;
  e.type = "agent.config_applied";
  e.source = "agent";
  e.data_json = nlohmann::json{
      {"status", final_report.status},
      {"version", final_report.version},
      {"source", std::string(sync::sourceName(final_report.source))},
      {"error", final_report.error},
      {"keys",
       keys}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (auto r = p.ingest->append({e}); !r) {
    spdlog::warn("could not record agent.config_applied: {}", r.error().message);
  }
}

void Agent::remoteStart() {
  Parts& p = *p_;
  for (const auto& r : p.remote->takeStartupReports()) {
    publishConfigReport(r);
  }
  // Answers the broker never acknowledged before the last stop.
  if (auto unsent = p.inbox->unreportedCommands(256)) {
    for (const auto& c : *unsent) {
      publishCommandResult(c.result);
    }
  } else {
    spdlog::warn("commands: {}", unsent.error().message);
  }
  p.config_version = static_cast<int>(p.remote->layer().store_version);
  if (p.remote->confirmed()) {
    return;
  }
  // The daemon stopped before the uplink proved the last config that changed it: the proof
  // (or the rollback) is still due.
  const auto good = p.remote->lastKnownGood();
  auto good_cfg = p.base_cfg.withRemote(good.settings, good.details);
  const auto live = liveConfig();
  if (good_cfg && uplinkConnectionChanged(*good_cfg, *live)) {
    p.watch = Parts::UplinkWatch{0, p.clock.nowMs() + live->integer("config.rollback_after") * 1000,
                                 live->str("mqtt.url")};
    p.watch_deadline_ms = p.watch->deadline_ms;
  } else if (auto r = p.remote->confirm(); !r) {
    spdlog::warn("remote config: {}", r.error().message);
  }
}

void Agent::remoteTick() {
  Parts& p = *p_;
  std::optional<std::pair<sync::RemoteLayer, sync::ConfigReport>> pending;
  {
    std::lock_guard lock(p.pending_mu);
    pending.swap(p.pending_layer);
  }
  if (pending) {
    applyRemoteLayer(pending->first, pending->second);
  }
  const int64_t now = p.clock.nowMs();
  if (p.watch) {
    const auto st = p.sync->status();
    if (st.connected && st.generation >= p.watch->generation) {
      spdlog::info("remote config: the uplink connected to {}: the config is confirmed",
                   p.watch->url);
      p.watch.reset();
      p.watch_deadline_ms = 0;
      if (auto r = p.remote->confirm(); !r) {
        spdlog::warn("remote config: {}", r.error().message);
      }
    } else if (now >= p.watch->deadline_ms) {
      const auto live = liveConfig();
      std::string reason =
          fmt::format("the uplink did not connect to {} within {} s (config.rollback_after){}",
                      p.watch->url, live->integer("config.rollback_after"),
                      st.last_error.empty() ? "" : ": " + st.last_error);
      p.watch.reset();
      p.watch_deadline_ms = 0;
      auto back = p.remote->rollBack(reason);
      std::vector<std::string> keys;
      if (auto restored = p.base_cfg.withRemote(back.layer.settings, back.layer.details)) {
        auto change = applyConfig(*restored);
        if (!change) {
          spdlog::error("remote config: rollback not applied: {}", change.error().message);
        } else {
          keys = change->keys;
        }
      }
      p.config_version = static_cast<int>(back.layer.store_version);
      publishConfigReport(back.report);
      Event e;
      e.type = "agent.config_applied";
      e.source = "agent";
      e.data_json = nlohmann::json{
          {"status", back.report.status},
          {"version", back.report.version},
          {"source", std::string(sync::sourceName(back.report.source))},
          {"error", back.report.error},
          {"keys",
           keys}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      if (auto r = p.ingest->append({e}); !r) {
        spdlog::warn("could not record agent.config_applied: {}", r.error().message);
      }
    }
  }
  std::lock_guard lock(p.level_mu);
  if (p.level_until_ms != 0 && now >= p.level_until_ms) {
    p.level_until_ms = 0;
    const std::string level = liveConfig()->str("log.level");
    spdlog::set_level(spdlog::level::from_str(level));
    spdlog::info("log level back to {} (log.level)", level);
  }
}

void Agent::setReload(std::function<Result<config::Config>()> reload) {
  p_->reload = std::move(reload);
}

void Agent::reloadLocalConfig() {
  Parts& p = *p_;
  const int64_t now = p.clock.nowMs();
  auto record = [&p, now](bool ok, const std::string& error, const std::vector<std::string>& keys,
                          const std::vector<std::string>& restart) {
    std::lock_guard lock(p.reload_mu);
    p.last_reload = {{"at", formatRfc3339Ms(now)},
                     {"ok", ok},
                     {"error", error},
                     {"keys", keys},
                     {"restart_needed", restart}};
  };
  if (!p.reload) {
    spdlog::warn("SIGHUP: this agent was not started with a configuration it can read again");
    record(false, "no configuration to read again", {}, {});
    return;
  }
  auto local = p.reload();
  if (!local) {
    spdlog::error("SIGHUP: the configuration was not reloaded, the running one stays: {}",
                  local.error().message);
    record(false, local.error().message, {}, {});
    return;
  }
  // The remote layer stays on top, as at start.
  const auto layer = p.remote->layer();
  auto next = local->withRemote(layer.settings, layer.details);
  Result<ConfigChange> change = next ? applyConfig(*next) : Result<ConfigChange>(next.error());
  if (!change) {
    spdlog::error("SIGHUP: the configuration was not applied, the running one stays: {}",
                  change.error().message);
    record(false, change.error().message, {}, {});
    return;
  }
  p.base_cfg = std::move(*local);
  spdlog::info("SIGHUP: configuration reloaded ({} key(s) changed)", change->keys.size());
  record(true, "", change->keys, change->restart_needed);
}

void Agent::addRemoteStatus(nlohmann::json& out) const {
  Parts& p = *p_;
  const auto level = spdlog::level::to_string_view(spdlog::get_level());
  out["log_level"] = std::string(level.data(), level.size());
  {
    std::lock_guard lock(p.level_mu);
    out["log_level_until"] = p.level_until_ms != 0 ? formatRfc3339Ms(p.level_until_ms) : "";
  }
  const auto layer = p.remote->layer();
  nlohmann::json rc = {
      {"store_version", layer.store_version},
      {"all_version", layer.all_version},
      {"keys", layer.settings.size()},
      {"confirmed", p.remote->confirmed()},
      {"rollback_at",
       p.watch_deadline_ms.load() != 0 ? formatRfc3339Ms(p.watch_deadline_ms.load()) : ""}};
  if (auto r = p.remote->lastReport()) {
    rc["last_report"] = nlohmann::json::parse(r->toJson());
  }
  out["remote_config"] = std::move(rc);
  {
    std::lock_guard lock(p.reload_mu);
    if (!p.last_reload.is_null()) {
      out["last_reload"] = p.last_reload;
    }
  }
  const auto inbox = p.inbox->stats();
  const auto u = p.sync->status();
  out["inbound"] = {{"pending", inbox.pending},
                    {"pending_bytes", inbox.pending_bytes},
                    {"stored", inbox.stored},
                    {"handled", u.inbound_handled},
                    {"not_durable", u.inbound_not_durable},
                    {"dropped", u.inbound_dropped},
                    {"outgoing_queued", u.control_queued},
                    {"outgoing_dropped", u.control_dropped}};
  const auto c = p.commands->stats();
  out["commands"] = {{"executed", c.executed},
                     {"answered_again", c.answered_again},
                     {"refused", c.refused},
                     {"remembered", inbox.commands}};
}

nlohmann::json Agent::CentreCommands::ping() {
  Parts& p = *agent_.p_;
  const int64_t now = p.clock.nowMs();
  return {{"pong", true},
          {"store_id", p.store_id},
          {"version", kVersion},
          {"uptime_s", (now - p.started_ms) / 1000},
          {"at", formatRfc3339Ms(now)}};
}

nlohmann::json Agent::CentreCommands::flush() {
  Parts& p = *agent_.p_;
  p.sync->flushNow();
  if (auto https = agent_.https()) {
    https->flushNow();
  }
  const auto s = p.buffer->stats();
  return {{"flushing", true}, {"pending", s.pending[0] + s.pending[1] + s.pending[2]}};
}

Result<nlohmann::json> Agent::CentreCommands::resyncProfiles() {
  Parts& p = *agent_.p_;
  auto previous = p.inbox->meta("profile_cursor");
  if (!previous) {
    return previous.error();
  }
  if (auto r = p.inbox->setMeta("profile_cursor", ""); !r) {
    return r.error();
  }
  nlohmann::json answer = {
      {"cursor_cleared", true},
      {"previous_cursor", previous->empty() ? nlohmann::json() : nlohmann::json(*previous)}};
  if (auto https = agent_.https()) {
    const auto before = https->status();
    https->requestProfileResync();
    if (!before.profiles_cursor.empty()) {
      answer["previous_cursor"] = before.profiles_cursor;
    }
    answer["snapshot"] = "started: the whole snapshot is fetched again over HTTPS from " +
                         before.base_url + " (status: uplink.https.profiles)";
  } else {
    answer["snapshot"] =
        "not started: the profile snapshot needs the HTTPS uplink (https.base_url); R/profiles "
        "keeps arriving meanwhile";
  }
  return answer;
}

Result<nlohmann::json> Agent::CentreCommands::setLogLevel(const std::string& level,
                                                          int64_t duration_s) {
  Parts& p = *agent_.p_;
  const auto previous = spdlog::level::to_string_view(spdlog::get_level());
  const int64_t until = p.clock.nowMs() + duration_s * 1000;
  {
    std::lock_guard lock(p.level_mu);
    p.level_until_ms = until;
  }
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::info("log level {} until {} (set-log-level), then {}", level, formatRfc3339Ms(until),
               agent_.liveConfig()->str("log.level"));
  return nlohmann::json{{"level", level},
                        {"previous", std::string(previous.data(), previous.size())},
                        {"until", formatRfc3339Ms(until)},
                        {"then", agent_.liveConfig()->str("log.level")}};
}

nlohmann::json Agent::CentreCommands::diagnostics(std::size_t max_bytes) {
  Parts& p = *agent_.p_;
  nlohmann::json config = agent_.liveConfig()->toJson();
  for (auto& [key, entry] : config.items()) {
    if (secretKey(key)) {
      entry["value"] = "(masked)";
    }
  }
  nlohmann::json logs = nlohmann::json::array();
  for (const auto& line : p.log_ring->lines()) {
    logs.push_back(
        {{"at", formatRfc3339Ms(line.at_ms)}, {"level", line.level}, {"message", line.message}});
  }
  nlohmann::json bundle = {{"generated_at", formatRfc3339Ms(p.clock.nowMs())},
                           {"status", agent_.status()},
                           {"config", std::move(config)},
                           {"recent_logs", std::move(logs)},
                           {"truncated", false}};
  const auto size = [&bundle] {
    return bundle.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).size();
  };
  // Bounded: the oldest log lines go first, then the config, then the status.
  while (size() > max_bytes && !bundle["recent_logs"].empty()) {
    auto& l = bundle["recent_logs"];
    l.erase(l.begin(),
            l.begin() + static_cast<std::ptrdiff_t>(std::max<std::size_t>(1, l.size() / 4)));
    bundle["truncated"] = true;
  }
  for (const char* part : {"config", "status"}) {
    if (size() > max_bytes) {
      bundle[part] = "left out: the bundle would pass " + std::to_string(max_bytes) + " bytes";
      bundle["truncated"] = true;
    }
  }
  return bundle;
}

Result<nlohmann::json> Agent::CentreCommands::forget(const std::string& key) {
  return agent_.p_->privacy->forget(key, false);
}

void Agent::addPersonalData(PersonalData* holder) { p_->privacy->addHolder(holder); }

void Agent::applyRefusals(const std::vector<store::ConsentRefusal>& refusals) {
  if (refusals.empty()) {
    return;
  }
  if (auto r = p_->privacy->applyRefusals(refusals); !r) {
    spdlog::error("consent: a refusal could not reach the buffered events: {}", r.error().message);
  }
}

Result<int64_t> Agent::CentreCommands::retryQuarantine() {
  Parts& p = *agent_.p_;
  auto moved = p.buffer->retryQuarantine();
  if (moved && *moved > 0) {
    p.sync->flushNow();
  }
  return moved;
}

}  // namespace omniedge
