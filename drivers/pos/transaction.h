// A POS transaction as read from ARTS POSLog XML or from the JSON form, and the event it becomes
// (contract §8). Both readers fill the same struct, so the mapping to events is written once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/result.h"

namespace omniedge::pos {

/// One item line. Amounts and quantities are decimal text, validated and normalised to JSON
/// number syntax ("12.50", "-0.19", "0.42"): written into the event as numbers, digits kept.
/// An empty string is an absent field.
struct LineItem {
  std::string item_id;
  std::string gtin;
  std::string description;
  std::string quantity;
  std::string unit_price;
  std::string amount;
  std::string discount;
  bool is_return = false;  // an ARTS Return line item
  bool voided = false;     // VoidFlag: the line was cancelled at the till
};

/// One tender. Card numbers, authorisation codes, reference numbers and expiry dates are never
/// read into it, by either reader.
struct Tender {
  std::string type;        // Cash, CreditDebit, ...
  std::string amount;      // decimal text
  std::string card_type;   // Credit, Debit, ...
  std::string card_brand;  // MasterCard, ... (never any digit of the card number)
};

enum class Record { kRetail, kControl };

struct Transaction {
  Record record = Record::kRetail;  // pos.transaction or pos.control
  std::string workstation;          // required
  std::string sequence;             // required
  std::string business_day;         // required, YYYY-MM-DD
  std::optional<int64_t> ended_at_ms;
  std::string currency;
  std::string operator_id;
  std::string kind = "sale";  // retail: sale | return | void
  bool training = false;      // a training-mode transaction
  std::vector<LineItem> lines;
  std::vector<Tender> tenders;
  std::string total_grand;      // decimal text
  std::string total_tax;        // decimal text
  std::string operation;        // control: OperatorSignOn, NoSale, ...
  std::string reason;           // control: its ReasonCode
  std::string loyalty_id;       // -> Event::customer["loyalty_id"]
  std::string email;            // -> Event::customer["email"] (ingest hashes it; never in data)
  std::size_t source_line = 0;  // where it starts in its input, 1-based; 0 = unknown
  std::string source_element;   // its element (XML) or position (JSON), for error reports
};

/// Why an input was refused as a whole, and where.
struct ParseError {
  std::string code;      // invalid, invalid_json, invalid_xml, refused, empty, too_large
  std::string reason;    // one sentence for a person
  std::size_t line = 0;  // 1-based; 0 = unknown
  std::string element;   // XML element path ("Transaction/RetailTransaction/Total") or JSON
                         // field ("[2].lines[0].amount")
};

/// What a reader made of one input: every transaction in it, or an error and none.
struct Parsed {
  std::vector<Transaction> transactions;
  std::optional<ParseError> error;
  std::size_t skipped = 0;      // POSLog transactions of other kinds (tender control, ...): ignored
  std::size_t peak_memory = 0;  // the most the parse's budget counted at once (bytes)
};

/// The event id of `tx`: "<store_id>:<workstation>:<business_day>:<sequence>" when every part
/// is already made of id characters ([A-Za-z0-9._@-], no ':') and the whole fits 128
/// characters: the ids existing buffers remember. Otherwise (a space, an umlaut, a '/', a ':',
/// or too long) "<store_id>:<ws>:<day>:<seq>:<hash>": the parts with every other character
/// replaced by '-' and shortened (a hint for people), then 32 hex digits of a SHA-256 of the
/// exact original fields. Such an id has one ':' more than any clean one, so the two kinds never
/// meet, and the hash keeps transactions apart that differ only in replaced characters. Always
/// 1-128 characters of A-Z a-z 0-9 - _ . : @ (Ingest's rule), given a store id of at most 64
/// such characters (what store.id allows). The same transaction always gets the same id.
/// Thread: any. Never fails.
std::string transactionId(std::string_view store_id, const Transaction& tx);

/// The event of `tx`: type pos.transaction or pos.control, source "pos:<workstation>",
/// occurred_at = ended_at, the deterministic id above, `data` as docs/pos.md shows, the loyalty
/// id and e-mail in `customer`. store_id is left for ingest to fill.
/// Thread: any. Never fails or throws (but std::bad_alloc).
Event toEvent(const Transaction& tx, std::string_view store_id);

/// How much memory a parse may hold besides its input by default (pos.max_parse_memory).
inline constexpr std::size_t kDefaultMaxParseMemory = std::size_t{128} << 20;

/// What one parse may hold in memory besides the input text itself: the XML tree or the JSON
/// values, and the transactions made of them. The parsers charge it as they allocate, so a
/// file of millions of empty elements stops at the limit instead of growing to gigabytes; they
/// then fail with a ParseError "too_large" (error() below) and free what they held.
/// Thread: one parse at a time (not shared).
class ParseBudget {
 public:
  explicit ParseBudget(std::size_t limit) : limit_(limit) {}

