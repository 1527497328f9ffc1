#include "drivers/kiosk/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <exception>

#include "agent/api/thread_name.h"
#include "drivers/kiosk/http_parse.h"

// Why not cpp-httplib (0.11.4, Debian 12), which served this API before: it gives each
// connection a worker thread from the moment it is accepted, its read timeout applies to each
// recv() rather than to the whole head (a client sending a byte every few seconds holds the
// worker for ever), it does not limit the number of header fields (each line is kept: memory
// grows without bound), its task queue of accepted connections has no bound (measured: 1500
// silent connections left 560 descriptors open, each freed only after a 5 s timeout, one worker
// at a time), and its listen backlog is compiled in at 5. None of that can be changed from
// outside the library. Here one epoll thread owns every connection until its request is whole,
// under deadlines and limits; the workers only ever see complete requests.

namespace omniedge::kiosk {
namespace {

using Clock = std::chrono::steady_clock;

// A refused request's body up to this size is read and dropped, so that the connection stays
// usable; a larger one closes the connection after the answer.
constexpr std::uint64_t kDrainLimit = 64 * 1024;
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr auto kStopGrace = std::chrono::seconds(1);
constexpr int kAcceptBatch = 64;
constexpr int kMaxEvents = 64;
// A body buffer larger than this is given back after its request instead of being kept for the
// connection's next one.
constexpr std::size_t kKeepBodyCapacity = 64 * 1024;

bool isTchar(char c) {
  if (std::isalnum(static_cast<unsigned char>(c)) != 0) {
    return true;
  }
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

// Whether a comma-separated header value holds `token` (case-insensitive).
bool hasToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const std::size_t comma = value.find(',');
    if (equalsIgnoreCase(trimOws(value.substr(0, comma)), token)) {
      return true;
    }
    if (comma == std::string_view::npos) {
      break;
    }
    value.remove_prefix(comma + 1);
  }
  return false;
}

int hexDigit(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

// The path of a request target, percent-decoded. False for what no route can mean (not
// origin-form, a bad or NUL escape).
bool decodePath(std::string_view target, std::string& out) {
  out.clear();
  const std::string_view raw = target.substr(0, target.find('?'));
  if (raw.empty() || raw.front() != '/') {
    return false;
  }
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '%') {
      out += raw[i];
      continue;
    }
    if (i + 2 >= raw.size()) {
      return false;
    }
    const int hi = hexDigit(raw[i + 1]);
    const int lo = hexDigit(raw[i + 2]);
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
      return false;
    }
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return true;
}

std::string_view reasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 413:
      return "Payload Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 417:
      return "Expectation Failed";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return status < 400 ? "OK" : (status < 500 ? "Client Error" : "Server Error");
  }
}

void appendNumber(std::string& out, std::uint64_t n) {
  std::array<char, 24> digits{};
  const auto end = std::to_chars(digits.data(), digits.data() + digits.size(), n).ptr;
  out.append(digits.data(), end);
}

std::string addressText(const sockaddr_storage& peer) {
  std::array<char, INET6_ADDRSTRLEN> text{};
  if (peer.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(peer);
    inet_ntop(AF_INET, &v4.sin_addr, text.data(), text.size());
  } else if (peer.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(peer);
    if (IN6_IS_ADDR_V4MAPPED(&v6.sin6_addr)) {
      inet_ntop(AF_INET, &v6.sin6_addr.s6_addr[12], text.data(), text.size());
    } else {
      inet_ntop(AF_INET6, &v6.sin6_addr, text.data(), text.size());
    }
  }
  return text.data();
}

// A 503 that has to go out without waiting: one try, into an empty socket buffer.
void sendOnce(int fd, const std::string& bytes) {
  [[maybe_unused]] const ssize_t n =
      ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

}  // namespace

std::optional<HeadRefusal> parseRequestHead(std::string_view head, std::size_t max_headers,
                                            HttpRequest& req, bool& http10) {
  req.headers.clear();
  req.body.clear();
  req.keep_alive = true;
  req.expect_continue = false;
  req.chunked = false;
  req.content_length = 0;
  req.route = -1;
  req.caller = -1;

  auto nextLine = [&head](std::string_view& line) {
    const std::size_t nl = head.find('\n');
    line = head.substr(0, nl);
    head.remove_prefix(nl == std::string_view::npos ? head.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    return line.find('\r') == std::string_view::npos && line.find('\0') == std::string_view::npos;
  };
  auto malformed = [](std::string_view why, int status = 400) {
    return std::optional<HeadRefusal>(HeadRefusal{status, std::string(why)});
  };

  std::string_view line;
  if (!nextLine(line)) {
    return malformed("malformed request line");
  }
  const std::size_t sp1 = line.find(' ');
  const std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || sp1 == 0 ||
      sp2 == sp1 + 1 || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return malformed("malformed request line");
  }
  req.method = line.substr(0, sp1);
  req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!std::all_of(req.method.begin(), req.method.end(), isTchar)) {
    return malformed("malformed request line");
  }
  if (version == "HTTP/1.1") {
    http10 = false;
  } else if (version == "HTTP/1.0") {
    http10 = true;
    req.keep_alive = false;
  } else if (version.size() == 8 && version.substr(0, 5) == "HTTP/") {
    return malformed("only HTTP/1.0 and HTTP/1.1 are served", 505);
  } else {
    return malformed("malformed request line");
  }
  if (!decodePath(req.target, req.path)) {
    return malformed("the request target must be a path starting with '/' (valid %-escapes)");
  }

  bool have_length = false;
  while (true) {
    if (!nextLine(line)) {
      return malformed("a header line holds a CR or NUL byte");
    }
    if (line.empty()) {
      break;
    }
    if (req.headers.size() >= max_headers) {
      return malformed("more than " + std::to_string(max_headers) + " header fields", 431);
    }
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0 ||
        !std::all_of(line.begin(), line.begin() + static_cast<std::ptrdiff_t>(colon), isTchar)) {
      return malformed("malformed header line: " +
                       std::string(line.substr(0, std::min<std::size_t>(line.size(), 40))));
    }
    const HttpHeader h{line.substr(0, colon), trimOws(line.substr(colon + 1))};
    req.headers.push_back(h);
    if (equalsIgnoreCase(h.name, "Content-Length")) {
      std::uint64_t n = 0;
      const auto [end, ec] = std::from_chars(h.value.data(), h.value.data() + h.value.size(), n);
      if (ec != std::errc() || end != h.value.data() + h.value.size() || h.value.empty() ||
          (have_length && n != req.content_length)) {
        return malformed("Content-Length must be one decimal number");
      }
      have_length = true;
      req.content_length = n;
    } else if (equalsIgnoreCase(h.name, "Transfer-Encoding")) {
      if (!equalsIgnoreCase(h.value, "chunked") || req.chunked) {
        return malformed("Transfer-Encoding " + std::string(h.value) + " is not supported", 501);
      }
      req.chunked = true;
    } else if (equalsIgnoreCase(h.name, "Connection")) {
      if (hasToken(h.value, "close")) {
        req.keep_alive = false;
      } else if (hasToken(h.value, "keep-alive")) {
        req.keep_alive = true;
      }
    } else if (equalsIgnoreCase(h.name, "Expect")) {
      if (!equalsIgnoreCase(h.value, "100-continue")) {
        return malformed("Expect " + std::string(h.value) + " is not supported", 417);
      }
      req.expect_continue = !http10;
    }
  }
  if (req.chunked && have_length) {
    // Both framings at once is how requests are smuggled past proxies.
    return malformed("Content-Length and Transfer-Encoding: chunked together");
  }
  return std::nullopt;
}

