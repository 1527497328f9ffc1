#include "drivers/kiosk/event_json.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include "agent/api/json_string.h"
#include "agent/api/time.h"

// A small validating JSON parser made for this one shape, instead of a DOM library: the kiosk
// API's hot path is here (quality.md P2), and building a DOM only to copy it into Events and
// serialise `data` back costs several times the parse itself. `data` is validated and then kept
// as the producer's own bytes, minus insignificant whitespace.
//
// Strict RFC 8259: UTF-8 checked, no comments, no trailing commas, no NaN; nesting is capped so
// that neither this parser nor anyone who later walks `data` recursively can run out of stack.

namespace omniedge::kiosk {
namespace {

constexpr int kMaxDepth = 64;

constexpr std::array<std::string_view, 8> kCustomerKeys = {
    "loyalty_id", "app_user_id", "profile_id",   "beacon",
    "email",      "phone",       "email_sha256", "phone_sha256"};

bool isCustomerKey(std::string_view key) {
  for (std::string_view known : kCustomerKeys) {
    if (key == known) {
      return true;
    }
  }
  return false;
}

bool isWhitespace(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
bool isDigit(char c) { return c >= '0' && c <= '9'; }

int hexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

void appendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Validated JSON text without the whitespace between tokens.
std::string compact(std::string_view json) {
  std::string out;
  out.reserve(json.size());
  bool in_string = false;
  bool escaped = false;
  for (char c : json) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (isWhitespace(c)) {
      continue;
    }
    out += c;
  }
  return out;
}

class Parser {
 public:
  Parser(std::string_view in, std::size_t max_events) : in_(in), max_events_(max_events) {}

  Result<std::vector<Event>> run(bool* was_array) {
    skipWhitespace();
    if (peek() == '[') {
      *was_array = true;
      ++pos_;
      skipWhitespace();
      if (peek() == ']') {
        ++pos_;
      } else {
        while (ok()) {
          parseElement(count_++);
          skipWhitespace();
          if (peek() == ',') {
            ++pos_;
            skipWhitespace();
          } else if (peek() == ']') {
            ++pos_;
            break;
          } else {
            syntaxError("expected ',' or ']' after an event");
          }
        }
      }
    } else if (peek() == '{') {
      parseElement(count_++);
    } else {
      const std::size_t start = pos_;
      skipValue(0);
      if (ok() && pos_ > start) {
        invalid("the body must be a JSON event object or an array of them", {});
      }
    }
    skipWhitespace();
    if (ok() && pos_ != in_.size()) {
      syntaxError("unexpected text after the JSON value");
    }

    if (syntax_error_) {
      return std::move(*syntax_error_);
    }
    if (*was_array && count_ == 0) {
      return makeError("invalid", "the array holds no events");
    }
    if (count_ > max_events_) {
      return makeError("too_large", std::to_string(count_) + " events in one request; at most " +
                                        std::to_string(max_events_) + " are accepted");
    }
    if (invalid_) {
      return std::move(*invalid_);
    }
    return std::move(events_);
  }

 private:
  bool ok() const { return !syntax_error_; }
  bool atEnd() const { return pos_ >= in_.size(); }
  char peek() const { return atEnd() ? '\0' : in_[pos_]; }

  void skipWhitespace() {
    while (!atEnd() && isWhitespace(in_[pos_])) {
      ++pos_;
      ++whitespace_;
    }
  }

  // Malformed JSON: stops the parse. Positions are 1-based, like most parsers report them.
  void syntaxError(std::string_view what) {
    if (!syntax_error_) {
      std::string message = "malformed JSON at byte " + std::to_string(pos_ + 1) + ": ";
      message += atEnd() ? "unexpected end of input" : what;
      syntax_error_ = makeError("invalid_json", std::move(message), "body");
    }
  }

  // Well-formed JSON that is not a valid event: the first one is kept, the parse goes on so
  // that malformed JSON later in the body still wins.
  void invalid(std::string message, std::string field) {
    if (!invalid_) {
      invalid_ = makeError("invalid", std::move(message), std::move(field));
    }
  }

