// What a failed MQTT connect means, read from the text Paho gives. Shared by the uplink
// (sync/mqtt_link.cpp) and the beacon driver's connection to the store's gateway broker, which
// each word the advice with their own config keys. Standard library only: Paho's text is
// passed in.
#pragma once

#include <string>
#include <string_view>

namespace omniedge {

/// Paho's message when no TCP/TLS connection could be made (refused, no route): it says
/// nothing about the broker or the MQTT version.
inline constexpr std::string_view kPahoTransportFailure = "TCP/TLS connect failure";

enum class ConnectFailure {
  kUnreachable,  // no TCP/TLS connection: refused, no route
  kTimeout,      // no answer within the connect timeout
  kUnresolved,   // the host name did not resolve (Paho's message is empty then)
  kOther,        // anything else: only Paho's own words
};

/// For a connect whose return code was not a CONNACK refusal: `paho_message` is the failure's
/// message (mqtt::exception::get_message()), `url` the broker's as configured.
ConnectFailure classifyConnectFailure(std::string_view url, std::string_view paho_message);

/// "host" of scheme://host:port/path ([v6] kept with its brackets).
std::string hostOf(std::string_view url);

}  // namespace omniedge