ChunkedBody::Step ChunkedBody::decode(std::string_view in, std::size_t& pos, std::string& body,
                                      const Limits& limits) {
  using Kind = Step::Kind;
  auto refused = [](int status, std::string message) {
    Step step;
    step.kind = Kind::kRefused;
    step.refusal = HeadRefusal{status, std::move(message)};
    return step;
  };
  while (pos < in.size()) {
    if (phase == Phase::kData) {
      const std::size_t take =
          static_cast<std::size_t>(std::min<std::uint64_t>(left, in.size() - pos));
      body.append(in.substr(pos, take));
      pos += take;
      left -= take;
      if (left == 0) {
        phase = Phase::kDataEnd;
      }
      continue;
    }
    const std::size_t nl = in.find('\n', pos);
    // Judged the same whether the line came whole or in pieces: too long is too long.
    if ((nl == std::string_view::npos ? in.size() : nl) - pos > limits.max_line) {
      return refused(400, phase == Phase::kTrailer ? "a chunked trailer line is too long"
                                                   : "a chunk size line is too long");
    }
    if (nl == std::string_view::npos) {
      break;
    }
    std::string_view line = in.substr(pos, nl - pos);
    pos = nl + 1;
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    if (phase == Phase::kDataEnd) {
      if (!line.empty()) {
        return refused(400, "malformed chunked body: a chunk's data is not followed by CRLF");
      }
      phase = Phase::kSize;
      continue;
    }
    if (phase == Phase::kTrailer) {
      trailer_bytes += line.size() + 2;
      if (trailer_bytes > limits.max_trailer) {
        return refused(431, "the chunked trailer is too large");
      }
      if (line.empty()) {
        Step done;
        done.kind = Kind::kDone;
        return done;
      }
      continue;
    }
    const std::string_view digits = trimOws(line.substr(0, line.find(';')));
    std::uint64_t size = 0;
    const auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), size, 16);
    if (digits.empty() || ec != std::errc() || p != digits.data() + digits.size()) {
      return refused(400, "malformed chunk size");
    }
    if (size == 0) {
      phase = Phase::kTrailer;
      continue;
    }
    // Compared with what is left, never as a sum: a size near 2^64 would wrap the sum below
    // the limit and let the body grow without bound.
    if (size > limits.max_body - std::min(body.size(), limits.max_body)) {
      return refused(413, "the body exceeds " + std::to_string(limits.max_body) + " bytes");
    }
    phase = Phase::kData;
    left = size;
    Step chunk;
    chunk.kind = Kind::kChunk;
    chunk.size = size;
    return chunk;
  }
  return Step{};
}

enum class State {
  kHead,        // reading a request head (or idle between requests: got_bytes false)
  kBody,        // reading the body of an accepted head
  kDrain,       // reading and dropping the body of a refused request, then answering
  kDispatched,  // a worker has it: the event thread does not touch it
  kWriting,     // the answer is going out
  kLinger,      // answered and shut down for writing: reading what the client still sends
  kStream,      // the head went out; writing what its HttpStream is given until either side ends
  kClosed,      // closed; freed at the end of the event round (its events may still be queued)
};

struct HttpServer::Conn {
  int fd = -1;
  std::size_t index = 0;  // in conns_
  State state = State::kHead;
  // Input. [0, head_end) holds the current head (the request's views point into it);
  // [pos, len) is read and not yet consumed. The buffer never grows, so views stay valid.
  std::unique_ptr<char[]> buf;
  std::size_t cap = 0;
  std::size_t len = 0;
  std::size_t pos = 0;
  std::size_t head_end = 0;
  std::size_t scanned = 0;  // the head's end was searched for up to here
  bool got_bytes = false;   // of the current request
  bool http10 = false;
  HttpRequest req;
  HttpResponse res;
  std::string out;
  std::size_t out_done = 0;
  std::uint64_t body_left = 0;  // Content-Length bytes still to come (body or drain)
  ChunkedBody chunks;           // the chunked body being read
  std::size_t reserved = 0;     // of the body budget
  bool body_unread = false;     // bytes of this request may still be on the way: linger on close
  bool again = false;           // in again_: read the next request in this round
  Clock::time_point deadline{};
  Clock::time_point since{};  // when the current state began: who is evicted first
  std::string peer_text;
};

