#include "cli/doctor.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string_view>
#include <thread>
#include <utility>

#include "agent/ingest/pii.h"
#include "agent/store/buffer.h"
#include "agent/store/buffer_reader.h"
#include "agent/store/schema.h"
#include "cli/command.h"
#include "cli/control_client.h"
#include "cli/json_view.h"
#include "sync/tls_probe.h"

namespace omniedge {
namespace {

namespace fs = std::filesystem;
using Outcome = DoctorCheck::Outcome;
using SteadyClock = std::chrono::steady_clock;
using Deadline = SteadyClock::time_point;

constexpr auto kNetworkTimeout = std::chrono::seconds(3);
constexpr int64_t kCertWarnDays = 30;
constexpr std::time_t kClockFloor = 1704067200;  // 2024-01-01T00:00:00Z

DoctorCheck ok(std::string name, std::string detail) {
  return DoctorCheck{std::move(name), Outcome::kOk, std::move(detail)};
}
DoctorCheck warn(std::string name, std::string detail) {
  return DoctorCheck{std::move(name), Outcome::kWarn, std::move(detail)};
}
DoctorCheck fail(std::string name, std::string detail) {
  return DoctorCheck{std::move(name), Outcome::kFail, std::move(detail)};
}

std::string humanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  std::size_t unit = 0;
  while (v >= 1024.0 && unit + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), unit == 0 ? "%.0f %s" : "%.1f %s", v, kUnits[unit]);
  return buf;
}

std::string errnoText(int err) { return std::strerror(err); }

/// The last OpenSSL error queued on this thread, or `fallback`.
std::string opensslError(const std::string& fallback) {
  const unsigned long e = ERR_get_error();  // NOLINT(runtime/int): OpenSSL's type
  ERR_clear_error();
  if (e == 0) {
    return fallback;
  }
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

/// "error:0A00045C:SSL routines::tlsv13 alert certificate required" -> "certificate required":
/// what a TLS peer said about our certificate, if it said anything ("" otherwise).
std::string tlsAlert(const std::string& error) {
  const auto at = error.find("alert ");
  if (at == std::string::npos) {
    return "";
  }
  std::string alert = error.substr(at + 6);
  const auto end = alert.find_first_of(":,\n");
  if (end != std::string::npos) {
    alert.resize(end);
  }
  return alert;
}

/// The directory itself, or its nearest existing ancestor (for statvfs on a missing data dir).
fs::path existingAncestor(fs::path p) {
  std::error_code ec;
  p = fs::absolute(p, ec);
  while (!p.empty() && !fs::exists(p, ec) && p.has_parent_path() && p.parent_path() != p) {
    p = p.parent_path();
  }
  return p;
}

// ---- local checks -------------------------------------------------------------------------

// Whether the daemon (the data dir's owner) can write its data dir, found without writing to
// it: the technician's account may only read it, and a check must not leave traces.
DoctorCheck checkDataDir(const fs::path& dir) {
  const std::string name = "data dir";
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    if (ec == std::errc::permission_denied) {
      return warn(name, "cannot look into " + dir.parent_path().string() +
                            ": permission denied (run as root or a member of the service's group)");
    }
    const fs::path parent = existingAncestor(dir);
    if (!parent.empty() && ::access(parent.c_str(), W_OK) == 0) {
      return warn(name, dir.string() + " does not exist yet (the daemon creates it on start)");
    }
    return fail(name, dir.string() + " does not exist and " + parent.string() +
                          " is not writable: create it for the user the daemon runs as");
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return fail(name, dir.string() + " is not a directory");
  }
  struct statvfs vfs {};
  if (::statvfs(dir.c_str(), &vfs) == 0 && (vfs.f_flag & ST_RDONLY) != 0) {
    return fail(name, dir.string() +
                          " is on a read-only file system: the daemon cannot store "
                          "events");
  }
  const std::string owner = store::ownerText(st);
  if ((st.st_mode & S_IWUSR) == 0) {
    return fail(name, dir.string() + " (" + owner + ") is not writable by its owner");
  }
  // Files the daemon cannot open because someone else created them (a CLI run as root).
  std::vector<std::string> foreign;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    struct stat fst {};
    if (::lstat(entry.path().c_str(), &fst) == 0 && fst.st_uid != st.st_uid &&
        entry.path().filename().string().rfind("buffer.", 0) == 0) {
      foreign.push_back(entry.path().filename().string() + " (" + store::ownerText(fst) + ")");
    }
  }
  if (!foreign.empty()) {
    std::string list;
    for (const auto& f : foreign) {
      list += (list.empty() ? "" : ", ") + f;
    }
    return fail(name, "in " + dir.string() + " (" + owner + "), " + list +
                          " belong to another user: the daemon may be unable to open them; "
                          "chown them to the data dir's owner");
  }
  const uid_t me = ::geteuid();
  if (me == st.st_uid && ::faccessat(AT_FDCWD, dir.c_str(), W_OK, AT_EACCESS) != 0) {
    return fail(name, dir.string() + " (" + owner + ") is not writable: " + errnoText(errno));
  }
  return ok(name, dir.string() + " (" + owner + ") is writable by its owner" +
                      (me == st.st_uid || me == 0 ? "" : " (checked without writing)"));
}

