// SIGTERM (systemctl stop): the daemon ends within 5 s (contract §7) however its neighbours
// behave, and every event it answered 202 for is in the buffer when it has gone.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/agent_process.h"
#include "tests/support/raw_http_client.h"
#include "tests/support/temp_dir.h"

using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::RawHttpClient;
using omniedge::testing::TempDir;
using namespace std::chrono_literals;

namespace {

// A peer that takes TCP connections into its backlog and never says a word: an MQTT broker that
// never sends CONNACK, an HTTPS centre that never finishes the TLS handshake.
class SilentListener {
 public:
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) == 0);
    REQUIRE(::listen(fd_, 64) == 0);
    REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
  }
  ~SilentListener() { ::close(fd_); }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

std::string batch(int n, int from) {
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    a.push_back(
        {{"type", "kiosk.view"},
         {"data", {{"screen", "product"}, {"n", from + i}, {"pad", std::string(300, 'x')}}}});
  }
  return a.dump();
}

}  // namespace

TEST_CASE(
    "SIGTERM under load with a silent broker, a silent centre, a trickling client and a "
    "stream reader stops within 5 s and keeps every event answered 202",
    "[integration][stop]") {
  TempDir tmp;
  SilentListener broker;
  SilentListener centre;
  AgentProcess agent(
      tmp / "data",
      {{"OMNIEDGE_MQTT_URL", "mqtt://127.0.0.1:" + std::to_string(broker.port())},
       {"OMNIEDGE_HTTPS_BASE_URL", "https://127.0.0.1:" + std::to_string(centre.port())},
       {"OMNIEDGE_HTTP_BODY_TIMEOUT", "60"}});
  const bool started = agent.start();
  INFO(agent.log());
  REQUIRE(started);

  // A client that sends half a request and then nothing, and a kiosk reading the trigger stream.
  RawHttpClient trickle;
  REQUIRE(trickle.connect("127.0.0.1", agent.httpPort()));
  REQUIRE(
      trickle.send("POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Content-Length: 1000\r\n\r\n[{\"type\":"));
  RawHttpClient stream;
  REQUIRE(stream.connect("127.0.0.1", agent.httpPort()));
  REQUIRE(stream.send("GET /v1/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"));

  std::atomic<bool> go{true};
  std::mutex mu;
  std::set<std::string> accepted;  // guarded by mu
  std::atomic<int> answered{0};
  std::vector<std::thread> posters;
  for (int t = 0; t < 3; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; go.load(); ++i) {
        auto [code, body] = agent.post("/v1/events", batch(50, t * 1000000 + i * 50), 5);
        if (code != 202) {
          continue;  // refused or cut while stopping: not acknowledged, nothing promised
        }
        const json r = json::parse(body);
        std::lock_guard lock(mu);
        for (const auto& id : r["ids"]) {
          accepted.insert(id.get<std::string>());
        }
        answered.fetch_add(1);
      }
    });
  }
  const auto loaded = std::chrono::steady_clock::now() + 20s;
  while (answered.load() < 20 && std::chrono::steady_clock::now() < loaded) {
    std::this_thread::sleep_for(20ms);
  }
  REQUIRE(answered.load() >= 20);

  // The stop, with the posters still posting.
  const auto t0 = std::chrono::steady_clock::now();
  const int code = agent.stop();  // SIGTERM, then waits for the exit
  const auto took = std::chrono::steady_clock::now() - t0;
  go.store(false);
  for (auto& p : posters) {
    p.join();
  }
  INFO(agent.log());
  CHECK(code == 0);
  CHECK(took < 5s);
  CHECK(agent.log().find("stopped cleanly") != std::string::npos);

  // Every event answered 202 is in the buffer (nothing was delivered: the broker never spoke).
  const auto out = tmp / "export.jsonl";
  const auto exported = agent.cli({"export", "--out", out.string(), "--pending-only"});
  REQUIRE(exported.exit_code == 0);
  std::set<std::string> kept;
  std::ifstream in(out);
  for (std::string line; std::getline(in, line);) {
    kept.insert(json::parse(line)["id"].get<std::string>());
  }
  std::vector<std::string> missing;
  for (const auto& id : accepted) {
    if (kept.count(id) == 0) {
      missing.push_back(id);
    }
  }
  INFO(missing.size() << " of " << accepted.size() << " acknowledged events missing");
  CHECK(missing.empty());
  CHECK(accepted.size() >= 1000);
}
