#include "agent/ingest/pii.h"

#include <dlfcn.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <vector>

#include "agent/api/json_string.h"
#include "agent/ingest/phone_module.h"

namespace omniedge {
namespace {

// libphonenumber, loaded on first use from lib/omniedge/omniedge-phone.so beside the binary's
// directory (see phone_module.h for why it is not linked in).
struct PhoneModule {
  decltype(&omniedge_phone_e164) e164 = nullptr;
  decltype(&omniedge_phone_region) region = nullptr;
  std::string error;  // why it could not be loaded
};

// Loads the module at `path`; never dlclose()d: libphonenumber keeps singletons for the life of
// the process.
PhoneModule loadPhoneModule(const std::string& path) {
  PhoneModule m;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    m.error = "the phone number module could not be loaded (" +
              std::string(why != nullptr ? why : path) + ")";
    return m;
  }
  m.e164 = reinterpret_cast<decltype(&omniedge_phone_e164)>(dlsym(handle, "omniedge_phone_e164"));
  m.region =
      reinterpret_cast<decltype(&omniedge_phone_region)>(dlsym(handle, "omniedge_phone_region"));
  if (m.e164 == nullptr || m.region == nullptr) {
    m.error = "the phone number module " + path + " lacks its functions";
    m.e164 = nullptr;
    m.region = nullptr;
  }
  return m;
}

// Loaded once per path and process ("" = beside the binary): `doctor` asks about the configured
// path whatever another caller loaded before. A process names one or two paths.
const PhoneModule& phoneModule(const std::string& configured) {
  static std::mutex mu;
  static std::map<std::string, PhoneModule> modules;  // guarded by mu; entries never move
  std::lock_guard lock(mu);
  auto it = modules.find(configured);
  if (it == modules.end()) {
    it = modules.emplace(configured, loadPhoneModule(PiiHasher::phoneModulePath(configured))).first;
  }
  return it->second;
}

constexpr std::size_t kMaxPhoneText = 64;  // longer is not a phone number: do not parse it
constexpr int kMaxDataDepth = 128;

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())) != 0) {
    s.remove_prefix(1);
  }
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())) != 0) {
    s.remove_suffix(1);
  }
  return s;
}

std::string toHex(const unsigned char* data, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[data[i] >> 4];
    out[2 * i + 1] = kHex[data[i] & 0x0f];
  }
  return out;
}

// The agent never sets a locale, so this is what std::tolower does, without a call per byte.
char asciiLower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// True when `text` at `at` starts with the lower-case ASCII `word`, in any case.
bool startsNoCase(std::string_view text, std::size_t at, std::string_view word) {
  if (text.size() - at < word.size()) {
    return false;
  }
  for (std::size_t i = 0; i < word.size(); ++i) {
    if (asciiLower(text[at + i]) != word[i]) {
      return false;
    }
  }
  return true;
}

// Whether one of the phone-like member names starts at `at`, case folded: "phone", "mobile",
// "msisdn", "tel", "fax" (the last two also begin "telephone" and "fax_number").
bool phoneWordAt(std::string_view text, std::size_t at) {
  if (text.size() - at < 3) {
    return false;
  }
  constexpr auto prefix = [](std::string_view w) {
    return static_cast<uint32_t>(static_cast<unsigned char>(w[0])) |
           static_cast<uint32_t>(static_cast<unsigned char>(w[1])) << 8 |
           static_cast<uint32_t>(static_cast<unsigned char>(w[2])) << 16;
  };
  // OR 0x20 folds A-Z onto a-z, and a byte that is not a letter never folds onto one.
  const auto folded = [&](std::size_t k) {
    return static_cast<uint32_t>(static_cast<unsigned char>(text[at + k]) | 0x20U);
  };
  switch (folded(0) | folded(1) << 8 | folded(2) << 16) {
    case prefix("pho"):
      return startsNoCase(text, at, "phone");
    case prefix("mob"):
      return startsNoCase(text, at, "mobile");
    case prefix("msi"):
      return startsNoCase(text, at, "msisdn");
    case prefix("tel"):
    case prefix("fax"):
      return true;
    default:
      return false;
  }
}

}  // namespace

