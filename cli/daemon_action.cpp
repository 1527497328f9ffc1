// `omniedge retry-quarantine` and `omniedge resync-profiles`: actions the daemon carries out at
// once (the centre can ask for both too, on R/cmd).
#include <iostream>

#include "cli/commands.h"
#include "cli/json_view.h"

namespace omniedge::cli {
namespace {

using nlohmann::json;

// Sends {"cmd": control} to the daemon and prints what it did.
int runAction(const CommandSpec& spec, const Invocation& inv, const char* control) {
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  Daemon daemon(*loaded);
  auto answer = daemon.request({{"cmd", control}});
  if (!answer) {
    std::cerr << daemon.notRunning(spec.name);
    return kUnreachable;
  }
  if (!flag(*answer, "ok")) {
    std::cerr << "omniedge " << spec.name << ": the daemon refused: " << str(*answer, "error")
              << "\n";
    return kFailure;
  }
  if (answer->contains("moved")) {
    std::cout << num(*answer, "moved") << " quarantined events queued again\n";
  } else {
    std::cout << spec.name << " requested\n";
  }
  return kOk;
}

}  // namespace

Command retryQuarantineCommand() {
  CommandSpec spec;
  spec.name = "retry-quarantine";
  spec.summary = "move every quarantined event back to the queue, to be sent again";
  spec.details =
      "Needs the daemon (exit 3 when it does not answer). Events the centre refused (an HTTPS\n"
      "4xx, an MQTT 5 refusal of that one event) wait in the quarantine; once the centre is\n"
      "fixed, this queues them again with new seqs. `omniedge status` lists the newest.";
  return {spec, [](const CommandSpec& s, const Invocation& inv) {
            return runAction(s, inv, "retry_quarantine");
          }};
}

Command resyncProfilesCommand() {
  CommandSpec spec;
  spec.name = "resync-profiles";
  spec.summary = "fetch the whole profile snapshot again over HTTPS";
  spec.details =
      "Needs the daemon (exit 3 when it does not answer) and https.base_url. The snapshot is\n"
      "fetched page by page in the background; `omniedge status` shows its progress.";
  return {spec, [](const CommandSpec& s, const Invocation& inv) {
            return runAction(s, inv, "resync_profiles");
          }};
}

}  // namespace omniedge::cli
