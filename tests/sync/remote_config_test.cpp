#include "sync/remote_config.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "sync/signing.h"
#include "tests/support/temp_dir.h"

namespace omniedge::sync {
namespace {

using Catch::Matchers::Contains;
using nlohmann::json;
using testing::TempDir;
using Verdict = RemoteConfig::Verdict;

// Keys the fake local configuration knows; x.low must not be above x.high (like the reconnect
// bounds), so a combination of documents can be invalid when each alone is fine.
Result<void> fakeCheck(const std::map<std::string, std::string>& settings) {
  for (const auto& [key, value] : settings) {
    if (key != "log.level" && key != "x.low" && key != "x.high" && key != "x.other") {
      return makeError("config", "unknown key " + key + " = \"" + value + "\" (from remote config)",
                       key);
    }
    if (key == "log.level" && value != "debug" && value != "info" && value != "warn") {
      return makeError("config", "log.level = \"" + value + "\" (from remote config): bad", key);
    }
  }
  const auto low = settings.find("x.low");
  const auto high = settings.find("x.high");
  if (low != settings.end() && high != settings.end() &&
      std::stoi(low->second) > std::stoi(high->second)) {
    return makeError("config", "x.low must not be greater than x.high", "x.low");
  }
  return {};
}

struct Fixture {
  TempDir dir;
  SigningKeyPair keys = *generateSigningKey();
  int64_t now = 1'800'000'000'000;  // 2027-01-15

  Fixture() { dir.write("verify.pub", keys.public_pem); }

  std::unique_ptr<RemoteConfig> open(bool with_key = true) {
    RemoteConfigOptions o;
    o.dir = dir.path();
    o.verify_key_file = with_key ? (dir / "verify.pub").string() : "";
    o.check = fakeCheck;
    o.now_ms = [this] { return now; };
    auto rc = RemoteConfig::open(std::move(o));
    REQUIRE(rc);
    return std::move(*rc);
  }