// memchr for the signs, then the positions where a name could start: with SSE2, 16 at a time,
// only where two bytes (case folded) are "ph", "mo", "ms", "te" or "fa" (a few in a hundred in
// free text). perf under bench/run's P2 load: 0.33 ns a byte, 1.4% of the daemon's samples;
// checking every byte in turn cost 2.9 ns a byte (12.8%), and five std::search passes calling
// tolower() before that 38%.
bool mayHoldPii(std::string_view text) {
  if (text.find('@') != std::string_view::npos || text.find('+') != std::string_view::npos ||
      text.find("\\u00") != std::string_view::npos) {
    return true;
  }
  std::size_t i = 0;
#if defined(__SSE2__)
  const char* p = text.data();
  const __m128i fold = _mm_set1_epi8(0x20);
  const auto is = [](__m128i v, char c) { return _mm_cmpeq_epi8(v, _mm_set1_epi8(c)); };
  for (; i + 17 <= text.size(); i += 16) {
    const __m128i a = _mm_or_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)), fold);
    const __m128i b =
        _mm_or_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 1)), fold);
    const __m128i pairs = _mm_or_si128(
        _mm_or_si128(_mm_and_si128(is(a, 'p'), is(b, 'h')),
                     _mm_and_si128(is(a, 'm'), _mm_or_si128(is(b, 'o'), is(b, 's')))),
        _mm_or_si128(_mm_and_si128(is(a, 't'), is(b, 'e')), _mm_and_si128(is(a, 'f'), is(b, 'a'))));
    for (auto bits = static_cast<unsigned>(_mm_movemask_epi8(pairs)); bits != 0; bits &= bits - 1) {
      if (phoneWordAt(text, i + static_cast<std::size_t>(__builtin_ctz(bits)))) {
        return true;
      }
    }
  }
#endif
  for (; i + 3 <= text.size(); ++i) {
    if (phoneWordAt(text, i)) {
      return true;
    }
  }
  return false;
}

namespace {

// Member names under which a number without a country code is still taken for a phone number.
bool isPhoneKey(std::string_view key) {
  std::string k(key);
  std::transform(k.begin(), k.end(), k.begin(), asciiLower);
  return k.find("phone") != std::string::npos || k.find("mobile") != std::string::npos ||
         k.find("msisdn") != std::string::npos || k == "tel" || k == "telephone" || k == "fax" ||
         (k.size() > 4 && (k.ends_with("_tel") || k.ends_with("_fax")));
}

bool isLocalPartChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '_' || c == '%' ||
         c == '+' || c == '-' || c == '\'' || c == '&';
}
bool isDomainChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '-';
}
bool isPhoneSeparator(char c) {
  return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')' || c == '/';
}

