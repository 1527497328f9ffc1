// Inputs the gateway fuzz targets (tools/fuzz/gateway_*) found, fed byte for byte; the same
// files are seeds in tests/fixtures/fuzz/gateway_*/.
#include <catch2/catch.hpp>
#include <string>

#include "drivers/beacon/gateway.h"

namespace omniedge::beacon {
namespace {

TEST_CASE("A number beyond a double in a gateway payload is refused naming the payload",
          "[unit][beacon]") {
  // nlohmann reports such a number as out_of_range, not parse_error: it used to fall through to
  // the catch-all, refused without a field and with the library's raw message.
  struct Case {
    std::string topic;
    std::string payload;
    std::string number;
  };
  const Case cases[] = {
      {"home/gw2/BTtoMQTT/112233445566",
       "1e400{\"id\":\"11:22:33:44:55:66\",\"rssi\":-80,\"servicedaamp\":\"2026-01-02T10:00:00Z\"}",
       "1e400"},
      {"espresense/devices/watch:darrell/office",
       "{\"mac\":\"58b1294494d3\",\"id\":\"watch:darrell\",\"name\":\"Darrell's Watch\","
       "\"idType\":250,\"rssi@1m\":-691e400i\":-68,\"raw\":0.93,\"distance\":0.85,\"int\":628}",
       "-691e400"},
      {"store/ble",
       "{\"scanner\":\"door\",\"mac\":\"00:11:22:33:44:55\",\"rssi\":-60,"
       "\"timestamp\":1764001e4000000123}",
       "1764001e4000000123"},
  };
  for (const Case& c : cases) {
    auto parsed = parseGatewayMessage(c.topic, c.payload, 8192);
    REQUIRE_FALSE(parsed.has_value());
    CHECK(parsed.error().code == "invalid");
    CHECK(parsed.error().field == "payload");
    CHECK(parsed.error().message ==
          "payload is not JSON: number overflow parsing '" + c.number + "'");
  }
}

}  // namespace
}  // namespace omniedge::beacon
