// What the durable inbound queue relies on: Paho (C 1.3 async client, C++ 1.2) sends the PUBACK
// of a QoS 1 message only after the message callback returned. If the callback stores the
// message first, a crash can lose nothing the broker thinks delivered.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

#include "sync/mqtt_link.h"
#include "tests/support/broker.h"

namespace omniedge::sync {
namespace {

using namespace std::chrono_literals;
using testing::MosquittoBroker;
using testing::TcpProxy;

// Another process: Paho's async clients share one receive thread and a global lock, held while
// a callback runs, so an in-process publisher would wait for the blocked callback.
void publishFromOutside(int port, const char* topic, const char* payload) {
  const std::string p = std::to_string(port);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    execl("/usr/bin/mosquitto_pub", "mosquitto_pub", "-h", "127.0.0.1", "-p", p.c_str(), "-q", "1",
          "-t", topic, "-m", payload, static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

TEST_CASE("Paho acknowledges a QoS 1 message only when the message callback has returned",
          "[integration][sync][remote]") {
  const auto version = GENERATE(MqttVersion::kV311, MqttVersion::kV5);
  MosquittoBroker broker;
  TcpProxy proxy(broker.port());
  MqttOptions o;
  o.url = proxy.url();
  o.client_id = "ack-order-" + std::to_string(static_cast<int>(version));
  o.keepalive_s = 5;
  o.version = version;
  o.topic_root = "t";

  std::mutex mu;
  std::condition_variable cv;
  bool arrived = false;
  bool release = false;
  auto link = std::make_unique<MqttLink>(o);
  link->setHandlers([](uint64_t, bool, int, const std::string&) {}, [](const std::string&) {},
                    [&](const std::string&, const std::string&) {
                      std::unique_lock lock(mu);
                      arrived = true;
                      cv.notify_all();
                      // The process "dies" here: the callback never returns in time.
                      cv.wait(lock, [&] { return release; });
                    });
  REQUIRE(link->connect({"t/status", "offline", true}, {}));
  REQUIRE(link->subscribe({"t/in"}, 5s));
  publishFromOutside(broker.port(), "t/in", "m1");
  {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return arrived; }));
  }
  // The connection dies while the callback runs: a PUBACK sent before it would be at the
  // broker by now.
  proxy.dropConnections();
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  link.reset();

  // The same session again: the broker never had the PUBACK, so it hands m1 over again.
  o.url = broker.url();
  MqttLink again(o);
  std::string got;
  again.setHandlers([](uint64_t, bool, int, const std::string&) {}, [](const std::string&) {},
                    [&](const std::string&, const std::string& payload) {
                      std::lock_guard lock(mu);
                      got = payload;
                      cv.notify_all();
                    });
  REQUIRE(again.connect({"t/status", "offline", true}, {}));
  std::unique_lock lock(mu);
  CHECK(cv.wait_for(lock, 10s, [&] { return got == "m1"; }));
}

}  // namespace
}  // namespace omniedge::sync
