#include "agent/pii.h"

#include <catch2/catch.hpp>
#include <thread>

#include "agent/api/uuid.h"

using omniedge::PiiHasher;

TEST_CASE("e-mail addresses are trimmed and lower-cased", "[unit][pii]") {
  CHECK(*PiiHasher::normaliseEmail(" Jane.Doe@Example.com\n") == "jane.doe@example.com");
  CHECK_FALSE(PiiHasher::normaliseEmail("jane").has_value());
  CHECK_FALSE(PiiHasher::normaliseEmail("@example.com").has_value());
  CHECK_FALSE(PiiHasher::normaliseEmail("a@b@c.com").has_value());
  CHECK_FALSE(PiiHasher::normaliseEmail("jane doe@example.com").has_value());
}

TEST_CASE("phone numbers are normalised to E.164", "[unit][pii]") {
  PiiHasher de("", "49");
  CHECK(*de.normalisePhone("+49 (30) 1234-5678") == "+493012345678");
  CHECK(*de.normalisePhone("0049 30 12345678") == "+493012345678");
  CHECK(*de.normalisePhone("030 12345678") == "+493012345678");
  CHECK_FALSE(de.normalisePhone("call me").has_value());
  CHECK_FALSE(de.normalisePhone("+12").has_value());
  PiiHasher none("", "");
  CHECK_FALSE(none.normalisePhone("030 12345678").has_value());
  CHECK(*none.normalisePhone("+1 415 555 0100") == "+14155550100");
}

TEST_CASE("hashes are HMAC-SHA256 with the tenant key, SHA-256 without", "[unit][pii]") {
  // RFC 4231 test case 2.
  PiiHasher keyed("Jefe", "");
  CHECK(keyed.hash("what do ya want for nothing?") ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  PiiHasher plain("", "");
  CHECK(plain.hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK_FALSE(plain.keyed());
}

TEST_CASE("a UUIDv7 starts with its 48-bit millisecond timestamp", "[unit][uuid]") {
  std::string fixed;
  std::thread([&] { fixed = omniedge::makeUuidV7(0x0192f3b47c1e); }).join();  // fresh thread state
  CHECK(fixed.substr(0, 13) == "0192f3b4-7c1e");
}

TEST_CASE("UUIDv7 ids are well formed and ordered", "[unit][uuid]") {
  std::string prev;
  for (int i = 0; i < 5000; ++i) {
    const auto id = omniedge::makeUuidV7(1795000000000 + i / 100);
    REQUIRE(omniedge::isUuid(id));
    CHECK(id[14] == '7');
    CHECK((id[19] == '8' || id[19] == '9' || id[19] == 'a' || id[19] == 'b'));
    REQUIRE(id > prev);
    prev = id;
  }
}
