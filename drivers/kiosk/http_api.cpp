#include "drivers/kiosk/http_api.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>
#include <string_view>

#include "drivers/kiosk/event_json.h"
#include "drivers/pos/transaction.h"
#include "drivers/pos/transaction_json.h"

namespace omniedge::kiosk {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr std::string_view kEventsPath = "/v1/events";
constexpr std::string_view kPosPath = "/v1/pos/transactions";
constexpr std::string_view kCustomersPrefix = "/v1/customers/";
constexpr std::string_view kHealthPath = "/v1/health";
constexpr std::string_view kMetricsPath = "/metrics";
constexpr const char* kJsonType = "application/json";
constexpr const char* kPrometheusType = "text/plain; version=0.0.4";

// Brute force: this many failed attempts from one address within kFailureWindow lock it out
// for kLockout.
constexpr std::size_t kMaxFailures = 5;
constexpr auto kFailureWindow = std::chrono::seconds(60);
constexpr auto kLockout = std::chrono::seconds(60);
// Beyond this many tracked addresses, expired ones are dropped on each new failure.
constexpr std::size_t kPruneAbove = 4096;

bool isLoopback(const std::string& host) {
  if (host == "localhost") {
    return true;
  }
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) {
      return true;
    }
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

std::string hostPort(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Time depends on the length of `presented` only, never on where it differs from `expected`.
bool equalConstantTime(std::string_view presented, std::string_view expected) {
  if (expected.empty()) {
    return false;
  }
  unsigned diff = presented.size() == expected.size() ? 0U : 1U;
  for (std::size_t i = 0; i < presented.size(); ++i) {
    diff |= static_cast<unsigned char>(presented[i]) ^
            static_cast<unsigned char>(expected[i % expected.size()]);
  }
  return diff == 0;
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
    text.remove_suffix(1);
  }
  return text;
}

// The token of "Authorization: Bearer <token>", empty when there is none.
std::string_view bearerToken(const std::string& header) {
  constexpr std::string_view kScheme = "bearer ";
  std::string_view value = trim(header);
  if (value.size() <= kScheme.size() ||
      !equalsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return {};
  }
  return trim(value.substr(kScheme.size()));
}

// The body is read as JSON unless it is declared as something that cannot be JSON. Absent,
// application/json (and any +json type) pass; so do text/plain and
// application/x-www-form-urlencoded, which is what `curl -d` sends when its user forgot -H:
// refusing those would only make a technician's first try fail for no gain.
bool isJsonContentType(const httplib::Request& req) {
  if (!req.has_header("Content-Type")) {
    return true;
  }
  const std::string value = req.get_header_value("Content-Type");
  const std::string_view type = trim(std::string_view(value).substr(0, value.find(';')));
  constexpr std::string_view kJsonSuffix = "+json";
  return equalsIgnoreCase(type, kJsonType) || equalsIgnoreCase(type, "text/plain") ||
         equalsIgnoreCase(type, "application/x-www-form-urlencoded") ||
         (type.size() > kJsonSuffix.size() &&
          equalsIgnoreCase(type.substr(type.size() - kJsonSuffix.size()), kJsonSuffix));
}

void sendError(httplib::Response& res, int status, std::string_view code, std::string_view message,
               std::string_view field = {}) {
  // `field` is always there (empty when no single field is to blame), so a client can read
  // error.field without checking for it.
  Json error = {{"code", code}, {"message", message}, {"field", field}};
  res.status = status;
  res.set_content(
      Json{{"error", std::move(error)}}.dump(-1, ' ', false, Json::error_handler_t::replace),
      kJsonType);
}

// Reads the body and throws it away, so that the connection stays in step after an early
// answer: httplib would otherwise parse the unread body as the next request. False when the
// body could not be read (then the connection must close).
bool drainBody(const httplib::ContentReader& reader) {
  return reader([](const char*, std::size_t) { return true; });
}

// "[0].type" -> "type" when the body was a single object, so that the field names what the
// producer sent.
std::string stripSingleIndex(std::string text) {
  constexpr std::string_view kFirst = "[0].";
  if (text.rfind(kFirst, 0) == 0) {
    text.erase(0, kFirst.size());
  }
  return text;
}

std::string routeLabel(const std::string& path) {
  for (std::string_view known : {kEventsPath, kPosPath, kHealthPath, kMetricsPath}) {
    if (path == known) {
      return std::string(known);
    }
  }
  if (path.rfind(kCustomersPrefix, 0) == 0) {
    return "/v1/customers";
  }
  return "other";
}

// For httplib's own refusals, which come without a body.
std::pair<std::string, std::string> defaultError(int status) {
  switch (status) {
    case 400:
      return {"bad_request", "the request is malformed"};
    case 404:
      return {"not_found", "no such endpoint"};
    case 413:
      return {"too_large", "the body is too large"};
    case 414:
      return {"uri_too_long", "the request URI is too long"};
    default:
      if (status >= 500) {
        return {"internal", "internal error"};
      }
      return {"error", "HTTP status " + std::to_string(status)};
  }
}

// Content-Length as a number; 0 when absent or malformed (httplib then refuses it itself).
std::uint64_t contentLength(const httplib::Request& req) {
  const std::string value = req.get_header_value("Content-Length");
  std::uint64_t length = 0;
  std::from_chars(value.data(), value.data() + value.size(), length);
  return length;
}

HttpApiOptions withoutEmptyTokens(HttpApiOptions options) {
  auto& tokens = options.tokens;
  tokens.erase(std::remove(tokens.begin(), tokens.end(), std::string()), tokens.end());
  options.threads = std::max(options.threads, 1);
  options.keep_alive_timeout_s = std::max(options.keep_alive_timeout_s, 1);
  return options;
}

}  // namespace

