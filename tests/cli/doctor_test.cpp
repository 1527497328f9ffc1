#include "cli/doctor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "agent/config.h"
#include "agent/control_socket.h"
#include "agent/store/buffer.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

namespace {

using omniedge::DoctorCheck;
using omniedge::testing::freePort;
using omniedge::testing::TempDir;
using Outcome = DoctorCheck::Outcome;
using Flags = std::vector<std::pair<std::string, std::string>>;

omniedge::config::Config makeConfig(const TempDir& dir, int broker_port, Flags extra = {}) {
  omniedge::config::Inputs in;
  in.flags = {{"data.dir", (dir / "data").string()},
              {"mqtt.url", "mqtt://127.0.0.1:" + std::to_string(broker_port)}};
  in.flags.insert(in.flags.end(), extra.begin(), extra.end());
  auto cfg = omniedge::config::load(in);
  REQUIRE(cfg.has_value());
  return *cfg;
}

const DoctorCheck& find(const std::vector<DoctorCheck>& checks, const std::string& name) {
  for (const auto& c : checks) {
    if (c.name == name) {
      return c;
    }
  }
  FAIL("no check named " << name);
  throw std::logic_error("unreachable");
}

// A TCP listener on 127.0.0.1; with `connack` >= 0 it answers one MQTT CONNECT with that
// return code, over TLS when `tls` is given.
class FakeBroker {
 public:
  explicit FakeBroker(int connack, SSL_CTX* tls = nullptr) : port_(freePort()) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(listen(fd_, 4) == 0);
    if (connack < 0) {
      return;  // never accepts: the kernel completes the TCP handshake, nobody answers
    }
    thread_ = std::thread([this, connack, tls] {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 5000) <= 0) {
        return;
      }
      const int c = accept(fd_, nullptr, nullptr);
      if (c < 0) {
        return;
      }
      SSL* ssl = nullptr;
      if (tls != nullptr) {
        ssl = SSL_new(tls);
        SSL_set_fd(ssl, c);
        if (SSL_accept(ssl) != 1) {
          SSL_free(ssl);
          close(c);
          return;
        }
      }
      char buf[512];
      const int n = ssl != nullptr ? SSL_read(ssl, buf, sizeof(buf))
                                   : static_cast<int>(recv(c, buf, sizeof(buf), 0));
      if (n > 0 && static_cast<unsigned char>(buf[0]) == 0x10) {
        connect_packet_.assign(buf, static_cast<std::size_t>(n));
        const char ack[4] = {0x20, 0x02, 0x00, static_cast<char>(connack)};
        if (ssl != nullptr) {
          SSL_write(ssl, ack, sizeof(ack));
        } else {
          send(c, ack, sizeof(ack), MSG_NOSIGNAL);
        }
        (ssl != nullptr) ? SSL_read(ssl, buf, sizeof(buf))
                         : static_cast<int>(recv(c, buf, sizeof(buf), 0));  // DISCONNECT
      }
      if (ssl != nullptr) {
        SSL_shutdown(ssl);
        SSL_free(ssl);
      }
      close(c);
    });
  }
  ~FakeBroker() {
    if (thread_.joinable()) {
      thread_.join();
    }
    close(fd_);
  }
  FakeBroker(const FakeBroker&) = delete;
  FakeBroker& operator=(const FakeBroker&) = delete;

  int port() const { return port_; }
  /// What the client sent (valid after destruction of the thread, i.e. after the check ran).
  std::string connectPacket() {
    if (thread_.joinable()) {
      thread_.join();
    }
    return connect_packet_;
  }

 private:
  int port_;
  int fd_ = -1;
  std::thread thread_;
  std::string connect_packet_;
};

struct KeyAndCert {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key{nullptr, &EVP_PKEY_free};
  std::unique_ptr<X509, decltype(&X509_free)> cert{nullptr, &X509_free};
};

