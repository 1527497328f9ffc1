// Gateway message formats → sightings.
#include "drivers/beacon/gateway.h"

#include <catch2/catch.hpp>
#include <string>

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

}  // namespace omniedge::beacon
