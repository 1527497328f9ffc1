#include "agent/ingest/ingest.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "agent/api/uuid.h"
#include "tests/support/temp_dir.h"

using omniedge::Event;
using omniedge::Ingest;
using omniedge::PiiHasher;
using omniedge::testing::TempDir;

namespace {

class FixedClock final : public omniedge::Clock {
 public:
  int64_t nowMs() const override { return now; }
  int64_t now = 1795000000000;  // 2026-11-18
};

struct Fixture {
  TempDir dir;
  std::unique_ptr<omniedge::store::Buffer> buffer;
  PiiHasher pii{"0123456789abcdef-tenant-key", "DE"};
  FixedClock clock;
  std::unique_ptr<Ingest> ingest;

  Fixture() {
    omniedge::store::BufferOptions o;
    o.dir = dir.path();
    o.min_free_disk = 0;
    auto b = omniedge::store::Buffer::open(o);
    REQUIRE(b.has_value());
    buffer = std::move(*b);
    ingest =
        std::make_unique<Ingest>(omniedge::IngestOptions{"store-042", 4096}, *buffer, pii, clock);
  }
  nlohmann::json stored(std::size_t i = 0) {
    auto p = buffer->readPending(0, 100, 1 << 20);
    REQUIRE(p.has_value());
    REQUIRE(p->size() > i);
    return nlohmann::json::parse(p->at(i).body);
  }
};

Event kiosk(std::string type = "kiosk.view") {
  Event e;
  e.type = std::move(type);
  return e;
}

}  // namespace

TEST_CASE("ingest fills in id, source, store and timestamps", "[unit][ingest]") {
  Fixture f;
  auto r = f.ingest->append({kiosk()});
  REQUIRE(r.has_value());
  auto j = f.stored();
  CHECK(omniedge::isUuid(j["id"]));
  CHECK(j["id"].get<std::string>()[14] == '7');
  CHECK(j["id"] == r->ids[0]);
  CHECK(j["source"] == "kiosk");
  CHECK(j["store_id"] == "store-042");
  CHECK(j["occurred_at"] == "2026-11-18T11:06:40.000Z");
  CHECK(j["received_at"] == j["occurred_at"]);
  CHECK(j["customer"].is_object());
  CHECK(j["data"].is_object());
}

TEST_CASE("a producer's id is kept as the idempotency key", "[unit][ingest]") {
  Fixture f;
  auto e = kiosk();
  e.id = "till-7:2026-11-18:0042";
  REQUIRE(f.ingest->append({e}).has_value());
  auto again = f.ingest->append({e});
  REQUIRE(again.has_value());
  CHECK(again->duplicates == 1);
  CHECK(f.stored()["id"] == "till-7:2026-11-18:0042");
}

TEST_CASE("bad input is refused naming the field and the reason", "[unit][ingest]") {
  Fixture f;
  Event e = kiosk();
  std::string field;
  SECTION("type missing") {
    e.type.clear();
    field = "[0].type";
  }
  SECTION("type not dotted") {
    e.type = "Kiosk";
    field = "[0].type";
  }
  SECTION("id with spaces") {
    e.id = "a b";
    field = "[0].id";
  }
  SECTION("another store") {
    e.store_id = "store-999";
    field = "[0].store_id";
  }
  SECTION("occurred_at far in the future") {
    e.occurred_at_ms = f.clock.now + 2LL * 24 * 3600 * 1000;
    field = "[0].occurred_at";
  }
  SECTION("unknown identity key") {
    e.customer["shoe_size"] = "44";
    field = "[0].customer.shoe_size";
  }
  SECTION("not an e-mail address") {
    e.customer["email"] = "nobody";
    field = "[0].customer.email";
  }
  SECTION("a bad hash") {
    e.customer["email_sha256"] = "abc";
    field = "[0].customer.email_sha256";
  }
  auto r = f.ingest->append({kiosk(), e});
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == "invalid");
  // The index names the second event; nothing of the request was stored.
  CHECK(r.error().field == "[1]" + field.substr(3));
  CHECK_FALSE(r.error().message.empty());
  CHECK(f.buffer->stats().pending[1] == 0);
}

TEST_CASE("an event over buffer.max_event_bytes is too large", "[unit][ingest]") {
  Fixture f;
  auto e = kiosk();
  e.data_json = "{\"x\":\"" + std::string(5000, 'a') + "\"}";
  auto r = f.ingest->append({e});
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == "too_large");
  CHECK(r.error().field == "[0]");
}

