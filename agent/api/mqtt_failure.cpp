#include "agent/api/mqtt_failure.h"

namespace omniedge {

std::string hostOf(std::string_view url) {
  auto start = url.find("://");
  start = start == std::string_view::npos ? 0 : start + 3;
  if (start >= url.size()) {
    return {};
  }
  auto end = url.find_first_of(url[start] == '[' ? "]" : ":/", start);
  if (end != std::string_view::npos && url[start] == '[') {
    ++end;
  }
  return std::string(url.substr(start, end == std::string_view::npos ? end : end - start));
}

namespace {

bool isNumericHost(std::string_view host) {
  return !host.empty() &&
         (host.front() == '[' || host.find_first_not_of("0123456789.") == std::string_view::npos);
}

}  // namespace

ConnectFailure classifyConnectFailure(std::string_view url, std::string_view paho_message) {
  if (paho_message.find("timeout") != std::string_view::npos) {
    return ConnectFailure::kTimeout;
  }
  if (paho_message.find(kPahoTransportFailure) != std::string_view::npos) {
    return ConnectFailure::kUnreachable;
  }
  if (paho_message.empty() && !isNumericHost(hostOf(url))) {
    return ConnectFailure::kUnresolved;  // Paho says nothing when the name does not resolve
  }
  return ConnectFailure::kOther;
}

}  // namespace omniedge
