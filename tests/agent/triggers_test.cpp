#include "agent/omni/triggers.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/omni/trigger_rules.h"
#include "agent/store/profile_cache.h"
#include "tests/support/recording_writer.h"
#include "tests/support/temp_dir.h"

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using nlohmann::json;
using omniedge::Clock;
using omniedge::Event;
using omniedge::omni::Engagement;
using omniedge::omni::parseTriggerRules;
using omniedge::omni::TriggerEngine;
using omniedge::omni::TriggerOptions;
using omniedge::omni::TriggerRule;
using omniedge::store::ProfileCache;
using omniedge::testing::RecordingWriter;
using omniedge::testing::TempDir;

namespace {

constexpr int64_t kNow = 1795000000000;

class FakeClock final : public Clock {
 public:
  int64_t nowMs() const override { return now; }
  int64_t now = kNow;
};

std::string ruleError(const std::string& rules) {
  auto r = parseTriggerRules(rules);
  REQUIRE_FALSE(r.has_value());
  return r.error().message;
}

constexpr const char* kProfiles = R"({"upserts":[
  {"id":"c-gold","keys":["loyalty:G1","ibeacon:gold"],"tier":"gold","segments":["vip","shoes"],
   "lifecycle":"loyal","cart":{"items":[{"sku":"SKU-1","qty":2,"channel":"app"}]}},
  {"id":"c-silver","keys":["loyalty:S1","ibeacon:silver"],"tier":"silver",
   "cart":{"items":[{"sku":"SKU-2","qty":1}]}},
  {"id":"c-empty","keys":["loyalty:E1"],"tier":"gold","cart":{"items":[]}},
  {"id":"c-nopers","keys":["loyalty:N1"],"tier":"gold","cart":{"items":[{"sku":"X","qty":1}]},
   "consent":{"personalization":false}},
  {"id":"c-nomkt","keys":["loyalty:M1"],"tier":"gold","cart":{"items":[{"sku":"X","qty":1}]},
   "consent":{"marketing":false}}
]})";

constexpr const char* kGoldCart = R"([{"id":"gold-cart","on":"beacon.enter",
  "when":{"tier":["gold"],"cart_not_empty":true,"zone":["entrance"]},
  "emit":"engagement.cart_reminder","show":{"kind":"cart"},"rate_limit":"1/4h"}])";

Event enter(const std::string& field, const std::string& value, const std::string& zone) {
  Event e;
  e.id = "ev-" + value + "-" + zone;
  e.type = "beacon.enter";
  e.customer[field] = value;
  e.data_json = R"({"identity":"x","zone":")" + zone + R"(","scanner":"s1"})";
  return e;
}

struct Fixture {
  TempDir dir;
  std::unique_ptr<ProfileCache> profiles;
  RecordingWriter writer;
  FakeClock clock;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Engagement> shown;  // guarded by mu
  std::unique_ptr<TriggerEngine> engine;

  explicit Fixture(const std::string& rules, TriggerOptions options = {}) {
    auto opened = ProfileCache::open(dir.path());
    REQUIRE(opened.has_value());
    profiles = std::move(*opened);
    REQUIRE(profiles->apply(kProfiles, kNow).has_value());
    if (options.holdout_key.empty()) {
      options.holdout_key = "test-holdout-key-0123456789";
    }
    engine = std::make_unique<TriggerEngine>(options, *profiles, writer, clock,
                                             [this](const Engagement& e) {
                                               std::lock_guard lock(mu);
                                               shown.push_back(e);
                                               cv.notify_all();
                                             });
    auto parsed = parseTriggerRules(rules);
    REQUIRE(parsed.has_value());
    engine->setRules(std::move(*parsed));
  }

  std::vector<TriggerEngine::Firing> eval(const Event& e) {
    std::vector<TriggerEngine::Firing> out;
    engine->evaluate(e, clock.now, out);
    return out;
  }
};

}  // namespace

