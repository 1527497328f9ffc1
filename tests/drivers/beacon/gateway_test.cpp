// Gateway message formats → sightings.
#include "drivers/beacon/gateway.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace omniedge::beacon {

TEST_CASE("OpenMQTTGateway messages become sightings of the gateway", "[unit][beacon]") {
  SECTION("raw iBeacon manufacturer data") {
    auto parsed = parseGatewayMessage(
        "home/entrance/BTtoMQTT/C7A1B2C3D4E5",
        R"({"id":"C7:A1:B2:C3:D4:E5","mac_type":1,"rssi":-67,)"
        R"("manufacturerdata":"4c0002154142434445464748494041424344454600010002f8"})");
    REQUIRE(parsed.has_value());
    REQUIRE(parsed->sightings.size() == 1);
    const Sighting& s = parsed->sightings[0];
    CHECK(s.scanner == "entrance");
    CHECK(s.identity == "ibeacon:41424344-4546-4748-4940-414243444546:1:2");
    CHECK(s.rssi == -67);
    CHECK(s.rssi_at_1m == -8);
    CHECK_FALSE(s.timestamp_ms.has_value());
  }
  SECTION("decoded by the gateway (model_id IBEACON)") {
    auto parsed = parseGatewayMessage(
        "home/till/BTtoMQTT",
        R"({"id":"aa:bb:cc:dd:ee:ff","rssi":-70,"model_id":"IBEACON","txpower":-59,)"
        R"("uuid":"E2C56DB5-DFFB-48D2-B060-D0F5A71096E0","major":7,"minor":42,"ts":1764000000})");
    REQUIRE(parsed.has_value());
    REQUIRE(parsed->sightings.size() == 1);
    CHECK(parsed->sightings[0].identity == "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:7:42");
    CHECK(parsed->sightings[0].scanner == "till");
    CHECK(parsed->sightings[0].rssi_at_1m == -59);
    CHECK(parsed->sightings[0].timestamp_ms == int64_t{1764000000} * 1000);
  }
  SECTION("Eddystone UID service data") {
    auto parsed =
        parseGatewayMessage("home/gw2/BTtoMQTT/112233445566",
                            R"({"id":"11:22:33:44:55:66","rssi":-80,"servicedatauuid":"0xfeaa",)"
                            R"("servicedata":"00e3123456789012346789010000000000010000"})");
    REQUIRE(parsed.has_value());
    REQUIRE(parsed->sightings.size() == 1);
    CHECK(parsed->sightings[0].identity == "eddystone:12345678901234678901:000000000001");
    CHECK(parsed->sightings[0].rssi_at_1m == -29 - 41);
  }
  SECTION("Eddystone TLM is telemetry, not presence") {
    auto parsed =
        parseGatewayMessage("home/gw2/BTtoMQTT/112233445566",
                            R"({"id":"11:22:33:44:55:66","rssi":-80,"servicedatauuid":"feaa",)"
                            R"("servicedata":"20000bfe1c000000070800003e7c"})");
    REQUIRE(parsed.has_value());
    CHECK(parsed->sightings.empty());
    CHECK(parsed->telemetry_frames == 1);
  }
  SECTION("no beacon: the MAC from the payload, else the topic") {
    auto parsed = parseGatewayMessage("home/gw/BTtoMQTT/A1B2C3D4E5F6",
                                      R"({"rssi":-90,"manufacturerdata":"4c001005031c"})");
    REQUIRE(parsed.has_value());
    REQUIRE(parsed->sightings.size() == 1);
    CHECK(parsed->sightings[0].identity == "mac:a1b2c3d4e5f6");
    CHECK(parsed->frame_errors == 0);
  }
  SECTION("a truncated iBeacon is counted and falls back to the MAC") {
    auto parsed = parseGatewayMessage(
        "home/gw/BTtoMQTT",
        R"({"id":"A1:B2:C3:D4:E5:F6","rssi":-90,"manufacturerdata":"4c000215414243"})");
    REQUIRE(parsed.has_value());
    CHECK(parsed->frame_errors == 1);
    CHECK_FALSE(parsed->last_frame_error.empty());
    REQUIRE(parsed->sightings.size() == 1);
    CHECK(parsed->sightings[0].identity == "mac:a1b2c3d4e5f6");
  }
  SECTION("a gateway status message without RSSI yields nothing") {
    auto parsed = parseGatewayMessage("home/gw/BTtoMQTT", R"({"state":"online"})");
    REQUIRE(parsed.has_value());
    CHECK(parsed->sightings.empty());
  }
}

