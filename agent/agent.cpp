#include "agent/agent.h"

#include <fnmatch.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <sstream>

#include "agent/api/time.h"
#include "agent/control_socket.h"
#include "agent/ingest.h"
#include "agent/pii.h"
#include "agent/source_runner.h"
#include "agent/store/buffer.h"
#include "agent/store/profile_cache.h"
#include "agent/systemd_notify.h"
#include "agent/version.h"
#include "drivers/builtin.h"
#include "drivers/kiosk/http_api.h"
#include "sync/https_uplink.h"
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

Result<std::vector<std::string>> readTokens(const std::string& path) {
  auto text = readSecretFile(path, "http.tokens_file");
  if (!text) {
    return text.error();
  }
  std::vector<std::string> tokens;
  std::istringstream in(*text);
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back())) != 0) {
      line.pop_back();
    }
    if (!line.empty() && line.front() != '#') {
      tokens.push_back(line);
    }
  }
  if (tokens.empty()) {
    return makeError("config", "http.tokens_file '" + path + "' holds no token",
                     "http.tokens_file");
  }
  return tokens;
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

// An envelope as `omniedge export` wrote it, back into an Event (received_at is set anew).
Result<Event> eventFromEnvelope(const nlohmann::json& j, std::size_t index) {
  const std::string at = "events[" + std::to_string(index) + "]";
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return makeError("invalid", at + ".type is required", at + ".type");
  }
  Event e;
  e.type = j["type"].get<std::string>();
  for (auto [field, target] : {std::pair{"id", &e.id}, std::pair{"source", &e.source},
                               std::pair{"store_id", &e.store_id}}) {
    if (j.contains(field)) {
      if (!j[field].is_string()) {
        return makeError("invalid", at + "." + field + " must be a string", at + "." + field);
      }
      *target = j[field].get<std::string>();
    }
  }
  if (j.contains("occurred_at")) {
    auto ms = j["occurred_at"].is_string() ? parseRfc3339(j["occurred_at"].get<std::string>())
                                           : std::nullopt;
    if (!ms) {
      return makeError("invalid", at + ".occurred_at is not an RFC 3339 timestamp",
                       at + ".occurred_at");
    }
    e.occurred_at_ms = *ms;
  }
  if (j.contains("customer")) {
    if (!j["customer"].is_object()) {
      return makeError("invalid", at + ".customer must be an object", at + ".customer");
    }
    for (const auto& [k, v] : j["customer"].items()) {
      if (!v.is_string()) {
        return makeError("invalid", at + ".customer." + k + " must be a string",
                         at + ".customer." + k);
      }
      e.customer[k] = v.get<std::string>();
    }
  }
  if (j.contains("data")) {
    if (!j["data"].is_object()) {
      return makeError("invalid", at + ".data must be an object", at + ".data");
    }
    e.data_json = j["data"].dump();
  }
  return e;
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

struct Agent::Parts {
  config::Config cfg;
  SystemClock clock;
  std::unique_ptr<PiiHasher> pii;
  std::unique_ptr<store::Buffer> buffer;
  std::unique_ptr<store::ProfileCache> profiles;
  std::unique_ptr<Ingest> ingest;
  std::unique_ptr<kiosk::HttpApi> http;
  std::unique_ptr<sync::SyncEngine> sync;
  std::unique_ptr<sync::HttpsUplink> https;  // null when https.base_url is empty
  std::unique_ptr<ControlServer> control;
  std::vector<std::unique_ptr<SourceRunner>> sources;
  std::string store_id;
  std::string tenant;
  std::string http_listen;
  int64_t started_ms = 0;
  std::atomic<bool> stopping{false};
  std::atomic<int> config_version{0};
  mutable std::mutex rates_mu;
  Rate ingest_rate;    // guarded by rates_mu
  Rate delivery_rate;  // guarded by rates_mu
  uint64_t dropped_reported = 0;

  explicit Parts(config::Config c) : cfg(std::move(c)) {}
};

Agent::Agent(std::unique_ptr<Parts> parts) : p_(std::move(parts)) {}

Agent::~Agent() {
  if (p_->http) {
    p_->http->stop();
  }
  for (auto& s : p_->sources) {
    s->stop();
  }
  if (p_->control) {
    p_->control->stop();
  }
  if (p_->sync) {
    p_->sync->stop();
  }
  if (p_->https) {
    p_->https->stop();
  }
  if (p_->buffer) {
    p_->buffer->close();
  }
}

