#include "tests/fault/netns_support.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "tests/support/agent_process.h"
#include "tests/support/command.h"

namespace omniedge::testing {
namespace {

using namespace std::chrono_literals;

const char* const kIp = "/usr/sbin/ip";
const char* const kIptables = "/usr/sbin/iptables";
const char* const kTc = "/usr/sbin/tc";
const std::string kPython = "/usr/bin/python3";
const std::string kSim = std::string(OMNIEDGE_SOURCE_DIR) + "/tools/central-sim/central-sim";
const std::string kPrefix = "oef-";

std::string failure(const std::vector<std::string>& argv, const CommandOutput& r) {
  if (r.exit_code == 0) {
    return "";
  }
  std::string cmd;
  for (const auto& a : argv) {
    cmd += (cmd.empty() ? "" : " ") + a;
  }
  return cmd + " -> exit " + std::to_string(r.exit_code) + ": " + r.out + r.err;
}

std::string sh(const std::vector<std::string>& argv) {
  return failure(argv, runCommand(argv, {}, 30s));
}

// Namespaces "oef-PID-N" whose test process is gone: a test killed at a ctest timeout could not
// run its destructors.
void removeStaleLabs() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kPrefix, 0) != 0) {
      continue;
    }
    const pid_t pid = static_cast<pid_t>(std::atoi(name.c_str() + kPrefix.size()));
    if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) {
      (void)sh({kIp, "netns", "del", name});
    }
  }
}

}  // namespace

int64_t rssKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::atoll(line.c_str() + 6);
    }
  }
  return 0;
}

// --- NetLab ------------------------------------------------------------------------------------

std::unique_ptr<NetLab> NetLab::make(std::string* why_not) {
  if (access(kIp, X_OK) != 0) {
    *why_not = "no /usr/sbin/ip (iproute2)";
    return nullptr;
  }
  removeStaleLabs();
  std::unique_ptr<NetLab> lab(new NetLab());
  const pid_t pid = getpid();
  static int serial = 0;
  const int n = ++serial;
  lab->ns_ = kPrefix + std::to_string(pid) + "-" + std::to_string(n);
  if (auto e = sh({kIp, "netns", "add", lab->ns_}); !e.empty()) {
    lab->ns_.clear();  // nothing to delete
    *why_not = "cannot make a network namespace (CAP_NET_ADMIN?): " + e;
    return nullptr;
  }
  // One /30 of 198.18.0.0/15 per (process, lab): parallel test processes do not collide.
  const uint32_t slot = (static_cast<uint32_t>(pid) * 7 + static_cast<uint32_t>(n)) % 32768;
  const uint32_t base = (198u << 24) | (18u << 16) | (slot << 2);
  auto dotted = [](uint32_t a) {
    return std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." +
           std::to_string((a >> 8) & 255) + "." + std::to_string(a & 255);
  };
  lab->host_addr_ = dotted(base + 1);
  lab->agent_addr_ = dotted(base + 2);
  const std::string tag = std::to_string(pid % 100000) + "x" + std::to_string(n % 100);
  lab->host_dev_ = "oeh" + tag;
  lab->agent_dev_ = "oea" + tag;
  for (const auto& step : std::vector<std::vector<std::string>>{
           {kIp, "link", "add", lab->host_dev_, "type", "veth", "peer", "name", lab->agent_dev_},
           {kIp, "link", "set", lab->agent_dev_, "netns", lab->ns_},
           {kIp, "addr", "add", lab->host_addr_ + "/30", "dev", lab->host_dev_},
           {kIp, "link", "set", lab->host_dev_, "up"},
           {kIp, "-n", lab->ns_, "addr", "add", lab->agent_addr_ + "/30", "dev", lab->agent_dev_},
           {kIp, "-n", lab->ns_, "link", "set", lab->agent_dev_, "up"},
           {kIp, "-n", lab->ns_, "link", "set", "lo", "up"}}) {
    if (auto e = sh(step); !e.empty()) {
      *why_not = "cannot set up the veth pair: " + e;
      return nullptr;  // the destructor deletes what was made
    }
  }
  return lab;
}