HttpApi::HttpApi(HttpApiOptions options, EventWriter& writer, std::function<HealthReport()> health,
                 std::function<std::string()> metrics)
    : options_(withoutEmptyTokens(std::move(options))),
      writer_(writer),
      health_(std::move(health)),
      metrics_(std::move(metrics)) {}

HttpApi::~HttpApi() { stop(); }

Result<void> HttpApi::start() {
  if (thread_.joinable()) {
    return makeError("invalid_state", "the HTTP API is already started");
  }
  if (options_.tokens.empty() && !isLoopback(options_.host)) {
    return makeError("config",
                     "refusing to serve the HTTP API on " + options_.host +
                         " without tokens: configure http.tokens_file or bind to 127.0.0.1");
  }
  try {
    server_ = std::make_unique<httplib::Server>();
    installRoutes();
    errno = 0;
    int bound = -1;
    if (options_.port == 0) {
      bound = server_->bind_to_any_port(options_.host);
    } else if (server_->bind_to_port(options_.host, options_.port)) {
      bound = options_.port;
    }
    if (bound <= 0) {
      const int err = errno;
      std::string message = "cannot listen on " + hostPort(options_.host, options_.port);
      if (err != 0) {
        message += ": ";
        message += std::strerror(err);
      }
      server_.reset();
      return makeError("io", std::move(message));
    }
    port_ = bound;
    auto done = std::make_shared<std::atomic<bool>>(false);
    thread_ = std::thread([server = server_.get(), done] {
      server->listen_after_bind();
      done->store(true);
    });
    // httplib's stop() is a no-op until listen has begun: wait for it, so that stop() never
    // races the thread's start. Takes microseconds.
    while (!server_->is_running() && !done->load()) {
      std::this_thread::yield();
    }
  } catch (const std::exception& e) {
    stop();
    return makeError("io", "cannot start the HTTP API on " +
                               hostPort(options_.host, options_.port) + ": " + e.what());
  }
  return {};
}

