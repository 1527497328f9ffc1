// POS files dropped into the spool of the running binary: every transaction reaches the broker
// once, with no payment secrets; a broken file is rejected without stopping anything; the same
// file dropped twice yields no new event.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
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

namespace {

// The daemon's POS driver as `omniedge status --json` shows it.
json posDriver(const AgentProcess& agent) {
  const auto status = agent.cli({"status", "--json"});
  REQUIRE(status.exit_code == 0);
  const json s = json::parse(status.out, nullptr, false);
  INFO(status.out);
  REQUIRE_FALSE(s.is_discarded());
  for (const auto& d : s["drivers"]) {
    if (d["name"] == "pos") {
      return d;
    }
  }
  FAIL("no pos driver in status: " << status.out);
  return {};
}

// The peak resident set of a process in kB (VmHWM), 0 when unknown.
uint64_t peakRssKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::stoull(line.substr(6));
    }
  }
  return 0;
}

// Writes `unit` `times` times (after `head`, before `tail`) without holding it in memory.
void writeRepeated(const fs::path& path, const std::string& head, std::string_view unit,
                   std::size_t times, const std::string& tail) {
  std::ofstream out(path, std::ios::binary);
  out << head;
  std::string chunk;
  for (int i = 0; i < 4096; ++i) {
    chunk += unit;
  }
  std::size_t left = times;
  while (left >= 4096) {
    out << chunk;
    left -= 4096;
  }
  for (; left > 0; --left) {
    out << unit;
  }
  out << tail;
  REQUIRE(out.good());
}

const char* const kGoodSale = R"({"workstation":"7","sequence":"43","business_day":"2026-11-22",
  "ended_at":"2026-11-22T10:00:00Z","lines":[{"item_id":"A1","amount":9.5}],
  "totals":{"grand":9.5}})";

}  // namespace

TEST_CASE("five bad POS files: status shows the POS driver with 5 errors and the last file",
          "[integration][pos]") {
  MosquittoBroker broker;
  TempDir tmp;
  const fs::path spool = tmp / "spool";
  fs::create_directories(spool);
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_POS_SPOOL_DIR", spool.string()}});
  REQUIRE(agent.start());
  CHECK(posDriver(agent)["errors"] == 0);

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"bad-1.xml", "<POSLog><Transaction>"},
      {"bad-2.json", R"({"workstation":"1","sequence":"2","business_day":"x"})"},
      {"bad-3.jsonl", "{\n"},
      {"bad-4.xml", ""},
      {"bad-5.json", R"({"workstation":"1","sequence":"5","business_day":"2026-11-22",
                        "lines":[{"amount":"12,50"}]})"},
  };
  // One at a time, so that the last one rejected is bad-5.json.
  for (const auto& [name, content] : bad) {
    tmp.write(name, content);
    fs::rename(tmp / name, spool / name);
    REQUIRE(waitUntil([&] { return fs::exists(spool / "rejected" / (name + ".error")); }, 30s));
  }
  json pos;
  REQUIRE(waitUntil(
      [&] {
        pos = posDriver(agent);
        return pos["errors"] == 5;
      },
      10s));
  CHECK(pos["state"] == "running");
  CHECK(pos["input_errors"] == 5);
  CHECK(pos["counters"]["files_rejected"] == 5);
  CHECK(pos["last_error"] ==
        "bad-5.json: lines[0].amount must be a decimal number (like 12.50), not \"12,50\" "
        "(element lines[0].amount)");
  // The text form names it too.
  const auto text = agent.cli({"status"});
  CHECK_THAT(text.out, Catch::Contains("bad-5.json"));
  CHECK(agent.stop() == 0);
}

