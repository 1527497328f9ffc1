// The uplink against brokers that refuse: a broker that accepts and then drops the agent, one
// that limits message or packet sizes (mosquitto's message_size_limit and max_packet_size, on
// MQTT 3.1.1 and 5), and a connection cut while PUBACKs are on their way. All with a real
// mosquitto; what is checked is what the centre receives and what stays in the buffer.
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "agent/api/uuid.h"
#include "sync/sync_engine.h"
#include "tests/support/broker.h"
#include "tests/support/memory_outbox.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

namespace omniedge::sync {
namespace {

using namespace std::chrono_literals;
using testing::MemoryOutbox;
using testing::MosquittoBroker;
using testing::Subscriber;
using testing::TcpProxy;

constexpr auto kBound = 60s;
const std::string kRoot = "omniedge/v1/tenant-1/store-1";
const std::string kOnline = R"({"state":"online","version":"test"})";

std::string newId() {
  return makeUuidV7(std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count());
}

// ~460-byte events, like real envelopes; returns their ids.
std::vector<std::string> addNormal(MemoryOutbox& outbox, int n) {
  std::vector<std::string> ids;
  const std::string pad(330, 'x');
  for (int i = 0; i < n; ++i) {
    ids.push_back(newId());
    outbox.add(R"({"id":")" + ids.back() +
               R"(","type":"pos.transaction","source":"pos:ws-1","store_id":"store-1",)"
               R"("occurred_at":"2026-11-22T13:32:42.123Z","data":{"n":)" +
               std::to_string(i) + R"(,"pad":")" + pad + R"("}})");
  }
  return ids;
}

// One event of about `bytes` of random hex (gzip and zstd only halve it); returns {seq, id}.
std::pair<int64_t, std::string> addBig(MemoryOutbox& outbox, std::size_t bytes) {
  std::mt19937 rng(42);
  std::string blob;
  blob.reserve(bytes);
  static constexpr char kHex[] = "0123456789abcdef";
  for (std::size_t i = 0; i < bytes; ++i) {
    blob.push_back(kHex[rng() % 16]);
  }
  std::string id = newId();
  const int64_t seq = outbox.add(R"({"id":")" + id +
                                 R"(","type":"kiosk.photo","source":"kiosk:k-1","store_id":)"
                                 R"("store-1","data":{"blob":")" +
                                 blob + R"("}})");
  return {seq, id};
}

MqttOptions mqttOptions(const std::string& url, MqttVersion version = MqttVersion::kAuto) {
  MqttOptions o;
  o.url = url;
  o.client_id = "store-1-agent";
  o.keepalive_s = 5;
  o.reconnect_min_ms = 20;
  o.reconnect_max_ms = 200;
  o.topic_root = kRoot;
  o.version = version;
  return o;
}

SyncOptions syncOptions(Compression compression) {
  SyncOptions o;
  o.store_id = "store-1";
  o.agent_version = "0.1.0-test";
  o.batch_max_events = 500;
  o.batch_max_bytes = 1024 * 1024;
  o.compression = compression;
  o.max_inflight = 4;
  return o;
}

Subscriber::Decoder anyDecoder() {
  return [](std::string payload) {
    auto plain = decompress(payload);
    return plain ? std::move(*plain) : payload;
  };
}

