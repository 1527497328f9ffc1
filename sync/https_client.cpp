#include "sync/https_client.h"

#include <curl/curl.h>
#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <mutex>
#include <utility>

#include "sync/tls_probe.h"

namespace omniedge::sync {
namespace {

constexpr char kDoctor[] = "; try `omniedge doctor`";

// The few libcurl functions used, found with dlsym (the library is not linked: see the header).
struct CurlApi {
  CURLcode (*global_init)(long) = nullptr;  // NOLINT(runtime/int)
  CURL* (*easy_init)() = nullptr;
  CURLcode (*easy_setopt)(CURL*, CURLoption, ...) = nullptr;
  CURLcode (*easy_perform)(CURL*) = nullptr;
  CURLcode (*easy_getinfo)(CURL*, CURLINFO, ...) = nullptr;
  void (*easy_cleanup)(CURL*) = nullptr;
  const char* (*easy_strerror)(CURLcode) = nullptr;
  curl_slist* (*slist_append)(curl_slist*, const char*) = nullptr;
  void (*slist_free_all)(curl_slist*) = nullptr;
  curl_version_info_data* (*version_info)(CURLversion) = nullptr;
  std::string error;  // why it could not be loaded; "" when usable
  std::string version;
};

std::mutex g_api_mu;
CurlApi* g_api = nullptr;  // guarded by g_api_mu until set; never freed (the library stays)

template <class F>
bool load(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  return fn != nullptr;
}

const CurlApi& curlApi(const std::string& path) {
  std::lock_guard lock(g_api_mu);
  if (g_api != nullptr) {
    return *g_api;
  }
  auto* api = new CurlApi();  // NOLINT: process lifetime, like the library itself
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    api->error = "libcurl could not be loaded (" + std::string(why != nullptr ? why : path) +
                 "): install the libcurl4 package; the HTTPS uplink stays off until then";
  } else if (!(load(lib, "curl_global_init", api->global_init) &&
               load(lib, "curl_easy_init", api->easy_init) &&
               load(lib, "curl_easy_setopt", api->easy_setopt) &&
               load(lib, "curl_easy_perform", api->easy_perform) &&
               load(lib, "curl_easy_getinfo", api->easy_getinfo) &&
               load(lib, "curl_easy_cleanup", api->easy_cleanup) &&
               load(lib, "curl_easy_strerror", api->easy_strerror) &&
               load(lib, "curl_slist_append", api->slist_append) &&
               load(lib, "curl_slist_free_all", api->slist_free_all) &&
               load(lib, "curl_version_info", api->version_info))) {
    api->error = path + " lacks libcurl's functions: install the libcurl4 package";
  } else if (api->global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    api->error = "libcurl could not be initialised (curl_global_init failed)";
  } else {
    const curl_version_info_data* v = api->version_info(CURLVERSION_NOW);
    api->version = v != nullptr && v->version != nullptr ? v->version : "";
    if (v != nullptr && v->ssl_version != nullptr) {
      api->version += std::string(" (") + v->ssl_version + ")";
    }
  }
  g_api = api;
  return *g_api;
}

// "OpenSSL SSL_read: error:0A000418:SSL routines::tlsv1 alert unknown ca, errno 0" ->
// "unknown ca": what the server said about our certificate, if it said anything.
std::string tlsAlert(const std::string& detail) {
  const auto at = detail.find("alert ");
  if (at == std::string::npos) {
    return "";
  }
  std::string alert = detail.substr(at + 6);
  const auto end = alert.find_first_of(",\n");
  if (end != std::string::npos) {
    alert.resize(end);
  }
  return alert;
}

struct Transfer {
  std::string body;
  std::size_t max_body = 0;
  bool too_large = false;
  std::stop_token stop;
};

size_t onWrite(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if (t->body.size() + bytes > t->max_body) {
    t->too_large = true;
    return 0;  // libcurl ends the transfer (CURLE_WRITE_ERROR)
  }
  t->body.append(data, bytes);
  return bytes;
}

// Called about once a second even while nothing moves: how a blocking transfer hears stop.
int onProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<Transfer*>(user)->stop.stop_requested() ? 1 : 0;
}

}  // namespace

struct HttpsClient::Handle {
  const CurlApi* api = nullptr;
  CURL* curl = nullptr;
  char errbuf[CURL_ERROR_SIZE] = {};
  ~Handle() {
    if (curl != nullptr) {
      api->easy_cleanup(curl);
    }
  }
};

HttpsClient::HttpsClient(HttpsClientOptions options)
    : options_(std::move(options)), h_(std::make_unique<Handle>()) {}

HttpsClient::~HttpsClient() = default;