TEST_CASE("files built to exhaust memory are rejected, the next file flows, memory stays bounded",
          "[integration][pos]") {
  MosquittoBroker broker;
  Subscriber sub(broker.url(), "omniedge/v1/+/+/events");
  TempDir tmp;
  const fs::path spool = tmp / "spool";
  fs::create_directories(spool);
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()},
                                    {"OMNIEDGE_POS_SPOOL_DIR", spool.string()}});
  REQUIRE(agent.start());

  // Each just under pos.max_file_bytes (64 MiB): before the parse budget the first took 3 GB,
  // the second 1.1 GB, and the agent was OOM-killed on a store device, again at every restart.
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  writeRepeated(tmp / "a-arrays.json", "[", "[],", (64 * kMiB - 16) / 3, "[]]");
  writeRepeated(tmp / "b-elements.xml", "<POSLog>", "<a/>", (64 * kMiB - 32) / 4, "</POSLog>");
  writeRepeated(tmp / "c-values.json", "{\"x\":[", "[],", (64 * kMiB - 16) / 3, "[]]}");
  {
    std::mt19937_64 random(60);
    std::ofstream out(tmp / "d-random.xml", std::ios::binary);
    std::vector<uint64_t> block(8192);
    for (std::size_t written = 0; written < 60 * kMiB; written += block.size() * 8) {
      for (auto& word : block) {
        word = random();
      }
      out.write(reinterpret_cast<const char*>(block.data()),
                static_cast<std::streamsize>(block.size() * 8));
    }
  }
  tmp.write("e-good.json", kGoodSale);
  for (const char* name :
       {"a-arrays.json", "b-elements.xml", "c-values.json", "d-random.xml", "e-good.json"}) {
    fs::rename(tmp / name, spool / name);
  }

  REQUIRE(waitUntil([&] { return fs::exists(spool / "processed" / "e-good.json"); }, 120s));
  REQUIRE(waitUntil([&] { return posEvents(sub).size() == 1; }, 30s));
  CHECK(agent.running());
  CHECK(agent.get("/v1/health").first == 200);
  for (const char* name : {"a-arrays.json", "b-elements.xml", "c-values.json", "d-random.xml"}) {
    INFO(name);
    CHECK(fs::exists(spool / "rejected" / name));
    CHECK(fs::exists(spool / "rejected" / (std::string(name) + ".error")));
  }
  CHECK_THAT(tmp.read("spool/rejected/a-arrays.json.error"),
             Catch::Contains("a transaction must be a JSON object"));
  for (const char* name : {"b-elements.xml", "c-values.json"}) {
    CHECK_THAT(tmp.read(std::string("spool/rejected/") + name + ".error"),
               Catch::StartsWith("why: reading it would take more than 128 MiB of memory"));
  }
  CHECK_THAT(tmp.read("spool/rejected/d-random.xml.error"), Catch::StartsWith("why: malformed"));
  INFO(agent.log());
  const json pos = posDriver(agent);
  CHECK(pos["errors"] == 4);
  CHECK(pos["counters"]["budget_refusals"] == 2);
  CHECK(pos["counters"]["files_processed"] == 1);
  // A file of at most 64 MiB, held while it is parsed, plus at most 128 MiB of parse: the
  // agent's peak stays far from the gigabytes these files took before.
  const uint64_t peak_kb = peakRssKb(agent.pid());
  INFO("VmHWM: " << peak_kb << " kB");
  CHECK(peak_kb > 0);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // Not under a sanitizer: its runtime keeps freed blocks in quarantine and maps shadow memory,
  // so the agent's resident set there says nothing of its own bounds (694 MB under ASan).
  CHECK(peak_kb < 256 * 1024);
#endif
  CHECK(agent.stop() == 0);
}

TEST_CASE("the POS web hook of the real agent names the till's fields in its errors",
          "[integration][pos]") {
  MosquittoBroker broker;
  TempDir tmp;
  AgentProcess agent(tmp / "data", {{"OMNIEDGE_MQTT_URL", broker.url()}});
  REQUIRE(agent.start());

  SECTION("an ended_at too far in the future is named ended_at") {
    auto [status, body] = agent.post(
        "/v1/pos/transactions", R"({"workstation":"31","sequence":"1","business_day":"2099-01-01",
                                    "ended_at":"2099-01-01T10:00:00Z"})");
    CHECK(status == 400);
    const json error = json::parse(body)["error"];
    CHECK(error["field"] == "ended_at");
    CHECK(error["message"] == "ended_at is more than a day in the future");
  }
  SECTION("an oversized transaction is named, not [0]") {
    std::string lines;
    for (int i = 0; i < 1500; ++i) {
      lines += std::string(i > 0 ? "," : "") + R"({"item_id":"SKU-0000000000)" + std::to_string(i) +
               R"(","description":"A LONG DESCRIPTION OF THE ITEM","amount":1.00})";
    }
    auto [status, body] = agent.post(
        "/v1/pos/transactions",
        R"({"workstation":"31","sequence":"4711","business_day":"2026-11-22","lines":[)" + lines +
            "]}");
    CHECK(status == 413);
    const json error = json::parse(body)["error"];
    CHECK(error["field"] == "");
    CHECK_THAT(error["message"].get<std::string>(),
               Catch::StartsWith("the event of transaction 4711 of workstation 31 on 2026-11-22 "
                                 "is ") &&
                   Catch::EndsWith(" bytes serialised; buffer.max_event_bytes allows 65536"));
  }
  SECTION("ids that used to collide or be refused are accepted, apart") {
    const auto post = [&](const std::string& workstation, const std::string& sequence) {
      auto [status, body] = agent.post("/v1/pos/transactions",
                                       R"({"workstation":")" + workstation + R"(","sequence":")" +
                                           sequence + R"(","business_day":"2026-11-22"})");
      INFO(body);
      CHECK(status == 202);
      return json::parse(body)["ids"][0].get<std::string>();
    };
    const std::string a = post(
        "Kasse \xC3\x84"
        "1",
        "1");
    const std::string b = post(
        "Kasse \xC3\x96"
        "1",
        "1");
    const std::string c = post("1", "12/3");
    const std::string d = post("1", "12-3");
    const std::string e = post(std::string(200, 'w'), "1");
    CHECK(a != b);
    CHECK(c != d);
    CHECK(d == "store-042:1:2026-11-22:12-3");
    CHECK(e.size() <= 128);
    const auto tail = agent.cli({"tail", "-n", "10", "--json"});
    CHECK_THAT(tail.out, Catch::Contains(a) && Catch::Contains(b) && Catch::Contains(e));
  }
  CHECK(agent.stop() == 0);
}
