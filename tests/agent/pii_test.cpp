#include "agent/ingest/pii.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/api/uuid.h"
#include "tests/support/temp_dir.h"

using omniedge::PiiHasher;

TEST_CASE("e-mail addresses are trimmed and lower-cased", "[unit][pii]") {
  CHECK(*PiiHasher::normaliseEmail(" Jane.Doe@Example.com\n") == "jane.doe@example.com");
  CHECK_FALSE(PiiHasher::normaliseEmail("jane").has_value());
  CHECK_FALSE(PiiHasher::normaliseEmail("@example.com").has_value());
  CHECK_FALSE(PiiHasher::normaliseEmail("a@b@c.com").has_value());
  CHECK_FALSE(PiiHasher::normaliseEmail("jane doe@example.com").has_value());
}

TEST_CASE("phone numbers are normalised to E.164 by libphonenumber", "[unit][pii]") {
  PiiHasher de("", "DE");
  CHECK(*de.normalisePhone("+49 (30) 1234-5678") == "+493012345678");
  CHECK(*de.normalisePhone("0049 30 12345678") == "+493012345678");
  CHECK(*de.normalisePhone("030 12345678") == "+493012345678");
  CHECK_FALSE(de.normalisePhone("call me").has_value());
  CHECK_FALSE(de.normalisePhone("+12").has_value());
  PiiHasher none("", "");
  auto national = none.normalisePhone("030 12345678");
  REQUIRE_FALSE(national.has_value());
  CHECK(national.error().message.find("identity.default_region") != std::string::npos);
  CHECK(*none.normalisePhone("+1 415 555 0100") == "+14155550100");
}

TEST_CASE("an Italian number keeps its leading 0, as the centre hashes it", "[unit][pii]") {
  // Italy dials the 0 of its area codes after the country code: +39 06 is Rome. A hand-written
  // "drop the trunk 0" rule turns it into +396..., a different hash from the centre's.
  PiiHasher it("", "IT");
  CHECK(*it.normalisePhone("+39 06 1234 5678") == "+390612345678");
  CHECK(*it.normalisePhone("06 1234 5678") == "+390612345678");
  PiiHasher gb("", "GB");
  CHECK(*gb.normalisePhone("020 7946 0958") == "+442079460958");
}

TEST_CASE("a calling code names its region, for the older identity.default_country_code",
          "[unit][pii]") {
  CHECK(PiiHasher::regionForCallingCode("44") == "GB");
  CHECK(PiiHasher::regionForCallingCode("+39") == "IT");
  CHECK(PiiHasher::regionForCallingCode("999").empty());
  CHECK(PiiHasher::regionForCallingCode("x").empty());
}