TEST_CASE("trigger rules are checked as a whole and errors name the rule index and field",
          "[unit][triggers]") {
  CHECK(parseTriggerRules("").has_value());
  CHECK(parseTriggerRules("[]")->empty());
  auto ok = parseTriggerRules(kGoldCart);
  REQUIRE(ok.has_value());
  REQUIRE(ok->size() == 1);
  const TriggerRule& r = ok->front();
  CHECK(r.id == "gold-cart");
  CHECK(r.tiers == std::vector<std::string>{"gold"});
  CHECK(r.cart == 1);
  CHECK(r.rate_count == 1);
  CHECK(r.rate_window_ms == 4 * 3600 * 1000);
  CHECK(r.show_kind == "cart");
  CHECK(r.version.size() == 16);

  const std::string good = R"({"id":"a","on":"beacon.enter","emit":"engagement.x"})";
  CHECK(ruleError("{") == "triggers.rules: is not valid JSON (expected an array of rule objects)");
  CHECK_THAT(ruleError("{}"), StartsWith("triggers.rules: must be a JSON array"));
  CHECK_THAT(ruleError("[" + good + R"(,{"id":"b","on":"x.y","emit":"engagement.y",
             "when":{"tier":5}}])"),
             StartsWith("triggers.rules[1].when.tier: must be an array of non-empty strings"));
  CHECK_THAT(ruleError(R"([{"id":"b","on":"x.y","emit":"engagement.y","when":{"tier":["a",""]}}])"),
             StartsWith("triggers.rules[0].when.tier[1]: must be a non-empty string"));
  CHECK_THAT(ruleError(R"([{"id":"b","on":"x.y","emit":"engagement.y","when":{"colour":["r"]}}])"),
             StartsWith("triggers.rules[0].when.colour: is not a condition"));
  CHECK_THAT(ruleError("[" + good + "," + good + "]"),
             StartsWith("triggers.rules[1].id: \"a\" is used by another rule"));
  CHECK_THAT(ruleError(R"([{"id":"b","on":"x.y","emit":"kiosk.y"}])"),
             StartsWith("triggers.rules[0].emit: must be an event type engagement.<name>"));
  CHECK_THAT(ruleError(R"([{"id":"b","on":"engagement.*","emit":"engagement.y"}])"),
             StartsWith("triggers.rules[0].on: must not match engagement.* events"));
  CHECK_THAT(ruleError(R"([{"id":"b","on":"x.y","emit":"engagement.y","holdout":1.5}])"),
             StartsWith("triggers.rules[0].holdout: must be a number from 0 to 1"));
  CHECK_THAT(ruleError(R"([{"id":"b","on":"x.y","emit":"engagement.y","rate_limit":"1/4w"}])"),
             StartsWith("triggers.rules[0].rate_limit: must be \"N/<duration>\""));
  CHECK_THAT(ruleError(R"([{"id":"b","on":"x.y","emit":"engagement.y","show":{"k":1}}])"),
             StartsWith("triggers.rules[0].show: must be an object with a \"kind\""));
  CHECK_THAT(ruleError(R"([{"id":"b","on":"x.y","emit":"engagement.y","colour":1}])"),
             StartsWith("triggers.rules[0].colour: is not a rule field"));
  CHECK_THAT(ruleError(R"([{"on":"x.y","emit":"engagement.y"}])"),
             StartsWith("triggers.rules[0].id: is missing"));
  CHECK_THAT(
      ruleError(R"([{"id":"b","on":"x.y","emit":"engagement.y","when":{"consent":["sms"]}}])"),
      StartsWith("triggers.rules[0].when.consent[0]: must be tracking, personalization or "
                 "marketing"));
  auto rate = parseTriggerRules(
      R"([{"id":"b","on":"x.y","emit":"engagement.y","rate_limit":{"per_customer_s":90}}])");
  REQUIRE(rate.has_value());
  CHECK(rate->front().rate_window_ms == 90000);
  CHECK(parseTriggerRules(R"([{"id":"b","on":"x.y","emit":"engagement.y","rate_limit":"3/d"}])")
            ->front()
            .rate_count == 3);
}

TEST_CASE("event type patterns match with '*' only where the pattern says", "[unit][triggers]") {
  using omniedge::omni::typeMatches;
  CHECK(typeMatches("beacon.enter", "beacon.enter"));
  CHECK_FALSE(typeMatches("beacon.enter", "beacon.exit"));
  CHECK(typeMatches("beacon.*", "beacon.exit"));
  CHECK(typeMatches("*.cart_add", "kiosk.cart_add"));
  CHECK_FALSE(typeMatches("app.*", "beacon.enter"));
  CHECK(typeMatches("*", "pos.sale"));
}