  void invalidField(std::size_t index, std::string_view name, std::string_view reason) {
    std::string field = "[" + std::to_string(index) + "].";
    field += name;
    std::string message = field;
    message += ' ';
    message += reason;
    invalid(std::move(message), std::move(field));
  }

  bool building() const { return ok() && !invalid_ && count_ <= max_events_; }

  void parseElement(std::size_t index) {
    if (peek() != '{') {
      skipValue(1);
      const std::string name = "[" + std::to_string(index) + "]";
      invalid(name + " must be an object", name);
      return;
    }
    Event event;
    parseEvent(index, event);
    if (building()) {
      events_.push_back(std::move(event));
    }
  }

  // Moves over one value of any kind, checking it. `depth` counts the enclosing containers.
  void skipValue(int depth) {
    skipWhitespace();
    const char c = peek();
    if (c == '"') {
      parseString(nullptr);
    } else if (c == '{' || c == '[') {
      skipContainer(depth);
    } else if (c == '-' || isDigit(c)) {
      skipNumber();
    } else if (c == 't') {
      skipLiteral("true");
    } else if (c == 'f') {
      skipLiteral("false");
    } else if (c == 'n') {
      skipLiteral("null");
    } else {
      syntaxError("expected a JSON value");
    }
  }

  void skipContainer(int depth) {
    if (depth + 1 > kMaxDepth) {
      syntaxError("nested deeper than " + std::to_string(kMaxDepth) + " levels");
      return;
    }
    const bool object = in_[pos_] == '{';
    const char close = object ? '}' : ']';
    ++pos_;
    skipWhitespace();
    if (peek() == close) {
      ++pos_;
      return;
    }
    while (ok()) {
      if (object) {
        skipWhitespace();
        if (peek() != '"') {
          syntaxError("expected a string as object key");
          return;
        }
        parseString(nullptr);
        expectColon();
      }
      skipValue(depth + 1);
      skipWhitespace();
      if (peek() == ',') {
        ++pos_;
        skipWhitespace();
      } else if (peek() == close) {
        ++pos_;
        return;
      } else {
        syntaxError(object ? "expected ',' or '}'" : "expected ',' or ']'");
      }
    }
  }

  void skipLiteral(std::string_view literal) {
    if (in_.substr(pos_, literal.size()) != literal) {
      syntaxError("expected a JSON value");
      return;
    }
    pos_ += literal.size();
  }

  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, and finite as a double: whoever reads
  // `data` later (nlohmann and most JSON libraries) refuses 1e999.
  void skipNumber() {
    const std::size_t start = pos_;
    const bool exponent = skipNumberGrammar();
    constexpr std::size_t kMaxFiniteDigits = 300;
    if (ok() && (exponent || pos_ - start > kMaxFiniteDigits)) {
      const std::string text(in_.substr(start, pos_ - start));
      if (std::isinf(std::strtod(text.c_str(), nullptr))) {
        pos_ = start;
        syntaxError("number out of range");
      }
    }
  }

  // Whether the number had an exponent.
  bool skipNumberGrammar() {
    if (peek() == '-') {
      ++pos_;
    }
    if (peek() == '0') {
      ++pos_;
    } else if (isDigit(peek())) {
      while (isDigit(peek())) {
        ++pos_;
      }
    } else {
      syntaxError("expected a digit");
      return false;
    }
    if (peek() == '.') {
      ++pos_;
      if (!isDigit(peek())) {
        syntaxError("expected a digit after '.'");
        return false;
      }
      while (isDigit(peek())) {
        ++pos_;
      }
    }
    if (peek() != 'e' && peek() != 'E') {
      return false;
    }
    ++pos_;
    if (peek() == '+' || peek() == '-') {
      ++pos_;
    }
    if (!isDigit(peek())) {
      syntaxError("expected a digit in the exponent");
      return false;
    }
    while (isDigit(peek())) {
      ++pos_;
    }
    return true;
  }

