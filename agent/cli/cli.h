// The omniedge command line: git-style subcommands (contract §1).
#pragma once

namespace omniedge {

/// Exit codes: 0 ok, 1 failure found, 2 usage error, 3 daemon not reachable, 78 bad config
/// for `run` (systemd does not restart-loop on it).
int runCli(int argc, char** argv);

}  // namespace omniedge