void HttpApi::stop() {
  if (server_) {
    server_->stop();
  }
  if (thread_.joinable()) {
    thread_.join();
  }
  server_.reset();
}

int HttpApi::port() const { return port_; }

std::string HttpApi::metricsText() const {
  std::lock_guard lock(stats_mu_);
  std::string text =
      "# HELP omniedge_http_requests_total Requests answered by the local HTTP API.\n"
      "# TYPE omniedge_http_requests_total counter\n";
  for (const auto& [key, count] : requests_) {
    text += "omniedge_http_requests_total{route=\"" + key.first + "\",code=\"" +
            std::to_string(key.second) + "\"} " + std::to_string(count) + "\n";
  }
  text +=
      "# HELP omniedge_http_events_accepted_total Events the local HTTP API acknowledged as "
      "durable.\n"
      "# TYPE omniedge_http_events_accepted_total counter\n"
      "omniedge_http_events_accepted_total " +
      std::to_string(events_accepted_) + "\n";
  return text;
}

void HttpApi::installRoutes() {
  httplib::Server& s = *server_;
  const int threads = options_.threads;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // httplib's default sets SO_REUSEPORT, which would let a second agent bind the same port
  // and steal half the requests; SO_REUSEADDR is enough for fast restarts.
  s.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  s.set_tcp_nodelay(true);
  s.set_keep_alive_max_count(100000);
  s.set_keep_alive_timeout(options_.keep_alive_timeout_s);
  s.set_read_timeout(5);
  s.set_write_timeout(5);
  s.set_payload_max_length(options_.max_body_bytes);

  // Fills a JSON body into httplib's own refusals (bad request line, URI too long, ...), which
  // never reach a handler, and counts them; our handlers' errors already have a body.
  s.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        const auto [code, message] = defaultError(res.status);
        sendError(res, res.status, code, message);
        countRequest(req, res);
        return httplib::Server::HandlerResponse::Handled;
      }));
  // A backstop only: serve() already turns exceptions into 500s.
  s.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, const std::exception_ptr&) {
        sendError(res, 500, "internal", "unexpected error");
      });
  // A client that asks before sending its body learns of a refusal without uploading it.
  s.set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
    try {
      if (checkAccess(req, res) == Access::kAllowed) {
        if (contentLength(req) <= options_.max_body_bytes) {
          return 100;
        }
        sendError(res, 413, "too_large",
                  "the body exceeds " + std::to_string(options_.max_body_bytes) + " bytes");
      }
      // This answer goes out without httplib's usual framing: add the length ourselves, or a
      // kept-alive client could not tell where the body ends.
      res.set_header("Content-Length", std::to_string(res.body.size()));
      countRequest(req, res);
      return res.status;
    } catch (...) {
      return 100;  // out of memory at worst: let the request proceed to its handler
    }
  });

  s.Post(std::string(kEventsPath), [this](const httplib::Request& req, httplib::Response& res,
                                          const httplib::ContentReader& reader) {
    serve(req, res, [&] { routeEvents(req, res, reader); });
  });
  s.Post(std::string(kPosPath), [this](const httplib::Request& req, httplib::Response& res,
                                       const httplib::ContentReader& reader) {
    serve(req, res, [&] { routeEvents(req, res, reader); });
  });
  s.Post(R"(/v1/customers/([^/]+)/cart/items)",
         [this](const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader& reader) {
           serve(req, res, [&] { routeEvents(req, res, reader); });
         });
  s.Get(std::string(kHealthPath), [this](const httplib::Request& req, httplib::Response& res) {
    serve(req, res, [&] {
      if (checkAccess(req, res) == Access::kAllowed) {
        handleHealth(res);
      }
    });
  });
  // GET /v1/customers/{key} and /v1/customers/{key}/cart: answered from the local profile
  // cache, so a kiosk gets its answer with the uplink down.
  s.Get(R"(/v1/customers/([^/]+)(/cart)?)",
        [this](const httplib::Request& req, httplib::Response& res) {
          serve(req, res, [&] {
            if (checkAccess(req, res) != Access::kAllowed) {
              return;
            }
            const std::string key = req.matches[1];
            auto profile = options_.customer_lookup ? options_.customer_lookup(key) : std::nullopt;
            if (!profile) {
              sendError(res, 404, "not_found", "no profile is cached for " + key, "key");
              return;
            }
            if (req.matches[2].length() == 0) {
              res.set_content(*profile, kJsonType);
              return;
            }
            const auto doc = Json::parse(*profile, nullptr, false);
            Json cart = doc.is_object() && doc.contains("cart") ? doc["cart"]
                                                                : Json{{"items", Json::array()}};
            res.set_content(cart.dump(), kJsonType);
          });
        });
  s.Get(std::string(kMetricsPath), [this](const httplib::Request& req, httplib::Response& res) {
    serve(req, res, [&] {
      if (checkAccess(req, res) == Access::kAllowed) {
        handleMetrics(res);
      }
    });
  });

  // Everything else: 404 for unknown paths, 405 for known ones with the wrong method. Bodies
  // are drained, never buffered (httplib would buffer them whole before a plain handler).
  auto other = [this](const httplib::Request& req, httplib::Response& res) {
    serve(req, res, [&] { routeOther(req, res, nullptr); });
  };
  auto other_with_body = [this](const httplib::Request& req, httplib::Response& res,
                                const httplib::ContentReader& reader) {
    serve(req, res, [&] { routeOther(req, res, &reader); });
  };
  const std::string any = ".*";
  s.Get(any, other);
  s.Options(any, other);
  s.Post(any, other_with_body);
  s.Put(any, other_with_body);
  s.Patch(any, other_with_body);
  s.Delete(any, other_with_body);
}

