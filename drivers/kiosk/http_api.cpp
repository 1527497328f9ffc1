#include "drivers/kiosk/http_api.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>
#include <string_view>

#include "agent/api/json_string.h"
#include "drivers/kiosk/customer_key.h"
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
constexpr std::string_view kStreamPath = "/v1/stream";
constexpr const char* kJsonType = "application/json";
constexpr const char* kPrometheusType = "text/plain; version=0.0.4";

// The channels a caller may be allowed to write through POST /v1/events.
constexpr unsigned kKiosk = 1;
constexpr unsigned kBeacon = 2;
constexpr unsigned kPos = 4;

unsigned channelBit(std::string_view channel) {
  if (channel == "kiosk") {
    return kKiosk;
  }
  if (channel == "beacon") {
    return kBeacon;
  }
  if (channel == "pos") {
    return kPos;
  }
  return 0;
}

// "kiosk.*, beacon.*", for messages.
std::string channelList(unsigned channels) {
  std::string out;
  for (const auto& [bit, name] :
       {std::pair{kKiosk, "kiosk.*"}, std::pair{kBeacon, "beacon.*"}, std::pair{kPos, "pos.*"}}) {
    if ((channels & bit) != 0) {
      out += out.empty() ? "" : ", ";
      out += name;
    }
  }
  return out;
}

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
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) {
    text.remove_suffix(1);
  }
  return text;
}

// The token of "Authorization: Bearer <token>", empty when there is none.
std::string_view bearerToken(std::string_view header) {
  constexpr std::string_view kScheme = "bearer ";
  std::string_view value = trim(header);
  if (value.size() <= kScheme.size() ||
      !equalsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return {};
  }
  return trim(value.substr(kScheme.size()));
}

// The password of `Authorization: Basic base64(user:password)`, which is how a browser sends
// what its user typed when a mounted route (the web console) asked with WWW-Authenticate:
// Basic; empty when the header is anything else or not valid base64.
std::string basicPassword(std::string_view header) {
  constexpr std::string_view kScheme = "basic ";
  std::string_view value = trim(header);
  if (value.size() <= kScheme.size() ||
      !equalsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return {};
  }
  value = trim(value.substr(kScheme.size()));
  std::string decoded;
  uint32_t bits = 0;
  int have = 0;
  for (const char c : value) {
    int v = -1;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      v = c - '0' + 52;
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else if (c == '=') {
      break;
    } else {
      return {};
    }
    bits = (bits << 6) | static_cast<uint32_t>(v);
    have += 6;
    if (have >= 8) {
      have -= 8;
      decoded += static_cast<char>((bits >> have) & 0xff);
    }
  }
  const std::size_t colon = decoded.find(':');
  return colon == std::string::npos ? std::string() : decoded.substr(colon + 1);
}

// The body is read as JSON unless it is declared as something that cannot be JSON. Absent,
// application/json (and any +json type) pass; so do text/plain and
// application/x-www-form-urlencoded, which is what `curl -d` sends when its user forgot -H:
// refusing those would only make a technician's first try fail for no gain.
bool isJsonContentType(const HttpRequest& req) {
  if (!req.hasHeader("Content-Type")) {
    return true;
  }
  const std::string_view value = req.header("Content-Type");
  const std::string_view type = trim(value.substr(0, value.find(';')));
  constexpr std::string_view kJsonSuffix = "+json";
  return equalsIgnoreCase(type, kJsonType) || equalsIgnoreCase(type, "text/plain") ||
         equalsIgnoreCase(type, "application/x-www-form-urlencoded") ||
         (type.size() > kJsonSuffix.size() &&
          equalsIgnoreCase(type.substr(type.size() - kJsonSuffix.size()), kJsonSuffix));
}

void sendError(HttpResponse& res, int status, std::string_view code, std::string_view message,
               std::string_view field = {}) {
  // `field` is always there (empty when no single field is to blame), so a client can read
  // error.field without checking for it.
  Json error = {{"code", code}, {"message", message}, {"field", field}};
  res.status = status;
  res.set_content(
      Json{{"error", std::move(error)}}.dump(-1, ' ', false, Json::error_handler_t::replace),
      kJsonType);
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

// For the protocol layer's refusals.
std::string_view errorCode(int status) {
  switch (status) {
    case 400:
      return "bad_request";
    case 408:
      return "timeout";
    case 413:
      return "too_large";
    case 414:
      return "uri_too_long";
    case 415:
      return "unsupported_media_type";
    case 417:
      return "expectation_failed";
    case 431:
      return "headers_too_large";
    case 501:
      return "not_implemented";
    case 503:
      return "busy";
    case 505:
      return "http_version";
    default:
      return status >= 500 ? "internal" : "error";
  }
}

// The path of a customer route, split: key and what follows it ("", "/cart", "/cart/items").
bool splitCustomerPath(std::string_view path, std::string_view& key, std::string_view& tail) {
  if (path.rfind(kCustomersPrefix, 0) != 0) {
    return false;
  }
  path.remove_prefix(kCustomersPrefix.size());
  const std::size_t slash = path.find('/');
  key = path.substr(0, slash);
  tail = slash == std::string_view::npos ? std::string_view() : path.substr(slash);
  return !key.empty();
}

HttpApiOptions normalised(HttpApiOptions options) {
  auto& tokens = options.tokens;
  tokens.erase(std::remove_if(tokens.begin(), tokens.end(),
                              [](const ApiToken& t) { return t.secret.empty(); }),
               tokens.end());
  options.threads = std::max(options.threads, 1);
  options.max_tracked_addresses = std::max<std::size_t>(options.max_tracked_addresses, 1);
  options.auth_max_failures = std::max(options.auth_max_failures, 1);
  return options;
}

}  // namespace

