// Who is behind an identity key: the bridge from a beacon (or any key) to a customer profile.
#pragma once

#include <map>
#include <string>
#include <string_view>

namespace omniedge {

class IdentityResolver {
 public:
  virtual ~IdentityResolver() = default;
  /// The customer keys known for `key` ("ibeacon:…", "loyalty:…"): profile_id, loyalty_id,
  /// app_user_id, as Event::customer holds them; empty when the key is unknown.
  /// Thread: any; in-memory, never blocks on I/O.
  virtual std::map<std::string, std::string> customerFor(std::string_view key) const = 0;

  /// True when an event's customer (Event::customer: loyalty_id, app_user_id, email_sha256,
  /// phone_sha256, beacon, profile_id) is a profile that refused tracking
  /// (consent.tracking = false). Thread: any; in-memory.
  virtual bool trackingRefused(const std::map<std::string, std::string>& customer) const = 0;
};

}  // namespace omniedge
