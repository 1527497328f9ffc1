#include "drivers/pos/transaction.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>

#include "agent/api/json_string.h"
#include "agent/api/time.h"

namespace omniedge::pos {
namespace {

constexpr std::size_t kMaxIdLength = 128;
constexpr std::size_t kMaxDecimalDigits = 30;

bool isIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == ':' || c == '@' || c == '-';
}

constexpr std::size_t kMaxSourceLength = 128;  // Ingest's limit for Event::source
constexpr std::size_t kHashHexDigits = 32;     // 128 bits of SHA-256
constexpr std::size_t kMaxHintPart = 40;       // each readable part of a hashed id

void appendIdPart(std::string& out, std::string_view part) {
  for (char c : part) {
    out.push_back(isIdChar(c) ? c : '-');
  }
}

// A part that goes into a clean id as it is: id characters only, and no ':' (the separator:
// "a:b" + "c" must never read like "a" + "b:c").
bool cleanPart(std::string_view part) {
  return !part.empty() &&
         std::all_of(part.begin(), part.end(), [](char c) { return isIdChar(c) && c != ':'; });
}

// The readable hint of a hashed id: every character that is not an id character, and ':',
// replaced by '-', at most `max` of them.
std::string hintPart(std::string_view part, std::size_t max) {
  std::string out;
  appendIdPart(out, part.substr(0, std::min(part.size(), max)));
  std::replace(out.begin(), out.end(), ':', '-');
  return out;
}

// SHA-256 (FIPS 180-4). Drivers include only agent/api (no OpenSSL here), and the id needs a
// hash that nobody can make two transactions collide in, which a 64-bit FNV is not.
class Sha256 {
 public:
  void update(std::string_view data) {
    for (char c : data) {
      block_[fill_++] = static_cast<uint8_t>(c);
      if (fill_ == block_.size()) {
        compress();
        fill_ = 0;
      }
    }
    bits_ += static_cast<uint64_t>(data.size()) * 8;
  }