Result<std::vector<ApiToken>> parseTokens(std::string_view text) {
  std::vector<ApiToken> tokens;
  int number = 0;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++number;
    auto isSpace = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
    while (!line.empty() && isSpace(line.front())) {
      line.remove_prefix(1);
    }
    while (!line.empty() && isSpace(line.back())) {
      line.remove_suffix(1);
    }
    if (line.empty() || line.front() == '#') {
      continue;
    }
    const std::string where = "line " + std::to_string(number) + ": ";
    ApiToken token;
    std::size_t end = 0;
    while (end < line.size() && !isSpace(line[end])) {
      ++end;
    }
    token.secret = line.substr(0, end);
    line.remove_prefix(end);
    bool granted = false;
    while (!line.empty()) {
      while (!line.empty() && isSpace(line.front())) {
        line.remove_prefix(1);
      }
      end = 0;
      while (end < line.size() && !isSpace(line[end])) {
        ++end;
      }
      const std::string_view attribute = line.substr(0, end);
      line.remove_prefix(end);
      constexpr std::string_view kChannels = "channels=";
      constexpr std::string_view kZones = "zones=";
      if (attribute.rfind(kZones, 0) == 0) {
        if (!token.zones.empty()) {
          return makeError("config", where + "zones= is given twice");
        }
        std::string_view list = attribute.substr(kZones.size());
        while (true) {
          const std::size_t comma = list.find(',');
          const std::string_view zone = list.substr(0, comma);
          if (zone.empty()) {
            return makeError("config", where + "zones= holds an empty zone name");
          }
          token.zones.emplace_back(zone);
          if (comma == std::string_view::npos) {
            break;
          }
          list.remove_prefix(comma + 1);
        }
        continue;
      }
      if (attribute.rfind(kChannels, 0) != 0) {
        return makeError("config", where + "'" + std::string(attribute) +
                                       "' is not understood (a token may be followed by "
                                       "channels=kiosk,beacon,pos and zones=zone1,zone2)");
      }
      if (granted) {
        return makeError("config", where + "channels= is given twice");
      }
      granted = true;
      token.channels.clear();
      std::string_view list = attribute.substr(kChannels.size());
      while (true) {
        const std::size_t comma = list.find(',');
        std::string_view channel = list.substr(0, comma);
        if (channel.size() > 2 && channel.substr(channel.size() - 2) == ".*") {
          channel.remove_suffix(2);  // "kiosk.*" reads as "kiosk"
        }
        if (channel == "agent") {
          return makeError("config", where +
                                         "agent.* events come only from the agent itself; no "
                                         "token can be granted them");
        }
        if (channelBit(channel) == 0) {
          return makeError("config", where + "'" + std::string(channel) +
                                         "' is not a channel a token can write (kiosk, beacon, "
                                         "pos)");
        }
        if (std::find(token.channels.begin(), token.channels.end(), channel) ==
            token.channels.end()) {
          token.channels.emplace_back(channel);
        }
        if (comma == std::string_view::npos) {
          break;
        }
        list.remove_prefix(comma + 1);
      }
    }
    for (const ApiToken& other : tokens) {
      if (other.secret == token.secret) {
        return makeError("config", where + "this token is already listed above");
      }
    }
    tokens.push_back(std::move(token));
  }
  if (tokens.empty()) {
    return makeError("config", "it holds no token");
  }
  return tokens;
}

std::size_t HttpApi::AddrKeyHash::operator()(const AddrKey& k) const {
  uint64_t a = 0;
  uint64_t b = 0;
  std::memcpy(&a, k.bytes.data(), 8);
  std::memcpy(&b, k.bytes.data() + 8, 8);
  return std::hash<uint64_t>()(a * 0x9E3779B97F4A7C15ULL ^ b);
}