// A self-signed certificate for CN `cn` (and SAN IP 127.0.0.1) valid from now + `from_s` to
// now + `to_s` seconds.
KeyAndCert makeCert(const std::string& cn, long from_s, long to_s) {  // NOLINT(runtime/int)
  KeyAndCert kc;
  kc.key.reset(EVP_RSA_gen(2048));
  REQUIRE(kc.key);
  kc.cert.reset(X509_new());
  X509* x = kc.cert.get();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), from_s);
  X509_gmtime_adj(X509_getm_notAfter(x), to_s);
  X509_set_pubkey(x, kc.key.get());
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  for (const auto& [nid, value] : {std::pair{NID_subject_alt_name, "IP:127.0.0.1"},
                                   std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    REQUIRE(ext != nullptr);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  REQUIRE(X509_sign(x, kc.key.get(), EVP_sha256()) > 0);
  return kc;
}

std::string writePem(const TempDir& dir, const std::string& name, X509* cert) {
  const std::string path = (dir / name).string();
  FILE* f = std::fopen(path.c_str(), "w");
  REQUIRE(f != nullptr);
  PEM_write_X509(f, cert);
  std::fclose(f);
  return path;
}

}  // namespace

TEST_CASE("doctor fails when nobody listens on the broker port", "[unit][doctor]") {
  TempDir dir;
  std::filesystem::create_directories(dir / "data");
  const auto checks = omniedge::runDoctorChecks(makeConfig(dir, freePort()));
  const auto& broker = find(checks, "mqtt broker");
  CHECK(broker.outcome == Outcome::kFail);
  CHECK_THAT(broker.detail, Catch::Contains("Connection refused"));
  CHECK(find(checks, "data dir").outcome == Outcome::kOk);
  CHECK(find(checks, "buffer integrity").outcome == Outcome::kOk);
  CHECK_THAT(find(checks, "buffer integrity").detail, Catch::Contains("no buffer yet"));
  CHECK(find(checks, "daemon").outcome == Outcome::kWarn);
  CHECK_THAT(find(checks, "daemon").detail, Catch::Contains("daemon not running"));
  CHECK(find(checks, "https endpoint").outcome == Outcome::kOk);
  CHECK(find(checks, "clock").outcome == Outcome::kOk);
  CHECK(find(checks, "pii key").outcome == Outcome::kWarn);

  std::ostringstream out;
  CHECK(omniedge::printDoctorReport(checks, false, out) == 1);
  CHECK_THAT(out.str(), Catch::Contains("\u2717 mqtt broker: "));
  CHECK_THAT(out.str(), Catch::Contains("\u2713 data dir: "));
  CHECK_THAT(out.str(), Catch::Contains("! pii key: "));
}

TEST_CASE("doctor logs in to a listening broker", "[unit][doctor]") {
  TempDir dir;
  std::filesystem::create_directories(dir / "data");
  SECTION("accepted") {
    FakeBroker broker(0);
    const auto checks = omniedge::runDoctorChecks(makeConfig(dir, broker.port()));
    const auto& b = find(checks, "mqtt broker");
    CHECK(b.outcome == Outcome::kOk);
    CHECK_THAT(b.detail, Catch::Contains("accepted"));
    const std::string packet = broker.connectPacket();
    CHECK_THAT(packet, Catch::Contains("MQTT"));
    CHECK_THAT(packet, Catch::Contains("omniedge-doctor-"));
  }
  SECTION("with a user name and password") {
    dir.write("pw", "s3cret\n");
    FakeBroker broker(0);
    const auto checks = omniedge::runDoctorChecks(
        makeConfig(dir, broker.port(),
                   {{"mqtt.username", "store42"}, {"mqtt.password_file", (dir / "pw").string()}}));
    CHECK(find(checks, "mqtt broker").outcome == Outcome::kOk);
    const std::string packet = broker.connectPacket();
    CHECK_THAT(packet, Catch::Contains("store42"));
    CHECK_THAT(packet, Catch::EndsWith(std::string("\0\x06s3cret", 8)));
  }
  SECTION("login refused") {
    FakeBroker broker(5);
    const auto checks =
        omniedge::runDoctorChecks(makeConfig(dir, broker.port(), {{"mqtt.username", "store42"}}));
    const auto& b = find(checks, "mqtt broker");
    CHECK(b.outcome == Outcome::kFail);
    CHECK_THAT(b.detail, Catch::Contains("not authorized"));
  }
  SECTION("a port that accepts TCP but never answers fails within the time limit") {
    FakeBroker broker(-1);
    const auto start = std::chrono::steady_clock::now();
    const auto checks = omniedge::runDoctorChecks(makeConfig(dir, broker.port()));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    const auto& b = find(checks, "mqtt broker");
    CHECK(b.outcome == Outcome::kFail);
    CHECK_THAT(b.detail, Catch::Contains("no MQTT answer"));
  }
}

