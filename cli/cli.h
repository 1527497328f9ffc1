// The omniedge command line: git-style subcommands (contract §1).
#pragma once

namespace omniedge {

/// Runs `omniedge <command> ...`. Exit codes: 0 ok, 1 failure found, 2 usage error, 3 daemon
/// not reachable where the command needs it, 78 bad configuration (every command that reads
/// one; systemd does not restart-loop on it).
int runCli(int argc, char** argv);

}  // namespace omniedge