template <class Predicate>
bool eventually(Predicate predicate, std::chrono::milliseconds timeout = kBound) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!predicate()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_CASE(
    "a broker that accepts the agent and drops it at once gets a backed-off reconnect, "
    "not one per CONNACK",
    "[integration][sync][fault]") {
  MosquittoBroker broker;
  TcpProxy dropping(broker.port());
  dropping.cutAfterFirstReply(50ms);  // CONNACK through, then a RST: duplicate id, ACL, quota
  const std::string dead_url = "mqtt://127.0.0.1:" + std::to_string(testing::freePort());

  // The same backoff settings against a port where nobody listens: the pace to compare with.
  auto mqtt = mqttOptions(dropping.url());
  mqtt.reconnect_min_ms = 20;
  mqtt.reconnect_max_ms = 5000;
  auto dead_mqtt = mqtt;
  dead_mqtt.url = dead_url;
  MemoryOutbox outbox;  // nothing to send: a status PUBACK alone proves nothing
  MemoryOutbox dead_outbox;
  SyncEngine dropped(outbox, mqtt, syncOptions(Compression::kGzip), [] { return kOnline; });
  SyncEngine refused(dead_outbox, dead_mqtt, syncOptions(Compression::kGzip),
                     [] { return kOnline; });
  dropped.start();
  refused.start();
  const auto window_end = std::chrono::steady_clock::now() + 10s;
  std::this_thread::sleep_for(10s);  // an observation window: both count attempts meanwhile
  REQUIRE(std::chrono::steady_clock::now() >= window_end);
  const SyncStatus d = dropped.status();
  const SyncStatus r = refused.status();
  dropped.stop();
  refused.stop();

  CAPTURE(d.connect_attempts, r.connect_attempts, dropping.accepted());
  CHECK(dropping.accepted() >= 3);  // it was accepted, dropped, and came back
  // Both back off alike (~11 attempts each). Resetting the backoff at every CONNACK made it
  // one attempt per ~0.25 s here (~38), whatever reconnect_max says.
  CHECK(d.connect_attempts <= r.connect_attempts + 8);
  // What a technician reads.
  CHECK(contains(d.last_error, mqtt.url));
  CHECK(contains(d.last_error, "the broker accepted it"));  // or "accepted the connection"
  CHECK(contains(d.last_error, "mqtt.client_id \"store-1-agent\""));
  CHECK(contains(r.last_error, "broker unreachable at " + dead_url));
  CHECK(contains(r.last_error, "omniedge doctor"));
}

TEST_CASE("a connection that PUBACKs a batch starts the backoff again from the shortest delay",
          "[integration][sync][fault]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), kRoot + "/events");
  TcpProxy proxy(broker.port());
  MemoryOutbox outbox;
  auto mqtt = mqttOptions(proxy.url());
  mqtt.reconnect_min_ms = 20;
  mqtt.reconnect_max_ms = 60'000;  // a backoff that was never reset would stall this test
  SyncEngine engine(outbox, mqtt, syncOptions(Compression::kGzip), [] { return kOnline; });
  engine.start();
  for (uint64_t round = 1; round <= 20; ++round) {
    const auto ids = addNormal(outbox, 10);
    REQUIRE(testing::waitForAllIds(sub, ids, kBound) == 0);
    REQUIRE(outbox.waitUntilEmpty(kBound));
    proxy.dropConnections();
    // Had the backoff kept growing it would be minutes by now.
    REQUIRE(eventually([&] { return engine.status().reconnects >= round; }, 20s));
  }
  engine.stop();
}

