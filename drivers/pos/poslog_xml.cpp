#include "drivers/pos/poslog_xml.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <pugixml.hpp>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/api/time.h"

namespace omniedge::pos {
namespace {

constexpr std::size_t kMaxIdentityLength = 128;
constexpr std::size_t kMaxEmailLength = 254;

// Vendor spellings of a loyalty card / account id, matched by local name (NCR ACS writes
// acs:LoyaltyMembership/acs:LoyaltyID; ARTS has LoyaltyAccount/LoyaltyAccountID).
constexpr std::array<std::string_view, 6> kLoyaltyNames = {"LoyaltyID",     "LoyaltyAccountID",
                                                           "LoyaltyCardID", "LoyaltyCardNumber",
                                                           "LoyaltyNumber", "LoyaltyAccount"};
constexpr std::array<std::string_view, 4> kEmailNames = {"EMailAddress", "EmailAddress", "EMail",
                                                         "Email"};
// A suspended transaction is completed later in another one (TransactionLink "Resume"):
// counting it as a sale too would count its items twice.
constexpr std::array<std::string_view, 6> kVoidStatuses = {"voided",   "void",    "cancelled",
                                                           "canceled", "aborted", "suspended"};

// pugixml allocates through one process-wide pair of functions. Ours charge the budget of the
// parse running on the calling thread (none: no limit), so a document of millions of empty
// elements fails with status_out_of_memory at the budget instead of taking gigabytes. The
// budget is thread_local, so concurrent parses on other threads neither see nor disturb it.
// These functions are malloc/free, exactly pugixml's defaults, so memory allocated before they
// were installed is freed correctly after. This file is pugixml's only user in the process,
// and installs them (once, thread-safely) before its first parse.
thread_local ParseBudget* t_budget = nullptr;

void* budgetedAllocate(std::size_t size) {
  if (t_budget != nullptr && !t_budget->take(size)) {
    return nullptr;  // pugixml turns this into status_out_of_memory and unwinds cleanly
  }
  return std::malloc(size);  // NOLINT(cppcoreguidelines-no-malloc): pugixml's contract
}

void budgetedDeallocate(void* p) {
  std::free(p);  // NOLINT(cppcoreguidelines-no-malloc)
}

void installBudgetedAllocator() {
  static const bool installed = [] {
    pugi::set_memory_management_functions(budgetedAllocate, budgetedDeallocate);
    return true;
  }();
  (void)installed;
}

// Sets the calling thread's budget for pugixml for one scope.
class BudgetScope {
 public:
  explicit BudgetScope(ParseBudget& budget) : previous_(t_budget) { t_budget = &budget; }
  ~BudgetScope() { t_budget = previous_; }
  BudgetScope(const BudgetScope&) = delete;
  BudgetScope& operator=(const BudgetScope&) = delete;

 private:
  ParseBudget* previous_;
};

// Line numbers of byte offsets. The parse works in place and overwrites bytes (a '\n' after a
// name becomes the name's terminator), so the newlines are recorded before it: one bit per
// byte, and a count per 512 bytes, about 1/7 of the text (a vector of every newline's offset
// would take 8 bytes per line: 512 MiB for 64 MiB of blank lines).
class LineIndex {
 public:
  // False when the budget cannot hold the index.
  bool build(std::string_view text, ParseBudget& budget) {
    const std::size_t words = text.size() / 64 + 1;
    const std::size_t blocks = words / kWordsPerBlock + 1;
    if (!budget.take(words * sizeof(uint64_t) + blocks * sizeof(uint64_t))) {
      return false;
    }
    words_.assign(words, 0);
    const char* begin = text.data();
    const char* end = begin + text.size();
    for (const char* p = begin; (p = static_cast<const char*>(std::memchr(p, '\n', end - p)));
         ++p) {
      const auto at = static_cast<std::size_t>(p - begin);
      words_[at / 64] |= uint64_t{1} << (at % 64);
    }
    blocks_.assign(blocks, 0);
    uint64_t count = 0;
    for (std::size_t w = 0; w < words; ++w) {
      if (w % kWordsPerBlock == 0) {
        blocks_[w / kWordsPerBlock] = count;
      }
      count += static_cast<uint64_t>(std::popcount(words_[w]));
    }
    return true;
  }

