// A thin wrapper over one Paho async_client: connect (persistent session, will, TLS), QoS 1
// publish with a completion callback, connection-lost notification, disconnect.
//
// Paho's own reconnect and offline buffering are off on purpose: the SQLite buffer is the only
// source of truth, so a publish while disconnected fails at once and the caller resends from the
// buffer. Every connect() builds a fresh client, so nothing from an earlier connection is ever
// retransmitted behind the caller's back.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/result.h"

namespace mqtt {
class async_client;
class exception;
}  // namespace mqtt

namespace omniedge::sync {

enum class MqttVersion { kAuto, kV311, kV5 };

/// "auto" | "3.1.1" | "5" (the values of `mqtt.version`); nullopt for anything else.
std::optional<MqttVersion> parseMqttVersion(std::string_view name);

/// The `mqtt.*` settings the uplink needs.
struct MqttOptions {
  std::string url = "mqtt://127.0.0.1:1883";  // mqtt://, mqtts://, ws://, wss://
  /// The nodes of a broker cluster (mqtt.url's comma-separated items), tried in turn by the
  /// sync engine: a failed connect or a lost connection moves on to the next one. Empty: {url}.
  std::vector<std::string> urls;
  std::string client_id;  // stable per store: the session is persistent
  std::string username;   // empty: none
  std::string password;   // the content of mqtt.password_file
  std::string ca_file;    // mqtts/wss: trust anchors; empty: the system store
  std::string cert_file;  // client certificate (mutual TLS); empty: none
  std::string key_file;
  int keepalive_s = 30;
  MqttVersion version = MqttVersion::kAuto;  // kAuto tries 5, then 3.1.1, and keeps what worked
  int reconnect_min_ms = 500;                // backoff bounds for the sync engine
  int reconnect_max_ms = 60'000;
  std::string topic_root;  // "omniedge/v1/{tenant}/{store_id}"
  int connect_timeout_s = 10;
  int64_t session_expiry_s = 7 * 24 * 3600;  // MQTT 5 only; 3.1.1 sessions never expire
  /// The largest MQTT packet the broker takes (`mqtt.max_packet_bytes`); 0: what the broker
  /// announces in its CONNACK (MQTT 5), else kSafeMaxPacketBytes. A 3.1.1 broker cannot say
  /// its limit, and mosquitto's `message_size_limit` PUBACKs and drops what is larger: set it.
  int64_t max_packet_bytes = 0;
  /// A connection proves itself (and the reconnect backoff starts again from the shortest
  /// delay) once a batch's PUBACK arrived on it or it stayed up this long.
  int proven_after_ms = 30'000;
};

/// Used when neither the config nor the broker's CONNACK gives a maximum packet size: below
/// what common brokers take by default (AWS IoT: 128 KB payloads; mosquitto, EMQX, HiveMQ: more).
constexpr int64_t kSafeMaxPacketBytes = 128 * 1024;

/// A message to publish (the will, a status document, a batch).
struct MqttMessage {
  std::string topic;
  std::string payload;
  bool retained = false;
};

/// One MQTT connection. connect(), publish(), publishAndWait() and disconnect() are for ONE
/// owner thread; the handlers run on Paho's threads and must not block.
class MqttLink {
 public:
  /// A QoS 1 publish finished: `ok` when its PUBACK arrived (with a success reason code),
  /// otherwise `error` says why and `reason_code` is the MQTT 5 PUBACK reason code when the
  /// broker refused the message (>= 0x80; 0 when it never answered). Runs on a Paho thread (or
  /// inside connect()/disconnect()/the destructor when they drop unfinished publishes): must
  /// only hand the result over.
  using DeliveryHandler =
      std::function<void(uint64_t tag, bool ok, int reason_code, const std::string& error)>;
  /// The connection established by connect() was lost. Runs on a Paho thread, once per
  /// connection; must only hand the news over.
  using LostHandler = std::function<void(const std::string& cause)>;

  /// Thread: the owner. Never blocks, never fails (options are checked by connect()).
  explicit MqttLink(MqttOptions options);
  /// Thread: the owner. Drops the connection (no DISCONNECT) and every unfinished publish.
  ~MqttLink();
  MqttLink(const MqttLink&) = delete;
  MqttLink& operator=(const MqttLink&) = delete;

  /// A message arrived on a subscribed topic. Runs on a Paho thread: must only hand it over.
  using MessageHandler = std::function<void(std::string topic, std::string payload)>;

