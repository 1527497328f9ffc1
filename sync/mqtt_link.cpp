#include "sync/mqtt_link.h"

#include <mqtt/async_client.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <utility>

namespace omniedge::sync {
namespace {

constexpr int kQos = 1;
constexpr auto kPollInterval = std::chrono::milliseconds(100);
// Paho counts queued (not yet written) publishes against this even while connected; offline
// buffering itself is off (send_while_disconnected false), so this only bounds the queue.
constexpr int kMaxQueuedPublishes = 1000;
constexpr int kFirstV5ReasonFailure = 0x80;
constexpr int kConnackBadProtocolVersion = 1;      // MQTT 3.1.1 CONNACK return code
constexpr int kUnsupportedProtocolVersion = 0x84;  // MQTT 5 CONNACK reason code
// Paho's message when no TCP/TLS connection could be made: says nothing about the version.
constexpr std::string_view kTransportFailure = "TCP/TLS connect failure";

void* tagToContext(uint64_t tag) { return reinterpret_cast<void*>(static_cast<uintptr_t>(tag)); }
uint64_t contextToTag(void* context) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(context));
}

std::string describe(int rc, int reason_code) {
  return mqtt::exception::printable_error(rc, reason_code, mqtt::exception::error_str(rc));
}

// Paho spells the schemes tcp:// and ssl://; the config speaks mqtt:// and mqtts://.
Result<std::string> pahoUri(const std::string& url, bool& tls) {
  struct Scheme {
    std::string_view ours;
    std::string_view paho;
    bool tls;
  };
  static constexpr Scheme kSchemes[] = {{"mqtt://", "tcp://", false}, {"mqtts://", "ssl://", true},
                                        {"ws://", "ws://", false},    {"wss://", "wss://", true},
                                        {"tcp://", "tcp://", false},  {"ssl://", "ssl://", true}};
  for (const auto& s : kSchemes) {
    if (url.rfind(s.ours, 0) == 0 && url.size() > s.ours.size()) {
      tls = s.tls;
      return std::string(s.paho) + url.substr(s.ours.size());
    }
  }
  return makeError("invalid", "mqtt.url must start with mqtt://, mqtts://, ws:// or wss://: " + url,
                   "url");
}

bool readable(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

}  // namespace

// Forwards Paho's per-publish completion to the link; the tag travels as the user context.
class MqttLink::PublishListener final : public mqtt::iaction_listener {
 public:
  explicit PublishListener(MqttLink& link) : link_(link) {}

  void on_success(const mqtt::token& tok) override {
    const int reason = tok.get_reason_code();
    if (reason >= kFirstV5ReasonFailure) {
      link_.onDelivery(contextToTag(tok.get_user_context()), false,
                       describe(tok.get_return_code(), reason));
      return;
    }
    link_.onDelivery(contextToTag(tok.get_user_context()), true, {});
  }
  void on_failure(const mqtt::token& tok) override {
    link_.onDelivery(contextToTag(tok.get_user_context()), false,
                     describe(tok.get_return_code(), tok.get_reason_code()));
  }

 private:
  MqttLink& link_;
};

std::optional<MqttVersion> parseMqttVersion(std::string_view name) {
  if (name == "auto") {
    return MqttVersion::kAuto;
  }
  if (name == "3.1.1") {
    return MqttVersion::kV311;
  }
  if (name == "5") {
    return MqttVersion::kV5;
  }
  return std::nullopt;
}

MqttLink::MqttLink(MqttOptions options)
    : options_(std::move(options)), listener_(std::make_unique<PublishListener>(*this)) {}

MqttLink::~MqttLink() {
  connected_ = false;
  client_.reset();
}

void MqttLink::setHandlers(DeliveryHandler on_delivery, LostHandler on_lost,
                           MessageHandler on_message) {
  on_delivery_ = std::move(on_delivery);
  on_lost_ = std::move(on_lost);
  on_message_ = std::move(on_message);
}