void HttpApi::serve(const httplib::Request& req, httplib::Response& res,
                    const std::function<void()>& handler) {
  try {
    handler();
  } catch (const std::exception& e) {
    sendError(res, 500, "internal", std::string("unexpected error: ") + e.what());
  } catch (...) {
    sendError(res, 500, "internal", "unexpected error");
  }
  // Counted before the answer goes out, so that a client that got it sees it in the metrics.
  countRequest(req, res);
}

void HttpApi::routeEvents(const httplib::Request& req, httplib::Response& res,
                          const httplib::ContentReader& reader) {
  const std::size_t max = options_.max_body_bytes;
  if (checkAccess(req, res) == Access::kDenied) {
    if (!drainBody(reader)) {
      res.set_header("Connection", "close");
    }
    return;
  }
  if (!isJsonContentType(req)) {
    if (!drainBody(reader)) {
      res.set_header("Connection", "close");
    }
    sendError(res, 415, "unsupported_media_type", "the body must be application/json");
    return;
  }
  std::string body;
  std::size_t seen = 0;
  bool too_large = false;
  // httplib refuses an oversized Content-Length itself (status 413, body skipped unread).
  // Bodies without one (chunked, or compressed) are capped here: past the limit the rest is
  // read and dropped, never held, and never left in the connection (see drainBody()).
  const bool complete = reader([&](const char* data, std::size_t n) {
    seen += n;
    if (seen > max) {
      if (!too_large) {
        too_large = true;
        std::string().swap(body);
      }
      return true;
    }
    body.append(data, n);
    return true;
  });
  if (!complete && res.status == 413) {
    too_large = true;
  } else if (!complete) {
    res.set_header("Connection", "close");
    sendError(res, 400, "bad_request", "the body could not be read");
    return;
  }
  if (too_large) {
    sendError(res, 413, "too_large", "the body exceeds " + std::to_string(max) + " bytes");
    return;
  }
  if (req.path == kPosPath) {
    handlePosTransactions(res, std::move(body));
  } else if (req.path.rfind(kCustomersPrefix, 0) == 0) {
    handleCartAdd(res, std::string(req.matches[1]), std::move(body));
  } else {
    handleEvents(res, std::move(body));
  }
}

