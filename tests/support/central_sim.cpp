#include "tests/support/central_sim.h"

#include <mqtt/async_client.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <stdexcept>
#include <thread>

#include "tests/support/command.h"
#include "tests/support/temp_dir.h"

namespace omniedge::testing {
namespace {

const std::string kPython = "/usr/bin/python3";
const std::string kSim = std::string(OMNIEDGE_SOURCE_DIR) + "/tools/central-sim/central-sim";

// `central-sim ARGS...`, stdout to `out_path` (truncated), stderr appended to `err_path`.
pid_t spawn(const std::vector<std::string>& args, const std::string& out_path,
            const std::string& err_path) {
  std::vector<std::string> argv = {kPython, kSim};
  argv.insert(argv.end(), args.begin(), args.end());
  return spawnProcess(argv, out_path, std::nullopt, LogMode::kTruncate, err_path);
}

}  // namespace

SimResult centralSim(const std::vector<std::string>& args) {
  char out_template[] = "/tmp/omniedge-sim-out-XXXXXX";
  const int fd = mkstemp(out_template);
  if (fd < 0) {
    throw std::runtime_error("mkstemp failed");
  }
  close(fd);
  const std::string out = out_template;
  const pid_t pid = spawn(args, out, out + ".err");
  SimResult r;
  r.exit_code = waitExit(pid);
  r.out = readFile(out);
  r.err = readFile(out + ".err");
  std::filesystem::remove(out);
  std::filesystem::remove(out + ".err");
  return r;
}

SimResult runCentralSim(const std::vector<std::string>& args) {
  SimResult r = centralSim(args);
  if (r.exit_code != 0 && r.exit_code != 1) {
    r.out += r.err;
  }
  return r;
}

void publishMqtt(const std::string& url, const std::string& topic, const std::string& payload,
                 bool retained) {
  std::string uri = url;
  if (uri.rfind("mqtt://", 0) == 0) {
    uri = "tcp://" + uri.substr(7);
  }
  static std::atomic<int> counter{0};
  mqtt::async_client client(
      uri, "test-publisher-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
  mqtt::connect_options opts;
  opts.set_clean_session(true);
  opts.set_connect_timeout(10);
  if (!client.connect(opts)->wait_for(std::chrono::seconds(10))) {
    throw std::runtime_error("publishMqtt: no CONNACK from " + url);
  }
  auto msg = mqtt::make_message(topic, payload, 1, retained);
  if (!client.publish(msg)->wait_for(std::chrono::seconds(10))) {
    throw std::runtime_error("publishMqtt: no PUBACK from " + url);
  }
  client.disconnect()->wait_for(std::chrono::seconds(5));
}

SimPki makeSimPki(const std::filesystem::path& dir, const std::string& stores) {
  auto r = runCentralSim({"certs", "--out", dir.string(), "--stores", stores});
  if (r.exit_code != 0) {
    throw std::runtime_error("central-sim certs failed: " + r.out);
  }
  return SimPki{dir};
}

CentralSim::CentralSim(Options options) : options_(std::move(options)) {
  pki_ = options_.pki_dir.empty() ? makeSimPki(dir_ / "pki", options_.stores)
                                  : SimPki{options_.pki_dir};
  std::vector<std::string> args = {"serve",
                                   "--db",
                                   db(),
                                   "--ready-file",
                                   (dir_ / "ready.json").string(),
                                   "--fail-file",
                                   (dir_ / "fail.json").string()};
  if (!options_.mqtt_url.empty()) {
    args.insert(args.end(), {"--mqtt", options_.mqtt_url});
  }
  if (options_.https) {
    args.insert(args.end(), {"--https-listen", "127.0.0.1:0", "--cert-dir", pki_.dir.string()});
    if (options_.mtls) {
      args.push_back("--mtls");
    }
    if (!options_.server_cert.empty()) {
      args.insert(args.end(),
                  {"--server-cert", options_.server_cert, "--server-key", options_.server_key});
    }
  }
  pid_ = spawn(args, (dir_ / "serve.out").string(), (dir_ / "serve.log").string());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    const std::string ready = readFile(dir_ / "ready.json");
    if (!ready.empty()) {
      auto j = nlohmann::json::parse(ready, nullptr, false);
      if (j.is_object()) {
        // "https_port": null when the centre serves MQTT only.
        port_ = j["https_port"].is_number_integer() ? j["https_port"].get<int>() : 0;
        break;
      }
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("central-sim serve exited: " + log());
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("central-sim serve not ready within 30 s: " + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

CentralSim::~CentralSim() {
  if (pid_ <= 0) {
    return;
  }
  kill(pid_, SIGTERM);
  if (!waitExit(pid_, std::chrono::seconds(10))) {
    kill(pid_, SIGKILL);
    waitExit(pid_);
  }
}

std::string CentralSim::baseUrl() const { return "https://127.0.0.1:" + std::to_string(port_); }

std::string CentralSim::log() const { return readFile(dir_ / "serve.log"); }

nlohmann::json CentralSim::report(const std::string& store) const {
  auto r = runCentralSim({"report", "--db", db(), "--json", "--store", store});
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (!j.is_object() || !j.contains("stores") || !j["stores"].is_array() || j["stores"].empty()) {
    return nullptr;
  }
  return j["stores"][0];
}

std::string CentralSim::reportText(const std::string& store) const {
  return runCentralSim({"report", "--db", db(), "--store", store}).out;
}

SimResult CentralSim::verify(const std::filesystem::path& accepted,
                             const std::string& store) const {
  return runCentralSim({"verify", "--db", db(), "--accepted", accepted.string(), "--store", store});
}

void CentralSim::fail(const std::vector<std::string>& args) const {
  std::vector<std::string> all = {"fail", "--fail-file", (dir_ / "fail.json").string()};
  all.insert(all.end(), args.begin(), args.end());
  auto r = runCentralSim(all);
  if (r.exit_code != 0) {
    throw std::runtime_error("central-sim fail: " + r.out);
  }
  // serve re-reads the file at the next request (it compares inode, mtime and size).
}

int64_t CentralSim::query(const std::string& sql) const {
  sqlite3* db = nullptr;
  int64_t v = -1;
  if (sqlite3_open_v2(this->db().c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      v = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return v;
}

int64_t CentralSim::uniqueEvents(const std::string& store) const {
  return query("SELECT count(*) FROM events WHERE store_id = '" + store + "'");
}

}  // namespace omniedge::testing