  // 1-based line of a byte offset into the original text; 0 when unknown.
  std::size_t lineAt(std::ptrdiff_t offset) const {
    if (offset < 0 || words_.empty()) {
      return 0;
    }
    const auto at = std::min(static_cast<std::size_t>(offset), words_.size() * 64 - 1);
    const std::size_t word = at / 64;
    uint64_t count = blocks_[word / kWordsPerBlock];
    for (std::size_t w = word - word % kWordsPerBlock; w < word; ++w) {
      count += static_cast<uint64_t>(std::popcount(words_[w]));
    }
    const uint64_t below = at % 64 == 0 ? 0 : words_[word] & ((uint64_t{1} << (at % 64)) - 1);
    return static_cast<std::size_t>(count + static_cast<uint64_t>(std::popcount(below))) + 1;
  }

 private:
  static constexpr std::size_t kWordsPerBlock = 8;
  std::vector<uint64_t> words_;   // bit i: byte i is '\n'
  std::vector<uint64_t> blocks_;  // newlines before each block of kWordsPerBlock words
};

std::string_view localName(std::string_view name) {
  const std::size_t colon = name.rfind(':');
  return colon == std::string_view::npos ? name : name.substr(colon + 1);
}

bool isElement(pugi::xml_node node) { return node.type() == pugi::node_element; }

pugi::xml_node child(pugi::xml_node parent, std::string_view local) {
  for (pugi::xml_node c = parent.first_child(); c; c = c.next_sibling()) {
    if (isElement(c) && localName(c.name()) == local) {
      return c;
    }
  }
  return {};
}

pugi::xml_attribute attribute(pugi::xml_node node, std::string_view local) {
  for (pugi::xml_attribute a = node.first_attribute(); a; a = a.next_attribute()) {
    if (localName(a.name()) == local) {
      return a;
    }
  }
  return {};
}

std::string_view text(pugi::xml_node node) { return trimSpace(node.child_value()); }

bool hasElementChild(pugi::xml_node node) {
  for (pugi::xml_node c = node.first_child(); c; c = c.next_sibling()) {
    if (isElement(c)) {
      return true;
    }
  }
  return false;
}

bool isTrue(std::string_view value) {
  value = trimSpace(value);
  return value == "true" || value == "1";
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x | 0x20) == (y | 0x20);
         });
}

bool startsWithIgnoreCase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && equalsIgnoreCase(text.substr(0, prefix.size()), prefix);
}

class Reader {
 public:
  Reader(std::string& xml, ParseBudget& budget) : xml_(xml), budget_(budget) {}

  Parsed run() {
    Parsed parsed;
    if (trimSpace(xml_).empty()) {
      parsed.error = ParseError{"empty", "the file is empty", 0, {}};
      return parsed;
    }
    if (!lines_.build(xml_, budget_)) {
      parsed.error = budget_.error();
      return parsed;
    }
    // pugixml never expands external entities, but a POSLog has no use for a DTD, and refusing
    // one outright keeps every XXE and entity-expansion variant out for good.
    for (std::string_view marker : {"<!DOCTYPE", "<!ENTITY"}) {
      const std::size_t at = xml_.find(marker);
      if (at != std::string::npos) {
        parsed.error =
            ParseError{"refused",
                       "DOCTYPE and ENTITY declarations are refused (they can pull in "
                       "external entities); a POSLog needs neither",
                       lineAt(static_cast<std::ptrdiff_t>(at)), std::string(marker.substr(1))};
        return parsed;
      }
    }

    installBudgetedAllocator();
    const BudgetScope scope(budget_);
    pugi::xml_document doc;
    const pugi::xml_parse_result result = doc.load_buffer_inplace(
        xml_.data(), xml_.size(), pugi::parse_default | pugi::parse_embed_pcdata,
        pugi::encoding_auto);
    if (!result && budget_.exceeded()) {
      parsed.error = budget_.error();
      parsed.error->line = lineAt(result.offset);
      return parsed;
    }
    if (!result) {
      ParseError error{"invalid_xml",
                       std::string("malformed XML: ") + result.description(),
                       lineAt(result.offset),
                       {}};
      pugi::xml_node last = doc;
      for (pugi::xml_node c = last.last_child(); c; c = last.last_child()) {
        if (!isElement(c)) {
          break;
        }
        last = c;
      }
      if (last != doc) {
        error.element = "near " + path(last);
      }
      parsed.error = std::move(error);
      return parsed;
    }

    const pugi::xml_node root = doc.document_element();
    if (!root) {
      parsed.error = ParseError{"invalid_xml", "the document has no root element", 1, {}};
      return parsed;
    }
    const std::string_view root_name = localName(root.name());
    if (root_name == "Transaction") {
      readTransaction(root, parsed);
    } else if (root_name == "POSLog") {
      for (pugi::xml_node c = root.first_child(); c && !error_; c = c.next_sibling()) {
        if (isElement(c) && localName(c.name()) == "Transaction") {
          readTransaction(c, parsed);
        }
      }
    } else {
      fail(root, "the root element is " + std::string(root.name()) + ", not POSLog");
    }
    if (error_) {
      parsed.transactions.clear();
      parsed.error = std::move(error_);
    }
    return parsed;
  }