void HttpApi::routeOther(const httplib::Request& req, httplib::Response& res,
                         const httplib::ContentReader* reader) {
  if (reader != nullptr && !drainBody(*reader)) {
    res.set_header("Connection", "close");
  }
  if (checkAccess(req, res) == Access::kDenied) {
    return;
  }
  if (routeLabel(req.path) == "other") {
    sendError(res, 404, "not_found", "no such endpoint: " + req.path);
  } else {
    sendError(res, 405, "method_not_allowed", req.method + " is not allowed on " + req.path);
  }
}

HttpApi::Access HttpApi::checkAccess(const httplib::Request& req, httplib::Response& res) {
  if (options_.tokens.empty()) {
    return Access::kAllowed;
  }
  const auto now = Clock::now();
  std::lock_guard lock(auth_mu_);
  auto found = failures_.find(req.remote_addr);
  if (found != failures_.end() && found->second.locked_until > now) {
    const auto left = std::chrono::ceil<std::chrono::seconds>(found->second.locked_until - now);
    res.set_header("Retry-After", std::to_string(std::max<int64_t>(left.count(), 1)));
    sendError(res, 429, "too_many_requests",
              "too many failed authentication attempts from this address; retry later");
    return Access::kDenied;
  }

  const std::string authorization = req.get_header_value("Authorization");
  const std::string_view presented = bearerToken(authorization);
  bool match = false;
  for (const std::string& token : options_.tokens) {
    match |= equalConstantTime(presented, token);  // no early exit: same time for any token
  }
  if (match) {
    return Access::kAllowed;
  }

  if (found == failures_.end()) {
    if (failures_.size() >= kPruneAbove) {
      std::erase_if(failures_, [now](const auto& entry) {
        const Failures& f = entry.second;
        return f.locked_until <= now &&
               (f.recent.empty() || f.recent.back() + kFailureWindow <= now);
      });
    }
    found = failures_.emplace(req.remote_addr, Failures{}).first;
  }
  Failures& failures = found->second;
  std::erase_if(failures.recent, [now](Clock::time_point t) { return t + kFailureWindow <= now; });
  failures.recent.push_back(now);
  if (failures.recent.size() >= kMaxFailures) {
    failures.recent.clear();
    failures.locked_until = now + kLockout;
  }
  res.set_header("WWW-Authenticate", "Bearer");
  sendError(res, 401, "unauthorized",
            presented.empty() ? "an Authorization: Bearer token is required"
                              : "the bearer token is not valid");
  return Access::kDenied;
}

void HttpApi::handleEvents(httplib::Response& res, std::string body) {
  bool was_array = false;
  auto events = parseEvents(body, options_.max_events_per_request, &was_array);
  if (!events) {
    const Error& e = events.error();
    if (e.code == "too_large") {
      sendError(res, 413, e.code, e.message, e.field);
    } else if (was_array) {
      sendError(res, 400, e.code, e.message, e.field);
    } else {
      sendError(res, 400, e.code, stripSingleIndex(e.message), stripSingleIndex(e.field));
    }
    return;
  }
  body.clear();
  body.shrink_to_fit();
  answerAppend(res, std::move(*events), was_array);
}

