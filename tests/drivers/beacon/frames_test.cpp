// Every vector of tests/fixtures/ble/vectors.json, plus malformed and AltBeacon frames.
#include "drivers/beacon/frames.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "drivers/beacon/presence.h"

namespace omniedge::beacon {
namespace {

using nlohmann::json;

json loadVectors() {
  std::ifstream in(std::string(OMNIEDGE_SOURCE_DIR) + "/tests/fixtures/ble/vectors.json");
  REQUIRE(in.good());
  return json::parse(in);
}

std::vector<uint8_t> hex(const std::string& text) {
  auto bytes = parseHex(text);
  REQUIRE(bytes.has_value());
  return *bytes;
}

/// ibeacon-ble's form: manufacturer data keyed by the decimal company id, without its bytes.
std::vector<uint8_t> manufacturerBytes(const json& input) {
  const auto& md = input.at("manufacturer_data");
  REQUIRE(md.size() == 1);
  const int company = std::stoi(md.begin().key());
  std::vector<uint8_t> bytes = {static_cast<uint8_t>(company & 0xFF),
                                static_cast<uint8_t>(company >> 8)};
  const auto rest = hex(md.begin().value().get<std::string>());
  bytes.insert(bytes.end(), rest.begin(), rest.end());
  return bytes;
}

std::string ascii(const std::vector<uint8_t>& bytes) { return {bytes.begin(), bytes.end()}; }

}  // namespace

TEST_CASE("every iBeacon vector decodes to the values its suite asserts", "[unit][beacon]") {
  const json vectors = loadVectors();
  std::size_t checked = 0;
  for (const json& v : vectors.at("ibeacon")) {
    const std::string id = v.at("id");
    INFO(id);
    const json& want = v.at("expected");
    Result<Frame> frame = v.contains("input_adv_hex")
                              ? decodeAdvertisement(hex(v.at("input_adv_hex")))
                              : decodeManufacturerData(manufacturerBytes(v.at("input")));
    REQUIRE(frame.has_value());
    const auto* ib = std::get_if<IBeaconFrame>(&*frame);
    REQUIRE(ib != nullptr);
    CHECK(ib->uuid == want.at("uuid").get<std::string>());
    CHECK(ib->major == want.at("major").get<int>());
    if (want.contains("minor")) {
      CHECK(ib->minor == want.at("minor").get<int>());
    }
    const int power =
        want.contains("tx_power") ? want.at("tx_power").get<int>() : want.at("power").get<int>();
    CHECK(ib->tx_power == power);
    CHECK(rssiAt1m(*frame) == power);
    CHECK(identityOf(*frame) == "ibeacon:" + ib->uuid + ":" + std::to_string(ib->major) + ":" +
                                    std::to_string(ib->minor));
    if (want.contains("cypress_temperature_x100")) {
      const auto [temperature, humidity] = cypressSensors(ib->minor);
      CHECK(temperature == want.at("cypress_temperature_x100").get<int>());
      CHECK(humidity == want.at("cypress_humidity_x100").get<int>());
    }
    if (want.contains("distance_m_rounded")) {
      // Our log-distance model (n = 2.5) agrees with ibeacon-ble's curve at both points.
      const int rssi = v.at("input").at("rssi");
      CHECK(std::lround(estimateDistance(rssi, power, 2.5)) ==
            want.at("distance_m_rounded").get<int>());
      CHECK(std::lround(estimateDistance(-70, power, 2.5)) ==
            want.at("after_rssi_-70_distance_m_rounded").get<int>());
    }
    ++checked;
  }
  CHECK(checked == vectors.at("ibeacon").size());
  CHECK(checked == 3);
}

TEST_CASE("every Eddystone vector decodes to the values its suite asserts", "[unit][beacon]") {
  const json vectors = loadVectors();
  std::size_t checked = 0;
  for (const json& v : vectors.at("eddystone")) {
    const std::string id = v.at("id");
    INFO(id);
    const bool adv = v.contains("input_adv_hex");
    const json& want = adv ? v.at("expected") : v.at("expected_DERIVED");
    Result<Frame> frame = adv ? decodeAdvertisement(hex(v.at("input_adv_hex")))
                              : decodeEddystone(hex(v.at("input_servicedata_hex")));
    REQUIRE(frame.has_value());
    const std::string kind = want.at("frame");
    if (kind == "UID") {
      const auto* uid = std::get_if<EddystoneUid>(&*frame);
      REQUIRE(uid != nullptr);
      CHECK(uid->namespace_id == want.at("namespace").get<std::string>());
      CHECK(uid->instance_id == want.at("instance").get<std::string>());
      const int tx = want.contains("tx_power") ? want.at("tx_power").get<int>()
                                               : want.at("tx_power_at_0m").get<int>();
      CHECK(uid->tx_power == tx);
      CHECK(rssiAt1m(*frame) == tx - 41);
      CHECK(identityOf(*frame) == "eddystone:" + uid->namespace_id + ":" + uid->instance_id);
    } else if (kind == "URL") {
      const auto* url = std::get_if<EddystoneUrl>(&*frame);
      REQUIRE(url != nullptr);
      CHECK(url->url == want.at("url").get<std::string>());
      CHECK(url->tx_power == want.at("tx_power").get<int>());
      CHECK_FALSE(identityOf(*frame).has_value());
    } else if (kind == "TLM") {
      const auto* tlm = std::get_if<EddystoneTlm>(&*frame);
      REQUIRE(tlm != nullptr);
      CHECK(tlm->voltage_mv == want.at("voltage_mv").get<int>());
      if (want.contains("temperature_c")) {
        CHECK(tlm->temperature_c == Approx(want.at("temperature_c").get<double>()));
      } else {
        CHECK(tlm->temperature_c ==
              Approx(want.at("temperature_c_approx").get<double>()).margin(0.01));
      }
      CHECK(tlm->advertising_count == want.at("advertising_count").get<uint32_t>());
      CHECK(tlm->seconds_since_boot_raw == want.at("seconds_since_boot_raw").get<uint32_t>());
      CHECK_FALSE(identityOf(*frame).has_value());
    } else if (kind == "eTLM") {
      const auto* etlm = std::get_if<EddystoneEtlm>(&*frame);
      REQUIRE(etlm != nullptr);
      CHECK(ascii(etlm->encrypted) == want.at("encrypted_data_ascii").get<std::string>());
      // The vector's AD length (0x11) ends before the salt and the MIC: decoded from the whole
      // service data instead, they are what beacontools asserts.
      CHECK_FALSE(etlm->salt.has_value());
      const std::string adv_hex = v.at("input_adv_hex");
      const auto service = hex(adv_hex.substr(adv_hex.find("aafe20") + 4));
      auto whole = decodeEddystone(service);
      REQUIRE(whole.has_value());
      const auto& full = std::get<EddystoneEtlm>(*whole);
      CHECK(full.salt == want.at("salt_le").get<uint16_t>());
      CHECK(full.mic == want.at("mic_le").get<uint16_t>());
    } else if (kind == "EID") {
      const auto* eid = std::get_if<EddystoneEid>(&*frame);
      REQUIRE(eid != nullptr);
      CHECK(eid->tx_power == want.at("tx_power").get<int>());
      CHECK(ascii(eid->eid) == want.at("eid_ascii").get<std::string>());
    } else {
      FAIL("unknown frame kind " << kind);
    }
    ++checked;
  }
  CHECK(checked == vectors.at("eddystone").size());
  CHECK(checked == 8);
}

TEST_CASE("every negative vector is an error with a reason", "[unit][beacon]") {
  const json vectors = loadVectors();
  std::size_t checked = 0;
  for (const json& v : vectors.at("negative")) {
    const std::string id = v.at("id");
    INFO(id);
    if (v.contains("inputs_hex")) {
      for (const auto& input : v.at("inputs_hex")) {
        INFO(input.get<std::string>());
        auto frame = decodeAdvertisement(hex(input));
        REQUIRE_FALSE(frame.has_value());
        CHECK_FALSE(frame.error().message.empty());
        ++checked;
      }
    } else {
      auto frame = decodeManufacturerData(manufacturerBytes(v.at("input")));
      REQUIRE_FALSE(frame.has_value());
      CHECK_FALSE(frame.error().message.empty());
      ++checked;
    }
  }
  CHECK(checked == 8);
}

TEST_CASE("a truncated iBeacon is malformed, other manufacturer data is not a beacon",
          "[unit][beacon]") {
  auto short_ib = decodeManufacturerData(hex("4c000215426c7565436861726d426561636f6e73"));
  REQUIRE_FALSE(short_ib.has_value());
  CHECK(short_ib.error().code == "malformed");
  auto apple_other = decodeManufacturerData(hex("4c001005031c0a0b0c"));
  REQUIRE_FALSE(apple_other.has_value());
  CHECK(apple_other.error().code == "not_beacon");
  auto overrun = decodeAdvertisement(hex("0201061aff4c000215414243"));
  REQUIRE_FALSE(overrun.has_value());
  CHECK(overrun.error().code == "malformed");
  auto bad_url = decodeEddystone(hex("10f8050a"));
  REQUIRE_FALSE(bad_url.has_value());
  CHECK(bad_url.error().code == "malformed");
}

TEST_CASE("an AltBeacon advertisement decodes to its three ids", "[unit][beacon]") {
  // AltBeacon spec layout: length 0x1b, type 0xff, company 0x0118 (Radius Networks), BEAC,
  // id1 (16), id2 (2), id3 (2), reference RSSI, reserved.
  auto frame =
      decodeAdvertisement(hex("02011a1bff1801beac2f234454cf6d4a0fadf2f4911ba9ffa600010002c500"));
  REQUIRE(frame.has_value());
  const auto& alt = std::get<AltBeaconFrame>(*frame);
  CHECK(alt.company_id == 0x0118);
  CHECK(alt.id1 == "2f234454-cf6d-4a0f-adf2-f4911ba9ffa6");
  CHECK(alt.id2 == 1);
  CHECK(alt.id3 == 2);
  CHECK(alt.reference_rssi == -59);
  CHECK(identityOf(*frame) == "altbeacon:2f234454-cf6d-4a0f-adf2-f4911ba9ffa6:1:2");
  auto truncated = decodeManufacturerData(hex("1801beac2f234454cf6d4a0fadf2"));
  REQUIRE_FALSE(truncated.has_value());
  CHECK(truncated.error().code == "malformed");
}

TEST_CASE("random and truncated bytes never crash the decoders", "[unit][beacon]") {
  std::mt19937 rng(42);
  const auto valid = hex("0201060303aafe1716aafe00e3123456789012346789010000000000010000");
  for (std::size_t cut = 0; cut <= valid.size(); ++cut) {
    (void)decodeAdvertisement(std::span(valid).first(cut));
  }
  for (int i = 0; i < 20'000; ++i) {
    std::vector<uint8_t> bytes(rng() % 40);
    for (auto& b : bytes) {
      b = static_cast<uint8_t>(rng());
    }
    if (!bytes.empty() && i % 3 == 0) {
      bytes[0] = static_cast<uint8_t>(bytes.size() - 1);  // a plausible first AD length
    }
    (void)decodeAdvertisement(bytes);
    (void)decodeManufacturerData(bytes);
    (void)decodeEddystone(bytes);
  }
  SUCCEED();
}

}  // namespace omniedge::beacon
