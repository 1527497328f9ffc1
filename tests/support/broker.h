// A real mosquitto for integration tests, a collecting subscriber, and a TCP proxy that can cut
// connections abruptly (what a broker sees when a store's link dies).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "tests/support/temp_dir.h"

namespace mqtt {
class async_client;
}  // namespace mqtt

namespace omniedge::testing {

/// `/usr/sbin/mosquitto` on 127.0.0.1 and a port picked at run time, with its config,
/// persistence and log in a temp dir. Set up so that it loses nothing it PUBACKed, even on
/// SIGKILL (autosave after every change) and queues without limit for offline persistent
/// subscribers (quality.md R2). Failures to start throw std::runtime_error (it is a fixture).
class MosquittoBroker {
 public:
  /// A TLS listener instead of plain TCP (PEM files).
  struct Tls {
    std::string ca_file;    // trust anchors for client certificates
    std::string cert_file;  // the broker's certificate and key
    std::string key_file;
    bool require_certificate = false;  // mutual TLS
  };

  /// Everything that can be set, for tests of limits and refusals.
  struct Options {
    std::optional<Tls> tls;
    /// mosquitto's `message_size_limit` (payload bytes; 0: none). Over it, mosquitto 2.0 drops
    /// the message: a 3.1.1 client still gets a plain PUBACK, an MQTT 5 client PUBACK 0x95.
    int64_t message_size_limit = 0;
    /// mosquitto's `max_packet_size` (whole packet; 0: none): announced in an MQTT 5 CONNACK;
    /// a client sending a larger packet is disconnected (0x95 on MQTT 5).
    int64_t max_packet_size = 0;
    /// 0: unlimited (what the R2 tests need). mosquitto 2.0.11 with 0 closes a client's
    /// connection after dropping a message over message_size_limit: set a finite value to see
    /// only the documented behaviour.
    int64_t max_queued_messages = 0;
    std::string extra_config;  // more mosquitto.conf lines
  };

  /// Picks a port and writes the config; starts the broker unless `start_now` is false.
  explicit MosquittoBroker(bool start_now = true, std::optional<Tls> tls = std::nullopt);
  explicit MosquittoBroker(const Options& options, bool start_now = true);
  /// Kills the broker (SIGKILL) if it runs.
  ~MosquittoBroker();
  MosquittoBroker(const MosquittoBroker&) = delete;
  MosquittoBroker& operator=(const MosquittoBroker&) = delete;

  int port() const { return port_; }
  /// "mqtt://127.0.0.1:PORT" ("mqtts://…" with TLS)
  std::string url() const;
  bool running() const { return pid_ > 0; }
  /// The broker's pid (-1 when stopped), e.g. to send SIGUSR1 (save now).
  pid_t pid() const { return pid_; }
  /// Where it saves its state (autosave, SIGUSR1, exit).
  std::filesystem::path persistenceFile() const { return dir_.path() / "mosquitto.db"; }

  /// Starts it (on the same port, with its persisted state) and waits until the port accepts
  /// connections (≤ 10 s).
  void start();
  /// SIGTERM, then waits for the exit (SIGKILL after 5 s). Persistence is saved.
  void stop();
  /// SIGKILL and waits for the exit: no goodbye to clients, only what autosave wrote survives.
  void kill();
  /// stop() then start(): same port, same persisted sessions and retained messages.
  void restart();
  /// The broker's log so far.
  std::string log() const;

 private:
  void waitExit(std::chrono::milliseconds timeout);

  TempDir dir_;
  int port_ = 0;
  bool tls_ = false;
  pid_t pid_ = -1;
};

/// A throw-away PKI made with the openssl CLI: a CA, a server certificate for 127.0.0.1 and
/// localhost, a client certificate, and a second, unrelated ("rogue") CA with its own server
/// certificate. Throws std::runtime_error when openssl fails.
struct TestPki {
  std::string ca_cert, ca_key;
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  std::string rogue_ca_cert, rogue_server_cert, rogue_server_key;
};
TestPki makeTestPki(const std::filesystem::path& dir);

/// One MQTT message as the Subscriber received it, payload already decoded.
struct ReceivedMessage {
  std::string topic;
  std::string payload;
  bool retained = false;
};

/// A QoS 1 subscriber with a persistent session that reconnects by itself (Paho's automatic
/// reconnect: fine in a test, not in the agent) and collects everything on `topic_filter`.
/// Payloads starting with 1f 8b are gunzipped; anything else goes through `decoder` when one is
/// given (e.g. to unzstd), else is kept as is. Paho failures while constructing throw.
class Subscriber {
 public:
  using Decoder = std::function<std::string(std::string payload)>;