// POST /v1/pos/transactions. The POS mapping's own errors name the request's fields; so do the
// writer's, once pos::explainRefusal() has told them in the transactions' terms (ended_at, not
// the event's occurred_at; an oversized event by its transaction, not "[0]"). The parse is held
// to 8 times the body limit (64 MiB by default): arrays are mapped element by element, so that
// is far more than 1000 real transactions need, and a body of a million empty lines stops there.
void HttpApi::handlePosTransactions(httplib::Response& res, std::string body) {
  bool was_array = false;
  pos::Parsed parsed = pos::parseJsonTransactions(body, options_.max_events_per_request, &was_array,
                                                  8 * options_.max_body_bytes);
  if (parsed.error) {
    const pos::ParseError& e = *parsed.error;
    const std::string code = e.code == "empty" ? "invalid" : e.code;
    std::string message = e.reason;
    if (e.line > 0) {
      message += " (line " + std::to_string(e.line) + ")";
    }
    sendError(res, e.code == "too_large" ? 413 : 400, code, message,
              e.element.empty() && code == "invalid_json" ? "body" : e.element);
    return;
  }
  body.clear();
  body.shrink_to_fit();
  std::vector<Event> events;
  events.reserve(parsed.transactions.size());
  for (const pos::Transaction& tx : parsed.transactions) {
    events.push_back(pos::toEvent(tx, options_.store_id));
  }
  Result<AppendOutcome> outcome = makeError("io", "not appended");
  try {
    outcome = writer_.append(std::move(events));
  } catch (const std::exception& e) {
    outcome = makeError("io", std::string("the buffer failed: ") + e.what());
  }
  if (!outcome) {
    const Error& e = outcome.error();
    if (e.code == "invalid" || e.code == "too_large") {
      const pos::ParseError why = pos::explainRefusal(e, parsed.transactions, was_array);
      sendError(res, e.code == "too_large" ? 413 : 400, e.code, why.reason, why.element);
    } else if (e.code == "full" || e.code == "stopping") {
      res.set_header("Retry-After", std::to_string(options_.retry_after_s));
      sendError(res, 503, e.code, e.message, e.field);
    } else {
      sendError(res, 500, e.code.empty() ? "internal" : e.code, e.message, e.field);
    }
    return;
  }
  {
    std::lock_guard lock(stats_mu_);
    events_accepted_ += outcome->ids.size();
  }
  res.status = 202;
  res.set_content(Json{{"accepted", outcome->ids.size()}, {"ids", outcome->ids}}.dump(
                      -1, ' ', false, Json::error_handler_t::replace),
                  kJsonType);
}

void HttpApi::answerAppend(httplib::Response& res, std::vector<Event> events, bool was_array) {
  auto outcome = appendOrRefuse(res, std::move(events), was_array);
  if (!outcome) {
    return;
  }
  const std::vector<std::string>& ids = outcome->ids;
  res.status = 202;
  res.set_content(Json{{"accepted", ids.size()}, {"ids", ids}}.dump(-1, ' ', false,
                                                                    Json::error_handler_t::replace),
                  kJsonType);
}

std::optional<AppendOutcome> HttpApi::appendOrRefuse(httplib::Response& res,
                                                     std::vector<Event> events, bool was_array) {
  Result<AppendOutcome> outcome = makeError("io", "not appended");
  try {
    outcome = writer_.append(std::move(events));
  } catch (const std::exception& e) {
    outcome = makeError("io", std::string("the buffer failed: ") + e.what());
  }
  if (!outcome) {
    const Error& e = outcome.error();
    std::string field = was_array ? e.field : stripSingleIndex(e.field);
    std::string message = was_array ? e.message : stripSingleIndex(e.message);
    if (e.code == "invalid") {
      sendError(res, 400, e.code, message, field);
    } else if (e.code == "too_large") {
      sendError(res, 413, e.code, message, field);
    } else if (e.code == "full" || e.code == "stopping") {
      res.set_header("Retry-After", std::to_string(options_.retry_after_s));
      sendError(res, 503, e.code, message, field);
    } else {
      sendError(res, 500, e.code.empty() ? "internal" : e.code, message, field);
    }
    return std::nullopt;
  }
  {
    std::lock_guard lock(stats_mu_);
    events_accepted_ += outcome->ids.size();
  }
  return std::move(*outcome);
}