TEST_CASE("raw e-mail and phone are replaced by keyed hashes before storing", "[unit][ingest]") {
  Fixture f;
  auto e = kiosk();
  e.customer["email"] = "  Jane.Doe@Example.COM ";
  e.customer["phone"] = "030 1234-5678";
  e.customer["loyalty_id"] = "40000066677";
  REQUIRE(f.ingest->append({e}).has_value());
  auto j = f.stored();
  CHECK_FALSE(j["customer"].contains("email"));
  CHECK_FALSE(j["customer"].contains("phone"));
  CHECK(j["customer"]["email_sha256"] == f.pii.hash("jane.doe@example.com"));
  CHECK(j["customer"]["phone_sha256"] == f.pii.hash("+493012345678"));
  CHECK(j["customer"]["loyalty_id"] == "40000066677");
  const std::string body = j.dump();
  CHECK(body.find("example.com") == std::string::npos);
  CHECK(body.find("12345678") == std::string::npos);
}

TEST_CASE("strings are escaped in the envelope", "[unit][ingest]") {
  Event e = kiosk();
  e.id = "x";
  e.source = "till \"7\"\n\x01";
  e.store_id = "s";
  e.occurred_at_ms = 0;
  const auto j = nlohmann::json::parse(omniedge::serialiseEvent(e));
  CHECK(j["source"] == "till \"7\"\n\x01");
}

namespace {

// A profile cache in miniature: one customer, who refused tracking.
class OptedOut final : public omniedge::IdentityResolver {
 public:
  std::map<std::string, std::string> customerFor(std::string_view key) const override {
    if (key == "ibeacon:u:1:2") {
      return {{"profile_id", "c-9"}, {"loyalty_id", "L-OPTOUT"}};
    }
    return {};
  }
  bool refused(const std::map<std::string, std::string>& customer,
               omniedge::ConsentPurpose purpose) const override {
    auto it = customer.find("loyalty_id");
    return purpose == omniedge::ConsentPurpose::kTracking && it != customer.end() &&
           it->second == "L-OPTOUT";
  }
};

}  // namespace

TEST_CASE("a customer who refused tracking is not tracked", "[unit][ingest][consent]") {
  Fixture f;
  OptedOut resolver;
  Ingest ingest(omniedge::IngestOptions{"store-042", 4096}, *f.buffer, f.pii, f.clock, &resolver);

  SECTION("their presence is dropped, yet acknowledged") {
    Event seen = kiosk("beacon.enter");
    seen.customer["beacon"] = "ibeacon:u:1:2";
    auto r = ingest.append({seen});
    REQUIRE(r.has_value());
    CHECK(r->consent_dropped == 1);
    CHECK(r->ids.size() == 1);
    CHECK(f.buffer->stats().pending[2] == 0);
  }
  SECTION("their purchase is kept without any identity") {
    Event sale = kiosk("pos.transaction");
    sale.customer["loyalty_id"] = "L-OPTOUT";
    sale.customer["email"] = "someone@example.org";
    REQUIRE(ingest.append({sale}).has_value());
    auto j = f.stored();
    CHECK(j["type"] == "pos.transaction");
    CHECK(j["customer"].empty());
  }
  SECTION("others are tracked and enriched from the cache") {
    Event other = kiosk("beacon.enter");
    other.customer["beacon"] = "ibeacon:someone:else:1";
    REQUIRE(ingest.append({other}).has_value());
    CHECK(f.stored()["customer"]["beacon"] == "ibeacon:someone:else:1");
  }
}

TEST_CASE("personal data in data and in identity values is stored only as keyed hashes",
          "[unit][ingest][pii]") {
  Fixture f;
  auto e = kiosk("kiosk.signup");
  e.customer["app_user_id"] = "Jane@Example.com";
  e.data_json = R"({"email":"jane@example.com","phone":"+49 30 12345678","screen":"signup"})";
  auto r = f.ingest->append({e});
  REQUIRE(r.has_value());
  auto j = f.stored();
  const std::string hash = f.pii.hash("jane@example.com");
  CHECK(j["customer"]["email_sha256"] == hash);
  CHECK_FALSE(j["customer"].contains("app_user_id"));
  CHECK(j["data"]["email_sha256"] == hash);
  CHECK(j["data"]["phone_sha256"] == f.pii.hash("+493012345678"));
  CHECK(j["data"]["screen"] == "signup");
  CHECK(j.dump().find("example.com") == std::string::npos);
}

TEST_CASE("an event id that is an e-mail address is refused", "[unit][ingest][pii]") {
  Fixture f;
  auto e = kiosk();
  e.id = "jane@example.com";
  auto r = f.ingest->append({e});
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().field == "[0].id");
}

TEST_CASE("appendEach stores the valid events and names each refused one", "[unit][ingest]") {
  Fixture f;
  auto bad = kiosk("Not A Type");
  auto r = f.ingest->appendEach({kiosk(), bad, kiosk("kiosk.tap")});
  REQUIRE(r.has_value());
  CHECK(r->stored == 2);
  REQUIRE(r->rejected.size() == 1);
  CHECK(r->rejected[0].index == 1);
  CHECK(r->rejected[0].error.field == "[1].type");
  CHECK(r->ids[1].empty());
  CHECK(f.stored(1)["type"] == "kiosk.tap");
}
