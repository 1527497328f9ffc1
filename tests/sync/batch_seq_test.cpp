// The seq fields every batch carries for the centre's gap check (issue 14 point 7).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "sync/batch.h"

namespace omniedge::sync {
namespace {

std::vector<PendingEvent> events(std::initializer_list<int64_t> seqs) {
  std::vector<PendingEvent> out;
  for (const auto seq : seqs) {
    out.push_back(PendingEvent{seq, R"({"id":"e-)" + std::to_string(seq) + R"("})"});
  }
  return out;
}

TEST_CASE("a batch names its epoch and the seq range it covers", "[unit][sync]") {
  const auto doc = nlohmann::json::parse(
      buildBatchJson("b-1", "store-1", "1.0", events({101, 102, 103}), SeqSpace{"ep-1", 7}));
  CHECK(doc["epoch"] == "ep-1");
  CHECK(doc["epoch_start_seq"] == 7);
  CHECK(doc["seq_first"] == 101);
  CHECK(doc["seq_last"] == 103);
  CHECK_FALSE(doc.contains("seq_ranges"));  // no holes: the span says it all
  CHECK(doc["count"] == 3);
  CHECK(doc["events"][2]["id"] == "e-103");
}

TEST_CASE("a batch with holes lists exactly the seqs it holds", "[unit][sync]") {
  const auto doc = nlohmann::json::parse(
      buildBatchJson("b-1", "store-1", "1.0", events({5, 6, 9, 12, 13, 14}), SeqSpace{"ep-1", 1}));
  CHECK(doc["seq_first"] == 5);
  CHECK(doc["seq_last"] == 14);
  CHECK(doc["seq_ranges"] == nlohmann::json::parse("[[5,6],[9,9],[12,14]]"));
}

TEST_CASE("without an epoch a batch has no seq fields, as before", "[unit][sync]") {
  const auto doc = nlohmann::json::parse(buildBatchJson("b-1", "s", "1.0", events({1, 3})));
  CHECK_FALSE(doc.contains("epoch"));
  CHECK_FALSE(doc.contains("seq_first"));
  CHECK_FALSE(doc.contains("seq_ranges"));
}

TEST_CASE("buildBatch carries the seq fields through compression", "[unit][sync]") {
  auto batch =
      buildBatch(events({1, 2, 4}), "store-1", "1.0", Compression::kGzip, SeqSpace{"ep-9", 1});
  REQUIRE(batch.has_value());
  auto json = decompress(batch->payload);
  REQUIRE(json.has_value());
  const auto doc = nlohmann::json::parse(*json);
  CHECK(doc["epoch"] == "ep-9");
  CHECK(doc["seq_ranges"] == nlohmann::json::parse("[[1,2],[4,4]]"));
}

}  // namespace
}  // namespace omniedge::sync