namespace {

// Who a failure is counted against: an IPv4 address, or an IPv6 /64 (one host's share of
// addresses: rotating through it must not buy fresh attempts).
std::array<uint8_t, 16> addressKey(const sockaddr_storage& peer) {
  std::array<uint8_t, 16> key{};
  if (peer.ss_family == AF_INET) {
    key[10] = key[11] = 0xff;
    std::memcpy(&key[12], &reinterpret_cast<const sockaddr_in&>(peer).sin_addr, 4);
  } else if (peer.ss_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
      std::memcpy(key.data(), a.s6_addr, 16);
    } else {
      std::memcpy(key.data(), a.s6_addr, 8);
    }
  }
  return key;
}

}  // namespace

HttpApi::HttpApi(HttpApiOptions options, EventWriter& writer, std::function<HealthReport()> health,
                 std::function<std::string()> metrics)
    : options_(normalised(std::move(options))),
      writer_(writer),
      health_(std::move(health)),
      metrics_(std::move(metrics)) {
  for (const ApiToken& token : options_.tokens) {
    unsigned bits = 0;
    for (const std::string& channel : token.channels) {
      bits |= channelBit(channel);
    }
    token_channels_.push_back(bits);
  }
}

HttpApi::~HttpApi() { stop(); }

Result<void> HttpApi::mount(std::string prefix, GetHandler handler) {
  if (port_.load() != 0) {
    return makeError("invalid_state", "routes are mounted before the HTTP API starts");
  }
  const bool shape = prefix.size() >= 2 && prefix.front() == '/' && prefix.back() != '/' &&
                     prefix.find_first_of("?#") == std::string::npos;
  auto under = [&prefix](std::string_view base) {
    return prefix == base || prefix.starts_with(std::string(base) + "/");
  };
  if (!shape || under("/v1") || under(kMetricsPath) || mountFor(prefix) >= 0 || !handler) {
    return makeError("config", "cannot mount a route on '" + prefix +
                                   "': it must be /name, outside /v1 and /metrics, once");
  }
  mounts_.push_back(Mount{std::move(prefix), std::move(handler)});
  return {};
}

