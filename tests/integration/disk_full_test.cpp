// A full disk must push producers back, lose nothing acknowledged, never wedge SQLite, and
// recover by itself once the uplink drains the buffer (quality.md R4).
#include <sys/mount.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

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

// A small tmpfs as the data dir; unmounted at the end. Needs root (as CI runs).
class SmallDisk {
 public:
  SmallDisk(const std::filesystem::path& at, const std::string& size) : path_(at) {
    std::filesystem::create_directories(at);
    const std::string opts = "size=" + size + ",mode=0700";
    mounted_ = mount("tmpfs", at.c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~SmallDisk() {
    if (mounted_) {
      umount2(path_.c_str(), MNT_DETACH);
    }
  }
  bool mounted() const { return mounted_; }

 private:
  std::filesystem::path path_;
  bool mounted_ = false;
};

// POS sales in the web hook's JSON transaction form (docs/pos.md): pos.* events come in
// through POST /v1/pos/transactions, never /v1/events.
std::string sales(int n, int offset) {
  json a = json::array();
  for (int i = 0; i < n; ++i) {
    a.push_back({{"workstation", "1"},
                 {"sequence", std::to_string(offset + i)},
                 {"business_day", "2026-11-22"},
                 {"ended_at", "2026-11-22T13:32:42.123Z"},
                 {"currency", "EUR"},
                 {"lines",
                  {{{"item_id", "pad"},
                    {"description", std::string(500, 'x')},
                    {"quantity", 1},
                    {"unit_price", 1.5},
                    {"amount", 1.5}}}},
                 {"tenders", {{{"type", "cash"}, {"amount", 1.5}}}},
                 {"totals", {{"grand", 1.5}, {"tax", 0}}}});
  }
  return a.dump();
}

}  // namespace

TEST_CASE("a full disk pushes POS producers back with 503, loses nothing, and recovers",
          "[integration][fault][disk]") {
  TempDir tmp;
  SmallDisk disk(tmp / "data", "32m");
  if (!disk.mounted()) {
    WARN("cannot mount a tmpfs here (not root?): skipped");
    return;
  }
  // The subscriber's persistent session exists before the agent ever connects, so the broker
  // queues every batch for it.
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  broker.stop();
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_BUFFER_MIN_FREE_DISK", "6M"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}});
  REQUIRE(agent.start());

  std::set<std::string> acked;
  int pushed_back = 0;
  for (int r = 0; r < 2000 && pushed_back < 3; ++r) {
    auto [status, body] = agent.post("/v1/pos/transactions", sales(50, r * 50));
    if (status == 202) {
      const auto answer = json::parse(body);
      for (const auto& id : answer["ids"]) {
        acked.insert(id.get<std::string>());
      }
    } else {
      INFO("answer " << status << " " << body);
      REQUIRE(status == 503);
      CHECK(json::parse(body)["error"]["code"] == "full");
      ++pushed_back;
    }
  }
  REQUIRE(pushed_back == 3);
  REQUIRE(acked.size() > 1000);
  const auto [health_code, health] = agent.get("/v1/health");
  CHECK(health_code == 503);
  CHECK(json::parse(health)["status"] == "degraded");
  CHECK_THAT(json::parse(health)["reason"].get<std::string>(), Catch::Contains("buffer full"));
  // Still alive and answering: SQLite did not wedge.
  auto st = agent.cli({"status", "--json"});
  REQUIRE(st.exit_code == 0);
  CHECK(json::parse(st.out)["counters"]["rejected_full"].get<int>() >= 3);

  broker.start();
  const auto flushed = agent.cli({"flush", "--wait", "60"});
  INFO(flushed.out << agent.cli({"status"}).out << agent.log());
  REQUIRE(flushed.exit_code == 0);
  CHECK(omniedge::testing::waitForAllIds(sub, {acked.begin(), acked.end()}, 60s) == 0);
  // Room again: the same producer is accepted.
  CHECK(agent.post("/v1/pos/transactions", sales(50, 1000000)).first == 202);
  CHECK(agent.stop() == 0);
}

TEST_CASE("a disk filled by someone else pushes back, and the agent recovers when space returns",
          "[integration][fault][disk]") {
  TempDir tmp;
  SmallDisk disk(tmp / "data", "32m");
  if (!disk.mounted()) {
    WARN("cannot mount a tmpfs here (not root?): skipped");
    return;
  }
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  broker.stop();
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_BUFFER_MIN_FREE_DISK", "1M"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}});
  REQUIRE(agent.start());
  std::vector<std::string> acked;
  auto post = [&](int offset) {
    auto [status, body] = agent.post("/v1/pos/transactions", sales(50, offset));
    if (status == 202) {
      const auto answer = json::parse(body);
      for (const auto& id : answer["ids"]) {
        acked.push_back(id.get<std::string>());
      }
    }
    return status;
  };
  for (int r = 0; r < 20; ++r) {
    REQUIRE(post(r * 50) == 202);
  }
  // Another process takes every byte that is left.
  {
    std::ofstream filler(tmp / "data" / "filler", std::ios::binary);
    const std::string block(1 << 20, 'f');
    while (filler.write(block.data(), static_cast<std::streamsize>(block.size()))) {
    }
  }
  int status = 0;
  for (int r = 0; r < 50 && status != 503; ++r) {
    status = post(100000 + r * 50);
  }
  CHECK(status == 503);
  CHECK(agent.get("/v1/health").first != -1);  // alive

  std::filesystem::remove(tmp / "data" / "filler");  // space returns
  broker.start();
  const auto flushed = agent.cli({"flush", "--wait", "60"});
  INFO(flushed.out << agent.log());
  REQUIRE(flushed.exit_code == 0);
  CHECK(omniedge::testing::waitForAllIds(sub, acked, 60s) == 0);
  CHECK(post(200000) == 202);
}