// The string literal at text[i] == '"' decoded into `out`; i ends after the closing quote.
// False on a malformed literal (the caller's JSON is valid, so only when something is wrong).
bool decodeString(std::string_view text, std::size_t& i, std::string& out) {
  out.clear();
  ++i;
  while (i < text.size()) {
    const char c = text[i++];
    if (c == '"') {
      return true;
    }
    if (c != '\\') {
      out.push_back(c);
      continue;
    }
    if (i >= text.size()) {
      return false;
    }
    const char e = text[i++];
    switch (e) {
      case '"':
        out.push_back('"');
        break;
      case '\\':
        out.push_back('\\');
        break;
      case '/':
        out.push_back('/');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'u': {
        auto hex4 = [&](uint32_t& v) {
          if (i + 4 > text.size()) {
            return false;
          }
          v = 0;
          for (int k = 0; k < 4; ++k) {
            const char h = text[i++];
            v <<= 4;
            if (h >= '0' && h <= '9') {
              v |= static_cast<uint32_t>(h - '0');
            } else if (h >= 'a' && h <= 'f') {
              v |= static_cast<uint32_t>(h - 'a' + 10);
            } else if (h >= 'A' && h <= 'F') {
              v |= static_cast<uint32_t>(h - 'A' + 10);
            } else {
              return false;
            }
          }
          return true;
        };
        uint32_t cp = 0;
        if (!hex4(cp)) {
          return false;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= text.size() && text[i] == '\\' &&
            text[i + 1] == 'u') {
          i += 2;
          uint32_t lo = 0;
          if (!hex4(lo)) {
            return false;
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp < 0x80) {
          out.push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
          out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
          out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
          out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
        break;
      }
      default:
        return false;
    }
  }
  return false;
}

}  // namespace

std::string PiiHasher::phoneModulePath(const std::string& configured) {
  if (!configured.empty()) {
    return configured;
  }
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  std::string dir = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : std::string(".");
  dir = dir.substr(0, dir.rfind('/'));
  return dir + "/../lib/omniedge/omniedge-phone.so";
}

DataPiiPolicy parseDataPiiPolicy(std::string_view name) {
  if (name == "reject") {
    return DataPiiPolicy::kReject;
  }
  if (name == "off") {
    return DataPiiPolicy::kOff;
  }
  return DataPiiPolicy::kHash;
}

PiiHasher::PiiHasher(std::string key, std::string default_region, DataPiiPolicy data_policy,
                     std::string phone_module)
    : key_(std::move(key)),
      default_region_(std::move(default_region)),
      data_policy_(data_policy),
      phone_module_(std::move(phone_module)) {}

Result<std::string> PiiHasher::readKeyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return makeError("config", "cannot read identity.hmac_key_file '" + path + "'",
                     "identity.hmac_key_file");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string key = ss.str();
  // One line ending, as an editor leaves it (also a Windows one): the key is what precedes it.
  if (!key.empty() && key.back() == '\n') {
    key.pop_back();
    if (!key.empty() && key.back() == '\r') {
      key.pop_back();
    }
  }
  if (key.size() < 16) {
    return makeError("config",
                     "identity.hmac_key_file '" + path + "' holds " + std::to_string(key.size()) +
                         " bytes; a key needs at least 16",
                     "identity.hmac_key_file");
  }
  return key;
}

std::string PiiHasher::regionForCallingCode(std::string_view calling_code,
                                            const std::string& phone_module) {
  if (!calling_code.empty() && calling_code.front() == '+') {
    calling_code.remove_prefix(1);
  }
  int code = 0;
  for (const char c : calling_code) {
    if (c < '0' || c > '9' || code > 999) {
      return "";
    }
    code = code * 10 + (c - '0');
  }
  const PhoneModule& phone = phoneModule(phone_module);
  char region[3] = {0, 0, 0};
  if (phone.region == nullptr || phone.region(code, region) != 0) {
    return "";
  }
  return region;
}

Result<std::string> PiiHasher::normaliseEmail(std::string_view raw) {
  std::string email(trim(raw));
  std::transform(email.begin(), email.end(), email.begin(), asciiLower);
  const auto at = email.find('@');
  const bool ok =
      at != std::string::npos && at > 0 && email.find('@', at + 1) == std::string::npos &&
      email.find('.', at + 2) != std::string::npos && email.back() != '.' && email.size() <= 254 &&
      std::none_of(email.begin(), email.end(),
                   [](unsigned char c) { return std::isspace(c) != 0 || c < 0x20; });
  if (!ok) {
    return makeError("invalid", "is not an e-mail address");
  }
  return email;
}

Result<std::string> PiiHasher::normalisePhone(std::string_view raw) const {
  const std::string_view text = trim(raw);
  if (text.size() > kMaxPhoneText) {
    return makeError("invalid", "is not a phone number (too long)");
  }
  std::string number(text);
  // "00" is the international prefix in most of the world: read it as "+" whatever the region.
  if (number.rfind("00", 0) == 0) {
    number.replace(0, 2, "+");
  }
  const bool international = !number.empty() && number.front() == '+';
  if (!international && default_region_.empty()) {
    return makeError("invalid",
                     "is not in international form (+...) and identity.default_region is not set");
  }
  const PhoneModule& phone = phoneModule(phone_module_);
  if (phone.e164 == nullptr) {
    return makeError("io", phone.error);
  }
  char e164[32];
  const std::string region = international ? "ZZ" : default_region_;
  if (phone.e164(number.data(), number.size(), region.c_str(), e164, sizeof(e164)) <= 0) {
    return makeError("invalid", "is not a valid phone number");
  }
  return std::string(e164);
}

