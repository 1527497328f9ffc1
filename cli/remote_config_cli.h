// The ops side of remote config (contract §5, docs/remote-config.md): `omniedge config keygen`
// and `omniedge config sign FILE`, so that keys and signed documents need no other tool, and
// the remote layer `config show` adds (what the daemon applied, from data.dir).
#pragma once

#include <ostream>
#include <string>

#include "agent/config.h"
#include "cli/commands.h"

namespace omniedge::cli {

/// Writes DIR/NAME.key (the Ed25519 private key, PKCS#8 PEM, mode 0600: it signs configs, keep
/// it with ops) and DIR/NAME.pub (the public key for config.verify_key_file). Refuses to
/// overwrite either. Returns the exit code: 0, or 1 with the reason on `err`.
int configKeygen(const std::string& dir, const std::string& name, std::ostream& out,
                 std::ostream& err);

/// Signs FILE's exact bytes with the private key and prints the envelope to publish
/// (`{"document": "<base64>", "signature": "<base64>"}`) to `out_file` or `out`. The document
/// is checked first as the agent will check it (shape; with `check_keys`, that every setting
/// is a known, remote-settable key with a good value against the built-in defaults). Returns 0,
/// 1 (bad document, with the reason naming the field or key) or 2 (unreadable input).
int configSign(const std::string& file, const std::string& key_file, const std::string& out_file,
               bool check_keys, std::ostream& out, std::ostream& err);

/// `local` with the remote layer the daemon applied (data.dir/remote-config.json) on top, its
/// values marked "remote" with the document they came from ("v5 for this store"). When there
/// is none, or it cannot be read or no longer fits `local`, returns `local` and says why in
/// `note` ("" otherwise).
config::Config withAppliedRemote(const config::Config& local, std::string& note);

Command configKeygenCommand();
Command configSignCommand();

}  // namespace omniedge::cli
