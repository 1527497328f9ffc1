// The whole data path as a user meets it: events posted to the kiosk API of the real binary,
// a real mosquitto, a subscriber counting ids, and crashes made with SIGKILL.
#include <atomic>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

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

constexpr const char* kEvents = "omniedge/v1/+/+/events";

std::string eventsArray(int n, int offset, const std::string& type = "kiosk.view") {
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    a.push_back(
        {{"type", type},
         {"data", {{"n", offset + i}, {"screen", "home"}, {"pad", std::string(300, 'p')}}}});
  }
  return a.dump();
}

// POS transactions in the web hook's JSON form: pos.* comes in through /v1/pos/transactions.
std::string posTransactions(int n) {
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

std::vector<std::string> acceptedIds(const std::string& body) {
  return json::parse(body)["ids"].get<std::vector<std::string>>();
}

std::map<std::string, std::string> envFor(const MosquittoBroker& broker,
                                          const std::string& compression = "gzip") {
  return {{"OMNIEDGE_MQTT_URL", broker.url()},
          {"OMNIEDGE_SYNC_COMPRESSION", compression},
          {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
          {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}};
}

}  // namespace

TEST_CASE(
    "10,000 events posted to the kiosk API all reach a subscriber, shaped as the contract says",
    "[integration][pipeline]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/#");
  TempDir tmp;
  const std::string compression = GENERATE(as<std::string>{}, "gzip", "none");
  AgentProcess agent(tmp / "data", envFor(broker, compression));
  REQUIRE(agent.start());

  std::set<std::string> ids;
  for (int r = 0; r < 100; ++r) {
    auto [status, body] = agent.post("/v1/events", eventsArray(100, r * 100));
    REQUIRE(status == 202);
    auto got = acceptedIds(body);
    REQUIRE(got.size() == 100);
    ids.insert(got.begin(), got.end());
  }
  REQUIRE(ids.size() == 10000);
  CHECK(omniedge::testing::waitForAllIds(sub, {ids.begin(), ids.end()}, 60s) == 0);

  // Every batch is shaped as contract §5 says; every event as §3 says.
  bool saw_gzip_batch = false;
  for (const auto& m : sub.messages()) {
    if (m.topic != "omniedge/v1/default/store-042/events") {
      continue;
    }
    auto batch = json::parse(m.payload);
    REQUIRE(batch["batch_id"].is_string());
    CHECK(batch["store_id"] == "store-042");
    CHECK(batch["agent_version"].is_string());
    REQUIRE(batch["count"] == batch["events"].size());
    for (const auto& e : batch["events"]) {
      CHECK(e["id"].is_string());
      CHECK(e["type"].is_string());
      CHECK(e["source"].is_string());
      CHECK(e["store_id"] == "store-042");
      CHECK(e["occurred_at"].get<std::string>().size() == 24);
      CHECK(e["received_at"].get<std::string>().back() == 'Z');
      CHECK(e["customer"].is_object());
      CHECK(e["data"].is_object());
    }
    saw_gzip_batch = true;
  }
  CHECK(saw_gzip_batch);

  auto status = json::parse(sub.last("omniedge/v1/default/store-042/status"));
  CHECK(status["state"] == "online");
  // The uplink kept up: it read what had just been stored from memory, not from the file (the
  // same events, as the checks above saw).
  auto st = agent.cli({"status", "--json"});
  REQUIRE(st.exit_code == 0);
  CHECK(json::parse(st.out)["counters"]["reads_from_ring"].get<int64_t>() > 0);
  CHECK(agent.cli({"flush", "--wait", "30"}).exit_code == 0);
  CHECK(agent.stop() == 0);
  REQUIRE(sub.waitFor(
      [](const auto& msgs) {
        for (auto it = msgs.rbegin(); it != msgs.rend(); ++it) {
          if (it->topic == "omniedge/v1/default/store-042/status") {
            return it->payload.find("offline") != std::string::npos;
          }
        }
        return false;
      },
      10s));
}

TEST_CASE("with the broker down events are accepted and buffered, and all arrive once it is back",
          "[integration][pipeline]") {
  // The subscriber's persistent session exists before the agent ever connects, so the broker
  // queues every batch for it; then the broker goes down.
  MosquittoBroker broker;
  Subscriber sub(broker.url(), kEvents);
  broker.stop();
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  std::set<std::string> ids;
  for (int r = 0; r < 10; ++r) {
    auto [status, body] = agent.post("/v1/events", eventsArray(100, r * 100));
    REQUIRE(status == 202);
    for (auto& id : acceptedIds(body)) {
      ids.insert(id);
    }
  }
  auto st = agent.cli({"status", "--json"});
  REQUIRE(st.exit_code == 0);
  auto s = json::parse(st.out);
  CHECK(s["daemon"] == "running");
  CHECK(s["uplink"]["mqtt"]["state"] == "disconnected");
  CHECK(s["queue"]["pending"].get<int>() >= 1000);

  broker.start();
  CHECK(agent.cli({"flush"}).exit_code == 0);
  CHECK(omniedge::testing::waitForAllIds(sub, {ids.begin(), ids.end()}, 60s) == 0);
  // The backlog came from the file.
  st = agent.cli({"status", "--json"});
  REQUIRE(st.exit_code == 0);
  CHECK(json::parse(st.out)["counters"]["reads_from_file"].get<int64_t>() > 0);
}

