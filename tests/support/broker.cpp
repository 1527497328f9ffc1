#include "tests/support/broker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <mqtt/async_client.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>

#include "tests/support/command.h"
#include "tests/support/net.h"

namespace omniedge::testing {
namespace {

constexpr const char* kMosquitto = "/usr/sbin/mosquitto";
constexpr auto kStartTimeout = std::chrono::seconds(10);
constexpr auto kStopTimeout = std::chrono::seconds(5);

// Paho spells mqtt:// as tcp://.
std::string pahoUri(const std::string& url) {
  if (url.rfind("mqtt://", 0) == 0) {
    return "tcp://" + url.substr(7);
  }
  if (url.rfind("mqtts://", 0) == 0) {
    return "ssl://" + url.substr(8);
  }
  return url;
}

bool isGzip(const std::string& data) {
  return data.size() >= 2 && static_cast<unsigned char>(data[0]) == 0x1f &&
         static_cast<unsigned char>(data[1]) == 0x8b;
}

// Returns the input unchanged when it is not a valid gzip stream: the test then sees why.
std::string gunzip(const std::string& data) {
  z_stream stream{};
  if (inflateInit2(&stream, 31) != Z_OK) {
    return data;
  }
  std::string out;
  std::array<char, 64 * 1024> chunk{};
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  int rc = Z_OK;
  while (rc == Z_OK) {
    stream.next_out = reinterpret_cast<Bytef*>(chunk.data());
    stream.avail_out = static_cast<uInt>(chunk.size());
    rc = inflate(&stream, Z_NO_FLUSH);
    if (rc == Z_OK || rc == Z_STREAM_END) {
      out.append(chunk.data(), chunk.size() - stream.avail_out);
    }
  }
  inflateEnd(&stream);
  return rc == Z_STREAM_END ? out : data;
}

std::string randomSuffix() {
  std::random_device rd;
  return std::to_string(rd()) + std::to_string(rd());
}

sockaddr_in loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

void resetAndClose(int fd) {
  linger lin{1, 0};  // close with RST, like a dead link
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin));
  close(fd);
}

bool sendAll(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

}  // namespace

// --- MosquittoBroker --------------------------------------------------------------------------

MosquittoBroker::MosquittoBroker(bool start_now, std::optional<Tls> tls)
    : MosquittoBroker(Options{std::move(tls)}, start_now) {}

MosquittoBroker::MosquittoBroker(const Options& options, bool start_now)
    : port_(freePort()), tls_(options.tls.has_value()) {
  const auto& tls = options.tls;
  std::string conf;
  conf += "listener " + std::to_string(port_) + " 127.0.0.1\n";
  if (tls) {
    conf += "cafile " + tls->ca_file + "\n";
    conf += "certfile " + tls->cert_file + "\n";
    conf += "keyfile " + tls->key_file + "\n";
    conf +=
        std::string("require_certificate ") + (tls->require_certificate ? "true" : "false") + "\n";
  }
  conf += "allow_anonymous true\n";
  conf += "persistence true\n";
  conf += "persistence_location " + dir_.path().string() + "/\n";
  conf += "persistence_file mosquitto.db\n";
  conf += "autosave_interval 1\n";
  conf += "autosave_on_changes true\n";
  conf += "max_queued_messages " + std::to_string(options.max_queued_messages) + "\n";
  conf += "max_inflight_messages 0\n";
  conf += "log_dest file " + (dir_ / "mosquitto.log").string() + "\n";
  conf += "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n";
  if (options.message_size_limit > 0) {
    conf += "message_size_limit " + std::to_string(options.message_size_limit) + "\n";
  }
  if (options.max_packet_size > 0) {
    conf += "max_packet_size " + std::to_string(options.max_packet_size) + "\n";
  }
  conf += options.extra_config;
  if (geteuid() == 0) {
    conf += "user root\n";  // else mosquitto drops to `mosquitto`, who cannot write our temp dir
  }
  dir_.write("mosquitto.conf", conf);
  if (start_now) {
    start();
  }
}

MosquittoBroker::~MosquittoBroker() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    waitExit(kStopTimeout);
  }
}

std::string MosquittoBroker::url() const {
  return (tls_ ? "mqtts://127.0.0.1:" : "mqtt://127.0.0.1:") + std::to_string(port_);
}

