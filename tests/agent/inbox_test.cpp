#include "agent/store/inbox.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "sync/sync_engine.h"
#include "tests/support/broker.h"
#include "tests/support/central_sim.h"
#include "tests/support/memory_outbox.h"
#include "tests/support/temp_dir.h"

namespace omniedge::store {
namespace {

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using testing::TempDir;

std::unique_ptr<InboxStore> openInbox(const TempDir& dir, int64_t max_bytes = 1 << 20,
                                      std::size_t max_commands = 1000) {
  InboxOptions o;
  o.dir = dir.path();
  o.max_bytes = max_bytes;
  o.max_commands = max_commands;
  auto inbox = InboxStore::open(o);
  REQUIRE(inbox);
  return std::move(*inbox);
}

TEST_CASE("the inbox keeps messages in arrival order across a reopen until they are removed",
          "[unit][remote]") {
  TempDir dir;
  int64_t first = 0;
  {
    auto inbox = openInbox(dir);
    first = *inbox->put("R/profiles", R"({"upserts": []})");
    REQUIRE(inbox->put("R/cmd", std::string("\0binary\xff", 8)));
    CHECK(inbox->stats().pending == 2);
  }
  auto inbox = openInbox(dir);
  CHECK(inbox->stats().pending == 2);
  auto pending = inbox->pending(10);
  REQUIRE(pending);
  REQUIRE(pending->size() == 2);
  CHECK((*pending)[0].id == first);
  CHECK((*pending)[0].topic == "R/profiles");
  CHECK((*pending)[1].payload == std::string("\0binary\xff", 8));
  REQUIRE(inbox->remove(first));
  REQUIRE(inbox->remove(first));  // already gone: fine
  CHECK(inbox->stats().pending == 1);
  CHECK(inbox->pending(10)->size() == 1);
}

TEST_CASE("the inbox is bounded by bytes and says so", "[unit][remote]") {
  TempDir dir;
  auto inbox = openInbox(dir, 100);
  REQUIRE(inbox->put("t", std::string(60, 'a')));
  auto refused = inbox->put("t", std::string(60, 'b'));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == "full");
  CHECK_THAT(refused.error().message, Contains("sync.inbound_max_bytes"));
  CHECK(inbox->stats().refused == 1);
  REQUIRE(inbox->remove(inbox->pending(1)->front().id));
  CHECK(inbox->put("t", std::string(60, 'b')));
}

TEST_CASE("the command journal remembers ids and answers, bounded by count and age",
          "[unit][remote]") {
  TempDir dir;
  {
    auto inbox = openInbox(dir, 1 << 20, 3);
    CHECK_FALSE(*inbox->findCommand("a"));
    REQUIRE(inbox->commandStarted("a", "ping", 1000));
    auto started = *inbox->findCommand("a");
    REQUIRE(started);
    CHECK_FALSE(started->done);
    CHECK(started->name == "ping");
    REQUIRE(inbox->commandFinished("a", R"({"id":"a","ok":true})"));
    for (const char* id : {"b", "c", "d"}) {
      REQUIRE(inbox->commandStarted(id, "flush", 2000));
    }
    CHECK(inbox->stats().commands == 3);
    CHECK_FALSE(*inbox->findCommand("a"));  // the oldest beyond 3 forgotten
  }
  auto inbox = openInbox(dir, 1 << 20, 3);
  CHECK(*inbox->findCommand("b"));
  // Seven days later the old ones are forgotten when the next is recorded.
  REQUIRE(inbox->commandStarted("e", "ping", 2000 + 7LL * 24 * 3600 * 1000 + 1));
  CHECK_FALSE(*inbox->findCommand("b"));
  CHECK(*inbox->findCommand("e"));

  // Answers the broker never acknowledged are found again (to be sent at the next start).
  REQUIRE(inbox->commandFinished("e", R"({"id":"e","ok":true})"));
  auto unsent = inbox->unreportedCommands(10);
  REQUIRE(unsent);
  REQUIRE(unsent->size() == 1);
  CHECK((*unsent)[0].id == "e");
  CHECK((*unsent)[0].result == R"({"id":"e","ok":true})");
  REQUIRE(inbox->commandReported("e"));
  CHECK(inbox->unreportedCommands(10)->empty());

  REQUIRE(inbox->setMeta("profile_cursor", "rev-9"));
  CHECK(*inbox->meta("profile_cursor") == "rev-9");
  REQUIRE(inbox->setMeta("profile_cursor", ""));
  CHECK(inbox->meta("profile_cursor")->empty());
}

TEST_CASE("a message the inbox kept before a crash is handled by the next sync engine, once",
          "[integration][remote]") {
  testing::MosquittoBroker broker;
  TempDir dir;
  {
    // What Paho's callback stored, and the process died before the sync thread handled it.
    auto inbox = openInbox(dir);
    REQUIRE(inbox->put("omniedge/v1/t/s/cmd", "survivor"));
  }
  auto inbox = openInbox(dir);
  testing::MemoryOutbox outbox;
  sync::MqttOptions mo;
  mo.url = broker.url();
  mo.client_id = "inbox-test";
  mo.topic_root = "omniedge/v1/t/s";
  sync::SyncOptions so;
  so.store_id = "s";
  so.agent_version = "test";
  so.inbound = {"omniedge/v1/t/s/cmd"};
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> handled;
  sync::SyncEngine engine(outbox, mo, so, {},
                          [&](const std::string& topic, const std::string& payload) {
                            std::lock_guard lock(mu);
                            handled.push_back(topic + " " + payload);
                            cv.notify_all();
                          });
  engine.setInbox(inbox.get());
  engine.start();
  // Arriving now (retained, so that it comes whenever the engine subscribes): stored, then
  // handled.
  testing::publishMqtt(broker.url(), "omniedge/v1/t/s/cmd", "fresh", true);
  {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 20s, [&] { return handled.size() >= 2; }));
  }
  engine.stop();
  CHECK(handled ==
        std::vector<std::string>{"omniedge/v1/t/s/cmd survivor", "omniedge/v1/t/s/cmd fresh"});
  CHECK(inbox->stats().pending == 0);
  CHECK(inbox->stats().stored == 1);
  CHECK(engine.status().inbound_handled == 2);
}

}  // namespace
}  // namespace omniedge::store
