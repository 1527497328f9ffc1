// POS files dropped into the spool of the running binary: every transaction reaches the broker
// once, with no payment secrets; a broken file is rejected without stopping anything; the same
// file dropped twice yields no new event.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
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
namespace fs = std::filesystem;

namespace {

const fs::path kDay = fs::path(OMNIEDGE_SOURCE_DIR) / "tests/fixtures/poslog/ncr-acs-day.xml";

// As a till does it: write aside, then rename into the spool.
void drop(const fs::path& spool, const fs::path& from, const std::string& name) {
  fs::copy_file(from, spool / ("." + name + ".part"), fs::copy_options::overwrite_existing);
  fs::rename(spool / ("." + name + ".part"), spool / name);
}

// Every pos.* event received so far (duplicates included), by id.
std::multiset<std::string> posEvents(Subscriber& sub,
                                     std::map<std::string, json>* by_id = nullptr) {
  std::multiset<std::string> ids;
  for (const auto& m : sub.messages()) {
    auto batch = json::parse(m.payload, nullptr, false);
    if (batch.is_discarded() || !batch.contains("events")) {
      continue;
    }
    for (const auto& e : batch["events"]) {
      if (e["type"].get<std::string>().rfind("pos.", 0) == 0) {
        ids.insert(e["id"].get<std::string>());
        if (by_id != nullptr) {
          (*by_id)[e["id"].get<std::string>()] = e;
        }
      }
    }
  }
  return ids;
}

bool waitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

}  // namespace

TEST_CASE("a real POSLog day dropped into the spool reaches the broker once, without secrets",
          "[integration][pos]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  const fs::path spool = tmp / "spool";
  fs::create_directories(spool);
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_POS_SPOOL_DIR", spool.string()},
                                    {"OMNIEDGE_SYNC_COMPRESSION", "gzip"}});
  REQUIRE(agent.start());

  drop(spool, kDay, "day.xml");
  std::map<std::string, json> events;
  REQUIRE(waitUntil([&] { return posEvents(sub).size() >= 51; }, 60s));
  const auto first = posEvents(sub, &events);
  CHECK(first.size() == 51);
  CHECK(events.size() == 51);  // distinct ids
  int sales = 0;
  int controls = 0;
  for (const auto& [id, e] : events) {
    CHECK(id.rfind("store-042:", 0) == 0);
    CHECK(e["store_id"] == "store-042");
    sales += e["type"] == "pos.transaction" ? 1 : 0;
    controls += e["type"] == "pos.control" ? 1 : 0;
  }
  CHECK(sales == 42);
  CHECK(controls == 9);
  CHECK(fs::exists(spool / "processed" / "day.xml"));
  CHECK_FALSE(fs::exists(spool / "day.xml"));
  // Authorisation codes and reference numbers of the fixture's card tenders never leave.
  for (const auto& m : sub.messages()) {
    for (const char* secret : {"04405D", "734687", "365217", "316324", "AuthorizationCode"}) {
      CHECK(m.payload.find(secret) == std::string::npos);
    }
  }

  SECTION("the same file dropped again yields no new event") {
    drop(spool, kDay, "day-again.xml");
    REQUIRE(waitUntil([&] { return fs::exists(spool / "processed" / "day-again.xml"); }, 30s));
    CHECK(agent.cli({"flush", "--wait", "30"}).exit_code == 0);
    std::this_thread::sleep_for(500ms);
    CHECK(posEvents(sub).size() == first.size());
  }
  SECTION("a broken file goes to rejected/ with the reason, and a good one beside it flows") {
    tmp.write("broken.xml", "<POSLog><Transaction><RetailStoreID>9</RetailStoreID><Work");
    fs::rename(tmp / "broken.xml", spool / "broken.xml");
    tmp.write("one.json", R"({"workstation":"7","sequence":"42","business_day":"2026-11-22",
      "ended_at":"2026-11-22T10:00:00Z","currency":"EUR","kind":"sale",
      "lines":[{"item_id":"A1","description":"Mug","quantity":1,"unit_price":9.5,"amount":9.5}],
      "tenders":[{"type":"cash","amount":9.5}],"totals":{"grand":9.5,"tax":0}})");
    fs::rename(tmp / "one.json", spool / "one.json");
    REQUIRE(waitUntil([&] { return fs::exists(spool / "rejected" / "broken.xml.error"); }, 30s));
    CHECK(fs::exists(spool / "rejected" / "broken.xml"));
    CHECK_FALSE(tmp.read("spool/rejected/broken.xml.error").empty());
    REQUIRE(waitUntil([&] { return posEvents(sub).size() >= 52; }, 30s));
    CHECK(fs::exists(spool / "processed" / "one.json"));
  }
  CHECK(agent.stop() == 0);
}