TEST_CASE("ESPresense messages: the room is the scanner, beacon ids are normalised",
          "[unit][beacon]") {
  auto parsed = parseGatewayMessage(
      "espresense/devices/iBeacon:e5ca1ade-f007-ba11-0000-000000000000-100-1/kitchen",
      R"({"id":"iBeacon:e5ca1ade-f007-ba11-0000-000000000000-100-1","rssi@1m":-65,"rssi":-72,)"
      R"("raw":2.1,"distance":2.0})");
  REQUIRE(parsed.has_value());
  REQUIRE(parsed->sightings.size() == 1);
  CHECK(parsed->sightings[0].scanner == "kitchen");
  CHECK(parsed->sightings[0].identity == "ibeacon:e5ca1ade-f007-ba11-0000-000000000000:100:1");
  CHECK(parsed->sightings[0].rssi == -72);
  CHECK(parsed->sightings[0].rssi_at_1m == -65);

  auto alt = parseGatewayMessage(
      "espresense/devices/x/hall",
      R"({"id":"altBeacon:2F234454-CF6D-4A0F-ADF2-F4911BA9FFA6-1-2","rssi":-80})");
  REQUIRE(alt.has_value());
  CHECK(alt->sightings.at(0).identity == "altbeacon:2f234454-cf6d-4a0f-adf2-f4911ba9ffa6:1:2");

  auto other = parseGatewayMessage("espresense/devices/watch:darrell/office",
                                   R"({"mac":"58b1294494d3","id":"watch:darrell","rssi":-68})");
  REQUIRE(other.has_value());
  CHECK(other->sightings.at(0).identity == "espresense:watch:darrell");
  CHECK(other->sightings.at(0).scanner == "office");
}

TEST_CASE("the plain form decodes the advertisement it carries", "[unit][beacon]") {
  auto parsed = parseGatewayMessage(
      "store/ble", R"({"scanner":"door","mac":"00:11:22:33:44:55","rssi":-67,)"
                   R"("adv":"0201060303aafe1716aafe00e3123456789012346789010000000000010000",)"
                   R"("timestamp":"2026-11-22T13:32:42.123Z"})");
  REQUIRE(parsed.has_value());
  REQUIRE(parsed->sightings.size() == 1);
  CHECK(parsed->sightings[0].scanner == "door");
  CHECK(parsed->sightings[0].identity == "eddystone:12345678901234678901:000000000001");
  CHECK(parsed->sightings[0].timestamp_ms == 1795354362123);

  auto array = parseGatewayMessage(
      "x", R"([{"scanner":"a","mac":"00:11:22:33:44:55","rssi":-1},{"scanner":"b","rssi":"x"}])");
  REQUIRE_FALSE(array.has_value());
  CHECK(array.error().field == "[1].rssi");
  CHECK(array.error().message == "[1].rssi must be a number, not string");
}

TEST_CASE("bad gateway messages are errors, never crashes", "[unit][beacon]") {
  for (const char* payload : {"", "{", "not json", "[1,2", "\"str\"", "{\"rssi\": }"}) {
    INFO(payload);
    auto parsed = parseGatewayMessage("home/gw/BTtoMQTT", payload);
    CHECK_FALSE(parsed.has_value());
  }
  CHECK_FALSE(parseGatewayMessage("home/gw/BTtoMQTT", R"({"rssi":"loud"})").has_value());
  CHECK_FALSE(parseGatewayMessage("espresense/devices/a/b", R"({"rssi":[1]})").has_value());
  CHECK_FALSE(parseGatewayMessage("other/topic", R"({"rssi":-50})").has_value());
  auto bad_hex = parseGatewayMessage(
      "home/gw/BTtoMQTT", R"({"id":"A1:B2:C3:D4:E5:F6","rssi":-1,"manufacturerdata":"zz"})");
  REQUIRE_FALSE(bad_hex.has_value());
  CHECK(bad_hex.error().field == "manufacturerdata");
}

namespace {

struct Refusal {
  const char* what;
  std::string topic;
  std::string payload;
  std::string field;
  std::string reason;  // a part of the message
};

}  // namespace