TEST_CASE(
    "mosquitto with message_size_limit acknowledges and drops a larger message on MQTT "
    "3.1.1, and refuses it with PUBACK 0x95 on MQTT 5",
    "[integration][sync]") {
  MosquittoBroker::Options options;
  options.message_size_limit = 4096;
  options.max_queued_messages = 100'000;  // see MosquittoBroker::Options
  MosquittoBroker broker(options);
  Subscriber sub(broker.url(), "omniedge/v1/t/s/#");
  const auto [version, ok, reason] = GENERATE(table<MqttVersion, bool, int>(
      {{MqttVersion::kV311, true, 0}, {MqttVersion::kV5, false, 0x95}}));
  auto o = mqttOptions(broker.url(), version);
  o.client_id = "size-probe";
  MqttLink link(o);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<bool, int>> done;
  link.setHandlers(
      [&](uint64_t, bool delivered, int reason_code, const std::string&) {
        std::lock_guard lock(mu);
        done.emplace_back(delivered, reason_code);
        cv.notify_all();
      },
      [](const std::string&) {});
  std::stop_source stop;
  REQUIRE(link.connect({"omniedge/v1/t/s/status", "{}", true}, stop.get_token()).has_value());
  CHECK(link.brokerMaxPacketSize() == 0);  // message_size_limit is not announced in CONNACK
  REQUIRE(link.publish({"omniedge/v1/t/s/events", std::string(8000, 'x'), false}, 1).has_value());
  REQUIRE(link.publish({"omniedge/v1/t/s/events", "small", false}, 2).has_value());
  {
    std::unique_lock lock(mu);
    const bool both = cv.wait_for(lock, 10s, [&] { return done.size() == 2; });
    CAPTURE(done.size(), done.empty() ? -1 : done[0].second, done.empty() ? false : done[0].first);
    REQUIRE(both);
    CHECK(done[0] == std::make_pair(ok, reason));  // 3.1.1: "delivered", yet dropped
    CHECK(done[1] == std::make_pair(true, 0));
  }
  REQUIRE(sub.waitFor([](const auto& m) { return !m.empty(); }, 10s));
  std::this_thread::sleep_for(200ms);
  CHECK(sub.messages().size() == 1);
  CHECK(sub.messages().front().payload == "small");
  link.disconnect(100ms);
}

TEST_CASE(
    "with a message_size_limit broker every normal event arrives, the oversized one is "
    "quarantined with its reason, and the queue keeps flowing",
    "[integration][sync][fault]") {
  MosquittoBroker::Options options;
  options.message_size_limit = 16 * 1024;
  options.max_queued_messages = 100'000;  // see MosquittoBroker::Options
  MosquittoBroker broker(options);
  Subscriber sub(broker.url(), kRoot + "/events", anyDecoder());
  MemoryOutbox outbox;
  auto ids = addNormal(outbox, 300);
  const auto [big_seq, big_id] = addBig(outbox, 64 * 1024);
  const auto more = addNormal(outbox, 300);
  ids.insert(ids.end(), more.begin(), more.end());

  const auto compression = GENERATE(Compression::kNone, Compression::kGzip, Compression::kZstd);
  // MQTT 5: the broker says 0x95 (the agent does not know the limit and learns by splitting);
  // 3.1.1: the broker would PUBACK and drop, so the limit must be configured.
  const bool v5 = GENERATE(true, false);
  CAPTURE(compressionName(compression), v5);
  auto mqtt = mqttOptions(broker.url(), v5 ? MqttVersion::kV5 : MqttVersion::kV311);
  if (!v5) {
    mqtt.max_packet_bytes = options.message_size_limit;
  }
  SyncEngine engine(outbox, mqtt, syncOptions(compression), [] { return kOnline; });
  engine.start();

  REQUIRE(testing::waitForAllIds(sub, ids, kBound) == 0);
  REQUIRE(outbox.waitUntilEmpty(kBound));
  const auto quarantined = outbox.quarantined();
  REQUIRE(quarantined.size() == 1);
  REQUIRE(quarantined.count(big_seq) == 1);
  CHECK_FALSE(sub.hasEventId(big_id));
  const SyncStatus status = engine.status();
  CHECK(status.events_quarantined == 1);
  CHECK(status.last_quarantine_reason == quarantined.at(big_seq));
  CHECK(status.last_quarantine_ms > 0);
  CHECK(status.events_held == 0);
  if (v5) {
    CHECK(contains(quarantined.at(big_seq), "Packet too large"));
    CHECK(status.batches_refused >= 1);
    CHECK(status.max_packet_source == "default");
  } else {
    CHECK(contains(quarantined.at(big_seq), "over the broker's maximum packet size of 16384"));
    CHECK(contains(quarantined.at(big_seq), "mqtt.max_packet_bytes"));
    CHECK(status.batches_refused == 0);  // nothing over the limit was ever sent
    CHECK(status.max_packet_bytes == 16384);
    CHECK(status.max_packet_source == "config");
  }
  CHECK(status.reconnects == 0);

  // The queue keeps flowing after it.
  const auto later = addNormal(outbox, 50);
  CHECK(testing::waitForAllIds(sub, later, kBound) == 0);
  engine.stop();
}

