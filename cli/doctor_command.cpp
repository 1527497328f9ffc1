// `omniedge doctor`: the checks of doctor.h, one line each.
#include <iostream>

#include "cli/commands.h"
#include "cli/doctor.h"

namespace omniedge::cli {
namespace {

int run(const CommandSpec& spec, const Invocation& inv) {
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  return printDoctorReport(runDoctorChecks(loaded->cfg), inv.has("json"), std::cout);
}

}  // namespace

Command doctorCommand() {
  CommandSpec spec;
  spec.name = "doctor";
  spec.synopsis = "[--json]";
  spec.summary = "a check per line (disk, buffer, daemon, broker, TLS, certificates, clock)";
  spec.details =
      "Prints \u2713 (ok), ! (warning) or \u2717 (failure) and a line per check: data dir, free\n"
      "disk, buffer integrity (PRAGMA quick_check, read-only), daemon, MQTT broker (TCP,\n"
      "TLS, login), HTTPS endpoint, certificate expiry, clock, PII key. Needs no daemon and\n"
      "writes nothing. Exit 1 if any check failed (warnings do not fail).";
  spec.options = [](po::options_description& o) {
    o.add_options()("json", "print {\"ok\": bool, \"checks\": [...]} instead");
  };
  return {spec, run};
}

}  // namespace omniedge::cli