void MqttLink::onConnectionLost(const std::string& cause) {
  // Paho may report one loss through both the lost and the (MQTT 5) disconnected handler.
  if (connected_.exchange(false) && on_lost_) {
    on_lost_(cause.empty() ? "connection lost" : cause);
  }
}

void MqttLink::onDelivery(uint64_t tag, bool ok, const std::string& error) {
  if (on_delivery_) {
    on_delivery_(tag, ok, error);
  }
}

int MqttLink::nextProtocolLevel() {
  switch (options_.version) {
    case MqttVersion::kV311:
      return MQTTVERSION_3_1_1;
    case MqttVersion::kV5:
      return MQTTVERSION_5;
    case MqttVersion::kAuto:
      break;
  }
  if (decided_level_ != 0) {
    return decided_level_;
  }
  // A broker that does not speak 5 may just close the socket, which looks like any other
  // failure: alternate until one works, then keep it.
  return auto_attempts_ % 2 == 0 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
}

Result<void> MqttLink::connect(const MqttMessage& will, std::stop_token stop) {
  connected_ = false;
  client_.reset();  // a fresh client: nothing of the last connection is retransmitted

  bool tls = false;
  auto uri = pahoUri(options_.url, tls);
  if (!uri) {
    return uri.error();
  }
  for (const auto* file : {&options_.ca_file, &options_.cert_file, &options_.key_file}) {
    if (!file->empty() && !readable(*file)) {
      return makeError("invalid", "cannot read " + *file);
    }
  }
  const int level = nextProtocolLevel();
  try {
    mqtt::create_options create(level);
    create.set_send_while_disconnected(false);
    create.set_max_buffered_messages(kMaxQueuedPublishes);
    client_ = std::make_unique<mqtt::async_client>(*uri, options_.client_id, create, nullptr);
    client_->set_connection_lost_handler(
        [this](const std::string& cause) { onConnectionLost(cause); });
    if (on_message_) {
      // Set before connecting: a persistent session delivers what waited as soon as it is up.
      client_->set_message_callback(
          [this](mqtt::const_message_ptr m) { on_message_(m->get_topic(), m->to_string()); });
    }
    client_->set_disconnected_handler([this](const mqtt::properties&, mqtt::ReasonCode reason) {
      onConnectionLost("server sent DISCONNECT: " +
                       mqtt::exception::reason_code_str(static_cast<int>(reason)));
    });

    mqtt::connect_options opts;
    opts.set_mqtt_version(level);
    opts.set_clean_session(false);
    opts.set_clean_start(false);
    if (level == MQTTVERSION_5) {
      mqtt::properties props;
      props.add(mqtt::property(
          mqtt::property::SESSION_EXPIRY_INTERVAL,
          static_cast<int32_t>(std::min<int64_t>(options_.session_expiry_s, INT32_MAX))));
      opts.set_properties(props);
    }
    opts.set_keep_alive_interval(options_.keepalive_s);
    opts.set_connect_timeout(options_.connect_timeout_s);
    opts.set_automatic_reconnect(false);
    if (!options_.username.empty()) {
      opts.set_user_name(options_.username);
    }
    if (!options_.password.empty()) {
      opts.set_password(options_.password);
    }
    opts.set_will(mqtt::will_options(will.topic, will.payload, kQos, will.retained));
    if (tls) {
      mqtt::ssl_options ssl;
      if (!options_.ca_file.empty()) {
        ssl.set_trust_store(options_.ca_file);
      }
      if (!options_.cert_file.empty()) {
        ssl.set_key_store(options_.cert_file);
      }
      if (!options_.key_file.empty()) {
        ssl.set_private_key(options_.key_file);
      }
      ssl.set_enable_server_cert_auth(true);
      ssl.set_verify(true);  // the host name too, not only the chain
      opts.set_ssl(ssl);
    }

    auto tok = client_->connect(opts);
    while (!tok->wait_for(kPollInterval)) {
      if (stop.stop_requested()) {
        client_.reset();
        return makeError("stopping", "stopped while connecting");
      }
    }
    // Version 5 or 3.1.1 as asked: Paho reports what the CONNACK came back on.
    const int used = tok->get_connect_response().get_mqtt_version();
    protocol_level_ = used != 0 ? used : level;
    decided_level_ = level;
    connected_ = true;
    if (!client_->is_connected()) {
      // Lost between CONNACK and here: the handler fired before connected_ was set.
      connected_ = false;
      return makeError("connect", "connection lost right after CONNACK");
    }
    return {};
  } catch (const mqtt::exception& e) {
    client_.reset();
    const int rc = e.get_return_code();
    if (rc == MQTTASYNC_BAD_PROTOCOL || rc == MQTTASYNC_BAD_MQTT_OPTION) {
      return makeError("invalid", e.what());
    }
    if (rc == kConnackBadProtocolVersion || e.get_reason_code() == kUnsupportedProtocolVersion) {
      auto_attempts_ = level == MQTTVERSION_5 ? 1 : 0;  // the other one next time
    } else if (rc != MQTTASYNC_FAILURE ||
               e.get_message().find(kTransportFailure) == std::string::npos) {
      // The server answered (or hung up on) the CONNECT: it may not speak this version.
      ++auto_attempts_;
    }
    return makeError("connect", e.what());
  } catch (const std::exception& e) {  // Paho C++ also throws std::invalid_argument and friends
    client_.reset();
    return makeError("invalid", e.what());
  }
}

