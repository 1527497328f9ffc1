// Shared helpers of the fault suite (tests/fault/, issue 17 point 2): the load generator
// (tools/loadgen/loadgen) as a child process, the history verdict (central-sim verify) printed
// the same way by every fault test, and the figures table the long run (tests/fault/run-long)
// collects. Fixtures: failures to start throw std::runtime_error.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/agent_process.h"

namespace omniedge::testing::fault {

/// True when OMNIEDGE_FAULT_LONG=1: run the long variant (200 kills, 100 restarts, ...).
bool longVariant();

/// `short_value` in CI, `long_value` with OMNIEDGE_FAULT_LONG=1.
int variant(int short_value, int long_value);

/// Waits until `condition` holds, checking every 100 ms; false after `timeout`.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout);

/// tools/loadgen/loadgen as a child process (dies with the test: PR_SET_PDEATHSIG).
class Loadgen {
 public:
  struct Options {
    std::string url;                 // the agent's kiosk API, "http://127.0.0.1:PORT"
    std::filesystem::path accepted;  // the history file (appended to)
    double rate = 5000;              // kiosk events/s (0: none)
    int batch = 100;                 // events per POST
    int connections = 4;             // keep-alive connections
    std::filesystem::path spool;     // POS spool dir ("": no POS load)
    double pos_rate = 10;            // POS files/s
    std::string beacon_mqtt;         // store broker ("": no beacon load)
    std::string beacon_topic = "store/ble";
    int beacons = 4;
    std::vector<std::string> extra;  // more loadgen options
  };

  /// Starts it (running until stop()). `log` gets its stdout and stderr.
  Loadgen(Options options, std::filesystem::path log);
  /// SIGKILL if still running.
  ~Loadgen();
  Loadgen(const Loadgen&) = delete;
  Loadgen& operator=(const Loadgen&) = delete;

  /// SIGTERM, waits (≤ 60 s) and returns its summary ({"sent", "accepted",
  /// "accepted_by_channel", "refused", "seconds", "events_per_s"}); null if it wrote none.
  nlohmann::json stop();
  /// Its output so far.
  std::string output() const;

 private:
  std::filesystem::path log_;
  std::filesystem::path summary_;
  pid_t pid_ = -1;
};

/// central-sim serve as a centre that a test can kill -9 and restart on the same port with the
/// same database (tests/support/central_sim.h's CentralSim cannot be restarted). HTTPS with
/// mutual TLS (a PKI made by `central-sim certs` for store-1), optionally an MQTT consumer.
class RestartableSim {
 public:
  /// Makes the PKI in `dir` and starts serving (≤ 30 s until ready).
  RestartableSim(std::filesystem::path dir, std::string mqtt_url = "");
  /// SIGKILL if running.
  ~RestartableSim();
  RestartableSim(const RestartableSim&) = delete;
  RestartableSim& operator=(const RestartableSim&) = delete;

  /// Starts it again (same port, same database) and waits until it is ready (≤ 30 s).
  void start();
  /// SIGKILL and reap: no goodbye; what it committed is in its database.
  void kill9();
  /// SIGTERM and wait (SIGKILL after 10 s).
  void stop();
  bool running() const { return pid_ > 0; }

  std::string baseUrl() const;  // "https://127.0.0.1:PORT"
  std::string db() const { return (dir_ / "central.db").string(); }
  std::string pkiFile(const std::string& name) const { return (dir_ / "pki" / name).string(); }
  std::string log() const;

 private:
  std::filesystem::path dir_;
  std::string mqtt_url_;
  int port_ = 0;
  pid_t pid_ = -1;
};

/// The verdict of `central-sim verify` over a history.
struct Verdict {
  int exit_code = -1;   // 0: nothing lost
  std::string text;     // what verify printed
  nlohmann::json json;  // its --json form (null when verify failed to run)

