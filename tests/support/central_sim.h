// tools/central-sim, the reference centre, as a child process for tests: its HTTPS endpoint
// (mutual TLS with the certificates it makes), its MQTT consumer, its failure injection and its
// report / verify commands. Failures to start throw std::runtime_error (it is a fixture). And a
// plain QoS 1 publisher for raw payloads (duplicates, replays, bursts).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/temp_dir.h"

namespace omniedge::testing {

/// The output and exit code of one central-sim command.
struct SimResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

/// Runs `central-sim ARGS...` (with /usr/bin/python3) and waits (its own timeouts bound it:
/// --wait). Thread: any.
SimResult centralSim(const std::vector<std::string>& args);
/// The same, with stderr appended to `out` when it failed otherwise than by a finding (exit
/// code neither 0 nor 1).
SimResult runCentralSim(const std::vector<std::string>& args);

/// Publishes `payload` on `topic` at QoS 1 (retained when asked) and waits for the PUBACK.
/// Throws std::runtime_error when the broker at `url` does not take it within 10 s.
void publishMqtt(const std::string& url, const std::string& topic, const std::string& payload,
                 bool retained = false);

/// A PKI made by `central-sim certs` (CA, server, a client per store and the bad ones).
struct SimPki {
  std::filesystem::path dir;
  std::string file(const std::string& name) const { return (dir / name).string(); }
};
/// Makes the certificates in `dir` for `stores` (comma-separated). Throws on failure.
SimPki makeSimPki(const std::filesystem::path& dir, const std::string& stores);

class CentralSim {
 public:
  struct Options {
    std::string mqtt_url;  // "" = no MQTT consumer
    bool https = true;
    bool mtls = true;
    /// Serve another certificate (the rogue CA's, for a MITM test); "" = pki's server.crt.
    std::string server_cert;
    std::string server_key;
    std::string stores = "store-1";  // client certificates to make
    /// An existing PKI (several centres trusting one CA); empty: a new one in the temp dir.
    std::filesystem::path pki_dir;
  };

  /// Makes the PKI (unless given), starts `serve` and waits until it is ready (<= 30 s).
  explicit CentralSim(Options options);
  /// SIGTERM, then waits (SIGKILL after 10 s).
  ~CentralSim();
  CentralSim(const CentralSim&) = delete;
  CentralSim& operator=(const CentralSim&) = delete;

  /// "https://127.0.0.1:PORT"
  std::string baseUrl() const;
  const SimPki& pki() const { return pki_; }
  std::string db() const { return (dir_ / "central.db").string(); }
  std::string log() const;

  /// `report --json --store STORE`: the store's entry ({"events", "uplinks", "gaps", …}), or
  /// null when the centre knows nothing of it yet.
  nlohmann::json report(const std::string& store) const;
  /// `report --store STORE` as text.
  std::string reportText(const std::string& store) const;
  /// `verify --accepted FILE --store STORE`.
  SimResult verify(const std::filesystem::path& accepted, const std::string& store) const;
  /// `fail --fail-file … ARGS` (e.g. {"--status", "503", "--count", "2"}); {"--clear"} clears.
  void fail(const std::vector<std::string>& args) const;
  /// Distinct events of `store` held by the centre.
  int64_t uniqueEvents(const std::string& store) const;
  /// One integer from its database (e.g. "SELECT count(*) FROM batches WHERE uplink='https'").
  int64_t query(const std::string& sql) const;

 private:
  TempDir dir_;
  Options options_;
  SimPki pki_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace omniedge::testing