TEST_CASE("every field taken from a gateway is checked, and a refusal names it and says why",
          "[unit][beacon]") {
  const std::string long_name(65, 'r');
  const std::string long_id(97, 'i');
  const std::vector<Refusal> refusals = {
      {"over-long gateway in the topic", "home/" + long_name + "/BTtoMQTT",
       R"({"id":"A1:B2:C3:D4:E5:F6","rssi":-60})", "topic.gateway", "is 65 bytes, at most 64"},
      {"empty gateway", "home//BTtoMQTT", R"({"id":"A1:B2:C3:D4:E5:F6","rssi":-60})",
       "topic.gateway", "is empty"},
      {"control character in the room",
       "espresense/devices/phone/kit\x07"
       "chen",
       R"({"id":"phone","rssi":-60})", "topic.room", "control character U+0007 at byte 3"},
      {"invalid UTF-8 in the room", "espresense/devices/phone/k\xff\xfe",
       R"({"id":"phone","rssi":-60})", "topic.room", "is not UTF-8 (byte 0xff at byte 1)"},
      {"C1 control in the room", "espresense/devices/phone/k\xc2\x85",
       R"({"id":"phone","rssi":-60})", "topic.room", "control character U+0085"},
      {"over-long ESPresense device id", "espresense/devices/x/hall",
       R"({"id":")" + long_id + R"(","rssi":-60})", "id", "is 97 bytes, at most 96"},
      {"control character in the device id (JSON escape)", "espresense/devices/x/hall",
       R"({"id":"ph\u0000one","rssi":-60})", "id", "control character U+0000 at byte 2"},
      {"over-long id in the topic", "espresense/devices/" + long_id + "/hall", R"({"rssi":-60})",
       "topic.id", "is 97 bytes"},
      {"control character in a plain scanner", "store/ble",
       R"({"scanner":"door\u001b[2J","mac":"00:11:22:33:44:55","rssi":-60})", "scanner",
       "control character U+001B at byte 4"},
      {"over-long plain scanner", "store/ble",
       R"({"scanner":")" + long_name + R"(","mac":"00:11:22:33:44:55","rssi":-60})", "scanner",
       "at most 64"},
      {"scanner of the wrong type", "store/ble", R"({"scanner":5,"rssi":-60})", "scanner",
       "must be a string, not number"},
      {"rssi out of range", "espresense/devices/p/hall", R"({"rssi":-300})", "rssi",
       "is -300, outside -127..20 dBm"},
      {"rssi as text", "home/gw/BTtoMQTT", R"({"id":"A1:B2:C3:D4:E5:F6","rssi":"-60"})", "rssi",
       "must be a number, not string"},
      {"rssi@1m out of range", "espresense/devices/p/hall", R"({"rssi":-60,"rssi@1m":99})",
       "rssi@1m", "outside -127..20"},
      {"a negative distance", "espresense/devices/p/hall", R"({"rssi":-60,"distance":-1})",
       "distance", "outside 0..1000 m"},
      {"an absurd distance", "espresense/devices/p/hall", R"({"rssi":-60,"distance":1e300})",
       "distance", "outside 0..1000 m"},
      {"distance of the wrong type", "espresense/devices/p/hall", R"({"rssi":-60,"distance":[1]})",
       "distance", "must be a number, not array"},
      {"major out of range", "home/gw/BTtoMQTT",
       R"({"id":"A1:B2:C3:D4:E5:F6","rssi":-60,"model_id":"IBEACON",)"
       R"("uuid":"E2C56DB5-DFFB-48D2-B060-D0F5A71096E0","major":70000,"minor":1})",
       "major", "outside 0..65535"},
      {"an iBeacon uuid that is none", "home/gw/BTtoMQTT",
       R"({"id":"A1:B2:C3:D4:E5:F6","rssi":-60,"model_id":"IBEACON","uuid":"nope"})", "uuid",
       "is not a 16-byte UUID"},
      {"a MAC that is none", "home/gw/BTtoMQTT", R"({"id":"zz:zz","rssi":-60})", "id",
       "\"zz:zz\" is not a MAC address"},
      {"a MAC in the topic that is none", "home/gw/BTtoMQTT/nothex", R"({"rssi":-60})", "topic.mac",
       "is not a MAC address"},
      {"nothing names the device", "store/ble", R"({"scanner":"door","rssi":-60})", "mac",
       "is missing and no beacon frame names the device"},
      {"adv too long", "store/ble",
       R"({"scanner":"door","mac":"00:11:22:33:44:55","rssi":-60,"adv":")" +
           std::string(2 * 1651, 'a') + R"("})",
       "adv", "is 1651 bytes, at most 1650"},
      {"a payload that is not an object", "espresense/devices/p/hall", "[1,2]", "payload",
       "must be a JSON object, not array"},
      {"a sighting that is not an object", "store/ble",
       R"([{"scanner":"a","rssi":-1,)"
       R"("mac":"00:11:22:33:44:55"},7])",
       "[1]", "must be a JSON object, not number"},
      {"invalid UTF-8 inside a JSON string", "store/ble", "{\"scanner\":\"d\xff\",\"rssi\":-60}",
       "payload", "is not JSON"},
      {"a timestamp that is not a time", "store/ble",
       R"({"scanner":"d","mac":"00:11:22:33:44:55","rssi":-60,"ts":"yesterday"})", "ts",
       "is not an RFC 3339 time"},
      {"no known format", "other/topic", R"({"rssi":-50})", "topic", "no known gateway format"},
  };
  for (const Refusal& r : refusals) {
    INFO(r.what);
    auto parsed = parseGatewayMessage(r.topic, r.payload);
    REQUIRE_FALSE(parsed.has_value());
    CHECK(parsed.error().field == r.field);
    CHECK_THAT(parsed.error().message, Catch::Contains(r.reason));
    // The reason can be shown anywhere: no raw control bytes, valid UTF-8 (dump() would throw).
    CHECK(printable(parsed.error().message, 1000) == parsed.error().message);
    CHECK_NOTHROW(nlohmann::json(parsed.error().message).dump());
  }
}