std::string HttpsClient::libraryVersion() {
  std::lock_guard lock(g_api_mu);
  return g_api != nullptr ? g_api->version : "";
}

Result<std::unique_ptr<HttpsClient>> HttpsClient::create(HttpsClientOptions options) {
  if (options.base_url.rfind("https://", 0) != 0 && options.base_url.rfind("http://", 0) != 0) {
    return makeError("invalid",
                     "https.base_url must start with https:// (or http://): " + options.base_url,
                     "https.base_url");
  }
  while (!options.base_url.empty() && options.base_url.back() == '/') {
    options.base_url.pop_back();
  }
  const CurlApi& api = curlApi(options.libcurl);
  if (!api.error.empty()) {
    return makeError("unavailable", api.error);
  }
  std::unique_ptr<HttpsClient> c(new HttpsClient(std::move(options)));
  const auto& o = c->options_;
  Handle& h = *c->h_;
  h.api = &api;
  h.curl = api.easy_init();
  if (h.curl == nullptr) {
    return makeError("unavailable", "libcurl could not make a handle (out of memory?)");
  }
  auto set = api.easy_setopt;
  CURL* curl = h.curl;
  // Options that hold for every request; the handle (and its connection) is reused.
  set(curl, CURLOPT_NOSIGNAL, 1L);
  set(curl, CURLOPT_ERRORBUFFER, h.errbuf);
  set(curl, CURLOPT_PROTOCOLS_STR, "https,http");
  set(curl, CURLOPT_FOLLOWLOCATION, 0L);
  set(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  set(curl, CURLOPT_USERAGENT, o.user_agent.c_str());
  set(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o.connect_timeout_s) * 1000);  // NOLINT
  set(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(o.timeout_s) * 1000);                 // NOLINT
  set(curl, CURLOPT_SSL_VERIFYPEER, o.insecure_skip_verify ? 0L : 1L);
  set(curl, CURLOPT_SSL_VERIFYHOST, o.insecure_skip_verify ? 0L : 2L);
  if (!o.ca_file.empty()) {
    set(curl, CURLOPT_CAINFO, o.ca_file.c_str());
  }
  if (!o.cert_file.empty()) {
    set(curl, CURLOPT_SSLCERT, o.cert_file.c_str());
    set(curl, CURLOPT_SSLKEY, (o.key_file.empty() ? o.cert_file : o.key_file).c_str());
  }
  if (!o.pinned_pubkey.empty()) {
    set(curl, CURLOPT_PINNEDPUBLICKEY, o.pinned_pubkey.c_str());
  }
  set(curl, CURLOPT_WRITEFUNCTION, &onWrite);
  set(curl, CURLOPT_XFERINFOFUNCTION, &onProgress);
  set(curl, CURLOPT_NOPROGRESS, 0L);
  return c;
}

std::string HttpsClient::escape(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) != 0 || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

Result<HttpResponse> HttpsClient::post(std::string_view path, std::string_view body,
                                       std::string_view encoding, std::stop_token stop) {
  return perform(path, &body, encoding, std::size_t{1} << 20, std::move(stop));
}

Result<HttpResponse> HttpsClient::get(std::string_view path_and_query, std::size_t max_body_bytes,
                                      std::stop_token stop) {
  return perform(path_and_query, nullptr, {}, max_body_bytes, std::move(stop));
}