TEST_CASE("doctor verifies the broker's TLS certificate", "[unit][doctor]") {
  TempDir dir;
  std::filesystem::create_directories(dir / "data");
  KeyAndCert server = makeCert("127.0.0.1", -3600, 86400 * 365);
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_server_method()),
                                                        &SSL_CTX_free);
  REQUIRE(SSL_CTX_use_certificate(ctx.get(), server.cert.get()) == 1);
  REQUIRE(SSL_CTX_use_PrivateKey(ctx.get(), server.key.get()) == 1);
  FakeBroker broker(0, ctx.get());
  const std::string url = "mqtts://127.0.0.1:" + std::to_string(broker.port());
  SECTION("trusted through mqtt.ca_file") {
    const std::string ca = writePem(dir, "ca.pem", server.cert.get());
    const auto checks = omniedge::runDoctorChecks(
        makeConfig(dir, broker.port(), {{"mqtt.url", url}, {"mqtt.ca_file", ca}}));
    const auto& b = find(checks, "mqtt broker");
    CHECK(b.outcome == Outcome::kOk);
    CHECK_THAT(b.detail, Catch::Contains("TLS verified"));
    CHECK(find(checks, "certificate mqtt.ca_file").outcome == Outcome::kOk);
  }
  SECTION("a certificate nobody vouches for") {
    KeyAndCert other = makeCert("other", -3600, 86400 * 365);
    const std::string ca = writePem(dir, "other.pem", other.cert.get());
    const auto checks = omniedge::runDoctorChecks(
        makeConfig(dir, broker.port(), {{"mqtt.url", url}, {"mqtt.ca_file", ca}}));
    const auto& b = find(checks, "mqtt broker");
    CHECK(b.outcome == Outcome::kFail);
    CHECK_THAT(b.detail, Catch::Contains("certificate verify failed"));
  }
}

TEST_CASE("doctor reports a corrupt buffer", "[unit][doctor]") {
  TempDir dir;
  std::string junk(8192, '\0');
  for (std::size_t i = 0; i < junk.size(); ++i) {
    junk[i] = static_cast<char>((i * 7919) % 251);
  }
  dir.write("data/buffer.db", junk);
  const auto checks = omniedge::runDoctorChecks(makeConfig(dir, freePort()));
  const auto& b = find(checks, "buffer integrity");
  CHECK(b.outcome == Outcome::kFail);
  CHECK_THAT(b.detail, Catch::Contains("not a database"));
}

TEST_CASE("doctor passes a healthy buffer, read-only", "[unit][doctor]") {
  TempDir dir;
  omniedge::store::BufferOptions options;
  options.dir = dir / "data";
  {
    auto buffer = omniedge::store::Buffer::open(options);
    REQUIRE(buffer.has_value());
    (*buffer)->close();
  }
  const auto checks = omniedge::runDoctorChecks(makeConfig(dir, freePort()));
  const auto& b = find(checks, "buffer integrity");
  CHECK(b.outcome == Outcome::kOk);
  CHECK_THAT(b.detail, Catch::Contains("quick_check ok"));
}

TEST_CASE("doctor notes a buffer left by an unclean shutdown", "[unit][doctor]") {
  TempDir dir;
  dir.write("data/buffer.lock", "");
  const auto checks = omniedge::runDoctorChecks(makeConfig(dir, freePort()));
  CHECK_THAT(find(checks, "daemon").detail, Catch::Contains("ended uncleanly"));
}

TEST_CASE("doctor sees a running daemon on the control socket", "[unit][doctor]") {
  TempDir dir;
  std::filesystem::create_directories(dir / "data");
  const auto cfg = makeConfig(dir, freePort());
  const std::string path = (dir / "data" / "omniedge.sock").string();
  SECTION("a daemon that answers") {
    omniedge::ControlServer server(path, [](const nlohmann::json&) {
      return nlohmann::json{{"ok", true}, {"status", {{"pid", 4242}, {"version", "9.9"}}}};
    });
    REQUIRE(server.start().has_value());
    const auto checks = omniedge::runDoctorChecks(cfg, {path});
    CHECK(find(checks, "daemon").outcome == Outcome::kOk);
    CHECK_THAT(find(checks, "daemon").detail, Catch::Contains("daemon running (pid 4242"));
  }
  SECTION("a socket nobody listens on") {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    close(fd);  // bound, never listened: what a killed daemon leaves
    const auto checks = omniedge::runDoctorChecks(cfg, {path});
    CHECK(find(checks, "daemon").outcome == Outcome::kWarn);
    CHECK_THAT(find(checks, "daemon").detail, Catch::Contains("nobody listens"));
  }
}

