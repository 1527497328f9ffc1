#include "drivers/pos/transaction.h"

#include <algorithm>
#include <array>
#include <cstdio>

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

void appendIdPart(std::string& out, std::string_view part) {
  for (char c : part) {
    out.push_back(isIdChar(c) ? c : '-');
  }
}

uint64_t fnv1a(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

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
  id.reserve(store_id.size() + tx.workstation.size() + tx.business_day.size() + tx.sequence.size() +
             3);
  appendIdPart(id, store_id);
  id.push_back(':');
  appendIdPart(id, tx.workstation);
  id.push_back(':');
  appendIdPart(id, tx.business_day);
  id.push_back(':');
  appendIdPart(id, tx.sequence);
  if (id.size() > kMaxIdLength) {
    std::array<char, 20> hash{};
    std::snprintf(hash.data(), hash.size(), "~%016llx", static_cast<unsigned long long>(fnv1a(id)));
    id.resize(kMaxIdLength - 17);
    id += hash.data();
  }
  return id;
}

Event toEvent(const Transaction& tx, std::string_view store_id) {
  Event event;
  event.id = transactionId(store_id, tx);
  event.type = tx.record == Record::kControl ? "pos.control" : "pos.transaction";
  event.source = "pos:";
  appendIdPart(event.source, tx.workstation);
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

std::string describe(const ParseError& error) {
  std::string text = "why: " + error.reason + "\n";
  if (error.line > 0) {
    text += "line: " + std::to_string(error.line) + "\n";
  }
  if (!error.element.empty()) {
    text += "element: " + error.element + "\n";
  }
  return text;
}

}  // namespace omniedge::pos
