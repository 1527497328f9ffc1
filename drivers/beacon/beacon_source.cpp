#include "drivers/beacon/beacon_source.h"

#include <fmt/format.h>
#include <mqtt/async_client.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "drivers/beacon/gateway.h"

namespace omniedge::beacon {
namespace {

constexpr int kWaitMs = 200;
constexpr std::size_t kMaxMessagesPerPoll = 50'000;

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
}

void BeaconSource::onMessage(std::string topic, std::string payload) {
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= options_.queue_capacity) {
      ++stats_.queue_overflow;
      return;
    }
    queue_.push_back(Message{std::move(topic), std::move(payload)});
  }
  cv_.notify_one();
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
        fail("connection lost", now);
        return makeError("connect", "beacon broker connection lost");
      }
      if (subscribe_token_ && subscribe_token_->is_complete()) {
        const int rc = subscribe_token_->get_return_code();
        subscribe_token_.reset();
        if (rc != 0) {
          fail(fmt::format("subscribe failed ({})", rc), now);
          return makeError("connect", "beacon topics could not be subscribed");
        }
      }
      return {};
    }
    if (state_ == State::kConnecting) {
      if (!connect_token_->is_complete()) {
        if (now >= next_attempt_ms_) {  // used as the connect deadline meanwhile
          fail("connect timed out", now);
          return makeError("connect", "beacon broker connect timed out");
        }
        return {};
      }
      const int rc = connect_token_->get_return_code();
      connect_token_.reset();
      if (rc != 0) {
        const std::string why = fmt::format("connect to {} failed: {}", options_.mqtt_url,
                                            mqtt::exception::error_str(rc));
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
    client_->set_message_callback(
        [this](mqtt::const_message_ptr msg) { onMessage(msg->get_topic(), msg->to_string()); });
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
  Result<void> connection = manageConnection(now);

  std::deque<Message> batch;
  {
    std::unique_lock lock(mu_);
    if (queue_.empty() && pending_.empty() && !stop.stop_requested() && now < next_tick_ms_) {
      cv_.wait_for(lock, std::chrono::milliseconds(kWaitMs),
                   [&] { return !queue_.empty() || lost_ || stop.stop_requested(); });
    }
    if (queue_.size() <= kMaxMessagesPerPoll) {
      batch.swap(queue_);
    } else {
      for (std::size_t i = 0; i < kMaxMessagesPerPoll; ++i) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
  }
  now = clock_->nowMs();

  uint64_t bad = 0;
  uint64_t frame_errors = 0;
  uint64_t sightings = 0;
  std::string last_error;
  for (const Message& message : batch) {
    auto parsed = parseGatewayMessage(message.topic, message.payload);
    if (!parsed) {
      ++bad;
      last_error = parsed.error().message;
      continue;
    }
    frame_errors += parsed->frame_errors;
    if (parsed->frame_errors > 0) {
      last_error = parsed->last_frame_error;
    }
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
  uint64_t dropped = 0;
  if (pending_.size() > options_.max_pending_events) {
    dropped = pending_.size() - options_.max_pending_events;
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(dropped));
  }

  Result<void> appended;
  uint64_t appended_count = 0;
  if (!pending_.empty()) {
    auto result = out.append(pending_);
    if (result) {
      appended_count = pending_.size();
      pending_.clear();
    } else {
      appended = result.error();
    }
  }
  {
    std::lock_guard lock(mu_);
    stats_.messages += batch.size();
    stats_.bad_messages += bad;
    stats_.frame_errors += frame_errors;
    stats_.sightings += sightings;
    stats_.events += appended_count;
    stats_.events_dropped += dropped;
    stats_.presence = engine_.stats();
    if (!last_error.empty()) {
      stats_.last_error = last_error;
    }
    if (!appended) {
      stats_.last_error = appended.error().message;
    }
  }
  if (bad > 0) {
    spdlog::debug("beacon: {} bad gateway messages, last: {}", bad, last_error);
  }
  if (!appended) {
    return appended;
  }
  return connection;
}

BeaconStats BeaconSource::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

std::unique_ptr<Source> makeBeaconSource(BeaconOptions options) {
  return std::make_unique<BeaconSource>(std::move(options));
}

}  // namespace omniedge::beacon
