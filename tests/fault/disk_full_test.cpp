// A full disk must push producers back, lose nothing acknowledged, never wedge SQLite, and
// recover by itself once the uplink drains the buffer (quality.md R4). The data dir is a small
// tmpfs (a loop-mounted ext4 behaves the same here: the agent caps SQLite below the free space).
// OMNIEDGE_FAULT_LONG=1 fills a larger disk, several times.
#include <sys/mount.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "tests/fault/fault_support.h"
#include "tests/fault/netns_support.h"
#include "tests/support/agent_process.h"
#include "tests/support/broker.h"
#include "tests/support/central_sim.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;
using nlohmann::json;
using omniedge::testing::AgentProcess;
using omniedge::testing::CentralSim;
using omniedge::testing::MosquittoBroker;
using omniedge::testing::Subscriber;
using omniedge::testing::TempDir;
using omniedge::testing::fault::eventually;
using omniedge::testing::fault::longVariant;

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

// The POS spool driver's retries (appends the buffer pushed back), from `status --json`.
int64_t posRetries(const AgentProcess& agent) {
  const auto r = agent.cli({"status", "--json"});
  const auto s = json::parse(r.out, nullptr, false);
  if (!s.is_object() || !s.contains("drivers")) {
    return -1;
  }
  std::function<int64_t(const json&)> find = [&](const json& j) -> int64_t {
    if (j.is_object()) {
      if (j.contains("retries") && j["retries"].is_number_integer()) {
        return j["retries"].get<int64_t>();
      }
      for (const auto& [k, v] : j.items()) {
        if (const int64_t n = find(v); n >= 0) {
          return n;
        }
      }
    } else if (j.is_array()) {
      for (const auto& v : j) {
        if (const int64_t n = find(v); n >= 0) {
          return n;
        }
      }
    }
    return -1;
  };
  return find(s["drivers"]);
}

}  // namespace

