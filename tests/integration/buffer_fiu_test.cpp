// The real daemon with I/O faults injected into libc by libfiu (fiu-run -x; fiu-ctrl switches
// them on once it is up): fdatasync/fsync and pwrite of the buffer fail at random while four
// kiosk clients post. A producer history: every event answered 202 is in the buffer after a
// clean stop, no event answered with an error is, and SIGTERM still ends the daemon.
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/command.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

using omniedge::testing::readFile;
using omniedge::testing::TempDir;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

int runCommand(std::vector<std::string> args) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (const auto& a : args) {
      argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE(
    "under libfiu fsync and pwrite faults every event answered 202 is kept and no "
    "refused one is",
    "[integration][fault][buffer]") {
  if (const auto why = omniedge::testing::fiuUnavailable(); !why.empty()) {
    WARN("skipped: " << why);
    return;
  }
  TempDir tmp;
  const fs::path data = tmp / "data";
  const int port = omniedge::testing::freePort();
  std::vector<std::string> env;
  for (auto& e : omniedge::testing::cleanEnvironment({})) {
    if (e.rfind("TMPDIR=", 0) != 0) {
      env.push_back(std::move(e));
    }
  }
  env.push_back("TMPDIR=" + tmp.path().string());  // fiu-ctrl's pipes: -f below
  env.push_back("OMNIEDGE_DATA_DIR=" + data.string());
  env.push_back("OMNIEDGE_HTTP_LISTEN=127.0.0.1:" + std::to_string(port));
  env.push_back("OMNIEDGE_MQTT_URL=mqtt://127.0.0.1:" +
                std::to_string(omniedge::testing::freePort()));  // no broker: all stays
  env.push_back("OMNIEDGE_STORE_ID=store-042");
  const fs::path log = tmp / "agent.log";
  const pid_t pid =
      omniedge::testing::spawnProcess({"/usr/bin/fiu-run", "-x", OMNIEDGE_BINARY, "run"},
                                      log.string(), env, omniedge::testing::LogMode::kTruncate);
  auto stopAgent = [&] {
    kill(pid, SIGTERM);
    int status = 0;
    const auto end = std::chrono::steady_clock::now() + 30s;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > end) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  };
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(30, 0);
  bool up = false;
  for (int i = 0; i < 400 && !up; ++i) {
    auto r = client.Get("/v1/health");
    up = r && r->status == 200;
    if (!up) {
      std::this_thread::sleep_for(50ms);
    }
  }
  if (!up) {
    stopAgent();
    FAIL("the agent did not start: " << readFile(log));
  }
  const std::string pid_s = std::to_string(pid);
  const std::string pipes = (tmp / "fiu-ctrl").string();
  REQUIRE(runCommand({"/usr/bin/fiu-ctrl", "-f", pipes, "-c",
                      "enable_random name=posix/io/sync/fdatasync,probability=0.05", pid_s}) == 0);
  REQUIRE(runCommand({"/usr/bin/fiu-ctrl", "-f", pipes, "-c",
                      "enable_random name=posix/io/sync/fsync,probability=0.05", pid_s}) == 0);
  REQUIRE(runCommand({"/usr/bin/fiu-ctrl", "-f", pipes, "-c",
                      "enable_random name=posix/io/rw/pwrite,probability=0.002", pid_s}) == 0);

  std::mutex mu;
  std::set<std::string> accepted;
  std::set<std::string> refused;
  std::map<int, int> answers;
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(30, 0);
      for (int i = 0; i < 60; ++i) {
        nlohmann::json a = nlohmann::json::array();
        std::vector<std::string> ids;
        for (int k = 0; k < 20; ++k) {
          ids.push_back("fiu-" + std::to_string(t) + "-" + std::to_string(i) + "-" +
                        std::to_string(k));
          a.push_back({{"type", "kiosk.view"},
                       {"id", ids.back()},
                       {"data", {{"pad", std::string(400, 'p')}}}});
        }
        auto r = c.Post("/v1/events", a.dump(), "application/json");
        std::lock_guard lock(mu);
        const int status = r ? r->status : -1;
        ++answers[status];
        for (const auto& id : ids) {
          (status == 202 ? accepted : refused).insert(id);
        }
      }
    });
  }
  for (auto& c : clients) {
    c.join();
  }
  for (const char* name :
       {"posix/io/sync/fdatasync", "posix/io/sync/fsync", "posix/io/rw/pwrite"}) {
    (void)runCommand(
        {"/usr/bin/fiu-ctrl", "-f", pipes, "-c", std::string("disable name=") + name, pid_s});
  }
  const auto t0 = std::chrono::steady_clock::now();
  const int code = stopAgent();
  const auto stop_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  INFO(readFile(log).substr(0, 20000));
  CHECK(code == 0);

  std::set<std::string> stored;
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2((data / "buffer.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
          SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT id FROM events WHERE id LIKE 'fiu-%'", -1, &st, nullptr) ==
          SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW) {
    stored.insert(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)));
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  uint64_t lost = 0;
  for (const auto& id : accepted) {
    lost += stored.count(id) == 0 ? 1 : 0;
  }
  uint64_t phantom = 0;
  for (const auto& id : refused) {
    phantom += stored.count(id) != 0 ? 1 : 0;
  }
  const std::string log_text = readFile(log);
  std::size_t rollbacks = 0;
  for (auto p = log_text.find("transaction rolled back"); p != std::string::npos;
       p = log_text.find("transaction rolled back", p + 1)) {
    ++rollbacks;
  }
  std::printf(
      "fiu history: %zu events answered 202, %zu refused (HTTP 500: %d, 503: %d); %zu "
      "transactions rolled back; %zu stored after the stop (%lld ms); lost %llu, "
      "refused-but-stored %llu\n",
      accepted.size(), refused.size(), answers[500], answers[503], rollbacks, stored.size(),
      static_cast<long long>(stop_ms), static_cast<unsigned long long>(lost),
      static_cast<unsigned long long>(phantom));
  CHECK(lost == 0);
  CHECK(phantom == 0);
  CHECK(accepted.size() > 0);
  CHECK(rollbacks > 0);     // the faults did reach the buffer
  CHECK(answers[-1] == 0);  // the daemon answered every request
}
