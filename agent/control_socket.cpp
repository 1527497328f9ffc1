#include "agent/control_socket.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/api/thread_name.h"
#include "agent/ingest/envelope.h"

namespace omniedge {
namespace {

using Clock = std::chrono::steady_clock;

bool fillAddress(const std::filesystem::path& p, sockaddr_un& addr) {
  addr = sockaddr_un{};
  addr.sun_family = AF_UNIX;
  const std::string s = p.string();
  if (s.size() >= sizeof(addr.sun_path)) {
    return false;
  }
  std::memcpy(addr.sun_path, s.c_str(), s.size() + 1);
  return true;
}

std::string errorAnswer(const std::string& message, const char* code = "invalid_request") {
  return nlohmann::json{{"ok", false}, {"error", message}, {"code", code}}.dump(
             -1, ' ', false, nlohmann::json::error_handler_t::replace) +
         "\n";
}

std::string sizeText(std::size_t bytes) {
  return bytes % (1 << 20) == 0 ? std::to_string(bytes >> 20) + " MiB"
                                : std::to_string(bytes >> 10) + " KiB";
}

}  // namespace

struct ControlServer::Client {
  enum class State { kReading, kHandling, kWriting };
  int fd = -1;
  uint64_t id = 0;
  State state = State::kReading;
  Clock::time_point accepted;
  Clock::time_point deadline;
  std::string in;
  std::size_t request_bytes = 0;  // of the request being handled
  std::string out;
  std::size_t written = 0;

  void close() {
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
    }
  }
};

ControlServer::ControlServer(std::filesystem::path socket_path, Handler handler,
                             ControlLimits limits)
    : path_(std::move(socket_path)), handler_(std::move(handler)), limits_(limits) {}

ControlServer::~ControlServer() { stop(); }

Result<void> ControlServer::start() {
  sockaddr_un addr{};
  if (!fillAddress(path_, addr)) {
    return makeError("io", "control socket path too long: " + path_.string());
  }
  fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd_ < 0 || wake_fd_ < 0) {
    const std::string err = std::strerror(errno);
    stop();
    return makeError("io", "control socket: " + err);
  }
  ::unlink(path_.c_str());  // a stale socket of a dead daemon (the buffer lock guards liveness)
  const mode_t old = umask(0117);
  const int rc = bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old);
  if (rc != 0 || listen(fd_, 64) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd_);
    fd_ = -1;
    stop();
    return makeError("io", "cannot listen on " + path_.string() + ": " + err);
  }
  chmod(path_.c_str(), 0660);
  io_thread_ = std::thread([this] {
    nameThisThread("oe-control");
    ioLoop();
  });
  for (std::size_t i = 0; i < std::max<std::size_t>(1, limits_.workers); ++i) {
    workers_.emplace_back([this] {
      nameThisThread("oe-control-wrk");
      workerLoop();
    });
  }
  return {};
}

void ControlServer::stop() {
  stop_.store(true);
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
  }
  {
    std::lock_guard lock(mu_);
    work_cv_.notify_all();
  }
  if (io_thread_.joinable()) {
    io_thread_.join();
  }
  for (auto& w : workers_) {
    if (w.joinable()) {
      w.join();
    }
  }
  workers_.clear();
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
  }
  if (wake_fd_ >= 0) {
    ::close(wake_fd_);
    wake_fd_ = -1;
  }
}