Result<void> MqttLink::subscribe(const std::vector<std::string>& topics,
                                 std::chrono::milliseconds timeout) {
  if (!client_ || !connected_) {
    return makeError("disconnected", "not connected");
  }
  if (topics.empty()) {
    return {};
  }
  try {
    auto filters = mqtt::string_collection::create(topics);
    std::vector<int> qos(topics.size(), kQos);
    auto tok = client_->subscribe(filters, mqtt::iasync_client::qos_collection(qos));
    if (!tok->wait_for(timeout)) {
      return makeError("timeout", "no SUBACK within the timeout");
    }
    return {};
  } catch (const mqtt::exception& e) {
    return makeError("io", e.what());
  }
}

Result<void> MqttLink::publish(MqttMessage message, uint64_t tag) {
  if (!client_ || !connected_) {
    return makeError("disconnected", "not connected");
  }
  try {
    auto msg = mqtt::make_message(std::move(message.topic), std::move(message.payload), kQos,
                                  message.retained);
    client_->publish(msg, tagToContext(tag), *listener_);
    return {};
  } catch (const mqtt::exception& e) {
    return makeError(e.get_return_code() == MQTTASYNC_DISCONNECTED ? "disconnected" : "io",
                     e.what());
  } catch (const std::exception& e) {
    return makeError("io", e.what());
  }
}

Result<void> MqttLink::publishAndWait(MqttMessage message, std::chrono::milliseconds timeout) {
  if (!client_ || !connected_) {
    return makeError("disconnected", "not connected");
  }
  try {
    auto msg = mqtt::make_message(std::move(message.topic), std::move(message.payload), kQos,
                                  message.retained);
    auto tok = client_->publish(msg);
    if (!tok->wait_for(timeout)) {
      return makeError("timeout", "no PUBACK in time");
    }
    if (tok->get_reason_code() >= kFirstV5ReasonFailure) {
      return makeError("io", describe(tok->get_return_code(), tok->get_reason_code()));
    }
    return {};
  } catch (const mqtt::exception& e) {
    return makeError("io", e.what());
  } catch (const std::exception& e) {
    return makeError("io", e.what());
  }
}

void MqttLink::disconnect(std::chrono::milliseconds timeout) {
  const bool was_connected = connected_.exchange(false);
  if (!client_) {
    return;
  }
  if (was_connected) {
    try {
      auto tok = client_->disconnect(static_cast<int>(timeout.count()));
      tok->wait_for(timeout + kPollInterval);
    } catch (const std::exception&) {
      // Already gone: the broker will publish the will, which is the truth anyway.
    }
  }
  client_.reset();
}

}  // namespace omniedge::sync