TEST_CASE("a key file written on Windows leaves no carriage return in the key", "[unit][pii]") {
  omniedge::testing::TempDir dir;
  dir.write("unix.key", "tenant-secret-key-0123456789\n");
  dir.write("windows.key", "tenant-secret-key-0123456789\r\n");
  auto unix_key = PiiHasher::readKeyFile((dir / "unix.key").string());
  auto windows_key = PiiHasher::readKeyFile((dir / "windows.key").string());
  REQUIRE(unix_key.has_value());
  REQUIRE(windows_key.has_value());
  CHECK(*windows_key == "tenant-secret-key-0123456789");
  CHECK(*windows_key == *unix_key);
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

namespace {

// What scrubData makes of `data` under `policy`; the error's field when it refuses.
std::string scrub(const PiiHasher& h, std::string data) {
  auto r = h.scrubData(data);
  return r ? data : "error " + r.error().field + ": " + r.error().message;
}

}  // namespace

TEST_CASE("e-mail addresses and phone numbers in data are replaced by their keyed hash",
          "[unit][pii]") {
  PiiHasher h("0123456789abcdef-tenant-key", "GB");
  const std::string email_hash = h.hash("jane@example.com");
  const std::string phone_hash = h.hash("+442079460958");

  SECTION("a member that is an address is renamed and hashed") {
    auto out = nlohmann::json::parse(
        scrub(h, R"({"email":" Jane@Example.com ","contact":"jane@example.com","n":1})"));
    CHECK(out["email_sha256"] == email_hash);
    CHECK(out["contact_email_sha256"] == email_hash);
    CHECK_FALSE(out.contains("email"));
    CHECK(out["n"] == 1);
  }
  SECTION("phone members, national or international, nested in objects and arrays") {
    auto out = nlohmann::json::parse(scrub(
        h,
        R"({"customer":{"phone":"020 7946 0958","alt":["+44 20 7946 0958"]},"mobile_no":"n/a"})"));
    CHECK(out["customer"]["phone_sha256"] == phone_hash);
    CHECK(out["customer"]["alt"][0] == "phone_sha256:" + phone_hash);
    CHECK(out["mobile_no"] == "n/a");  // not a number: left as it is
  }
  SECTION("inside free text only the address and the number are replaced") {
    auto out = nlohmann::json::parse(
        scrub(h, R"({"note":"call +44 20 7946 0958 or mail jane@example.com, thanks"})"));
    CHECK(out["note"] ==
          "call phone_sha256:" + phone_hash + " or mail email_sha256:" + email_hash + ", thanks");
  }
  SECTION("item numbers, GTINs, prices and dates are not phone numbers") {
    const std::string data =
        R"({"gtin":"04006381333931","loyalty":"40000066677","price":19.99,)"
        R"("at":"2026-11-22T13:32:42Z","sku":"SKU-1","screen":"hotel offers"})";
    CHECK(scrub(h, data) == data);
  }
  SECTION("phone-like keys in any case find a national number without a '+'") {
    for (const char* key : {"MSISDN", "Customer_TEL", "FAX", "MobilePhone", "tel"}) {
      auto out = nlohmann::json::parse(
          scrub(h, std::string(R"({")") + key + R"(":"020 7946 0958","n":1})"));
      INFO(key << " -> " << out.dump());
      bool hashed = false;  // renamed KEY_phone_sha256, or KEY_sha256 when KEY says phone
      for (const auto& [name, value] : out.items()) {
        hashed =
            hashed || (name.starts_with(key) && name.ends_with("_sha256") && value == phone_hash);
      }
      CHECK(hashed);
      CHECK_FALSE(out.contains(key));
      CHECK(out["n"] == 1);
    }
  }
  SECTION("escaped strings are read as JSON reads them") {
    auto out = nlohmann::json::parse(scrub(h, R"({"e":"jane\u0040example.com","q":"a\"b"})"));
    CHECK(out["e_email_sha256"] == email_hash);
    CHECK(out["q"] == "a\"b");
  }
}

TEST_CASE("identity.data_pii=reject refuses the event naming the field, off leaves it",
          "[unit][pii]") {
  PiiHasher reject("0123456789abcdef-tenant-key", "GB", omniedge::DataPiiPolicy::kReject);
  CHECK(scrub(reject, R"({"a":{"b":[1,{"c":"x jane@example.com"}]}})") ==
        "error data.a.b[1].c: contains an e-mail address; raw personal data is not accepted "
        "(identity.data_pii=reject)");
  CHECK(scrub(reject, R"({"tel":"+44 20 7946 0958"})").rfind("error data.tel:", 0) == 0);
  PiiHasher off("0123456789abcdef-tenant-key", "GB", omniedge::DataPiiPolicy::kOff);
  CHECK(scrub(off, R"({"email":"jane@example.com"})") == R"({"email":"jane@example.com"})");
}

TEST_CASE("the quick pre-check finds a phone-like name or a sign at every offset, in any case",
          "[unit][pii]") {
  // Every offset and length around the 16-byte steps of the vector scan and its byte-wise tail.
  const std::vector<std::string> found = {"phone", "PHONE", "Mobile", "msIsdn", "tel",
                                          "TEL",   "Fax",   "@",      "+",      "\\u0040"};
  const std::vector<std::string> missed = {"ph0ne", "mob1le", "msis", "te", "fa",
                                           "pho",   "mo",     "ms",   "ph", "t3l"};
  for (std::size_t before = 0; before < 40; ++before) {
    for (std::size_t after = 0; after < 20; after += 3) {
      const std::string pad_before(before, 'x');
      const std::string pad_after(after, 'y');
      for (const auto& w : found) {
        INFO("'" << w << "' after " << before << " and before " << after << " bytes");
        CHECK(omniedge::mayHoldPii(pad_before + w + pad_after));
      }
      for (const auto& w : missed) {
        INFO("'" << w << "' after " << before << " and before " << after << " bytes");
        CHECK_FALSE(omniedge::mayHoldPii(pad_before + w + pad_after));
      }
    }
  }
  CHECK_FALSE(omniedge::mayHoldPii(""));
  CHECK_FALSE(
      omniedge::mayHoldPii(R"({"screen":"promo","sku":"SKU-000042","note":"organic bread"})"));
  CHECK(omniedge::mayHoldPii(R"({"screen":"promo","Telephone":"0301234"})"));
}
