#include "sync/mqtt_link.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/broker.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

namespace omniedge::sync {
namespace {

using namespace std::chrono_literals;
using testing::MosquittoBroker;
using testing::Subscriber;

struct Deliveries {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<uint64_t, bool>> done;

  bool waitFor(std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return done.size() >= n; });
  }
};

MqttOptions optionsFor(const std::string& url, MqttVersion version) {
  MqttOptions o;
  o.url = url;
  o.client_id = "link-test-" + std::to_string(static_cast<int>(version));
  o.keepalive_s = 5;
  o.version = version;
  o.topic_root = "omniedge/v1/t/s";
  return o;
}

TEST_CASE("the link connects with each MQTT version and reports every PUBACK",
          "[integration][sync]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/t/s/#");

  const auto [version, level] = GENERATE(table<MqttVersion, int>(
      {{MqttVersion::kV5, 5}, {MqttVersion::kV311, 4}, {MqttVersion::kAuto, 5}}));
  MqttLink link(optionsFor(broker.url(), version));
  Deliveries deliveries;
  link.setHandlers(
      [&](uint64_t tag, bool ok, int, const std::string&) {
        std::lock_guard lock(deliveries.mu);
        deliveries.done.emplace_back(tag, ok);
        deliveries.cv.notify_all();
      },
      [](const std::string&) {});

  std::stop_source stop;
  auto connected =
      link.connect({"omniedge/v1/t/s/status", R"({"state":"offline"})", true}, stop.get_token());
  REQUIRE(connected.has_value());
  CHECK(link.connected());
  CHECK(link.protocolLevel() == level);

  for (uint64_t tag = 1; tag <= 20; ++tag) {
    REQUIRE(link.publish({"omniedge/v1/t/s/events", "payload " + std::to_string(tag), false}, tag)
                .has_value());
  }
  REQUIRE(deliveries.waitFor(20, 10s));
  for (const auto& [tag, ok] : deliveries.done) {
    CHECK(ok);
  }
  CHECK(link.publishAndWait({"omniedge/v1/t/s/status", "x", true}, 5s).has_value());
  CHECK(sub.waitFor([](const auto& msgs) { return msgs.size() >= 21; }, 10s));

  link.disconnect(200ms);
  CHECK_FALSE(link.connected());
  CHECK(link.publish({"omniedge/v1/t/s/events", "late", false}, 99).error().code == "disconnected");
}

TEST_CASE("the link fails cleanly on a bad URL, a dead port and a missing CA file",
          "[integration][sync]") {
  std::stop_source stop;
  const MqttMessage will{"omniedge/v1/t/s/status", R"({"state":"offline"})", true};

  SECTION("unknown scheme") {
    MqttLink link(optionsFor("http://127.0.0.1:1", MqttVersion::kAuto));
    auto r = link.connect(will, stop.get_token());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "invalid");
  }
  SECTION("nobody listening") {
    MqttLink link(
        optionsFor("mqtt://127.0.0.1:" + std::to_string(testing::freePort()), MqttVersion::kAuto));
    auto r = link.connect(will, stop.get_token());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "connect");
    CHECK_FALSE(link.connected());
  }
  SECTION("TLS with a CA file that does not exist") {
    auto options = optionsFor("mqtts://127.0.0.1:8883", MqttVersion::kAuto);
    options.ca_file = "/nonexistent/ca.pem";
    MqttLink link(options);
    auto r = link.connect(will, stop.get_token());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "invalid");
  }
}

TEST_CASE("the link reports a lost connection once", "[integration][sync]") {
  MosquittoBroker broker;
  testing::TcpProxy proxy(broker.port());
  MqttLink link(optionsFor(proxy.url(), MqttVersion::kV5));
  std::mutex mu;
  std::condition_variable cv;
  int losses = 0;
  link.setHandlers([](uint64_t, bool, int, const std::string&) {},
                   [&](const std::string&) {
                     std::lock_guard lock(mu);
                     ++losses;
                     cv.notify_all();
                   });
  std::stop_source stop;
  REQUIRE(link.connect({"omniedge/v1/t/s/status", "{}", true}, stop.get_token()).has_value());
  proxy.dropConnections();
  std::unique_lock lock(mu);
  REQUIRE(cv.wait_for(lock, 10s, [&] { return losses > 0; }));
  lock.unlock();
  std::this_thread::sleep_for(200ms);
  CHECK(losses == 1);
  CHECK_FALSE(link.connected());
}

}  // namespace
}  // namespace omniedge::sync

namespace omniedge::sync {
namespace {

using namespace std::chrono_literals;
using testing::MosquittoBroker;

Result<void> tryConnect(MqttOptions options) {
  MqttLink link(std::move(options));
  link.setHandlers([](uint64_t, bool, int, const std::string&) {}, [](const std::string&) {});
  std::stop_source stop;
  auto r = link.connect({"omniedge/v1/t/s/status", "{}", true}, stop.get_token());
  if (r) {
    link.disconnect(100ms);
  }
  return r;
}

TEST_CASE("over TLS the link verifies the broker and can present a client certificate",
          "[integration][sync]") {
  testing::TempDir pki_dir;
  const auto pki = testing::makeTestPki(pki_dir.path());

  SECTION("server authentication") {
    MosquittoBroker broker(
        true, MosquittoBroker::Tls{pki.ca_cert, pki.server_cert, pki.server_key, false});
    REQUIRE(broker.url().rfind("mqtts://", 0) == 0);
    auto options = optionsFor(broker.url(), MqttVersion::kAuto);

    options.ca_file = pki.ca_cert;
    CHECK(tryConnect(options).has_value());

    options.ca_file.clear();  // the system store does not know our CA: refused
    auto untrusted = tryConnect(options);
    REQUIRE_FALSE(untrusted.has_value());
    CHECK(untrusted.error().code == "connect");

    options.ca_file = pki.rogue_ca_cert;
    CHECK_FALSE(tryConnect(options).has_value());
  }
  SECTION("a broker with a certificate from another CA (a MITM) is refused") {
    MosquittoBroker broker(true, MosquittoBroker::Tls{pki.ca_cert, pki.rogue_server_cert,
                                                      pki.rogue_server_key, false});
    auto options = optionsFor(broker.url(), MqttVersion::kAuto);
    options.ca_file = pki.ca_cert;
    CHECK_FALSE(tryConnect(options).has_value());
  }
  SECTION("mutual TLS") {
    MosquittoBroker broker(
        true, MosquittoBroker::Tls{pki.ca_cert, pki.server_cert, pki.server_key, true});
    auto options = optionsFor(broker.url(), MqttVersion::kV311);
    options.ca_file = pki.ca_cert;
    CHECK_FALSE(tryConnect(options).has_value());  // no client certificate

    options.cert_file = pki.client_cert;
    options.key_file = pki.client_key;
    CHECK(tryConnect(options).has_value());
  }
}

}  // namespace
}  // namespace omniedge::sync
