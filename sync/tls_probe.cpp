#include "sync/tls_probe.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <memory>

namespace omniedge::sync {
namespace {

struct Target {
  std::string host;
  std::string port;
};

Target targetOf(const std::string& url) {
  const auto sep = url.find("://");
  const std::string scheme = sep == std::string::npos ? "" : url.substr(0, sep);
  std::string rest = sep == std::string::npos ? url : url.substr(sep + 3);
  rest = rest.substr(0, rest.find('/'));
  Target t;
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    t.host = rest.substr(1, close == std::string::npos ? std::string::npos : close - 1);
    if (close != std::string::npos && close + 1 < rest.size() && rest[close + 1] == ':') {
      t.port = rest.substr(close + 2);
    }
  } else {
    const auto colon = rest.rfind(':');
    t.host = rest.substr(0, colon);
    if (colon != std::string::npos) {
      t.port = rest.substr(colon + 1);
    }
  }
  if (t.port.empty()) {
    t.port = scheme == "mqtts" || scheme == "ssl" ? "8883" : "443";
  }
  return t;
}

int connectTo(const Target& t, std::chrono::milliseconds timeout, std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (const int rc = getaddrinfo(t.host.c_str(), t.port.c_str(), &hints, &res); rc != 0) {
    error = gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      continue;
    }
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      error = "cannot connect";
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  return fd;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

void onInfo(const SSL* ssl, int where, int ret) {
  // Only alerts the peer sent (SSL_CB_READ_ALERT shares its SSL_CB_ALERT bit with ours).
  if ((where & SSL_CB_ALERT) != 0 && (where & SSL_CB_READ) != 0) {
    auto* alert = static_cast<std::string*>(SSL_get_app_data(ssl));
    if (alert != nullptr && (ret & 0xff) != 0) {  // 0: close_notify, not a refusal
      *alert = lower(SSL_alert_desc_string_long(ret));
    }
  }
}

// One attempt; `max_tls12` caps the version (a refused client certificate is then an alert in
// the handshake).
TlsProbeResult attempt(const Target& t, const std::string& ca_file, const std::string& cert_file,
                       const std::string& key_file, bool verify, std::chrono::milliseconds timeout,
                       bool max_tls12) {
  TlsProbeResult r;
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        &SSL_CTX_free);
  if (!ctx) {
    r.error = "no TLS context";
    return r;
  }
  if (max_tls12) {
    SSL_CTX_set_max_proto_version(ctx.get(), TLS1_2_VERSION);
  }
  if (verify) {
    if (ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx.get()) != 1
                        : SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1) {
      r.error = "cannot load the CA certificates";
      ERR_clear_error();
      return r;
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  if (!cert_file.empty() &&
      (SSL_CTX_use_certificate_chain_file(ctx.get(), cert_file.c_str()) != 1 ||
       SSL_CTX_use_PrivateKey_file(ctx.get(), (key_file.empty() ? cert_file : key_file).c_str(),
                                   SSL_FILETYPE_PEM) != 1)) {
    r.error = "cannot load the client certificate or key";
    ERR_clear_error();
    return r;
  }
  const int fd = connectTo(t, timeout, r.error);
  if (fd < 0) {
    return r;
  }
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), &SSL_free);
  std::string alert;
  SSL_set_app_data(ssl.get(), &alert);
  SSL_set_info_callback(ssl.get(), &onInfo);
  SSL_set_fd(ssl.get(), fd);
  unsigned char ip[sizeof(in6_addr)];
  if (inet_pton(AF_INET, t.host.c_str(), ip) == 1 || inet_pton(AF_INET6, t.host.c_str(), ip) == 1) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), t.host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl.get(), t.host.c_str());
    SSL_set1_host(ssl.get(), t.host.c_str());
  }
  if (SSL_connect(ssl.get()) == 1) {
    r.handshake_ok = true;
    // TLS 1.3: the verdict on our certificate comes after the handshake.
    char byte = 0;
    (void)SSL_read(ssl.get(), &byte, 1);
  } else if (verify) {
    const long v = SSL_get_verify_result(ssl.get());  // NOLINT(runtime/int)
    if (v != X509_V_OK) {
      r.verify_error = X509_verify_cert_error_string(v);
    }
  }
  ERR_clear_error();
  r.alert = alert;
  SSL_set_app_data(ssl.get(), nullptr);
  close(fd);
  return r;
}

}  // namespace

TlsProbeResult probeTls(const std::string& url, const std::string& ca_file,
                        const std::string& cert_file, const std::string& key_file, bool verify,
                        std::chrono::milliseconds timeout) {
  const Target t = targetOf(url);
  auto r = attempt(t, ca_file, cert_file, key_file, verify, timeout, true);
  if (r.alert == "protocol version") {
    r = attempt(t, ca_file, cert_file, key_file, verify, timeout, false);
  }
  return r;
}

std::string describeCertificateRefusal(const std::string& who, const std::string& url,
                                       const std::string& alert, const std::string& cert_file,
                                       const std::string& cert_key, const std::string& key_key) {
  const bool about_us = alert.find("certificate") != std::string::npos ||
                        alert.find("unknown ca") != std::string::npos ||
                        alert.find("handshake failure") != std::string::npos ||
                        alert.find("access denied") != std::string::npos;
  if (!about_us) {
    return "";
  }
  const std::string what =
      cert_file.empty()
          ? "this agent presents no client certificate: set " + cert_key + " and " + key_key
          : "check " + cert_key + " '" + cert_file + "': signed by the CA the " + who +
                " trusts, not expired, not revoked";
  return "the " + who + " at " + url + " refused the TLS connection (alert: " + alert +
         "): " + what;
}

}  // namespace omniedge::sync