std::string PiiHasher::hash(std::string_view normalised) const {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (key_.empty()) {
    SHA256(reinterpret_cast<const unsigned char*>(normalised.data()), normalised.size(), out);
    len = SHA256_DIGEST_LENGTH;
  } else {
    HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
         reinterpret_cast<const unsigned char*>(normalised.data()), normalised.size(), out, &len);
  }
  return toHex(out, len);
}

Result<bool> PiiHasher::looksPersonal(std::string_view value, std::string& normalised,
                                      bool& is_email) const {
  const std::string_view v = trim(value);
  if (v.find('@') != std::string_view::npos) {
    if (auto email = normaliseEmail(v)) {
      normalised = std::move(*email);
      is_email = true;
      return true;
    }
    return false;
  }
  // Only the international form counts here: digits alone may be an item number or a GTIN.
  if (!v.empty() && v.front() == '+' && v.size() <= kMaxPhoneText) {
    auto phone = normalisePhone(v);
    if (phone) {
      normalised = std::move(*phone);
      is_email = false;
      return true;
    }
    if (phone.error().code == "io") {
      return phone.error();
    }
  }
  return false;
}

namespace {

// One pass over a JSON object's text, copying it to `out` and replacing the personal data found
// in string values (see PiiHasher::scrubData). Recursive descent, depth-bounded.
class DataScrubber {
 public:
  DataScrubber(const PiiHasher& hasher, std::string_view in) : hasher_(hasher), in_(in) {
    out_.reserve(in.size() + 64);
  }

  Result<bool> run() {
    skipSpace();
    if (!value(nullptr, 0, 0)) {
      return error_.code.empty() ? makeError("invalid", "data is not valid JSON", "data") : error_;
    }
    return changed_;
  }
  std::string& out() { return out_; }

 private:
  enum class Found { kNone, kEmail, kPhone };

  void skipSpace() {
    while (pos_ < in_.size() &&
           (in_[pos_] == ' ' || in_[pos_] == '\n' || in_[pos_] == '\r' || in_[pos_] == '\t')) {
      out_.push_back(in_[pos_++]);
    }
  }

  std::string path() const {
    std::string p = "data";
    for (const auto& seg : path_) {
      if (!seg.empty() && seg.front() == '[') {
        p += seg;
      } else {
        p += "." + seg;
      }
    }
    return p;
  }

  // Whether a string holds a phone number cannot be told without the phone module: refuse the
  // event rather than store what may be personal data.
  bool failClosed() {
    error_ =
        makeError("io", "cannot be checked for phone numbers: " + module_error_->message, path());
    return false;
  }

  bool refuse(const char* what) {
    error_ = makeError("invalid",
                       std::string("contains ") + what +
                           "; raw personal data is not accepted (identity.data_pii=reject)",
                       path());
    return false;
  }

  // `key`: the member name when this value is an object member (then `key_out` is where its
  // name starts in out_), null in an array or at the top.
  bool value(const std::string* key, std::size_t key_out, int depth) {
    if (pos_ >= in_.size()) {
      return false;
    }
    const char c = in_[pos_];
    if (c == '{' || c == '[') {
      if (depth >= kMaxDataDepth) {
        error_ = makeError("invalid", "nests deeper than 128 levels", path());
        return false;
      }
      return c == '{' ? object(depth + 1) : array(depth + 1);
    }
    if (c == '"') {
      return stringValue(key, key_out);
    }
    // A number, true, false or null: copied as it is.
    while (pos_ < in_.size() && in_[pos_] != ',' && in_[pos_] != '}' && in_[pos_] != ']' &&
           in_[pos_] != ' ' && in_[pos_] != '\n' && in_[pos_] != '\r' && in_[pos_] != '\t') {
      out_.push_back(in_[pos_++]);
    }
    return true;
  }

