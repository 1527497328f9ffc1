#include "drivers/pos/transaction_json.h"

#include <algorithm>
#include <array>
#include <exception>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/api/time.h"

// nlohmann's DOM turns 12.50 into a double, and the amount's text is gone. Its SAX interface
// hands over the number's own text, so this builds a small tree of its own that keeps it: an
// amount goes into the event with exactly the digits the till wrote.

namespace omniedge::pos {
namespace {

constexpr std::size_t kMaxDepth = 16;      // a transaction is 4 levels deep
constexpr std::size_t kMaxMembers = 256;   // per object (duplicate checks stay cheap)
constexpr std::size_t kMaxIdentity = 128;  // loyalty id, as ingest allows
constexpr std::size_t kMaxEmailLength = 254;
constexpr std::size_t kMaxQuoted = 40;  // bytes of a bad value quoted in an error

struct JMember;

struct JValue {
  enum class Kind { kNull, kBool, kNumber, kString, kObject, kArray };
  Kind kind = Kind::kNull;
  bool boolean = false;
  std::string text;  // a string's value, a number's own text
  // A vector of an incomplete type is fine (C++17); a std::pair of one is not.
  std::vector<JMember> members;
  std::vector<JValue> items;
};

struct JMember {
  std::string first;  // the name
  JValue second;      // the value
};

JValue makeValue(JValue::Kind kind) {
  JValue v;
  v.kind = kind;
  return v;
}

// Builds the tree, charging the budget for every value as it is made (its node, its text, the
// growth of its parent's vector), and stops at the budget. When the root is an array and
// `on_item` is set, each element is handed over as soon as it is complete and then freed, so
// an array of transactions never holds more than one transaction's tree at a time.
class TreeBuilder {
 public:
  using Json = nlohmann::json;
  // Called with each complete element of a root array and its index; false stops the parse.
  using ItemHandler = std::function<bool(JValue& item, std::size_t index)>;

  explicit TreeBuilder(ParseBudget& budget, ItemHandler on_item = {})
      : budget_(budget), on_item_(std::move(on_item)) {}

  bool null() { return add(JValue{}); }
  bool boolean(bool value) {
    JValue v = makeValue(JValue::Kind::kBool);
    v.boolean = value;
    return add(std::move(v));
  }
  bool number_integer(Json::number_integer_t value) { return number(std::to_string(value)); }
  bool number_unsigned(Json::number_unsigned_t value) { return number(std::to_string(value)); }
  bool number_float(Json::number_float_t /*value*/, const std::string& text) {
    return number(text);
  }
  bool string(std::string& value) {
    JValue v = makeValue(JValue::Kind::kString);
    v.text = std::move(value);
    return add(std::move(v));
  }
  bool binary(Json::binary_t& /*value*/) { return fail("binary values are not JSON"); }
  bool start_object(std::size_t /*size*/) { return open(JValue::Kind::kObject); }
  bool key(std::string& name) {
    JValue& object = *stack_.back();
    if (object.members.size() >= kMaxMembers) {
      return fail("an object has more than " + std::to_string(kMaxMembers) + " fields");
    }
    for (const auto& member : object.members) {
      if (member.first == name) {
        return fail("the field \"" + name + "\" appears more than once in an object");
      }
    }
    key_ = std::move(name);
    return true;
  }
  bool end_object() { return close(); }
  bool start_array(std::size_t /*size*/) { return open(JValue::Kind::kArray); }
  bool end_array() { return close(); }
  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::json::exception& error) {
    position_ = position;
    std::string what = error.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error while
    // parsing value - invalid literal; last read: 'x'": keep what follows the last " - ".
    const std::size_t dash = what.rfind(" - ");
    message_ = "malformed JSON: " + (dash == std::string::npos ? what : what.substr(dash + 3));
    return false;
  }