TEST_CASE("an agent killed with SIGKILL in the middle of a stream loses no acknowledged event",
          "[integration][pipeline][fault]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), kEvents);
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());

  std::mutex mu;
  std::set<std::string> acked;
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  auto producer = [&](int which) {
    int n = 0;
    while (!stop.load()) {
      auto [status, body] = agent.post("/v1/events", eventsArray(10, which * 1000000 + n), 5);
      n += 10;
      if (status == 202) {
        std::lock_guard lock(mu);
        for (auto& id : acceptedIds(body)) {
          acked.insert(id);
        }
      } else {
        ++failures;  // daemon down or restarting: not acknowledged, the producer would retry
        std::this_thread::sleep_for(5ms);
      }
    }
  };
  std::thread p1(producer, 1);
  std::thread p2(producer, 2);
  std::mt19937 rng(42);
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 300));
    agent.kill9();
    REQUIRE(agent.start());
  }
  std::this_thread::sleep_for(300ms);
  stop = true;
  p1.join();
  p2.join();
  INFO("acknowledged " << acked.size() << ", failed requests " << failures.load());
  REQUIRE(acked.size() > 100);
  CHECK(omniedge::testing::waitForAllIds(sub, {acked.begin(), acked.end()}, 90s) == 0);
}

TEST_CASE("bad input gets 400 naming the field, and the good events around it still flow",
          "[integration][pipeline]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), kEvents);
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());

  auto before = agent.post("/v1/events", R"({"type":"kiosk.view","data":{"k":"before"}})");
  REQUIRE(before.first == 202);

  auto missing_type = agent.post("/v1/events", R"({"data":{"k":1}})");
  CHECK(missing_type.first == 400);
  CHECK(json::parse(missing_type.second)["error"]["field"] == "type");

  auto bad_in_array = agent.post("/v1/events", R"([{"type":"kiosk.view"},{"type":"Not A Type"}])");
  CHECK(bad_in_array.first == 400);
  CHECK(json::parse(bad_in_array.second)["error"]["field"] == "[1].type");

  auto not_json = agent.post("/v1/events", "{\"type\": ");
  CHECK(not_json.first == 400);
  CHECK(json::parse(not_json.second)["error"]["field"] == "body");

  auto bad_email =
      agent.post("/v1/events", R"({"type":"kiosk.signup","customer":{"email":"nope"}})");
  CHECK(bad_email.first == 400);
  CHECK(json::parse(bad_email.second)["error"]["field"] == "customer.email");

  auto after = agent.post("/v1/events", R"({"type":"kiosk.view","data":{"k":"after"}})");
  REQUIRE(after.first == 202);
  const auto id_before = acceptedIds(before.second)[0];
  const auto id_after = acceptedIds(after.second)[0];
  CHECK(agent.cli({"flush", "--wait", "30"}).exit_code == 0);
  CHECK(omniedge::testing::waitForAllIds(sub, {id_before, id_after}, 30s) == 0);
  // Nothing of the rejected array was taken.
  for (const auto& m : sub.messages()) {
    CHECK(m.payload.find("Not A Type") == std::string::npos);
  }
}

TEST_CASE("status answers with the daemon up and, from the buffer, with it down",
          "[integration][cli]") {
  MosquittoBroker broker(false);
  TempDir tmp;
  AgentProcess agent(tmp / "data", envFor(broker));
  REQUIRE(agent.start());
  REQUIRE(agent.post("/v1/pos/transactions", posTransactions(5)).first == 202);
  auto up = agent.cli({"status", "--json"});
  REQUIRE(up.exit_code == 0);
  CHECK(json::parse(up.out)["daemon"] == "running");

  agent.kill9();
  auto down = agent.cli({"status", "--json"});
  REQUIRE(down.exit_code == 0);
  auto s = json::parse(down.out);
  CHECK(s["daemon"] == "down");
  CHECK(s["queue"]["high"] == 5);
  CHECK(s["disk"]["unclean_shutdown"] == true);
  auto text = agent.cli({"status"});
  CHECK(text.out.find("DOWN") != std::string::npos);

  auto flush = agent.cli({"flush"});
  CHECK(flush.exit_code == 3);  // the daemon is not reachable

  auto tail = agent.cli({"tail", "-n", "3", "--type", "pos.*", "--json"});
  REQUIRE(tail.exit_code == 0);
  int lines = 0;
  for (std::size_t pos = 0; (pos = tail.out.find('\n', pos)) != std::string::npos; ++pos) {
    ++lines;
  }
  CHECK(lines == 3);
}