void ControlServer::ioLoop() {
  std::vector<pollfd> fds;
  std::vector<Client*> polled;  // fds[i + 2] is polled[i]
  while (!stop_.load()) {
    auto now = Clock::now();
    std::deque<Done> done;
    {
      std::lock_guard lock(mu_);
      done.swap(done_);
    }
    for (auto& d : done) {
      for (auto& c : clients_) {
        if (c->id == d.client_id && c->fd >= 0) {
          c->request_bytes = 0;
          c->out = std::move(d.answer);
          c->state = Client::State::kWriting;
          c->deadline = now + limits_.answer_timeout;
          flush(*c);
        }
      }
    }
    for (auto& c : clients_) {
      if (c->fd < 0 || now < c->deadline) {
        continue;
      }
      if (c->state == Client::State::kReading) {
        answerNow(*c, "request not complete within " +
                          std::to_string(limits_.request_timeout.count()) +
                          " ms: send one JSON object and a newline");
      } else if (c->state == Client::State::kWriting) {
        c->close();  // it does not read its answer
      }
    }
    // A client being handled keeps its slot until its answer is out.
    std::erase_if(clients_, [](const auto& c) { return c->fd < 0; });

    fds.clear();
    polled.clear();
    fds.push_back({fd_, POLLIN, 0});
    fds.push_back({wake_fd_, POLLIN, 0});
    auto wait = std::chrono::milliseconds(200);
    for (const auto& c : clients_) {
      if (c->state == Client::State::kHandling) {
        continue;  // nothing to do until its answer is ready (a hang-up must not spin poll)
      }
      fds.push_back(
          {c->fd, c->state == Client::State::kReading ? short{POLLIN} : short{POLLOUT}, 0});
      polled.push_back(c.get());
      wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                                c->deadline - now + std::chrono::milliseconds(1)));
    }
    const int ready =
        ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, wait.count())));
    if (ready <= 0) {
      continue;
    }
    if ((fds[1].revents & POLLIN) != 0) {
      uint64_t n = 0;
      (void)!::read(wake_fd_, &n, sizeof(n));
    }
    // Clients first (their slots may free up), then new connections.
    for (std::size_t i = 0; i < polled.size(); ++i) {
      Client& c = *polled[i];
      if (c.fd < 0 || fds[i + 2].revents == 0) {
        continue;
      }
      if (c.state == Client::State::kReading) {
        readFrom(c);
      } else if (c.state == Client::State::kWriting) {
        flush(c);
      }
    }
    if ((fds[0].revents & POLLIN) != 0) {
      acceptClients(Clock::now());
    }
  }
  for (auto& c : clients_) {
    c->close();
  }
  clients_.clear();
}

void ControlServer::acceptClients(Clock::time_point now) {
  for (;;) {
    const int fd = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      return;  // EAGAIN: none left (other errors: the next poll tries again)
    }
    std::erase_if(clients_, [](const auto& c) { return c->fd < 0; });
    if (clients_.size() >= limits_.max_clients) {
      // Full: the client that has been sending its request the longest gives way, so slow or
      // silent clients cannot keep the technician out (one within its grace is spared).
      Client* oldest = nullptr;
      for (auto& c : clients_) {
        if (c->state == Client::State::kReading && now - c->accepted >= limits_.eviction_grace &&
            (oldest == nullptr || c->accepted < oldest->accepted)) {
          oldest = c.get();
        }
      }
      if (oldest != nullptr) {
        answerNow(*oldest, "request not complete when another client needed the connection");
        std::erase_if(clients_, [](const auto& c) { return c->fd < 0; });
      }
    }
    if (clients_.size() >= limits_.max_clients) {
      const std::string busy = errorAnswer("busy: " + std::to_string(limits_.max_clients) +
                                               " requests in progress; try again in a moment",
                                           "busy");
      (void)::send(fd, busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(fd);
      continue;
    }
    auto c = std::make_unique<Client>();
    c->fd = fd;
    c->id = next_client_id_++;
    c->accepted = now;
    c->deadline = now + limits_.request_timeout;
    Client& ref = *c;
    clients_.push_back(std::move(c));
    readFrom(ref);  // most requests are already there
  }
}