int HttpApi::mountFor(std::string_view path) const {
  for (std::size_t i = 0; i < mounts_.size(); ++i) {
    const std::string& prefix = mounts_[i].prefix;
    if (path.starts_with(prefix) && (path.size() == prefix.size() || path[prefix.size()] == '/')) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

Result<void> HttpApi::start() {
  if (port_.load() != 0) {
    return makeError("invalid_state", "the HTTP API is already started");
  }
  if (options_.tokens.empty() && !isLoopback(options_.host)) {
    return makeError("config",
                     "refusing to serve the HTTP API on " + options_.host +
                         " without tokens: configure http.tokens_file or bind to 127.0.0.1");
  }
  HttpServerOptions so;
  so.host = options_.host;
  so.port = options_.port;
  so.workers = options_.threads;
  so.max_connections = options_.max_connections;
  so.max_header_bytes = options_.max_header_bytes;
  so.max_headers = options_.max_headers;
  so.max_body_bytes = options_.max_body_bytes;
  so.max_buffered_body_bytes = std::max(options_.max_body_bytes * 4, std::size_t{32} << 20);
  so.header_timeout = options_.header_timeout;
  so.body_timeout = options_.body_timeout;
  so.keep_alive_timeout = options_.keep_alive_timeout;
  auto server = std::make_shared<HttpServer>(
      so, [this](HttpRequest& req, HttpResponse& res) { return onHead(req, res); },
      [this](HttpRequest& req, HttpResponse& res) { onRequest(req, res); },
      [this](const HttpRequest* req, int status, std::string_view message, HttpResponse& res) {
        onError(req, status, message, res);
      });
  {
    std::lock_guard lock(server_mu_);
    server_ = server;
  }
  if (auto started = server->start(); !started) {
    std::lock_guard lock(server_mu_);
    server_.reset();
    return started.error();
  }
  port_ = server->port();
  return {};
}

void HttpApi::stop() {
  std::shared_ptr<HttpServer> server;
  {
    std::lock_guard lock(server_mu_);
    server = std::move(server_);
  }
  if (server) {
    server->stop();
  }
  // The event thread is gone: the lockout table is ours again.
  failures_.clear();
  tracked_ = 0;
  port_ = 0;
}

int HttpApi::port() const { return port_.load(); }

namespace {

std::string_view routeLabel(int route) {
  static constexpr std::array<std::string_view, 9> kLabels = {"/v1/events",
                                                              "/v1/pos/transactions",
                                                              "/v1/customers/{key}",
                                                              "/v1/customers/{key}/cart",
                                                              "/v1/customers/{key}/cart/items",
                                                              "/v1/health",
                                                              "/metrics",
                                                              "/v1/stream",
                                                              "other"};
  return route >= 0 && route < static_cast<int>(kLabels.size()) ? kLabels[route] : "other";
}

}  // namespace

std::string_view HttpApi::routeName(Route route) const {
  const int index = static_cast<int>(route) - static_cast<int>(Route::kMounted);
  if (index >= 0 && index < static_cast<int>(mounts_.size())) {
    return mounts_[static_cast<std::size_t>(index)].prefix;
  }
  return routeLabel(static_cast<int>(route));
}

std::string HttpApi::metricsText() const {
  std::string text =
      "# HELP omniedge_http_requests_total Requests answered by the local HTTP API.\n"
      "# TYPE omniedge_http_requests_total counter\n";
  uint64_t accepted = 0;
  {
    std::lock_guard lock(stats_mu_);
    for (const auto& [key, count] : requests_) {
      text += "omniedge_http_requests_total{route=\"";
      text += routeName(key.first);
      text += "\",code=\"" + std::to_string(key.second) + "\"} " + std::to_string(count) + "\n";
    }
    accepted = events_accepted_;
  }
  text +=
      "# HELP omniedge_http_events_accepted_total Events the local HTTP API acknowledged as "
      "durable.\n"
      "# TYPE omniedge_http_events_accepted_total counter\n"
      "omniedge_http_events_accepted_total " +
      std::to_string(accepted) + "\n";
  HttpServerStats s;
  {
    std::lock_guard lock(server_mu_);
    if (server_) {
      s = server_->stats();
    }
  }
  auto metric = [&text](std::string_view name, std::string_view type, std::string_view help,
                        std::initializer_list<std::pair<std::string_view, uint64_t>> values) {
    text += "# HELP ";
    text += name;
    text += ' ';
    text += help;
    text += "\n# TYPE ";
    text += name;
    text += ' ';
    text += type;
    text += '\n';
    for (const auto& [labels, value] : values) {
      text += name;
      text += labels;
      text += ' ' + std::to_string(value) + '\n';
    }
  };
  metric("omniedge_http_connections_open", "gauge", "Connections open now.", {{"", s.open}});
  metric("omniedge_http_connections_accepted_total", "counter", "Connections accepted.",
         {{"", s.accepted}});
  metric("omniedge_http_connections_refused_total", "counter",
         "Requests answered 503 at once because the server was at its limits.",
         {{"{reason=\"connections\"}", s.refused_busy},
          {"{reason=\"body_bytes\"}", s.body_budget_busy}});
  metric("omniedge_http_connections_closed_total", "counter",
         "Connections the server closed: evicted to make room, timed out, idle.",
         {{"{reason=\"evicted\"}", s.evicted},
          {"{reason=\"head_timeout\"}", s.head_timeouts},
          {"{reason=\"body_timeout\"}", s.body_timeouts},
          {"{reason=\"idle\"}", s.idle_closed}});
  metric("omniedge_http_auth_failures_total", "counter",
         "Requests refused for a missing or wrong bearer token (401 and 429).",
         {{"", auth_failures_.load()}});
  metric("omniedge_http_auth_lockouts_total", "counter",
         "Addresses locked out after repeated authentication failures.", {{"", lockouts_.load()}});
  metric("omniedge_http_auth_tracked_addresses", "gauge",
         "Addresses the brute-force lockout remembers.", {{"", tracked_.load()}});
  // The kiosk streams (GET /v1/stream).
  metric("omniedge_http_streams_open", "gauge", "Kiosk engagement streams open now.",
         {{"", openStreams()}});
  metric("omniedge_http_stream_frames_total", "counter",
         "Engagement frames queued to kiosk streams.", {{"", stream_frames_.load()}});
  metric("omniedge_http_streams_refused_total", "counter",
         "Kiosk streams refused: every stream slot was in use.", {{"", stream_refused_.load()}});
  return text;
}

HeadAction HttpApi::onHead(HttpRequest& req, HttpResponse& res) {
  const bool get = req.method == "GET" || req.method == "HEAD";
  const bool post = req.method == "POST";
  Route route = Route::kOther;
  bool method_ok = false;
  std::string_view key;
  std::string_view tail;
  if (req.path == kEventsPath) {
    route = Route::kEvents;
    method_ok = post;
  } else if (req.path == kPosPath) {
    route = Route::kPos;
    method_ok = post;
  } else if (req.path == kHealthPath) {
    route = Route::kHealth;
    method_ok = get;
  } else if (req.path == kMetricsPath) {
    route = Route::kMetrics;
    method_ok = get;
  } else if (req.path == kStreamPath) {
    route = Route::kStream;
    method_ok = get;
  } else if (splitCustomerPath(req.path, key, tail)) {
    if (tail.empty()) {
      route = Route::kCustomer;
      method_ok = get;
    } else if (tail == "/cart") {
      route = Route::kCustomerCart;
      method_ok = get;
    } else if (tail == "/cart/items") {
      route = Route::kCartItems;
      method_ok = post;
    }
  } else if (const int mount = mountFor(req.path); mount >= 0) {
    route = static_cast<Route>(static_cast<int>(Route::kMounted) + mount);
    method_ok = get;
  }
  const bool mounted = static_cast<int>(route) >= static_cast<int>(Route::kMounted);
  req.route = static_cast<int>(route);
  auto answered = [&] {
    countRequest(route, res.status);
    return HeadAction::kRespond;
  };

  const std::optional<int> caller = authenticate(req, res, mounted);
  if (!caller) {
    return answered();
  }
  req.caller = *caller;
  if (route == Route::kOther) {
    sendError(res, 404, "not_found", "no such endpoint: " + req.path);
    return answered();
  }
  if (!method_ok) {
    const bool post_route =
        route == Route::kEvents || route == Route::kPos || route == Route::kCartItems;
    res.set_header("Allow", post_route ? "POST" : "GET, HEAD");
    sendError(res, 405, "method_not_allowed",
              std::string(req.method) + " is not allowed on " + req.path);
    return answered();
  }
  if (post && !isJsonContentType(req)) {
    sendError(res, 415, "unsupported_media_type", "the body must be application/json");
    return answered();
  }
  if (route == Route::kStream) {
    openStream(req, res);
    return answered();
  }
  return HeadAction::kReadBody;
}

void HttpApi::onRequest(HttpRequest& req, HttpResponse& res) {
  const auto route = static_cast<Route>(req.route);
  try {
    if (route == Route::kEvents || route == Route::kPos || route == Route::kCartItems) {
      if (auto decoded = HttpServer::decodeBody(req, options_.max_body_bytes); !decoded) {
        const Error& e = decoded.error();
        const int status =
            e.code == "too_large" ? 413 : (e.code == "unsupported_media_type" ? 415 : 400);
        sendError(res, status, e.code, e.message, e.field);
      } else if (route == Route::kEvents) {
        handleEvents(res, std::move(req.body), channelsOf(req.caller));
      } else if (route == Route::kPos) {
        handlePosTransactions(res, std::move(req.body));
      } else {
        std::string_view key;
        std::string_view tail;
        splitCustomerPath(req.path, key, tail);
        handleCartAdd(res, std::string(key), std::move(req.body));
      }
    } else if (route == Route::kCustomer || route == Route::kCustomerCart) {
      std::string_view key;
      std::string_view tail;
      splitCustomerPath(req.path, key, tail);
      handleCustomer(res, std::string(key), route == Route::kCustomerCart);
    } else if (route == Route::kHealth) {
      handleHealth(res);
    } else if (route == Route::kMetrics) {
      handleMetrics(res);
    } else if (const int mount = static_cast<int>(route) - static_cast<int>(Route::kMounted);
               mount >= 0 && mount < static_cast<int>(mounts_.size())) {
      mounts_[static_cast<std::size_t>(mount)].handler(req, res);
      if (req.method == "HEAD") {
        res.stream.reset();  // a HEAD has no body to stream; the handler's list lets it go
      }
    } else {
      sendError(res, 404, "not_found", "no such endpoint: " + req.path);
    }
  } catch (const std::exception& e) {
    sendError(res, 500, "internal", std::string("unexpected error: ") + e.what());
  } catch (...) {
    sendError(res, 500, "internal", "unexpected error");
  }
  // Counted before the answer goes out, so that a client that got it sees it in the metrics.
  countRequest(route, res.status);
}

void HttpApi::onError(const HttpRequest* req, int status, std::string_view message,
                      HttpResponse& res) {
  sendError(res, status, errorCode(status), message);
  countRequest(req != nullptr && req->route >= 0 ? static_cast<Route>(req->route) : Route::kOther,
               status);
}

std::optional<int> HttpApi::authenticate(const HttpRequest& req, HttpResponse& res, bool browser) {
  if (options_.tokens.empty()) {
    return -1;
  }
  // A valid token is always let in, also from an address that is locked out: the lockout
  // exists to make guessing slow, never to shut out a kiosk that shares a NAT address (or an
  // IPv6 /64) with whoever guesses.
  const std::string_view authorization = req.header("Authorization");
  // A browser cannot send a bearer token by itself; it sends what its user typed as Basic.
  const std::string basic = browser ? basicPassword(authorization) : std::string();
  const std::string_view presented = basic.empty() ? bearerToken(authorization) : basic;
  int match = -1;
  for (std::size_t i = 0; i < options_.tokens.size(); ++i) {
    // No early exit: the same time whichever token matches.
    if (equalConstantTime(presented, options_.tokens[i].secret)) {
      match = static_cast<int>(i);
    }
  }
  if (match >= 0) {
    return match;
  }
  ++auth_failures_;
  const auto now = Clock::now();
  const AddrKey key{addressKey(req.peer)};
  auto found = failures_.find(key);
  if (found != failures_.end() && found->second.locked_until > now) {
    const auto left = std::chrono::ceil<std::chrono::seconds>(found->second.locked_until - now);
    res.set_header("Retry-After", std::to_string(std::max<int64_t>(left.count(), 1)));
    sendError(res, 429, "too_many_requests",
              "too many failed authentication attempts from this address; retry later");
    return std::nullopt;
  }
  recordFailure(key, now);
  res.set_header("WWW-Authenticate",
                 browser ? "Basic realm=\"omniedge\", charset=\"UTF-8\"" : "Bearer");
  sendError(res, 401, "unauthorized",
            presented.empty() ? "an Authorization: Bearer token is required"
                              : "the bearer token is not valid");
  return std::nullopt;
}

void HttpApi::recordFailure(const AddrKey& key, Clock::time_point now) {
  auto found = failures_.find(key);
  if (found == failures_.end()) {
    if (failures_.size() >= options_.max_tracked_addresses) {
      // Full (addresses rotating, or many clients failing): forget what has expired; if
      // nothing has, the address heard from least recently. The table never grows past its
      // bound, whatever the number of addresses.
      std::erase_if(failures_, [&](const auto& entry) {
        const Failures& f = entry.second;
        return f.locked_until <= now && f.first + options_.auth_window <= now;
      });
      if (failures_.size() >= options_.max_tracked_addresses) {
        auto oldest = std::min_element(
            failures_.begin(), failures_.end(),
            [](const auto& a, const auto& b) { return a.second.last < b.second.last; });
        failures_.erase(oldest);
      }
    }
    found = failures_.emplace(key, Failures{0, now, now, {}}).first;
  }
  Failures& f = found->second;
  if (f.first + options_.auth_window <= now) {
    f.count = 0;
    f.first = now;
  }
  f.last = now;
  if (++f.count >= options_.auth_max_failures) {
    f.count = 0;
    f.first = now;
    f.locked_until = now + options_.auth_lockout;
    ++lockouts_;
  }
  tracked_ = failures_.size();
}

unsigned HttpApi::channelsOf(int caller) const {
  return caller >= 0 && caller < static_cast<int>(token_channels_.size()) ? token_channels_[caller]
                                                                          : kKiosk;
}

void HttpApi::countRefused(Channel channel, std::string_view code) {
  if (event_metrics_ != nullptr) {
    event_metrics_->rejected(
        channel, code == "invalid_json" ? RejectReason::kInvalid : rejectReasonOf(code));
  }
}

void HttpApi::handleEvents(HttpResponse& res, std::string body, unsigned channels) {
  bool was_array = false;
  auto events = parseEvents(body, options_.max_events_per_request, &was_array);
  if (!events) {
    const Error& e = events.error();
    countRefused(Channel::kKiosk, e.code);
    if (e.code == "too_large") {
      sendError(res, 413, e.code, e.message, e.field);
    } else if (was_array) {
      sendError(res, 400, e.code, e.message, e.field);
    } else {
      sendError(res, 400, e.code, stripSingleIndex(e.message), stripSingleIndex(e.field));
    }
    return;
  }
  // Only the channels this caller may write. A type that is not even dotted lower-case words
  // is left to the writer, whose message says what a type must look like.
  for (std::size_t i = 0; i < events->size(); ++i) {
    const std::string& type = (*events)[i].type;
    const std::size_t dot = type.find('.');
    const std::string_view channel = std::string_view(type).substr(0, dot);
    if (dot == std::string::npos || channel.empty() ||
        !std::all_of(channel.begin(), channel.end(), [](char c) {
          return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
        })) {
      continue;
    }
    const unsigned bit = channelBit(channel);
    if ((bit & channels) != 0) {
      continue;
    }
    const std::string field = "[" + std::to_string(i) + "].type";
    std::string message = field + " " + type + ": ";
    if (channel == "agent") {
      message += "agent.* events come only from the agent itself";
    } else if (bit == kPos) {
      message +=
          "this caller may not write pos.* events (POS transactions go to POST "
          "/v1/pos/transactions)";
    } else if (bit != 0) {
      message += "this caller may not write " + std::string(channel) + ".* events";
    } else {
      message += "'" + std::string(channel) + "' is not a channel (kiosk, pos, beacon, agent)";
    }
    message += "; this caller may write " + channelList(channels);
    countRefused(Channel::kKiosk, "invalid");
    if (was_array) {
      sendError(res, 400, "channel_not_allowed", message, field);
    } else {
      sendError(res, 400, "channel_not_allowed", stripSingleIndex(message),
                stripSingleIndex(field));
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
void HttpApi::handlePosTransactions(HttpResponse& res, std::string body) {
  bool was_array = false;
  pos::Parsed parsed = pos::parseJsonTransactions(body, options_.max_events_per_request, &was_array,
                                                  8 * options_.max_body_bytes);
  if (parsed.error) {
    const pos::ParseError& e = *parsed.error;
    const std::string code = e.code == "empty" ? "invalid" : e.code;
    countRefused(Channel::kPos, code);
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

void HttpApi::answerAppend(HttpResponse& res, std::vector<Event> events, bool was_array) {
  auto outcome = appendOrRefuse(res, std::move(events), was_array);
  if (!outcome) {
    return;
  }
  // Written by hand: this is the answer to every accepted request (quality.md P2).
  const std::vector<std::string>& ids = outcome->ids;
  std::string body;
  body.reserve(32 + ids.size() * 40);
  body += "{\"accepted\":";
  body += std::to_string(ids.size());
  body += ",\"ids\":[";
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) {
      body += ',';
    }
    appendJsonString(body, ids[i]);
  }
  body += "]}";
  res.status = 202;
  res.set_content(std::move(body), kJsonType);
}

std::optional<AppendOutcome> HttpApi::appendOrRefuse(HttpResponse& res, std::vector<Event> events,
                                                     bool was_array) {
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

// GET /v1/customers/{key} and /v1/customers/{key}/cart: answered from the local profile cache,
// so a kiosk gets its answer with the uplink down.
void HttpApi::handleCustomer(HttpResponse& res, const std::string& key, bool cart) {
  auto canonical = parseCustomerKey(key);
  if (!canonical) {
    sendError(res, 400, canonical.error().code, canonical.error().message, "key");
    return;
  }
  // Consent: a customer who refuses personalization gets no profile answers at the kiosk.
  if (options_.personalization_refused && options_.personalization_refused(*canonical)) {
    sendError(res, 403, "consent", "this customer does not consent to personalization", "key");
    return;
  }
  if (!cart) {
    auto profile = options_.customer_lookup ? options_.customer_lookup(*canonical) : std::nullopt;
    if (!profile) {
      sendError(res, 404, "not_found", "no profile is cached for " + *canonical, "key");
      return;
    }
    res.set_content(std::move(*profile), kJsonType);
    return;
  }
  std::optional<std::string> found;
  if (options_.cart_lookup) {
    found = options_.cart_lookup(*canonical);
  } else if (auto profile =
                 options_.customer_lookup ? options_.customer_lookup(*canonical) : std::nullopt) {
    const auto doc = Json::parse(*profile, nullptr, false);
    const Json cart_json =
        doc.is_object() && doc.contains("cart") ? doc["cart"] : Json{{"items", Json::array()}};
    found = cart_json.dump();
  }
  if (!found) {
    sendError(res, 404, "not_found", "no cart or profile is cached for " + *canonical, "key");
    return;
  }
  res.set_content(std::move(*found), kJsonType);
}

// POST /v1/customers/{key}/cart/items: the kiosk adds an item, also for a customer the cache
// does not know yet (the cart is then kept locally until the centre sends the profile). The
// kiosk.cart_add event for the centre is made durable first; only then does the local cart
// change, so the two never disagree after a crash by more than a resend.
void HttpApi::handleCartAdd(HttpResponse& res, const std::string& key, std::string body) {
  auto canonical = parseCustomerKey(key);
  if (!canonical) {
    sendError(res, 400, canonical.error().code, canonical.error().message, "key");
    return;
  }
  if (!options_.cart_add) {
    sendError(res, 404, "not_found", "carts are not kept by this agent", "key");
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
  auto [field, value] = customerFieldOf(*canonical);
  e.customer.emplace(std::move(field), std::move(value));
  e.data_json = Json{{"key", *canonical}, {"item", item}}.dump();
  if (!appendOrRefuse(res, {std::move(e)}, false)) {
    return;
  }
  auto cart = options_.cart_add(*canonical, item.dump());
  if (!cart) {
    sendError(res, cart.error().code == "not_found" ? 404 : 500, cart.error().code,
              cart.error().message, "key");
    return;
  }
  res.status = 201;
  res.set_content(std::move(*cart), kJsonType);
}

void HttpApi::handleHealth(HttpResponse& res) {
  HealthReport report{true, {}, false};
  if (health_) {
    try {
      report = health_();
    } catch (const std::exception& e) {
      report = HealthReport{false, std::string("health check failed: ") + e.what(), false};
    }
  }
  const char* status = report.ready ? "ready" : (report.degraded ? "degraded" : "not_ready");
  Json body = {{"status", status}};
  if (!report.ready) {
    body["reason"] = report.reason;
  }
  res.status = report.ready ? 200 : 503;
  res.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace), kJsonType);
}

void HttpApi::handleMetrics(HttpResponse& res) {
  try {
    res.set_content(metrics_ ? metrics_() : metricsText(), kPrometheusType);
    res.status = 200;
  } catch (const std::exception& e) {
    sendError(res, 500, "internal", std::string("metrics failed: ") + e.what());
  }
}

void HttpApi::countRequest(Route route, int status) {
  std::lock_guard lock(stats_mu_);
  ++requests_[{route, status}];
}

// ---- GET /v1/stream: engagements for the kiosks (server-sent events) -------------------------

namespace {

// The percent-decoded value of `name` in the target's query; nullopt when absent.
std::optional<std::string> queryParam(std::string_view target, std::string_view name) {
  const std::size_t q = target.find('?');
  if (q == std::string_view::npos) {
    return std::nullopt;
  }
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query.remove_prefix(amp == std::string_view::npos ? query.size() : amp + 1);
    const std::size_t eq = pair.find('=');
    if (pair.substr(0, eq) != name) {
      continue;
    }
    const std::string_view raw = eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    std::string out;
    for (std::size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '+') {
        out += ' ';
      } else if (raw[i] == '%') {
        const auto hex = [](char c) {
          return c >= '0' && c <= '9'   ? c - '0'
                 : c >= 'a' && c <= 'f' ? c - 'a' + 10
                 : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                        : -1;
        };
        if (i + 2 >= raw.size()) {
          return std::nullopt;
        }
        const int hi = hex(raw[i + 1]);
        const int lo = hex(raw[i + 2]);
        if (hi < 0 || lo < 0) {
          return std::nullopt;
        }
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
      } else {
        out += raw[i];
      }
    }
    return out;
  }
  return std::nullopt;
}

}  // namespace

void HttpApi::openStream(const HttpRequest& req, HttpResponse& res) {
  if (req.chunked || req.content_length > 0) {
    sendError(res, 400, "invalid", "GET /v1/stream takes no body");
    return;
  }
  std::vector<std::string> zones;
  if (req.caller >= 0) {
    zones = options_.tokens[static_cast<std::size_t>(req.caller)].zones;
  }
  if (req.target.find('?') != std::string_view::npos) {
    auto zone = queryParam(req.target, "zone");
    if (!zone && req.target.find("zone=") != std::string_view::npos) {
      sendError(res, 400, "invalid", "the zone parameter is not well percent-encoded", "zone");
      return;
    }
    if (zone && zone->empty()) {
      sendError(res, 400, "invalid", "zone must not be empty", "zone");
      return;
    }
    if (zone) {
      if (!zones.empty() && std::find(zones.begin(), zones.end(), *zone) == zones.end()) {
        sendError(res, 403, "forbidden",
                  "this token may follow only the zones it names (zones=...), not '" + *zone + "'",
                  "zone");
        return;
      }
      zones = {*zone};
    }
  }
  if (req.method == "HEAD") {
    res.status = 200;
    res.content_type = "text/event-stream";
    return;
  }
  auto stream = std::make_shared<HttpStream>(options_.stream_max_queued_bytes, ": ping\n\n",
                                             options_.stream_heartbeat);
  {
    std::lock_guard lock(streams_mu_);
    // The server closes a stream when its client goes; only this list may still hold it.
    std::erase_if(streams_, [](const Subscriber& s) {
      return s.stream->closed() || s.stream.use_count() == 1;
    });
    if (streams_.size() >= options_.max_streams) {
      ++stream_refused_;
      res.set_header("Retry-After", "5");
      sendError(res, 503, "busy",
                "every kiosk stream is in use (" + std::to_string(options_.max_streams) +
                    "); retry shortly");
      return;
    }
    streams_.push_back(Subscriber{stream, zones});
  }
  res.status = 200;
  // A first line at once: the kiosk knows it is subscribed before anything happens.
  res.set_content("retry: 2000\n: subscribed\n\n", "text/event-stream");
  res.stream = std::move(stream);
}

void HttpApi::publish(std::string_view zone, std::string_view json) {
  std::string frame = "event: engagement\ndata: ";
  const std::size_t at = frame.size();
  frame += json;
  // One data line: a line break in JSON is only ever white space outside strings.
  std::replace_if(
      frame.begin() + static_cast<std::ptrdiff_t>(at), frame.end(),
      [](char c) { return c == '\n' || c == '\r'; }, ' ');
  frame += "\n\n";
  std::lock_guard lock(streams_mu_);
  for (const Subscriber& s : streams_) {
    if (!s.zones.empty() && std::find(s.zones.begin(), s.zones.end(), zone) == s.zones.end()) {
      continue;
    }
    if (s.stream->write(frame)) {
      ++stream_frames_;
    }
  }
}

std::size_t HttpApi::openStreams() const {
  std::lock_guard lock(streams_mu_);
  std::erase_if(streams_, [](const Subscriber& s) {
    return s.stream->closed() || s.stream.use_count() == 1;
  });
  return streams_.size();
}

}  // namespace omniedge::kiosk
