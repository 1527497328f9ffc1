// `omniedge forget KEY [--dry-run]`: erasure of a data subject by the running daemon (the centre
// can ask for it too: the `forget` command on R/cmd).
#include <iostream>

#include "cli/commands.h"
#include "cli/json_view.h"

namespace omniedge::cli {
namespace {

using nlohmann::json;

// A scan of a large buffer and a VACUUM of an old one take a while: far above the usual 5 s.
constexpr int kForgetTimeoutMs = 10 * 60 * 1000;

void printPart(const std::string& name, const json& part) {
  std::cout << "  " << name << ":";
  if (part.is_object()) {
    for (const auto& [k, v] : part.items()) {
      if (v.is_object()) {
        continue;  // by_channel: the totals say it
      }
      std::cout << " " << k << "=" << (v.is_string() ? v.get<std::string>() : v.dump());
    }
  } else {
    std::cout << " " << (part.is_string() ? part.get<std::string>() : part.dump());
  }
  std::cout << "\n";
}

int runForget(const CommandSpec& spec, const Invocation& inv) {
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  const bool dry_run = inv.has("dry-run");
  Daemon daemon(*loaded);
  auto answer = daemon.request({{"cmd", "forget"}, {"key", inv.args.at(0)}, {"dry_run", dry_run}},
                               kForgetTimeoutMs);
  if (!answer) {
    std::cerr << daemon.notRunning(spec.name);
    return kUnreachable;
  }
  if (!flag(*answer, "ok")) {
    std::cerr << "omniedge " << spec.name << ": the daemon refused: " << str(*answer, "error")
              << "\n";
    return kFailure;
  }
  const json& r = member(*answer, "result");
  if (inv.has("json")) {
    std::cout << r.dump(2) << "\n";
  } else {
    std::cout << (dry_run ? "would forget " : "forgot ") << str(r, "subject") << " ("
              << num(r, "keys_joined") << " keys joined"
              << (flag(r, "profile_known") ? " through its profile" : ", no profile cached")
              << ")\n";
    for (const char* part : {"buffer", "profiles", "pos_files"}) {
      if (has(r, part)) {
        printPart(part, member(r, part));
      }
    }
    if (member(r, "holders").is_object()) {
      for (const auto& [name, part] : member(r, "holders").items()) {
        printPart(name, part);
      }
    }
  }
  if (!flag(r, "complete", true)) {
    std::cerr << "omniedge " << spec.name << ": not complete:";
    for (const auto& p : member(r, "problems")) {
      std::cerr << " " << p.get<std::string>() << ";";
    }
    std::cerr << " run it again\n";
    return kFailure;
  }
  return kOk;
}

}  // namespace

Command forgetCommand() {
  CommandSpec spec;
  spec.name = "forget";
  spec.synopsis = "KEY [--dry-run] [--json]";
  spec.summary = "erase a customer: buffered events, cached profile, kept POS files";
  spec.min_args = 1;
  spec.max_args = 1;
  spec.details =
      "Needs the daemon (exit 3 when it does not answer). KEY is any key of the customer:\n"
      "loyalty:ID, app:ID, email:ADDRESS, phone:NUMBER, email_sha256:HEX, phone_sha256:HEX, a\n"
      "beacon id (ibeacon:UUID:MAJOR:MINOR, ...) or profile:ID. It is joined through the cached\n"
      "profile into every key the profile links. Their buffered events are deleted (sales are\n"
      "kept, anonymised), the profile and its cart deleted, POS files in processed/ that name\n"
      "them deleted, and every other part asked; the files are then cleared of free pages and\n"
      "their WAL emptied. Prints the counts per part; the customer is named by a keyed hash\n"
      "only. Exit 1 when a part could not finish: run it again (it is idempotent).";
  spec.options = [](po::options_description& o) {
    o.add_options()("dry-run", "count what would go, change nothing")(
        "json", "print the daemon's answer as JSON");
  };
  return {spec, runForget};
}

}  // namespace omniedge::cli