std::string_view HttpRequest::header(std::string_view name) const {
  for (const HttpHeader& h : headers) {
    if (equalsIgnoreCase(h.name, name)) {
      return h.value;
    }
  }
  return {};
}

bool HttpRequest::hasHeader(std::string_view name) const {
  return std::any_of(headers.begin(), headers.end(),
                     [&](const HttpHeader& h) { return equalsIgnoreCase(h.name, name); });
}

void HttpResponse::reset() {
  status = 200;
  body.clear();
  content_type.clear();
  headers.clear();
  close = false;
  stream.reset();
}

bool HttpStream::write(std::string bytes) {
  std::lock_guard lock(mu_);
  if (closed_) {
    return false;
  }
  queued_bytes_ += bytes.size();
  queue_.push_back(std::move(bytes));
  while (queued_bytes_ > max_queued_bytes_ && queue_.size() > 1) {
    queued_bytes_ -= queue_.front().size();
    queue_.pop_front();
    ++dropped_;
  }
  if (wake_) {
    wake_();
  }
  return true;
}

bool HttpStream::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

uint64_t HttpStream::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

std::string HttpStream::take() {
  std::lock_guard lock(mu_);
  std::string out;
  out.reserve(queued_bytes_);
  for (const std::string& frame : queue_) {
    out += frame;
  }
  queue_.clear();
  queued_bytes_ = 0;
  return out;
}

void HttpStream::attach(std::function<void()> wake) {
  std::lock_guard lock(mu_);
  wake_ = std::move(wake);
  if (!queue_.empty()) {
    wake_();
  }
}

void HttpStream::detach() {
  std::lock_guard lock(mu_);
  wake_ = nullptr;
  closed_ = true;
  queue_.clear();
  queued_bytes_ = 0;
}

HttpServer::HttpServer(HttpServerOptions options, HeadHandler on_head, RequestHandler on_request,
                       ErrorHandler on_error)
    : options_(std::move(options)),
      on_head_(std::move(on_head)),
      on_request_(std::move(on_request)),
      on_error_(std::move(on_error)) {}

HttpServer::~HttpServer() { stop(); }

Result<void> HttpServer::start() {
  if (event_thread_.joinable()) {
    return makeError("invalid_state", "the HTTP server is already started");
  }
  const bool v6 = options_.host.find(':') != std::string::npos;
  const std::string where =
      (v6 ? "[" + options_.host + "]" : options_.host) + ":" + std::to_string(options_.port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(options_.port);
  if (const int rc = getaddrinfo(options_.host.c_str(), service.c_str(), &hints, &found); rc != 0) {
    return makeError("io", "cannot listen on " + where + ": " + gai_strerror(rc));
  }
  int fd = -1;
  int err = 0;
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    // SO_REUSEADDR for quick restarts; never SO_REUSEPORT, which would let a second agent bind
    // the same port and take half of the requests.
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (ai->ai_family == AF_INET6) {
      int no = 0;  // "::" serves IPv4 too
      ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &no, sizeof(no));
    }
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
      err = errno;
      ::close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) {
    return makeError("io", "cannot listen on " + where + ": " + std::strerror(err));
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len);
  const int port = bound.ss_family == AF_INET6
                       ? ntohs(reinterpret_cast<sockaddr_in6&>(bound).sin6_port)
                       : ntohs(reinterpret_cast<sockaddr_in&>(bound).sin_port);

  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) {
    err = errno;
    ::close(fd);
    stop();
    return makeError("io", std::string("cannot set up the HTTP server: ") + std::strerror(err));
  }
  listen_fd_ = fd;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = &listen_fd_;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.ptr = &wake_fd_;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);

  // Never more connections than descriptors: at EMFILE the listening socket would stay
  // readable with nothing to accept, and the event thread would spin.
  max_connections_ = std::max<std::size_t>(options_.max_connections, 1);
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY) {
    const auto room = static_cast<std::size_t>(files.rlim_cur > 128 ? files.rlim_cur - 96 : 32);
    max_connections_ = std::min(max_connections_, room);
  }
  stopping_ = false;
  workers_stop_ = false;
  port_ = port;
  for (int i = 0; i < std::max(options_.workers, 1); ++i) {
    workers_.emplace_back([this] {
      nameThisThread("oe-http-worker");
      workerLoop();
    });
  }
  event_thread_ = std::thread([this] {
    nameThisThread("oe-http");
    loop();
  });
  return {};
}

void HttpServer::stop() {
  if (event_thread_.joinable()) {
    stopping_ = true;
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    event_thread_.join();
  }
  {
    std::lock_guard lock(queue_mu_);
    workers_stop_ = true;
  }
  queue_cv_.notify_all();
  for (std::thread& t : workers_) {
    t.join();
  }
  workers_.clear();
  for (int* fd : {&listen_fd_, &epoll_fd_, &wake_fd_}) {
    if (*fd >= 0) {
      ::close(*fd);
      *fd = -1;
    }
  }
  port_ = 0;
}

HttpServerStats HttpServer::stats() const {
  HttpServerStats s;
  s.accepted = counters_.accepted;
  s.open = counters_.open;
  s.refused_busy = counters_.refused_busy;
  s.evicted = counters_.evicted;
  s.head_timeouts = counters_.head_timeouts;
  s.body_timeouts = counters_.body_timeouts;
  s.idle_closed = counters_.idle_closed;
  s.head_too_large = counters_.head_too_large;
  s.malformed = counters_.malformed;
  s.body_budget_busy = counters_.body_budget_busy;
  s.buffered_body_bytes = counters_.buffered_body_bytes;
  return s;
}

