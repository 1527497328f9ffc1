// One HTTPS connection to the centre (contract §6), over libcurl.
//
// libcurl and what it pulls in (GnuTLS through librtmp, LDAP, Kerberos, SSH) cost ~4.7 MB of
// resident memory in every agent (docs/benchmarks.md, "libcurl"), so it is not linked: it is
// loaded with dlopen("libcurl.so.4") only when https.base_url is set, as
// agent/ingest/phone_module.h does for libphonenumber. Without it the HTTPS link says so in status
// ("unavailable"); MQTT goes on. (doctor probes the endpoint with OpenSSL, so it does not need
// libcurl.)
#pragma once

#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>

#include "agent/api/result.h"

namespace omniedge::sync {

/// The `https.*` settings of the connection.
struct HttpsClientOptions {
  std::string base_url;   // https.base_url, e.g. "https://central.example.com"
  std::string ca_file;    // https.ca_file; empty: the system store
  std::string cert_file;  // https.cert_file: client certificate (mutual TLS); empty: none
  std::string key_file;   // https.key_file
  bool insecure_skip_verify = false;  // https.insecure_skip_verify: no server verification
  std::string pinned_pubkey;          // https.pinned_pubkey: a PEM/DER file or "sha256//BASE64"
  int timeout_s = 30;                 // https.timeout: a whole request
  int connect_timeout_s = 10;
  std::string user_agent = "omniedge";
  std::string libcurl = "libcurl.so.4";  // what dlopen() loads (tests point it elsewhere)
};

/// An answer from the server (any status).
struct HttpResponse {
  long status = 0;  // NOLINT(runtime/int): libcurl's type
  std::string body;
  int64_t retry_after_s = -1;  // Retry-After in seconds, -1 when absent
};

/// One reused libcurl easy handle: keep-alive, so a backfill pays one TLS handshake, not one
/// per batch (quality.md: ~6.3k vs ~540 requests/s here). Server verification is always on
/// (chain and host name) unless insecure_skip_verify. Thread: one owner at a time (a curl easy
/// handle is blocking and not thread-safe).
class HttpsClient {
 public:
  /// Loads libcurl (once per process) and makes the handle. Fails "unavailable" when libcurl
  /// cannot be loaded (the message says what to install), "invalid" for a bad base_url.
  /// Thread: any.
  static Result<std::unique_ptr<HttpsClient>> create(HttpsClientOptions options);
  ~HttpsClient();
  HttpsClient(const HttpsClient&) = delete;
  HttpsClient& operator=(const HttpsClient&) = delete;

  /// POSTs `body` to base_url + `path` with Content-Type application/json and, when not empty,
  /// Content-Encoding `encoding`. Blocks up to timeout_s (returns within ~1 s of `stop`).
  /// Any HTTP status is a response; fails "transport" (no answer: refused, DNS, TLS, timeout,
  /// reset; the message names the URL, what went wrong and what to check) or "stopping".
  Result<HttpResponse> post(std::string_view path, std::string_view body, std::string_view encoding,
                            std::stop_token stop);
  /// GETs base_url + `path_and_query`; a body over `max_body_bytes` fails "too_large".
  /// Otherwise as post().
  Result<HttpResponse> get(std::string_view path_and_query, std::size_t max_body_bytes,
                           std::stop_token stop);

  /// `text` percent-encoded for a query value. Thread: any.
  static std::string escape(std::string_view text);
  /// The libcurl version loaded ("" before any create()). Thread: any.
  static std::string libraryVersion();

 private:
  struct Handle;
  explicit HttpsClient(HttpsClientOptions options);
  Result<HttpResponse> perform(std::string_view path, const std::string_view* body,
                               std::string_view encoding, std::size_t max_body_bytes,
                               std::stop_token stop);
  std::string transportError(int code, const std::string& detail, const std::string& alert) const;
  std::string probeTlsAlert();

  HttpsClientOptions options_;
  std::unique_ptr<Handle> h_;
};

}  // namespace omniedge::sync
