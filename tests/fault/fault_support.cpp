#include "tests/fault/fault_support.h"

#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tests/support/central_sim.h"
#include "tests/support/command.h"
#include "tests/support/temp_dir.h"

namespace omniedge::testing::fault {
namespace {

const std::string kPython = "/usr/bin/python3";
const std::string kLoadgen = std::string(OMNIEDGE_SOURCE_DIR) + "/tools/loadgen/loadgen";

std::string number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

int64_t integer(const nlohmann::json& j, const nlohmann::json::json_pointer& p) {
  return j.contains(p) && j[p].is_number() ? j[p].get<int64_t>() : 0;
}

// Batches the centre has stored so far (-1 when its database cannot be read).
int64_t centreBatches(const std::string& db) {
  sqlite3* h = nullptr;
  int64_t n = -1;
  if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(h, 10000);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(h, "SELECT count(*) FROM batches", -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      n = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(h);
  return n;
}

}  // namespace

bool longVariant() {
  const char* v = std::getenv("OMNIEDGE_FAULT_LONG");
  return v != nullptr && std::string(v) == "1";
}

int variant(int short_value, int long_value) { return longVariant() ? long_value : short_value; }

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return true;
}

Loadgen::Loadgen(Options o, std::filesystem::path log)
    : log_(std::move(log)), summary_(log_.string() + ".summary.json") {
  std::vector<std::string> all = {kPython,         kLoadgen,
                                  "--url",         o.url,
                                  "--accepted",    o.accepted.string(),
                                  "--duration",    "0",
                                  "--summary",     summary_.string(),
                                  "--rate",        number(o.rate),
                                  "--batch",       std::to_string(o.batch),
                                  "--connections", std::to_string(o.connections)};
  if (!o.spool.empty()) {
    all.insert(all.end(), {"--spool", o.spool.string(), "--pos-rate", number(o.pos_rate)});
  }
  if (!o.beacon_mqtt.empty()) {
    all.insert(all.end(), {"--beacon-mqtt", o.beacon_mqtt, "--beacon-topic", o.beacon_topic,
                           "--beacons", std::to_string(o.beacons)});
  }
  all.insert(all.end(), o.extra.begin(), o.extra.end());
  pid_ = spawnProcess(all, log_.string());
}

Loadgen::~Loadgen() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitExit(pid_, std::chrono::seconds(10));
  }
}

nlohmann::json Loadgen::stop() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    if (!waitExit(pid_, std::chrono::seconds(60))) {
      kill(pid_, SIGKILL);
      waitExit(pid_, std::chrono::seconds(10));
    }
    pid_ = -1;
  }
  const auto text = readFile(summary_);
  auto j = nlohmann::json::parse(text, nullptr, false);
  return j.is_discarded() ? nlohmann::json() : j;
}

std::string Loadgen::output() const { return readFile(log_); }

RestartableSim::RestartableSim(std::filesystem::path dir, std::string mqtt_url)
    : dir_(std::move(dir)), mqtt_url_(std::move(mqtt_url)) {
  std::filesystem::create_directories(dir_);
  makeSimPki(dir_ / "pki", "store-1");
  start();
}

RestartableSim::~RestartableSim() {
  if (pid_ > 0) {
    kill9();
  }
}

void RestartableSim::start() {
  const auto ready = dir_ / "ready.json";
  std::filesystem::remove(ready);
  std::vector<std::string> all = {
      kPython,
      std::string(OMNIEDGE_SOURCE_DIR) + "/tools/central-sim/central-sim",
      "serve",
      "--db",
      db(),
      "--ready-file",
      ready.string(),
      "--https-listen",
      "127.0.0.1:" + std::to_string(port_),
      "--cert-dir",
      (dir_ / "pki").string(),
      "--mtls"};
  if (!mqtt_url_.empty()) {
    all.insert(all.end(), {"--mqtt", mqtt_url_});
  }
  pid_ = spawnProcess(all, (dir_ / "serve.log").string());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    const auto j = nlohmann::json::parse(readFile(ready), nullptr, false);
    if (!j.is_discarded() && j.contains("https_port")) {
      port_ = j["https_port"].get<int>();
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("central-sim serve exited: " + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  throw std::runtime_error("central-sim serve not ready within 30 s: " + log());
}

void RestartableSim::kill9() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitExit(pid_, std::chrono::seconds(10));
    pid_ = -1;
  }
}