Result<HttpResponse> HttpsClient::perform(std::string_view path, const std::string_view* body,
                                          std::string_view encoding, std::size_t max_body_bytes,
                                          std::stop_token stop) {
  const CurlApi& api = *h_->api;
  CURL* curl = h_->curl;
  auto set = api.easy_setopt;
  const std::string url = options_.base_url + std::string(path);
  Transfer t;
  t.max_body = max_body_bytes;
  t.stop = std::move(stop);
  curl_slist* headers = nullptr;
  headers = api.slist_append(headers, "Accept: application/json");
  headers = api.slist_append(headers, "Expect:");  // no 100-continue round trip
  if (body != nullptr) {
    headers = api.slist_append(headers, "Content-Type: application/json");
    if (!encoding.empty()) {
      headers = api.slist_append(headers, ("Content-Encoding: " + std::string(encoding)).c_str());
    }
    set(curl, CURLOPT_POST, 1L);
    set(curl, CURLOPT_POSTFIELDS, body->data());
    set(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  } else {
    set(curl, CURLOPT_HTTPGET, 1L);
  }
  set(curl, CURLOPT_URL, url.c_str());
  set(curl, CURLOPT_HTTPHEADER, headers);
  set(curl, CURLOPT_WRITEDATA, &t);
  set(curl, CURLOPT_XFERINFODATA, &t);
  h_->errbuf[0] = '\0';
  const CURLcode rc = api.easy_perform(curl);
  set(curl, CURLOPT_HTTPHEADER, static_cast<curl_slist*>(nullptr));
  api.slist_free_all(headers);
  if (rc != CURLE_OK) {
    if (rc == CURLE_ABORTED_BY_CALLBACK) {
      return makeError("stopping", "stopped during a request to " + url);
    }
    if (t.too_large) {
      return makeError("too_large", "the answer of " + url + " is over " +
                                        std::to_string(max_body_bytes) + " bytes");
    }
    const std::string detail = h_->errbuf[0] != '\0' ? h_->errbuf : api.easy_strerror(rc);
    std::string alert = tlsAlert(detail);
    long verify = 0;  // NOLINT(runtime/int): our check of the server's certificate
    api.easy_getinfo(curl, CURLINFO_SSL_VERIFYRESULT, &verify);
    const bool ambiguous = rc == CURLE_SEND_ERROR || rc == CURLE_RECV_ERROR ||
                           rc == CURLE_GOT_NOTHING || rc == CURLE_SSL_CONNECT_ERROR ||
                           (rc == CURLE_PEER_FAILED_VERIFICATION && verify == 0);
    if (alert.empty() && ambiguous && options_.base_url.rfind("https://", 0) == 0) {
      // With TLS 1.3 a server refuses a client certificate after the handshake, and libcurl
      // often reports only the broken pipe: ask the server once more what it objects to.
      alert = probeTlsAlert();
    }
    return makeError("transport", transportError(rc, detail, alert));
  }
  HttpResponse r;
  long status = 0;  // NOLINT(runtime/int)
  api.easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  r.status = status;
  curl_off_t retry_after = 0;
  if (api.easy_getinfo(curl, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK && retry_after > 0) {
    r.retry_after_s = retry_after;
  }
  r.body = std::move(t.body);
  return r;
}

std::string HttpsClient::probeTlsAlert() {
  const auto& o = options_;
  const auto probe =
      probeTls(o.base_url, o.ca_file, o.cert_file, o.key_file, !o.insecure_skip_verify,
               std::chrono::seconds(std::max(1, o.connect_timeout_s)));
  return probe.alert;
}

std::string HttpsClient::transportError(int code, const std::string& detail,
                                        const std::string& alert) const {
  const std::string& base = options_.base_url;
  if (!alert.empty() && (alert.find("certificate") != std::string::npos ||
                         alert.find("unknown ca") != std::string::npos ||
                         alert.find("handshake failure") != std::string::npos ||
                         alert.find("access denied") != std::string::npos)) {
    // The server refused the certificate we presented (or the lack of one).
    const std::string what =
        options_.cert_file.empty()
            ? "this agent presents no client certificate: set https.cert_file and https.key_file"
            : "check https.cert_file '" + options_.cert_file +
                  "': signed by the CA the centre trusts, not expired, not revoked";
    return "the HTTPS server at " + base + " refused the TLS connection (alert: " + alert +
           "): " + what + kDoctor;
  }
  switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
      return "cannot resolve the host name of " + base + " (" + detail +
             "): check https.base_url and the store's DNS" + kDoctor;
    case CURLE_COULDNT_CONNECT:
      return "HTTPS endpoint unreachable at " + base + " (" + detail +
             "): is it running, is https.base_url right, does a firewall block it?" + kDoctor;
    case CURLE_OPERATION_TIMEDOUT:
      return "no answer from " + base + " in time (" + detail +
             "): a slow or overloaded centre, or a firewall dropping the traffic; retrying with "
             "backoff (https.timeout)";
    case CURLE_PEER_FAILED_VERIFICATION:
      return "the server certificate of " + base + " is not trusted (" + detail +
             "): check https.ca_file (does it sign the server's certificate, for this host "
             "name, still valid?); a certificate from another CA may be a man in the middle" +
             kDoctor;
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
      return "the server at " + base +
             " presented a public key that does not match https.pinned_pubkey: a man in the "
             "middle, or the centre changed its key (then update https.pinned_pubkey)";
    case CURLE_SSL_CERTPROBLEM:
      return "cannot use the client certificate (" + detail +
             "): check https.cert_file and https.key_file (PEM, readable, a matching pair)";
    case CURLE_SSL_CACERT_BADFILE:
      return "cannot read the CA certificates (" + detail + "): check https.ca_file";
    case CURLE_SSL_CONNECT_ERROR:
      return "TLS handshake with " + base + " failed (" + detail +
             "): check https.ca_file, https.cert_file and https.key_file" + kDoctor;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
      return "the connection to " + base + " was closed without an answer (" + detail +
             "); retrying with backoff";
    default:
      return "request to " + base + " failed: " + detail + kDoctor;
  }
}

}  // namespace omniedge::sync
