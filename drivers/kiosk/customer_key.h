// Customer identity keys as the kiosk API and the profile cache read them (contract §4, §8):
// loyalty:ID, app:ID, email_sha256:HEX, phone_sha256:HEX, ibeacon:<uuid>:<major>:<minor>,
// eddystone:<namespace>:<instance>, altbeacon:<id1>:<id2>:<id3>.
#pragma once

#include <string>
#include <string_view>

#include "agent/api/result.h"

namespace omniedge::kiosk {

/// The one spelling of `key` that the cache indexes: the kind in lower case, hex in lower case
/// (hashes, beacon ids; a UUID with its dashes), beacon numbers without leading zeros. IDs of
/// loyalty: and app: keys are kept as given (they may be case-sensitive).
/// Fails with "invalid" (Error::field "key") naming the expected form: for an unknown kind,
/// every form; for a known one, what its value should look like.
/// Thread: any. Never throws.
Result<std::string> parseCustomerKey(std::string_view key);

/// parseCustomerKey()'s canonical form when `key` is well-formed, else `key` unchanged: for
/// keys the centre sends, which may be of kinds this agent does not know yet.
/// Thread: any. Never throws.
std::string canonicalCustomerKey(std::string_view key);

/// The Event::customer field a key fills ("loyalty_id", "app_user_id", "email_sha256",
/// "phone_sha256", or "beacon" for beacon identities), and the value that goes there.
/// `key` must be canonical. Thread: any.
std::pair<std::string, std::string> customerFieldOf(std::string_view key);

}  // namespace omniedge::kiosk