  /// Counts `bytes` more. False when that passes the limit; exceeded() stays true from then on
  /// (the bytes are not counted, so used() never passes the limit).
  bool take(std::size_t bytes) {
    if (exceeded_ || bytes > limit_ - used_) {
      exceeded_ = true;
      return false;
    }
    used_ += bytes;
    peak_ = used_ > peak_ ? used_ : peak_;
    return true;
  }
  /// Counts `bytes` freed (at most what was taken).
  void give(std::size_t bytes) { used_ -= bytes < used_ ? bytes : used_; }

  bool exceeded() const { return exceeded_; }
  std::size_t used() const { return used_; }
  std::size_t peak() const { return peak_; }
  std::size_t limit() const { return limit_; }

  /// The error of an exceeded budget: code "too_large", naming the limit.
  ParseError error() const;

 private:
  std::size_t limit_;
  std::size_t used_ = 0;
  std::size_t peak_ = 0;
  bool exceeded_ = false;
};

/// About how many bytes `tx` holds: the struct, its lines and tenders, and strings too long
/// for the small-string buffer. What the parsers charge their budget per transaction.
/// Thread: any.
std::size_t footprint(const Transaction& tx);
/// The same for one line item or tender, as the readers make them.
std::size_t footprint(const LineItem& line);
std::size_t footprint(const Tender& tender);

/// "128 MiB", "64 KiB" or "1000 bytes". Thread: any.
std::string formatBytes(std::size_t bytes);

/// The error of a writer that refused the events made of `transactions` (Error::field
/// "[i].name", Error::message "name why", as Ingest writes them), told in the terms of the
/// transactions: the event field becomes the transaction field it was made of (occurred_at ->
/// ended_at, source -> workstation), and an event refused as a whole (too large: field "[i]")
/// is named by its sequence, workstation and business day. `indexed`: the transactions came as
/// an array, so the element and the reason keep "[i]"; false for a single object (element ""
/// then for a whole event). The code stays the writer's ("invalid", "too_large"); the line is
/// the transaction's source_line. An error that names no event is returned as it is.
/// Thread: any. Never fails.
ParseError explainRefusal(const Error& error, const std::vector<Transaction>& transactions,
                          bool indexed);

/// No control characters (what a text field of a transaction may hold).
bool printable(std::string_view s);

/// RFC 3339, or the same without an offset ("2017-10-01T02:01:31"): POSLog writers often leave
/// it out, and ARTS means UTC then (NCR ACS writes UTC). Unix ms, nullopt when neither.
std::optional<int64_t> parseDateTime(std::string_view value);

/// "YYYY-MM-DD", a real calendar date.
bool isDate(std::string_view value);

/// `text` as a decimal number in JSON syntax ("+012.50" -> "12.50", ".5" -> "0.5"), or nullopt
/// when it is not one ("12,50", "1e3", "", more than 30 digits). Thread: any.
std::optional<std::string> normaliseDecimal(std::string_view text);

/// A loyalty id as the other channels write it: trimmed; an all-digit id loses the leading
/// zeros POS systems pad it with ("0000000000000040000066677" -> "40000066677"); empty when
/// nothing is left (all zeros: no member). Thread: any.
std::string normaliseLoyaltyId(std::string_view text);

/// The leading and trailing whitespace of `text` removed. Thread: any.
std::string_view trimSpace(std::string_view text);

/// `text` made safe to show a person (a .error file, a log line, `omniedge status`): bytes that
/// are not well-formed UTF-8 and control characters become U+FFFD, and text over `max_bytes`
/// is cut (on a character boundary) and ends in "...". An element name from a file of random
/// bytes is then still valid JSON for the status, and short. Thread: any.
std::string forPeople(std::string_view text, std::size_t max_bytes = 300);

/// A ParseError as the text of a `<name>.error` file and of log lines:
/// "why: ...\nline: N\nelement: E\n" (line and element only when known), each through
/// forPeople(). Thread: any.
std::string describe(const ParseError& error);

}  // namespace omniedge::pos