  JValue& root() { return root_; }
  const std::string& message() const { return message_; }
  std::size_t position() const { return position_; }
  // The parse stopped because on_item said so (its own error), not for the JSON.
  bool stoppedByItem() const { return stopped_by_item_; }
  // Bytes the tree still holds (what is left after the streamed elements were freed).
  std::size_t treeBytes() const { return tree_bytes_; }

 private:
  bool number(std::string text) {
    JValue v = makeValue(JValue::Kind::kNumber);
    v.text = std::move(text);
    return add(std::move(v));
  }

  bool fail(std::string message) {
    message_ = "malformed JSON: " + std::move(message);
    return false;
  }

  bool charge(std::size_t bytes) {
    if (!budget_.take(bytes)) {
      message_ = budget_.error().reason;
      return false;
    }
    tree_bytes_ += bytes;
    return true;
  }

  static std::size_t heapBytes(const std::string& s) {
    return s.capacity() > 15 ? s.capacity() + 1 : 0;
  }

  // A streamed element begins: whatever the tree takes from here on is freed when it is done.
  bool streaming() const {
    return on_item_ && stack_.size() == 1 && root_.kind == JValue::Kind::kArray;
  }

  bool add(JValue value) {
    const bool item = streaming();
    if (item) {
      item_start_bytes_ = tree_bytes_;
    }
    if (insert(std::move(value)) == nullptr) {
      return false;
    }
    return !item || handOver();
  }

  // Pointers on the stack stay valid: only the innermost open container grows.
  JValue* insert(JValue value) {
    if (!charge(sizeof(JValue) + heapBytes(value.text))) {
      return nullptr;
    }
    if (stack_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    JValue& parent = *stack_.back();
    if (parent.kind == JValue::Kind::kObject) {
      if (parent.members.size() == parent.members.capacity() &&
          !charge(grownBy(parent.members.capacity()) * sizeof(JMember))) {
        return nullptr;
      }
      if (!charge(heapBytes(key_))) {
        return nullptr;
      }
      parent.members.push_back(JMember{std::move(key_), std::move(value)});
      return &parent.members.back().second;
    }
    if (parent.items.size() == parent.items.capacity() &&
        !charge(grownBy(parent.items.capacity()) * sizeof(JValue))) {
      return nullptr;
    }
    parent.items.push_back(std::move(value));
    return &parent.items.back();
  }

  // How many elements a full vector of `capacity` gains when it grows (libstdc++ doubles).
  static std::size_t grownBy(std::size_t capacity) { return capacity == 0 ? 1 : capacity; }

  bool open(JValue::Kind kind) {
    if (stack_.size() >= kMaxDepth) {
      return fail("nested deeper than " + std::to_string(kMaxDepth) + " levels");
    }
    if (streaming()) {
      item_start_bytes_ = tree_bytes_;
    }
    JValue* opened = insert(makeValue(kind));
    if (opened == nullptr) {
      return false;
    }
    stack_.push_back(opened);
    return true;
  }

  bool close() {
    stack_.pop_back();
    return !streaming() || handOver();
  }

  // The root array's newest element is complete: hand it over, then free it.
  bool handOver() {
    JValue& item = root_.items.back();
    const bool go_on = on_item_(item, index_++);
    root_.items.clear();  // keeps its capacity (one element) for the next
    const std::size_t freed = tree_bytes_ - item_start_bytes_;
    budget_.give(freed);
    tree_bytes_ -= freed;
    item_start_bytes_ = tree_bytes_;
    if (!go_on) {
      stopped_by_item_ = true;
    }
    return go_on;
  }

  ParseBudget& budget_;
  ItemHandler on_item_;
  JValue root_;
  std::vector<JValue*> stack_;
  std::string key_;
  std::string message_;
  std::size_t position_ = 0;
  std::size_t tree_bytes_ = 0;        // charged for the tree and not given back
  std::size_t item_start_bytes_ = 0;  // tree_bytes_ when the current streamed element began
  std::size_t index_ = 0;             // of the next streamed element
  bool stopped_by_item_ = false;
};

// Fields that would carry card data: refused by name, so that a till that sends them learns
// why instead of reading "unknown field".
constexpr std::array<std::string_view, 14> kCardDataFields = {"card_number",
                                                              "pan",
                                                              "primary_account_number",
                                                              "account_number",
                                                              "masked_pan",
                                                              "authorization_code",
                                                              "auth_code",
                                                              "approval_code",
                                                              "reference_number",
                                                              "expiry",
                                                              "expiry_date",
                                                              "expiration_date",
                                                              "cvv",
                                                              "cvc"};

bool isCardDataField(std::string_view name) {
  return std::find(kCardDataFields.begin(), kCardDataFields.end(), name) != kCardDataFields.end();
}

// Maps one transaction object; the first error wins and stops the mapping.
class Mapper {
 public:
  Mapper(std::string prefix, ParseBudget& budget) : prefix_(std::move(prefix)), budget_(budget) {}

