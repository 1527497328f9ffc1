#include "agent/cli/remote_config_cli.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sync/remote_config.h"
#include "sync/signing.h"

namespace omniedge::cli {
namespace {

namespace fs = std::filesystem;
namespace po = boost::program_options;

constexpr int kOk = 0;
constexpr int kFailure = 1;
constexpr int kUsage = 2;

// Creates `path` with `mode` (never over an existing file) and writes `text`.
bool writeNew(const fs::path& path, const std::string& text, mode_t mode, std::ostream& err) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    err << "omniedge config keygen: cannot create " << path.string() << ": "
        << std::strerror(errno) << (errno == EEXIST ? " (not overwritten)" : "") << "\n";
    return false;
  }
  ::fchmod(fd, mode);  // whatever the umask
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) {
    err << "omniedge config keygen: cannot write " << path.string() << "\n";
  }
  return ok;
}

bool readAll(const std::string& path, std::string& text) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return false;
  }
  std::ostringstream s;
  s << in.rdbuf();
  text = s.str();
  return !in.bad();
}

}  // namespace

int configKeygen(const std::string& dir, const std::string& name, std::ostream& out,
                 std::ostream& err) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path priv = fs::path(dir) / (name + ".key");
  const fs::path pub = fs::path(dir) / (name + ".pub");
  for (const auto& p : {priv, pub}) {
    if (fs::exists(p, ec)) {
      err << "omniedge config keygen: " << p.string()
          << " exists already; not overwritten (choose another --out or --name)\n";
      return kFailure;
    }
  }
  auto keys = sync::generateSigningKey();
  if (!keys) {
    err << "omniedge config keygen: " << keys.error().message << "\n";
    return kFailure;
  }
  if (!writeNew(priv, keys->private_pem, 0600, err)) {
    return kFailure;
  }
  if (!writeNew(pub, keys->public_pem, 0644, err)) {
    fs::remove(priv, ec);
    return kFailure;
  }
  out << "private key: " << priv.string() << " (signs configs: keep it with ops, never on a store)\n"
      << "public key:  " << pub.string() << " (config.verify_key_file on every store)\n";
  return kOk;
}

int configSign(const std::string& file, const std::string& key_file, const std::string& out_file,
               bool check_keys, std::ostream& out, std::ostream& err) {
  std::string document;
  if (!readAll(file, document)) {
    err << "omniedge config sign: cannot read " << file << ": " << std::strerror(errno) << "\n";
    return kUsage;
  }
  std::string key;
  if (!readAll(key_file, key)) {
    err << "omniedge config sign: cannot read the key " << key_file << ": "
        << std::strerror(errno) << "\n";
    return kUsage;
  }
  auto doc = sync::parseConfigDocument(document);
  if (!doc) {
    err << "omniedge config sign: " << file << ": " << doc.error().message << "\n";
    return kFailure;
  }
  if (check_keys) {
    auto defaults = config::load({});
    if (defaults) {
      if (auto checked = defaults->withRemote(doc->settings); !checked) {
        err << "omniedge config sign: " << file << ": " << checked.error().message
            << "\n(a store refuses the whole document for this; --no-check signs it anyway)\n";
        return kFailure;
      }
    }
  }
  auto signature = sync::signEd25519(key, document);
  if (!signature) {
    err << "omniedge config sign: " << key_file << ": " << signature.error().message << "\n";
    return kFailure;
  }
  const std::string envelope = nlohmann::json{{"document", sync::base64Encode(document)},
                                              {"signature", sync::base64Encode(*signature)}}
                                   .dump() +
                               "\n";
  if (out_file.empty()) {
    out << envelope;
    return kOk;
  }
  std::ofstream o(out_file, std::ios::binary | std::ios::trunc);
  if (!(o << envelope) || !o.flush()) {
    err << "omniedge config sign: cannot write " << out_file << "\n";
    return kFailure;
  }
  err << "signed version " << doc->version << " (" << doc->settings.size() << " settings) into "
      << out_file << "\n";
  return kOk;
}

config::Config withAppliedRemote(const config::Config& local, std::string& note) {
  note.clear();
  auto layer = sync::readAppliedLayer(local.str("data.dir"));
  if (!layer) {
    note = "the remote config the daemon applied cannot be read: " + layer.error().message;
    return local;
  }
  if (layer->settings.empty()) {
    return local;
  }
  auto with = local.withRemote(layer->settings, layer->details);
  if (!with) {
    note = "the remote config the daemon applied does not fit this configuration: " +
           with.error().message;
    return local;
  }
  return *with;
}

int runConfigKeys(int argc, char** argv) {
  const std::string sub = argc >= 3 ? argv[2] : "";
  po::options_description own("omniedge config " + sub);
  own.add_options()("help,h", "this help");
  if (sub == "keygen") {
    own.add_options()("out", po::value<std::string>()->default_value("."),
                      "directory for NAME.key and NAME.pub")(
        "name", po::value<std::string>()->default_value("signing"), "file name of the keys");
  } else {
    own.add_options()("key", po::value<std::string>(), "the Ed25519 private key (PEM)")(
        "out", po::value<std::string>(), "write the envelope here (default: standard output)")(
        "no-check", "sign even when a setting is not a remote-settable key with a good value");
  }
  po::options_description hidden;
  hidden.add_options()("positional", po::value<std::vector<std::string>>(), "");
  po::options_description all;
  all.add(own).add(hidden);
  po::positional_options_description pos;
  pos.add("positional", -1);
  po::variables_map vm;
  try {
    std::vector<std::string> args(argv + 3, argv + argc);
    po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "omniedge config " << sub << ": " << e.what() << "\n";
    return kUsage;
  }
  const std::vector<std::string> positional =
      vm.count("positional") != 0U ? vm["positional"].as<std::vector<std::string>>()
                                   : std::vector<std::string>{};
  if (sub == "keygen") {
    if (vm.count("help") != 0U) {
      std::cout << "usage: omniedge config keygen [--out DIR] [--name NAME]\n\n"
                   "Makes an Ed25519 key pair for signing remote config: NAME.key (private,\n"
                   "mode 0600) and NAME.pub (public: config.verify_key_file on the stores).\n\n"
                << own;
      return kOk;
    }
    if (!positional.empty()) {
      std::cerr << "omniedge config keygen: no arguments expected\n";
      return kUsage;
    }
    return configKeygen(vm["out"].as<std::string>(), vm["name"].as<std::string>(), std::cout,
                        std::cerr);
  }
  if (vm.count("help") != 0U) {
    std::cout << "usage: omniedge config sign FILE --key KEY [--out FILE] [--no-check]\n\n"
                 "Signs the exact bytes of FILE, a config document {\"version\": N, \"settings\":\n"
                 "{...}, \"expires_at\": \"...\"}, and prints what to publish (retained, QoS 1) on\n"
                 "omniedge/v1/TENANT/STORE/config/desired or omniedge/v1/TENANT/all/config/desired.\n\n"
              << own;
    return kOk;
  }
  if (positional.size() != 1 || vm.count("key") == 0U) {
    std::cerr << "usage: omniedge config sign FILE --key KEY [--out FILE] [--no-check]\n";
    return kUsage;
  }
  return configSign(positional[0], vm["key"].as<std::string>(),
                    vm.count("out") != 0U ? vm["out"].as<std::string>() : "",
                    vm.count("no-check") == 0U, std::cout, std::cerr);
}

}  // namespace omniedge::cli
