#include "tests/fault/fault_support.h"

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tests/support/central_sim.h"

namespace omniedge::testing::fault {
namespace {

const std::string kPython = "/usr/bin/python3";
const std::string kLoadgen = std::string(OMNIEDGE_SOURCE_DIR) + "/tools/loadgen/loadgen";

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string number(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// Waits for `pid` up to `timeout`; true when it exited (status reaped).
bool waitFor(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
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
  std::vector<char*> argv;
  for (auto& a : all) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    throw std::runtime_error("fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
    const int out = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out >= 0) {
      dup2(out, 1);
      dup2(out, 2);
      close(out);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;
}

Loadgen::~Loadgen() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitFor(pid_, std::chrono::seconds(10));
  }
}

nlohmann::json Loadgen::stop() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    if (!waitFor(pid_, std::chrono::seconds(60))) {
      kill(pid_, SIGKILL);
      waitFor(pid_, std::chrono::seconds(10));
    }
    pid_ = -1;
  }
  const auto text = slurp(summary_);
  auto j = nlohmann::json::parse(text, nullptr, false);
  return j.is_discarded() ? nlohmann::json() : j;
}

std::string Loadgen::output() const { return slurp(log_); }

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
  std::vector<char*> argv;
  for (auto& a : all) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  const auto log_path = (dir_ / "serve.log").string();
  const pid_t pid = fork();
  if (pid < 0) {
    throw std::runtime_error("fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int out = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out >= 0) {
      dup2(out, 1);
      dup2(out, 2);
      close(out);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    const auto j = nlohmann::json::parse(slurp(ready), nullptr, false);
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
    waitFor(pid_, std::chrono::seconds(10));
    pid_ = -1;
  }
}

void RestartableSim::stop() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    if (!waitFor(pid_, std::chrono::seconds(10))) {
      kill9();
    }
    pid_ = -1;
  }
}

std::string RestartableSim::baseUrl() const { return "https://127.0.0.1:" + std::to_string(port_); }

std::string RestartableSim::log() const { return slurp(dir_ / "serve.log"); }

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
  auto j = nlohmann::json::parse(slurp(json_path), nullptr, false);
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

}  // namespace omniedge::testing::fault
