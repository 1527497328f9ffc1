// The beacon driver (contract §8): its own MQTT client on the store's local broker
// (beacon.mqtt_url, beacon.topics), gateway messages → sightings → presence events.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/clock.h"
#include "agent/api/event_writer.h"
#include "agent/api/result.h"
#include "agent/api/source.h"
#include "drivers/beacon/presence.h"

namespace mqtt {
class async_client;
class token;
}  // namespace mqtt

namespace omniedge::beacon {

struct BeaconOptions {
  std::string mqtt_url;  // beacon.mqtt_url: mqtt://, mqtts://, ws://, wss://
  std::vector<std::string> topics = {"home/+/BTtoMQTT/#", "espresense/devices/#"};  // beacon.topics
  PresenceOptions presence;  // zones, exit_after, ...
  std::string client_id;     // empty: "omniedge-beacon-<pid>"
  int qos = 0;               // 0 or 1
  // Tuning, not configuration keys:
  std::size_t queue_capacity = 20'000;  // messages waiting for poll(); more are dropped, counted
  std::size_t max_pending_events = 10'000;  // events the writer pushed back, kept for a retry
  int tick_interval_ms = 1'000;
  int reconnect_min_ms = 500;
  int reconnect_max_ms = 30'000;
  int64_t max_clock_skew_ms = 60'000;  // a gateway timestamp further off than this is ignored
  std::shared_ptr<const Clock> clock;  // empty: the system clock
};

/// Counters since construction. Thread: any (a copy).
struct BeaconStats {
  uint64_t messages = 0;        // MQTT messages processed
  uint64_t queue_overflow = 0;  // messages dropped because the queue was full
  uint64_t bad_messages = 0;    // not JSON / no known format
  uint64_t frame_errors = 0;    // malformed beacon frames
  uint64_t sightings = 0;
  uint64_t events = 0;          // appended
  uint64_t events_dropped = 0;  // pending events beyond max_pending_events
  uint64_t connects = 0;
  uint64_t connect_failures = 0;
  bool connected = false;
  std::string last_error;
  PresenceStats presence;
};

/// Subscribes (QoS `qos`, clean session) to `topics`; Paho's callback only queues messages.
/// poll() decodes them, runs the presence engine and appends its events, ticks it for exits,
/// and (re)connects with exponential backoff. Beacon events are low priority: when the writer
/// pushes back they are kept (up to max_pending_events) and retried.
class BeaconSource final : public Source {
 public:
  /// Does no I/O: the first poll() connects. Thread: any. Never throws (but bad_alloc).
  explicit BeaconSource(BeaconOptions options);
  /// Disconnects (up to ~1 s). Thread: the owner.
  ~BeaconSource() override;
  BeaconSource(const BeaconSource&) = delete;
  BeaconSource& operator=(const BeaconSource&) = delete;

  // Source
  /// "beacon". Thread: any. Never fails.
  std::string_view name() const override;
  /// Connects when due, handles the queued messages, ticks the engine, appends the events,
  /// then waits up to 200 ms for more messages. Thread: the source's own (never concurrently).
  /// Blocks for at most about 250 ms (plus the writer's append); returns at once on `stop`.
  /// Fails with "invalid" (bad URL: retried anyway), "connect" (broker unreachable, retried
  /// with backoff) or the writer's error (events kept for the next poll). Never throws.
  Result<void> poll(EventWriter& out, std::stop_token stop) override;

  /// Counters. Thread: any. Blocks only on a short internal lock.
  BeaconStats stats() const;

 private:
  struct Message {
    std::string topic;
    std::string payload;
  };
  enum class State { kIdle, kConnecting, kConnected };

  Result<void> manageConnection(int64_t now);
  void startConnect();
  void onMessage(std::string topic, std::string payload);
  void dropClient();
  void fail(const std::string& why, int64_t now);

  BeaconOptions options_;
  std::shared_ptr<const Clock> clock_;
  PresenceEngine engine_;  // poll() thread only, as everything down to mu_
  std::unique_ptr<mqtt::async_client> client_;
  State state_ = State::kIdle;
  int64_t next_attempt_ms_ = 0;
  int backoff_ms_ = 0;
  int64_t next_tick_ms_ = 0;
  std::vector<Event> pending_;
  std::shared_ptr<mqtt::token> connect_token_;
  std::shared_ptr<mqtt::token> subscribe_token_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Message> queue_;  // guarded by mu_
  bool lost_ = false;          // guarded by mu_: the connection dropped
  BeaconStats stats_;          // guarded by mu_
};

/// The beacon source as the agent runs it. Thread: any. Does no I/O. Never throws (but bad_alloc).
std::unique_ptr<Source> makeBeaconSource(BeaconOptions options);

}  // namespace omniedge::beacon
