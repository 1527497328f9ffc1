#include "drivers/beacon/beacon_source.h"

#include <fmt/format.h>
#include <mqtt/async_client.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <utility>

#include "agent/api/mqtt_failure.h"
#include "agent/api/time.h"
#include "drivers/beacon/gateway.h"

namespace omniedge::beacon {
namespace {

constexpr int kWaitMs = 200;
constexpr std::size_t kMaxMessagesPerPoll = 50'000;
constexpr std::size_t kAllocOverhead = 16;  // per heap block, as the presence engine counts

/// Whether Paho has finished `token`'s action (its code is then token.get_return_code()); a
/// failure's message (Paho's words) into `failure` when given.
/// Not token.is_complete(): Paho C++ 1.2 reads the flag there without the token's lock, so
/// nothing orders that read after the callback thread's writes of the return code and the
/// response (a data race TSan reports when the token is freed; on a weakly ordered CPU, ARM,
/// the code could be read stale). try_wait() checks under the lock, and throws the failure.
bool finished(mqtt::token& token, std::string* failure = nullptr) {
  try {
    return token.try_wait();
  } catch (const mqtt::exception& e) {
    if (failure != nullptr) {
      *failure = e.get_message();
    }
    return true;
  }
}

/// A failed connect to the gateways' broker, in a technician's words (the uplink's own:
/// MqttLink::connectFailure).
std::string connectFailure(const std::string& url, int rc, const std::string& paho_message) {
  if (rc > 0) {  // a CONNACK refusal (MQTT 3.1.1 return codes 1-5)
    static constexpr std::string_view kConnack[] = {"",
                                                    "unacceptable protocol version",
                                                    "client id rejected",
                                                    "server unavailable",
                                                    "bad user name or password",
                                                    "not authorised"};
    return fmt::format(
        "the gateways' broker at {} refused the connection (CONNACK {}{}{}): the beacon driver "
        "connects without a user name or certificate; the broker must let it subscribe",
        url, rc, rc < 6 ? ": " : "", rc < 6 ? kConnack[rc] : "");
  }
  const ConnectFailure kind = classifyConnectFailure(url, paho_message);
  if ((kind == ConnectFailure::kUnreachable || kind == ConnectFailure::kOther) &&
      (url.rfind("mqtts://", 0) == 0 || url.rfind("wss://", 0) == 0)) {
    // A refused certificate reads as a connect failure or a socket error in Paho's words, as
    // does a broker that is down.
    return fmt::format(
        "the gateways' broker at {} is unreachable or its TLS handshake failed: is it running, "
        "is beacon.mqtt_url right, does its certificate verify against the system's CA "
        "certificates for that host name?",
        url);
  }
  switch (kind) {
    case ConnectFailure::kUnreachable:
      return fmt::format(
          "the gateways' broker is unreachable at {} (connection refused or no route): is it "
          "running, is beacon.mqtt_url right?",
          url);
    case ConnectFailure::kTimeout:
      return fmt::format(
          "no answer from the gateways' broker at {}: is the address right, does a firewall "
          "drop the traffic?",
          url);
    case ConnectFailure::kUnresolved:
      return fmt::format("cannot resolve the host name \"{}\" of beacon.mqtt_url {}", hostOf(url),
                         url);
    case ConnectFailure::kOther:
      break;
  }
  return fmt::format("cannot connect to the gateways' broker at {}: {}", url,
                     paho_message.empty() ? mqtt::exception::error_str(rc) : paho_message);
}

/// What a queued message costs: its bytes, the deque slot and two heap blocks.
std::size_t messageBytes(std::string_view topic, std::string_view payload) {
  return topic.size() + payload.size() + 2 * (sizeof(std::string) + kAllocOverhead);
}

/// What a pending event holds in memory (strings, customer map nodes), roughly but from above.
std::size_t eventBytes(const Event& e) {
  std::size_t bytes = sizeof(Event) + e.id.capacity() + e.type.capacity() + e.source.capacity() +
                      e.store_id.capacity() + e.data_json.capacity() + 4 * kAllocOverhead;
  for (const auto& [k, v] : e.customer) {
    bytes += 64 + k.capacity() + v.capacity() + 2 * kAllocOverhead;
  }
  return bytes;
}

/// Writer failures that are worth a retry with the same events; any other failure of
/// appendEach() would repeat forever.
bool retryable(const Error& e) {
  return e.code == "full" || e.code == "io" || e.code == "stopping" || e.code == "busy";
}

Result<std::string> pahoUri(const std::string& url) {
  if (url.rfind("mqtt://", 0) == 0) {
    return "tcp://" + url.substr(7);
  }
  if (url.rfind("mqtts://", 0) == 0) {
    return "ssl://" + url.substr(8);
  }
  if (url.rfind("ws://", 0) == 0 || url.rfind("wss://", 0) == 0) {
    return url;
  }
  return makeError("invalid",
                   fmt::format("beacon.mqtt_url '{}' is not mqtt://, mqtts://, ws:// "
                               "or wss://",
                               url),
                   "beacon.mqtt_url");
}

}  // namespace

BeaconSource::BeaconSource(BeaconOptions options)
    : options_(std::move(options)),
      clock_(options_.clock ? options_.clock : std::make_shared<SystemClock>()),
      engine_(options_.presence) {
  if (options_.client_id.empty()) {
    options_.client_id = fmt::format("omniedge-beacon-{}", ::getpid());
  }
  options_.qos = std::clamp(options_.qos, 0, 1);
  options_.reconnect_min_ms = std::max(10, options_.reconnect_min_ms);
  options_.reconnect_max_ms = std::max(options_.reconnect_min_ms, options_.reconnect_max_ms);
}

BeaconSource::~BeaconSource() { dropClient(); }

namespace {

// Everything but the placement (zones, scanner offsets), which a running engine can take.
bool sameButPlacement(const BeaconOptions& a, const BeaconOptions& b) {
  const PresenceOptions& p = a.presence;
  const PresenceOptions& q = b.presence;
  return a.mqtt_url == b.mqtt_url && a.topics == b.topics && a.qos == b.qos &&
         a.max_message_bytes == b.max_message_bytes && a.queue_max_bytes == b.queue_max_bytes &&
         a.pending_max_bytes == b.pending_max_bytes && a.queue_capacity == b.queue_capacity &&
         a.max_pending_events == b.max_pending_events && a.tick_interval_ms == b.tick_interval_ms &&
         a.max_clock_skew_ms == b.max_clock_skew_ms && p.exit_after_ms == q.exit_after_ms &&
         p.enter_after_sightings == q.enter_after_sightings && p.window_ms == q.window_ms &&
         p.switch_margin_db == q.switch_margin_db && p.switch_hold_ms == q.switch_hold_ms &&
         p.ewma_alpha == q.ewma_alpha && p.scanner_stale_ms == q.scanner_stale_ms &&
         p.max_tracked == q.max_tracked && p.max_state_bytes == q.max_state_bytes &&
         p.ignore_prefixes == q.ignore_prefixes && p.path_loss_exponent == q.path_loss_exponent &&
         p.default_rssi_at_1m == q.default_rssi_at_1m;
}

}  // namespace

bool BeaconSource::adopt(Source& fresh) {
  auto* other = dynamic_cast<BeaconSource*>(&fresh);
  if (other == nullptr || !sameButPlacement(options_, other->options_)) {
    return false;
  }
  {
    std::lock_guard lock(mu_);
    retune_.emplace(other->options_.presence.zones, other->options_.presence.scanner_offsets);
  }
  cv_.notify_all();
  return true;
}

std::string_view BeaconSource::name() const { return "beacon"; }

void BeaconSource::dropClient() {
  if (!client_) {
    return;
  }
  try {
    if (client_->is_connected()) {
      client_->disconnect()->wait_for(std::chrono::milliseconds(1000));
    }
  } catch (const std::exception&) {  // going away anyway
  }
  client_.reset();  // stops Paho's threads: no callback runs after this
  connect_token_.reset();
  subscribe_token_.reset();
  state_ = State::kIdle;
  std::lock_guard lock(mu_);
  stats_.connected = false;
}

void BeaconSource::fail(const std::string& why, int64_t now) {
  dropClient();
  backoff_ms_ = backoff_ms_ == 0 ? options_.reconnect_min_ms
                                 : std::min(options_.reconnect_max_ms, backoff_ms_ * 2);
  next_attempt_ms_ = now + backoff_ms_;
  std::lock_guard lock(mu_);
  ++stats_.connect_failures;
  stats_.last_error = why;
  stats_.down = why;
}

bool BeaconSource::offer(std::string_view topic, std::string_view payload) {
  const std::size_t bytes = messageBytes(topic, payload);
  {
    std::lock_guard lock(mu_);
    if (payload.size() > options_.max_message_bytes || topic.size() > kMaxTopicBytes) {
      // Refused before it is copied: the reason is the same parseGatewayMessage() would give.
      ++stats_.messages;
      ++stats_.bad_messages;
      stats_.last_input_error = fmt::format(
          "{}: {}", printable(topic),
          payload.size() > options_.max_message_bytes
              ? fmt::format("payload is {} bytes; beacon.max_message_bytes allows {}",
                            payload.size(), options_.max_message_bytes)
              : fmt::format("topic is {} bytes, at most {}", topic.size(), kMaxTopicBytes));
      return false;
    }
    if (queue_.size() >= options_.queue_capacity ||
        queue_bytes_ + bytes > options_.queue_max_bytes) {
      ++stats_.queue_overflow;
      stats_.queue_overflow_bytes += bytes;
      return false;
    }
    queue_.push_back(Message{std::string(topic), std::string(payload)});
    queue_bytes_ += bytes;
  }
  cv_.notify_one();
  return true;
}

Result<void> BeaconSource::manageConnection(int64_t now) {
  try {
    if (state_ == State::kConnected) {
      bool lost = false;
      {
        std::lock_guard lock(mu_);
        lost = std::exchange(lost_, false);
      }
      if (lost) {
        const std::string why =
            fmt::format("lost the connection to the gateways' broker at {}", options_.mqtt_url);
        fail(why, now);
        return makeError("connect", why);
      }
      if (subscribe_token_ && finished(*subscribe_token_)) {
        const int rc = subscribe_token_->get_return_code();
        subscribe_token_.reset();
        if (rc != 0) {
          // One reason for status and the log alike, naming the key to check.
          const std::string why = fmt::format(
              "the gateways' broker at {} refused to subscribe beacon.topics ({}): {}",
              options_.mqtt_url, fmt::join(options_.topics, ","), mqtt::exception::error_str(rc));
          fail(why, now);
          return makeError("connect", why);
        }
      }
      return {};
    }
    if (state_ == State::kConnecting) {
      std::string paho_message;
      if (!finished(*connect_token_, &paho_message)) {
        if (now >= next_attempt_ms_) {  // used as the connect deadline meanwhile
          const std::string why = connectFailure(options_.mqtt_url, 0, "connect timeout");
          fail(why, now);
          return makeError("connect", why);
        }
        return {};
      }
      const int rc = connect_token_->get_return_code();
      connect_token_.reset();
      if (rc != 0) {
        const std::string why = connectFailure(options_.mqtt_url, rc, paho_message);
        fail(why, now);
        return makeError("connect", why);
      }
      const auto topics = mqtt::string_collection::create(options_.topics);
      subscribe_token_ =
          client_->subscribe(topics, std::vector<int>(options_.topics.size(), options_.qos));
      state_ = State::kConnected;
      backoff_ms_ = 0;
      std::lock_guard lock(mu_);
      lost_ = false;
      ++stats_.connects;
      stats_.connected = true;
      stats_.down.clear();
      return {};
    }
    if (now < next_attempt_ms_) {
      return {};
    }
    auto uri = pahoUri(options_.mqtt_url);
    if (!uri) {
      fail(uri.error().message, now);
      return uri.error();
    }
    client_ = std::make_unique<mqtt::async_client>(*uri, options_.client_id,
                                                   mqtt::create_options(MQTTVERSION_3_1_1));
    client_->set_message_callback([this](mqtt::const_message_ptr msg) {
      (void)offer(msg->get_topic(), msg->get_payload_str());
    });
    client_->set_connection_lost_handler([this](const std::string&) {
      {
        std::lock_guard lock(mu_);
        lost_ = true;
      }
      cv_.notify_one();
    });
    mqtt::connect_options opts;
    opts.set_clean_session(true);
    opts.set_keep_alive_interval(30);
    opts.set_connect_timeout(10);
    opts.set_automatic_reconnect(false);
    if (uri->rfind("ssl://", 0) == 0 || uri->rfind("wss://", 0) == 0) {
      mqtt::ssl_options ssl;
      ssl.set_enable_server_cert_auth(true);
      ssl.set_verify(true);
      opts.set_ssl(ssl);
    }
    connect_token_ = client_->connect(opts);
    state_ = State::kConnecting;
    next_attempt_ms_ = now + 11'000;  // the connect deadline
    return {};
  } catch (const std::exception& e) {
    const std::string why = fmt::format("beacon MQTT: {}", e.what());
    fail(why, now);
    return makeError("connect", why);
  }
}

Result<void> BeaconSource::poll(EventWriter& out, std::stop_token stop) {
  int64_t now = clock_->nowMs();
  {
    std::unique_lock lock(mu_);
    if (retune_) {
      auto [zones, offsets] = std::move(*retune_);
      retune_.reset();
      lock.unlock();
      engine_.retune(std::move(zones), std::move(offsets));
    }
  }
  Result<void> connection;
  if (!options_.mqtt_url.empty()) {
    connection = manageConnection(now);
  }

  std::deque<Message> batch;
  {
    std::unique_lock lock(mu_);
    if (queue_.empty() && pending_.empty() && unreported_events_ == 0 && !stop.stop_requested() &&
        now < next_tick_ms_) {
      cv_.wait_for(lock, std::chrono::milliseconds(kWaitMs),
                   [&] { return !queue_.empty() || lost_ || stop.stop_requested(); });
    }
    if (queue_.size() <= kMaxMessagesPerPoll) {
      batch.swap(queue_);
      queue_bytes_ = 0;
    } else {
      for (std::size_t i = 0; i < kMaxMessagesPerPoll; ++i) {
        queue_bytes_ -= messageBytes(queue_.front().topic, queue_.front().payload);
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
  }
  now = clock_->nowMs();

  uint64_t bad = 0;
  uint64_t frame_errors = 0;
  uint64_t telemetry = 0;
  uint64_t sightings = 0;
  std::string last_input_error;
  const std::size_t events_before = pending_.size();
  for (const Message& message : batch) {
    auto parsed = parseGatewayMessage(message.topic, message.payload, options_.max_message_bytes);
    if (!parsed) {
      // Refused whole, before the engine: nothing of it can become an event.
      ++bad;
      last_input_error = fmt::format("{}: {}", printable(message.topic), parsed.error().message);
      continue;
    }
    frame_errors += parsed->frame_errors;
    telemetry += parsed->telemetry_frames;
    for (Sighting& s : parsed->sightings) {
      if (s.timestamp_ms && std::llabs(*s.timestamp_ms - now) > options_.max_clock_skew_ms) {
        s.timestamp_ms.reset();  // a gateway with a wrong clock: trust ours
      }
      ++sightings;
      engine_.observe(s, now, pending_);
    }
  }
  if (now >= next_tick_ms_) {
    engine_.tick(now, pending_);
    next_tick_ms_ = now + options_.tick_interval_ms;
  }
  for (std::size_t i = events_before; i < pending_.size(); ++i) {
    pending_bytes_ += eventBytes(pending_[i]);
  }
  boundPending();
  bad_since_log_ += bad;
  if (bad_since_log_ > 0) {
    // A gateway sending garbage sends a lot of it: one line a minute, the details in status.
    const auto wall = std::chrono::steady_clock::now();
    if (wall >= next_bad_log_) {
      spdlog::warn("beacon: {} gateway message(s) refused, the latest: {}", bad_since_log_,
                   last_input_error.empty() ? stats().last_input_error : last_input_error);
      bad_since_log_ = 0;
      next_bad_log_ = wall + std::chrono::seconds(60);
    }
  }
  {
    std::lock_guard lock(mu_);
    stats_.messages += batch.size();
    stats_.bad_messages += bad;
    stats_.frame_errors += frame_errors;
    stats_.telemetry_frames += telemetry;
    stats_.sightings += sightings;
    if (!last_input_error.empty()) {
      stats_.last_input_error = std::move(last_input_error);
    }
  }
  Result<void> appended = appendPending(out);
  {
    std::lock_guard lock(mu_);
    stats_.presence = engine_.stats();
    stats_.pending = pending_.size();
    stats_.pending_bytes = pending_bytes_;
  }
  if (!appended) {
    return appended;
  }
  return connection;
}

void BeaconSource::boundPending() {
  std::size_t drop = 0;
  std::size_t bytes = pending_bytes_;
  while (drop < pending_.size() && (pending_.size() - drop > options_.max_pending_events ||
                                    bytes > options_.pending_max_bytes)) {
    bytes -= eventBytes(pending_[drop]);
    ++drop;
  }
  if (drop == 0) {
    return;
  }
  // The oldest go first: the newest say best where people are now. Logged once per episode;
  // the agent.data_dropped report that ends it has the totals.
  if (unreported_events_ == 0) {
    unreported_first_ms_ = pending_.front().occurred_at_ms;
    spdlog::warn(
        "beacon: the buffer refuses events; dropping the oldest pending presence events "
        "(counted, reported as agent.data_dropped)");
  }
  unreported_last_ms_ = pending_[drop - 1].occurred_at_ms;
  unreported_events_ += drop;
  unreported_bytes_ += pending_bytes_ - bytes;
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(drop));
  {
    std::lock_guard lock(mu_);
    stats_.events_dropped += drop;
    stats_.events_dropped_bytes += pending_bytes_ - bytes;
  }
  pending_bytes_ = bytes;
}

Result<void> BeaconSource::appendPending(EventWriter& out) {
  if (pending_.empty() && unreported_events_ == 0) {
    return {};
  }
  std::vector<Event> batch;
  batch.reserve(pending_.size() + 1);
  const bool report = unreported_events_ > 0;
  if (report) {
    // Nothing is dropped silently: the centre hears of it like of a buffer eviction.
    Event e;
    e.type = "agent.data_dropped";
    e.source = "beacon";
    e.data_json =
        nlohmann::json{{"reason", "beacon: presence events dropped while the buffer refused them"},
                       {"channel", "beacon"},
                       {"priority", "low"},
                       {"events", unreported_events_},
                       {"bytes", unreported_bytes_},
                       {"oldest_occurred_at", formatRfc3339Ms(unreported_first_ms_)},
                       {"newest_occurred_at", formatRfc3339Ms(unreported_last_ms_)},
                       // Dropped before the buffer numbered them: no seq of the epoch is missing.
                       {"epoch", options_.buffer_epoch},
                       {"ranges", nlohmann::json::array()}}
            .dump();
    batch.push_back(std::move(e));
  }
  batch.insert(batch.end(), pending_.begin(), pending_.end());  // kept until the writer answers
  const std::size_t offset = report ? 1 : 0;
  const std::size_t batch_size = batch.size();
  auto result = out.appendEach(std::move(batch));
  if (!result && retryable(result.error())) {
    std::lock_guard lock(mu_);
    stats_.last_error = result.error().message;
    return result.error();
  }
  uint64_t rejected = 0;
  std::string last_rejection;
  bool report_stored = report;
  if (result) {
    for (const Rejection& r : result->rejected) {
      ++rejected;
      if (report && r.index == 0) {
        // Cannot happen with a sane writer; retrying would only spin. Counted like the rest.
        report_stored = false;
        last_rejection = fmt::format("agent.data_dropped refused by the writer: {}",
                                     printable(r.error.message, 160));
        continue;
      }
      if (r.index < offset || r.index - offset >= pending_.size()) {
        continue;  // an index the writer made up: counted, nothing more to say
      }
      const Event& e = pending_[r.index - offset];
      const auto beacon = e.customer.find("beacon");
      last_rejection =
          fmt::format("{} of {} refused by the writer: {}", e.type,
                      beacon == e.customer.end() ? std::string("?") : printable(beacon->second),
                      printable(r.error.message, 160));
    }
  } else {
    // A writer that fails appendEach() as a whole for another reason would fail it again
    // with the same events: they are refused, counted, and the channel goes on.
    rejected = batch_size;
    report_stored = false;
    last_rejection = fmt::format("{} events refused by the writer: {}", batch_size,
                                 printable(result.error().message, 160));
  }
  // Presence events the writer took (the report is not one of them).
  const uint64_t taken = batch_size - rejected - (report_stored ? 1 : 0);
  pending_.clear();
  pending_bytes_ = 0;
  unreported_events_ = 0;
  unreported_bytes_ = 0;
  std::lock_guard lock(mu_);
  stats_.events += taken;
  stats_.events_rejected += rejected;
  stats_.drop_reports += report_stored ? 1 : 0;
  if (!last_rejection.empty()) {
    stats_.last_input_error = std::move(last_rejection);
    // A writer refusing our events is a defect somewhere: say so, but not at every poll.
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_rejection_log_) {
      spdlog::warn("beacon: {} (more in status)", stats_.last_input_error);
      next_rejection_log_ = now + std::chrono::seconds(60);
    }
  }
  return {};
}

SourceHealth BeaconSource::health() const {
  const BeaconStats s = stats();
  SourceHealth h;
  h.input_errors = s.bad_messages + s.events_rejected;
  h.last_input_error = s.last_input_error;
  h.down = s.down;
  h.counters = {
      {"messages", s.messages},
      {"bad_messages", s.bad_messages},
      {"sightings", s.sightings},
      {"frame_errors", s.frame_errors},
      {"telemetry_frames", s.telemetry_frames},
      {"queue_depth", s.queue_depth},
      {"queue_bytes", s.queue_bytes},
      {"queue_overflow", s.queue_overflow},
      {"queue_overflow_bytes", s.queue_overflow_bytes},
      {"events", s.events},
      {"events_rejected", s.events_rejected},
      {"pending", s.pending},
      {"pending_bytes", s.pending_bytes},
      {"events_dropped", s.events_dropped},
      {"events_dropped_bytes", s.events_dropped_bytes},
      {"drop_reports", s.drop_reports},
      {"tracked", s.presence.tracked},
      {"scanners", s.presence.scanners},
      {"state_bytes", s.presence.state_bytes},
      {"refused_max_tracked", s.presence.refused},
      {"refused_max_state_bytes", s.presence.refused_bytes},
      {"ignored", s.presence.ignored},
      {"enters", s.presence.enters},
      {"zone_changes", s.presence.zone_changes},
      {"exits", s.presence.exits},
      {"connects", s.connects},
      {"connect_failures", s.connect_failures},
      {"connected", s.connected ? 1 : 0},
  };
  return h;
}

BeaconStats BeaconSource::stats() const {
  std::lock_guard lock(mu_);
  BeaconStats s = stats_;
  s.queue_depth = queue_.size();
  s.queue_bytes = queue_bytes_;
  return s;
}

std::unique_ptr<Source> makeBeaconSource(BeaconOptions options) {
  return std::make_unique<BeaconSource>(std::move(options));
}

}  // namespace omniedge::beacon
