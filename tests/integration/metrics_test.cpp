// GET /metrics as Prometheus scrapes it: the real agent, a real mosquitto, good and bad events
// on the kiosk API and the POS web hook, and the page read by the real Prometheus parser
// (python3-prometheus-client, tests/tools/metrics_check.py).
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/command.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::runCommand;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace {

std::string kioskEvents(int n) {
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    a.push_back({{"type", "kiosk.view"}, {"data", {{"n", i}, {"screen", "home"}}}});
  }
  return a.dump();
}

std::string sales(int n) {
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    a.push_back({{"workstation", "1"},
                 {"sequence", std::to_string(i)},
                 {"business_day", "2026-11-22"},
                 {"ended_at", "2026-11-22T13:32:42.123Z"},
                 {"lines", {{{"item_id", "A"}, {"quantity", 1}, {"amount", 2.5}}}},
                 {"totals", {{"grand", 2.5}}}});
  }
  return a.dump();
}

// The sample line `name{labels} value` as the agent writes it, e.g. for a wait.
bool hasSample(const std::string& page, const std::string& sample) {
  return page.find(sample + "\n") != std::string::npos;
}

json expectEq(const std::string& name, const json& labels, double value,
              const std::string& op = "==") {
  return {{"name", name}, {"labels", labels}, {"op", op}, {"value", value}};
}

}  // namespace