DoctorCheck checkFreeDisk(const fs::path& dir, int64_t min_free) {
  const std::string name = "free disk";
  const fs::path where = existingAncestor(dir);
  struct statvfs st {};
  if (where.empty() || ::statvfs(where.c_str(), &st) != 0) {
    return fail(name, "cannot read the free space of " + dir.string() + ": " + errnoText(errno));
  }
  const uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  const uint64_t total = static_cast<uint64_t>(st.f_blocks) * st.f_frsize;
  const uint64_t min = min_free > 0 ? static_cast<uint64_t>(min_free) : 0;
  const std::string text = humanBytes(free_bytes) + " free of " + humanBytes(total) + " in " +
                           where.string() + " (buffer.min_free_disk " + humanBytes(min) + ")";
  if (free_bytes < min) {
    return fail(name, text +
                          ": below the minimum, the buffer evicts beacon events and refuses POS "
                          "and kiosk events");
  }
  if (free_bytes < 2 * min) {
    return warn(name, text + ": less than twice the minimum");
  }
  return ok(name, text);
}

// The schema version of each SQLite file against what this omniedge knows: a newer one stops
// the daemon's start (docs/reliability.md, "Upgrades and schema versions").
DoctorCheck checkSchemaVersions(const fs::path& dir) {
  const std::string name = "schema versions";
  if (store::bufferOwner(dir) == store::Owner::kDaemon) {
    return ok(name, "the running daemon opened its files, so it knows their versions");
  }
  const std::pair<const char*, int> files[] = {{"buffer.db", store::schema::kBuffer},
                                               {"profiles.db", store::schema::kProfiles},
                                               {"inbox.db", store::schema::kInbox},
                                               {"visits.db", store::schema::kVisits}};
  std::string seen;
  for (const auto& [file, known] : files) {
    const auto v = store::schema::peekVersion(dir / file);
    if (!v) {
      continue;
    }
    if (*v > known) {
      return fail(name, store::schema::newerMessage(dir / file, *v, known));
    }
    seen += (seen.empty() ? "" : ", ") + std::string(file) + " " + std::to_string(*v) +
            (*v < known ? " (upgraded to " + std::to_string(known) + " at the next start)" : "");
  }
  return ok(name, seen.empty() ? "no files yet" : seen);
}

DoctorCheck checkBuffer(const fs::path& dir) {
  const std::string name = "buffer integrity";
  const fs::path file = dir / "buffer.db";
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    return ok(name, "no buffer yet (" + file.string() + " does not exist)");
  }
  auto db = store::openReadOnly(dir);
  if (!db) {
    return fail(name, db.error().message);
  }
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db->get(), "PRAGMA quick_check", -1, &st, nullptr) != SQLITE_OK) {
    return fail(name, file.string() + ": " + sqlite3_errmsg(db->get()));
  }
  std::vector<std::string> rows;
  int rc = SQLITE_ROW;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    rows.emplace_back(text != nullptr ? text : "");
  }
  std::string err = rc == SQLITE_DONE ? "" : sqlite3_errmsg(db->get());
  sqlite3_finalize(st);
  if (!err.empty()) {
    return fail(name, file.string() + ": quick_check stopped: " + err);
  }
  if (rows.size() == 1 && rows[0] == "ok") {
    return ok(name, "quick_check ok (" + file.string() + ", " +
                        humanBytes(fs::file_size(file, ec)) + ")");
  }
  std::string said;
  for (std::size_t i = 0; i < rows.size() && i < 5; ++i) {
    said += (i == 0 ? "" : "; ") + rows[i];
  }
  if (rows.size() > 5) {
    said += "; ... (" + std::to_string(rows.size()) + " problems)";
  }
  return fail(name, file.string() + ": quick_check found: " + said +
                        " (the daemon moves a corrupt buffer aside and salvages it on start)");
}

DoctorCheck checkDaemon(const std::vector<std::string>& sockets, const fs::path& dir) {
  const std::string name = "daemon";
  std::string seen;
  for (const auto& path : sockets) {
    auto answer = controlRequest(path, {{"cmd", "status"}}, 2000);
    if (answer) {
      const auto& st = cli::member(*answer, "status");
      if (!cli::flag(*answer, "ok") || !st.is_object()) {
        return warn(name, "the daemon on " + path +
                              " refused a status request: " + cli::str(*answer, "error", "?"));
      }
      return ok(name, "daemon running (pid " + std::to_string(cli::num(st, "pid")) + ", version " +
                          cli::str(st, "version", "?") + ", control socket " + path + ")");
    }
    seen += (seen.empty() ? "" : "; ") + answer.error().message;
  }
  std::string detail = "daemon not running (" + seen + ")";
  if (store::bufferOwner(dir) == store::Owner::kDaemon) {
    detail = "a daemon holds the buffer but does not answer (" + seen + ")";
  } else {
    std::error_code ec;
    if (fs::exists(dir / "buffer.lock", ec)) {
      detail += "; " + (dir / "buffer.lock").string() +
                " is left from a run that ended uncleanly (the next start checks the buffer)";
    }
  }
  return warn(name, detail);
}

DoctorCheck checkPiiKey(const std::string& path) {
  const std::string name = "pii key";
  if (path.empty()) {
    return warn(name,
                "identity.hmac_key_file is not set: e-mail and phone hashes are plain SHA-256, "
                "which can be brute-forced");
  }
  auto key = PiiHasher::readKeyFile(path);
  if (!key) {
    return fail(name, key.error().message);
  }
  return ok(name,
            "HMAC-SHA256 with the key in " + path + " (" + std::to_string(key->size()) + " bytes)");
}