TEST_CASE("a gold customer with a cart entering the zone fires, other customers and zones do not",
          "[unit][triggers]") {
  Fixture f(kGoldCart);
  auto fired = f.eval(enter("beacon", "ibeacon:gold", "entrance"));
  REQUIRE(fired.size() == 1);
  const auto& firing = fired.front();
  CHECK(firing.event.type == "engagement.cart_reminder");
  CHECK(firing.zone == "entrance");
  CHECK(firing.profile_id == "c-gold");
  CHECK(firing.customer_key == "loyalty:G1");
  CHECK(firing.event.customer.at("profile_id") == "c-gold");
  CHECK(firing.event.customer.at("beacon") == "ibeacon:gold");
  const json data = json::parse(firing.event.data_json);
  CHECK(data["rule"] == "gold-cart");
  CHECK(data["holdout"] == false);
  CHECK(data["trigger"]["id"] == "ev-ibeacon:gold-entrance");
  CHECK(data["trigger"]["type"] == "beacon.enter");
  CHECK(data["zone"] == "entrance");
  CHECK(data["show"]["kind"] == "cart");

  CHECK(f.eval(enter("beacon", "ibeacon:gold", "tills")).empty());        // another zone
  CHECK(f.eval(enter("beacon", "ibeacon:silver", "entrance")).empty());   // silver tier
  CHECK(f.eval(enter("loyalty_id", "E1", "entrance")).empty());           // empty cart
  CHECK(f.eval(enter("beacon", "ibeacon:unknown", "entrance")).empty());  // no profile
  Event exit = enter("beacon", "ibeacon:gold", "entrance");
  exit.type = "beacon.exit";
  CHECK(f.eval(exit).empty());  // another type
}

TEST_CASE("refused personalization means no trigger, refused marketing means no event either",
          "[unit][triggers]") {
  Fixture f(kGoldCart);
  CHECK(f.eval(enter("loyalty_id", "N1", "entrance")).empty());
  CHECK(f.eval(enter("loyalty_id", "M1", "entrance")).empty());
  const auto s = f.engine->stats();
  CHECK(s.no_personalization == 1);
  CHECK(s.no_marketing == 1);
  CHECK(s.fired == 0);
}

TEST_CASE("a rule fires at most its rate limit per customer, and again after the window",
          "[unit][triggers]") {
  Fixture f(R"([{"id":"r","on":"beacon.enter","when":{"tier":["gold"]},
    "emit":"engagement.hello","rate_limit":"2/1h"}])");
  const Event e = enter("beacon", "ibeacon:gold", "entrance");
  CHECK(f.eval(e).size() == 1);
  CHECK(f.eval(e).size() == 1);
  CHECK(f.eval(e).empty());
  CHECK(f.eval(enter("loyalty_id", "E1", "x")).size() == 1);  // another customer: own limit
  f.clock.now += 3600 * 1000;
  CHECK(f.eval(e).size() == 1);
  CHECK(f.engine->stats().rate_limited == 1);

  SECTION("forgetting the customer forgets their rate limit") {
    CHECK(f.eval(e).size() == 1);
    CHECK(f.eval(e).empty());
    auto gone = f.engine->forget({{"loyalty_id", "G1"}, {"profile_id", "c-gold"}});
    REQUIRE(gone.has_value());
    CHECK(*gone >= 1);
    CHECK(f.eval(e).size() == 1);
  }
}

TEST_CASE("a profile change is seen by the next event: facts are derived again",
          "[unit][triggers]") {
  Fixture f(kGoldCart);
  CHECK(f.eval(enter("loyalty_id", "S1", "entrance")).empty());
  REQUIRE(f.profiles
              ->apply(R"({"upserts":[{"id":"c-silver","keys":["loyalty:S1"],"tier":"gold",
                "cart":{"items":[{"sku":"SKU-2","qty":1}]}}]})",
                      kNow + 1)
              .has_value());
  CHECK(f.eval(enter("loyalty_id", "S1", "entrance")).size() == 1);
}