TEST_CASE("doctor checks the data dir without writing to it", "[unit][doctor]") {
  TempDir dir;
  {
    omniedge::store::BufferOptions options;
    options.dir = dir / "data";
    auto buffer = omniedge::store::Buffer::open(options);
    REQUIRE(buffer.has_value());
    (*buffer)->close();
  }
  const auto listing = [&] {
    std::set<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir / "data")) {
      names.insert(e.path().filename().string());
    }
    return names;
  };
  struct stat before {};
  REQUIRE(stat((dir / "data").c_str(), &before) == 0);
  const auto names = listing();
  const auto checks = omniedge::runDoctorChecks(makeConfig(dir, freePort()));
  const auto& d = find(checks, "data dir");
  CHECK(d.outcome == Outcome::kOk);
  CHECK_THAT(d.detail, Catch::Contains("is writable by its owner"));
  struct stat after {};
  REQUIRE(stat((dir / "data").c_str(), &after) == 0);
  // Nothing created, not even for a moment: the directory was not modified at all.
  CHECK(listing() == names);
  CHECK(after.st_mtim.tv_sec == before.st_mtim.tv_sec);
  CHECK(after.st_mtim.tv_nsec == before.st_mtim.tv_nsec);

  if (geteuid() == 0) {
    SECTION("files the daemon's user does not own are named") {
      REQUIRE(chown((dir / "data").c_str(), 6001, 6001) == 0);
      REQUIRE(chown((dir / "data" / "buffer.db").c_str(), 6001, 6001) == 0);
      dir.write("data/buffer.db-shm", "");  // root's, as a CLI run as root once left it
      const auto again = omniedge::runDoctorChecks(makeConfig(dir, freePort()));
      const auto& bad = find(again, "data dir");
      CHECK(bad.outcome == Outcome::kFail);
      CHECK_THAT(bad.detail, Catch::Contains("buffer.db-shm (root:root"));
      CHECK_THAT(bad.detail, Catch::Contains("chown"));
    }
  }
}

TEST_CASE("doctor checks certificate expiry", "[unit][doctor]") {
  TempDir dir;
  std::filesystem::create_directories(dir / "data");
  const int port = freePort();
  SECTION("expired") {
    KeyAndCert kc = makeCert("old-broker", -86400L * 60, -86400L * 2);
    const std::string pem = writePem(dir, "old.pem", kc.cert.get());
    const auto checks = omniedge::runDoctorChecks(makeConfig(dir, port, {{"mqtt.ca_file", pem}}));
    const auto& c = find(checks, "certificate mqtt.ca_file");
    CHECK(c.outcome == Outcome::kFail);
    CHECK_THAT(c.detail, Catch::Contains("expired on 20"));
    CHECK_THAT(c.detail, Catch::Contains("old-broker"));
  }
  SECTION("expires within 30 days") {
    KeyAndCert kc = makeCert("soon", -86400L, 86400L * 10 + 3600);
    const std::string pem = writePem(dir, "soon.pem", kc.cert.get());
    const auto checks =
        omniedge::runDoctorChecks(makeConfig(dir, port, {{"https.cert_file", pem}}));
    const auto& c = find(checks, "certificate https.cert_file");
    CHECK(c.outcome == Outcome::kWarn);
    CHECK_THAT(c.detail, Catch::Contains("in 10 days"));
  }
  SECTION("valid") {
    KeyAndCert kc = makeCert("fine", -86400L, 86400L * 365);
    const std::string pem = writePem(dir, "fine.pem", kc.cert.get());
    const auto checks = omniedge::runDoctorChecks(makeConfig(dir, port, {{"mqtt.cert_file", pem}}));
    const auto& c = find(checks, "certificate mqtt.cert_file");
    CHECK(c.outcome == Outcome::kOk);
    CHECK_THAT(c.detail, Catch::Contains("valid until"));
  }
  SECTION("unreadable") {
    dir.write("junk.pem", "not a certificate\n");
    const auto checks =
        omniedge::runDoctorChecks(makeConfig(dir, port,
                                             {{"mqtt.cert_file", (dir / "junk.pem").string()},
                                              {"https.ca_file", (dir / "missing.pem").string()}}));
    CHECK(find(checks, "certificate mqtt.cert_file").outcome == Outcome::kFail);
    CHECK(find(checks, "certificate https.ca_file").outcome == Outcome::kFail);
  }
}

