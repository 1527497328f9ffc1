#include "sync/batch.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "agent/api/uuid.h"
#include "sync/mqtt_link.h"

namespace omniedge::sync {
namespace {

std::vector<PendingEvent> sampleEvents(int n) {
  std::vector<PendingEvent> events;
  for (int i = 0; i < n; ++i) {
    events.push_back(PendingEvent{
        100 + i,
        R"({"id":"e-)" + std::to_string(i) +
            R"(","type":"pos.transaction","data":{"total": 12.50, "note":"caf\u00e9 \"x\""}})"});
  }
  return events;
}

bool startsWith(const std::string& data, std::initializer_list<unsigned char> magic) {
  std::size_t i = 0;
  for (unsigned char b : magic) {
    if (i >= data.size() || static_cast<unsigned char>(data[i]) != b) {
      return false;
    }
    ++i;
  }
  return true;
}

TEST_CASE("a batch wraps the stored bodies verbatim in the contract's envelope", "[unit][sync]") {
  const auto events = sampleEvents(3);
  const std::string json = buildBatchJson("b-1", "store-\"42\"", "1.2.3", events);

  const auto doc = nlohmann::json::parse(json);
  CHECK(doc["batch_id"] == "b-1");
  CHECK(doc["store_id"] == "store-\"42\"");
  CHECK(doc["agent_version"] == "1.2.3");
  CHECK(doc["count"] == 3);
  REQUIRE(doc["events"].size() == 3);
  CHECK(doc["events"][1]["id"] == "e-1");
  CHECK(doc["events"][2]["data"]["note"] == "caf\u00e9 \"x\"");
  for (const auto& e : events) {
    // Not re-serialised: the exact bytes (spacing, escapes) are in the document.
    CHECK(json.find(e.body) != std::string::npos);
  }
}

TEST_CASE("an empty batch document is still valid JSON", "[unit][sync]") {
  const auto doc = nlohmann::json::parse(buildBatchJson("b", "s", "v", {}));
  CHECK(doc["count"] == 0);
  CHECK(doc["events"].empty());
}

TEST_CASE("buildBatch covers the events' seq range and compresses as asked", "[unit][sync]") {
  const auto events = sampleEvents(50);

  SECTION("gzip: a real gzip stream, 1f 8b, that round-trips") {
    auto batch = buildBatch(events, "store-1", "v", Compression::kGzip);
    REQUIRE(batch.has_value());
    CHECK(batch->first_seq == 100);
    CHECK(batch->last_seq == 149);
    CHECK(batch->count == 50);
    CHECK(startsWith(batch->payload, {0x1f, 0x8b}));
    CHECK(batch->payload.size() < batch->json_bytes);
    auto json = decompress(batch->payload);
    REQUIRE(json.has_value());
    CHECK(json->size() == batch->json_bytes);
    const auto doc = nlohmann::json::parse(*json);
    CHECK(doc["batch_id"] == batch->id);
    CHECK(doc["count"] == 50);
  }
  SECTION("zstd: a zstd frame, 28 b5 2f fd, that round-trips") {
    auto batch = buildBatch(events, "store-1", "v", Compression::kZstd);
    REQUIRE(batch.has_value());
    CHECK(startsWith(batch->payload, {0x28, 0xb5, 0x2f, 0xfd}));
    auto json = decompress(batch->payload);
    REQUIRE(json.has_value());
    CHECK(nlohmann::json::parse(*json)["events"].size() == 50);
  }
  SECTION("none: the JSON itself") {
    auto batch = buildBatch(events, "store-1", "v", Compression::kNone);
    REQUIRE(batch.has_value());
    CHECK(batch->payload.front() == '{');
    CHECK(batch->payload.size() == batch->json_bytes);
  }
  SECTION("no events: refused") {
    auto batch = buildBatch({}, "store-1", "v", Compression::kGzip);
    REQUIRE_FALSE(batch.has_value());
    CHECK(batch.error().code == "invalid");
  }
}

TEST_CASE("compression round-trips large, empty and incompressible inputs", "[unit][sync]") {
  std::string big;
  for (int i = 0; i < 20000; ++i) {
    big += R"({"id":")" + std::to_string(i * 7919) + R"(","type":"beacon.enter"},)";
  }
  // Random bytes do not compress: the compressor falls back to stored blocks, which are larger
  // than the input (the bound it writes into must hold them).
  std::string noise(3 * 1024 * 1024 + 17, '\0');
  std::mt19937_64 rng(7);
  for (auto& ch : noise) {
    ch = static_cast<char>(rng());
  }
  for (auto c : {Compression::kGzip, Compression::kZstd, Compression::kNone}) {
    for (const std::string& input : {big, std::string(), noise, std::string("x")}) {
      auto packed = compress(input, c);
      REQUIRE(packed.has_value());
      if (c == Compression::kGzip) {
        REQUIRE(packed->size() >= 18);  // a gzip header and trailer at least
        CHECK(static_cast<unsigned char>((*packed)[0]) == 0x1f);
        CHECK(static_cast<unsigned char>((*packed)[1]) == 0x8b);
      }
      auto unpacked = decompress(*packed);
      REQUIRE(unpacked.has_value());
      CHECK(*unpacked == input);
    }
  }
}

TEST_CASE("decompress rejects corrupt or oversized streams without throwing", "[unit][sync]") {
  const std::string json(100000, 'a');
  auto gz = compress(json, Compression::kGzip);
  auto zs = compress(json, Compression::kZstd);
  REQUIRE(gz.has_value());
  REQUIRE(zs.has_value());

  SECTION("truncated gzip") {
    auto r = decompress(gz->substr(0, gz->size() / 2));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "invalid");
  }
  SECTION("garbage after a gzip magic") {
    auto r = decompress(std::string("\x1f\x8b garbage garbage", 18));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "invalid");
  }
  SECTION("truncated zstd") {
    auto r = decompress(zs->substr(0, zs->size() - 3));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "invalid");
  }
  SECTION("over the cap") {
    auto r = decompress(*gz, 1000);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == "too_large");
    auto z = decompress(*zs, 1000);
    REQUIRE_FALSE(z.has_value());
    CHECK(z.error().code == "too_large");
  }
}

TEST_CASE("batch ids are UUIDv7: version 7, RFC variant, the millisecond up front",
          "[unit][sync]") {
  const std::regex shape("^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    const std::string id = makeUuidV7(1795000000000 + i / 10);
    CHECK(std::regex_match(id, shape));
    seen.insert(id);
  }
  CHECK(seen.size() == 1000);
}

TEST_CASE("config spellings parse to the typed options", "[unit][sync]") {
  CHECK(parseCompression("gzip") == Compression::kGzip);
  CHECK(parseCompression("zstd") == Compression::kZstd);
  CHECK(parseCompression("none") == Compression::kNone);
  CHECK_FALSE(parseCompression("lz4").has_value());
  CHECK(compressionName(Compression::kZstd) == "zstd");
  CHECK(parseMqttVersion("auto") == MqttVersion::kAuto);
  CHECK(parseMqttVersion("3.1.1") == MqttVersion::kV311);
  CHECK(parseMqttVersion("5") == MqttVersion::kV5);
  CHECK_FALSE(parseMqttVersion("4").has_value());
}

}  // namespace
}  // namespace omniedge::sync
