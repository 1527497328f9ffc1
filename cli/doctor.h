// `omniedge doctor`: checks a technician runs on a store device, with or without the daemon,
// as root or as a member of the service's group, without writing anything:
// data dir, free disk, buffer integrity, daemon, broker and HTTPS endpoint reachability (TCP,
// TLS, MQTT auth), certificate expiry, clock and the PII key.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "agent/config.h"

namespace omniedge {

struct DoctorCheck {
  std::string name;
  enum class Outcome { kOk, kWarn, kFail } outcome;
  std::string detail;
};

/// Runs every check for `cfg` (never needs the daemon; reads the buffer read-only and writes
/// nothing anywhere). `control_sockets`: where to look for the daemon (empty: where the CLI
/// looks, cli::controlSocketCandidates). Thread: the caller's. Bounded: each network check
/// times out within 3 s.
std::vector<DoctorCheck> runDoctorChecks(const config::Config& cfg,
                                         std::vector<std::string> control_sockets = {});

/// Prints "✓ name: detail" / "! name: detail" (warning) / "✗ name: detail" lines, or with json a
/// {"ok": bool, "checks": [{"name","outcome":"ok|warn|fail","detail"}]} document, to `out`;
/// returns the exit code: 1 if any check failed, else 0 (warnings do not fail).
int printDoctorReport(const std::vector<DoctorCheck>& checks, bool json, std::ostream& out);

}  // namespace omniedge