// Phone numbers are normalised by a module loaded on first use (agent/ingest/phone_module.h): a
// missing one makes the daemon refuse every event that may hold a phone number.
DoctorCheck checkPhoneModule(const std::string& configured, const std::string& region) {
  const std::string name = "phone numbers";
  const std::string path = PiiHasher::phoneModulePath(configured);
  PiiHasher hasher("", region, DataPiiPolicy::kHash, configured);
  auto probe = hasher.normalisePhone("+44 20 7946 0958");
  if (!probe && probe.error().code == "io") {
    return fail(name, probe.error().message +
                          ": events that may hold a phone number are refused; reinstall omniedge "
                          "or set identity.phone_module");
  }
  return ok(name, "libphonenumber module " + path +
                      (region.empty() ? ", numbers without a country code refused "
                                        "(identity.default_region not set)"
                                      : ", national numbers read as " + region));
}

std::string utcText(std::time_t t, bool with_time) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), with_time ? "%Y-%m-%dT%H:%M:%SZ" : "%Y-%m-%d", &tm);
  return buf;
}

DoctorCheck checkClock() {
  const std::string name = "clock";
  const std::time_t now = std::time(nullptr);
  if (now < kClockFloor) {
    return fail(name, "the system clock says " + utcText(now, true) +
                          ", before 2024-01-01: set the time (NTP), or TLS and event times break");
  }
  return ok(name, "system clock " + utcText(now, true));
}

// ---- certificates -------------------------------------------------------------------------

std::string asn1Date(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) {
    return "?";
  }
  char buf[16];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d", &tm);
  return buf;
}

std::string subjectName(X509* cert) {
  char buf[256] = {0};
  X509_NAME* subject = X509_get_subject_name(cert);
  if (X509_NAME_get_text_by_NID(subject, NID_commonName, buf, sizeof(buf)) > 0) {
    return buf;
  }
  X509_NAME_oneline(subject, buf, sizeof(buf));
  return buf;
}

/// Whole days from now to `t` (negative when `t` is past).
int64_t daysFromNow(const ASN1_TIME* t) {
  int days = 0;
  int secs = 0;
  if (ASN1_TIME_diff(&days, &secs, nullptr, t) != 1) {
    return 0;
  }
  return days;
}

DoctorCheck checkCertificate(const std::string& key, const std::string& path) {
  const std::string name = "certificate " + key;
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(path.c_str(), "r"), &BIO_free);
  if (!bio) {
    ERR_clear_error();
    return fail(name, "cannot read " + path + ": " + errnoText(errno));
  }
  struct Seen {
    std::string subject;
    std::string not_after;
    std::string not_before;
    int64_t days_left;
    bool not_yet_valid;
  };
  std::vector<Seen> certs;
  for (;;) {
    X509* raw = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (raw == nullptr) {
      break;
    }
    std::unique_ptr<X509, decltype(&X509_free)> cert(raw, &X509_free);
    const ASN1_TIME* not_after = X509_get0_notAfter(cert.get());
    const ASN1_TIME* not_before = X509_get0_notBefore(cert.get());
    Seen s;
    s.subject = subjectName(cert.get());
    s.not_after = asn1Date(not_after);
    s.not_before = asn1Date(not_before);
    s.not_yet_valid = X509_cmp_current_time(not_before) > 0;
    s.days_left = X509_cmp_current_time(not_after) <= 0 ? -1 : daysFromNow(not_after);
    certs.push_back(std::move(s));
  }
  ERR_clear_error();  // the end of the PEM data is reported as an error
  if (certs.empty()) {
    return fail(name, path + " holds no readable PEM certificate");
  }
  // The certificate that expires first (or is not valid yet) decides.
  const Seen* worst = &certs.front();
  for (const auto& c : certs) {
    if (c.not_yet_valid && !worst->not_yet_valid) {
      worst = &c;
    } else if (c.not_yet_valid == worst->not_yet_valid && c.days_left < worst->days_left) {
      worst = &c;
    }
  }
  const std::string of = certs.size() == 1
                             ? path + " (" + worst->subject + ")"
                             : path + " (" + std::to_string(certs.size()) +
                                   " certificates; first to expire: " + worst->subject + ")";
  if (worst->not_yet_valid) {
    return fail(name,
                of + " is not valid before " + worst->not_before + ": is the system clock right?");
  }
  if (worst->days_left < 0) {
    return fail(name, of + " expired on " + worst->not_after);
  }
  if (worst->days_left < kCertWarnDays) {
    return warn(name, of + " expires on " + worst->not_after + ", in " +
                          std::to_string(worst->days_left) + " days");
  }
  return ok(name, of + " valid until " + worst->not_after);
}

// ---- network ------------------------------------------------------------------------------

