// Who is behind an identity key: the bridge from a beacon (or any key) to a customer profile.
#pragma once

#include <map>
#include <string>
#include <string_view>

namespace omniedge {

/// The consent purposes a profile may refuse (`"consent": {"tracking": false, ...}`), and what
/// each covers at the edge (docs/omnichannel.md): tracking → presence and visit journeys;
/// personalization → kiosk profile answers and triggers; marketing → engagement events.
enum class ConsentPurpose : unsigned { kTracking = 1, kPersonalization = 2, kMarketing = 4 };

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
  virtual bool trackingRefused(const std::map<std::string, std::string>& customer) const {
    return refused(customer, ConsentPurpose::kTracking);
  }

  /// True when an event's customer (as for trackingRefused) is a profile whose consent refuses
  /// `purpose` (consent.<purpose> == false; a purpose the profile does not mention is not
  /// refused). Thread: any; in-memory or one indexed read.
  virtual bool refused(const std::map<std::string, std::string>& customer,
                       ConsentPurpose purpose) const = 0;
};

}  // namespace omniedge
