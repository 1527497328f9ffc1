// Store visits against the running binary: profiles pushed by the centre, a customer walks in
// (the real ESPresense trace), uses the kiosk, pays (the real NCR ACS POSLog with its loyalty
// id) and leaves; the uplink gets one visit.summary telling that story, and the sale carries
// its attribution. A visit open at kill -9 goes on after the restart and is summarised once.
#include <mqtt/async_client.h>
#include <sqlite3.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;

namespace {

std::vector<json> uplinkEvents(const Subscriber& sub, const std::string& type) {
  std::vector<json> out;
  std::set<std::string> ids;  // delivery is at least once: the centre de-duplicates on id
  for (const auto& m : sub.messages()) {
    auto batch = json::parse(m.payload, nullptr, false);
    if (batch.is_discarded() || !batch.contains("events")) {
      continue;
    }
    for (const auto& e : batch["events"]) {
      if (e["type"] == type && ids.insert(e["id"].get<std::string>()).second) {
        out.push_back(e);
      }
    }
  }
  return out;
}

bool uplinkHas(Subscriber& sub, const std::string& needle, std::chrono::seconds timeout) {
  return sub.waitFor(
      [&needle](const auto& msgs) {
        for (const auto& m : msgs) {
          if (m.payload.find(needle) != std::string::npos) {
            return true;
          }
        }
        return false;
      },
      timeout);
}

// The centre pushes profiles until the agent answers for `key`.
void pushProfiles(mqtt::async_client& centre, const AgentProcess& agent, const json& profiles,
                  const std::string& key) {
  std::pair<int, std::string> got{-1, ""};
  for (int i = 0; i < 100 && got.first != 200; ++i) {
    centre
        .publish("omniedge/v1/default/store-042/profiles",
                 json{{"upserts", profiles}, {"deletes", json::array()}, {"cursor", "1"}}.dump(), 1,
                 false)
        ->wait();
    std::this_thread::sleep_for(200ms);
    got = agent.get("/v1/customers/" + key);
  }
  REQUIRE(got.first == 200);
}

// The open visits' state as visits.db holds it (read by a second connection, as WAL allows).
std::string visitsDb(const fs::path& data_dir) {
  sqlite3* db = nullptr;
  std::string out;
  if (sqlite3_open_v2((data_dir / "visits.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
      SQLITE_OK) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT state FROM visits", -1, &st, nullptr) == SQLITE_OK) {
      while (sqlite3_step(st) == SQLITE_ROW) {
        out += reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
      }
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return out;
}

}  // namespace

TEST_CASE(
    "the ESPresense watch walks in, uses the kiosk, pays with its POSLog loyalty id and leaves: "
    "one visit.summary tells it and the sale carries its attribution, a customer who refused "
    "tracking gets neither",
    "[integration][visits]") {
  MosquittoBroker broker;  // uplink and store broker at once
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  fs::create_directories(tmp / "spool");
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_STORE_ID", "store-042"},
                                    {"OMNIEDGE_BEACON_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_BEACON_QOS", "1"},
                                    {"OMNIEDGE_BEACON_EXIT_AFTER", "4"},
                                    {"OMNIEDGE_POS_SPOOL_DIR", (tmp / "spool").string()},
                                    {"OMNIEDGE_SYNC_COMPRESSION", "none"}});
  REQUIRE(agent.start());
  mqtt::async_client centre(broker.url(), "test-centre");
  centre.connect()->wait();
  const json darrell = {
      {"id", "c-123"},
      {"keys", {"loyalty:40000066677", "app:A-9", "espresense:watch:darrell"}},
      {"tier", "gold"},
      {"consent", {{"tracking", true}, {"personalization", true}}},
      {"cart",
       {{"items",
         {{{"sku", "67591"}, {"qty", 1}, {"price", 2.99}, {"channel", "app"}},
          {{"sku", "SKU-WEB-1"}, {"qty", 1}, {"price", 5.00}, {"channel", "web"}}}},
        {"updated_at", "2026-11-22T10:00:00Z"}}}};
  const json refuser = {{"id", "c-9"},
                        {"keys", {"loyalty:REFUSER-1"}},
                        {"consent", {{"tracking", false}, {"personalization", true}}},
                        {"cart", {{"items", {{{"sku", "SKU-1"}, {"channel", "app"}}}}}}};
  pushProfiles(centre, agent, json{darrell, refuser}, "loyalty:REFUSER-1");