  // Four hex digits of a \u escape; -1 (and a syntax error) when they are not.
  int32_t readHex4() {
    int32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      const int digit = hexValue(peek());
      if (digit < 0) {
        syntaxError("expected four hex digits after \\u");
        return -1;
      }
      value = value * 16 + digit;
      ++pos_;
    }
    return value;
  }

  // The string at pos_ (which is '"'), decoded into *out unless out is null. Fails on control
  // characters, bad escapes, lone surrogates and bytes that are not UTF-8.
  void parseString(std::string* out) {
    ++pos_;
    if (out != nullptr) {
      out->clear();
    }
    while (true) {
      // Copy plain ASCII runs in one go.
      const std::size_t run_start = pos_;
      pos_ += jsonPlainRun(in_, pos_, false);
      if (out != nullptr && pos_ > run_start) {
        out->append(in_.data() + run_start, pos_ - run_start);
      }
      if (atEnd()) {
        syntaxError("unterminated string");
        return;
      }
      const auto c = static_cast<unsigned char>(in_[pos_]);
      if (c == '"') {
        ++pos_;
        return;
      }
      if (c < 0x20) {
        syntaxError("control character in a string (escape it)");
        return;
      }
      if (c == '\\') {
        if (!parseEscape(out)) {
          return;
        }
        continue;
      }
      if (!parseUtf8(out)) {
        return;
      }
    }
  }

  bool parseEscape(std::string* out) {
    ++pos_;
    const char e = peek();
    char decoded = '\0';
    switch (e) {
      case '"':
      case '\\':
      case '/':
        decoded = e;
        break;
      case 'b':
        decoded = '\b';
        break;
      case 'f':
        decoded = '\f';
        break;
      case 'n':
        decoded = '\n';
        break;
      case 'r':
        decoded = '\r';
        break;
      case 't':
        decoded = '\t';
        break;
      case 'u': {
        ++pos_;
        int32_t cp = readHex4();
        if (cp < 0) {
          return false;
        }
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
          syntaxError("lone low surrogate in \\u escape");
          return false;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (in_.substr(pos_, 2) != "\\u") {
            syntaxError("high surrogate not followed by a low one");
            return false;
          }
          pos_ += 2;
          const int32_t low = readHex4();
          if (low < 0) {
            return false;
          }
          if (low < 0xDC00 || low > 0xDFFF) {
            syntaxError("high surrogate not followed by a low one");
            return false;
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        if (out != nullptr) {
          appendUtf8(*out, static_cast<uint32_t>(cp));
        }
        return true;
      }
      default:
        syntaxError("invalid escape in a string");
        return false;
    }
    ++pos_;
    if (out != nullptr) {
      *out += decoded;
    }
    return true;
  }

  // One multi-byte UTF-8 sequence at pos_: shortest form, no surrogates, at most U+10FFFF.
  bool parseUtf8(std::string* out) {
    const std::size_t length = utf8SequenceLength(in_, pos_);
    if (length == 0) {
      syntaxError("invalid UTF-8 in a string");
      return false;
    }
    if (out != nullptr) {
      out->append(in_.data() + pos_, length);
    }
    pos_ += length;
    return true;
  }

  void expectColon() {
    skipWhitespace();
    if (peek() != ':') {
      syntaxError("expected ':' after an object key");
      return;
    }
    ++pos_;
    skipWhitespace();
  }

  // A string value into *out, or an error naming the field; other values are skipped over.
  bool stringField(std::size_t index, std::string_view name, std::string* out) {
    if (peek() != '"') {
      invalidField(index, name, "must be a string");
      skipValue(2);
      return false;
    }
    parseString(out);
    return ok();
  }

  // The event object at pos_ (which is '{'), at depth 1 or 0 below the top.
  void parseEvent(std::size_t index, Event& event) {
    enum Seen : unsigned {
      kType = 1,
      kId = 2,
      kSource = 4,
      kStoreId = 8,
      kOccurredAt = 16,
      kCustomer = 32,
      kData = 64
    };
    unsigned seen = 0;
    ++pos_;
    skipWhitespace();
    if (peek() == '}') {
      ++pos_;
      invalidField(index, "type", "is required");
      return;
    }
    std::string key;
    while (ok()) {
      skipWhitespace();
      if (peek() != '"') {
        syntaxError("expected a string as object key");
        return;
      }
      parseString(&key);
      expectColon();
      if (!ok()) {
        return;
      }
      unsigned bit = 0;
      if (key == "type") {
        bit = kType;
        stringField(index, key, &event.type);
      } else if (key == "id") {
        bit = kId;
        stringField(index, key, &event.id);
      } else if (key == "source") {
        bit = kSource;
        stringField(index, key, &event.source);
      } else if (key == "store_id") {
        bit = kStoreId;
        stringField(index, key, &event.store_id);
      } else if (key == "occurred_at") {
        bit = kOccurredAt;
        std::string text;
        if (stringField(index, key, &text)) {
          if (auto ms = parseRfc3339(text)) {
            event.occurred_at_ms = *ms;
          } else {
            invalidField(index, key, "is not an RFC 3339 timestamp");
          }
        }
      } else if (key == "received_at") {
        invalidField(index, key, "is set by the agent and not accepted from producers");
        skipValue(2);
      } else if (key == "customer") {
        bit = kCustomer;
        parseCustomer(index, event);
      } else if (key == "data") {
        bit = kData;
        if (peek() != '{') {
          invalidField(index, key, "must be an object");
          skipValue(2);
        } else {
          const std::size_t start = pos_;
          const std::size_t whitespace = whitespace_;
          skipValue(2);
          if (ok()) {
            // Most producers send compact JSON: then it is copied as it is.
            const std::string_view text = in_.substr(start, pos_ - start);
            event.data_json = whitespace_ == whitespace ? std::string(text) : compact(text);
          }
        }
      } else {
        invalidField(index, key, "unknown field");
        skipValue(2);
      }
      if ((seen & bit) != 0) {
        invalidField(index, key, "appears more than once");
      }
      seen |= bit;

      skipWhitespace();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() == '}') {
        ++pos_;
        break;
      } else {
        syntaxError("expected ',' or '}'");
      }
    }
    if (ok() && (seen & kType) == 0) {
      invalidField(index, "type", "is required");
    }
  }