int msLeft(Deadline deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

struct Address {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

/// getaddrinfo on a helper thread, so that a hanging resolver cannot hold the caller past
/// `deadline` (the thread is left to finish on its own).
Result<std::vector<Address>> resolve(const std::string& host, uint16_t port, Deadline deadline) {
  struct Lookup {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    int rc = 0;
    std::vector<Address> addresses;
  };
  auto lookup = std::make_shared<Lookup>();
  std::thread([lookup, host, port] {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    std::vector<Address> found;
    for (addrinfo* a = res; rc == 0 && a != nullptr; a = a->ai_next) {
      Address addr;
      std::memcpy(&addr.addr, a->ai_addr, a->ai_addrlen);
      addr.len = a->ai_addrlen;
      found.push_back(addr);
    }
    if (res != nullptr) {
      ::freeaddrinfo(res);
    }
    std::lock_guard lock(lookup->mu);
    lookup->rc = rc;
    lookup->addresses = std::move(found);
    lookup->done = true;
    lookup->cv.notify_all();
  }).detach();
  std::unique_lock lock(lookup->mu);
  if (!lookup->cv.wait_until(lock, deadline, [&] { return lookup->done; })) {
    return makeError("timeout", "resolving " + host + " timed out");
  }
  if (lookup->rc != 0) {
    return makeError("io", "cannot resolve " + host + ": " + ::gai_strerror(lookup->rc));
  }
  if (lookup->addresses.empty()) {
    return makeError("io", "cannot resolve " + host + ": no address");
  }
  return std::move(lookup->addresses);
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

/// A non-blocking TCP connection to host:port, tried address by address until `deadline`.
Result<Fd> tcpConnect(const std::string& host, uint16_t port, Deadline deadline) {
  auto addresses = resolve(host, port, deadline);
  if (!addresses) {
    return addresses.error();
  }
  std::string last_error = "no address tried";
  for (const auto& a : *addresses) {
    Fd fd(::socket(a.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) {
      last_error = errnoText(errno);
      continue;
    }
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&a.addr), a.len) == 0) {
      return fd;
    }
    if (errno != EINPROGRESS) {
      last_error = errnoText(errno);
      continue;
    }
    pollfd p{fd.get(), POLLOUT, 0};
    const int ready = ::poll(&p, 1, msLeft(deadline));
    if (ready == 0) {
      last_error = "timed out after " + std::to_string(kNetworkTimeout.count()) + " s";
      break;
    }
    int err = 0;
    socklen_t len = sizeof(err);
    if (ready < 0 || ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
      last_error = errnoText(errno);
      continue;
    }
    if (err != 0) {
      last_error = errnoText(err);
      continue;
    }
    return fd;
  }
  return makeError("io", last_error);
}

struct TlsSettings {
  std::string ca_file;
  std::string ca_key;  // the config key naming ca_file, for messages
  std::string cert_file;
  std::string key_file;
  bool verify = true;
};

using SslCtxPtr = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;
using SslPtr = std::unique_ptr<SSL, decltype(&SSL_free)>;

/// One connection, with or without TLS, with deadline-bounded reads and writes.
class Connection {
 public:
  Connection(Fd fd) : fd_(std::move(fd)) {}  // NOLINT: a plain connection

  /// The TLS handshake, verifying the chain and the host name when `tls.verify`. On success
  /// `summary` says the protocol and the server certificate.
  Result<void> startTls(const std::string& host, const TlsSettings& tls, Deadline deadline,
                        std::string& summary) {
    ERR_clear_error();
    ctx_.reset(SSL_CTX_new(TLS_client_method()));
    if (!ctx_) {
      return makeError("tls", opensslError("cannot create a TLS context"));
    }
    if (tls.verify) {
      if (!tls.ca_file.empty()) {
        if (SSL_CTX_load_verify_locations(ctx_.get(), tls.ca_file.c_str(), nullptr) != 1) {
          return makeError("tls", "cannot load " + tls.ca_key + " '" + tls.ca_file +
                                      "': " + opensslError("unreadable"));
        }
      } else if (SSL_CTX_set_default_verify_paths(ctx_.get()) != 1) {
        return makeError("tls", "cannot load the system CA store: " + opensslError("?"));
      }
      SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
    } else {
      SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_NONE, nullptr);
    }
    if (!tls.cert_file.empty()) {
      const std::string& key_file = tls.key_file.empty() ? tls.cert_file : tls.key_file;
      if (SSL_CTX_use_certificate_chain_file(ctx_.get(), tls.cert_file.c_str()) != 1) {
        return makeError("tls", "cannot load the client certificate '" + tls.cert_file +
                                    "': " + opensslError("unreadable"));
      }
      if (SSL_CTX_use_PrivateKey_file(ctx_.get(), key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
          SSL_CTX_check_private_key(ctx_.get()) != 1) {
        return makeError(
            "tls", "cannot use the client key '" + key_file + "': " + opensslError("unreadable"));
      }
    }
    ssl_.reset(SSL_new(ctx_.get()));
    if (!ssl_ || SSL_set_fd(ssl_.get(), fd_.get()) != 1) {
      return makeError("tls", opensslError("cannot create a TLS session"));
    }
    unsigned char ip[sizeof(in6_addr)];
    const bool is_ip =
        ::inet_pton(AF_INET, host.c_str(), ip) == 1 || ::inet_pton(AF_INET6, host.c_str(), ip) == 1;
    if (is_ip) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_.get(), host.c_str());
      SSL_set1_host(ssl_.get(), host.c_str());
    }
    for (;;) {
      ERR_clear_error();
      const int rc = SSL_connect(ssl_.get());
      if (rc == 1) {
        break;
      }
      const int err = SSL_get_error(ssl_.get(), rc);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        if (!waitFor(err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
          return makeError("timeout", "TLS handshake timed out");
        }
        continue;
      }
      const long verify = SSL_get_verify_result(ssl_.get());  // NOLINT(runtime/int)
      if (tls.verify && verify != X509_V_OK) {
        return makeError("tls", std::string("certificate verify failed: ") +
                                    X509_verify_cert_error_string(verify));
      }
      if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        return makeError("tls", "TLS handshake failed: connection closed by the server");
      }
      return makeError("tls", "TLS handshake failed: " + opensslError("unknown error"));
    }
    summary = SSL_get_version(ssl_.get());
    if (X509* peer = SSL_get1_peer_certificate(ssl_.get())) {
      summary += ", server certificate " + subjectName(peer) + " valid until " +
                 asn1Date(X509_get0_notAfter(peer));
      X509_free(peer);
    }
    return {};
  }

  /// The server's certificate after startTls() (caller frees), or nullptr.
  X509* peerCertificate() { return ssl_ ? SSL_get1_peer_certificate(ssl_.get()) : nullptr; }

  Result<void> sendAll(std::string_view data, Deadline deadline) {
    while (!data.empty()) {
      ssize_t n = 0;
      if (ssl_) {
        ERR_clear_error();
        const int rc = SSL_write(ssl_.get(), data.data(), static_cast<int>(data.size()));
        if (rc <= 0) {
          const int err = SSL_get_error(ssl_.get(), rc);
          if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            if (!waitFor(err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
              return makeError("timeout", "sending timed out");
            }
            continue;
          }
          return makeError("io", "sending failed: " + opensslError("connection closed"));
        }
        n = rc;
      } else {
        n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (!waitFor(POLLOUT, deadline)) {
              return makeError("timeout", "sending timed out");
            }
            continue;
          }
          return makeError("io", "sending failed: " + errnoText(errno));
        }
      }
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return {};
  }

  /// Exactly `n` bytes, or an error ("closed" when the peer closed the connection first).
  Result<std::string> receive(std::size_t n, Deadline deadline) {
    std::string out;
    char buf[256];
    while (out.size() < n) {
      const std::size_t want = std::min(sizeof(buf), n - out.size());
      ssize_t got = 0;
      if (ssl_) {
        ERR_clear_error();
        const int rc = SSL_read(ssl_.get(), buf, static_cast<int>(want));
        if (rc <= 0) {
          const int err = SSL_get_error(ssl_.get(), rc);
          if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            if (!waitFor(err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
              return makeError("timeout", "no answer");
            }
            continue;
          }
          if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
            return makeError("closed", "the server closed the connection");
          }
          return makeError("io", opensslError("TLS error"));
        }
        got = rc;
      } else {
        got = ::recv(fd_.get(), buf, want, 0);
        if (got < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (!waitFor(POLLIN, deadline)) {
              return makeError("timeout", "no answer");
            }
            continue;
          }
          if (errno == ECONNRESET) {
            return makeError("closed", "the server reset the connection");
          }
          return makeError("io", errnoText(errno));
        }
        if (got == 0) {
          return makeError("closed", "the server closed the connection");
        }
      }
      out.append(buf, static_cast<std::size_t>(got));
    }
    return out;
  }

 private:
  bool waitFor(short events, Deadline deadline) {
    for (;;) {
      pollfd p{fd_.get(), events, 0};
      const int left = msLeft(deadline);
      if (left == 0) {
        return false;
      }
      const int rc = ::poll(&p, 1, left);
      if (rc > 0) {
        return true;
      }
      if (rc == 0 || errno != EINTR) {
        return false;
      }
    }
  }

  Fd fd_;
  SslCtxPtr ctx_{nullptr, &SSL_CTX_free};
  SslPtr ssl_{nullptr, &SSL_free};
};