  // The watch stays in the store (its gateways keep reporting) until the test lets it go.
  std::atomic<bool> present{true};
  std::jthread gateways([&broker, &present](std::stop_token stop) {
    mqtt::async_client gw(broker.url(), "test-gateway");
    gw.connect()->wait();
    while (!stop.stop_requested() && present.load()) {
      std::ifstream trace(std::string(OMNIEDGE_SOURCE_DIR) +
                          "/tests/fixtures/gateways/espresense/stationary-watch-10-rooms.jsonl");
      int n = 0;
      for (std::string line; present.load() && std::getline(trace, line);) {
        auto j = json::parse(line);
        gw.publish(j["topic"].get<std::string>(), j["payload"].dump(), 1, false)->wait();
        if (++n % 40 == 0) {
          std::this_thread::sleep_for(20ms);  // about the pace of ten real gateways
        }
      }
    }
    gw.disconnect()->wait();
  });
  REQUIRE(uplinkHas(sub, "\"beacon.enter\"", 60s));

  // At the kiosk, signed in with the app.
  auto view = agent.post(
      "/v1/events",
      R"({"type":"kiosk.view","customer":{"app_user_id":"A-9"},"data":{"screen":"product:67591"}})");
  REQUIRE(view.first == 202);
  // The refuser looks at the kiosk and pays too.
  REQUIRE(agent
              .post("/v1/events", R"({"type":"kiosk.view","customer":{"loyalty_id":"REFUSER-1"},)"
                                  R"("data":{"screen":"home"}})")
              .first == 202);
  REQUIRE(agent
              .post("/v1/pos/transactions",
                    R"({"workstation":"99","sequence":1,"business_day":"2026-11-22",)"
                    R"("lines":[{"item_id":"SKU-1","amount":3.00}],"totals":{"grand":3.00},)"
                    R"("customer":{"loyalty_id":"REFUSER-1"}})")
              .first == 202);
  // At the till: the real POSLog, dropped as a till does (written aside, renamed in).
  {
    std::ifstream in(std::string(OMNIEDGE_SOURCE_DIR) + "/tests/fixtures/poslog/ncr-acs-small.xml",
                     std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::ofstream(tmp / "spool" / "sale.xml.part", std::ios::binary) << ss.str();
    fs::rename(tmp / "spool" / "sale.xml.part", tmp / "spool" / "sale.xml");
  }
  REQUIRE(uplinkHas(sub, "store-042:34:2017-09-30:161", 60s));
  present.store(false);  // the customer leaves
  gateways.request_stop();
  gateways.join();
  const bool summarised = uplinkHas(sub, "\"visit.summary\"", 90s);
  if (!summarised) {
    for (const char* type : {"beacon.enter", "beacon.exit", "kiosk.view", "pos.transaction"}) {
      for (const auto& e : uplinkEvents(sub, type)) {
        UNSCOPED_INFO(e.dump());
      }
    }
    UNSCOPED_INFO(agent.cli({"status", "--json"}).out);
    UNSCOPED_INFO(agent.log());
  }
  REQUIRE(summarised);
  REQUIRE(agent.cli({"flush", "--wait", "30"}).exit_code == 0);

  // The sale, attributed.
  json sale;
  json refused_sale;
  for (const auto& e : uplinkEvents(sub, "pos.transaction")) {
    if (e["id"] == "store-042:34:2017-09-30:161") {
      sale = e;
    } else if (e["data"]["workstation"] == "99") {
      refused_sale = e;
    }
  }
  REQUIRE(sale.is_object());
  const json& a = sale["data"]["attribution"];
  CHECK(a["zones"][0]["zone"] == "office_alt");
  CHECK(a["kiosk_screens"] == json{"product:67591"});
  REQUIRE(a["cart_lines"].size() == 1);
  CHECK(a["cart_lines"][0]["sku"] == "67591");
  CHECK(a["cart_lines"][0]["channel"] == "app");
  REQUIRE(refused_sale.is_object());
  CHECK_FALSE(refused_sale["data"].contains("attribution"));
  CHECK(refused_sale["customer"].empty());

  // The visit: one summary, for Darrell only.
  const auto summaries = uplinkEvents(sub, "visit.summary");
  REQUIRE(summaries.size() == 1);
  const json& v = summaries[0]["data"];
  CHECK(summaries[0]["customer"]["profile_id"] == "c-123");
  CHECK(summaries[0]["customer"]["loyalty_id"] == "40000066677");
  CHECK(v["visit_id"] == a["visit_id"]);
  CHECK(v["closed_by"] == "exit");
  REQUIRE(v["zones"].size() == 1);
  CHECK(v["zones"][0]["zone"] == "office_alt");
  CHECK(v["zones"][0]["dwell_ms"].get<int64_t>() > 0);
  std::vector<std::string> types;
  for (const auto& tp : v["touchpoints"]) {
    types.push_back(tp["type"]);
  }
  CHECK(types ==
        std::vector<std::string>{"beacon.enter", "kiosk.view", "pos.transaction", "beacon.exit"});
  REQUIRE(v["transactions"].size() == 1);
  CHECK(v["transactions"][0]["total"] == 1.07);
  CHECK(v["converted"] == true);
  CHECK(v["cart_items_bought"] == json{{{"sku", "67591"}, {"channel", "app"}}});
  CHECK(v["channels"] == json{"app", "kiosk", "pos", "store"});
  const auto status = json::parse(agent.cli({"status", "--json"}).out);
  CHECK(status["visits"]["open"] == 0);
  CHECK(status["visits"]["emitted"] == 1);
  centre.disconnect()->wait();
}

TEST_CASE(
    "a visit open at kill -9 goes on after the restart and its summary is emitted exactly once",
    "[integration][visits][fault]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  // Presence comes through the API as a gateway bridge posts it: with a token granted beacon.
  std::ofstream(tmp / "tokens") << "bridge-token-0123456789 channels=kiosk,beacon,pos\n";
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_STORE_ID", "store-042"},
                                    {"OMNIEDGE_HTTP_TOKENS_FILE", (tmp / "tokens").string()},
                                    {"OMNIEDGE_SYNC_COMPRESSION", "none"}});
  agent.setBearerToken("bridge-token-0123456789");
  REQUIRE(agent.start());
  mqtt::async_client centre(broker.url(), "test-centre");
  centre.connect()->wait();
  const std::string tag = "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:7:42";
  pushProfiles(centre, agent,
               json{{{"id", "c-55"},
                     {"keys", {"loyalty:L-RESTART", tag}},
                     {"cart", {{"items", {{{"sku", "SKU-1"}, {"channel", "web"}}}}}}}},
               "loyalty:L-RESTART");
  centre.disconnect()->wait();

  REQUIRE(agent
              .post("/v1/events", json{{"type", "beacon.enter"},
                                       {"customer", {{"beacon", tag}}},
                                       {"data", {{"identity", tag}, {"zone", "entrance"}}}}
                                      .dump())
              .first == 202);
  REQUIRE(agent
              .post("/v1/events", R"({"type":"kiosk.view","customer":{"loyalty_id":"L-RESTART"},)"
                                  R"("data":{"screen":"lookbook"}})")
              .first == 202);
  // Once the visit thread has written the kiosk view to visits.db, the agent dies.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (visitsDb(agent.dataDir()).find("lookbook") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
  }
  REQUIRE(visitsDb(agent.dataDir()).find("lookbook") != std::string::npos);
  agent.kill9();
  REQUIRE(agent.start());

  REQUIRE(agent
              .post("/v1/pos/transactions",
                    R"({"workstation":"7","sequence":4711,"business_day":"2026-11-22",)"
                    R"("currency":"EUR","lines":[{"item_id":"SKU-1","amount":12.50}],)"
                    R"("totals":{"grand":12.50},"customer":{"loyalty_id":"L-RESTART"}})")
              .first == 202);
  REQUIRE(agent
              .post("/v1/events", json{{"type", "beacon.exit"},
                                       {"customer", {{"beacon", tag}}},
                                       {"data", {{"identity", tag}, {"zone", "entrance"}}}}
                                      .dump())
              .first == 202);
  REQUIRE(uplinkHas(sub, "\"visit.summary\"", 60s));
  // Another crash and restart: nothing is emitted again.
  agent.kill9();
  REQUIRE(agent.start());
  REQUIRE(agent.cli({"flush", "--wait", "30"}).exit_code == 0);

  const auto summaries = uplinkEvents(sub, "visit.summary");
  REQUIRE(summaries.size() == 1);
  const json& v = summaries[0]["data"];
  std::vector<std::string> types;
  for (const auto& tp : v["touchpoints"]) {
    types.push_back(tp["type"]);
  }
  CHECK(types ==
        std::vector<std::string>{"beacon.enter", "kiosk.view", "pos.transaction", "beacon.exit"});
  CHECK(v["touchpoints"][1]["screen"] == "lookbook");
  CHECK(v["transactions"][0]["total"] == 12.5);
  CHECK(v["cart_items_bought"] == json{{{"sku", "SKU-1"}, {"channel", "web"}}});
  CHECK(summaries[0]["customer"]["profile_id"] == "c-55");
  const auto sales = uplinkEvents(sub, "pos.transaction");
  REQUIRE(sales.size() == 1);
  CHECK(sales[0]["data"]["attribution"]["zones"][0]["zone"] == "entrance");
  CHECK(sales[0]["data"]["attribution"]["kiosk_screens"] == json{"lookbook"});
  CHECK(sales[0]["data"]["attribution"]["visit_id"] == v["visit_id"]);
  CHECK(visitsDb(agent.dataDir()).empty());
}