void MosquittoBroker::start() {
  if (pid_ > 0) {
    return;
  }
  const std::string conf = (dir_ / "mosquitto.conf").string();
  const std::string out = (dir_ / "stdout.log").string();
  pid_ = spawnProcess({kMosquitto, "-c", conf}, out);
  const auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitForPort(port_, std::chrono::milliseconds(100))) {
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("mosquitto exited at start: " + dir_.read("stdout.log") + log());
    }
  }
  kill();
  throw std::runtime_error("mosquitto did not listen on port " + std::to_string(port_));
}

void MosquittoBroker::stop() {
  if (pid_ <= 0) {
    return;
  }
  ::kill(pid_, SIGTERM);
  waitExit(kStopTimeout);
}

void MosquittoBroker::kill() {
  if (pid_ <= 0) {
    return;
  }
  ::kill(pid_, SIGKILL);
  waitExit(kStopTimeout);
}

void MosquittoBroker::restart() {
  stop();
  start();
}

std::string MosquittoBroker::log() const {
  return dir_.exists("mosquitto.log") ? dir_.read("mosquitto.log") : std::string();
}

void MosquittoBroker::waitExit(std::chrono::milliseconds timeout) {
  if (!testing::waitExit(pid_, timeout)) {
    ::kill(pid_, SIGKILL);
    testing::waitExit(pid_);
  }
  pid_ = -1;
}

