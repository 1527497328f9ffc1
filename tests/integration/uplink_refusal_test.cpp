// The real binary against a broker that refuses large messages: what the centre receives and
// what `omniedge status --json` tells the technician.
#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace {

std::string normalEvents(int n, int offset) {
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    a.push_back(
        {{"type", "kiosk.view"}, {"data", {{"n", offset + i}, {"pad", std::string(300, 'p')}}}});
  }
  return a.dump();
}

// About 40 KB of random hex: gzip only halves it, so it stays over a 16 KiB limit.
std::string bigEvent() {
  std::mt19937 rng(7);
  std::string blob;
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = 0; i < 40 * 1024; ++i) {
    blob.push_back(kHex[rng() % 16]);
  }
  return json{{"type", "kiosk.photo"}, {"data", {{"blob", blob}}}}.dump();
}

std::vector<std::string> ids(const std::string& body) {
  return json::parse(body)["ids"].get<std::vector<std::string>>();
}

json statusOf(const AgentProcess& agent) {
  auto st = agent.cli({"status", "--json"});
  REQUIRE(st.exit_code == 0);
  return json::parse(st.out);
}

}  // namespace

TEST_CASE(
    "an event over the broker's limit is quarantined with its reason and shown by status, "
    "and every other event arrives",
    "[integration][sync]") {
  MosquittoBroker::Options options;
  options.message_size_limit = 16 * 1024;
  options.max_queued_messages = 100'000;  // see MosquittoBroker::Options
  MosquittoBroker broker(options);
  Subscriber sub(broker.url(), "omniedge/v1/#");
  TempDir tmp;
  // MQTT 3.1.1: mosquitto would PUBACK and drop a larger message, so the limit is configured.
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_MQTT_VERSION", "3.1.1"},
                                    {"OMNIEDGE_MQTT_MAX_PACKET_BYTES", "16KiB"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}});
  REQUIRE(agent.start());

  std::vector<std::string> normal;
  auto [s1, b1] = agent.post("/v1/events", normalEvents(200, 0));
  REQUIRE(s1 == 202);
  normal = ids(b1);
  auto [s2, b2] = agent.post("/v1/events", bigEvent());
  REQUIRE(s2 == 202);
  const std::string big_id = ids(b2).front();
  auto [s3, b3] = agent.post("/v1/events", normalEvents(200, 200));
  REQUIRE(s3 == 202);
  for (const auto& id : ids(b3)) {
    normal.push_back(id);
  }

  REQUIRE(omniedge::testing::waitForAllIds(sub, normal, 60s) == 0);
  json s;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  do {
    s = statusOf(agent);
    if (s["quarantine"]["events"] == 1 && s["queue"]["pending"] == 0) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  } while (std::chrono::steady_clock::now() < deadline);
  INFO(s.dump(2));
  CHECK(s["queue"]["pending"] == 0);
  CHECK_FALSE(sub.hasEventId(big_id));
  const auto& q = s["quarantine"];
  CHECK(q["events"] == 1);
  CHECK(q["quarantined_since_start"] == 1);
  CHECK(q["latest_reason"].get<std::string>().find(
            "over the broker's maximum packet size of 16384 bytes (mqtt.max_packet_bytes)") !=
        std::string::npos);
  CHECK_FALSE(q["latest_at"].get<std::string>().empty());
  const auto& m = s["uplink"]["mqtt"];
  CHECK(m["state"] == "connected");
  CHECK(m["mqtt_version"] == "3.1.1");
  CHECK(m["max_packet_bytes"] == 16384);
  CHECK(m["max_packet_source"] == "config");
  CHECK(m["events_quarantined"] == 1);
  CHECK(m["batches_refused"] == 0);  // nothing over the limit was ever sent
  CHECK(m["next_attempt_at"] == "");
  CHECK(agent.stop() == 0);
}
