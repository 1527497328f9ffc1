// `omniedge config show|validate` and `omniedge version`.
#include <openssl/crypto.h>
#include <spdlog/version.h>
#include <sqlite3.h>
#include <zlib.h>

#include <boost/version.hpp>
#include <iostream>

#include "agent/version.h"
#include "cli/commands.h"
#include "cli/remote_config_cli.h"

namespace omniedge::cli {
namespace {

int runShow(const CommandSpec& spec, const Invocation& inv) {
  auto loaded = loadConfig(spec, inv);
  if (!loaded) {
    return kConfigError;
  }
  // What the centre set, as the daemon applied it, shows as "remote".
  std::string note;
  const config::Config cfg = withAppliedRemote(loaded->cfg, note);
  if (!note.empty()) {
    std::cerr << "omniedge config show: " << note << "\n";
  }
  if (inv.has("json")) {
    std::cout << cfg.toJson().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << "# " << loaded->describe() << "\n" << cfg.toText();
  }
  return kOk;
}

int runValidate(const CommandSpec&, const Invocation& inv) {
  const std::string& file = inv.args.at(0);
  auto cfg = config::validateFile(file);
  if (!cfg) {
    std::cerr << file << ": invalid\n" << cfg.error().message << "\n";
    return kConfigError;
  }
  std::cout << file << ": valid\n";
  return kOk;
}

int runVersion(const CommandSpec&, const Invocation&) {
  std::cout << "omniedge " << kVersion << " (git " << kGitRevision << ", " << kBuildType << ")\n"
            << "  sqlite " << sqlite3_libversion() << "\n"
            << "  " << OpenSSL_version(OPENSSL_VERSION) << "\n"
            << "  zlib " << zlibVersion() << "\n"
            << "  spdlog " << SPDLOG_VER_MAJOR << "." << SPDLOG_VER_MINOR << "." << SPDLOG_VER_PATCH
            << "\n"
            << "  boost " << BOOST_VERSION / 100000 << "." << BOOST_VERSION / 100 % 1000 << "\n";
  return kOk;
}

}  // namespace

Command configShowCommand() {
  CommandSpec spec;
  spec.name = "config show";
  spec.synopsis = "[--json]";
  spec.summary = "the effective configuration, with where each value came from";
  spec.details =
      "Every key with its value and its origin (default, file, env, flag, or remote: set by\n"
      "the centre, as the daemon applied it, with the document's version), read as the\n"
      "service reads it: --config FILE, else $OMNIEDGE_CONFIG, else\n"
      "/etc/omniedge/omniedge.conf when it exists. Sizes are written as the configuration\n"
      "takes them (1GiB), durations in seconds. Exit 78 when the configuration is bad.";
  spec.options = [](po::options_description& o) { o.add_options()("json", "print JSON"); };
  return {spec, runShow};
}

Command configValidateCommand() {
  CommandSpec spec;
  spec.name = "config validate";
  spec.synopsis = "FILE";
  spec.summary = "check a configuration file without running";
  spec.details =
      "Checks FILE alone against the built-in defaults: every unknown key and bad value is\n"
      "named with its line. Exit 0 when valid, 78 when not.";
  spec.min_args = 1;
  spec.max_args = 1;
  spec.takes_config = false;
  return {spec, runValidate};
}

Command versionCommand() {
  CommandSpec spec;
  spec.name = "version";
  spec.summary = "version, git revision, build type, library versions";
  spec.takes_config = false;
  return {spec, runVersion};
}

}  // namespace omniedge::cli
