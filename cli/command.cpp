#include "cli/command.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <regex>
#include <system_error>
#include <thread>

#include "agent/store/buffer_reader.h"
#include "cli/control_client.h"
#include "cli/json_view.h"

namespace omniedge::cli {
namespace {

namespace fs = std::filesystem;

bool isDirectory(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

bool isFile(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

po::options_description configOptions() {
  po::options_description cfg(
      "Configuration (--config FILE, else $OMNIEDGE_CONFIG, else /etc/omniedge/omniedge.conf\n"
      "when it exists; every key also as OMNIEDGE_<KEY>, e.g. OMNIEDGE_MQTT_URL)");
  cfg.add_options()("config,c", po::value<std::string>()->value_name("FILE"),
                    "configuration file (INI)");
  config::addFlags(cfg);
  return cfg;
}

po::options_description ownOptions(const CommandSpec& spec) {
  po::options_description own("Options");
  if (spec.options) {
    spec.options(own);
  }
  own.add_options()("help,h", "print this help and exit");
  return own;
}

// Boost reads "-3" as an option, so "--wait -3" would say "missing argument". A negative
// number right after an option is that option's value: "--wait=-3", and the command's own
// range check then names the option and says what it takes.
std::vector<std::string> joinNegativeValues(std::vector<std::string> args) {
  static const std::regex number("-[0-9]+(\\.[0-9]+)?");
  std::vector<std::string> out;
  for (auto& a : args) {
    if (!out.empty() && std::regex_match(a, number) && out.back().size() > 1 &&
        out.back()[0] == '-' && out.back().find('=') == std::string::npos && out.back() != "--") {
      out.back() += (out.back()[1] == '-' ? "=" : "") + a;
    } else {
      out.push_back(std::move(a));
    }
  }
  return out;
}

}  // namespace

void printCommandHelp(const CommandSpec& spec, std::ostream& out) {
  out << "usage: omniedge " << spec.name << (spec.synopsis.empty() ? "" : " " + spec.synopsis)
      << "\n\n";
  if (!spec.details.empty()) {
    out << spec.details << (spec.details.back() == '\n' ? "" : "\n") << "\n";
  }
  out << ownOptions(spec);
  if (spec.takes_config) {
    out << "\n" << configOptions();
  }
}

int usageError(const CommandSpec& spec, const std::string& message) {
  std::cerr << "omniedge " << spec.name << ": " << message << "\n"
            << "usage: omniedge " << spec.name << (spec.synopsis.empty() ? "" : " " + spec.synopsis)
            << "\n"
            << "(`omniedge " << spec.name << " --help` lists every option)\n";
  return kUsage;
}

std::variant<Invocation, int> parseCommand(const CommandSpec& spec, int argc, char** argv,
                                           int first) {
  std::vector<std::string> args(argv + first, argv + argc);
  for (const auto& a : args) {
    if (a == "--") {
      break;
    }
    if (a == "--help" || a == "-h") {
      printCommandHelp(spec, std::cout);
      return kOk;
    }
  }
  po::options_description all;
  all.add(ownOptions(spec));
  if (spec.takes_config) {
    all.add(configOptions());
  }
  po::options_description hidden;
  hidden.add_options()("positional", po::value<std::vector<std::string>>(), "");
  all.add(hidden);
  po::positional_options_description pos;
  pos.add("positional", -1);
  Invocation inv;
  try {
    po::store(po::command_line_parser(joinNegativeValues(args)).options(all).positional(pos).run(),
              inv.vm);
    po::notify(inv.vm);
  } catch (const po::error& e) {
    return usageError(spec, e.what());
  }
  if (inv.has("positional")) {
    inv.args = inv.vm["positional"].as<std::vector<std::string>>();
  }
  if (inv.args.size() > spec.max_args) {
    const std::string extra = inv.args[spec.max_args];
    return usageError(spec, spec.max_args == 0
                                ? "takes no arguments, got '" + extra + "'"
                                : "too many arguments: '" + extra + "' is one more than it takes");
  }
  if (inv.args.size() < spec.min_args) {
    return usageError(spec, "missing argument");
  }
  return inv;
}

std::string Loaded::describe() const {
  if (file.empty()) {
    return std::string("no configuration file (built-in defaults; the service reads ") +
           kDeviceConfigFile + ")";
  }
  return "configuration " + file +
         (origin == "found"      ? ""
          : origin == "--config" ? " (--config)"
                                 : " (" + origin + ")");
}

std::optional<Loaded> loadConfig(const CommandSpec& spec, const Invocation& inv,
                                 bool device_layout) {
  std::string file;
  std::string origin;
  if (inv.has("config")) {
    file = inv.vm["config"].as<std::string>();
    origin = "--config";
  } else if (const char* f = std::getenv("OMNIEDGE_CONFIG"); f != nullptr && *f != '\0') {
    file = f;
    origin = "OMNIEDGE_CONFIG";
  } else if (device_layout && isFile(kDeviceConfigFile)) {
    file = kDeviceConfigFile;
    origin = "found";
  }
  config::Inputs in;
  in.file = file;
  in.env = config::processEnvironment();
  if (device_layout) {
    bool state_dir = false;
    for (const auto& [name, value] : in.env) {
      state_dir = state_dir || (name == "STATE_DIRECTORY" && !value.empty());
    }
    if (!state_dir && isDirectory(kDeviceStateDir)) {
      in.env.emplace_back("STATE_DIRECTORY", kDeviceStateDir);  // data.dir's default
    }
  }
  in.flags = config::flagsFrom(inv.vm);
  auto cfg = config::load(in);
  if (!cfg) {
    std::cerr << "omniedge " << spec.name << ": bad configuration"
              << (file.empty() ? "" : " (" + file + ")") << ":\n"
              << cfg.error().message << "\n"
              << "(`omniedge config validate FILE` checks a file; `omniedge config show` lists "
                 "every key)\n";
    return std::nullopt;
  }
  return Loaded{std::move(*cfg), file, origin};
}

std::vector<std::string> controlSocketCandidates(const config::Config& cfg) {
  std::vector<std::string> out;
  const auto add = [&out](const fs::path& dir) {
    const std::string p = (dir / kSocketName).string();
    if (std::find(out.begin(), out.end(), p) == out.end()) {
      out.push_back(p);
    }
  };
  if (const char* runtime = std::getenv("RUNTIME_DIRECTORY"); runtime != nullptr && *runtime) {
    const std::string first(runtime, std::strcspn(runtime, ":"));
    add(first);
  }
  if (isDirectory(kDeviceRuntimeDir)) {
    add(kDeviceRuntimeDir);
  }
  add(cfg.str("data.dir"));
  return out;
}

Daemon::Daemon(const Loaded& loaded)
    : loaded_(loaded), candidates_(controlSocketCandidates(loaded.cfg)) {}

Result<nlohmann::json> Daemon::request(const nlohmann::json& request, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  const auto time_left = [&deadline] {
    return std::chrono::steady_clock::now() + std::chrono::milliseconds(100) < deadline;
  };
  for (;;) {
    std::vector<std::string> order = candidates_;
    if (!answered_.empty()) {
      std::erase(order, answered_);
      order.insert(order.begin(), answered_);
    }
    seen_.clear();
    for (const auto& path : order) {
      for (;;) {
        auto answer = controlRequest(path, request, timeout_ms);
        // A daemon serving as many clients as it takes says "busy": ask again shortly.
        if (answer && member(*answer, "code") == "busy" && time_left()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
          continue;
        }
        if (answer) {
          answered_ = path;
          return answer;
        }
        seen_.emplace_back(path, answer.error());
        break;
      }
    }
    answered_.clear();
    // A daemon that holds the buffer but has no socket (yet) is starting (or stopping): give
    // it the time the caller allows rather than report it absent.
    const bool daemon_there =
        store::bufferOwner(loaded_.cfg.str("data.dir")) == store::Owner::kDaemon;
    const bool no_socket = std::all_of(seen_.begin(), seen_.end(), [](const auto& s) {
      return s.second.code == "absent" || s.second.code == "refused";
    });
    if (!daemon_there || !no_socket || !time_left()) {
      return makeError("unreachable", "no daemon answered");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

bool Daemon::deniedAccess() const {
  return std::any_of(seen_.begin(), seen_.end(),
                     [](const auto& s) { return s.second.code == "permission"; });
}

std::string Daemon::whereLooked(const std::string& indent) const {
  std::string out;
  for (const auto& [path, error] : seen_) {
    out += indent + error.message + "\n";
  }
  return out;
}

std::string Daemon::advice(const std::string& indent) const {
  std::string out;
  if (deniedAccess()) {
    out += indent +
           "the daemon may be running, but you may not use its control socket: run as root or "
           "as a member of the service's group (omniedge)\n";
  }
  out += indent + "is the service up? `systemctl status omniedge`, `journalctl -u omniedge`\n";
  out += indent + "if the daemon runs with another configuration, pass the same --config FILE (" +
         loaded_.describe() + ")\n";
  return out;
}

std::string Daemon::notRunning(const std::string& command) const {
  return "omniedge " + command + ": the daemon is not running; no control socket answered:\n" +
         whereLooked("  ") + advice("  ");
}

}  // namespace omniedge::cli