TEST_CASE("the hold-out is deterministic per rule and customer and holds back its share",
          "[unit][triggers]") {
  Fixture f(kGoldCart);
  int held = 0;
  for (int i = 0; i < 10000; ++i) {
    const std::string id = "c-" + std::to_string(i);
    const bool out = f.engine->heldOut("gold-cart", id, 0.1);
    CHECK(out == f.engine->heldOut("gold-cart", id, 0.1));
    held += out ? 1 : 0;
  }
  // 10% of 10,000 with a binomial standard deviation of 30: well within 5 of them.
  CHECK(held > 850);
  CHECK(held < 1150);
  CHECK_FALSE(f.engine->heldOut("gold-cart", "c-1", 0));
  CHECK(f.engine->heldOut("gold-cart", "c-1", 1));

  // Another rule draws another hold-out: not the same customers.
  int both = 0;
  for (int i = 0; i < 10000; ++i) {
    const std::string id = "c-" + std::to_string(i);
    both += f.engine->heldOut("gold-cart", id, 0.1) && f.engine->heldOut("other", id, 0.1);
  }
  CHECK(both < 300);

  // Another key draws another hold-out too.
  TriggerOptions other;
  other.holdout_key = "another-install-key-abcdefghij";
  Fixture g(kGoldCart, other);
  int same = 0;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = "c-" + std::to_string(i);
    same += f.engine->heldOut("gold-cart", id, 0.5) == g.engine->heldOut("gold-cart", id, 0.5);
  }
  CHECK(same < 900);
}

TEST_CASE("a held-out customer gets the engagement event with holdout true and nothing is shown",
          "[unit][triggers]") {
  Fixture f(R"([{"id":"all-out","on":"beacon.enter","when":{"tier":["gold"]},
    "emit":"engagement.hello","holdout":1},
    {"id":"none-out","on":"beacon.*","when":{"tier":["gold"]},"emit":"engagement.cart",
     "show":{"kind":"cart"},"holdout":0}])");
  f.engine->start();
  const Event e = enter("beacon", "ibeacon:gold", "entrance");
  f.engine->onStored({&e});
  {
    std::unique_lock lock(f.mu);
    REQUIRE(f.cv.wait_for(lock, std::chrono::seconds(10), [&] { return !f.shown.empty(); }));
  }
  f.engine->stop();  // appends what is queued
  const auto events = f.writer.events();
  REQUIRE(events.size() == 2);
  std::map<std::string, json> by_rule;
  for (const Event& stored : events) {
    const json d = json::parse(stored.data_json);
    by_rule[d["rule"]] = d;
  }
  CHECK(by_rule["all-out"]["holdout"] == true);
  CHECK(by_rule["all-out"]["holdout_share"] == 1.0);
  CHECK(by_rule["none-out"]["holdout"] == false);
  std::lock_guard lock(f.mu);
  REQUIRE(f.shown.size() == 1);
  const json frame = json::parse(f.shown.front().json);
  CHECK(frame["rule"] == "none-out");
  CHECK(frame["zone"] == "entrance");
  CHECK(frame["customer"]["key"] == "loyalty:G1");
  CHECK(frame["cart"]["items"][0]["sku"] == "SKU-1");
  CHECK(f.shown.front().zone == "entrance");
}

TEST_CASE("engagement events never trigger rules themselves", "[unit][triggers]") {
  Fixture f(R"([{"id":"any","on":"*","when":{"tier":["gold"]},"emit":"engagement.any"}])");
  Event e = enter("beacon", "ibeacon:gold", "entrance");
  e.type = "engagement.any";
  CHECK(f.eval(e).empty());
}

TEST_CASE("what triggers keep per customer stays within triggers.max_state_bytes",
          "[unit][triggers]") {
  TriggerOptions options;
  options.max_state_bytes = 64 * 1024;
  Fixture f(R"([{"id":"r","on":"beacon.enter","when":{"tier":["gold"]},
    "emit":"engagement.hello","rate_limit":"1/1d"}])",
            options);
  json upserts = json::array();
  for (int i = 0; i < 3000; ++i) {
    upserts.push_back({{"id", "p-" + std::to_string(i)},
                       {"keys", {"loyalty:P" + std::to_string(i)}},
                       {"tier", "gold"}});
  }
  REQUIRE(f.profiles->apply(json{{"upserts", upserts}}.dump(), kNow + 1).has_value());
  std::size_t fired = 0;
  for (int i = 0; i < 3000; ++i) {
    fired += f.eval(enter("loyalty_id", "P" + std::to_string(i), "entrance")).size();
    REQUIRE(f.engine->stats().state_bytes <= options.max_state_bytes);
  }
  CHECK(fired == 3000);
  // The most recent windows are kept: the last customer is still rate-limited.
  CHECK(f.eval(enter("loyalty_id", "P2999", "entrance")).empty());
}