// ---- the event thread ---------------------------------------------------------------------

void HttpServer::loop() {
  std::array<epoll_event, kMaxEvents> events{};
  bool listening = true;
  Clock::time_point stop_deadline{};
  while (true) {
    if (stopping_ && listening) {
      listening = false;
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      stop_deadline = Clock::now() + kStopGrace;
      for (std::size_t i = conns_.size(); i > 0; --i) {
        Conn& c = *conns_[i - 1];
        if (c.state != State::kDispatched && c.state != State::kWriting) {
          closeConn(c);
        }
      }
    }
    if (!listening) {
      const auto now = Clock::now();
      for (std::size_t i = conns_.size(); i > 0; --i) {
        Conn& c = *conns_[i - 1];
        if (c.state != State::kDispatched && (c.state != State::kWriting || now >= stop_deadline)) {
          closeConn(c);
        }
      }
      if (conns_.empty()) {
        return;
      }
    }

    int timeout_ms = -1;
    if (!conns_.empty()) {
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next_sweep_ - Clock::now());
      timeout_ms = static_cast<int>(std::clamp<int64_t>(wait.count(), 0, 1000));
    }
    if (!listening) {
      timeout_ms = 50;
    }
    if (!again_.empty()) {
      timeout_ms = 0;
    }
    const int n = ::epoll_wait(epoll_fd_, events.data(), kMaxEvents, timeout_ms);
    for (int i = 0; i < n; ++i) {
      void* tag = events[i].data.ptr;
      if (tag == &listen_fd_) {
        if (listening) {
          acceptAll();
        }
        continue;
      }
      if (tag == &wake_fd_) {
        uint64_t value = 0;
        [[maybe_unused]] const ssize_t r = ::read(wake_fd_, &value, sizeof(value));
        continue;  // what it announces is taken below, every round
      }
      Conn& c = *static_cast<Conn*>(tag);
      if (c.state == State::kDispatched || c.state == State::kClosed) {
        continue;  // looked at again when the worker gives it back / gone
      }
      const uint32_t what = events[i].events;
      if ((what & EPOLLERR) != 0) {
        closeConn(c);
        continue;
      }
      if (c.state == State::kWriting) {
        if ((what & (EPOLLOUT | EPOLLHUP)) != 0) {
          onWritable(c);
        }
        continue;
      }
      if (c.state == State::kStream && (what & EPOLLOUT) != 0) {
        pumpStream(c);
        if (c.state != State::kStream) {
          continue;
        }
      }
      if ((what & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) != 0) {
        onReadable(c);
      }
    }
    // Every round, not only when the eventfd fired: workers write it only when the queue was
    // empty, so one lost wake-up (a failed write) would otherwise leave every later answer, and
    // its connection, parked for good, until the server answers "busy" to everyone (seen under
    // libfiu write faults, tests/fault/fiu_test.cpp). Now it costs at most one sweep interval.
    takeReturned();
    // Connections whose next request may already be here. Taken one request each per round,
    // iteratively: a client pipelining without end cannot recurse the stack or starve others.
    std::vector<Conn*> again;
    again.swap(again_);
    for (Conn* c : again) {
      c->again = false;
      if (c->state == State::kHead) {
        readHead(*c);
      }
    }
    if (Clock::now() >= next_sweep_) {
      sweep();
    }
    graveyard_.clear();
  }
}

void HttpServer::takeReturned() {
  std::vector<Conn*> back;
  {
    std::lock_guard lock(done_mu_);
    back.swap(done_);
  }
  for (Conn* c : back) {
    returned(*c);
  }
  if (streams_ready_.exchange(false)) {
    // A copy: pumping may close a stream, which takes it out of streams_.
    const std::vector<Conn*> streams = streams_;
    for (Conn* c : streams) {
      if (c->state == State::kStream) {
        pumpStream(*c);
      }
    }
  }
}

void HttpServer::acceptAll() {
  for (int i = 0; i < kAcceptBatch; ++i) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &peer_len,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      // EAGAIN: done. EMFILE/ENFILE: out of descriptors; the backlog keeps the rest, and the
      // sweep closes idle connections, so the next round can take them.
      return;
    }
    ++counters_.accepted;
    if (conns_.size() >= max_connections_ && !makeRoom()) {
      // Every slot holds a request being served: say so at once rather than queue.
      ++counters_.refused_busy;
      HttpResponse res;
      if (on_error_) {
        on_error_(nullptr, 503, "the server is busy: every connection is in use; retry shortly",
                  res);
      }
      res.status = 503;
      std::string bytes = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n";
      if (!res.content_type.empty()) {
        bytes += "Content-Type: " + res.content_type + "\r\n";
      }
      bytes += "Content-Length: " + std::to_string(res.body.size()) +
               "\r\nConnection: close\r\n\r\n" + res.body;
      sendOnce(fd, bytes);
      ::close(fd);
      continue;
    }
    int yes = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    auto conn = std::make_unique<Conn>();
    Conn& c = *conn;
    c.fd = fd;
    c.cap = options_.max_header_bytes + 4096;
    c.buf.reset(new char[c.cap]);
    c.req.peer = peer;
    c.peer_text = addressText(peer);
    c.req.remote_addr = c.peer_text;
    c.req.headers.reserve(std::min<std::size_t>(options_.max_headers, 16));
    c.since = Clock::now();
    c.index = conns_.size();
    setDeadline(c, options_.header_timeout);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = &c;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      ::close(fd);
      continue;
    }
    conns_.push_back(std::move(conn));
    ++counters_.open;
  }
}

