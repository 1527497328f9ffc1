// tools/central-sim, the reference centre, run as a child process (Debian's /usr/bin/python3),
// and a plain QoS 1 publisher for raw payloads (duplicates, replays, bursts).
#pragma once

#include <string>
#include <vector>

namespace omniedge::testing {

struct SimResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

/// Runs `central-sim ARGS...` and waits for it (its own timeouts bound it: --wait).
SimResult centralSim(const std::vector<std::string>& args);

/// Publishes `payload` on `topic` at QoS 1 (retained when asked) and waits for the PUBACK.
/// Throws std::runtime_error when the broker at `url` does not take it within 10 s.
void publishMqtt(const std::string& url, const std::string& topic, const std::string& payload,
                 bool retained = false);

}  // namespace omniedge::testing