  std::string sign(const std::string& doc, const SigningKeyPair* with = nullptr) const {
    auto sig = signEd25519((with != nullptr ? *with : keys).private_pem, doc);
    REQUIRE(sig);
    return json{{"document", base64Encode(doc)}, {"signature", base64Encode(*sig)}}.dump();
  }
  std::string signedDoc(int version, const std::string& settings,
                        const std::string& extra = "") const {
    return sign(R"({"version":)" + std::to_string(version) + R"(,"settings":)" + settings + extra +
                "}");
  }
};

TEST_CASE(
    "a signed config is accepted, persisted, and its version only rises, also after a "
    "restart",
    "[unit][remote]") {
  Fixture f;
  const auto v2 = f.signedDoc(2, R"({"log.level":"debug"})");
  {
    auto rc = f.open();
    auto out = rc->receive(ConfigSource::kStore, v2);
    REQUIRE(out.verdict == Verdict::kAccepted);
    CHECK(out.report.status == "applied");
    CHECK(out.report.version == 2);
    CHECK(out.layer.settings.at("log.level") == "debug");
    CHECK(out.layer.details.at("log.level") == "v2 for this store");
    CHECK(out.layer.store_version == 2);
    CHECK_FALSE(rc->confirmed());
    // Retained: the same payload comes again at every subscribe.
    CHECK(rc->receive(ConfigSource::kStore, v2).verdict == Verdict::kIgnored);
    REQUIRE(rc->confirm());
  }
  CHECK_FALSE(std::filesystem::exists(f.dir / "remote-config.json.tmp"));
  auto rc = f.open();
  CHECK(rc->layer().settings.at("log.level") == "debug");
  CHECK(rc->confirmed());
  CHECK(rc->takeStartupReports().empty());
  CHECK(rc->receive(ConfigSource::kStore, v2).verdict == Verdict::kIgnored);
  for (int version : {1, 2}) {
    auto out = rc->receive(ConfigSource::kStore, f.signedDoc(version, R"({"log.level":"warn"})"));
    CHECK(out.verdict == Verdict::kRejected);
    CHECK(out.report.version == version);
    CHECK_THAT(out.report.error,
               Contains("version " + std::to_string(version) + " is not greater than 2") &&
                   Contains("replay"));
  }
  CHECK(rc->layer().settings.at("log.level") == "debug");
  CHECK(rc->receive(ConfigSource::kStore, f.signedDoc(3, R"({"log.level":"warn"})")).verdict ==
        Verdict::kAccepted);
}

TEST_CASE("forged and unsigned configs are refused with the reason while a key is set",
          "[unit][remote]") {
  Fixture f;
  auto rc = f.open();
  const std::string doc = R"({"version":1,"settings":{"log.level":"debug"}})";

  auto unsigned_doc = rc->receive(ConfigSource::kStore, doc);
  CHECK(unsigned_doc.verdict == Verdict::kRejected);
  CHECK(unsigned_doc.report.version == 1);
  CHECK_THAT(unsigned_doc.report.error, Contains("unsigned config refused"));

  auto env = json::parse(f.sign(doc));
  env["document"] = base64Encode(R"({ "version":1,"settings":{"log.level":"debug"}})");
  auto tampered = rc->receive(ConfigSource::kStore, env.dump());
  CHECK(tampered.verdict == Verdict::kRejected);
  CHECK_THAT(tampered.report.error, Contains("bad signature") && Contains("verify.pub"));

  auto other = generateSigningKey();
  auto foreign = rc->receive(ConfigSource::kStore, f.sign(doc, &*other));
  CHECK(foreign.verdict == Verdict::kRejected);
  CHECK_THAT(foreign.report.error, Contains("signed with another key"));

  CHECK_THAT(rc->receive(ConfigSource::kStore, "{not json").report.error,
             Contains("not a JSON object"));
  CHECK_THAT(
      rc->receive(ConfigSource::kStore, R"({"document": "!!", "signature": "AA=="})").report.error,
      Contains("document is not base64"));
  CHECK_THAT(
      rc->receive(ConfigSource::kStore, R"({"document": "e30=", "sig": "AA=="})").report.error,
      Contains("signature is required"));
  CHECK(rc->layer().settings.empty());
  CHECK(rc->lastReport()->status == "rejected");
}

TEST_CASE("without a verify key, unsigned documents and envelopes are taken", "[unit][remote]") {
  Fixture f;
  auto rc = f.open(false);
  CHECK(rc->receive(ConfigSource::kStore, R"({"version":1,"settings":{"log.level":"warn"}})")
            .verdict == Verdict::kAccepted);
  CHECK(rc->receive(ConfigSource::kStore, f.signedDoc(2, R"({"log.level":"debug"})")).verdict ==
        Verdict::kAccepted);
  CHECK(rc->layer().settings.at("log.level") == "debug");
}

TEST_CASE("an expired document is refused, one expiring later is taken", "[unit][remote]") {
  Fixture f;
  auto rc = f.open();
  auto expired = rc->receive(
      ConfigSource::kStore,
      f.signedDoc(1, R"({"log.level":"debug"})", R"(,"expires_at":"2027-01-01T00:00:00Z")"));
  CHECK(expired.verdict == Verdict::kRejected);
  CHECK_THAT(expired.report.error,
             Contains("expired at 2027-01-01T00:00:00.000Z") && Contains("agent time 2027-01-15"));
  CHECK(rc->receive(ConfigSource::kStore, f.signedDoc(1, R"({"log.level":"debug"})",
                                                      R"(,"expires_at":"2027-02-01T00:00:00Z")"))
            .verdict == Verdict::kAccepted);
}

TEST_CASE("settings are checked alone and merged, the store's own document wins per key",
          "[unit][remote]") {
  Fixture f;
  auto rc = f.open();
  auto bad = rc->receive(ConfigSource::kAll, f.signedDoc(1, R"({"log.level":"loud"})"));
  CHECK(bad.verdict == Verdict::kRejected);
  CHECK(bad.report.source == ConfigSource::kAll);
  CHECK_THAT(bad.report.error, Contains("log.level = \"loud\""));
  CHECK_THAT(rc->receive(ConfigSource::kAll, f.signedDoc(2, R"({"no.such":"1"})")).report.error,
             Contains("unknown key no.such"));

  REQUIRE(rc->receive(ConfigSource::kAll,
                      f.signedDoc(3, R"({"log.level":"warn","x.low":"5","x.other":"a"})"))
              .verdict == Verdict::kAccepted);
  auto own =
      rc->receive(ConfigSource::kStore, f.signedDoc(1, R"({"log.level":"debug","x.high":"9"})"));
  REQUIRE(own.verdict == Verdict::kAccepted);
  CHECK(own.layer.settings.at("log.level") == "debug");
  CHECK(own.layer.details.at("log.level") == "v1 for this store");
  CHECK(own.layer.settings.at("x.other") == "a");
  CHECK(own.layer.details.at("x.other") == "v3 for all stores");
  CHECK(own.layer.all_version == 3);
  CHECK(own.layer.store_version == 1);

  // Fine alone, not with the other topic's document: refused, naming that.
  auto combo = rc->receive(ConfigSource::kStore, f.signedDoc(2, R"({"x.high":"1"})"));
  CHECK(combo.verdict == Verdict::kRejected);
  CHECK_THAT(combo.report.error, Contains("x.low must not be greater than x.high") &&
                                     Contains("with all config applied"));
  CHECK(rc->layer().settings.at("x.high") == "9");
}

TEST_CASE(
    "a rollback returns to the last-known-good layer and the version given up stays "
    "refused",
    "[unit][remote]") {
  Fixture f;
  const auto v2 = f.signedDoc(2, R"({"log.level":"warn"})");
  {
    auto rc = f.open();
    REQUIRE(rc->receive(ConfigSource::kStore, f.signedDoc(1, R"({"log.level":"debug"})")).verdict ==
            Verdict::kAccepted);
    REQUIRE(rc->confirm());
    REQUIRE(rc->receive(ConfigSource::kStore, v2).verdict == Verdict::kAccepted);
    CHECK(rc->lastKnownGood().settings.at("log.level") == "debug");
  }
  // The daemon stopped before the proof: still unconfirmed after the restart.
  auto rc = f.open();
  CHECK_FALSE(rc->confirmed());
  CHECK(rc->layer().settings.at("log.level") == "warn");
  auto back = rc->rollBack("the uplink did not connect");
  CHECK(back.report.status == "rolled_back");
  CHECK(back.report.version == 2);
  CHECK(back.report.error == "the uplink did not connect; back to version 1");
  CHECK(back.layer.settings.at("log.level") == "debug");
  CHECK(rc->confirmed());
  CHECK(rc->lastReport()->status == "rolled_back");
  // The retained version 2 comes again: silently ignored, not re-applied, not re-reported.
  CHECK(rc->receive(ConfigSource::kStore, v2).verdict == Verdict::kIgnored);
  auto reopened = f.open();
  CHECK(reopened->receive(ConfigSource::kStore, v2).verdict == Verdict::kIgnored);
  CHECK(reopened->layer().settings.at("log.level") == "debug");
  CHECK(
      reopened->receive(ConfigSource::kStore, f.signedDoc(2, R"({"log.level":"info"})")).verdict ==
      Verdict::kRejected);
  CHECK(
      reopened->receive(ConfigSource::kStore, f.signedDoc(3, R"({"log.level":"info"})")).verdict ==
      Verdict::kAccepted);
}

TEST_CASE("at start an applied document that fails the current checks is reported, not applied",
          "[unit][remote]") {
  Fixture f;
  {
    auto rc = f.open();
    REQUIRE(rc->receive(ConfigSource::kStore, f.signedDoc(4, R"({"log.level":"debug"})")).verdict ==
            Verdict::kAccepted);
  }
  SECTION("the verify key was replaced") {
    const auto fresh = *generateSigningKey();
    f.dir.write("verify.pub", fresh.public_pem);
    auto rc = f.open();
    CHECK(rc->layer().settings.empty());
    auto reports = rc->takeStartupReports();
    REQUIRE(reports.size() == 1);
    CHECK(reports[0].status == "rejected");
    CHECK(reports[0].version == 4);
    CHECK_THAT(reports[0].error, Contains("not valid any more") && Contains("bad signature"));
    // The version stays burned, also for the new key.
    auto again = rc->receive(ConfigSource::kStore,
                             f.sign(R"({"version":4,"settings":{"log.level":"warn"}})", &fresh));
    CHECK(again.verdict == Verdict::kRejected);
    CHECK_THAT(again.report.error, Contains("version 4 is not greater than 4"));
  }
  SECTION("the state file is unreadable") {
    f.dir.write("remote-config.json", "{garbage");
    auto rc = f.open();
    CHECK(rc->layer().settings.empty());
    auto reports = rc->takeStartupReports();
    REQUIRE(reports.size() == 1);
    CHECK_THAT(reports[0].error, Contains("could not be read") && Contains("moved to"));
    CHECK_FALSE(std::filesystem::exists(f.dir / "remote-config.json"));
  }
  SECTION("the verify key file is missing: the agent does not start") {
    RemoteConfigOptions o;
    o.dir = f.dir.path();
    o.verify_key_file = (f.dir / "missing.pub").string();
    o.check = fakeCheck;
    auto rc = RemoteConfig::open(std::move(o));
    REQUIRE_FALSE(rc);
    CHECK(rc.error().field == "config.verify_key_file");
  }
}

TEST_CASE("readAppliedLayer shows what the daemon applied, for config show", "[unit][remote]") {
  Fixture f;
  CHECK(readAppliedLayer(f.dir.path())->settings.empty());
  auto rc = f.open();
  REQUIRE(rc->receive(ConfigSource::kAll, f.signedDoc(2, R"({"log.level":"warn","x.low":"1"})"))
              .verdict == Verdict::kAccepted);
  REQUIRE(rc->receive(ConfigSource::kStore, f.signedDoc(5, R"({"log.level":"debug"})")).verdict ==
          Verdict::kAccepted);
  auto layer = readAppliedLayer(f.dir.path());
  REQUIRE(layer);
  CHECK(layer->settings.at("log.level") == "debug");
  CHECK(layer->details.at("log.level") == "v5 for this store");
  CHECK(layer->details.at("x.low") == "v2 for all stores");
  CHECK(layer->store_version == 5);
  CHECK(layer->all_version == 2);
}

TEST_CASE("a config document's shape is checked, naming the field", "[unit][remote]") {
  CHECK_THAT(parseConfigDocument("[1]").error().message, Contains("not a JSON object"));
  CHECK(parseConfigDocument(R"({"settings":{}})").error().field == "version");
  CHECK(parseConfigDocument(R"({"version":0,"settings":{}})").error().field == "version");
  CHECK(parseConfigDocument(R"({"version":"3","settings":{}})").error().field == "version");
  CHECK(parseConfigDocument(R"({"version":1})").error().field == "settings");
  CHECK(parseConfigDocument(R"({"version":1,"settings":{},"comment":"x"})").error().field ==
        "comment");
  CHECK(parseConfigDocument(R"({"version":1,"settings":{},"expires_at":"soon"})").error().field ==
        "expires_at");
  CHECK(parseConfigDocument(R"({"version":1,"settings":{"a":{"b":1}}})").error().field ==
        "settings.a");
  CHECK(parseConfigDocument(R"({"version":1,"settings":{"a":null}})").error().field ==
        "settings.a");
  CHECK(parseConfigDocument(R"({"version":1,"settings":{"a":["x,y"]}})").error().field ==
        "settings.a[0]");
  CHECK_THAT(parseConfigDocument(std::string(70000, ' ')).error().message,
             Contains("more than the 65536"));
  auto ok = parseConfigDocument(
      R"({"version":7,"settings":{"a":"s","b":5,"c":true,"d":["x","y"],"e":1.5},)"
      R"("expires_at":"2027-01-01T00:00:00Z"})");
  REQUIRE(ok);
  CHECK(ok->version == 7);
  CHECK(ok->settings == std::map<std::string, std::string>{
                            {"a", "s"}, {"b", "5"}, {"c", "true"}, {"d", "x,y"}, {"e", "1.5"}});
  CHECK(ok->expires_at_ms == 1798761600000);
}

}  // namespace
}  // namespace omniedge::sync