// POST /v1/customers/{key}/cart/items: the kiosk adds an item. The kiosk.cart_add event for the
// centre is made durable first; only then does the local cart change, so the two never disagree
// after a crash by more than a resend.
void HttpApi::handleCartAdd(httplib::Response& res, const std::string& key, std::string body) {
  if (!options_.customer_lookup || !options_.cart_add || !options_.customer_lookup(key)) {
    sendError(res, 404, "not_found", "no profile is cached for " + key, "key");
    return;
  }
  const Json in = Json::parse(body, nullptr, false);
  if (in.is_discarded() || !in.is_object()) {
    sendError(res, 400, "invalid_json", "the body must be a JSON object", "body");
    return;
  }
  for (const auto& [name, value] : in.items()) {
    if (name != "sku" && name != "qty" && name != "price") {
      sendError(res, 400, "invalid", name + " is not a cart item field (sku, qty, price)", name);
      return;
    }
  }
  if (!in.contains("sku") || !in["sku"].is_string() || in["sku"].get<std::string>().empty() ||
      in["sku"].get<std::string>().size() > 128) {
    sendError(res, 400, "invalid", "sku is required (a string of 1-128 characters)", "sku");
    return;
  }
  if (in.contains("qty") && (!in["qty"].is_number_integer() || in["qty"].get<int64_t>() < 1 ||
                             in["qty"].get<int64_t>() > 10000)) {
    sendError(res, 400, "invalid", "qty must be a whole number from 1 to 10000", "qty");
    return;
  }
  if (in.contains("price") && (!in["price"].is_number() || in["price"].get<double>() < 0)) {
    sendError(res, 400, "invalid", "price must be a number of at least 0", "price");
    return;
  }
  Json item = {{"sku", in["sku"]}, {"qty", in.value("qty", int64_t{1})}, {"channel", "store"}};
  if (in.contains("price")) {
    item["price"] = in["price"];
  }
  Event e;
  e.type = "kiosk.cart_add";
  e.source = "kiosk";
  const auto colon = key.find(':');
  const std::string kind = key.substr(0, colon);
  const std::string value = colon == std::string::npos ? key : key.substr(colon + 1);
  if (kind == "loyalty") {
    e.customer["loyalty_id"] = value;
  } else if (kind == "app") {
    e.customer["app_user_id"] = value;
  } else if (kind == "email_sha256" || kind == "phone_sha256") {
    e.customer[kind] = value;
  } else {
    e.customer["beacon"] = key;
  }
  e.data_json = Json{{"key", key}, {"item", item}}.dump();
  if (!appendOrRefuse(res, {std::move(e)}, false)) {
    return;
  }
  auto cart = options_.cart_add(key, item.dump());
  if (!cart) {
    sendError(res, cart.error().code == "not_found" ? 404 : 500, cart.error().code,
              cart.error().message, "key");
    return;
  }
  res.status = 201;
  res.set_content(*cart, kJsonType);
}

void HttpApi::handleHealth(httplib::Response& res) {
  HealthReport report{true, {}};
  if (health_) {
    try {
      report = health_();
    } catch (const std::exception& e) {
      report = HealthReport{false, std::string("health check failed: ") + e.what()};
    }
  }
  Json body = {{"status", report.ready ? "ready" : "not_ready"}};
  if (!report.ready) {
    body["reason"] = report.reason;
  }
  res.status = report.ready ? 200 : 503;
  res.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace), kJsonType);
}

void HttpApi::handleMetrics(httplib::Response& res) {
  try {
    res.set_content(metrics_ ? metrics_() : metricsText(), kPrometheusType);
    res.status = 200;
  } catch (const std::exception& e) {
    sendError(res, 500, "internal", std::string("metrics failed: ") + e.what());
  }
}

void HttpApi::countRequest(const httplib::Request& req, const httplib::Response& res) {
  std::lock_guard lock(stats_mu_);
  ++requests_[{routeLabel(req.path), res.status}];
}

}  // namespace omniedge::kiosk
