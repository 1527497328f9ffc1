#include "sync/mqtt_link.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
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
  std::vector<std::string> lost;  // the causes the lost handler was given

  bool waitFor(std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return done.size() >= n; });
  }
  // Handlers for MqttLink::setHandlers that record here.
  void attach(MqttLink& link) {
    link.setHandlers(
        [this](uint64_t tag, bool ok, int, const std::string&) {
          std::lock_guard lock(mu);
          done.emplace_back(tag, ok);
          cv.notify_all();
        },
        [this](const std::string& cause) {
          std::lock_guard lock(mu);
          lost.push_back(cause);
        });
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
  deliveries.attach(link);

  std::stop_source stop;
  auto connected =
      link.connect({"omniedge/v1/t/s/status", R"({"state":"offline"})", true}, stop.get_token());
  REQUIRE(connected.has_value());
  {
    std::lock_guard lock(deliveries.mu);
    INFO("lost: " << (deliveries.lost.empty() ? "(never)" : deliveries.lost.front()));
    CHECK(link.connected());
  }
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

TEST_CASE("while the broker is away the link tries again, then connects and delivers",
          "[integration][sync]") {
  // Attempts that never reach a broker use one client (nothing was sent: nothing of them can be
  // retransmitted); the attempt after the broker came up connects with it and delivers.
  MosquittoBroker broker(/*start_now=*/false);
  MqttLink link(optionsFor(broker.url(), MqttVersion::kAuto));
  Deliveries deliveries;
  deliveries.attach(link);
  std::stop_source stop;
  const MqttMessage will{"omniedge/v1/t/s/status", R"({"state":"offline"})", true};
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto r = link.connect(will, stop.get_token());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "connect");
    CHECK_FALSE(link.connected());
  }
  broker.start();
  REQUIRE(link.connect(will, stop.get_token()).has_value());
  CHECK(link.connected());
  CHECK(link.protocolLevel() == 5);
  REQUIRE(link.publish({"omniedge/v1/t/s/events", "after the outage", false}, 1).has_value());
  REQUIRE(deliveries.waitFor(1, 10s));
  CHECK(deliveries.done.front() == std::make_pair(uint64_t{1}, true));
  link.disconnect(200ms);
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

namespace omniedge::sync {
namespace {

using namespace std::chrono_literals;
using testing::MosquittoBroker;

std::string connectError(MqttOptions options) {
  MqttLink link(std::move(options));
  link.setHandlers([](uint64_t, bool, int, const std::string&) {}, [](const std::string&) {});
  std::stop_source stop;
  auto r = link.connect({"omniedge/v1/t/s/status", "{}", true}, stop.get_token());
  if (r) {
    link.disconnect(100ms);
    return {};
  }
  CHECK(r.error().code == "connect");
  return r.error().message;
}

bool has(const std::string& text, const std::string& part) {
  INFO(text);
  return text.find(part) != std::string::npos;
}

TEST_CASE("connect errors name the broker, say what went wrong and what to check",
          "[integration][sync]") {
  SECTION("nobody listening") {
    const std::string url = "mqtt://127.0.0.1:" + std::to_string(testing::freePort());
    const auto e = connectError(optionsFor(url, MqttVersion::kV311));
    CHECK(has(e, "broker unreachable at " + url));
    CHECK(has(e, "is it running"));
    CHECK(has(e, "omniedge doctor"));
  }
  SECTION("a host name that does not resolve") {
    const auto e = connectError(optionsFor("mqtt://no-such-host.invalid:1883", MqttVersion::kV311));
    CHECK(has(e, "cannot resolve the broker's host name \"no-such-host.invalid\""));
    CHECK(has(e, "DNS"));
  }
  SECTION("a listener that never answers") {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    REQUIRE(listen(fd, 4) == 0);  // the kernel completes the handshake; nobody speaks MQTT
    const std::string url = "mqtt://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
    auto options = optionsFor(url, MqttVersion::kV311);
    options.connect_timeout_s = 1;
    const auto e = connectError(options);
    close(fd);
    CHECK(has(e, "no answer from the broker at " + url + " within 1 s"));
  }
  SECTION("a broker certificate the agent does not trust") {
    testing::TempDir pki_dir;
    const auto pki = testing::makeTestPki(pki_dir.path());
    MosquittoBroker broker(true, MosquittoBroker::Tls{pki.ca_cert, pki.rogue_server_cert,
                                                      pki.rogue_server_key, false});
    auto options = optionsFor(broker.url(), MqttVersion::kV311);
    options.ca_file = pki.ca_cert;
    const auto e = connectError(options);
    // The reason is the verify result of the agent's own probe (no Paho TLS error handler).
    CHECK(has(e, "TLS handshake with " + broker.url() + " failed (certificate verify failed: "));
    CHECK(has(e, "a certificate from another CA may be a man in the middle"));
    CHECK(has(e, "mqtt.ca_file"));
  }
  SECTION("a broker that wants a password") {
    testing::TempDir dir;
    dir.write("passwords", "agent:secret\n");
    REQUIRE(std::system(("mosquitto_passwd -U " + (dir / "passwords").string()).c_str()) == 0);
    MosquittoBroker::Options o;
    o.extra_config = "allow_anonymous false\npassword_file " + (dir / "passwords").string() + "\n";
    MosquittoBroker broker(o);
    const auto version = GENERATE(MqttVersion::kV311, MqttVersion::kV5);
    auto options = optionsFor(broker.url(), version);
    options.username = "agent";
    options.password = "wrong";
    const auto e = connectError(options);
    CHECK(has(e, "the broker at " + broker.url() + " refused"));
    CHECK(has(e, "mqtt.password_file"));
    options.password = "secret";
    CHECK(connectError(options).empty());
  }
}

}  // namespace
}  // namespace omniedge::sync