std::string hostPort(const config::Url& url) {
  const bool v6 = url.host.find(':') != std::string::npos;
  return (v6 ? "[" + url.host + "]" : url.host) + ":" + std::to_string(url.port);
}

void appendMqttString(std::string& out, std::string_view s) {
  out.push_back(static_cast<char>((s.size() >> 8) & 0xff));
  out.push_back(static_cast<char>(s.size() & 0xff));
  out.append(s);
}

/// An MQTT 3.1.1 CONNECT with a clean session and its own client id (never the agent's: that
/// would take over the daemon's persistent session).
std::string mqttConnectPacket(const std::string& username, const std::optional<std::string>& pw) {
  std::random_device rd;
  char id[32];
  std::snprintf(id, sizeof(id), "omniedge-doctor-%06x", rd() & 0xffffffU);
  std::string body;
  appendMqttString(body, "MQTT");
  body.push_back(4);     // protocol level 3.1.1
  uint8_t flags = 0x02;  // clean session
  if (!username.empty()) {
    flags |= 0x80;
    if (pw) {
      flags |= 0x40;
    }
  }
  body.push_back(static_cast<char>(flags));
  body.push_back(0);
  body.push_back(30);  // keepalive 30 s
  appendMqttString(body, id);
  if (!username.empty()) {
    appendMqttString(body, username);
    if (pw) {
      appendMqttString(body, *pw);
    }
  }
  std::string packet(1, static_cast<char>(0x10));
  std::size_t len = body.size();
  do {
    uint8_t byte = len % 128;
    len /= 128;
    if (len > 0) {
      byte |= 0x80;
    }
    packet.push_back(static_cast<char>(byte));
  } while (len > 0);
  return packet + body;
}