  std::optional<Transaction> map(JValue& object) {
    if (object.kind != JValue::Kind::kObject) {
      // "[2]" in an array (the prefix without its dot), nothing for a single value.
      std::string where = prefix_.empty() ? "" : prefix_.substr(0, prefix_.size() - 1);
      std::string message = where.empty() ? "" : where + " ";
      error_ = ParseError{"invalid", message + "a transaction must be a JSON object", 0,
                          std::move(where)};
      return std::nullopt;
    }
    Transaction tx;
    const JValue* control = nullptr;
    const JValue* kind = nullptr;
    for (auto& [name, value] : object.members) {
      if (error_) {
        break;
      }
      if (name == "workstation") {
        tx.workstation = identifier(value, name);
      } else if (name == "sequence") {
        tx.sequence = identifier(value, name);
      } else if (name == "business_day") {
        tx.business_day = string(value, name);
        if (!error_ && !tx.business_day.empty() && !isDate(tx.business_day)) {
          fail(name, "must be a YYYY-MM-DD date");
        }
      } else if (name == "ended_at") {
        const std::string text = string(value, name);
        if (!text.empty()) {
          tx.ended_at_ms = parseDateTime(text);
          if (!tx.ended_at_ms) {
            fail(name, "must be an RFC 3339 date-time (like 2026-11-22T13:32:42.123Z)");
          }
        }
      } else if (name == "currency") {
        tx.currency = string(value, name);
      } else if (name == "operator_id") {
        tx.operator_id = identifier(value, name);
      } else if (name == "kind") {
        kind = &value;
      } else if (name == "training") {
        tx.training = boolean(value, name);
      } else if (name == "lines") {
        forEachObject(value, name, [&](JValue& item, const std::string& at) {
          LineItem made = line(item, at);
          if (chargePart(footprint(made))) {
            tx.lines.push_back(std::move(made));
          }
        });
      } else if (name == "tenders") {
        forEachObject(value, name, [&](JValue& item, const std::string& at) {
          Tender made = tender(item, at);
          if (chargePart(footprint(made))) {
            tx.tenders.push_back(std::move(made));
          }
        });
      } else if (name == "totals") {
        totals(value, name, tx);
      } else if (name == "customer") {
        customer(value, name, tx);
      } else if (name == "control") {
        control = &value;
      } else {
        unknown(name);
      }
    }
    if (error_) {
      return std::nullopt;
    }
    if (tx.workstation.empty()) {
      fail("workstation", "is required");
    } else if (tx.sequence.empty()) {
      fail("sequence", "is required");
    } else if (tx.business_day.empty() && !tx.ended_at_ms) {
      fail("business_day", "is required (or ended_at, to take it from)");
    }
    if (tx.business_day.empty() && tx.ended_at_ms) {
      tx.business_day = formatRfc3339Ms(*tx.ended_at_ms).substr(0, 10);
    }
    if (control != nullptr && control->kind != JValue::Kind::kNull) {
      controlFields(*control, tx);
    }
    if (!error_) {
      deriveKind(kind, tx);
    }
    if (!error_) {
      charge(footprint(tx) - charged_parts_);
    }
    if (error_) {
      budget_.give(charged_parts_);  // the transaction is dropped
      return std::nullopt;
    }
    return tx;
  }

