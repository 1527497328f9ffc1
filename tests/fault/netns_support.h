// Network faults for the fault suite (quality.md R3): a network namespace made for one test with a
// veth pair to the root namespace, so that the agent's uplink crosses a link the test can cut
// (`ip link set DEV down`), make lossy (iptables `statistic --mode random … -j DROP`) or slow
// (`tc qdisc … tbf`; `tc netem` is absent from this kernel). Only the test's own namespace and
// veth are touched: nothing else of the host's network.
//
// Threads: the test's threads stay in the root namespace; NetLab::run() and NetLab::enter() put
// one thread into the lab's namespace, and everything that thread forks (the agent, its CLI) and
// every socket it opens lives there. Catch2 assertions are not thread-safe: code under run()
// returns values and the test asserts them on its own thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/temp_dir.h"

namespace omniedge::testing {

class AgentProcess;
class NetLab;

/// The resident set of `pid` in KiB (VmRSS of /proc/PID/status), 0 when it is gone.
int64_t rssKib(pid_t pid);

class NetLab {
 public:
  /// Makes the namespace "oef-PID-N", a veth pair (root side hostAddress(), namespace side
  /// agentAddress(), a /30 of 198.18.0.0/15, the benchmarking range) and brings lo up inside.
  /// Namespaces left by an earlier test process that died (SIGKILL at a ctest timeout) are
  /// removed first. Returns nullptr and sets `why_not` when the machine does not allow it (no
  /// CAP_NET_ADMIN, no `ip`, `ip netns add` refused): the test skips with that message.
  static std::unique_ptr<NetLab> make(std::string* why_not);
  /// Deletes the namespace (its veth end goes with it, and so does the root one). Runs however
  /// the test ended, since the lab is an RAII object on the test's stack.
  ~NetLab();
  NetLab(const NetLab&) = delete;
  NetLab& operator=(const NetLab&) = delete;

  const std::string& name() const { return ns_; }
  /// The root namespace's end of the link: the broker and central-sim listen here.
  const std::string& hostAddress() const { return host_addr_; }
  /// The agent's end of the link.
  const std::string& agentAddress() const { return agent_addr_; }

  /// Faults, each applied to the namespace's end of the link (and the root end for the cut).
  /// They return "" or what failed (the command and its output). Thread: any.
  std::string linkDown();
  std::string linkUp();
  /// Drops each packet crossing the link in either direction with probability `p`.
  std::string setLoss(double p);
  std::string clearLoss();
  /// Token bucket on both ends: `rate` such as "256kbit", `burst` such as "16kb".
  std::string setRate(const std::string& rate, const std::string& burst);
  std::string clearRate();

  /// Moves the calling thread into the namespace (setns). Throws std::runtime_error on failure.
  void enter() const;
  /// Runs `fn` on a new thread inside the namespace and waits for it; rethrows what it threw.
  template <class F>
  void run(F&& fn) const {
    std::exception_ptr error;
    std::thread t([&] {
      try {
        enter();
        fn();
      } catch (...) {
        error = std::current_exception();
      }
    });
    t.join();
    if (error) {
      std::rethrow_exception(error);
    }
  }

 private:
  NetLab() = default;
  std::string ip(const std::vector<std::string>& args);  // "" or the failure
  std::string inNs(const std::vector<std::string>& argv);

  std::string ns_;
  std::string host_dev_;
  std::string agent_dev_;
  std::string host_addr_;
  std::string agent_addr_;
};

/// Kiosk clients posting batches of 20 events to the agent until stopped, each on its own thread
/// (inside `lab`'s namespace when given). Every 202 answer becomes one {"ids": [...]} line of
/// `accepted` (what central-sim verify reads); the other answers are counted by status (-1: no
/// answer). `agent` must outlive the load.
class KioskLoad {
 public:
  KioskLoad(const AgentProcess& agent, const std::filesystem::path& accepted, int clients,
            const NetLab* lab = nullptr);
  /// Stops and joins the clients.
  ~KioskLoad();
  KioskLoad(const KioskLoad&) = delete;
  KioskLoad& operator=(const KioskLoad&) = delete;

  /// Stops the clients and waits for their last answers; accepted.jsonl is complete after it.
  void stop();
  std::size_t accepted() const;
  std::map<int, int> answers() const;
  /// Why a client could not run ("" when all did).
  std::string error() const;

 private:
  void client(const AgentProcess& agent, int c, const NetLab* lab);

  mutable std::mutex mu_;
  std::ofstream accepted_;          // guarded by mu_
  std::size_t accepted_count_ = 0;  // guarded by mu_
  std::map<int, int> answers_;      // guarded by mu_
  std::string error_;               // guarded by mu_
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

/// tools/central-sim `serve` listening on `https_host` (an address of the lab) with a server
/// certificate for that address, signed by the CA of a PKI made by `central-sim certs`, and
/// consuming `mqtt_url` when given. For the HTTPS uplink across the lab's link; CentralSim (in
/// tests/support) always listens on 127.0.0.1, which the agent's namespace cannot reach.
class LabCentral {
 public:
  /// Starts it and waits until ready (<= 30 s). Throws std::runtime_error (a fixture).
  LabCentral(const std::string& https_host, const std::string& mqtt_url);
  /// SIGTERM, then SIGKILL after 10 s.
  ~LabCentral();
  LabCentral(const LabCentral&) = delete;
  LabCentral& operator=(const LabCentral&) = delete;

  std::string baseUrl() const;
  std::string file(const std::string& name) const { return (dir_ / "pki" / name).string(); }
  std::string db() const { return (dir_ / "central.db").string(); }
  std::string log() const;

 private:
  TempDir dir_;
  std::string host_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace omniedge::testing