void ControlServer::readFrom(Client& c) {
  char buf[64 * 1024];
  for (;;) {
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      const RequestChunk chunk =
          frameRequestChunk(c.in.size(), std::string_view(buf, static_cast<std::size_t>(n)),
                            limits_.max_request_bytes);
      const std::size_t take = chunk.take;
      if (chunk.too_large) {
        answerNow(c, "request larger than " + sizeText(limits_.max_request_bytes));
        return;
      }
      if (bufferedBytes() + take > limits_.max_buffered_bytes) {
        c.in = std::string();
        c.out = errorAnswer("busy: too many large requests at once; try again in a moment", "busy");
        c.state = Client::State::kWriting;
        c.deadline = Clock::now() + limits_.answer_timeout;
        flush(c);
        return;
      }
      c.in.append(buf, take);
      if (chunk.complete) {
        finishRequest(c, std::move(c.in));  // one request per connection: the rest is ignored
        return;
      }
      continue;
    }
    if (n == 0) {  // the client closed its side: what it sent is the request
      if (c.in.empty()) {
        c.close();
      } else {
        finishRequest(c, std::move(c.in));
      }
      return;
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      c.close();
    }
    return;
  }
}

std::size_t ControlServer::bufferedBytes() const {
  std::size_t total = 0;
  for (const auto& c : clients_) {
    total += c->in.size() + c->request_bytes;
  }
  return total;
}

void ControlServer::finishRequest(Client& c, std::string request) {
  c.in = std::string();
  c.request_bytes = request.size();
  c.state = Client::State::kHandling;
  std::lock_guard lock(mu_);
  jobs_.push_back(Job{c.id, std::move(request)});
  work_cv_.notify_one();
}

void ControlServer::answerNow(Client& c, const std::string& error) {
  c.in = std::string();
  c.out = errorAnswer(error);
  c.written = 0;
  c.state = Client::State::kWriting;
  c.deadline = Clock::now() + limits_.answer_timeout;
  flush(c);
}

void ControlServer::flush(Client& c) {
  while (c.fd >= 0 && c.written < c.out.size()) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.written, c.out.size() - c.written,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.written += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;  // poll says when it can take more
    } else {
      c.close();
    }
  }
  c.close();  // answered (or gone): one request per connection
}

void ControlServer::workerLoop() {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [&] { return stop_.load() || !jobs_.empty(); });
      if (stop_.load()) {
        return;
      }
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    std::string answer = handle(job.request);
    {
      std::lock_guard lock(mu_);
      done_.push_back(Done{job.client_id, std::move(answer)});
    }
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
  }
}

std::string ControlServer::handle(const std::string& request) {
  return answerControlRequest(request, limits_.max_depth, handler_);
}

RequestChunk frameRequestChunk(std::size_t have, std::string_view chunk,
                               std::size_t max_request_bytes) {
  const std::size_t nl = chunk.find('\n');
  RequestChunk out;
  out.complete = nl != std::string_view::npos;
  out.take = out.complete ? nl : chunk.size();
  out.too_large = have + out.take > max_request_bytes;
  return out;
}

std::string answerControlRequest(const std::string& request, std::size_t max_depth,
                                 const ControlServer::Handler& handler) {
  if (!jsonNestingWithin(request, max_depth)) {
    return errorAnswer("request nests arrays or objects deeper than " + std::to_string(max_depth) +
                       " levels");
  }
  nlohmann::json req;
  try {
    req = nlohmann::json::parse(request);
  } catch (const nlohmann::json::exception& e) {
    // Not only parse_error: a number beyond a double (1e400) is out_of_range (406), and would
    // end the worker thread, and the daemon with it.
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." without the tag
    std::string what = e.what();
    if (const auto at = what.find("] "); at != std::string::npos) {
      what = what.substr(at + 2);
    }
    return errorAnswer("request is not JSON: " + what);
  }
  if (!req.is_object()) {
    return errorAnswer(std::string("request must be a JSON object, not ") + req.type_name());
  }
  try {
    return handler(req).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  } catch (const std::exception& e) {
    // A handler bug must not take the daemon down with it; it is logged loudly.
    spdlog::error("control: request {} failed: {}",
                  nlohmann::json(request.substr(0, 200))
                      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  e.what());
    return nlohmann::json{{"ok", false},
                          {"error", std::string("internal error: ") + e.what()},
                          {"code", "internal"}}
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
           "\n";
  }
}

}  // namespace omniedge
