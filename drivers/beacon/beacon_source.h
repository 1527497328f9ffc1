// The beacon driver (contract §8): its own MQTT client on the store's local broker
// (beacon.mqtt_url, beacon.topics), gateway messages → sightings → presence events.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
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
  std::string mqtt_url;  // beacon.mqtt_url: mqtt://, mqtts://, ws://, wss://; empty: no MQTT
                         // client, messages come only through offer()
  std::vector<std::string> topics = {"home/+/BTtoMQTT/#", "espresense/devices/#"};  // beacon.topics
  PresenceOptions presence;                   // zones, exit_after, ...
  std::string client_id;                      // empty: "omniedge-beacon-<pid>"
  int qos = 0;                                // 0 or 1
  std::size_t max_message_bytes = 64 * 1024;  // beacon.max_message_bytes: larger is refused
  std::size_t queue_max_bytes = 4u << 20;     // beacon.queue_max_bytes: messages waiting for poll()
  std::size_t pending_max_bytes = 4u << 20;   // beacon.pending_max_bytes: events the writer
                                              // pushed back, kept for a retry
  // Tuning, not configuration keys:
  std::size_t queue_capacity = 20'000;      // messages waiting for poll(); more are dropped
  std::size_t max_pending_events = 10'000;  // events kept for a retry; older ones are dropped
  int tick_interval_ms = 1'000;
  int reconnect_min_ms = 500;
  int reconnect_max_ms = 30'000;
  int64_t max_clock_skew_ms = 60'000;  // a gateway timestamp further off than this is ignored
  std::shared_ptr<const Clock> clock;  // empty: the system clock
  // The buffer's epoch, for the centre's gap check: a drop report names it with no seq ranges
  // (the events dropped here never reached the buffer, so they never had seqs).
  std::string buffer_epoch;
};

/// Counters since construction. Thread: any (a copy).
struct BeaconStats {
  uint64_t messages = 0;              // gateway messages handled (taken from the queue)
  uint64_t bad_messages = 0;          // refused: too large, not JSON, no format, a bad field
  uint64_t queue_overflow = 0;        // messages dropped because the queue was full
  uint64_t queue_overflow_bytes = 0;  // ... and their bytes
  std::size_t queue_depth = 0;        // messages waiting now
  std::size_t queue_bytes = 0;        // their bytes now (counted against queue_max_bytes)
  uint64_t frame_errors = 0;          // malformed beacon frames (the sighting kept its MAC)
  uint64_t telemetry_frames = 0;      // Eddystone TLM: not presence
  uint64_t sightings = 0;
  uint64_t events = 0;           // presence events the writer took
  uint64_t events_rejected = 0;  // refused one by one by the writer (appendEach)
  uint64_t events_dropped = 0;   // dropped from the pending list (its bounds)
  uint64_t events_dropped_bytes = 0;
  std::size_t pending = 0;  // events waiting for a retry now
  std::size_t pending_bytes = 0;
  uint64_t drop_reports = 0;  // agent.data_dropped reports stored
  uint64_t connects = 0;
  uint64_t connect_failures = 0;
  bool connected = false;
  std::string last_error;        // connection or writer
  std::string down;              // why the gateway connection is down; "" while up or not yet tried
  std::string last_input_error;  // the latest refused message or event, with its reason
  PresenceStats presence;
};

/// Subscribes (QoS `qos`, clean session) to `topics`; Paho's callback only queues messages
/// (bounded by count and bytes). poll() checks and decodes them (parseGatewayMessage: a bad
/// message is refused alone, counted, its reason kept for status), runs the presence engine,
/// ticks it for exits, appends the events with appendEach() (an event the writer refuses is
/// counted and dropped alone), and (re)connects with exponential backoff. When the writer
/// pushes back ("full", "io", "stopping") the events are kept for the next poll, up to
/// max_pending_events and pending_max_bytes; the oldest beyond are dropped, counted, and
/// reported upstream as one agent.data_dropped event once the writer takes events again.
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
  /// with backoff) or the writer's "full" / "io" / "stopping" (events kept for the next poll).
  /// Refused inputs are not failures: they are counted in health(). Never throws.
  Result<void> poll(EventWriter& out, std::stop_token stop) override;
  /// input_errors = refused gateway messages + events the writer refused; the latest reason;
  /// counters of the queue, the pending list, the engine and the connection.
  /// Thread: any. Blocks only on a short internal lock.
  SourceHealth health() const override;

  /// Queues one gateway message, as the MQTT callback does: refused (false, counted as a bad
  /// message) when larger than max_message_bytes, dropped (false, counted as overflow) when
  /// the queue holds queue_capacity messages or queue_max_bytes. Copies only what it keeps.
  /// Thread: any. Never blocks for long, never throws (but bad_alloc).
  bool offer(std::string_view topic, std::string_view payload);

  /// Counters. Thread: any. Blocks only on a short internal lock.
  BeaconStats stats() const;

  /// Takes `fresh`'s beacon.zones and beacon.scanner_offsets in place (at the next poll(),
  /// keeping every track) when nothing else of its options differs; false otherwise (the
  /// caller restarts the driver). Thread: any. Never blocks for long.
  bool adopt(Source& fresh) override;

 private:
  struct Message {
    std::string topic;
    std::string payload;
  };
  enum class State { kIdle, kConnecting, kConnected };

  Result<void> manageConnection(int64_t now);
  void dropClient();
  void fail(const std::string& why, int64_t now);
  void boundPending();
  Result<void> appendPending(EventWriter& out);

  BeaconOptions options_;
  std::shared_ptr<const Clock> clock_;
  PresenceEngine engine_;  // poll() thread only, as everything down to mu_
  std::unique_ptr<mqtt::async_client> client_;
  State state_ = State::kIdle;
  int64_t next_attempt_ms_ = 0;
  int backoff_ms_ = 0;
  int64_t next_tick_ms_ = 0;
  std::vector<Event> pending_;
  std::size_t pending_bytes_ = 0;
  // Dropped from pending_ and not yet reported upstream (an agent.data_dropped event).
  uint64_t unreported_events_ = 0;
  uint64_t unreported_bytes_ = 0;
  int64_t unreported_first_ms_ = 0;
  int64_t unreported_last_ms_ = 0;
  std::chrono::steady_clock::time_point next_rejection_log_{};
  std::chrono::steady_clock::time_point next_bad_log_{};
  uint64_t bad_since_log_ = 0;  // refused messages not yet logged
  std::shared_ptr<mqtt::token> connect_token_;
  std::shared_ptr<mqtt::token> subscribe_token_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Message> queue_;    // guarded by mu_
  std::size_t queue_bytes_ = 0;  // guarded by mu_
  bool lost_ = false;            // guarded by mu_: the connection dropped
  BeaconStats stats_;            // guarded by mu_
  /// New zones and offsets for engine_, taken by the next poll(); guarded by mu_.
  std::optional<std::pair<std::map<std::string, std::string>, std::map<std::string, double>>>
      retune_;
};

/// The beacon source as the agent runs it. Thread: any. Does no I/O. Never throws (but bad_alloc).
std::unique_ptr<Source> makeBeaconSource(BeaconOptions options);

}  // namespace omniedge::beacon
