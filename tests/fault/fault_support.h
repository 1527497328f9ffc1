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
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

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

}  // namespace omniedge::testing::fault
