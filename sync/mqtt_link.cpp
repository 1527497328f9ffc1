#include "sync/mqtt_link.h"

#include <MQTTAsync.h>
#include <mqtt/async_client.h>
#include <spdlog/fmt/fmt.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <utility>
#include <vector>

#include "agent/api/mqtt_failure.h"
#include "sync/tls_probe.h"

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

void* tagToContext(uint64_t tag) { return reinterpret_cast<void*>(static_cast<uintptr_t>(tag)); }
uint64_t contextToTag(void* context) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(context));
}

std::string describe(int rc, int reason_code) {
  if (reason_code >= 0x80) {
    return fmt::format("PUBACK reason 0x{:02x} ({})", reason_code,
                       mqtt::exception::reason_code_str(reason_code));
  }
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

constexpr char kDoctor[] = "; try `omniedge doctor`";

// What a CONNACK refusal (3.1.1 return code 1-5, MQTT 5 reason code >= 0x80) means to a
// technician.
std::string connackRefusal(int code, const MqttOptions& o, const std::string& paho_text) {
  const std::string at = "the broker at " + o.url;
  switch (code) {
    case 1:
    case 0x84:
      return at + " does not speak this MQTT version: set mqtt.version (auto, 3.1.1 or 5)";
    case 2:
    case 0x85:
      return at + " rejected the client id \"" + o.client_id +
             "\": set mqtt.client_id to one it accepts";
    case 3:
    case 0x88:
    case 0x89:
      return at + " is unavailable or busy (CONNACK " + std::to_string(code) +
             "); retrying with backoff";
    case 4:
    case 0x86:
      return at + " refused the user name or password: check mqtt.username and " +
             "mqtt.password_file";
    case 5:
    case 0x87:
      return at + " refused this client (not authorised): check mqtt.username, " +
             "mqtt.password_file, the client certificate and the broker's ACL for client id \"" +
             o.client_id + "\"";
    case 0x8A:
      return at + " has banned this client (client id \"" + o.client_id + "\")";
    case 0x8C:
      return at + " wants another authentication method";
    case 0x97:
    case 0x9F:
      return at + " limits connections (quota or connection rate exceeded); retrying with backoff";
    default:
      return at + " refused the connection: " + paho_text;
  }
}

// Paho initialises OpenSSL itself by default when the first client is made, TLS or not: every
// algorithm and error string loaded, 2.4 MB resident in an agent that speaks mqtt://. OpenSSL 3
// initialises itself when a TLS connection first needs it, so Paho is told to leave it alone.
// This runs before main(), when no Paho client can exist yet: MQTTAsync_global_init re-creates
// Paho's global mutexes, and called beside a live client (a test's subscriber, the beacon
// gateway's source) it broke that client's disconnect.
[[maybe_unused]] const bool kPahoInitialised = [] {
  MQTTAsync_init_options init = MQTTAsync_init_options_initializer;
  init.do_openssl_init = 0;
  MQTTAsync_global_init(&init);
  return true;
}();

}  // namespace

std::size_t MqttLink::publishPacketBytes(std::size_t topic_bytes, std::size_t payload_bytes,
                                         bool v5) {
  // Packet id (2), topic length (2), property length (1, MQTT 5, no properties).
  const std::size_t remaining = 2 + topic_bytes + 2 + (v5 ? 1 : 0) + payload_bytes;
  std::size_t length_bytes = 1;
  for (std::size_t r = remaining; r >= 128; r /= 128) {
    ++length_bytes;
  }
  return 1 + length_bytes + remaining;
}

// Forwards Paho's per-publish completion to the link; the tag travels as the user context.
class MqttLink::PublishListener final : public mqtt::iaction_listener {
 public:
  explicit PublishListener(MqttLink& link) : link_(link) {}