 private:
  std::size_t lineAt(std::ptrdiff_t offset) const { return lines_.lineAt(offset); }

  std::size_t lineOf(pugi::xml_node node) const { return lineAt(node.offset_debug()); }

  // "Transaction/RetailTransaction/LineItem/Sale/ExtendedAmount": local names from the one below
  // the root, which every element of a POSLog shares.
  static std::string path(pugi::xml_node node) {
    std::vector<std::string_view> names;
    for (pugi::xml_node n = node; n && isElement(n); n = n.parent()) {
      names.push_back(localName(n.name()));
    }
    if (names.size() > 1) {
      names.pop_back();
    }
    std::string out;
    for (auto it = names.rbegin(); it != names.rend(); ++it) {
      if (!out.empty()) {
        out.push_back('/');
      }
      out += *it;
    }
    return out;
  }

  // The first failure wins; readers stop at the next check of error_.
  void fail(pugi::xml_node at, std::string reason, std::string element = {}) {
    if (!error_) {
      error_ = ParseError{"invalid", std::move(reason), lineOf(at),
                          element.empty() ? path(at) : std::move(element)};
    }
  }

  // Charges the budget for what the mapping makes; false (and the document fails) when over.
  bool charge(std::size_t bytes) {
    if (budget_.take(bytes)) {
      return true;
    }
    if (!error_) {
      error_ = budget_.error();
    }
    return false;
  }

  // A decimal child's normalised text; "" when absent or empty; fails the document when the
  // text is not a decimal number.
  std::string decimal(pugi::xml_node node) {
    if (!node) {
      return {};
    }
    const std::string_view value = text(node);
    if (value.empty()) {
      return {};
    }
    if (auto normal = normaliseDecimal(value)) {
      return std::move(*normal);
    }
    fail(node, std::string(localName(node.name())) + " \"" + std::string(value.substr(0, 40)) +
                   "\" is not a decimal amount (like 12.50)");
    return {};
  }

  // A line or tender of the transaction being read, charged as it is made (a file of a million
  // empty Sale elements must stop at the budget, not after making them all).
  bool chargePart(std::size_t bytes) {
    if (!charge(bytes)) {
      return false;
    }
    charged_parts_ += bytes;
    return true;
  }

  std::string decimalChild(pugi::xml_node parent, std::string_view local) {
    return decimal(child(parent, local));
  }

  void readTransaction(pugi::xml_node node, Parsed& parsed) {
    const pugi::xml_node retail = child(node, "RetailTransaction");
    const pugi::xml_node control = child(node, "ControlTransaction");
    if (!retail && !control) {
      ++parsed.skipped;
      return;
    }
    Transaction tx;
    tx.record = retail ? Record::kRetail : Record::kControl;
    tx.source_line = lineOf(node);
    tx.source_element = path(node);
    readHeader(node, tx);
    if (retail) {
      readRetail(node, retail, tx);
    } else {
      readControl(control, tx);
    }
    readIdentity(node, tx);
    if (!error_ && charge(footprint(tx) - charged_parts_)) {
      parsed.transactions.push_back(std::move(tx));
    }
    charged_parts_ = 0;
  }