bool holdAndDeliverAcknowledged(TcpProxy& proxy, Subscriber& sub,
                                const std::vector<std::string>& ids,
                                const std::function<bool(std::size_t)>& acknowledged,
                                std::chrono::milliseconds timeout) {
  proxy.holdReplies(true);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    bool all = true;
    for (std::size_t i = 0; i < ids.size() && all; ++i) {
      all = !acknowledged(i) || sub.hasEventId(ids[i]);
    }
    if (all) {
      return true;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// --- TestPki ----------------------------------------------------------------------------------

namespace {

void runCommand(const std::string& command) {
  if (std::system((command + " >/dev/null 2>&1").c_str()) != 0) {
    throw std::runtime_error("failed: " + command);
  }
}

// A key and a certificate signed by `ca` (or self-signed when `ca` is empty), valid for a day.
void makeCert(const std::filesystem::path& dir, const std::string& name, const std::string& cn,
              const std::string& ca, const std::string& ext) {
  const std::string d = dir.string() + "/";
  const std::string key = "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ";
  if (ca.empty()) {
    runCommand(key + "-x509 -days 1 -subj '/CN=" + cn + "' -keyout " + d + name + ".key -out " + d +
               name + ".crt");
    return;
  }
  std::ofstream(d + name + ".ext") << ext << "\n";
  runCommand(key + "-subj '/CN=" + cn + "' -keyout " + d + name + ".key -out " + d + name + ".csr");
  runCommand("openssl x509 -req -days 1 -in " + d + name + ".csr -CA " + d + ca + ".crt -CAkey " +
             d + ca + ".key -CAcreateserial -extfile " + d + name + ".ext -out " + d + name +
             ".crt");
}

}  // namespace

TestPki makeTestPki(const std::filesystem::path& dir) {
  const std::string server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost";
  makeCert(dir, "ca", "omniedge test CA", "", "");
  makeCert(dir, "server", "127.0.0.1", "ca", server_ext);
  makeCert(dir, "client", "store-1", "ca", "extendedKeyUsage=clientAuth");
  makeCert(dir, "rogue-ca", "rogue CA", "", "");
  makeCert(dir, "rogue-server", "127.0.0.1", "rogue-ca", server_ext);
  const std::string d = dir.string() + "/";
  return TestPki{d + "ca.crt",       d + "ca.key",           d + "server.crt",
                 d + "server.key",   d + "client.crt",       d + "client.key",
                 d + "rogue-ca.crt", d + "rogue-server.crt", d + "rogue-server.key"};
}

// --- Subscriber -------------------------------------------------------------------------------

Subscriber::Subscriber(const std::string& url, std::string topic_filter, Decoder decoder)
    : topic_filter_(std::move(topic_filter)), decoder_(std::move(decoder)) {
  mqtt::create_options create(MQTTVERSION_3_1_1);
  client_ = std::make_unique<mqtt::async_client>(
      pahoUri(url), "omniedge-test-sub-" + randomSuffix(), create, nullptr);
  client_->set_message_callback([this](mqtt::const_message_ptr msg) {
    onMessage(msg->get_topic(), msg->get_payload_str(), msg->is_retained());
  });
  mqtt::connect_options opts;
  opts.set_mqtt_version(MQTTVERSION_3_1_1);
  opts.set_clean_session(false);  // the broker queues for us while we reconnect
  opts.set_keep_alive_interval(5);
  opts.set_automatic_reconnect(1, 2);
  if (!client_->connect(opts)->wait_for(std::chrono::seconds(10))) {
    throw std::runtime_error("subscriber: connect timed out");
  }
  if (!client_->subscribe(topic_filter_, 1)->wait_for(std::chrono::seconds(10))) {
    throw std::runtime_error("subscriber: subscribe timed out");
  }
  // After an automatic reconnect the persistent session normally still has the subscription;
  // subscribing again covers a broker that lost it.
  client_->set_connected_handler([this](const std::string&) {
    try {
      client_->subscribe(topic_filter_, 1);
    } catch (const mqtt::exception&) {
    }
  });
}

Subscriber::~Subscriber() {
  try {
    client_->set_connected_handler([](const std::string&) {});
    if (client_->is_connected()) {
      client_->disconnect(0)->wait_for(std::chrono::seconds(2));
    }
  } catch (const mqtt::exception&) {
  }
}

void Subscriber::onMessage(std::string topic, std::string payload, bool retained) {
  if (isGzip(payload)) {
    payload = gunzip(payload);
  } else if (decoder_) {
    payload = decoder_(std::move(payload));
  }
  {
    std::lock_guard lock(mu_);
    messages_.push_back(ReceivedMessage{std::move(topic), std::move(payload), retained});
  }
  cv_.notify_all();
}

std::vector<ReceivedMessage> Subscriber::messages() const {
  std::lock_guard lock(mu_);
  return messages_;
}

std::size_t Subscriber::messageCount() const {
  std::lock_guard lock(mu_);
  return messages_.size();
}

bool Subscriber::waitFor(const std::function<bool(const std::vector<ReceivedMessage>&)>& predicate,
                         std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mu_);
  while (!predicate(messages_)) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
  return true;
}

std::string Subscriber::last(const std::string& topic) const {
  std::lock_guard lock(mu_);
  for (auto it = messages_.rbegin(); it != messages_.rend(); ++it) {
    if (it->topic == topic) {
      return it->payload;
    }
  }
  return {};
}

void Subscriber::indexEvents() {
  static const std::string kSuffix = "/events";
  for (; indexed_ < messages_.size(); ++indexed_) {
    const auto& m = messages_[indexed_];
    if (m.topic.size() < kSuffix.size() ||
        m.topic.compare(m.topic.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) {
      continue;
    }
    const auto doc = nlohmann::json::parse(m.payload, nullptr, false);
    if (doc.is_discarded() || !doc.contains("events") || !doc["events"].is_array()) {
      continue;
    }
    for (const auto& e : doc["events"]) {
      ++events_received_;
      if (e.is_object() && e.contains("id") && e["id"].is_string()) {
        ids_.insert(e["id"].get<std::string>());
      }
    }
  }
}

std::size_t Subscriber::distinctEventIds() {
  std::lock_guard lock(mu_);
  indexEvents();
  return ids_.size();
}

std::size_t Subscriber::eventsReceived() {
  std::lock_guard lock(mu_);
  indexEvents();
  return events_received_;
}

bool Subscriber::waitForEventIds(std::size_t n, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mu_);
  for (;;) {
    indexEvents();
    if (ids_.size() >= n) {
      return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return false;
    }
    cv_.wait_for(lock, std::chrono::milliseconds(100));
  }
}

bool Subscriber::hasEventId(const std::string& id) {
  std::lock_guard lock(mu_);
  indexEvents();
  return ids_.count(id) != 0;
}

// --- TcpProxy ---------------------------------------------------------------------------------

TcpProxy::TcpProxy(int target_port) : target_port_(target_port) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = loopback(0);
  socklen_t len = sizeof(addr);
  if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      listen(listen_fd_, 16) != 0 || pipe(wake_) != 0) {
    throw std::runtime_error("TcpProxy: cannot listen");
  }
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { run(); });
}

TcpProxy::~TcpProxy() {
  stopping_ = true;
  const char c = 's';
  (void)!write(wake_[1], &c, 1);
  thread_.join();
  close(listen_fd_);
  close(wake_[0]);
  close(wake_[1]);
}

std::string TcpProxy::url() const { return "mqtt://127.0.0.1:" + std::to_string(port_); }

void TcpProxy::dropConnections() {
  std::unique_lock lock(mu_);
  const uint64_t ticket = ++drop_requested_;
  const char c = 'd';
  (void)!write(wake_[1], &c, 1);
  cv_.wait_for(lock, std::chrono::seconds(5), [&] { return drop_done_ >= ticket; });
}