NetLab::~NetLab() {
  if (!ns_.empty()) {
    (void)sh({kIp, "netns", "del", ns_});
  }
  if (!host_dev_.empty()) {
    (void)runCommand({kIp, "link", "del", host_dev_}, {}, 10s);  // already gone: fine
  }
}

std::string NetLab::ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {kIp};
  argv.insert(argv.end(), args.begin(), args.end());
  return sh(argv);
}

std::string NetLab::inNs(const std::vector<std::string>& argv) {
  std::vector<std::string> all = {kIp, "netns", "exec", ns_};
  all.insert(all.end(), argv.begin(), argv.end());
  return sh(all);
}

std::string NetLab::linkDown() {
  return ip({"-n", ns_, "link", "set", agent_dev_, "down"}) +
         ip({"link", "set", host_dev_, "down"});
}

std::string NetLab::linkUp() {
  return ip({"link", "set", host_dev_, "up"}) + ip({"-n", ns_, "link", "set", agent_dev_, "up"});
}

std::string NetLab::setLoss(double p) {
  if (access(kIptables, X_OK) != 0) {
    return "no /usr/sbin/iptables (Debian package iptables)";
  }
  char prob[32];
  std::snprintf(prob, sizeof prob, "%.3f", p);
  return inNs({kIptables, "-w", "-A", "INPUT", "-i", agent_dev_, "-m", "statistic", "--mode",
               "random", "--probability", prob, "-j", "DROP"}) +
         inNs({kIptables, "-w", "-A", "OUTPUT", "-o", agent_dev_, "-m", "statistic", "--mode",
               "random", "--probability", prob, "-j", "DROP"});
}

std::string NetLab::clearLoss() {
  return inNs({kIptables, "-w", "-F", "INPUT"}) + inNs({kIptables, "-w", "-F", "OUTPUT"});
}

std::string NetLab::setRate(const std::string& rate, const std::string& burst) {
  if (access(kTc, X_OK) != 0) {
    return "no /usr/sbin/tc (iproute2)";
  }
  return inNs({kTc, "qdisc", "replace", "dev", agent_dev_, "root", "tbf", "rate", rate, "burst",
               burst, "latency", "500ms"}) +
         sh({kTc, "qdisc", "replace", "dev", host_dev_, "root", "tbf", "rate", rate, "burst", burst,
             "latency", "500ms"});
}

std::string NetLab::clearRate() {
  return inNs({kTc, "qdisc", "del", "dev", agent_dev_, "root"}) +
         sh({kTc, "qdisc", "del", "dev", host_dev_, "root"});
}

void NetLab::enter() const {
  const std::string path = "/run/netns/" + ns_;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  }
  const int rc = setns(fd, CLONE_NEWNET);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    throw std::runtime_error("setns " + path + ": " + std::strerror(err));
  }
}

// --- KioskLoad ---------------------------------------------------------------------------------

KioskLoad::KioskLoad(const AgentProcess& agent, const std::filesystem::path& accepted, int clients,
                     const NetLab* lab)
    : accepted_(accepted) {
  for (int c = 0; c < clients; ++c) {
    threads_.emplace_back([this, &agent, c, lab] { client(agent, c, lab); });
  }
}

KioskLoad::~KioskLoad() { stop(); }