  std::optional<ParseError>& error() { return error_; }

 private:
  // The transaction is charged as it is made (a million empty lines stop at the budget, not
  // after all were made); false and the budget's error when over.
  bool charge(std::size_t bytes) {
    if (budget_.take(bytes)) {
      return true;
    }
    if (!error_) {
      error_ = budget_.error();
    }
    return false;
  }
  bool chargePart(std::size_t bytes) {
    if (!charge(bytes)) {
      return false;
    }
    charged_parts_ += bytes;
    return true;
  }

  void fail(const std::string& field, std::string_view reason) {
    if (!error_) {
      std::string where = prefix_ + field;
      std::string message = where.empty() ? std::string(reason) : where + " " + std::string(reason);
      error_ = ParseError{"invalid", std::move(message), 0, std::move(where)};
    }
  }

  void unknown(const std::string& field) {
    const std::string_view leaf = std::string_view(field).substr(field.rfind('.') + 1);
    fail(field, isCardDataField(leaf)
                    ? "is card data, which the agent never takes (nor stores, nor sends on)"
                    : "is not a field of a POS transaction (see docs/pos.md)");
  }

  std::string string(const JValue& value, const std::string& field) {
    if (value.kind == JValue::Kind::kNull) {
      return {};
    }
    if (value.kind != JValue::Kind::kString) {
      fail(field, "must be a string");
      return {};
    }
    return std::string(trimSpace(value.text));
  }

  // Ids may come as numbers (a workstation 31, a sequence 4711): kept as their digits.
  std::string identifier(const JValue& value, const std::string& field) {
    if (value.kind == JValue::Kind::kNumber) {
      if (value.text.find_first_not_of("0123456789") != std::string::npos) {
        fail(field, "must be a string or a whole number");
        return {};
      }
      return value.text;
    }
    if (value.kind != JValue::Kind::kString && value.kind != JValue::Kind::kNull) {
      fail(field, "must be a string or a whole number");
      return {};
    }
    return string(value, field);
  }

  std::string decimal(const JValue& value, const std::string& field) {
    if (value.kind == JValue::Kind::kNull) {
      return {};
    }
    if (value.kind != JValue::Kind::kNumber && value.kind != JValue::Kind::kString) {
      fail(field, "must be a decimal number (like 12.50)");
      return {};
    }
    if (value.kind == JValue::Kind::kString && trimSpace(value.text).empty()) {
      return {};
    }
    if (auto normal = normaliseDecimal(value.text)) {
      return std::move(*normal);
    }
    fail(field, "must be a decimal number (like 12.50), not " + quoted(value));
    return {};
  }

  // The value as the producer wrote it, for an error message: a string in quotes, a number as
  // its digits; cut at 40 bytes (on a character boundary) so a message stays short.
  static std::string quoted(const JValue& value) {
    std::string_view text = value.text;
    const bool cut = text.size() > kMaxQuoted;
    if (cut) {
      std::size_t end = kMaxQuoted;
      while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) {
        --end;  // not inside a UTF-8 sequence
      }
      text = text.substr(0, end);
    }
    std::string out = value.kind == JValue::Kind::kString ? "\"" : "";
    out += text;
    out += cut ? "..." : "";
    out += value.kind == JValue::Kind::kString ? "\"" : "";
    return out;
  }

  bool boolean(const JValue& value, const std::string& field) {
    if (value.kind == JValue::Kind::kNull) {
      return false;
    }
    if (value.kind != JValue::Kind::kBool) {
      fail(field, "must be true or false");
      return false;
    }
    return value.boolean;
  }

