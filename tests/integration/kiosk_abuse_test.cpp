// The real daemon's kiosk API under abuse: its descriptors stay bounded however many slow or
// silent clients connect, a valid client is still served, and the API takes only kiosk.*
// events from an unauthenticated loopback caller.
#include <dirent.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/raw_http_client.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::RawHttpClient;
using omniedge::testing::TempDir;

namespace {

std::size_t openDescriptors(pid_t pid) {
  std::size_t n = 0;
  if (DIR* dir = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
    while (readdir(dir) != nullptr) {
      ++n;
    }
    closedir(dir);
  }
  return n;
}

std::string kioskPost(const std::string& body) {
  return "POST /v1/events HTTP/1.1\r\nHost: kiosk\r\nContent-Type: application/json\r\n"
         "Content-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace

TEST_CASE("slow and silent clients never pile up descriptors in the daemon",
          "[integration][kiosk][abuse]") {
  MosquittoBroker broker;
  TempDir tmp;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_HTTP_MAX_CONNECTIONS", "16"},
                                    {"OMNIEDGE_HTTP_WORKERS", "2"},
                                    {"OMNIEDGE_HTTP_HEADER_TIMEOUT", "2"}});
  REQUIRE(agent.start());
  const std::size_t before = openDescriptors(agent.pid());
  REQUIRE(before > 0);

  // 64 silent connections and 64 that trickle a header byte per second.
  std::vector<RawHttpClient> silent(64);
  for (RawHttpClient& c : silent) {
    REQUIRE(c.connect("127.0.0.1", agent.httpPort()));
  }
  std::vector<RawHttpClient> slow(64);
  for (RawHttpClient& c : slow) {
    REQUIRE(c.connect("127.0.0.1", agent.httpPort()));
    c.send("POST /v1/events HTTP/1.1\r\nX-Slow: ");
  }
  std::atomic<bool> stop{false};
  std::thread trickle([&] {
    while (!stop) {
      for (RawHttpClient& c : slow) {
        c.send("a");
      }
      for (int i = 0; i < 10 && !stop; ++i) {
        std::this_thread::sleep_for(100ms);
      }
    }
  });
  for (int round = 0; round < 4; ++round) {
    RawHttpClient valid;
    REQUIRE(valid.connect("127.0.0.1", agent.httpPort()));
    REQUIRE(valid.send(kioskPost(R"({"type":"kiosk.view"})")));
    const std::string answer = valid.response(20s);
    INFO("round " << round << ": " << answer);
    CHECK(valid.status(answer) == 202);
    // The daemon's own descriptors (buffer, broker, control socket ...) plus at most 16
    // connections, whatever the 128 clients do. A little slack: a newcomer is accepted before the
    // connection it replaces is closed.
    const std::size_t now = openDescriptors(agent.pid());
    INFO("descriptors before " << before << ", now " << now);
    CHECK(now <= before + 16 + 4);
    std::this_thread::sleep_for(1s);
  }
  stop = true;
  trickle.join();
  auto [code, metrics] = agent.get("/metrics");
  REQUIRE(code == 200);
  CHECK(metrics.find("omniedge_http_connections_open ") != std::string::npos);
  CHECK(metrics.find("omniedge_http_connections_closed_total{reason=\"evicted\"} 0\n") ==
        std::string::npos);
  CHECK(agent.stop() == 0);
}

TEST_CASE("the daemon's kiosk API refuses pos.* and agent.* on /v1/events and shows profiles",
          "[integration][kiosk]") {
  MosquittoBroker broker;
  TempDir tmp;
  AgentProcess agent(
      tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()}, {"OMNIEDGE_PROFILES_MAX_BYTES", "1MiB"}});
  REQUIRE(agent.start());
  auto [pos_status, pos_body] = agent.post("/v1/events", R"({"type":"pos.transaction"})");
  CHECK(pos_status == 400);
  const json e = json::parse(pos_body)["error"];
  CHECK(e["field"] == "type");
  CHECK_THAT(e["message"].get<std::string>(), Catch::Contains("/v1/pos/transactions"));
  auto [agent_status, agent_body] = agent.post("/v1/events", R"({"type":"agent.started"})");
  CHECK(agent_status == 400);

  auto [bogus_status, bogus_body] = agent.get("/v1/customers/bogus");
  CHECK(bogus_status == 400);
  CHECK_THAT(bogus_body, Catch::Contains("is not a customer key"));

  // A cart for a customer the centre never sent: kept locally, and counted in status.
  auto [cart_status, cart_body] =
      agent.post("/v1/customers/loyalty:NEW-1/cart/items", R"({"sku":"SKU-9"})");
  CHECK(cart_status == 201);
  auto [got_status, got_body] = agent.get("/v1/customers/loyalty:NEW-1/cart");
  CHECK(got_status == 200);
  CHECK(json::parse(got_body)["items"][0]["sku"] == "SKU-9");

  auto status = agent.cli({"status", "--json"});
  REQUIRE(status.exit_code == 0);
  const json profiles = json::parse(status.out)["profiles"];
  CHECK(profiles["memory_max_bytes"] == 1024 * 1024);
  CHECK(profiles["local_carts"] == 1);
  CHECK(profiles["on_disk"] == 1);
  CHECK(agent.stop() == 0);
}

TEST_CASE("a tokens file granting agent.* stops the start, naming the line",
          "[integration][kiosk][auth]") {
  TempDir tmp;
  const auto tokens = tmp / "tokens";
  std::ofstream(tokens)
      << "# kiosks\nkiosk-token-0123456789\nbad-token-0123456789 channels=agent\n";
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_HTTP_TOKENS_FILE", tokens.string()}});
  const auto run = agent.cli({"run"});
  CHECK(run.exit_code == 78);
  CHECK_THAT(run.out, Catch::Contains("http.tokens_file") && Catch::Contains("line 3") &&
                          Catch::Contains("only from the agent"));
}