TEST_CASE("a broker that announces its maximum packet size in CONNACK never gets a larger batch",
          "[integration][sync][fault]") {
  MosquittoBroker::Options options;
  options.max_packet_size = 8 * 1024;  // mosquitto disconnects a client that sends more
  MosquittoBroker broker(options);
  Subscriber sub(broker.url(), kRoot + "/events", anyDecoder());
  MemoryOutbox outbox;
  auto ids = addNormal(outbox, 200);
  const auto [big_seq, big_id] = addBig(outbox, 20 * 1024);
  const auto more = addNormal(outbox, 200);
  ids.insert(ids.end(), more.begin(), more.end());

  SyncEngine engine(outbox, mqttOptions(broker.url(), MqttVersion::kV5),
                    syncOptions(Compression::kNone), [] { return kOnline; });
  engine.start();
  REQUIRE(testing::waitForAllIds(sub, ids, kBound) == 0);
  REQUIRE(outbox.waitUntilEmpty(kBound));
  const SyncStatus status = engine.status();
  CHECK(status.max_packet_bytes == 8192);
  CHECK(status.max_packet_source == "broker");
  CHECK(status.reconnects == 0);  // mosquitto would have hung up on a larger packet
  CHECK(status.batches_refused == 0);
  REQUIRE(outbox.quarantined().count(big_seq) == 1);
  CHECK(contains(outbox.quarantined().at(big_seq), "announced in its CONNACK"));
  CHECK_FALSE(sub.hasEventId(big_id));
  engine.stop();
}

TEST_CASE(
    "a 3.1.1 broker that hangs up on oversized packets: batches are halved through the "
    "disconnects and the event too large alone is quarantined",
    "[integration][sync][fault]") {
  MosquittoBroker::Options options;
  options.max_packet_size = 8 * 1024;  // not announced on 3.1.1; not configured either
  MosquittoBroker broker(options);
  Subscriber sub(broker.url(), kRoot + "/events", anyDecoder());
  MemoryOutbox outbox;
  auto ids = addNormal(outbox, 40);
  const auto [big_seq, big_id] = addBig(outbox, 20 * 1024);
  const auto more = addNormal(outbox, 40);
  ids.insert(ids.end(), more.begin(), more.end());

  SyncEngine engine(outbox, mqttOptions(broker.url(), MqttVersion::kV311),
                    syncOptions(Compression::kNone), [] { return kOnline; });
  engine.start();
  REQUIRE(testing::waitForAllIds(sub, ids, kBound) == 0);
  REQUIRE(outbox.waitUntilEmpty(kBound));
  const SyncStatus status = engine.status();
  CHECK(status.batches_refused >= 2);
  CHECK(status.batches_split >= 1);
  REQUIRE(outbox.quarantined().count(big_seq) == 1);
  CHECK(contains(outbox.quarantined().at(big_seq), "closed the connection each time"));
  CHECK_FALSE(sub.hasEventId(big_id));
  engine.stop();
}

// Records which seqs were acknowledged, in front of a MemoryOutbox.
class RecordingOutbox final : public Outbox {
 public:
  explicit RecordingOutbox(MemoryOutbox& inner) : inner_(inner) {}
  Result<std::vector<PendingEvent>> readPending(int64_t after_seq, std::size_t max_events,
                                                std::size_t max_bytes) override {
    return inner_.readPending(after_seq, max_events, max_bytes);
  }
  void acknowledge(int64_t first_seq, int64_t last_seq) override {
    {
      std::lock_guard lock(mu_);
      acked_.emplace_back(first_seq, last_seq);
    }
    inner_.acknowledge(first_seq, last_seq);
  }
  void quarantine(int64_t first_seq, int64_t last_seq, std::string reason) override {
    inner_.quarantine(first_seq, last_seq, std::move(reason));
  }
  int64_t waitForNewer(int64_t seq, int timeout_ms) override {
    return inner_.waitForNewer(seq, timeout_ms);
  }
  std::vector<std::pair<int64_t, int64_t>> acked() const {
    std::lock_guard lock(mu_);
    return acked_;
  }