std::string connackReason(int rc) {
  switch (rc) {
    case 1:
      return "unacceptable protocol version";
    case 2:
      return "client identifier rejected";
    case 3:
      return "server unavailable";
    case 4:
      return "bad user name or password";
    case 5:
      return "not authorized";
    default:
      return "return code " + std::to_string(rc);
  }
}

Result<std::string> readSecret(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return makeError("io", "cannot read mqtt.password_file '" + path + "'");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) {
    s.pop_back();
  }
  return s;
}

DoctorCheck checkBroker(const config::Config& cfg, const std::string& node,
                        const std::string& name) {
  auto url = config::parseUrl(node);
  if (!url) {
    return fail(name, "mqtt.url: " + url.error().message);
  }
  const bool tls = url->scheme == "mqtts" || url->scheme == "wss";
  const bool websocket = url->scheme == "ws" || url->scheme == "wss";
  const std::string where = url->scheme + "://" + hostPort(*url);
  const Deadline deadline = SteadyClock::now() + kNetworkTimeout;

  auto fd = tcpConnect(url->host, url->port, deadline);
  if (!fd) {
    return fail(name, "cannot connect to " + where + ": " + fd.error().message);
  }
  Connection conn(std::move(*fd));
  std::string detail = where + " reachable";
  if (tls) {
    TlsSettings settings{cfg.str("mqtt.ca_file"), "mqtt.ca_file", cfg.str("mqtt.cert_file"),
                         cfg.str("mqtt.key_file"), true};
    std::string summary;
    if (auto r = conn.startTls(url->host, settings, deadline, summary); !r) {
      return fail(name, where + ": " + r.error().message);
    }
    detail += ", TLS verified (" + summary + ")";
  }
  const std::string username = cfg.str("mqtt.username");
  if (websocket) {
    if (!username.empty()) {
      return warn(name, detail + "; MQTT login as '" + username + "' not tested over WebSocket");
    }
    return ok(name, detail + " (MQTT over WebSocket not tested)");
  }
  std::optional<std::string> password;
  if (!cfg.str("mqtt.password_file").empty()) {
    auto pw = readSecret(cfg.str("mqtt.password_file"));
    if (!pw) {
      return fail(name, detail + ", but " + pw.error().message);
    }
    password = *pw;
  }
  const std::string presented = cfg.str("mqtt.cert_file").empty()
                                    ? "this agent presents no client certificate: set "
                                      "mqtt.cert_file and mqtt.key_file"
                                    : "check mqtt.cert_file '" + cfg.str("mqtt.cert_file") +
                                          "': signed by the CA the broker trusts, not expired, not "
                                          "revoked";
  // With TLS 1.3 the broker judges the client certificate after the handshake and may just
  // close: ask it once more (sync/tls_probe.h) for the alert that says why.
  auto probeAlert = [&]() -> std::string {
    if (!tls) {
      return "";
    }
    const auto probe = sync::probeTls(node, cfg.str("mqtt.ca_file"), cfg.str("mqtt.cert_file"),
                                      cfg.str("mqtt.key_file"), true, kNetworkTimeout);
    return probe.alert;
  };
  if (auto r = conn.sendAll(mqttConnectPacket(username, password), deadline); !r) {
    std::string alert = tlsAlert(r.error().message);
    if (alert.empty()) {
      alert = probeAlert();
    }
    if (!alert.empty()) {
      return fail(name, where + ": the broker refused the TLS connection (alert: " + alert +
                            "): " + presented);
    }
    return fail(name, detail + ", but sending MQTT CONNECT failed: " + r.error().message);
  }
  auto connack = conn.receive(4, deadline);
  if (!connack) {
    std::string alert = tlsAlert(connack.error().message);
    if (alert.empty() && connack.error().code != "timeout") {
      alert = probeAlert();
    }
    if (!alert.empty()) {
      // TLS 1.3: the broker checks the client certificate after the handshake.
      return fail(name, where + ": the broker refused the TLS connection (alert: " + alert +
                            "): " + presented);
    }
    if (connack.error().code == "timeout") {
      return fail(name, detail + ", but no MQTT answer to CONNECT within " +
                            std::to_string(kNetworkTimeout.count()) + " s (is this an MQTT port?)");
    }
    return fail(
        name, detail + ", but the broker did not accept MQTT CONNECT: " + connack.error().message);
  }
  const auto& c = *connack;
  if (static_cast<uint8_t>(c[0]) != 0x20 || c[1] != 2) {
    return fail(name, detail + ", but the answer to MQTT CONNECT is not a CONNACK");
  }
  (void)conn.sendAll(std::string_view("\xe0\x00", 2), deadline);  // DISCONNECT
  const int rc = static_cast<uint8_t>(c[3]);
  const std::string as = username.empty() ? "anonymously" : "as '" + username + "'";
  if (rc == 0) {
    return ok(name, detail + ", MQTT login " + as + " accepted");
  }
  if (rc == 1 || rc == 2) {
    return warn(name, detail + "; login " + as +
                          " not tested: the broker refused the doctor's "
                          "MQTT 3.1.1 CONNECT (" +
                          connackReason(rc) + ")");
  }
  return fail(name, detail + ", but MQTT login " + as + " refused: " + connackReason(rc));
}

