// The subcommands (one file each, or a few small ones together); cli.cpp lists them.
#pragma once

#include <functional>

#include "cli/command.h"

namespace omniedge::cli {

struct Command {
  CommandSpec spec;
  /// Runs a parsed invocation; returns the exit code. Thread: main.
  std::function<int(const CommandSpec& spec, const Invocation& inv)> run;
};

Command runCommand();              // run.cpp
Command statusCommand();           // status.cpp
Command tailCommand();             // tail.cpp
Command exportCommand();           // export.cpp
Command importCommand();           // import.cpp
Command flushCommand();            // flush.cpp
Command sendTestEventCommand();    // flush.cpp
Command doctorCommand();           // doctor.cpp
Command configShowCommand();       // config_command.cpp
Command configValidateCommand();   // config_command.cpp
Command versionCommand();          // config_command.cpp
Command configKeygenCommand();     // remote_config_cli.cpp
Command configSignCommand();       // remote_config_cli.cpp
Command retryQuarantineCommand();  // daemon_action.cpp
Command resyncProfilesCommand();   // daemon_action.cpp
Command forgetCommand();           // forget.cpp

}  // namespace omniedge::cli