void RestartableSim::stop() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    if (!waitExit(pid_, std::chrono::seconds(10))) {
      kill9();
    }
    pid_ = -1;
  }
}

std::string RestartableSim::baseUrl() const { return "https://127.0.0.1:" + std::to_string(port_); }

std::string RestartableSim::log() const { return readFile(dir_ / "serve.log"); }

int64_t Verdict::lost() const {
  return integer(json, "/lost"_json_pointer) + integer(json, "/keys/lost"_json_pointer);
}

int64_t Verdict::accepted() const {
  return integer(json, "/accepted"_json_pointer) + integer(json, "/keys/accepted"_json_pointer);
}

int64_t Verdict::dupsBeforeDedup() const {
  return integer(json, "/duplicate_copies"_json_pointer) +
         integer(json, "/keys/duplicate_copies_before_dedup"_json_pointer);
}

int64_t Verdict::dupsAfterDedup() const {
  return integer(json, "/keys/extra_ids_after_dedup"_json_pointer);
}

int64_t Verdict::reordered() const { return integer(json, "/reordered/events"_json_pointer); }

Verdict verifyHistory(const std::string& db, const std::filesystem::path& accepted,
                      const std::string& store) {
  const auto json_path = accepted.string() + ".verdict.json";
  const auto r = centralSim({"verify", "--db", db, "--accepted", accepted.string(), "--store",
                             store, "--json-out", json_path});
  Verdict v;
  v.exit_code = r.exit_code;
  v.text = r.out + (r.exit_code == 0 || r.exit_code == 1 ? "" : r.err);
  auto j = nlohmann::json::parse(readFile(json_path), nullptr, false);
  v.json = j.is_discarded() ? nlohmann::json() : j;
  return v;
}

Verdict finalVerdict(const std::string& name, const std::string& db,
                     const std::filesystem::path& accepted, const std::string& store,
                     std::chrono::milliseconds quiet) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::minutes(15);
  auto progress_at = Clock::now();
  int64_t batches = centreBatches(db);
  Verdict v;
  for (;;) {
    v = verifyHistory(db, accepted, store);
    if (v.exit_code == 0 || Clock::now() > deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));
    const int64_t now_batches = centreBatches(db);
    if (now_batches != batches) {
      batches = now_batches;
      progress_at = Clock::now();
    } else if (Clock::now() - progress_at > quiet) {
      break;
    }
  }
  std::cout << "=== verdict of " << name << " ===\n" << v.text << std::flush;
  return v;
}

void reportFigures(const Figures& f) {
  const nlohmann::json j = {{"test", f.test},
                            {"fault", f.fault_kind},
                            {"faults", f.faults},
                            {"accepted", f.accepted},
                            {"events_per_s", f.events_per_s},
                            {"lost", f.lost},
                            {"missing_seqs", f.missing_seqs},
                            {"dups_before_dedup", f.dups_before},
                            {"dups_after_dedup", f.dups_after},
                            {"reordered", f.reordered},
                            {"wall_s", f.wall_s}};
  std::cout << "FAULT-FIGURES " << j.dump() << "\n" << std::flush;
  if (const char* path = std::getenv("OMNIEDGE_FAULT_FIGURES"); path != nullptr && *path) {
    std::ofstream out(path, std::ios::app);
    out << j.dump() << "\n";
  }
}

Figures figuresOf(const std::string& test, const std::string& fault_kind, int faults,
                  const Verdict& verdict, const nlohmann::json& summary, double wall_s) {
  Figures f;
  f.test = test;
  f.fault_kind = fault_kind;
  f.faults = faults;
  f.accepted = verdict.accepted();
  f.events_per_s = summary.is_object() ? summary.value("events_per_s", 0.0) : 0.0;
  f.lost = verdict.lost();
  f.missing_seqs = integer(verdict.json, "/missing_seqs"_json_pointer);
  f.dups_before = verdict.dupsBeforeDedup();
  f.dups_after = verdict.dupsAfterDedup();
  f.reordered = verdict.reordered();
  f.wall_s = wall_s;
  return f;
}