// Closes the connection that matters least to make room for a new one: one already answered
// and lingering, then one dropping a refused body, then one idle between requests, then one
// still sending its head (a slowloris client is in that last group), oldest first. A request
// being read after its head was accepted, being handled or being answered is never cut.
bool HttpServer::makeRoom() {
  Conn* victim = nullptr;
  int victim_rank = 4;
  for (const auto& conn : conns_) {
    Conn& c = *conn;
    int rank = 4;
    if (c.state == State::kLinger) {
      rank = 0;
    } else if (c.state == State::kDrain) {
      rank = 1;
    } else if (c.state == State::kHead) {
      rank = c.got_bytes ? 3 : 2;
    }
    if (rank < victim_rank || (rank == victim_rank && rank < 4 && c.since < victim->since)) {
      victim = &c;
      victim_rank = rank;
    }
  }
  if (victim == nullptr) {
    return false;
  }
  ++counters_.evicted;
  closeConn(*victim);
  return true;
}

void HttpServer::setDeadline(Conn& c, std::chrono::milliseconds after) {
  c.deadline = Clock::now() + after;
  next_sweep_ = std::min(next_sweep_, c.deadline);
}

// Closes what is past its deadline. Deadlines set meanwhile lower next_sweep_ again.
void HttpServer::sweep() {
  const auto now = Clock::now();
  next_sweep_ = now + std::chrono::seconds(1);
  // Backwards: closing swaps the last connection into the closed one's place.
  for (std::size_t i = conns_.size(); i > 0; --i) {
    if (i > conns_.size()) {
      continue;
    }
    Conn& c = *conns_[i - 1];
    if (c.state == State::kDispatched) {
      continue;
    }
    if (c.deadline > now) {
      next_sweep_ = std::min(next_sweep_, c.deadline);
      continue;
    }
    if (c.state == State::kHead && !c.got_bytes) {
      ++counters_.idle_closed;
      closeConn(c);
    } else if (c.state == State::kHead) {
      // A slowloris client ends here: a short 408, then the connection is gone.
      ++counters_.head_timeouts;
      refuse(c, 408, "the request head did not arrive in time");
    } else if (c.state == State::kBody) {
      ++counters_.body_timeouts;
      refuse(c, 408, "the request body did not arrive in time");
    } else if (c.state == State::kStream && c.out_done >= c.out.size()) {
      // Quiet for a while: a heartbeat, so that the client and any proxy see it alive.
      c.out = c.res.stream->heartbeat_;
      c.out_done = 0;
      pumpStream(c);
    } else {
      closeConn(c);
    }
  }
}

void HttpServer::closeConn(Conn& c) {
  if (c.state == State::kClosed) {
    return;
  }
  releaseBudget(c);
  if (c.res.stream) {
    c.res.stream->detach();
    if (auto it = std::find(streams_.begin(), streams_.end(), &c); it != streams_.end()) {
      streams_.erase(it);
    }
  }
  ::close(c.fd);  // also takes it out of the epoll set
  c.fd = -1;
  c.state = State::kClosed;
  if (c.again) {
    if (auto it = std::find(again_.begin(), again_.end(), &c); it != again_.end()) {
      again_.erase(it);
    }
    c.again = false;
  }
  const std::size_t at = c.index;
  if (at + 1 != conns_.size()) {
    std::swap(conns_[at], conns_.back());
    conns_[at]->index = at;
  }
  // Freed at the end of the round: events for it may still be in this round's batch.
  graveyard_.push_back(std::move(conns_.back()));
  conns_.pop_back();
  --counters_.open;
}

void HttpServer::releaseBudget(Conn& c) {
  budget_used_ -= c.reserved;
  c.reserved = 0;
  counters_.buffered_body_bytes = budget_used_;
}

void HttpServer::lingerClose(Conn& c) {
  // Closing with unread input makes the kernel send a reset, which can destroy the answer
  // before the client reads it: stop writing, read what still comes, then close.
  ::shutdown(c.fd, SHUT_WR);
  c.state = State::kLinger;
  c.since = Clock::now();
  c.deadline = c.since + kLingerTime;
  next_sweep_ = std::min(next_sweep_, c.deadline);
  onReadable(c);
}

void HttpServer::onReadable(Conn& c) {
  switch (c.state) {
    case State::kHead:
      readHead(c);
      return;
    case State::kBody:
    case State::kDrain:
      readBody(c);
      return;
    case State::kLinger:
    case State::kStream: {
      // A stream's client has nothing to say; what it sends is dropped, its end closes.
      std::array<char, 4096> scratch{};
      while (true) {
        const ssize_t n = ::recv(c.fd, scratch.data(), scratch.size(), 0);
        if (n > 0) {
          continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
          return;
        }
        closeConn(c);
        return;
      }
    }
    default:
      return;
  }
}