  bool object(int depth) {
    out_.push_back(in_[pos_++]);
    skipSpace();
    if (pos_ < in_.size() && in_[pos_] == '}') {
      out_.push_back(in_[pos_++]);
      return true;
    }
    std::string key;
    while (pos_ < in_.size() && in_[pos_] == '"') {
      const std::size_t key_out = out_.size();
      const std::size_t start = pos_;
      if (!decodeString(in_, pos_, key)) {
        return false;
      }
      out_.append(in_.substr(start, pos_ - start));
      skipSpace();
      if (pos_ >= in_.size() || in_[pos_] != ':') {
        return false;
      }
      out_.push_back(in_[pos_++]);
      skipSpace();
      path_.push_back(key);
      if (!value(&key, key_out, depth)) {
        return false;
      }
      path_.pop_back();
      skipSpace();
      if (pos_ < in_.size() && in_[pos_] == ',') {
        out_.push_back(in_[pos_++]);
        skipSpace();
        continue;
      }
      if (pos_ < in_.size() && in_[pos_] == '}') {
        out_.push_back(in_[pos_++]);
        return true;
      }
      return false;
    }
    return false;
  }

  bool array(int depth) {
    out_.push_back(in_[pos_++]);
    skipSpace();
    if (pos_ < in_.size() && in_[pos_] == ']') {
      out_.push_back(in_[pos_++]);
      return true;
    }
    for (std::size_t index = 0;; ++index) {
      path_.push_back("[" + std::to_string(index) + "]");
      if (!value(nullptr, 0, depth)) {
        return false;
      }
      path_.pop_back();
      skipSpace();
      if (pos_ < in_.size() && in_[pos_] == ',') {
        out_.push_back(in_[pos_++]);
        skipSpace();
        continue;
      }
      if (pos_ < in_.size() && in_[pos_] == ']') {
        out_.push_back(in_[pos_++]);
        return true;
      }
      return false;
    }
  }

  // Is the whole (trimmed) string an e-mail address or a phone number?
  Found whole(std::string_view s, const std::string* key, std::string& normalised) {
    bool is_email = false;
    auto personal = hasher_.looksPersonal(s, normalised, is_email);
    if (!personal) {
      module_error_ = personal.error();
      return Found::kNone;
    }
    if (*personal) {
      return is_email ? Found::kEmail : Found::kPhone;
    }
    const std::string_view t = trim(s);
    if (key != nullptr && isPhoneKey(*key) && !t.empty() && t.size() <= kMaxPhoneText &&
        std::any_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      auto phone = hasher_.normalisePhone(t);
      if (phone) {
        normalised = std::move(*phone);
        return Found::kPhone;
      }
      if (phone.error().code == "io") {
        module_error_ = phone.error();
      }
    }
    return Found::kNone;
  }