int64_t pending(const AgentProcess& agent) {
  const auto r = agent.cli({"status", "--json"});
  const auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (r.exit_code != 0 || j.is_discarded() || !j.contains("queue")) {
    return -1;
  }
  return j["queue"].value("pending", int64_t{-1});
}

StoreLoad::StoreLoad(std::filesystem::path dir, std::string store, std::string gateway_mqtt)
    : dir_(std::move(dir)),
      store_(std::move(store)),
      gateway_mqtt_(std::move(gateway_mqtt)),
      spool_(dir_ / "spool"),
      accepted_(dir_ / "accepted.jsonl"),
      started_(std::chrono::steady_clock::now()) {
  std::filesystem::create_directories(spool_);
}

std::map<std::string, std::string> StoreLoad::agentEnvironment(
    const std::map<std::string, std::string>& more) const {
  std::map<std::string, std::string> env = {{"OMNIEDGE_STORE_ID", store_},
                                            {"OMNIEDGE_MQTT_RECONNECT_MIN", "1"},
                                            {"OMNIEDGE_MQTT_RECONNECT_MAX", "2"},
                                            {"OMNIEDGE_POS_SPOOL_DIR", spool_.string()},
                                            {"OMNIEDGE_BEACON_MQTT_URL", gateway_mqtt_},
                                            {"OMNIEDGE_BEACON_TOPICS", "store/#"},
                                            {"OMNIEDGE_BEACON_WINDOW", "1"},
                                            {"OMNIEDGE_BEACON_EXIT_AFTER", "5"}};
  for (const auto& [k, v] : more) {
    env[k] = v;
  }
  return env;
}

bool StoreLoad::start(int http_port, double rate) {
  Loadgen::Options o;
  o.url = "http://127.0.0.1:" + std::to_string(http_port);
  o.accepted = accepted_;
  o.rate = rate;
  o.batch = 100;
  o.connections = 4;
  o.spool = spool_;
  o.pos_rate = 10;
  o.beacon_mqtt = gateway_mqtt_;
  load_ = std::make_unique<Loadgen>(o, dir_ / "loadgen.log");
  return eventually(
      [&] {
        std::error_code ec;
        return std::filesystem::file_size(accepted_, ec) > 0 && !ec;
      },
      std::chrono::seconds(30));
}

std::string StoreLoad::loadOutput() const { return load_ ? load_->output() : std::string(); }

Outcome StoreLoad::finish(const std::string& name, const std::string& fault_kind, int faults,
                          const AgentProcess& agent, const std::string& centre_db) {
  std::this_thread::sleep_for(std::chrono::seconds(2));  // some load after the last fault too
  Outcome out;
  out.summary = load_ ? load_->stop() : nlohmann::json();
  std::cout << "loadgen: " << out.summary.dump() << "\n";
  // Drain: nothing pending in the agent, then the centre holds everything (finalVerdict re-runs
  // verify while the centre's subscriber catches up).
  out.drained = eventually([&] { return pending(agent) == 0; }, std::chrono::seconds(180));
  if (!out.drained) {
    return out;
  }
  out.verdict = finalVerdict(name, centre_db, accepted_, "default/" + store_);
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  reportFigures(figuresOf(name, fault_kind, faults, out.verdict, out.summary, wall));
  return out;
}

void checkResendsOnly(const Outcome& outcome, bool beacons) {
  INFO("loadgen summary: " << outcome.summary.dump());
  REQUIRE(outcome.summary.is_object());
  REQUIRE(outcome.drained);
  INFO(outcome.verdict.text);
  CHECK(outcome.verdict.exit_code == 0);
  CHECK(outcome.verdict.lost() == 0);
  const auto& by_channel = outcome.summary["accepted_by_channel"];
  CHECK(by_channel.value("kiosk", 0) > 0);
  CHECK(by_channel.value("pos", 0) > 0);
  if (beacons) {
    CHECK(by_channel.value("beacon", 0) > 0);
  }
  const auto& after = outcome.verdict.json["keys"]["after_dedup_by_kind"];
  CHECK_FALSE(after.contains("kiosk"));
  CHECK_FALSE(after.contains("pos"));
}

}  // namespace omniedge::testing::fault