  template <class F>
  void forEachObject(JValue& value, const std::string& field, F&& each) {
    if (value.kind == JValue::Kind::kNull) {
      return;
    }
    if (value.kind != JValue::Kind::kArray) {
      fail(field, "must be an array");
      return;
    }
    for (std::size_t i = 0; i < value.items.size() && !error_; ++i) {
      const std::string at = field + "[" + std::to_string(i) + "]";
      if (value.items[i].kind != JValue::Kind::kObject) {
        fail(at, "must be an object");
        return;
      }
      each(value.items[i], at);
    }
  }

  LineItem line(JValue& object, const std::string& at) {
    LineItem out;
    for (auto& [name, value] : object.members) {
      const std::string field = at + "." + name;
      if (name == "item_id") {
        out.item_id = identifier(value, field);
      } else if (name == "gtin") {
        out.gtin = identifier(value, field);
      } else if (name == "description") {
        out.description = string(value, field);
      } else if (name == "quantity") {
        out.quantity = decimal(value, field);
      } else if (name == "unit_price") {
        out.unit_price = decimal(value, field);
      } else if (name == "amount") {
        out.amount = decimal(value, field);
      } else if (name == "discount") {
        out.discount = decimal(value, field);
      } else if (name == "return") {
        out.is_return = boolean(value, field);
      } else if (name == "voided") {
        out.voided = boolean(value, field);
      } else {
        unknown(field);
      }
      if (error_) {
        break;
      }
    }
    return out;
  }

  Tender tender(JValue& object, const std::string& at) {
    Tender out;
    for (auto& [name, value] : object.members) {
      const std::string field = at + "." + name;
      if (name == "type") {
        out.type = string(value, field);
      } else if (name == "amount") {
        out.amount = decimal(value, field);
      } else if (name == "card_type") {
        out.card_type = string(value, field);
      } else if (name == "card_brand") {
        out.card_brand = string(value, field);
      } else {
        unknown(field);
      }
      if (error_) {
        break;
      }
    }
    return out;
  }

  void totals(JValue& value, const std::string& at, Transaction& tx) {
    if (value.kind == JValue::Kind::kNull) {
      return;
    }
    if (value.kind != JValue::Kind::kObject) {
      fail(at, "must be an object");
      return;
    }
    for (auto& [name, member] : value.members) {
      const std::string field = at + "." + name;
      if (name == "grand") {
        tx.total_grand = decimal(member, field);
      } else if (name == "tax") {
        tx.total_tax = decimal(member, field);
      } else {
        unknown(field);
      }
      if (error_) {
        return;
      }
    }
  }

  void customer(JValue& value, const std::string& at, Transaction& tx) {
    if (value.kind == JValue::Kind::kNull) {
      return;
    }
    if (value.kind != JValue::Kind::kObject) {
      fail(at, "must be an object");
      return;
    }
    for (auto& [name, member] : value.members) {
      const std::string field = at + "." + name;
      if (name == "loyalty_id") {
        tx.loyalty_id = normaliseLoyaltyId(identifier(member, field));
        if (tx.loyalty_id.size() > kMaxIdentity || !printable(tx.loyalty_id)) {
          fail(field, "must be at most 128 printable characters");
        }
      } else if (name == "email") {
        tx.email = string(member, field);
        if (tx.email.size() > kMaxEmailLength || !printable(tx.email)) {
          fail(field, "must be an e-mail address of at most 254 printable characters");
        }
      } else {
        unknown(field);
      }
      if (error_) {
        return;
      }
    }
  }

  void controlFields(const JValue& value, Transaction& tx) {
    if (value.kind != JValue::Kind::kObject) {
      fail("control", "must be an object");
      return;
    }
    if (!tx.lines.empty() || !tx.tenders.empty() || !tx.total_grand.empty() ||
        !tx.total_tax.empty()) {
      fail("control",
           "cannot come with lines, tenders or totals (a control transaction sells "
           "nothing)");
      return;
    }
    tx.record = Record::kControl;
    for (const auto& [name, member] : value.members) {
      const std::string field = "control." + name;
      if (name == "operation") {
        tx.operation = string(member, field);
      } else if (name == "reason") {
        tx.reason = string(member, field);
      } else {
        unknown(field);
      }
      if (error_) {
        return;
      }
    }
    if (tx.operation.empty()) {
      fail("control.operation", "is required (like OperatorSignOn)");
    }
  }