  void readHeader(pugi::xml_node node, Transaction& tx) {
    tx.workstation = text(child(node, "WorkstationID"));
    if (tx.workstation.empty()) {
      fail(node, "the transaction has no WorkstationID", path(node) + "/WorkstationID");
      return;
    }
    tx.sequence = text(child(node, "SequenceNumber"));
    if (tx.sequence.empty()) {
      fail(node, "the transaction has no SequenceNumber", path(node) + "/SequenceNumber");
      return;
    }
    pugi::xml_node ended = child(node, "EndDateTime");
    if (!ended || text(ended).empty()) {
      ended = child(node, "BeginDateTime");
    }
    if (ended && !text(ended).empty()) {
      tx.ended_at_ms = parseDateTime(text(ended));
      if (!tx.ended_at_ms) {
        fail(ended, std::string(localName(ended.name())) + " \"" +
                        std::string(text(ended).substr(0, 40)) + "\" is not a date-time");
        return;
      }
    }
    const pugi::xml_node day = child(node, "BusinessDayDate");
    tx.business_day = text(day);
    if (tx.business_day.empty() && tx.ended_at_ms) {
      tx.business_day = formatRfc3339Ms(*tx.ended_at_ms).substr(0, 10);
    }
    if (tx.business_day.empty()) {
      fail(node, "the transaction has no BusinessDayDate (nor an EndDateTime to take it from)",
           path(node) + "/BusinessDayDate");
      return;
    }
    if (day && !isDate(tx.business_day)) {
      fail(day,
           "BusinessDayDate \"" + tx.business_day.substr(0, 40) + "\" is not a YYYY-MM-DD date");
      return;
    }
    tx.currency = text(child(node, "CurrencyCode"));
    tx.operator_id = text(child(node, "OperatorID"));
    tx.training = isTrue(attribute(node, "TrainingModeFlag").value());
  }

  static bool isVoidStatus(std::string_view status) {
    status = localName(trimSpace(status));
    return std::any_of(kVoidStatuses.begin(), kVoidStatuses.end(),
                       [&](std::string_view v) { return equalsIgnoreCase(status, v); });
  }

  void readRetail(pugi::xml_node node, pugi::xml_node retail, Transaction& tx) {
    bool voided = isTrue(attribute(node, "CancelFlag").value()) ||
                  isTrue(attribute(node, "VoidFlag").value()) ||
                  isTrue(attribute(retail, "CancelFlag").value()) ||
                  isVoidStatus(attribute(node, "TransactionStatus").value()) ||
                  isVoidStatus(attribute(retail, "TransactionStatus").value()) ||
                  isVoidStatus(text(child(retail, "TransactionStatus")));
    for (pugi::xml_node c = retail.first_child(); c && !error_; c = c.next_sibling()) {
      if (!isElement(c)) {
        continue;
      }
      const std::string_view name = localName(c.name());
      if (name == "LineItem") {
        readLineItem(c, tx);
      } else if (name == "Total") {
        const std::string_view type = localName(trimSpace(attribute(c, "TotalType").value()));
        if (type == "TransactionGrandAmount") {
          tx.total_grand = decimal(c);
        } else if (type == "TransactionTaxAmount") {
          tx.total_tax = decimal(c);
        }
      }
    }
    const bool any_return = std::any_of(tx.lines.begin(), tx.lines.end(),
                                        [](const LineItem& l) { return l.is_return && !l.voided; });
    tx.kind = voided ? "void" : any_return ? "return" : "sale";
  }

  void readLineItem(pugi::xml_node item, Transaction& tx) {
    const bool voided = isTrue(attribute(item, "VoidFlag").value());
    for (pugi::xml_node c = item.first_child(); c && !error_; c = c.next_sibling()) {
      if (!isElement(c)) {
        continue;
      }
      const std::string_view name = localName(c.name());
      if (name == "Sale" || name == "Return") {
        LineItem line = readItem(c);
        line.is_return = name == "Return";
        line.voided = voided;
        if (!chargePart(footprint(line))) {
          return;
        }
        tx.lines.push_back(std::move(line));
      } else if (name == "Tender") {
        // Only what says how the customer paid: never PrimaryAccountNumber, Authorization
        // (codes, reference numbers), ExpirationDate or anything else of the card.
        Tender tender;
        tender.type = trimSpace(attribute(c, "TenderType").value());
        tender.amount = decimalChild(c, "Amount");
        if (const pugi::xml_node card = child(c, "CreditDebit")) {
          tender.card_type = trimSpace(attribute(card, "CardType").value());
          tender.card_brand = trimSpace(attribute(card, "CreditDescription").value());
        }
        if (!chargePart(footprint(tender))) {
          return;
        }
        tx.tenders.push_back(std::move(tender));
      }
    }
  }