  void parseCustomer(std::size_t index, Event& event) {
    if (peek() != '{') {
      invalidField(index, "customer", "must be an object");
      skipValue(2);
      return;
    }
    ++pos_;
    skipWhitespace();
    if (peek() == '}') {
      ++pos_;
      return;
    }
    std::string key;
    std::string value;
    while (ok()) {
      skipWhitespace();
      if (peek() != '"') {
        syntaxError("expected a string as object key");
        return;
      }
      parseString(&key);
      expectColon();
      if (!ok()) {
        return;
      }
      const std::string name = "customer." + key;
      if (!isCustomerKey(key)) {
        invalidField(index, name, "unknown field");
        skipValue(3);
      } else if (stringField(index, name, &value)) {
        if (!event.customer.emplace(key, std::move(value)).second) {
          invalidField(index, name, "appears more than once");
        }
      }
      skipWhitespace();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() == '}') {
        ++pos_;
        return;
      } else {
        syntaxError("expected ',' or '}'");
      }
    }
  }

  std::string_view in_;
  std::size_t pos_ = 0;
  std::size_t whitespace_ = 0;  // bytes of whitespace skipped between tokens so far
  const std::size_t max_events_;
  std::size_t count_ = 0;
  std::vector<Event> events_;
  std::optional<Error> syntax_error_;
  std::optional<Error> invalid_;
};

}  // namespace

Result<std::vector<Event>> parseEvents(std::string_view body, std::size_t max_events,
                                       bool* was_array) {
  bool array = false;
  Result<std::vector<Event>> result = makeError("invalid", "not parsed");
  try {
    result = Parser(body, max_events).run(&array);
  } catch (const std::exception& e) {  // std::bad_alloc only: nothing else throws here
    result = makeError("too_large", std::string("cannot hold the events: ") + e.what());
  }
  if (was_array != nullptr) {
    *was_array = array;
  }
  return result;
}

}  // namespace omniedge::kiosk