TEST_CASE("doctor checks the PII key and free disk", "[unit][doctor]") {
  TempDir dir;
  std::filesystem::create_directories(dir / "data");
  const int port = freePort();
  SECTION("short key") {
    dir.write("short.key", "abc\n");
    const auto checks = omniedge::runDoctorChecks(
        makeConfig(dir, port, {{"identity.hmac_key_file", (dir / "short.key").string()}}));
    CHECK(find(checks, "pii key").outcome == Outcome::kFail);
  }
  SECTION("good key") {
    dir.write("good.key", std::string(32, 'k'));
    const auto checks = omniedge::runDoctorChecks(
        makeConfig(dir, port, {{"identity.hmac_key_file", (dir / "good.key").string()}}));
    CHECK(find(checks, "pii key").outcome == Outcome::kOk);
  }
  SECTION("missing key file") {
    const auto checks = omniedge::runDoctorChecks(
        makeConfig(dir, port, {{"identity.hmac_key_file", (dir / "nope.key").string()}}));
    CHECK(find(checks, "pii key").outcome == Outcome::kFail);
  }
  SECTION("free disk below buffer.min_free_disk") {
    const auto checks =
        omniedge::runDoctorChecks(makeConfig(dir, port, {{"buffer.min_free_disk", "1000000G"}}));
    CHECK(find(checks, "free disk").outcome == Outcome::kFail);
  }
  SECTION("https endpoint without verification warns") {
    FakeBroker endpoint(-1);
    const auto checks = omniedge::runDoctorChecks(makeConfig(
        dir, port, {{"https.base_url", "http://127.0.0.1:" + std::to_string(endpoint.port())}}));
    CHECK(find(checks, "https endpoint").outcome == Outcome::kWarn);
  }
}

TEST_CASE("doctor --json parses and lists every check", "[unit][doctor]") {
  TempDir dir;
  std::filesystem::create_directories(dir / "data");
  FakeBroker broker(0);
  const auto checks = omniedge::runDoctorChecks(makeConfig(dir, broker.port()));
  std::ostringstream out;
  const int code = omniedge::printDoctorReport(checks, true, out);
  const auto doc = nlohmann::json::parse(out.str());
  CHECK(doc["ok"].get<bool>() == (code == 0));
  REQUIRE(doc["checks"].size() == checks.size());
  std::set<std::string> names;
  for (std::size_t i = 0; i < checks.size(); ++i) {
    const auto& c = doc["checks"][i];
    CHECK(c["name"] == checks[i].name);
    CHECK(c["detail"] == checks[i].detail);
    CHECK((c["outcome"] == "ok" || c["outcome"] == "warn" || c["outcome"] == "fail"));
    names.insert(c["name"].get<std::string>());
  }
  for (const char* name : {"data dir", "free disk", "buffer integrity", "daemon", "mqtt broker",
                           "https endpoint", "certificates", "clock", "pii key"}) {
    CHECK(names.count(name) == 1);
  }
  CHECK(code == 0);
}

TEST_CASE("doctor fails when the phone number module is missing, and says what follows",
          "[unit][doctor]") {
  TempDir dir;
  const auto checks = omniedge::runDoctorChecks(
      makeConfig(dir, freePort(), {{"identity.phone_module", (dir / "missing.so").string()}}));
  const auto& phone = find(checks, "phone numbers");
  CHECK(phone.outcome == Outcome::kFail);
  CHECK_THAT(phone.detail, Catch::Contains("missing.so"));
  CHECK_THAT(phone.detail, Catch::Contains("refused"));
}

TEST_CASE("doctor judges the configured phone number module even after the process loaded another",
          "[unit][doctor]") {
  TempDir dir;
  CHECK(find(omniedge::runDoctorChecks(makeConfig(dir, freePort())), "phone numbers").outcome ==
        Outcome::kOk);
  const auto checks = omniedge::runDoctorChecks(
      makeConfig(dir, freePort(), {{"identity.phone_module", (dir / "other.so").string()}}));
  const auto& phone = find(checks, "phone numbers");
  CHECK(phone.outcome == Outcome::kFail);
  CHECK_THAT(phone.detail, Catch::Contains("other.so"));
}

TEST_CASE("doctor finds the phone number module beside the binary", "[unit][doctor]") {
  TempDir dir;
  const auto checks = omniedge::runDoctorChecks(makeConfig(dir, freePort()));
  CHECK(find(checks, "phone numbers").outcome == Outcome::kOk);
}