void HttpServer::readHead(Conn& c) {
  while (true) {
    // Leading empty lines before a request line are allowed (RFC 9112 §2.2).
    if (c.head_end == 0 && c.scanned == c.pos) {
      while (c.pos < c.len && (c.buf[c.pos] == '\r' || c.buf[c.pos] == '\n')) {
        ++c.pos;
      }
      c.scanned = c.pos;
    }
    // Search for the blank line that ends the head.
    for (std::size_t i = c.scanned; i < c.len; ++i) {
      const void* nl = std::memchr(&c.buf[i], '\n', c.len - i);
      if (nl == nullptr) {
        break;
      }
      i = static_cast<std::size_t>(static_cast<const char*>(nl) - c.buf.get());
      std::size_t end = 0;
      if (i + 1 < c.len && c.buf[i + 1] == '\n') {
        end = i + 2;
      } else if (i + 2 < c.len && c.buf[i + 1] == '\r' && c.buf[i + 2] == '\n') {
        end = i + 3;
      }
      if (end != 0) {
        if (end - c.pos > options_.max_header_bytes) {
          ++counters_.head_too_large;
          refuse(c, 431,
                 "the request head is larger than " + std::to_string(options_.max_header_bytes) +
                     " bytes");
          return;
        }
        if (parseHead(c, end)) {
          afterHead(c);
        }
        return;
      }
    }
    c.scanned = std::max(c.pos, c.len >= 2 ? c.len - 2 : std::size_t{0});
    if (c.len - c.pos > options_.max_header_bytes) {
      ++counters_.head_too_large;
      const void* nl = std::memchr(&c.buf[c.pos], '\n', c.len - c.pos);
      const bool line_done =
          nl != nullptr && static_cast<const char*>(nl) - &c.buf[c.pos] <=
                               static_cast<std::ptrdiff_t>(options_.max_header_bytes);
      refuse(c, line_done ? 431 : 414,
             line_done ? "the request head is larger than " +
                             std::to_string(options_.max_header_bytes) + " bytes"
                       : "the request line is longer than " +
                             std::to_string(options_.max_header_bytes) + " bytes");
      return;
    }
    if (c.len == c.cap) {
      // Room for the rest of the head: move what is there to the front.
      std::memmove(c.buf.get(), &c.buf[c.pos], c.len - c.pos);
      c.scanned -= c.pos;
      c.len -= c.pos;
      c.pos = 0;
    }
    const ssize_t n = ::recv(c.fd, &c.buf[c.len], c.cap - c.len, 0);
    if (n > 0) {
      if (!c.got_bytes) {
        c.got_bytes = true;
        c.since = Clock::now();
        setDeadline(c, options_.header_timeout);
      }
      c.len += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      return;
    }
    closeConn(c);  // the client went away (or the connection broke)
    return;
  }
}

bool HttpServer::parseHead(Conn& c, std::size_t head_end) {
  c.head_end = head_end;
  const std::string_view head(&c.buf[c.pos], head_end - c.pos);
  c.pos = head_end;
  if (auto refusal = parseRequestHead(head, options_.max_headers, c.req, c.http10)) {
    if (refusal->status == 431) {
      ++counters_.head_too_large;
    } else {
      ++counters_.malformed;
    }
    refuse(c, refusal->status, refusal->message);
    return false;
  }
  return true;
}

void HttpServer::afterHead(Conn& c) {
  HttpRequest& req = c.req;
  c.res.reset();
  HeadAction action = HeadAction::kRespond;
  try {
    action = on_head_ ? on_head_(req, c.res) : HeadAction::kReadBody;
  } catch (const std::exception&) {
    c.res.reset();
    if (on_error_) {
      on_error_(&req, 500, "internal error", c.res);
    }
    c.res.status = 500;
  }
  const bool has_body = req.chunked || req.content_length > 0;
  if (action == HeadAction::kReadBody && !req.chunked &&
      req.content_length > options_.max_body_bytes) {
    c.res.reset();
    if (on_error_) {
      on_error_(&req, 413, "the body exceeds " + std::to_string(options_.max_body_bytes) + " bytes",
                c.res);
    }
    c.res.status = 413;
    action = HeadAction::kRespond;
  }
  if (action == HeadAction::kReadBody && !req.chunked &&
      budget_used_ + req.content_length > options_.max_buffered_body_bytes) {
    ++counters_.body_budget_busy;
    c.res.reset();
    if (on_error_) {
      on_error_(&req, 503, "the server is busy reading other bodies; retry shortly", c.res);
    }
    c.res.status = 503;
    c.res.set_header("Retry-After", "1");
    action = HeadAction::kRespond;
  }

  if (action == HeadAction::kRespond) {
    if (!has_body) {
      startResponse(c);
    } else if (!req.chunked && !req.expect_continue && req.content_length <= kDrainLimit) {
      // Read and drop the body, then answer: the connection stays usable.
      c.state = State::kDrain;
      c.body_left = req.content_length;
      c.since = Clock::now();
      setDeadline(c, options_.body_timeout);
      readBody(c);
    } else {
      c.body_unread = true;
      c.res.close = true;
      startResponse(c);
    }
    return;
  }

  if (!has_body) {
    dispatch(c);
    return;
  }
  if (req.expect_continue) {
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    if (::send(c.fd, kContinue.data(), kContinue.size(), MSG_NOSIGNAL | MSG_DONTWAIT) !=
        static_cast<ssize_t>(kContinue.size())) {
      closeConn(c);
      return;
    }
  }
  c.state = State::kBody;
  c.since = Clock::now();
  setDeadline(c, options_.body_timeout);
  if (req.chunked) {
    c.chunks = ChunkedBody{};
  } else {
    c.reserved = static_cast<std::size_t>(req.content_length);
    budget_used_ += c.reserved;
    counters_.buffered_body_bytes = budget_used_;
    c.body_left = req.content_length;
    req.body.resize(static_cast<std::size_t>(req.content_length));
  }
  readBody(c);
}

void HttpServer::readBody(Conn& c) {
  HttpRequest& req = c.req;
  const bool drain = c.state == State::kDrain;
  if (!drain && req.chunked) {
    while (true) {
      if (decodeChunks(c)) {
        return;  // done, or refused
      }
      if (c.len == c.cap) {
        // Keep the head where its views point; move the unread rest just after it.
        std::memmove(&c.buf[c.head_end], &c.buf[c.pos], c.len - c.pos);
        c.len = c.head_end + (c.len - c.pos);
        c.pos = c.head_end;
        if (c.len == c.cap) {
          ++counters_.malformed;
          refuse(c, 400, "a chunk size line is too long");
          return;
        }
      }
      const ssize_t n = ::recv(c.fd, &c.buf[c.len], c.cap - c.len, 0);
      if (n > 0) {
        c.len += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
      }
      closeConn(c);
      return;
    }
  }

  // Content-Length: what came with the head first, then straight from the socket.
  const std::size_t total = static_cast<std::size_t>(req.content_length);
  if (c.pos < c.len && c.body_left > 0) {
    const std::size_t take =
        static_cast<std::size_t>(std::min<std::uint64_t>(c.body_left, c.len - c.pos));
    if (!drain) {
      std::memcpy(&req.body[total - c.body_left], &c.buf[c.pos], take);
    }
    c.pos += take;
    c.body_left -= take;
  }
  std::array<char, 16384> scratch{};
  while (c.body_left > 0) {
    char* into = drain ? scratch.data() : &req.body[total - c.body_left];
    const std::size_t room = drain ? std::min<std::uint64_t>(c.body_left, scratch.size())
                                   : static_cast<std::size_t>(c.body_left);
    const ssize_t n = ::recv(c.fd, into, room, 0);
    if (n > 0) {
      c.body_left -= static_cast<std::uint64_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      return;
    }
    closeConn(c);
    return;
  }
  if (drain) {
    startResponse(c);
  } else {
    dispatch(c);
  }
}

