// Why a TLS server refused us, when the client library only says "connect failure".
//
// With TLS 1.3 a server checks the client certificate after the handshake has completed on the
// client's side; it then sends an alert and closes, and Paho or libcurl usually report only a
// broken pipe. This probe connects once more on its own: first limited to TLS 1.2, where the
// refusal is an alert inside the handshake, then (for a TLS 1.3-only server) with a read after
// the handshake, and returns the alert or the certificate verification error.
#pragma once

#include <chrono>
#include <string>

namespace omniedge::sync {

struct TlsProbeResult {
  std::string alert;         // the peer's alert, lower case ("unknown ca"); "" if none
  std::string verify_error;  // our verification of the server's certificate; "" if it passed
  bool handshake_ok = false;
  std::string error;  // the probe itself failed (no connection, unreadable files)
};

/// Probes `url` (mqtts://, wss://, ssl://, https://; host and port taken from it) with the CA
/// file (empty: the system store), client certificate and key (empty: none). Thread: any.
/// Blocks up to about 2 x `timeout`. Never throws.
TlsProbeResult probeTls(const std::string& url, const std::string& ca_file,
                        const std::string& cert_file, const std::string& key_file, bool verify,
                        std::chrono::milliseconds timeout);

/// "the broker at URL refused the TLS connection (alert: …): <what to check>" for an alert
/// about our certificate, "" for any other. `cert_key`/`key_key` name the config keys.
std::string describeCertificateRefusal(const std::string& who, const std::string& url,
                                       const std::string& alert, const std::string& cert_file,
                                       const std::string& cert_key, const std::string& key_key);

}  // namespace omniedge::sync