std::string controlSocketPath(const config::Config& cfg) {
  const char* runtime = std::getenv("RUNTIME_DIRECTORY");
  fs::path dir =
      runtime != nullptr && *runtime != '\0' ? fs::path(runtime) : fs::path(cfg.str("data.dir"));
  return (dir / "omniedge.sock").string();
}

Result<std::unique_ptr<Agent>> Agent::create(const config::Config& cfg) {
  auto p = std::make_unique<Parts>(cfg);
  p->store_id = cfg.str("store.id");
  p->tenant = cfg.str("store.tenant");
  p->started_ms = p->clock.nowMs();

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
    region = PiiHasher::regionForCallingCode(cfg.str("identity.default_country_code"));
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
  p->pii = std::make_unique<PiiHasher>(hmac_key, region,
                                       parseDataPiiPolicy(cfg.str("identity.data_pii")),
                                       cfg.str("identity.phone_module"));

  store::BufferOptions bo;
  bo.dir = cfg.str("data.dir");
  bo.synchronous_full = cfg.str("buffer.synchronous") == "full";
  bo.max_bytes = cfg.integer("buffer.max_bytes");
  bo.min_free_disk = cfg.integer("buffer.min_free_disk");
  bo.retain_delivered_s = cfg.integer("buffer.retain_delivered");
  bo.recent_max_bytes = static_cast<std::size_t>(cfg.integer("buffer.recent_max_bytes"));
  auto buffer = store::Buffer::open(bo);
  if (!buffer) {
    return buffer.error();
  }
  p->buffer = std::move(*buffer);

  auto profiles = store::ProfileCache::open(bo.dir);
  if (!profiles) {
    return profiles.error();
  }
  p->profiles = std::move(*profiles);

  IngestOptions io;
  io.store_id = p->store_id;
  io.max_event_bytes = static_cast<std::size_t>(cfg.integer("buffer.max_event_bytes"));
  p->ingest = std::make_unique<Ingest>(io, *p->buffer, *p->pii, p->clock, p->profiles.get());

  auto listen = config::parseHostPort(cfg.str("http.listen"));
  if (!listen) {
    return listen.error();
  }
  kiosk::HttpApiOptions ho;
  ho.host = listen->host;
  ho.port = listen->port;
  ho.store_id = p->store_id;
  ho.customer_lookup = [cache = p->profiles.get()](const std::string& key) {
    auto doc = cache->lookup(key);
    return doc ? std::optional<std::string>(doc->dump()) : std::nullopt;
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
  if (!cfg.str("http.tokens_file").empty()) {
    auto tokens = readTokens(cfg.str("http.tokens_file"));
    if (!tokens) {
      return tokens.error();
    }
    ho.tokens = std::move(*tokens);
  }

  drivers::BuiltinSettings ds;
  ds.store_id = p->store_id;
  ds.buffer_epoch = p->buffer->epoch();
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
  auto sources = drivers::makeBuiltinSources(ds);
  if (!sources) {
    return sources.error();
  }
  for (auto& source : *sources) {
    p->sources.push_back(std::make_unique<SourceRunner>(std::move(source), *p->ingest));
  }

  sync::MqttOptions mo;
  mo.urls = cfg.list("mqtt.url");
  mo.url = mo.urls.front();
  mo.client_id = cfg.str("mqtt.client_id").empty() ? "omniedge-" + p->tenant + "-" + p->store_id
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
  mo.topic_root = "omniedge/v1/" + p->tenant + "/" + p->store_id;
  mo.reconnect_min_ms = static_cast<int>(cfg.integer("mqtt.reconnect_min") * 1000);
  mo.reconnect_max_ms = static_cast<int>(cfg.integer("mqtt.reconnect_max") * 1000);
  mo.max_packet_bytes = cfg.integer("mqtt.max_packet_bytes");

  sync::SyncOptions so;
  so.store_id = p->store_id;
  so.agent_version = kVersion;
  so.batch_max_events = static_cast<std::size_t>(cfg.integer("sync.batch_max_events"));
  so.batch_max_bytes = static_cast<std::size_t>(cfg.integer("sync.batch_max_bytes"));
  so.compression =
      sync::parseCompression(cfg.str("sync.compression")).value_or(sync::Compression::kGzip);
  so.max_inflight = static_cast<int>(cfg.integer("sync.max_inflight"));
  so.max_bytes_per_sec = cfg.integer("sync.max_bytes_per_sec");
  so.status_interval_s = static_cast<int>(cfg.integer("sync.status_interval"));
  so.inbound = {"profiles"};
  // Both uplinks drain one queue (sync/claims.h) under one bandwidth cap.
  so.space = sync::SeqSpace{p->buffer->epoch(), p->buffer->epochStartSeq()};
  so.claims = std::make_shared<sync::ClaimBook>();
  so.rate = std::make_shared<sync::RateLimit>(so.max_bytes_per_sec);

  std::unique_ptr<Agent> agent(new Agent(std::move(p)));
  Parts& parts = *agent->p_;
  Agent* self = agent.get();
  parts.http = std::make_unique<kiosk::HttpApi>(
      ho, *parts.ingest,
      [self] {
        kiosk::HealthReport h;
        const auto s = self->p_->buffer->stats();
        if (self->p_->stopping.load()) {
          h.reason = "stopping";
        } else if (s.cap_bytes > 0 && s.used_bytes >= s.cap_bytes - s.cap_bytes / 100) {
          h.reason = "buffer full: new events are pushed back until the uplink drains it";
        } else {
          h.ready = true;
        }
        return h;
      },
      [self] { return self->metricsText(); });
  parts.sync = std::make_unique<sync::SyncEngine>(
      *parts.buffer, mo, so, [self] { return self->uplinkStatusJson(); },
      [self](const std::string& leaf, const std::string& payload) {
        if (leaf == "profiles") {
          auto r = self->p_->profiles->apply(payload, self->p_->clock.nowMs());
          if (!r) {
            spdlog::warn("profiles: update refused: {}", r.error().message);
          } else {
            spdlog::debug("profiles: {} upserted, {} deleted", r->upserts, r->deletes);
          }
        }
      });
  if (!parts.cfg.str("https.base_url").empty()) {
    sync::HttpsOptions hs;
    hs.client.base_url = parts.cfg.str("https.base_url");
    hs.client.ca_file = parts.cfg.str("https.ca_file");
    hs.client.cert_file = parts.cfg.str("https.cert_file");
    hs.client.key_file = parts.cfg.str("https.key_file");
    hs.client.insecure_skip_verify = parts.cfg.boolean("https.insecure_skip_verify");
    hs.client.pinned_pubkey = parts.cfg.str("https.pinned_pubkey");
    hs.client.timeout_s = static_cast<int>(parts.cfg.integer("https.timeout"));
    hs.client.user_agent = std::string("omniedge/") + kVersion;
    if (hs.client.insecure_skip_verify) {
      spdlog::warn(
          "https.insecure_skip_verify is true: the HTTPS server's certificate is NOT verified; "
          "anyone on the path can read and change what goes to the centre");
    }
    hs.store_id = parts.store_id;
    hs.agent_version = kVersion;
    hs.space = so.space;
    hs.batch_max_events = so.batch_max_events;
    hs.batch_max_bytes = so.batch_max_bytes;
    hs.backfill_threshold = parts.cfg.integer("sync.backfill_threshold");
    hs.failover_after_ms = static_cast<int>(parts.cfg.integer("https.failover_after") * 1000);
    hs.retry_min_ms = mo.reconnect_min_ms;
    hs.retry_max_ms = mo.reconnect_max_ms;
    hs.pending_count = [buffer = parts.buffer.get()] {
      const auto st = buffer->stats();
      return st.pending[0] + st.pending[1] + st.pending[2];
    };
    hs.cursor_file = fs::path(parts.cfg.str("data.dir")) / "profiles.cursor";
    hs.profile_resync_after_ms = parts.cfg.integer("sync.profile_resync_after") * 1000;
    parts.https = std::make_unique<sync::HttpsUplink>(
        *parts.buffer, hs, so.claims, so.rate, [self](const std::string& payload) -> Result<void> {
          auto r = self->p_->profiles->apply(payload, self->p_->clock.nowMs());
          if (!r) {
            return r.error();
          }
          spdlog::debug("profiles: snapshot page: {} upserted, {} deleted", r->upserts, r->deletes);
          return {};
        });
  }
  parts.control = std::make_unique<ControlServer>(
      controlSocketPath(parts.cfg),
      [self](const nlohmann::json& r) { return self->handleControl(r); });
  return agent;
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
      {"batches_split", h.batches_split},
      {"quarantined", h.quarantined},
      {"events_held", h.events_held},
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
  for (const auto& source : p_->sources) {
    drivers.push_back(source->state());
  }
  struct statvfs vfs {};
  int64_t free_bytes = -1;
  if (statvfs(p_->cfg.str("data.dir").c_str(), &vfs) == 0) {
    free_bytes = static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
  }
  return {
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
      {"uplink",
       {{"mqtt",
         {{"state", u.connected ? "connected" : "disconnected"},
          {"since", u.since_ms > 0 ? formatRfc3339Ms(u.since_ms) : ""},
          {"url", u.url},
          {"node", u.node},
          {"nodes", p_->cfg.list("mqtt.url")},
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
        {"https", httpsStatusJson(p_->https.get())}}},
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
        {"commits", s.commits}}},
      {"disk",
       {{"data_dir", p_->cfg.str("data.dir")},
        {"buffer_file_bytes", s.file_bytes},
        {"buffer_used_bytes", s.used_bytes},
        {"buffer_cap_bytes", s.cap_bytes},
        {"free_bytes", free_bytes}}},
  };
}

std::string Agent::metricsText() const {
  const auto s = p_->buffer->stats();
  const auto u = p_->sync->status();
  std::string m;
  auto line = [&m](const char* name, const char* type, const char* help, auto value,
                   const std::string& labels = "") {
    m += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}{} {}\n", name, help, name, type, name, labels,
                     value);
  };
  line("omniedge_events_appended_total", "counter", "Events stored in the buffer.", s.appended);
  line("omniedge_events_duplicate_total", "counter", "Events ignored as already buffered.",
       s.duplicates);
  line("omniedge_events_delivered_total", "counter", "Events acknowledged by the centre.",
       s.acknowledged);
  line("omniedge_events_evicted_total", "counter", "Low-priority events evicted when full.",
       s.evicted);
  line("omniedge_appends_rejected_full_total", "counter", "Appends pushed back: buffer full.",
       s.rejected_full);
  m += "# HELP omniedge_buffer_pending Events waiting for delivery.\n"
       "# TYPE omniedge_buffer_pending gauge\n";
  m += fmt::format("omniedge_buffer_pending{{priority=\"high\"}} {}\n", s.pending[0]);
  m += fmt::format("omniedge_buffer_pending{{priority=\"normal\"}} {}\n", s.pending[1]);
  m += fmt::format("omniedge_buffer_pending{{priority=\"low\"}} {}\n", s.pending[2]);
  line("omniedge_buffer_bytes", "gauge", "Bytes the pending events occupy.", s.used_bytes);
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
  if (p_->https) {
    const auto h = p_->https->status();
    line("omniedge_https_up", "gauge",
         "1 while the HTTPS uplink is usable (not backing off, libcurl loaded).",
         h.state == "backoff" || h.state == "unavailable" || h.state == "stopped" ? 0 : 1);
    line("omniedge_https_backfilling", "gauge",
         "1 while HTTPS sends batches (backfill or MQTT failover).",
         h.state == "backfill" || h.state == "failover" ? 1 : 0);
    line("omniedge_https_requests_total", "counter", "Batch POSTs made over HTTPS.", h.requests);
    line("omniedge_https_batches_total", "counter", "Batches delivered over HTTPS (2xx or 409).",
         h.batches);
    line("omniedge_https_events_total", "counter", "Events in batches delivered over HTTPS.",
         h.events);
    line("omniedge_https_bytes_sent_total", "counter", "Batch bodies sent over HTTPS (gzip).",
         h.bytes_sent);
    line("omniedge_https_batches_refused_total", "counter",
         "HTTPS batches answered with a 4xx about the batch.", h.batches_refused);
    line("omniedge_https_events_quarantined_total", "counter",
         "Events moved to the quarantine after an HTTPS 4xx.", h.quarantined);
    line("omniedge_https_last_status_code", "gauge", "Status of the latest HTTPS answer.",
         h.last_status_code);
    line("omniedge_https_profile_pages_total", "counter", "Profile snapshot pages fetched.",
         h.profile_pages);
  }
  line("omniedge_quarantine_events", "gauge", "Events in the quarantine table.",
       s.quarantine_events);
  m += p_->http->metricsText();
  return m;
}

