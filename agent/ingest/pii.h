// Personal data never leaves the agent and is never stored in clear: e-mail addresses and phone
// numbers are normalised and replaced by HMAC-SHA256 keyed with the tenant key (contract §3),
// wherever they appear: in `customer` and in the string values of `data`.
#pragma once

#include <atomic>
#include <string>
#include <string_view>

#include "agent/api/result.h"

namespace omniedge {

/// identity.data_pii: what happens to e-mail addresses and phone numbers found in `data`.
enum class DataPiiPolicy {
  kHash,    // replaced by their keyed hash (the default)
  kReject,  // the event is refused, naming the field
  kOff,     // left as they are (only for data known to hold none)
};

/// "hash" | "reject" | "off"; kHash for anything else (the config has validated it).
DataPiiPolicy parseDataPiiPolicy(std::string_view name);

/// Whether a JSON text may hold personal data: an '@' or a '+' (also as a JSON escape), or a
/// member name like a phone's (phone, mobile, msisdn, tel, fax, any case). False means it holds
/// none; true means PiiHasher::scrubData must parse it. CPU only, a vector scan. Thread: any.
bool mayHoldPii(std::string_view text);

class PiiHasher {
 public:
  /// `key` empty: plain SHA-256 (the centre can still join, but a hash of an e-mail can be
  /// brute-forced: `doctor` warns). `default_region`: ISO 3166 alpha-2 ("DE", "IT") for phone
  /// numbers written without a country code; empty: such numbers cannot be normalised.
  /// `phone_module`: identity.phone_module, the libphonenumber module (see phone_module.h);
  /// "" = lib/omniedge/omniedge-phone.so beside the binary's directory. It is loaded once per
  /// process, on the first phone number, from the path of the hasher that asks first.
  PiiHasher(std::string key, std::string default_region,
            DataPiiPolicy data_policy = DataPiiPolicy::kHash, std::string phone_module = {});

  /// Reads the key from `path` (raw bytes; one trailing "\n" or "\r\n" dropped; at least 16
  /// bytes). Fails with "config" naming identity.hmac_key_file.
  static Result<std::string> readKeyFile(const std::string& path);

  /// The region (ISO 3166 alpha-2) of a calling code ("44" -> "GB", "+39" -> "IT"); "" when
  /// unknown. For the older identity.default_country_code key. `phone_module` is
  /// identity.phone_module ("" = beside the binary). Thread: any.
  static std::string regionForCallingCode(std::string_view calling_code,
                                          const std::string& phone_module = "");

  /// Where the phone module is looked for: `configured` (identity.phone_module) or, when it is
  /// empty, lib/omniedge/omniedge-phone.so beside the running binary's directory.
  static std::string phoneModulePath(const std::string& configured);

  bool keyed() const { return !key_.empty(); }

  /// Trimmed and lower-cased; fails ("invalid") when it is not an e-mail address.
  static Result<std::string> normaliseEmail(std::string_view raw);
  /// E.164 ("+390612345678") by Google's libphonenumber: the number's own country code, or the
  /// default region for a national number (an Italian number keeps its leading 0). Fails
  /// ("invalid") when it is not a valid phone number. Thread: any.
  Result<std::string> normalisePhone(std::string_view raw) const;

  /// Lower-case hex HMAC-SHA256(key, normalised) (or SHA-256 without a key).
  std::string hash(std::string_view normalised) const;

  /// Applies identity.data_pii to `data_json` (a JSON object as text, valid JSON), in place:
  /// a string value that is an e-mail address or a phone number is replaced by its hash and its
  /// member renamed (`"email": "jane@…"` becomes `"email_sha256": "<hex>"`, `"contact": "+44…"`
  /// becomes `"contact_phone_sha256"`; in an array the value becomes "email_sha256:<hex>");
  /// addresses and international numbers inside free text are replaced by
  /// "email_sha256:<hex>" / "phone_sha256:<hex>". A number without a country code counts only
  /// under a member named like a phone (phone, mobile, tel, msisdn, fax), so item numbers and
  /// GTINs are left alone. Returns whether anything was replaced. With kReject fails ("invalid",
  /// field "data.<path>", e.g. "data.contact.email") at the first one found; kOff does nothing.
  /// Thread: any. CPU only: a quick scan for '@', '+' and phone-like member names first.
  Result<bool> scrubData(std::string& data_json) const;

  /// For identity values that are not meant to be personal data (loyalty_id, app_user_id):
  /// true when `value` is an e-mail address or an international phone number, and then
  /// `normalised` and `is_email` say which. Fails ("io") only when it cannot tell because the
  /// phone module is missing: callers refuse rather than store what may be personal data.
  /// Thread: any.
  Result<bool> looksPersonal(std::string_view value, std::string& normalised, bool& is_email) const;

  DataPiiPolicy dataPolicy() const { return data_policy_.load(std::memory_order_relaxed); }
  /// identity.data_pii changed (remote config, reload): events scrubbed from now on follow it.
  /// Thread: any.
  void setDataPolicy(DataPiiPolicy policy) {
    data_policy_.store(policy, std::memory_order_relaxed);
  }

 private:
  std::string key_;
  std::string default_region_;
  std::atomic<DataPiiPolicy> data_policy_;
  std::string phone_module_;
};

}  // namespace omniedge