  void deriveKind(const JValue* kind, Transaction& tx) {
    if (kind != nullptr && kind->kind != JValue::Kind::kNull) {
      if (tx.record == Record::kControl) {
        fail("kind", "does not apply to a control transaction");
        return;
      }
      const std::string value = string(*kind, "kind");
      if (value != "sale" && value != "return" && value != "void") {
        if (!error_) {
          fail("kind", "must be sale, return or void");
        }
        return;
      }
      tx.kind = value;
      return;
    }
    const bool any_return = std::any_of(tx.lines.begin(), tx.lines.end(),
                                        [](const LineItem& l) { return l.is_return && !l.voided; });
    tx.kind = any_return ? "return" : "sale";
  }

  std::string prefix_;
  ParseBudget& budget_;
  std::size_t charged_parts_ = 0;  // its lines and tenders, charged as they were made
  std::optional<ParseError> error_;
};

std::size_t lineOfByte(std::string_view text, std::size_t position) {
  position = std::min(position, text.size());
  return static_cast<std::size_t>(std::count(text.begin(), text.begin() + position, '\n')) + 1;
}

// One JSON value into a tree (or, with `on_item`, each element of a root array handed over as
// it completes), or the syntax error (ParseError::line from the byte position), or the
// budget's. When on_item stopped the parse, returns nullopt: the caller has that error.
// `*tree_bytes`: what the tree in `out` is charged to the budget for (the caller gives it back
// once it frees the tree).
std::optional<ParseError> parseTree(std::string_view text, JValue& out, ParseBudget& budget,
                                    std::size_t* tree_bytes,
                                    TreeBuilder::ItemHandler on_item = {}) {
  TreeBuilder builder(budget, std::move(on_item));
  bool ok = false;
  try {
    ok = nlohmann::json::sax_parse(text.begin(), text.end(), &builder,
                                   nlohmann::json::input_format_t::json, true, false);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    return ParseError{"invalid_json", std::string("malformed JSON: ") + e.what(), 0, {}};
  }
  if (!ok && builder.stoppedByItem()) {
    return std::nullopt;
  }
  if (!ok) {
    const std::size_t position = builder.position() > 0 ? builder.position() - 1 : 0;
    if (budget.exceeded()) {
      ParseError error = budget.error();
      error.line = lineOfByte(text, position);
      return error;
    }
    return ParseError{"invalid_json",
                      builder.message().empty() ? "malformed JSON" : builder.message(),
                      lineOfByte(text, position),
                      {}};
  }
  out = std::move(builder.root());
  *tree_bytes = builder.treeBytes();
  return std::nullopt;
}

// Appends, charging the budget for the vector's growth as well; false when over.
bool appendCharged(std::vector<Transaction>& out, Transaction tx, ParseBudget& budget) {
  if (out.size() == out.capacity() &&
      !budget.take(std::max<std::size_t>(out.capacity(), 1) * sizeof(Transaction))) {
    return false;
  }
  out.push_back(std::move(tx));
  return true;
}

}  // namespace