nlohmann::json Agent::handleControl(const nlohmann::json& request) {
  const std::string cmd = request.value("cmd", "");
  if (cmd == "status") {
    return {{"ok", true}, {"status", status()}};
  }
  if (cmd == "tail") {
    // From the ring of recent events: delivered events have left the file already.
    const auto after = request.value("after_seq", int64_t{0});
    const auto limit = request.value("limit", std::size_t{20});
    const std::string glob = request.value("type", "*");
    auto rows = p_->buffer->recent(after, store::Buffer::kRecentEvents);
    nlohmann::json events = nlohmann::json::array();
    std::size_t skip = 0;
    std::vector<const store::RecentEvent*> matching;
    for (const auto& r : rows) {
      if (fnmatch(glob.c_str(), r.type.c_str(), 0) == 0) {
        matching.push_back(&r);
      }
    }
    if (matching.size() > limit) {
      skip = matching.size() - limit;
    }
    for (std::size_t i = skip; i < matching.size(); ++i) {
      events.push_back(
          {{"seq", matching[i]->seq}, {"type", matching[i]->type}, {"body", matching[i]->body}});
    }
    return {{"ok", true}, {"events", std::move(events)}};
  }
  if (cmd == "flush") {
    p_->sync->flushNow();
    if (p_->https) {
      p_->https->flushNow();
    }
    return {{"ok", true}};
  }
  if (cmd == "resync_profiles") {
    if (!p_->https) {
      return {{"ok", false},
              {"error", "the profile snapshot needs the HTTPS uplink: set https.base_url"}};
    }
    p_->https->requestProfileResync();
    return {{"ok", true}};
  }
  if (cmd == "retry_quarantine") {
    // The writer moves them back (new seqs) in its own transactions: milliseconds to seconds.
    auto moved = p_->buffer->retryQuarantine();
    if (!moved) {
      return {{"ok", false}, {"error", moved.error().message}, {"code", moved.error().code}};
    }
    p_->sync->flushNow();
    return {{"ok", true}, {"moved", *moved}};
  }
  if (cmd == "import" || cmd == "test_event") {
    std::vector<Event> events;
    if (cmd == "test_event") {
      Event e;
      e.type = request.value("type", "agent.test");
      e.source = "cli";
      e.data_json = R"({"note":"omniedge send-test-event"})";
      events.push_back(std::move(e));
    } else {
      const auto& list = request.contains("events") ? request["events"] : nlohmann::json();
      if (!list.is_array()) {
        return {{"ok", false}, {"error", "events must be an array"}};
      }
      for (std::size_t i = 0; i < list.size(); ++i) {
        auto e = eventFromEnvelope(list[i], i);
        if (!e) {
          return {{"ok", false}, {"error", e.error().message}, {"field", e.error().field}};
        }
        events.push_back(std::move(*e));
      }
    }
    // The control thread waits for this group commit like any producer (milliseconds).
    auto r = p_->ingest->append(std::move(events));
    if (!r) {
      return {{"ok", false},
              {"error", r.error().message},
              {"code", r.error().code},
              {"field", r.error().field}};
    }
    return {{"ok", true}, {"ids", r->ids}, {"stored", r->stored}, {"duplicates", r->duplicates}};
  }
  return {{"ok", false}, {"error", "unknown command '" + cmd + "'"}};
}