 private:
  MemoryOutbox& inner_;
  mutable std::mutex mu_;
  std::vector<std::pair<int64_t, int64_t>> acked_;  // guarded by mu_
};

TEST_CASE(
    "batches whose PUBACKs had not come back when the connection dropped are sent again, "
    "never acknowledged by a late PUBACK",
    "[integration][sync][fault]") {
  MosquittoBroker broker;
  TcpProxy proxy(broker.port());
  Subscriber sub(broker.url(), kRoot + "/events");
  MemoryOutbox memory;
  RecordingOutbox outbox(memory);
  auto options = syncOptions(Compression::kNone);
  options.batch_max_events = 100;
  SyncEngine engine(outbox, mqttOptions(proxy.url()), options, [] { return kOnline; });
  engine.start();
  REQUIRE(eventually([&] { return engine.status().connected; }));

  proxy.holdReplies(true);  // the broker gets the batches, its PUBACKs stay in the proxy
  const auto ids = addNormal(memory, 2'000);
  REQUIRE(eventually([&] { return engine.status().inflight == options.max_inflight; }));
  // The broker has the four batches in flight (whatever their sizes).
  REQUIRE(sub.waitFor([](const auto& m) { return m.size() >= 4; }, kBound));
  const std::size_t before = sub.eventsReceived();
  CHECK(outbox.acked().empty());
  CHECK(memory.pendingCount() == ids.size());

  proxy.dropConnections();  // the withheld PUBACKs die with the connection
  proxy.holdReplies(false);
  REQUIRE(testing::waitForAllIds(sub, ids, kBound) == 0);
  REQUIRE(memory.waitUntilEmpty(kBound));
  CHECK(sub.eventsReceived() >= ids.size() + before);  // the four batches came again
  // Acknowledged only after a PUBACK on the new connection, in ranges the broker had.
  for (const auto& [first, last] : outbox.acked()) {
    CHECK(first >= 1);
    CHECK(last <= static_cast<int64_t>(ids.size()));
  }
  CHECK(engine.status().reconnects >= 1);
  engine.stop();
}

TEST_CASE(
    "the uplink status says when the next attempt is, and marks an old error as resolved "
    "once connected",
    "[integration][sync]") {
  MosquittoBroker broker;
  broker.stop();
  MemoryOutbox outbox;
  const auto ids = addNormal(outbox, 10);
  auto mqtt = mqttOptions(broker.url());
  mqtt.reconnect_min_ms = 200;
  mqtt.reconnect_max_ms = 5'000;
  SyncEngine engine(outbox, mqtt, syncOptions(Compression::kGzip), [] { return kOnline; });
  engine.start();
  REQUIRE(eventually([&] { return engine.status().next_attempt_ms > 0; }));
  SyncStatus s = engine.status();
  CHECK_FALSE(s.connected);
  CHECK(contains(s.last_error, "broker unreachable at " + broker.url()));
  CHECK(s.last_error_ms > 0);
  CHECK_FALSE(s.last_error_resolved);

  broker.start();
  engine.flushNow();
  REQUIRE(eventually([&] { return engine.status().connected; }));
  REQUIRE(outbox.waitUntilEmpty(kBound));
  s = engine.status();
  CHECK(s.last_error_resolved);  // kept, with its time, but known to be history
  CHECK(contains(s.last_error, "broker unreachable"));
  CHECK(s.next_attempt_ms == 0);
  CHECK(s.mqtt_version == 5);
  CHECK(s.max_packet_source == "default");
  CHECK(s.max_packet_bytes == kSafeMaxPacketBytes);
  engine.stop();
}

}  // namespace
}  // namespace omniedge::sync