namespace {

Parsed parseJsonTransactions(std::string_view text, std::size_t max_transactions, bool* was_array,
                             ParseBudget& budget) {
  Parsed parsed;
  bool array = false;
  const std::string_view body = trimSpace(text);
  if (!body.empty() && body.front() == '[') {
    array = true;
  }
  if (was_array != nullptr) {
    *was_array = array;
  }
  if (body.empty()) {
    parsed.error = ParseError{"empty", "there is no transaction (the input is empty)", 0, {}};
    return parsed;
  }
  // The elements of an array are mapped as they complete: the first bad one, or the one past
  // max_transactions, stops the parse there.
  std::optional<ParseError> item_error;
  const auto on_item = [&](JValue& item, std::size_t i) {
    if (i >= max_transactions) {
      item_error = ParseError{"too_large",
                              "more than " + std::to_string(max_transactions) +
                                  " transactions in one request; at most " +
                                  std::to_string(max_transactions) + " are accepted",
                              0,
                              {}};
      return false;
    }
    Mapper mapper("[" + std::to_string(i) + "].", budget);
    auto tx = mapper.map(item);
    if (!tx) {
      item_error = std::move(mapper.error());
      return false;
    }
    tx->source_element = "[" + std::to_string(i) + "]";
    if (!appendCharged(parsed.transactions, std::move(*tx), budget)) {
      item_error = budget.error();
      return false;
    }
    return true;
  };
  JValue root;
  std::size_t tree_bytes = 0;
  std::optional<ParseError> error = parseTree(text, root, budget, &tree_bytes, on_item);
  if (!error) {
    error = std::move(item_error);
  }
  if (error) {
    parsed.transactions.clear();
    parsed.error = std::move(error);
    return parsed;
  }
  if (root.kind == JValue::Kind::kArray) {
    if (parsed.transactions.empty()) {
      parsed.error = ParseError{"empty", "the array holds no transaction", 0, {}};
    }
    return parsed;
  }
  Mapper mapper("", budget);
  auto tx = mapper.map(root);
  if (!tx) {
    parsed.error = std::move(mapper.error());
    if (parsed.error && parsed.error->code == "invalid" && parsed.error->element.empty() &&
        root.kind != JValue::Kind::kObject) {
      parsed.error->reason = "the body must be a transaction object or an array of them";
    }
    return parsed;
  }
  parsed.transactions.push_back(std::move(*tx));
  return parsed;
}

Parsed parseJsonLines(std::string_view text, ParseBudget& budget) {
  Parsed parsed;
  std::size_t line_number = 0;
  std::size_t start = 0;
  const auto failAt = [&](ParseError error) {
    error.line = line_number;
    parsed.transactions.clear();
    parsed.error = std::move(error);
    return parsed;
  };
  while (start <= text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    ++line_number;
    const std::string_view line = trimSpace(text.substr(start, end - start));
    start = end + 1;
    if (line.empty()) {
      continue;
    }
    JValue root;
    std::size_t tree_bytes = 0;
    if (auto error = parseTree(line, root, budget, &tree_bytes)) {
      return failAt(std::move(*error));
    }
    Mapper mapper("", budget);
    auto tx = mapper.map(root);
    root = JValue{};
    budget.give(tree_bytes);
    if (!tx) {
      ParseError error = std::move(*mapper.error());
      if (error.code == "invalid" && error.element.empty()) {
        error.reason = "each line must hold one transaction object";
      }
      return failAt(std::move(error));
    }
    tx->source_line = line_number;
    if (!appendCharged(parsed.transactions, std::move(*tx), budget)) {
      return failAt(budget.error());
    }
  }
  if (parsed.transactions.empty()) {
    parsed.error = ParseError{"empty", "the file holds no transaction", 0, {}};
  }
  return parsed;
}

}  // namespace

Parsed parseJsonTransactions(std::string_view text, std::size_t max_transactions, bool* was_array,
                             std::size_t max_memory) {
  ParseBudget budget(max_memory);
  Parsed parsed = parseJsonTransactions(text, max_transactions, was_array, budget);
  parsed.peak_memory = budget.peak();
  return parsed;
}

Parsed parseJsonLines(std::string_view text, std::size_t max_memory) {
  ParseBudget budget(max_memory);
  Parsed parsed = parseJsonLines(text, budget);
  parsed.peak_memory = budget.peak();
  return parsed;
}

}  // namespace omniedge::pos