TEST_CASE("a huge payload or topic is refused before it is parsed", "[unit][beacon]") {
  const std::string huge =
      R"({"scanner":"door","rssi":-60,"pad":")" + std::string(1 << 20, 'x') + R"("})";
  auto parsed = parseGatewayMessage("store/ble", huge);
  REQUIRE_FALSE(parsed.has_value());
  CHECK(parsed.error().code == "too_large");
  CHECK(parsed.error().field == "payload");
  CHECK(parsed.error().message == "payload is " + std::to_string(huge.size()) +
                                      " bytes; beacon.max_message_bytes allows 65536");
  CHECK(parseGatewayMessage("store/ble", huge, 2u << 20).error().field == "mac");

  auto topic = parseGatewayMessage("espresense/devices/p/" + std::string(600, 'r'), "{}");
  REQUIRE_FALSE(topic.has_value());
  CHECK(topic.error().code == "too_large");
  CHECK(topic.error().field == "topic");

  // Deep nesting within the size bound is only JSON: refused, no stack overflow.
  const std::string deep = std::string(30'000, '[') + std::string(30'000, ']');
  auto nested = parseGatewayMessage("store/ble", deep);
  REQUIRE_FALSE(nested.has_value());
  CHECK(nested.error().field == "[0]");
}

TEST_CASE("names: UTF-8 beyond ASCII is fine, printable() escapes what is not", "[unit][beacon]") {
  CHECK(checkName("café-étage-2", "scanner", 64).has_value());
  CHECK(checkName("店舗入口", "scanner", 64).has_value());
  CHECK_FALSE(checkName("\xed\xa0\x80", "scanner", 64).has_value());  // a surrogate
  CHECK_FALSE(checkName("\xc0\xaf", "scanner", 64).has_value());      // overlong '/'
  CHECK(printable("a\x07"
                  "b\xff"
                  "c") == "a\\x07b\\xffc");
  CHECK(printable(std::string(100, 'x'), 10) == std::string(10, 'x') + "…");
  CHECK(printable("café") == "café");
}

TEST_CASE("mutated gateway messages never throw, and what is accepted is within bounds",
          "[unit][beacon]") {
  const std::vector<std::pair<std::string, std::string>> seeds = {
      {"home/entrance/BTtoMQTT/C7A1B2C3D4E5",
       R"({"id":"C7:A1:B2:C3:D4:E5","rssi":-67,"manufacturerdata":"4c0002154142434445464748494041424344454600010002f8"})"},
      {"espresense/devices/watch:darrell/office",
       R"({"mac":"58b1294494d3","id":"watch:darrell","rssi@1m":-64,"rssi":-86,"distance":5.89})"},
      {"store/ble",
       R"([{"scanner":"door","mac":"00:11:22:33:44:55","rssi":-67,"adv":"0201060303aafe1716aafe00e3123456789012346789010000000000010000"}])"},
  };
  std::mt19937 rng(42);
  std::size_t accepted = 0;
  for (int i = 0; i < 30'000; ++i) {
    auto [topic, payload] = seeds[static_cast<std::size_t>(i) % seeds.size()];
    std::string& target = rng() % 4 == 0 ? topic : payload;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !target.empty(); ++e) {
      const std::size_t at = rng() % target.size();
      switch (rng() % 3) {
        case 0:
          target[at] = static_cast<char>(rng() % 256);
          break;
        case 1:
          target.erase(at, 1 + rng() % 4);
          break;
        default:
          target.insert(at, std::string(1 + rng() % 3, static_cast<char>(rng() % 256)));
      }
    }
    Result<GatewayParse> parsed = makeError("none", "");
    REQUIRE_NOTHROW(parsed = parseGatewayMessage(topic, payload));
    if (!parsed) {
      CHECK_NOTHROW(nlohmann::json(parsed.error().message).dump());
      continue;
    }
    ++accepted;
    for (const Sighting& s : parsed->sightings) {
      REQUIRE(checkName(s.scanner, "scanner", kMaxScannerBytes).has_value());
      REQUIRE(checkName(s.identity, "identity", kMaxIdentityBytes).has_value());
      REQUIRE(s.rssi >= kMinRssi);
      REQUIRE(s.rssi <= kMaxRssi);
    }
  }
  CHECK(accepted > 100);  // the mutations do not only break the JSON
}

}  // namespace omniedge::beacon
