// POS event ids: clean ones as they always were, the others injective and always valid.
#include <catch2/catch.hpp>
#include <set>
#include <string>
#include <vector>

#include "drivers/pos/transaction.h"

namespace omniedge::pos {
namespace {

// Ingest's id rule (agent/ingest/ingest.cpp): 1-128 characters of A-Z a-z 0-9 - _ . : @.
bool passesIngestIdRule(const std::string& id) {
  if (id.empty() || id.size() > 128) {
    return false;
  }
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.' || c == ':' || c == '@';
    if (!ok) {
      return false;
    }
  }
  return true;
}

Transaction tx(std::string workstation, std::string sequence,
               std::string business_day = "2026-11-22") {
  Transaction t;
  t.workstation = std::move(workstation);
  t.sequence = std::move(sequence);
  t.business_day = std::move(business_day);
  return t;
}

TEST_CASE("clean POS ids are unchanged, so existing buffers still recognise them", "[unit][pos]") {
  CHECK(transactionId("store-042", tx("31", "4711")) == "store-042:31:2026-11-22:4711");
  CHECK(transactionId("store-042", tx("K-2.3_a@b", "0815")) ==
        "store-042:K-2.3_a@b:2026-11-22:0815");
  CHECK(transactionId("store-042", tx("12-3", "1")) == "store-042:12-3:2026-11-22:1");
  // The longest clean id that fits stays clean too.
  const std::string ws(128 - std::string("store-042:").size() - 13, 'w');
  const std::string fits = transactionId("store-042", tx(ws, "1"));
  CHECK(fits == "store-042:" + ws + ":2026-11-22:1");
  CHECK(fits.size() == 128);
}

TEST_CASE("transactions that sanitising would merge keep apart ids", "[unit][pos]") {
  // Each pair used to give one id: the second sale was dropped as a duplicate of the first.
  struct Pair {
    Transaction a;
    Transaction b;
  };
  const Pair pair =
      GENERATE(Pair{tx("Kasse \xC3\x84"
                       "1",
                       "1"),
                    tx("Kasse \xC3\x96"
                       "1",
                       "1")},
               Pair{tx("1", "12/3"), tx("1", "12-3")},     // one clean, one not
               Pair{tx("a:b", "c"), tx("a", "b:c")},       // the separator inside a field
               Pair{tx("1", "7 "), tx("1", "7\t")},        // invisible differences
               Pair{tx("ws 1", "1"), tx("ws-1:1", "1")});  // a hint that looks like another
  const std::string a = transactionId("store-042", pair.a);
  const std::string b = transactionId("store-042", pair.b);
  INFO(a << " / " << b);
  CHECK(a != b);
  CHECK(passesIngestIdRule(a));
  CHECK(passesIngestIdRule(b));
  CHECK(transactionId("store-042", pair.a) == a);  // deterministic
}

TEST_CASE("an id that had to be changed carries a hint and a SHA-256 of the exact fields",
          "[unit][pos]") {
  // The hash is the first 128 bits of SHA-256 over "<length>:<field>" for store, workstation,
  // business day and sequence, e.g. python3:
  //   hashlib.sha256(b"9:store-0429:Kasse \xc3\x84" b"110:2026-11-221:1").hexdigest()[:32]
  CHECK(transactionId("store-042", tx("Kasse \xC3\x84"
                                      "1",
                                      "1")) ==
        "store-042:Kasse---1:2026-11-22:1:1812b8ee11ba38e590b1f4168a9bc776");
  CHECK(transactionId("store-042", tx("1", "12/3")) ==
        "store-042:1:2026-11-22:12-3:97c8f81b09c5351bedd40bbae154c303");
}

TEST_CASE("over-long fields give ids of at most 128 characters that Ingest accepts",
          "[unit][pos]") {
  const std::vector<Transaction> cases = {
      tx(std::string(200, 'x'), "1"),
      tx("1", std::string(300, '9')),
      tx(std::string(150, 'x'), std::string(150, 'y')),
      tx(std::string(100, '\xC3'), std::string(100, ':')),
      tx("1", "1", std::string(200, 'd')),  // a business day no reader lets through, still safe
  };
  std::set<std::string> ids;
  for (const std::string& store : {std::string("store-042"), std::string(64, 's')}) {
    for (const Transaction& t : cases) {
      const std::string id = transactionId(store, t);
      INFO(id);
      CHECK(passesIngestIdRule(id));
      CHECK(id.rfind(store + ":", 0) == 0);
      ids.insert(id);
      // One character more or less at the end is another transaction, and another id.
      Transaction other = t;
      other.sequence += "0";
      CHECK(transactionId(store, other) != id);
      // The event's source (pos:<workstation>) is within Ingest's 128 characters too.
      CHECK(toEvent(t, store).source.size() <= 128);
    }
  }
  CHECK(ids.size() == 2 * cases.size());
}

TEST_CASE("awkward fields never give two transactions one id", "[unit][pos]") {
  const std::vector<std::string> parts = {"1",
                                          "1 ",
                                          "1-",
                                          "1/",
                                          "1:",
                                          "-1",
                                          ":1",
                                          "\xC3\x84",
                                          "-",
                                          "--",
                                          "a:b",
                                          "a-b",
                                          "a b",
                                          "a/b",
                                          "@",
                                          "12/3",
                                          "12-3",
                                          "12:3",
                                          "Kasse 1",
                                          "Kasse-1",
                                          "\t",
                                          std::string(129, 'x'),
                                          std::string(130, 'x')};
  std::set<std::string> ids;
  std::size_t made = 0;
  for (const std::string& ws : parts) {
    for (const std::string& seq : parts) {
      const std::string id = transactionId("store-042", tx(ws, seq));
      CHECK(passesIngestIdRule(id));
      ids.insert(id);
      ++made;
    }
  }
  CHECK(ids.size() == made);
}

}  // namespace
}  // namespace omniedge::pos
