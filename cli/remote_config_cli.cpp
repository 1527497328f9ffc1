#include "cli/remote_config_cli.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "sync/remote_config.h"
#include "sync/signing.h"

namespace omniedge::cli {
namespace {

namespace fs = std::filesystem;

// Creates `path` with `mode` (never over an existing file) and writes `text`.
bool writeNew(const fs::path& path, const std::string& text, mode_t mode, std::ostream& err) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    err << "omniedge config keygen: cannot create " << path.string() << ": " << std::strerror(errno)
        << (errno == EEXIST ? " (not overwritten)" : "") << "\n";
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
  out << "private key: " << priv.string()
      << " (signs configs: keep it with ops, never on a store)\n"
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
    err << "omniedge config sign: cannot read the key " << key_file << ": " << std::strerror(errno)
        << "\n";
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

Command configKeygenCommand() {
  CommandSpec spec;
  spec.name = "config keygen";
  spec.synopsis = "[--out DIR] [--name NAME]";
  spec.summary = "make an Ed25519 key pair for signing remote config";
  spec.details =
      "Writes DIR/NAME.key (the private key, PKCS#8 PEM, mode 0600: it signs configs, keep it\n"
      "with ops) and DIR/NAME.pub (the public key: config.verify_key_file on every store).\n"
      "Never overwrites a key. See docs/remote-config.md.";
  spec.takes_config = false;
  spec.options = [](po::options_description& o) {
    o.add_options()("out", po::value<std::string>()->default_value("."), "directory for the keys")(
        "name", po::value<std::string>()->default_value("signing"), "file name of the keys");
  };
  return {spec, [](const CommandSpec&, const Invocation& inv) {
            return configKeygen(inv.vm["out"].as<std::string>(), inv.vm["name"].as<std::string>(),
                                std::cout, std::cerr);
          }};
}

Command configSignCommand() {
  CommandSpec spec;
  spec.name = "config sign";
  spec.synopsis = "FILE --key KEY [--out FILE] [--no-check]";
  spec.summary = "sign a remote config document for the centre to publish";
  spec.details =
      "Signs the exact bytes of FILE, a document {\"version\": N, \"settings\": {...},\n"
      "\"expires_at\": \"...\"}, and prints the envelope to publish (retained, QoS 1) on\n"
      "omniedge/v1/TENANT/STORE/config/desired or omniedge/v1/TENANT/all/config/desired.\n"
      "The document is checked first as a store checks it: exit 1 naming the field or key.";
  spec.min_args = 1;
  spec.max_args = 1;
  spec.takes_config = false;
  spec.options = [](po::options_description& o) {
    o.add_options()("key", po::value<std::string>()->required(), "the Ed25519 private key (PEM)")(
        "out", po::value<std::string>(), "write the envelope here (default: standard output)")(
        "no-check", "sign even when a setting is not a remote-settable key with a good value");
  };
  return {spec, [](const CommandSpec&, const Invocation& inv) {
            return configSign(inv.args.at(0), inv.vm["key"].as<std::string>(),
                              inv.has("out") ? inv.vm["out"].as<std::string>() : "",
                              !inv.has("no-check"), std::cout, std::cerr);
          }};
}

}  // namespace omniedge::cli