// Decodes what is in [pos, len) into the body. True when the body is complete (and dispatched)
// or the request was refused; false when more input is needed.
bool HttpServer::decodeChunks(Conn& c) {
  HttpRequest& req = c.req;
  ChunkedBody::Limits limits;  // max_line: its default
  limits.max_body = options_.max_body_bytes;
  limits.max_trailer = options_.max_header_bytes;
  for (;;) {
    const auto step =
        c.chunks.decode(std::string_view(c.buf.get(), c.len), c.pos, req.body, limits);
    switch (step.kind) {
      case ChunkedBody::Step::Kind::kMore:
        if (c.pos == c.len && c.chunks.phase != ChunkedBody::Phase::kData) {
          c.pos = c.len = c.head_end;  // everything consumed: the next read goes after the head
        }
        return false;
      case ChunkedBody::Step::Kind::kDone:
        dispatch(c);
        return true;
      case ChunkedBody::Step::Kind::kRefused:
        if (step.refusal.status == 400) {
          ++counters_.malformed;
        }
        refuse(c, step.refusal.status, step.refusal.message);
        return true;
      case ChunkedBody::Step::Kind::kChunk: {
        // The chunk fits the body limit (decode checked); the buffered bytes of all
        // connections together are this server's own limit.
        const std::size_t size = static_cast<std::size_t>(step.size);
        if (size > options_.max_buffered_body_bytes -
                       std::min(budget_used_, options_.max_buffered_body_bytes)) {
          ++counters_.body_budget_busy;
          refuse(c, 503, "the server is busy reading other bodies; retry shortly");
          return true;
        }
        c.reserved += size;
        budget_used_ += size;
        counters_.buffered_body_bytes = budget_used_;
        req.body.reserve(req.body.size() + size);
        break;
      }
    }
  }
}

void HttpServer::dispatch(Conn& c) {
  c.state = State::kDispatched;
  {
    std::lock_guard lock(queue_mu_);
    queue_.push_back(&c);
  }
  queue_cv_.notify_one();
}

void HttpServer::returned(Conn& c) {
  releaseBudget(c);
  if (c.req.body.capacity() > kKeepBodyCapacity) {
    std::string().swap(c.req.body);
  }
  c.state = State::kWriting;
  c.since = Clock::now();
  setDeadline(c, options_.write_timeout);
  onWritable(c);
}

// Refusal by the protocol layer: the answer closes the connection, since what the client sends
// next cannot be trusted to start a request.
void HttpServer::refuse(Conn& c, int status, std::string_view message) {
  const bool parsed = c.head_end != 0;
  c.res.reset();
  if (on_error_) {
    on_error_(parsed ? &c.req : nullptr, status, message, c.res);
  }
  c.res.status = status;
  c.res.close = true;
  c.body_unread = true;
  startResponse(c);
}

void HttpServer::startResponse(Conn& c) {
  serialize(c, c.res);
  c.state = State::kWriting;
  c.since = Clock::now();
  setDeadline(c, options_.write_timeout);
  onWritable(c);
}

void HttpServer::serialize(Conn& c, const HttpResponse& res) const {
  const bool close = res.close || !c.req.keep_alive || stopping_.load();
  std::string& out = c.out;
  out.clear();
  c.out_done = 0;
  out += "HTTP/1.1 ";
  appendNumber(out, static_cast<std::uint64_t>(res.status));
  out += ' ';
  out += reasonPhrase(res.status);
  out += "\r\n";
  if (!res.content_type.empty()) {
    out += "Content-Type: ";
    out += res.content_type;
    out += "\r\n";
  }
  if (res.stream) {
    // Open-ended: the body runs until the connection closes (no length, no chunking), and no
    // cache or proxy may keep or hold back any of it.
    out += "Cache-Control: no-store\r\nX-Accel-Buffering: no\r\n";
  } else {
    out += "Content-Length: ";
    appendNumber(out, res.body.size());
    out += "\r\n";
  }
  for (const auto& [name, value] : res.headers) {
    out += name;
    out += ": ";
    out += value;
    out += "\r\n";
  }
  if (close || res.stream) {
    out += "Connection: close\r\n";
  } else if (c.http10) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  if (c.req.method != "HEAD") {
    out += res.body;
  }
}

// Writes what it can without blocking. True once all of it went out; false to wait for
// EPOLLOUT (or after closing the connection on an error).
bool HttpServer::flush(Conn& c) {
  while (c.out_done < c.out.size()) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.out_done, c.out.size() - c.out_done,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out_done += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      return false;
    }
    closeConn(c);
    return false;
  }
  return true;
}

void HttpServer::onWritable(Conn& c) {
  if (flush(c)) {
    finishResponse(c);
  }  // else waiting for EPOLLOUT, or closed
}