TEST_CASE("a full disk pushes POS producers back with 503, loses nothing, and recovers",
          "[fault][disk]") {
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
          "[fault][disk]") {
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

TEST_CASE(
    "on a full disk under load kiosk clients get 503 and POS files wait in the spool, nothing "
    "accepted is lost, and everything flows once space returns",
    "[fault][disk]") {
  namespace fs = std::filesystem;
  TempDir tmp;
  SmallDisk disk(tmp / "data", longVariant() ? "96m" : "24m");
  if (!disk.mounted()) {
    WARN("cannot mount a tmpfs here (not root?): skipped");
    return;
  }
  const fs::path spool = tmp / "spool";  // the till's side: not on the full disk
  fs::create_directories(spool);
  MosquittoBroker broker;
  CentralSim::Options so;
  so.mqtt_url = broker.url();
  CentralSim sim(so);  // its persistent session exists before the agent publishes anything
  broker.stop();
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_STORE_ID", "store-1"},
                                    {"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_BUFFER_MIN_FREE_DISK", "4M"},
                                    {"OMNIEDGE_POS_SPOOL_DIR", spool.string()},
                                    {"OMNIEDGE_POS_RESCAN_INTERVAL", "1"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                    {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"}});
  REQUIRE(agent.start());
  const auto t0 = std::chrono::steady_clock::now();
  // The id a POS transaction gets (store + workstation + business day + sequence).
  auto [probe_code, probe] = agent.post("/v1/pos/transactions", sales(1, 0));
  REQUIRE(probe_code == 202);
  const std::string first_id = json::parse(probe)["ids"][0].get<std::string>();
  const std::string pos_prefix = first_id.substr(0, first_id.rfind(':') + 1);

  std::ofstream accepted(tmp / "accepted.jsonl");
  accepted << json{{"ids", {first_id}}}.dump() << "\n";
  std::map<std::string, std::vector<std::string>> files;  // spool file -> its event ids
  auto dropFile = [&](int offset) {
    const std::string name = "tx-" + std::to_string(offset) + ".json";
    tmp.write(name, sales(20, offset));
    fs::rename(tmp / name, spool / name);  // as a till does: write aside, rename in
    for (int i = 0; i < 20; ++i) {
      files[name].push_back(pos_prefix + std::to_string(offset + i));
    }
    return name;
  };
  const int fills = longVariant() ? 3 : 1;
  std::size_t kiosk_accepted = 0;
  int kiosk_full = 0;
  int seq = 1;
  for (int fill = 0; fill < fills; ++fill) {
    broker.stop();
    int full_now = 0;
    for (int r = 0; r < 20000 && full_now < 3; ++r) {
      json a = json::array();
      for (int i = 0; i < 50; ++i) {
        a.push_back(
            {{"type", "kiosk.view"}, {"data", {{"fill", fill}, {"pad", std::string(500, 'k')}}}});
      }
      auto [status, body] = agent.post("/v1/events", a.dump());
      if (status == 202) {
        const auto ids = json::parse(body)["ids"];
        accepted << json{{"ids", ids}}.dump() << "\n";
        kiosk_accepted += ids.size();
      } else {
        INFO("answer " << status << " " << body);
        REQUIRE((status == 503 || status == 507));
        CHECK(json::parse(body)["error"]["code"] == "full");
        ++full_now;
      }
      if (r % 20 == 0) {
        dropFile(seq);
        seq += 20;
      }
    }
    REQUIRE(full_now == 3);  // the agent's own cap: SQLite held below the free space
    kiosk_full += full_now;
    // Another process takes every byte left: the disk stays full until the test frees it.
    {
      std::ofstream filler(tmp / "data" / "filler", std::ios::binary);
      const std::string block(1 << 16, 'f');
      while (filler.write(block.data(), static_cast<std::streamsize>(block.size()))) {
      }
    }
    json batch = json::array();
    for (int i = 0; i < 50; ++i) {
      batch.push_back({{"type", "kiosk.view"}, {"data", {{"pad", std::string(500, 'f')}}}});
    }
    auto postKiosk = [&](const json& events) {
      auto [status, body] = agent.post("/v1/events", events.dump());
      if (status == 202) {
        const auto ids = json::parse(body)["ids"];
        accepted << json{{"ids", ids}}.dump() << "\n";
        kiosk_accepted += ids.size();
      }
      return status;
    };
    // SQLite may still fill the pages and WAL room it holds: batches until they are refused, then
    // single events, so that not even a small POS file fits any more.
    const json one = json::array({batch[0]});
    int status = 202;
    for (const json* events : std::initializer_list<const json*>{&batch, &one}) {
      status = 202;
      for (int r = 0; r < 5000 && status == 202; ++r) {
        status = postKiosk(*events);
      }
    }
    // The agent's own checkpoint may still be giving WAL room back after that refusal (commits
    // then reuse the WAL from its start, no new block needed): once it is done, single events
    // again, until a round takes none. Each one answered 202 is durable and in the history.
    for (int round = 0; round < 20; ++round) {
      std::this_thread::sleep_for(500ms);
      int taken = 0;
      for (int r = 0; r < 5000 && (status = postKiosk(one)) == 202; ++r) {
        ++taken;
      }
      if (taken == 0) {
        break;
      }
    }
    INFO("answer " << status);
    CHECK((status == 503 || status == 507));
    for (int r = 0; r < 5; ++r) {
      status = postKiosk(one);
      INFO("answer " << status);
      CHECK((status == 503 || status == 507));  // pushed back, never 202 on a full disk
      kiosk_full += status == 202 ? 0 : 1;
    }
    // A POS file dropped on the full disk is pushed back (the driver's retries count up) and
    // stays in the spool until it fits: never dropped. It may fit before the test frees the
    // disk, when the agent's own WAL checkpoint gives space back: then it is in processed/, and
    // its transactions are in the history below like every other file's.
    const int64_t retries_before = posRetries(agent);
    const std::string waiting = dropFile(seq);
    seq += 20;
    const bool pushed_back_or_fit = eventually(
        [&] {
          return posRetries(agent) > retries_before || fs::exists(spool / "processed" / waiting);
        },
        10s);
    INFO("POS retries " << retries_before << " -> " << posRetries(agent) << "; "
                        << (fs::exists(spool / "processed" / waiting) ? "fit"
                                                                      : "not in processed/"));
    CHECK(pushed_back_or_fit);
    CHECK((fs::exists(spool / waiting) || fs::exists(spool / "processed" / waiting)));
    CHECK(agent.get("/v1/health").first != -1);  // alive

    fs::remove(tmp / "data" / "filler");  // space returns
    broker.start();                       // delivery frees the disk
    const bool flowed = eventually(
        [&] {
          for (const auto& [name, ids] : files) {
            if (!fs::exists(spool / "processed" / name)) {
              return false;
            }
          }
          return agent.cli({"flush", "--wait", "10"}).exit_code == 0;
        },
        longVariant() ? 600s : 120s);
    INFO(agent.cli({"status"}).out);
    REQUIRE(flowed);
    CHECK(agent.post("/v1/events", R"({"type":"kiosk.view"})").first == 202);
  }
  // Every POS file is in processed/: each of its transactions was acknowledged to the till.
  std::size_t pos_accepted = 1;
  for (const auto& [name, ids] : files) {
    accepted << json{{"ids", ids}}.dump() << "\n";
    pos_accepted += ids.size();
  }
  accepted.close();
  const auto v = omniedge::testing::fault::finalVerdict(
      "R4 full disk", sim.db(), tmp / "accepted.jsonl", "default/store-1", 10s);
  const double wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  omniedge::testing::fault::reportFigures(omniedge::testing::fault::figuresOf(
      "R4 full disk", "disk filled (tmpfs), then freed", fills, v,
      json{{"events_per_s", static_cast<double>(kiosk_accepted + pos_accepted) / wall_s}}, wall_s));
  std::printf(
      "R4 full disk (%s tmpfs, %d fill(s)): %zu kiosk events answered 202, %d answered 503 full; "
      "%zu POS transactions in %zu spool files\n",
      longVariant() ? "96m" : "24m", fills, kiosk_accepted, kiosk_full, pos_accepted, files.size());
  std::fflush(stdout);
  INFO(v.text);
  CHECK(v.exit_code == 0);
  CHECK(v.lost() == 0);
  CHECK(agent.stop() == 0);
}
