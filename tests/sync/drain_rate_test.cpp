// A quick look at the drain rate (quality.md P3), hidden from the default run: the real
// benchmark with the SQLite buffer lives in bench/. Run: test_sync "[.drain]" -s
#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "agent/api/uuid.h"
#include "sync/sync_engine.h"
#include "tests/support/broker.h"
#include "tests/support/memory_outbox.h"

namespace omniedge::sync {
namespace {

using namespace std::chrono_literals;

TEST_CASE("drain rate from an in-memory outbox to a local mosquitto", "[.drain][sync]") {
  constexpr int kEvents = 300'000;
  testing::MosquittoBroker broker;
  testing::Subscriber sub(broker.url(), "omniedge/v1/t/s/events");
  testing::MemoryOutbox outbox;
  const std::string pad(330, 'x');
  for (int i = 0; i < kEvents; ++i) {
    outbox.add(R"({"id":")" + makeUuidV7(1795000000000 + i) +
               R"(","type":"pos.transaction","source":"pos:ws-1","store_id":"s",)"
               R"("occurred_at":"2026-11-22T13:32:42.123Z","data":{"n":)" +
               std::to_string(i) + R"(,"pad":")" + pad + R"("}})");
  }
  MqttOptions mqtt;
  mqtt.url = broker.url();
  mqtt.client_id = "drain-rate";
  mqtt.topic_root = "omniedge/v1/t/s";
  SyncOptions options;
  options.store_id = "s";
  options.agent_version = "bench";
  SyncEngine engine(outbox, mqtt, options, [] { return std::string(R"({"state":"online"})"); });

  const auto t0 = std::chrono::steady_clock::now();
  engine.start();
  REQUIRE(outbox.waitUntilEmpty(120s));
  const double acked_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(sub.waitForEventIds(kEvents, 120s));
  const double seen_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto status = engine.status();
  WARN("acked " << kEvents << " events in " << acked_s << " s = " << kEvents / acked_s
                << " events/s; subscriber counted all after " << seen_s << " s; "
                << status.batches_sent << " batches, " << status.bytes_sent / kEvents
                << " bytes/event on the wire");
  engine.stop();
}

}  // namespace
}  // namespace omniedge::sync