void HttpServer::finishResponse(Conn& c) {
  if (c.out.capacity() > kKeepBodyCapacity) {
    std::string().swap(c.out);
  }
  if (c.res.stream && !stopping_.load()) {
    startStream(c);
    return;
  }
  const bool close = c.res.close || !c.req.keep_alive || stopping_.load();
  if (!close) {
    nextRequest(c);
  } else if (c.body_unread) {
    lingerClose(c);
  } else {
    closeConn(c);
  }
}

void HttpServer::startStream(Conn& c) {
  c.state = State::kStream;
  c.since = Clock::now();
  c.out.clear();
  c.out_done = 0;
  streams_.push_back(&c);
  setDeadline(c, c.res.stream->heartbeat_every_);
  // Called on any thread by HttpStream::write(); detached before the connection closes, and
  // every connection closes before stop() closes wake_fd_.
  c.res.stream->attach([this] {
    if (!streams_ready_.exchange(true)) {
      const uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    }
  });
  // What the client sent after its request (it should send nothing) is dropped from here on.
  onReadable(c);
}

// Sends what is pending, then whatever the stream has queued meanwhile. Event thread.
void HttpServer::pumpStream(Conn& c) {
  while (c.state == State::kStream) {
    if (c.out_done < c.out.size()) {
      if (!flush(c)) {
        if (c.state == State::kStream) {
          setDeadline(c, options_.write_timeout);  // a client that stops reading is cut
        }
        return;
      }
    }
    std::string more = c.res.stream->take();
    if (more.empty()) {
      c.out.clear();
      c.out_done = 0;
      setDeadline(c, c.res.stream->heartbeat_every_);
      return;
    }
    c.out = std::move(more);
    c.out_done = 0;
  }
}

void HttpServer::nextRequest(Conn& c) {
  // What the client already sent after this request moves to the front.
  const std::size_t rest = c.len - c.pos;
  if (rest > 0 && c.pos > 0) {
    std::memmove(c.buf.get(), &c.buf[c.pos], rest);
  }
  c.len = rest;
  c.pos = 0;
  c.scanned = 0;
  c.head_end = 0;
  c.body_left = 0;
  c.body_unread = false;
  c.req.headers.clear();
  c.state = State::kHead;
  c.got_bytes = rest > 0;
  c.since = Clock::now();
  setDeadline(c, c.got_bytes ? options_.header_timeout : options_.keep_alive_timeout);
  // Read in the event loop's next round, not from here: answering the next request could
  // bring us back here, once per pipelined request.
  if (!c.again) {
    c.again = true;
    again_.push_back(&c);
  }
}

// ---- the workers -----------------------------------------------------------------------------

void HttpServer::workerLoop() {
  while (true) {
    Conn* c = nullptr;
    {
      std::unique_lock lock(queue_mu_);
      queue_cv_.wait(lock, [this] { return workers_stop_ || !queue_.empty(); });
      if (queue_.empty()) {
        return;
      }
      c = queue_.front();
      queue_.pop_front();
    }
    HttpResponse& res = c->res;
    try {
      if (on_request_) {
        on_request_(c->req, res);
      }
    } catch (const std::exception&) {
      res.reset();
      if (on_error_) {
        on_error_(&c->req, 500, "internal error", res);
      }
      res.status = 500;
    }
    serialize(*c, res);
    // Most answers fit the socket buffer: send here and spare the event thread the work.
    while (c->out_done < c->out.size()) {
      const ssize_t n = ::send(c->fd, c->out.data() + c->out_done, c->out.size() - c->out_done,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n <= 0) {
        break;  // the event thread finishes it, or finds the error
      }
      c->out_done += static_cast<std::size_t>(n);
    }
    bool wake = false;
    {
      std::lock_guard lock(done_mu_);
      wake = done_.empty();
      done_.push_back(c);
    }
    if (wake) {
      const uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    }
  }
}

// ---- bodies ----------------------------------------------------------------------------------

Result<void> HttpServer::decodeBody(HttpRequest& req, std::size_t max) {
  const std::string_view encoding = trimOws(req.header("Content-Encoding"));
  if (encoding.empty() || equalsIgnoreCase(encoding, "identity")) {
    if (req.body.size() > max) {
      return makeError("too_large", "the body exceeds " + std::to_string(max) + " bytes");
    }
    return {};
  }
  if (!equalsIgnoreCase(encoding, "gzip") && !equalsIgnoreCase(encoding, "deflate")) {
    return makeError(
        "unsupported_media_type",
        "Content-Encoding " + std::string(encoding) + " is not supported (gzip, deflate or none)",
        "Content-Encoding");
  }
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) {  // +32: a gzip or a zlib header, detected
    return makeError("internal", "cannot start zlib");
  }
  std::string out;
  std::array<char, 16384> chunk{};
  zs.next_in = reinterpret_cast<Bytef*>(req.body.data());
  zs.avail_in = static_cast<uInt>(req.body.size());
  int rc = Z_OK;
  Error failure = makeError("", "");
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(chunk.data());
    zs.avail_out = static_cast<uInt>(chunk.size());
    rc = inflate(&zs, Z_NO_FLUSH);
    const std::size_t produced = chunk.size() - zs.avail_out;
    if (rc != Z_OK && rc != Z_STREAM_END) {
      failure = makeError("invalid", "the " + std::string(encoding) + " body is corrupt", "body");
      break;
    }
    if (out.size() + produced > max) {  // a decompression bomb stops here
      failure =
          makeError("too_large", "the decompressed body exceeds " + std::to_string(max) + " bytes");
      break;
    }
    out.append(chunk.data(), produced);
    if (rc == Z_OK && zs.avail_in == 0 && produced == 0) {
      failure = makeError("invalid", "the " + std::string(encoding) + " body is truncated", "body");
      break;
    }
  }
  inflateEnd(&zs);
  if (!failure.code.empty()) {
    return failure;
  }
  req.body = std::move(out);
  return {};
}

}  // namespace omniedge::kiosk