  void on_success(const mqtt::token& tok) override {
    const int reason = tok.get_reason_code();
    if (reason >= kFirstV5ReasonFailure) {
      link_.onDelivery(contextToTag(tok.get_user_context()), false, reason,
                       describe(tok.get_return_code(), reason));
      return;
    }
    link_.onDelivery(contextToTag(tok.get_user_context()), true, 0, {});
  }
  void on_failure(const mqtt::token& tok) override {
    const int reason = tok.get_reason_code();
    link_.onDelivery(contextToTag(tok.get_user_context()), false,
                     reason >= kFirstV5ReasonFailure ? reason : 0,
                     describe(tok.get_return_code(), reason));
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

void MqttLink::onDelivery(uint64_t tag, bool ok, int reason_code, const std::string& error) {
  if (on_delivery_) {
    on_delivery_(tag, ok, reason_code, error);
  }
}

std::string MqttLink::disconnectCause(int reason) const {
  const std::string what =
      "the broker sent DISCONNECT (" + mqtt::exception::reason_code_str(reason) + ")";
  switch (reason) {
    case 0x8E:
      return what + ": another client connected with the same client id \"" + options_.client_id +
             "\" (two agents sharing one mqtt.client_id?)";
    case 0x87:
      return what + ": check the broker's ACL for this client";
    case 0x95:
      return what + ": a packet was over the broker's maximum packet size";
    case 0x97:
    case 0x96:
      return what + ": the broker's quota or message rate for this client was exceeded";
    default:
      return what;
  }
}

std::string MqttLink::connectFailure(const mqtt::exception& e) {
  const int rc = e.get_return_code();
  if (rc > 0) {
    // CONNACK: a 3.1.1 return code (1-5) or an MQTT 5 reason code (>= 0x80).
    return connackRefusal(rc, options_, e.what());
  }
  const ConnectFailure kind = classifyConnectFailure(options_.url, e.get_message());
  const bool tls_url = options_.url.rfind("mqtts://", 0) == 0 ||
                       options_.url.rfind("wss://", 0) == 0 || options_.url.rfind("ssl://", 0) == 0;
  if (tls_url && kind != ConnectFailure::kTimeout) {
    // Paho says "connect failure" whether the broker refused our certificate or is down:
    // ask the broker once more, on our own, what it objects to.
    const auto probe = probeTls(options_.url, options_.ca_file, options_.cert_file,
                                options_.key_file, true, std::chrono::seconds(3));
    if (!probe.verify_error.empty()) {
      return "TLS handshake with " + options_.url +
             " failed (certificate verify failed: " + probe.verify_error +
             "): check mqtt.ca_file (does it sign the broker's certificate, for this host name, "
             "still valid?); a certificate from another CA may be a man in the middle" +
             kDoctor;
    }
    if (auto refusal =
            describeCertificateRefusal("broker", options_.url, probe.alert, options_.cert_file,
                                       "mqtt.cert_file", "mqtt.key_file");
        !refusal.empty()) {
      return refusal + kDoctor;
    }
  }
  switch (kind) {
    case ConnectFailure::kTimeout:
      return "no answer from the broker at " + options_.url + " within " +
             std::to_string(options_.connect_timeout_s) +
             " s: is the address right, does a firewall drop the traffic?" + kDoctor;
    case ConnectFailure::kUnreachable:
      return "broker unreachable at " + options_.url +
             " (connection refused or no route): is it running, is mqtt.url right?" + kDoctor;
    case ConnectFailure::kUnresolved:
      return "cannot resolve the broker's host name \"" + hostOf(options_.url) + "\" of " +
             options_.url + ": check mqtt.url and the store's DNS" + kDoctor;
    case ConnectFailure::kOther:
      break;
  }
  return "cannot connect to " + options_.url + ": " + e.what() + kDoctor;
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
  bool tls = false;
  auto uri = pahoUri(options_.url, tls);
  const int level = uri ? nextProtocolLevel() : 0;
  // A fresh client after a connection, so that nothing of it is retransmitted. After an attempt
  // that never reached the broker (nothing was sent) the same client tries again, to the same
  // address at the same level: a new one each time ran through Paho's, libssl's and libcrypto's
  // set-up code at every attempt, ~0.35 MB more of the idle daemon's resident code while the
  // broker is away (docs/benchmarks.md, "What the idle daemon's memory is").
  if (!client_unused_ || !uri || *uri != client_uri_ || level != client_level_) {
    client_.reset();
  }
  client_unused_ = false;
  if (!uri) {
    return uri.error();
  }
  for (const auto* file : {&options_.ca_file, &options_.cert_file, &options_.key_file}) {
    if (!file->empty() && !readable(*file)) {
      return makeError("invalid", "cannot read " + *file);
    }
  }
  try {
    if (!client_) {
      mqtt::create_options create(level);
      create.set_send_while_disconnected(false);
      create.set_max_buffered_messages(kMaxQueuedPublishes);
      client_ = std::make_unique<mqtt::async_client>(*uri, options_.client_id, create, nullptr);
      client_uri_ = *uri;
      client_level_ = level;
      client_->set_connection_lost_handler(
          [this](const std::string& cause) { onConnectionLost(cause); });
      if (on_message_) {
        // Set before connecting: a persistent session delivers what waited as soon as it is up.
        client_->set_message_callback(
            [this](mqtt::const_message_ptr m) { on_message_(m->get_topic(), m->to_string()); });
      }
      client_->set_disconnected_handler([this](const mqtt::properties&, mqtt::ReasonCode reason) {
        onConnectionLost(disconnectCause(static_cast<int>(reason)));
      });
    }

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
      // No ssl.set_error_handler(): Paho C keeps a pointer into the copy of the options that
      // async_client::connect() takes by value, and calls it for OpenSSL errors long after
      // that copy is gone (ASan: stack-use-after-scope, scripts/sanitize). The reason of a
      // failed handshake comes from probeTls() in connectFailure() instead.
      opts.set_ssl(ssl);
    }

    broker_max_packet_ = 0;
    auto tok = client_->connect(opts);
    while (!tok->wait_for(kPollInterval)) {
      if (stop.stop_requested()) {
        client_.reset();
        return makeError("stopping", "stopped while connecting");
      }
    }
    // Version 5 or 3.1.1 as asked: Paho reports what the CONNACK came back on.
    const mqtt::connect_response response = tok->get_connect_response();
    const int used = response.get_mqtt_version();
    protocol_level_ = used != 0 ? used : level;
    // Properties only on MQTT 5: a 3.1.1 CONNACK has none, and under TSan the properties read
    // back for a 3.1.1 connection held garbage (a stack address as the maximum packet size,
    // docs/reliability.md §18; where Paho leaves them unset is not pinned down).
    if (protocol_level_ == MQTTVERSION_5 &&
        response.get_properties().contains(mqtt::property::MAXIMUM_PACKET_SIZE)) {
      broker_max_packet_ =
          mqtt::get<uint32_t>(response.get_properties(), mqtt::property::MAXIMUM_PACKET_SIZE);
    }
    decided_level_ = level;
    connected_ = true;
    if (!client_->is_connected()) {
      // Lost between CONNACK and here: the handler fired before connected_ was set.
      connected_ = false;
      return makeError("connect", "connection to " + options_.url +
                                      " lost right after the broker accepted it: another agent "
                                      "using the same mqtt.client_id \"" +
                                      options_.client_id +
                                      "\"? the broker's ACL or quota refusing this client?");
    }
    return {};
  } catch (const mqtt::exception& e) {
    const int rc = e.get_return_code();
    if (rc == MQTTASYNC_FAILURE &&
        e.get_message().find(kPahoTransportFailure) != std::string::npos) {
      client_unused_ = true;  // no TCP/TLS connection: the next attempt may use it again
    } else {
      client_.reset();
    }
    if (rc == MQTTASYNC_BAD_PROTOCOL || rc == MQTTASYNC_BAD_MQTT_OPTION) {
      return makeError("invalid", e.what());
    }
    if (rc == kConnackBadProtocolVersion || e.get_reason_code() == kUnsupportedProtocolVersion) {
      auto_attempts_ = level == MQTTVERSION_5 ? 1 : 0;  // the other one next time
    } else if (rc != MQTTASYNC_FAILURE ||
               e.get_message().find(kPahoTransportFailure) == std::string::npos) {
      // The server answered (or hung up on) the CONNECT: it may not speak this version.
      ++auto_attempts_;
    }
    return makeError("connect", connectFailure(e));
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
  if (const int64_t max = broker_max_packet_.load(); max > 0) {
    const std::size_t bytes = publishPacketBytes(message.topic.size(), message.payload.size(),
                                                 protocol_level_ == MQTTVERSION_5);
    if (static_cast<int64_t>(bytes) > max) {
      return makeError("too_large", "a " + std::to_string(bytes) +
                                        "-byte packet is over the broker's maximum packet size (" +
                                        std::to_string(max) + " bytes)");
    }
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