void TcpProxy::cutAfterFirstReply(std::optional<std::chrono::milliseconds> delay) {
  std::lock_guard lock(mu_);
  cut_after_ = delay;
}

void TcpProxy::holdReplies(bool hold) {
  hold_replies_ = hold;
  const char c = 'h';
  (void)!write(wake_[1], &c, 1);
}

void TcpProxy::run() {
  using Clock = std::chrono::steady_clock;
  struct Pair {
    int client;
    int upstream;
    bool dead;
    bool replied = false;
    std::optional<std::chrono::milliseconds> cut_after;
    std::optional<Clock::time_point> cut_at;
  };
  std::vector<Pair> pairs;
  std::array<char, 64 * 1024> buf{};
  while (!stopping_) {
    std::vector<pollfd> fds;
    fds.push_back({wake_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    const bool hold = hold_replies_.load();
    int timeout_ms = -1;
    const auto now = Clock::now();
    for (const auto& p : pairs) {
      fds.push_back({p.client, POLLIN, 0});
      fds.push_back({p.upstream, static_cast<short>(hold ? 0 : POLLIN), 0});
      if (p.cut_at) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(*p.cut_at - now).count();
        const int ms = static_cast<int>(std::max<int64_t>(0, left)) + 1;
        timeout_ms = timeout_ms < 0 ? ms : std::min(timeout_ms, ms);
      }
    }
    if (poll(fds.data(), fds.size(), timeout_ms) < 0) {
      if (errno == EINTR) {
        continue;
      }
      break;
    }
    if ((fds[0].revents & POLLIN) != 0) {
      char drain[64];
      (void)!read(wake_[0], drain, sizeof(drain));
      std::lock_guard lock(mu_);
      if (drop_done_ < drop_requested_) {
        for (const auto& p : pairs) {
          resetAndClose(p.client);
          resetAndClose(p.upstream);
        }
        pairs.clear();
        drop_done_ = drop_requested_;
        cv_.notify_all();
        continue;
      }
    }
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      auto& p = pairs[i];
      for (int side = 0; side < 2 && !p.dead; ++side) {
        if ((fds[2 + 2 * i + side].revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
          continue;
        }
        if (side == 1 && hold) {
          continue;  // held: even a hang-up of the target waits until the hold ends
        }
        const int from = side == 0 ? p.client : p.upstream;
        const int to = side == 0 ? p.upstream : p.client;
        const ssize_t n = recv(from, buf.data(), buf.size(), 0);
        if (n <= 0 || !sendAll(to, buf.data(), static_cast<std::size_t>(n))) {
          p.dead = true;
        } else if (side == 1 && !p.replied) {
          p.replied = true;
          if (p.cut_after) {
            p.cut_at = Clock::now() + *p.cut_after;
          }
        }
      }
    }
    for (auto it = pairs.begin(); it != pairs.end();) {
      if (it->cut_at && Clock::now() >= *it->cut_at) {
        resetAndClose(it->client);
        resetAndClose(it->upstream);
        it = pairs.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = pairs.begin(); it != pairs.end();) {
      if (it->dead) {
        close(it->client);
        close(it->upstream);
        it = pairs.erase(it);
      } else {
        ++it;
      }
    }
    if ((fds[1].revents & POLLIN) != 0) {
      const int client = accept(listen_fd_, nullptr, nullptr);
      if (client >= 0) {
        const int upstream = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr = loopback(target_port_);
        if (upstream >= 0 &&
            connect(upstream, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
          Pair pair{client, upstream, false};
          {
            std::lock_guard lock(mu_);
            pair.cut_after = cut_after_;
          }
          pairs.push_back(pair);
          ++accepted_;
        } else {
          if (upstream >= 0) {
            close(upstream);
          }
          resetAndClose(client);
        }
      }
    }
  }
  for (const auto& p : pairs) {
    close(p.client);
    close(p.upstream);
  }
}

std::size_t waitForAllIds(Subscriber& sub, const std::vector<std::string>& ids,
                          std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::size_t from = 0;  // ids before this one have arrived
  for (;;) {
    while (from < ids.size() && sub.hasEventId(ids[from])) {
      ++from;
    }
    if (from == ids.size() || std::chrono::steady_clock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::size_t missing = 0;
  for (std::size_t i = from; i < ids.size(); ++i) {
    missing += sub.hasEventId(ids[i]) ? 0 : 1;
  }
  return missing;
}

}  // namespace omniedge::testing
