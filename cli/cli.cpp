#include "cli/cli.h"

#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace omniedge {
namespace {

using cli::Command;

// Every command, in the order `omniedge --help` lists them. "config show", "config validate",
// "config keygen" and "config sign" are reached as `omniedge config SUBCOMMAND`.
const std::vector<Command>& commands() {
  static const std::vector<Command> all = {
      cli::runCommand(),
      cli::statusCommand(),
      cli::tailCommand(),
      cli::flushCommand(),
      cli::exportCommand(),
      cli::importCommand(),
      cli::sendTestEventCommand(),
      cli::doctorCommand(),
      cli::configShowCommand(),
      cli::configValidateCommand(),
      cli::configKeygenCommand(),
      cli::configSignCommand(),
      cli::retryQuarantineCommand(),
      cli::forgetCommand(),
      cli::resyncProfilesCommand(),
      cli::versionCommand(),
  };
  return all;
}

const Command* find(const std::string& name) {
  for (const auto& c : commands()) {
    if (c.spec.name == name) {
      return &c;
    }
  }
  return nullptr;
}

void printUsage(std::ostream& out) {
  out << "usage: omniedge <command> [options]\n\ncommands:\n";
  for (const auto& c : commands()) {
    out << "  " << c.spec.name << std::string(18 - c.spec.name.size(), ' ') << c.spec.summary
        << "\n";
  }
  out << "  help COMMAND      a command's options (also: omniedge COMMAND --help)\n"
         "\nOn a store device the commands find what the service uses: "
      << cli::kDeviceConfigFile << ",\n"
      << "the control socket in " << cli::kDeviceRuntimeDir << "/, the buffer in "
      << cli::kDeviceStateDir
      << "/.\n"
         "--config FILE (or OMNIEDGE_CONFIG) and any key as --key VALUE override them.\n"
         "\nExit codes: 0 ok, 1 failure found, 2 usage error, 3 daemon not reachable (when the\n"
         "command needs it), 78 bad configuration.\n";
}

int configUsage(std::ostream& out, int code) {
  out << "usage: omniedge config show [--json]\n"
         "       omniedge config validate FILE\n"
         "       omniedge config keygen [--out DIR]\n"
         "       omniedge config sign FILE --key KEY [--out FILE]\n\n"
         "  show      the effective configuration, with where each value came from\n"
         "  validate  check a configuration file without running\n"
         "  keygen    make an Ed25519 key pair for signing remote config\n"
         "  sign      sign a remote config document for the centre to publish\n\n"
         "`omniedge config SUBCOMMAND --help` lists its options.\n";
  return code;
}

int runCommand(const Command& c, int argc, char** argv, int first) {
  auto parsed = cli::parseCommand(c.spec, argc, argv, first);
  if (const int* code = std::get_if<int>(&parsed)) {
    return *code;
  }
  return c.run(c.spec, std::get<cli::Invocation>(parsed));
}

// `omniedge help [COMMAND [SUBCOMMAND]]`
int help(int argc, char** argv) {
  if (argc < 3) {
    printUsage(std::cout);
    return cli::kOk;
  }
  std::string name = argv[2];
  if (name == "config" && argc >= 4) {
    name += std::string(" ") + argv[3];
  } else if (name == "config") {
    return configUsage(std::cout, cli::kOk);
  }
  if (const Command* c = find(name)) {
    cli::printCommandHelp(c->spec, std::cout);
    return cli::kOk;
  }
  std::cerr << "omniedge help: no command '" << name << "'\n\n";
  printUsage(std::cerr);
  return cli::kUsage;
}

}  // namespace

int runCli(int argc, char** argv) {
  if (argc < 2) {
    printUsage(std::cerr);
    return cli::kUsage;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h") {
    printUsage(std::cout);
    return cli::kOk;
  }
  if (cmd == "help") {
    return help(argc, argv);
  }
  if (cmd == "--version") {
    return runCommand(*find("version"), argc, argv, 2);
  }
  if (cmd == "config") {
    const std::string sub = argc >= 3 ? argv[2] : "";
    if (sub == "--help" || sub == "-h" || sub == "help") {
      return configUsage(std::cout, cli::kOk);
    }
    const Command* c = sub.empty() ? nullptr : find("config " + sub);
    if (c == nullptr) {
      std::cerr << "omniedge config: "
                << (sub.empty() ? "which one?" : "no subcommand '" + sub + "'") << "\n";
      return configUsage(std::cerr, cli::kUsage);
    }
    return runCommand(*c, argc, argv, 3);
  }
  if (const Command* c = find(cmd); c != nullptr && cmd.find(' ') == std::string::npos) {
    return runCommand(*c, argc, argv, 2);
  }
  std::cerr << "omniedge: unknown command '" << cmd << "'\n\n";
  printUsage(std::cerr);
  return cli::kUsage;
}

}  // namespace omniedge