/// The SHA-256 of the SubjectPublicKeyInfo of `cert`, base64: how https.pinned_pubkey names a
/// key ("sha256//BASE64").
std::string pubkeyPin(X509* cert) {
  EVP_PKEY* key = X509_get0_pubkey(cert);
  unsigned char* der = nullptr;
  const int len = key != nullptr ? i2d_PUBKEY(key, &der) : -1;
  if (len <= 0) {
    return "";
  }
  unsigned char digest[32];
  unsigned int digest_len = 0;
  EVP_Digest(der, static_cast<std::size_t>(len), digest, &digest_len, EVP_sha256(), nullptr);
  OPENSSL_free(der);
  unsigned char b64[64];
  const int n = EVP_EncodeBlock(b64, digest, static_cast<int>(digest_len));
  return "sha256//" + std::string(reinterpret_cast<char*>(b64), static_cast<std::size_t>(n));
}

/// The pins https.pinned_pubkey allows: its "sha256//…" items, or the pin of the public key in
/// the PEM or DER file it names. Fails with a message naming the file.
Result<std::vector<std::string>> allowedPins(const std::string& pinned) {
  std::vector<std::string> pins;
  if (pinned.rfind("sha256//", 0) == 0) {
    std::size_t from = 0;
    while (from < pinned.size()) {
      auto semi = pinned.find(';', from);
      if (semi == std::string::npos) {
        semi = pinned.size();
      }
      pins.push_back(pinned.substr(from, semi - from));
      from = semi + 1;
    }
    return pins;
  }
  std::ifstream in(pinned, std::ios::binary);
  if (!in) {
    return makeError("io", "https.pinned_pubkey: cannot read '" + pinned + "'");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(text.data(), static_cast<int>(text.size())), &BIO_free);
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    key = d2i_PUBKEY(nullptr, &p, static_cast<long>(text.size()));  // NOLINT(runtime/int)
  }
  ERR_clear_error();
  if (key == nullptr) {
    return makeError("invalid", "https.pinned_pubkey: '" + pinned +
                                    "' holds no public key (PEM or DER SubjectPublicKeyInfo)");
  }
  std::unique_ptr<X509, decltype(&X509_free)> holder(X509_new(), &X509_free);
  X509_set_pubkey(holder.get(), key);
  EVP_PKEY_free(key);
  pins.push_back(pubkeyPin(holder.get()));
  return pins;
}

DoctorCheck checkHttps(const config::Config& cfg) {
  const std::string name = "https endpoint";
  const std::string base = cfg.str("https.base_url");
  if (base.empty()) {
    return ok(name, "not configured (https.base_url is empty)");
  }
  auto url = config::parseUrl(base);
  if (!url) {
    return fail(name, "https.base_url: " + url.error().message);
  }
  const Deadline deadline = SteadyClock::now() + kNetworkTimeout;
  const std::string where = url->scheme + "://" + hostPort(*url);
  auto fd = tcpConnect(url->host, url->port, deadline);
  if (!fd) {
    return fail(name, "cannot connect to " + where + ": " + fd.error().message);
  }
  if (url->scheme != "https") {
    return warn(name, where + " reachable, but plain http: events travel unencrypted");
  }
  const bool skip_verify = cfg.boolean("https.insecure_skip_verify");
  Connection conn(std::move(*fd));
  TlsSettings settings{cfg.str("https.ca_file"), "https.ca_file", cfg.str("https.cert_file"),
                       cfg.str("https.key_file"), !skip_verify};
  std::string summary;
  if (auto r = conn.startTls(url->host, settings, deadline, summary); !r) {
    if (const auto alert = tlsAlert(r.error().message); !alert.empty()) {
      return fail(name, where + ": the server refused the TLS connection (alert: " + alert + ")");
    }
    return fail(name, where + ": " + r.error().message);
  }
  if (const std::string pinned = cfg.str("https.pinned_pubkey"); !pinned.empty()) {
    auto pins = allowedPins(pinned);
    if (!pins) {
      return fail(name, pins.error().message);
    }
    std::unique_ptr<X509, decltype(&X509_free)> peer(conn.peerCertificate(), &X509_free);
    const std::string got = peer ? pubkeyPin(peer.get()) : "";
    if (std::find(pins->begin(), pins->end(), got) == pins->end()) {
      return fail(name, where + " presented the public key " + got +
                            ", which https.pinned_pubkey does not allow: a man in the middle, or "
                            "the centre changed its key (then update https.pinned_pubkey)");
    }
    summary += ", public key pinned";
  }
  // A request shows what TLS alone cannot: with TLS 1.3 the server checks the client
  // certificate after the handshake, and the path may be wrong.
  const std::string path = url->path + "/v1/stores/" + cfg.str("store.id") + "/profiles?limit=1";
  const std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + hostPort(*url) +
                              "\r\nUser-Agent: omniedge-doctor\r\nConnection: close\r\n\r\n";
  const std::string presented = cfg.str("https.cert_file").empty()
                                    ? "this agent presents no client certificate: set "
                                      "https.cert_file and https.key_file"
                                    : "check https.cert_file '" + cfg.str("https.cert_file") +
                                          "': signed by the CA the centre trusts, not expired, "
                                          "not revoked";
  std::string status_line;
  auto sent = conn.sendAll(request, deadline);
  if (sent) {
    for (;;) {
      auto c = conn.receive(1, deadline);
      if (!c) {
        if (const auto alert = tlsAlert(c.error().message); !alert.empty()) {
          return fail(name, where + ": the server refused the TLS connection (alert: " + alert +
                                "): " + presented);
        }
        if (status_line.empty()) {
          return fail(name, where + " completed the TLS handshake (" + summary +
                                ") but closed the connection without answering (" +
                                c.error().message + "): did it refuse the client certificate? " +
                                presented);
        }
        break;
      }
      if ((*c)[0] == '\n' || status_line.size() > 200) {
        break;
      }
      if ((*c)[0] != '\r') {
        status_line += *c;
      }
    }
  } else {
    // The server may have hung up with an alert that is still to be read.
    std::string alert = tlsAlert(sent.error().message);
    if (alert.empty()) {
      auto c = conn.receive(1, deadline);
      alert = c ? "" : tlsAlert(c.error().message);
    }
    if (!alert.empty()) {
      return fail(name, where + ": the server refused the TLS connection (alert: " + alert +
                            "): " + presented);
    }
    return fail(name, where + " completed the TLS handshake (" + summary +
                          ") but closed the connection before the request was sent (" +
                          sent.error().message + "): did it refuse the client certificate? " +
                          presented);
  }
  const auto space = status_line.find(' ');
  const int status = space != std::string::npos ? std::atoi(status_line.c_str() + space + 1) : 0;
  std::string detail = where + " reachable, TLS verified (" + summary + ")";
  if (skip_verify) {
    detail = where + " reachable (" + summary +
             "), but the server certificate is NOT verified (https.insecure_skip_verify = true)";
  }
  if (status == 401 || status == 403) {
    return fail(name, detail + ", but GET " + path + " answered " + std::to_string(status) +
                          ": the centre does not accept this agent (its client certificate's CN "
                          "must be the store id if the centre checks it)");
  }
  if (status == 404) {
    return fail(name, detail + ", but GET " + path + " answered 404: check https.base_url");
  }
  if (status == 0) {
    return warn(name, detail + ", but no HTTP answer to GET " + path);
  }
  if (skip_verify) {
    return warn(name, detail);
  }
  return ok(name, detail + ", HTTP " + std::to_string(status));
}