TEST_CASE("a raw e-mail address never reaches the buffer file or the uplink",
          "[integration][pii]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), kEvents);
  TempDir tmp;
  tmp.write("hmac.key", "tenant-secret-key-0123456789");
  auto env = envFor(broker, "none");
  env["OMNIEDGE_IDENTITY_HMAC_KEY_FILE"] = (tmp / "hmac.key").string();
  AgentProcess agent(tmp / "data", env);
  REQUIRE(agent.start());
  auto r = agent.post("/v1/events",
                      R"({"type":"kiosk.signup","customer":{"email":"Jane.Roe@Example.org",
                          "phone":"+44 20 7946 0958"},
                          "data":{"email":"jane.roe@example.org","phone":"+39 06 1234 5678",
                                  "note":"call me on +44 20 7946 0958"}})");
  REQUIRE(r.first == 202);
  REQUIRE(omniedge::testing::waitForAllIds(sub, acceptedIds(r.second), 30s) == 0);
  for (const auto& m : sub.messages()) {
    CHECK(m.payload.find("example.org") == std::string::npos);
    CHECK(m.payload.find("7946") == std::string::npos);
    CHECK(m.payload.find("1234 5678") == std::string::npos);
    if (m.payload.find("kiosk.signup") != std::string::npos) {
      CHECK(m.payload.find("email_sha256") != std::string::npos);
    }
  }
  agent.stop();
  const std::string file = tmp.read("data/buffer.db") + tmp.read("data/buffer.db-wal");
  CHECK(file.find("example.org") == std::string::npos);
  CHECK(file.find("Example.org") == std::string::npos);
  CHECK(file.find("7946") == std::string::npos);
}

TEST_CASE("without its phone module the agent refuses what it cannot check, never stores it raw",
          "[integration][pii]") {
  MosquittoBroker broker;
  TempDir tmp;
  auto env = envFor(broker, "none");
  env["OMNIEDGE_IDENTITY_PHONE_MODULE"] = (tmp / "missing.so").string();  // a broken installation
  AgentProcess agent(tmp / "data", env);
  REQUIRE(agent.start());
  auto phone =
      agent.post("/v1/events", R"({"type":"kiosk.signup","data":{"note":"+44 20 7946 0958"}})");
  INFO(phone.second);
  CHECK(phone.first >= 400);
  CHECK(phone.second.find("phone") != std::string::npos);
  // E-mail addresses need no module: they are still hashed and accepted.
  auto email =
      agent.post("/v1/events", R"({"type":"kiosk.signup","data":{"e":"jane@example.org"}})");
  CHECK(email.first == 202);
  agent.stop();
  const std::string file = tmp.read("data/buffer.db") + tmp.read("data/buffer.db-wal");
  CHECK(file.find("7946") == std::string::npos);
  CHECK(file.find("example.org") == std::string::npos);
}

TEST_CASE(
    "send-test-event reports delivery, and export then import carries a backlog to another agent",
    "[integration][cli]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), kEvents);
  TempDir tmp;
  {
    AgentProcess agent(tmp / "live", envFor(broker));
    REQUIRE(agent.start());
    auto sent = agent.cli({"send-test-event", "--timeout", "30"});
    INFO(sent.out);
    CHECK(sent.exit_code == 0);
    CHECK(sent.out.find("delivered") != std::string::npos);
    CHECK(agent.stop() == 0);
  }
  broker.stop();

  // A store offline for days: the technician exports what is pending ...
  std::set<std::string> ids;
  {
    AgentProcess old_agent(tmp / "old", envFor(broker));
    REQUIRE(old_agent.start());
    auto [status, body] = old_agent.post("/v1/events", eventsArray(50, 0));
    REQUIRE(status == 202);
    for (auto& id : acceptedIds(body)) {
      ids.insert(id);
    }
    CHECK(old_agent.stop() == 0);
    auto out =
        old_agent.cli({"export", "--out", (tmp / "backlog.jsonl.gz").string(), "--pending-only"});
    INFO(out.out);
    REQUIRE(out.exit_code == 0);
  }
  // ... and imports it into the replacement device, which delivers it.
  broker.start();
  AgentProcess agent(tmp / "new", envFor(broker));
  REQUIRE(agent.start());
  auto imported = agent.cli({"import", (tmp / "backlog.jsonl.gz").string()});
  INFO(imported.out);
  REQUIRE(imported.exit_code == 0);
  CHECK(omniedge::testing::waitForAllIds(sub, {ids.begin(), ids.end()}, 60s) == 0);
  CHECK(agent.cli({"import", (tmp / "missing.jsonl").string()}).exit_code == 1);
}