TEST_CASE(
    "GET /metrics parses with the Prometheus parser and counts events by channel and reason as "
    "a user checks them",
    "[integration][metrics]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}});
  REQUIRE(agent.start());

  // Good events: 3 kiosk requests of 5, 2 POS sales.
  std::size_t accepted = 0;
  for (int r = 0; r < 3; ++r) {
    const auto [status, body] = agent.post("/v1/events", kioskEvents(5));
    REQUIRE(status == 202);
    accepted += json::parse(body)["ids"].size();
  }
  REQUIRE(accepted == 15);
  const auto [pos_status, pos_body] = agent.post("/v1/pos/transactions", sales(2));
  REQUIRE(pos_status == 202);
  const std::size_t pos_accepted = json::parse(pos_body)["ids"].size();
  REQUIRE(pos_accepted >= 2);

  // Bad ones, each counted once as "invalid": a kiosk event for another store (refused by
  // ingest), a body that is not JSON (refused by the kiosk API before ingest), a POS sale
  // without its lines (refused by the web hook's mapping).
  {
    const auto [status, body] = agent.post("/v1/events", "[{\"type\": \"kiosk.view\",");
    REQUIRE(status == 400);
  }
  {
    const auto [status, body] =
        agent.post("/v1/events",
                   json::array({{{"type", "kiosk.view"}, {"store_id", "not-this-store"}}}).dump());
    REQUIRE(status == 400);
    CHECK_THAT(body, Catch::Contains("store_id"));
  }
  {
    const auto [status, body] =
        agent.post("/v1/pos/transactions", json::array({{{"workstation", "1"}}}).dump());
    REQUIRE(status == 400);
  }

  // Delivered: the subscriber has them, and the agent has the PUBACKs and committed them.
  REQUIRE(sub.waitForEventIds(accepted + pos_accepted, 60s));
  const std::string kiosk_delivered =
      "omniedge_events_delivered_total{channel=\"kiosk\"} " + std::to_string(accepted);
  const std::string pos_delivered =
      "omniedge_events_delivered_total{channel=\"pos\"} " + std::to_string(pos_accepted);
  std::string page;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (;;) {
    const auto [status, body] = agent.get("/metrics");
    REQUIRE(status == 200);
    page = body;
    if ((hasSample(page, kiosk_delivered) && hasSample(page, pos_delivered) &&
         hasSample(page, "omniedge_buffer_pending{priority=\"high\"} 0") &&
         hasSample(page, "omniedge_buffer_pending{priority=\"normal\"} 0")) ||
        std::chrono::steady_clock::now() > deadline) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  INFO(page);
  CHECK(hasSample(page, kiosk_delivered));
  CHECK(hasSample(page, pos_delivered));

  const json expect = {
      {"values",
       json::array({
           expectEq("omniedge_events_ingested_total", {{"channel", "kiosk"}}, 15),
           expectEq("omniedge_events_ingested_total", {{"channel", "pos"}},
                    static_cast<double>(pos_accepted)),
           expectEq("omniedge_events_ingested_total", {{"channel", "other"}}, 0),
           expectEq("omniedge_events_delivered_total", {{"channel", "kiosk"}}, 15),
           expectEq("omniedge_events_delivered_total", {{"channel", "pos"}},
                    static_cast<double>(pos_accepted)),
           expectEq("omniedge_events_delivered_total", {{"channel", "other"}}, 0),
           expectEq("omniedge_events_rejected_total", {{"channel", "kiosk"}, {"reason", "invalid"}},
                    2),
           expectEq("omniedge_events_rejected_total", {{"channel", "pos"}, {"reason", "invalid"}},
                    1),
           expectEq("omniedge_events_rejected_total", {{"channel", "kiosk"}, {"reason", "full"}},
                    0),
           expectEq("omniedge_events_dropped_total", {{"channel", "beacon"}, {"reason", "evicted"}},
                    0),
           expectEq("omniedge_http_requests_total",
                    {{"route", "/v1/pos/transactions"}, {"code", "400"}}, 1),
           expectEq("omniedge_http_requests_total", {{"route", "/v1/events"}, {"code", "400"}}, 2),
           expectEq("omniedge_buffer_pending", {{"priority", "high"}}, 0),
           expectEq("omniedge_buffer_pending_bytes", {{"priority", "high"}}, 0),
           expectEq("omniedge_buffer_oldest_pending_age_seconds", json::object(), 0, ">="),
           expectEq("omniedge_uplink_connected", {{"link", "mqtt"}, {"node", broker.url()}}, 1),
           expectEq("omniedge_uplink_reconnects_total", {{"link", "mqtt"}}, 0),
           expectEq("omniedge_mqtt_batches_acked_total", json::object(), 1, ">="),
           expectEq("omniedge_uplink_batch_latency_seconds_count", {{"link", "mqtt"}}, 1, ">="),
           expectEq("omniedge_uplink_batch_latency_seconds_count", {{"link", "https"}}, 0),
           expectEq("omniedge_buffer_file_bytes", json::object(), 4096, ">="),
           expectEq("omniedge_buffer_wal_bytes", json::object(), 0, ">="),
           expectEq("omniedge_buffer_wal_kept", json::object(), 0),
           expectEq("omniedge_data_dir_free_bytes", json::object(), 1, ">="),
           expectEq("omniedge_process_resident_memory_bytes", json::object(), 1 << 20, ">="),
           expectEq("omniedge_driver_state", {{"driver", "kiosk-http"}, {"state", "running"}}, 1),
           expectEq("omniedge_quarantine_events", json::object(), 0),
           expectEq("omniedge_quarantine_bytes", json::object(), 0),
           expectEq("omniedge_config_version", json::object(), 0),
       })}};
  const auto metrics_file = tmp / "metrics.txt";
  const auto expect_file = tmp / "expect.json";
  std::ofstream(metrics_file) << page;
  std::ofstream(expect_file) << expect.dump(2);
  const auto checked = runCommand(
      {"/usr/bin/python3", std::string(OMNIEDGE_SOURCE_DIR) + "/tests/tools/metrics_check.py",
       metrics_file.string(), expect_file.string(),
       std::string(OMNIEDGE_SOURCE_DIR) + "/docs/metrics.md"},
      {}, 60s);
  INFO(checked.out << checked.err);
  CHECK(checked.exit_code == 0);
  CHECK_THAT(checked.out, Catch::Contains("metrics OK"));
  CHECK(agent.stop() == 0);
}