/// Blocks SIGPIPE on this thread while TLS writes may hit a closed socket, and swallows any
/// SIGPIPE raised meanwhile.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~SigpipeGuard() {
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    if (sigismember(&pending, SIGPIPE) == 1 && sigismember(&old_, SIGPIPE) == 0) {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGPIPE);
      const timespec zero{0, 0};
      sigtimedwait(&set, nullptr, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t old_{};
};

const char* outcomeName(Outcome o) {
  switch (o) {
    case Outcome::kOk:
      return "ok";
    case Outcome::kWarn:
      return "warn";
    case Outcome::kFail:
      return "fail";
  }
  return "fail";
}

const char* outcomeMark(Outcome o) {
  switch (o) {
    case Outcome::kOk:
      return "\u2713";
    case Outcome::kWarn:
      return "!";
    case Outcome::kFail:
      return "\u2717";
  }
  return "\u2717";
}

}  // namespace

std::vector<DoctorCheck> runDoctorChecks(const config::Config& cfg,
                                         std::vector<std::string> control_sockets) {
  const fs::path dir = cfg.str("data.dir");
  if (control_sockets.empty()) {
    control_sockets = cli::controlSocketCandidates(cfg);
  }
  std::vector<DoctorCheck> checks;
  checks.push_back(checkDataDir(dir));
  checks.push_back(checkFreeDisk(dir, cfg.integer("buffer.min_free_disk")));
  checks.push_back(checkBuffer(dir));
  checks.push_back(checkSchemaVersions(dir));
  checks.push_back(checkDaemon(control_sockets, dir));
  {
    SigpipeGuard guard;
    const auto nodes = cfg.list("mqtt.url");
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      checks.push_back(checkBroker(cfg, nodes[i],
                                   nodes.size() == 1
                                       ? std::string("mqtt broker")
                                       : "mqtt broker (node " + std::to_string(i + 1) + " of " +
                                             std::to_string(nodes.size()) + ")"));
    }
    checks.push_back(checkHttps(cfg));
  }
  bool any_cert = false;
  for (const char* key : {"mqtt.ca_file", "mqtt.cert_file", "https.ca_file", "https.cert_file"}) {
    const std::string& path = cfg.str(key);
    if (!path.empty()) {
      checks.push_back(checkCertificate(key, path));
      any_cert = true;
    }
  }
  if (!any_cert) {
    checks.push_back(ok("certificates", "none configured"));
  }
  checks.push_back(checkClock());
  checks.push_back(checkPiiKey(cfg.str("identity.hmac_key_file")));
  checks.push_back(
      checkPhoneModule(cfg.str("identity.phone_module"), cfg.str("identity.default_region")));
  return checks;
}

int printDoctorReport(const std::vector<DoctorCheck>& checks, bool json, std::ostream& out) {
  bool failed = false;
  for (const auto& c : checks) {
    failed = failed || c.outcome == Outcome::kFail;
  }
  if (json) {
    nlohmann::json doc = {{"ok", !failed}, {"checks", nlohmann::json::array()}};
    for (const auto& c : checks) {
      doc["checks"].push_back(
          {{"name", c.name}, {"outcome", outcomeName(c.outcome)}, {"detail", c.detail}});
    }
    out << doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    for (const auto& c : checks) {
      out << outcomeMark(c.outcome) << " " << c.name << ": " << c.detail << "\n";
    }
  }
  return failed ? 1 : 0;
}

}  // namespace omniedge