  std::array<uint8_t, 32> finish() {
    const uint64_t bits = bits_;
    update(std::string_view("\x80", 1));
    while (fill_ != 56) {
      update(std::string_view("\0", 1));
    }
    std::array<char, 8> length{};
    for (int i = 0; i < 8; ++i) {
      length[static_cast<std::size_t>(i)] = static_cast<char>(bits >> (56 - 8 * i));
    }
    update(std::string_view(length.data(), length.size()));
    std::array<uint8_t, 32> out{};
    for (std::size_t i = 0; i < 8; ++i) {
      for (std::size_t j = 0; j < 4; ++j) {
        out[i * 4 + j] = static_cast<uint8_t>(state_[i] >> (24 - 8 * j));
      }
    }
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress() {
    static constexpr std::array<uint32_t, 64> kK = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    std::array<uint32_t, 64> w{};
    for (std::size_t i = 0; i < 16; ++i) {
      w[i] = static_cast<uint32_t>(block_[i * 4]) << 24 |
             static_cast<uint32_t>(block_[i * 4 + 1]) << 16 |
             static_cast<uint32_t>(block_[i * 4 + 2]) << 8 |
             static_cast<uint32_t>(block_[i * 4 + 3]);
    }
    for (std::size_t i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    std::array<uint32_t, 8> v = state_;
    for (std::size_t i = 0; i < 64; ++i) {
      const uint32_t s1 = rotr(v[4], 6) ^ rotr(v[4], 11) ^ rotr(v[4], 25);
      const uint32_t ch = (v[4] & v[5]) ^ (~v[4] & v[6]);
      const uint32_t t1 = v[7] + s1 + ch + kK[i] + w[i];
      const uint32_t s0 = rotr(v[0], 2) ^ rotr(v[0], 13) ^ rotr(v[0], 22);
      const uint32_t maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
      const uint32_t t2 = s0 + maj;
      v = {t1 + t2, v[0], v[1], v[2], v[3] + t1, v[4], v[5], v[6]};
    }
    for (std::size_t i = 0; i < 8; ++i) {
      state_[i] += v[i];
    }
  }

  std::array<uint32_t, 8> state_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<uint8_t, 64> block_{};
  std::size_t fill_ = 0;
  uint64_t bits_ = 0;
};

// Hex of the SHA-256 of the fields, each preceded by its length: ("ab", "c") and ("a", "bc")
// hash apart.
std::string fieldsHash(std::initializer_list<std::string_view> fields) {
  Sha256 sha;
  for (std::string_view field : fields) {
    const std::string length = std::to_string(field.size()) + ":";
    sha.update(length);
    sha.update(field);
  }
  const std::array<uint8_t, 32> digest = sha.finish();
  static constexpr std::string_view kHex = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < kHashHexDigits / 2; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

// Bytes a std::string holds outside itself (none within the small-string buffer).
std::size_t heapBytes(const std::string& s) { return s.capacity() > 15 ? s.capacity() + 1 : 0; }

// Writes the members of one JSON object; each add*() skips empty values.
class ObjectWriter {
 public:
  explicit ObjectWriter(std::string& out) : out_(out) { out_.push_back('{'); }
  ~ObjectWriter() { out_.push_back('}'); }
  ObjectWriter(const ObjectWriter&) = delete;
  ObjectWriter& operator=(const ObjectWriter&) = delete;

  void addString(std::string_view key, std::string_view value) {
    if (!value.empty()) {
      appendJsonString(keyed(key), value);
    }
  }
  // `value` is already a validated JSON number.
  void addNumber(std::string_view key, std::string_view value) {
    if (!value.empty()) {
      keyed(key) += value;
    }
  }
  void addTrue(std::string_view key, bool value) {
    if (value) {
      keyed(key) += "true";
    }
  }
  // The caller writes the value right after.
  std::string& keyed(std::string_view key) {
    if (!first_) {
      out_.push_back(',');
    }
    first_ = false;
    appendJsonString(out_, key);
    out_.push_back(':');
    return out_;
  }

 private:
  std::string& out_;
  bool first_ = true;
};

void appendLine(std::string& out, const LineItem& line) {
  ObjectWriter o(out);
  o.addString("item_id", line.item_id);
  o.addString("gtin", line.gtin);
  o.addString("description", line.description);
  o.addNumber("quantity", line.quantity);
  o.addNumber("unit_price", line.unit_price);
  o.addNumber("amount", line.amount);
  o.addNumber("discount", line.discount);
  o.addTrue("return", line.is_return);
  o.addTrue("voided", line.voided);
}

void appendTender(std::string& out, const Tender& tender) {
  ObjectWriter o(out);
  o.addString("type", tender.type);
  o.addNumber("amount", tender.amount);
  o.addString("card_type", tender.card_type);
  o.addString("card_brand", tender.card_brand);
}

void appendData(std::string& out, const Transaction& tx) {
  ObjectWriter o(out);
  o.addString("workstation", tx.workstation);
  o.addString("sequence", tx.sequence);
  o.addString("business_day", tx.business_day);
  if (tx.ended_at_ms) {
    o.addString("ended_at", formatRfc3339Ms(*tx.ended_at_ms));
  }
  o.addString("currency", tx.currency);
  o.addString("operator_id", tx.operator_id);
  o.addTrue("training", tx.training);
  if (tx.record == Record::kControl) {
    o.addString("operation", tx.operation);
    o.addString("reason", tx.reason);
    return;
  }
  o.addString("kind", tx.kind);
  std::string& lines = o.keyed("lines");
  lines.push_back('[');
  for (std::size_t i = 0; i < tx.lines.size(); ++i) {
    if (i > 0) {
      lines.push_back(',');
    }
    appendLine(lines, tx.lines[i]);
  }
  lines.push_back(']');
  std::string& tenders = o.keyed("tenders");
  tenders.push_back('[');
  for (std::size_t i = 0; i < tx.tenders.size(); ++i) {
    if (i > 0) {
      tenders.push_back(',');
    }
    appendTender(tenders, tx.tenders[i]);
  }
  tenders.push_back(']');
  {
    ObjectWriter totals(o.keyed("totals"));
    totals.addNumber("grand", tx.total_grand);
    totals.addNumber("tax", tx.total_tax);
  }
}

std::string dataJson(const Transaction& tx) {
  std::string out;
  out.reserve(256 + tx.lines.size() * 160 + tx.tenders.size() * 64);
  appendData(out, tx);  // every ObjectWriter has closed its object when this returns
  return out;
}

}  // namespace

std::string_view trimSpace(std::string_view text) {
  constexpr std::string_view kSpace = " \t\r\n\f\v";
  const std::size_t first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) {
    return {};
  }
  return text.substr(first, text.find_last_not_of(kSpace) - first + 1);
}

std::string transactionId(std::string_view store_id, const Transaction& tx) {
  std::string id;
  id.reserve(kMaxIdLength);
  appendIdPart(id, store_id);
  if (cleanPart(tx.workstation) && cleanPart(tx.business_day) && cleanPart(tx.sequence) &&
      id.size() + tx.workstation.size() + tx.business_day.size() + tx.sequence.size() + 3 <=
          kMaxIdLength) {
    id.push_back(':');
    id += tx.workstation;
    id.push_back(':');
    id += tx.business_day;
    id.push_back(':');
    id += tx.sequence;
    return id;
  }
  const std::string hash = fieldsHash({store_id, tx.workstation, tx.business_day, tx.sequence});
  // Room for the readable parts: 128 - the store - four ':' - the hash.
  const std::size_t fixed = id.size() + 4 + hash.size();
  if (fixed > kMaxIdLength) {
    return "pos:" + hash;  // a store id longer than store.id allows: no room for hints
  }
  const std::size_t room = kMaxIdLength - fixed;
  const std::string day = hintPart(tx.business_day, std::min(room, kMaxHintPart));
  const std::size_t each = std::min((room - day.size()) / 2, kMaxHintPart);
  id.push_back(':');
  id += hintPart(tx.workstation, each);
  id.push_back(':');
  id += day;
  id.push_back(':');
  id += hintPart(tx.sequence, each);
  id.push_back(':');
  id += hash;
  return id;
}

std::size_t footprint(const LineItem& line) {
  return sizeof(LineItem) + heapBytes(line.item_id) + heapBytes(line.gtin) +
         heapBytes(line.description) + heapBytes(line.quantity) + heapBytes(line.unit_price) +
         heapBytes(line.amount) + heapBytes(line.discount);
}

std::size_t footprint(const Tender& tender) {
  return sizeof(Tender) + heapBytes(tender.type) + heapBytes(tender.amount) +
         heapBytes(tender.card_type) + heapBytes(tender.card_brand);
}

std::size_t footprint(const Transaction& tx) {
  std::size_t bytes = sizeof(Transaction);
  for (const std::string* s :
       {&tx.workstation, &tx.sequence, &tx.business_day, &tx.currency, &tx.operator_id, &tx.kind,
        &tx.total_grand, &tx.total_tax, &tx.operation, &tx.reason, &tx.loyalty_id, &tx.email,
        &tx.source_element}) {
    bytes += heapBytes(*s);
  }
  for (const LineItem& line : tx.lines) {
    bytes += footprint(line);
  }
  for (const Tender& tender : tx.tenders) {
    bytes += footprint(tender);
  }
  bytes += (tx.lines.capacity() - tx.lines.size()) * sizeof(LineItem);
  bytes += (tx.tenders.capacity() - tx.tenders.size()) * sizeof(Tender);
  return bytes;
}

std::string formatBytes(std::size_t bytes) {
  constexpr std::size_t kKiB = 1024;
  constexpr std::size_t kMiB = kKiB * 1024;
  if (bytes >= kMiB && bytes % kMiB == 0) {
    return std::to_string(bytes / kMiB) + " MiB";
  }
  if (bytes >= kKiB && bytes % kKiB == 0) {
    return std::to_string(bytes / kKiB) + " KiB";
  }
  return std::to_string(bytes) + " bytes";
}

ParseError ParseBudget::error() const {
  return ParseError{"too_large",
                    "reading it would take more than " + formatBytes(limit_) +
                        " of memory (the parse budget): it holds too many elements or values",
                    0,
                    {}};
}

ParseError explainRefusal(const Error& error, const std::vector<Transaction>& transactions,
                          bool indexed) {
  ParseError out{error.code, error.message, 0, error.field};
  const std::string& field = error.field;
  const std::size_t close = field.find(']');
  if (field.size() < 3 || field.front() != '[' || close == std::string::npos ||
      (close + 1 < field.size() && field[close + 1] != '.')) {
    return out;
  }
  const std::string digits = field.substr(1, close - 1);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos ||
      digits.size() > 9) {
    return out;
  }
  const std::size_t index = std::stoul(digits);
  if (index >= transactions.size()) {
    return out;
  }
  const Transaction& tx = transactions[index];
  out.line = tx.source_line;
  const std::string at = indexed ? field.substr(0, close + 1) : std::string();
  const std::string name = close + 2 <= field.size() ? field.substr(close + 2) : std::string();
  if (name.empty()) {
    // The event as a whole (too large): say which transaction it is.
    const std::string which = "the event of transaction " + tx.sequence + " of workstation " +
                              tx.workstation + " on " + tx.business_day;
    constexpr std::string_view kTheEvent = "the event";
    out.reason = error.message.rfind(kTheEvent, 0) == 0
                     ? which + error.message.substr(kTheEvent.size())
                     : which + ": " + error.message;
    out.element = at;
    return out;
  }
  // The event field -> the transaction field it was made of.
  std::string mapped = name;
  if (name == "occurred_at") {
    mapped = "ended_at";
  } else if (name == "source") {
    mapped = "workstation";
  }
  std::string why = error.message;
  if (why.rfind(field + " ", 0) == 0) {
    why.erase(0, field.size() + 1);
  } else if (why.rfind(name + " ", 0) == 0) {
    why.erase(0, name.size() + 1);
  }
  out.element = indexed ? at + "." + mapped : mapped;
  out.reason = out.element + " " + why;
  return out;
}

Event toEvent(const Transaction& tx, std::string_view store_id) {
  Event event;
  event.id = transactionId(store_id, tx);
  event.type = tx.record == Record::kControl ? "pos.control" : "pos.transaction";
  event.source = "pos:";
  appendIdPart(event.source, tx.workstation);
  if (event.source.size() > kMaxSourceLength) {
    event.source.resize(kMaxSourceLength);  // Ingest's limit; the id keeps transactions apart
  }
  event.occurred_at_ms = tx.ended_at_ms.value_or(0);
  if (!tx.loyalty_id.empty()) {
    event.customer["loyalty_id"] = tx.loyalty_id;
  }
  if (!tx.email.empty()) {
    event.customer["email"] = tx.email;
  }
  event.data_json = dataJson(tx);
  return event;
}

bool printable(std::string_view s) {
  return std::none_of(s.begin(), s.end(),
                      [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

std::optional<int64_t> parseDateTime(std::string_view value) {
  if (auto ms = parseRfc3339(value)) {
    return ms;
  }
  std::string utc(value);
  utc.push_back('Z');
  return parseRfc3339(utc);
}

bool isDate(std::string_view value) {
  if (value.size() != 10 || value[4] != '-' || value[7] != '-') {
    return false;
  }
  std::string midnight(value);
  midnight += "T00:00:00Z";
  return parseRfc3339(midnight).has_value();
}

std::optional<std::string> normaliseDecimal(std::string_view text) {
  text = trimSpace(text);
  bool negative = false;
  if (!text.empty() && (text.front() == '+' || text.front() == '-')) {
    negative = text.front() == '-';
    text.remove_prefix(1);
  }
  const std::size_t dot = text.find('.');
  std::string_view whole = text.substr(0, dot);
  const std::string_view fraction =
      dot == std::string_view::npos ? std::string_view() : text.substr(dot + 1);
  const auto digits = [](std::string_view s) {
    for (char c : s) {
      if (c < '0' || c > '9') {
        return false;
      }
    }
    return true;
  };
  if ((whole.empty() && fraction.empty()) || !digits(whole) || !digits(fraction) ||
      whole.size() + fraction.size() > kMaxDecimalDigits) {
    return std::nullopt;
  }
  while (whole.size() > 1 && whole.front() == '0') {
    whole.remove_prefix(1);
  }
  std::string out;
  if (negative) {
    out.push_back('-');
  }
  out += whole.empty() ? std::string_view("0") : whole;
  if (!fraction.empty()) {
    out.push_back('.');
    out += fraction;
  }
  return out;
}

std::string normaliseLoyaltyId(std::string_view text) {
  text = trimSpace(text);
  bool all_digits = !text.empty();
  for (char c : text) {
    all_digits = all_digits && c >= '0' && c <= '9';
  }
  if (all_digits) {
    while (!text.empty() && text.front() == '0') {
      text.remove_prefix(1);
    }
  }
  return std::string(text);
}

std::string forPeople(std::string_view text, std::size_t max_bytes) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 3);
  for (std::size_t i = 0; i < text.size();) {
    const auto byte = static_cast<unsigned char>(text[i]);
    // utf8SequenceLength() answers for multi-byte sequences only; ASCII is one byte.
    const std::size_t length = byte < 0x80 ? 1 : utf8SequenceLength(text, i);
    const bool control = byte < 0x20 || byte == 0x7f;
    const std::string_view piece = length == 0 || control ? kReplacement : text.substr(i, length);
    if (out.size() + piece.size() > max_bytes) {
      out += "...";
      break;
    }
    out += piece;
    i += length == 0 ? 1 : length;
  }
  return out;
}

std::string describe(const ParseError& error) {
  std::string text = "why: " + forPeople(error.reason) + "\n";
  if (error.line > 0) {
    text += "line: " + std::to_string(error.line) + "\n";
  }
  if (!error.element.empty()) {
    text += "element: " + forPeople(error.element) + "\n";
  }
  return text;
}

}  // namespace omniedge::pos