  /// The broker node the next connect() goes to (failover between a cluster's nodes).
  /// Thread: the owner, between connections. Never blocks.
  void setUrl(std::string url) { options_.url = std::move(url); }

  /// Thread: the owner, before connect(). Never blocks.
  void setHandlers(DeliveryHandler on_delivery, LostHandler on_lost,
                   MessageHandler on_message = {});

  /// Subscribes to `topics` at QoS 1 (the session is persistent, so what the centre sent while
  /// the store was offline arrives now). Thread: the owner. Blocks up to `timeout` for the
  /// SUBACK. Fails with "disconnected", "timeout" or "io".
  Result<void> subscribe(const std::vector<std::string>& topics, std::chrono::milliseconds timeout);

  /// Connects with a fresh client and `will` (published QoS 1 by the broker when this connection
  /// dies without a DISCONNECT). Thread: the owner. Blocks until CONNACK, connect_timeout_s, or
  /// `stop` (polled every 100 ms). Fails with "invalid" (bad URL, version, TLS files),
  /// "connect" (refused, unreachable, TLS handshake, refused by the broker) or "stopping"; the
  /// message names the URL, what went wrong and what to check. Never throws.
  /// A publish still unfinished from the previous connection is dropped with the old client:
  /// its DeliveryHandler may run (not ok) during this call, or not at all.
  Result<void> connect(const MqttMessage& will, std::stop_token stop);

  /// Queues a QoS 1 publish; the DeliveryHandler later reports `tag`'s outcome.
  /// Thread: the owner. Never blocks on the network. Fails with "disconnected", "too_large"
  /// (over the broker's announced maximum packet size: never sent) or "io" (the client refused
  /// it, e.g. too many queued); the handler is then not called for `tag`.
  Result<void> publish(MqttMessage message, uint64_t tag);

  /// Publishes QoS 1 and waits for its PUBACK (the DeliveryHandler is not called).
  /// Thread: the owner. Blocks up to `timeout`. Fails with "disconnected", "timeout" or "io".
  Result<void> publishAndWait(MqttMessage message, std::chrono::milliseconds timeout);

  /// Sends DISCONNECT (the broker then discards the will) and closes. Publishes still unfinished
  /// after `timeout` are dropped. Thread: the owner. Blocks up to `timeout` + 100 ms. Never fails.
  void disconnect(std::chrono::milliseconds timeout);

  /// True between a successful connect() and the loss or disconnect. Thread: any.
  bool connected() const { return connected_.load(); }
  /// The protocol level in use since the last successful connect(): 4 (3.1.1) or 5.
  /// Thread: any.
  int protocolLevel() const { return protocol_level_.load(); }
  /// The Maximum Packet Size the broker announced in its last CONNACK (MQTT 5); 0 when it
  /// announced none (always 0 on 3.1.1). Thread: any.
  int64_t brokerMaxPacketSize() const { return broker_max_packet_.load(); }

  /// Bytes an MQTT PUBLISH of `payload_bytes` on `topic` takes on the wire at QoS 1 (fixed
  /// header, topic, packet id, MQTT 5 property length). Thread: any.
  static std::size_t publishPacketBytes(std::size_t topic_bytes, std::size_t payload_bytes,
                                        bool v5);

 private:
  class PublishListener;

  void onConnectionLost(const std::string& cause);
  void onDelivery(uint64_t tag, bool ok, int reason_code, const std::string& error);
  std::string connectFailure(const mqtt::exception& e);
  std::string disconnectCause(int reason) const;
  int nextProtocolLevel();

  MqttOptions options_;
  DeliveryHandler on_delivery_;
  LostHandler on_lost_;
  MessageHandler on_message_;
  std::unique_ptr<PublishListener> listener_;
  std::unique_ptr<mqtt::async_client> client_;  // owner thread only
  // Owner thread: the address and level client_ was made for, and whether its last attempt
  // failed before any connection (then the next attempt to the same place may reuse it).
  std::string client_uri_;
  int client_level_ = 0;
  bool client_unused_ = false;
  std::atomic<bool> connected_{false};
  std::atomic<int> protocol_level_{0};
  std::atomic<int64_t> broker_max_packet_{0};
  int decided_level_ = 0;       // kAuto: the level that last worked (0: not known yet)
  unsigned auto_attempts_ = 0;  // kAuto: failed attempts so far, alternating 5 and 3.1.1
};

}  // namespace omniedge::sync