void KioskLoad::client(const AgentProcess& agent, int c, const NetLab* lab) {
  // A connection the agent resets mid-request (it may, under I/O faults) is an answer lost, not a
  // reason for the test process to die of SIGPIPE. This thread forks nothing.
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
  if (lab != nullptr) {
    try {
      lab->enter();
    } catch (const std::exception& e) {
      std::lock_guard lock(mu_);
      error_ = e.what();
      return;
    }
  }
  for (int r = 0; !stop_.load(); ++r) {
    nlohmann::json a = nlohmann::json::array();
    for (int i = 0; i < 20; ++i) {
      a.push_back({{"type", "kiosk.view"},
                   {"data", {{"client", c}, {"n", r * 20 + i}, {"pad", std::string(200, 'p')}}}});
    }
    auto [code, body] = agent.post("/v1/events", a.dump(), 15);
    {
      std::lock_guard lock(mu_);
      ++answers_[code];
      if (code == 202) {
        const auto answer = nlohmann::json::parse(body, nullptr, false);
        if (answer.is_object() && answer.contains("ids")) {
          accepted_ << nlohmann::json{{"ids", answer["ids"]}}.dump() << "\n";
          accepted_count_ += answer["ids"].size();
        }
      }
    }
    std::this_thread::sleep_for(15ms);  // a steady load, not a flood: the faults are the test
  }
}

void KioskLoad::stop() {
  stop_ = true;
  for (auto& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
  std::lock_guard lock(mu_);
  accepted_.flush();
}

std::size_t KioskLoad::accepted() const {
  std::lock_guard lock(mu_);
  return accepted_count_;
}

std::map<int, int> KioskLoad::answers() const {
  std::lock_guard lock(mu_);
  return answers_;
}

std::string KioskLoad::error() const {
  std::lock_guard lock(mu_);
  return error_;
}

// --- LabCentral --------------------------------------------------------------------------------

LabCentral::LabCentral(const std::string& https_host, const std::string& mqtt_url)
    : host_(https_host) {
  const auto pki = dir_ / "pki";
  if (auto e = sh({kPython, kSim, "certs", "--out", pki.string(), "--stores", "store-1"});
      !e.empty()) {
    throw std::runtime_error(e);
  }
  // A server certificate for the lab's address, from the same CA the agent trusts.
  const std::string key = (pki / "lab-server.key").string();
  const std::string csr = (dir_ / "lab-server.csr").string();
  const std::string crt = (pki / "lab-server.crt").string();
  const std::string ext = (dir_ / "lab-server.ext").string();
  std::ofstream(ext) << "subjectAltName=IP:" << https_host << "\n";
  for (const auto& step : std::vector<std::vector<std::string>>{
           {"/usr/bin/openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-subj", "/CN=" + https_host,
            "-out", csr},
           {"/usr/bin/openssl", "x509", "-req", "-in", csr, "-CA", (pki / "ca.crt").string(),
            "-CAkey", (pki / "ca.key").string(), "-CAcreateserial", "-days", "2", "-extfile", ext,
            "-out", crt}}) {
    if (auto e = sh(step); !e.empty()) {
      throw std::runtime_error(e);
    }
  }
  std::vector<std::string> all = {kPython,
                                  kSim,
                                  "serve",
                                  "--db",
                                  db(),
                                  "--ready-file",
                                  (dir_ / "ready.json").string(),
                                  "--https-listen",
                                  https_host + ":0",
                                  "--cert-dir",
                                  pki.string(),
                                  "--server-cert",
                                  crt,
                                  "--server-key",
                                  key,
                                  "--mtls"};
  if (!mqtt_url.empty()) {
    all.insert(all.end(), {"--mqtt", mqtt_url});
  }
  pid_ = spawnProcess(all, (dir_ / "serve.log").string());
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  for (;;) {
    auto j = nlohmann::json::parse(readFile(dir_ / "ready.json"), nullptr, false);
    if (j.is_object()) {
      port_ = j.value("https_port", 0);
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("central-sim serve exited: " + log());
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("central-sim serve not ready within 30 s: " + log());
    }
    std::this_thread::sleep_for(50ms);
  }
}

LabCentral::~LabCentral() {
  if (pid_ <= 0) {
    return;
  }
  kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  int status = 0;
  while (waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
}

std::string LabCentral::baseUrl() const { return "https://" + host_ + ":" + std::to_string(port_); }

std::string LabCentral::log() const { return readFile(dir_ / "serve.log"); }

}  // namespace omniedge::testing