  LineItem readItem(pugi::xml_node item) {
    LineItem line;
    line.item_id = text(child(item, "ItemID"));
    for (pugi::xml_node c = item.first_child(); c; c = c.next_sibling()) {
      if (isElement(c) && localName(c.name()) == "POSIdentity") {
        const std::string_view type = trimSpace(attribute(c, "POSIDType").value());
        if (startsWithIgnoreCase(type, "GTIN") || startsWithIgnoreCase(type, "UPC") ||
            startsWithIgnoreCase(type, "EAN")) {
          line.gtin = text(child(c, "POSItemID"));
          break;
        }
      }
    }
    if (line.item_id.empty()) {
      line.item_id = text(child(child(item, "POSIdentity"), "POSItemID"));
    }
    line.description = text(child(item, "Description"));
    line.quantity = decimalChild(item, "Quantity");
    line.unit_price = decimalChild(item, "ActualSalesUnitPrice");
    if (line.unit_price.empty()) {
      line.unit_price = decimalChild(item, "RegularSalesUnitPrice");
    }
    line.amount = decimalChild(item, "ExtendedAmount");
    line.discount = decimalChild(item, "ExtendedDiscountAmount");
    if (line.discount.empty()) {
      line.discount = decimalChild(item, "DiscountAmount");
    }
    return line;
  }

  static void readControl(pugi::xml_node control, Transaction& tx) {
    for (pugi::xml_node c = control.first_child(); c; c = c.next_sibling()) {
      if (!isElement(c)) {
        continue;
      }
      const std::string_view name = localName(c.name());
      if (name == "ReasonCode") {
        tx.reason = text(c);
      } else if (tx.operation.empty()) {
        tx.operation = name;
      }
    }
  }

  // Loyalty id and e-mail, wherever in the transaction the vendor put them.
  void readIdentity(pugi::xml_node node, Transaction& tx) {
    pugi::xml_node loyalty;
    pugi::xml_node customer_id;
    pugi::xml_node email;
    for (pugi::xml_node n = node.first_child(); n && n != node;) {
      if (isElement(n) && !hasElementChild(n)) {
        const std::string_view name = localName(n.name());
        const auto named = [&](const auto& names) {
          return std::find(names.begin(), names.end(), name) != names.end();
        };
        if (!loyalty && named(kLoyaltyNames) && !normaliseLoyaltyId(text(n)).empty()) {
          loyalty = n;
        } else if (!customer_id && name == "CustomerID" && !normaliseLoyaltyId(text(n)).empty()) {
          customer_id = n;
        } else if (!email && named(kEmailNames) && !text(n).empty()) {
          email = n;
        }
      }
      // Pre-order walk without recursion: deep documents cannot exhaust the stack.
      if (n.first_child()) {
        n = n.first_child();
        continue;
      }
      while (n != node && !n.next_sibling()) {
        n = n.parent();
      }
      if (n == node) {
        break;
      }
      n = n.next_sibling();
    }
    if (!loyalty) {
      loyalty = customer_id;
    }
    if (loyalty) {
      tx.loyalty_id = normaliseLoyaltyId(text(loyalty));
      if (tx.loyalty_id.size() > kMaxIdentityLength || !printable(tx.loyalty_id)) {
        fail(loyalty, "the loyalty id is longer than 128 characters or not printable");
      }
    }
    if (email) {
      tx.email = text(email);
      if (tx.email.size() > kMaxEmailLength || !printable(tx.email)) {
        fail(email, "the e-mail address is longer than 254 characters or not printable");
      }
    }
  }

  std::string& xml_;
  ParseBudget& budget_;
  LineIndex lines_;
  std::size_t charged_parts_ = 0;  // of the transaction being read: its lines and tenders
  std::optional<ParseError> error_;
};

}  // namespace

Parsed parsePosLog(std::string xml, std::size_t max_memory) {
  ParseBudget budget(max_memory);
  Reader reader(xml, budget);
  Parsed parsed = reader.run();
  parsed.peak_memory = budget.peak();
  return parsed;
}

}  // namespace omniedge::pos