  Subscriber(const std::string& url, std::string topic_filter, Decoder decoder = {});
  ~Subscriber();
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  /// Everything received so far, in arrival order.
  std::vector<ReceivedMessage> messages() const;
  std::size_t messageCount() const;
  /// True once `predicate(messages so far)` holds, false after `timeout`. The predicate runs
  /// with the subscriber's lock held, on every arrival (and every 100 ms).
  bool waitFor(const std::function<bool(const std::vector<ReceivedMessage>&)>& predicate,
               std::chrono::milliseconds timeout) const;
  /// The newest message on exactly `topic`, or "" if none yet.
  std::string last(const std::string& topic) const;

  /// Batches on topics ending in "/events" are parsed: distinct event ids seen so far, and
  /// every event received including duplicates.
  std::size_t distinctEventIds();
  std::size_t eventsReceived();
  /// True once `n` distinct event ids arrived, false after `timeout`.
  bool waitForEventIds(std::size_t n, std::chrono::milliseconds timeout);
  /// Whether `id` was received in some batch.
  bool hasEventId(const std::string& id);

 private:
  void onMessage(std::string topic, std::string payload, bool retained);
  void indexEvents();  // parses batches not yet indexed; called with mu_ held

  std::string topic_filter_;
  Decoder decoder_;
  std::unique_ptr<mqtt::async_client> client_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<ReceivedMessage> messages_;  // guarded by mu_
  std::size_t indexed_ = 0;                // guarded by mu_: messages_ parsed for event ids
  std::unordered_set<std::string> ids_;    // guarded by mu_
  std::size_t events_received_ = 0;        // guarded by mu_
};

/// Waits until every id in `ids` arrived at `sub` (or `timeout` passed); returns how many are
/// still missing (0: all there).
std::size_t waitForAllIds(Subscriber& sub, const std::vector<std::string>& ids,
                          std::chrono::milliseconds timeout);

/// Forwards 127.0.0.1:port() to 127.0.0.1:target_port, one thread; dropConnections() resets
/// every proxied connection (RST, no MQTT DISCONNECT), so the broker fires the client's will.
class TcpProxy {
 public:
  explicit TcpProxy(int target_port);
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  /// "mqtt://127.0.0.1:PORT"
  std::string url() const;
  /// Resets every open connection; returns once they are closed. New ones are still accepted.
  void dropConnections();
  /// Connections accepted so far (and forwarded to the target).
  std::size_t accepted() const { return accepted_.load(); }

  /// While set, each new connection is reset (RST) `delay` after the first bytes from the
  /// target (the broker's CONNACK) went through: a broker that accepts a client, then drops it.
  /// nullopt: connections stay. Thread: any.
  void cutAfterFirstReply(std::optional<std::chrono::milliseconds> delay);
  /// While true, nothing the target sends is forwarded (PUBACKs are withheld; they are sent on
  /// once it is false again, unless the connection was dropped meanwhile). Thread: any.
  void holdReplies(bool hold);

 private:
  void run();

  int target_port_ = 0;
  int port_ = 0;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> accepted_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t drop_requested_ = 0;                         // guarded by mu_
  uint64_t drop_done_ = 0;                              // guarded by mu_
  std::optional<std::chrono::milliseconds> cut_after_;  // guarded by mu_
  std::atomic<bool> hold_replies_{false};
  std::thread thread_;
};

/// Before a SIGKILL of a mosquitto that `client` reaches through `proxy`: mosquitto PUBACKs a
/// message before its autosave has it, so a SIGKILL loses what it acknowledged and had not yet
/// passed on (docs/reliability.md §15, R2), which is the broker's loss, not the client's.
/// Withholds the broker's replies at `proxy` (no more PUBACKs reach the client), then waits
/// until `sub` holds every one of `ids` for which `acknowledged(index)` holds. The caller kills
/// the broker, then calls proxy.dropConnections() and proxy.holdReplies(false). False after
/// `timeout`.
bool holdAndDeliverAcknowledged(TcpProxy& proxy, Subscriber& sub,
                                const std::vector<std::string>& ids,
                                const std::function<bool(std::size_t)>& acknowledged,
                                std::chrono::milliseconds timeout);

}  // namespace omniedge::testing