  // Replaces addresses and international numbers inside free text; false when none was found.
  bool embedded(const std::string& s, std::string& rewritten, Found& first) {
    rewritten.clear();
    first = Found::kNone;
    std::size_t copied = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      std::size_t begin = i;
      std::size_t end = i;
      std::string normalised;
      Found found = Found::kNone;
      if (s[i] == '@') {
        while (begin > copied && isLocalPartChar(s[begin - 1])) {
          --begin;
        }
        end = i + 1;
        while (end < s.size() && isDomainChar(s[end])) {
          ++end;
        }
        while (end > i + 1 && (s[end - 1] == '.' || s[end - 1] == '-')) {
          --end;
        }
        if (begin < i) {
          if (auto email =
                  PiiHasher::normaliseEmail(std::string_view(s).substr(begin, end - begin))) {
            normalised = std::move(*email);
            found = Found::kEmail;
          }
        }
      } else if (s[i] == '+' && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '9') {
        int digits = 0;
        end = i + 1;
        while (end < s.size() && digits <= 15 &&
               ((s[end] >= '0' && s[end] <= '9') || isPhoneSeparator(s[end]))) {
          digits += s[end] >= '0' && s[end] <= '9' ? 1 : 0;
          ++end;
        }
        while (end > i + 1 && !(s[end - 1] >= '0' && s[end - 1] <= '9')) {
          --end;
        }
        if (digits >= 7 && digits <= 15) {
          auto phone = hasher_.normalisePhone(std::string_view(s).substr(i, end - i));
          if (phone) {
            normalised = std::move(*phone);
            found = Found::kPhone;
          } else if (phone.error().code == "io") {
            module_error_ = phone.error();
          }
        }
      }
      if (found == Found::kNone) {
        continue;
      }
      if (first == Found::kNone) {
        first = found;
      }
      rewritten.append(s, copied, begin - copied);
      rewritten += found == Found::kEmail ? "email_sha256:" : "phone_sha256:";
      rewritten += hasher_.hash(normalised);
      copied = end;
      i = end - 1;
    }
    if (first == Found::kNone) {
      return false;
    }
    rewritten.append(s, copied, std::string::npos);
    return true;
  }

  bool stringValue(const std::string* key, std::size_t key_out) {
    const std::size_t start = pos_;
    if (!decodeString(in_, pos_, text_)) {
      return false;
    }
    std::string normalised;
    const Found found = whole(text_, key, normalised);
    if (module_error_) {
      return failClosed();
    }
    if (found != Found::kNone) {
      if (hasher_.dataPolicy() == DataPiiPolicy::kReject) {
        return refuse(found == Found::kEmail ? "an e-mail address" : "a phone number");
      }
      const char* kind = found == Found::kEmail ? "email" : "phone";
      const std::string hex = hasher_.hash(normalised);
      changed_ = true;
      if (key == nullptr) {
        appendJsonString(out_, std::string(kind) + "_sha256:" + hex);
        return true;
      }
      // The member is renamed so that nobody takes the hash for the value: "email" becomes
      // "email_sha256", "contact" becomes "contact_email_sha256".
      std::string lower_key(*key);
      std::transform(lower_key.begin(), lower_key.end(), lower_key.begin(), asciiLower);
      const std::string name =
          lower_key.ends_with(kind) ? *key + "_sha256" : *key + "_" + kind + "_sha256";
      out_.resize(key_out);
      appendJsonString(out_, name);
      out_.push_back(':');
      appendJsonString(out_, hex);
      return true;
    }
    std::string rewritten;
    Found first = Found::kNone;
    const bool replaced = embedded(text_, rewritten, first);
    if (module_error_) {
      return failClosed();
    }
    if (replaced) {
      if (hasher_.dataPolicy() == DataPiiPolicy::kReject) {
        return refuse(first == Found::kEmail ? "an e-mail address" : "a phone number");
      }
      changed_ = true;
      appendJsonString(out_, rewritten);
      return true;
    }
    out_.append(in_.substr(start, pos_ - start));
    return true;
  }

  const PiiHasher& hasher_;
  std::string_view in_;
  std::size_t pos_ = 0;
  std::string out_;
  std::string text_;  // the string value being looked at
  std::vector<std::string> path_;
  Error error_;
  std::optional<Error> module_error_;
  bool changed_ = false;
};

}  // namespace

Result<bool> PiiHasher::scrubData(std::string& data_json) const {
  if (dataPolicy() == DataPiiPolicy::kOff) {
    return false;
  }
  // Most events hold nothing that could be personal: decide that without parsing.
  const std::string_view text = data_json;
  if (!mayHoldPii(text)) {
    return false;
  }
  DataScrubber scrubber(*this, text);
  auto changed = scrubber.run();
  if (!changed) {
    return changed.error();
  }
  if (*changed) {
    data_json = std::move(scrubber.out());
  }
  return *changed;
}

}  // namespace omniedge