  int64_t lost() const;             // accepted ids and keys never received
  int64_t accepted() const;         // ids + keys
  int64_t dupsBeforeDedup() const;  // extra copies of one id (ids and keyed events)
  int64_t dupsAfterDedup() const;   // extra ids under one key
  int64_t reordered() const;
};

/// Runs verify (--store STORE, e.g. "default/store-1") over `accepted` against `db` and
/// returns the verdict; printVerdict() shows it.
Verdict verifyHistory(const std::string& db, const std::filesystem::path& accepted,
                      const std::string& store);

/// Runs verifyHistory() until it finds nothing lost, or until the centre stopped receiving
/// batches for `quiet` (its subscriber may still be working through the broker's queue when the
/// agent has nothing pending; ≤ 15 min in all), then prints the last verdict to stdout under
/// `name` (tests/fault/run-long collects it) and returns it.
Verdict finalVerdict(const std::string& name, const std::string& db,
                     const std::filesystem::path& accepted, const std::string& store,
                     std::chrono::milliseconds quiet = std::chrono::seconds(30));

/// One row of the figures table of tests/fault/run-long.
struct Figures {
  std::string test;
  int faults = 0;            // kills, restarts, ... done
  std::string fault_kind;    // "agent kill -9", "broker restart", ...
  int64_t accepted = 0;      // events the producers were told were accepted
  double events_per_s = 0;   // accepted / load seconds
  int64_t lost = 0;          // accepted ids and keys never received
  int64_t missing_seqs = 0;  // the agent's gap check: seqs neither received nor reported
  int64_t dups_before = 0;   // extra copies of one id
  int64_t dups_after = 0;    // extra ids under one key
  int64_t reordered = 0;
  double wall_s = 0;
};

/// Prints "FAULT-FIGURES {json}" on stdout and appends the JSON line to the file named by
/// OMNIEDGE_FAULT_FIGURES when set (the long run's table).
void reportFigures(const Figures& figures);

/// Figures from a verdict and a loadgen summary.
Figures figuresOf(const std::string& test, const std::string& fault_kind, int faults,
                  const Verdict& verdict, const nlohmann::json& summary, double wall_s);

/// The agent's backlog (`omniedge status --json`, queue.pending); -1 when it cannot tell (the
/// daemon is down or restarting).
int64_t pending(const AgentProcess& agent);

/// What a load test ends with (StoreLoad::finish).
struct Outcome {
  nlohmann::json summary;  // loadgen's summary (null if it wrote none)
  bool drained = false;    // the agent's backlog reached 0 within 180 s
  Verdict verdict;         // the final verdict (taken only once drained)
};

/// The store side of a load test (R1, R2, the HTTPS uplink): a POS spool, the agent's
/// environment with all three channels on, and the load generator on them with its history.
class StoreLoad {
 public:
  /// `dir`: where the spool, the history and loadgen's log go; `gateway_mqtt`: the broker the
  /// store's beacon gateways publish to. The test's wall clock starts here.
  StoreLoad(std::filesystem::path dir, std::string store, std::string gateway_mqtt);

  /// The agent's environment: this store id, MQTT reconnects after 1-2 s, the POS spool, beacon
  /// gateways (topics store/#, 1 s windows, exit after 5 s), then `more` (which wins).
  std::map<std::string, std::string> agentEnvironment(
      const std::map<std::string, std::string>& more) const;

  /// Starts loadgen on the kiosk API at `http_port` (`rate` events/s, arrays of 100 on 4
  /// connections), POS files (10/s) and beacons; false when nothing was accepted within 30 s.
  bool start(int http_port, double rate);

  /// Stops the load, waits for `agent` to drain, then takes the final verdict from the centre's
  /// database `centre_db` and prints it and the figures (row `name`, `faults` of `fault_kind`).
  Outcome finish(const std::string& name, const std::string& fault_kind, int faults,
                 const AgentProcess& agent, const std::string& centre_db);

  const std::filesystem::path& spool() const { return spool_; }
  std::string loadOutput() const;

 private:
  std::filesystem::path dir_;
  std::string store_;
  std::string gateway_mqtt_;
  std::filesystem::path spool_;
  std::filesystem::path accepted_;
  std::unique_ptr<Loadgen> load_;
  std::chrono::steady_clock::time_point started_;
};

/// The checks a load test ends with (Catch CHECKs): drained, nothing lost, every channel loaded
/// and acknowledged (beacons too when `beacons`), and duplicates only from resends: no kiosk
/// event or POS transaction arrived under a second id. A beacon seen again by a restarted agent
/// is a new beacon.enter: a new observation, reported, not a resend.
void checkResendsOnly(const Outcome& outcome, bool beacons);

}  // namespace omniedge::testing::fault