void Agent::housekeeping() {
  const int64_t now = p_->clock.nowMs();
  const auto s = p_->buffer->stats();
  {
    std::lock_guard lock(p_->rates_mu);
    p_->ingest_rate.sample(now, s.appended);
    p_->delivery_rate.sample(now, s.acknowledged);
  }
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
  if (auto r = p.http->start(); !r) {
    spdlog::critical("kiosk API: {}", r.error().message);
    return r.error().code == "config" ? 78 : 1;
  }
  for (auto& source : p.sources) {
    source->start();
  }
  if (auto r = p.control->start(); !r) {
    spdlog::critical("control socket: {}", r.error().message);
    return 1;
  }
  p.sync->start();
  if (p.https) {
    p.https->start();
  }
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
               p.https ? " and " + p.cfg.str("https.base_url") : std::string());
  systemdNotify("READY=1");

  const bool watchdog = systemdWatchdogInterval().has_value();
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  auto last_tick = std::chrono::steady_clock::now();
  for (;;) {
    timespec timeout{0, 250 * 1000 * 1000};
    const int sig = sigtimedwait(&set, nullptr, &timeout);
    if (sig == SIGTERM || sig == SIGINT) {
      spdlog::info("received {}, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      break;
    }
    if (watchdog) {
      systemdNotify("WATCHDOG=1");
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - last_tick >= std::chrono::seconds(1)) {
      last_tick = now;
      housekeeping();
    }
  }
  systemdNotify("STOPPING=1");
  p.stopping.store(true);
  p.http->stop();
  for (auto& source : p.sources) {
    source->stop();
  }
  p.control->stop();
  p.sync->stop();
  if (p.https) {
    p.https->stop();
  }
  p.buffer->close();
  spdlog::info("stopped cleanly");
  return 0;
}

}  // namespace omniedge
