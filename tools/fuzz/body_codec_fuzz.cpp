// libFuzzer target: the buffer's packed bodies (agent/store/body_codec.h). A body read back from
// buffer.db may be anything a damaged sector or a stray write left there. Checks: unpackBody()
// on any bytes returns the JSON or a "corrupt" error naming the reason, never crashes, never
// allocates what a length field merely claims (libFuzzer's -rss_limit_mb), and nothing it gives
// back exceeds kMaxUnpackedBody; packBody() on the input (as if it were an envelope, with and
// without a row id, which it may leave out) gives back either nothing (stored as it is) or a body
// at least an eighth smaller that unpacks, with the same id, to exactly the input. A row of
// several events (unpackRun) on any bytes: its events, as many as it says, or "corrupt"; the
// input split in two events packs as one row that gives both back.
// Run: tools/fuzz/run body_codec
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "agent/store/body_codec.h"
#include "tools/fuzz/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  // The row's id: what the input's first member names when it starts like an envelope
  // (`{"id":"<id>"`), so that packing may leave it out; else any short id.
  constexpr std::string_view kHead = R"({"id":")";
  std::string_view id = in.substr(0, std::min<std::size_t>(in.size(), 3));
  if (in.starts_with(kHead)) {
    if (const auto end = in.find('"', kHead.size()); end != std::string_view::npos) {
      id = in.substr(kHead.size(), end - kHead.size());
    }
  }

  for (const std::string_view row_id : {std::string_view(), id}) {
    auto unpacked = omniedge::store::unpackBody(in, row_id);
    if (unpacked) {
      FUZZ_CHECK(unpacked->size() <= omniedge::store::kMaxUnpackedBody);
    } else {
      FUZZ_CHECK(unpacked.error().code == "corrupt" || unpacked.error().code == "io");
      FUZZ_CHECK(!unpacked.error().message.empty());
    }

    const std::string packed = omniedge::store::packBody(in, row_id);
    if (!packed.empty()) {
      FUZZ_CHECK(packed.size() <= in.size() - in.size() / 8);
      auto back = omniedge::store::unpackBody(packed, row_id);
      FUZZ_CHECK(back.has_value());
      FUZZ_CHECK(*back == in);
    }
  }
  for (const int64_t n : {int64_t{0}, int64_t{2}, int64_t{32}}) {
    auto events = omniedge::store::unpackRun(in, n);
    if (events) {
      FUZZ_CHECK(n == 0 || events->size() == static_cast<std::size_t>(n));
      FUZZ_CHECK(events->size() >= 2 && events->size() <= omniedge::store::kMaxRunEvents);
    } else {
      FUZZ_CHECK(events.error().code == "corrupt" && !events.error().message.empty());
    }
  }
  const std::string_view a = in.substr(0, in.size() / 2);
  const std::string_view b = in.substr(in.size() / 2);
  const std::string run = omniedge::store::packRun({id, id}, {a, b});
  if (!run.empty()) {
    auto back = omniedge::store::unpackRun(run, 2);
    FUZZ_CHECK(back.has_value());
    FUZZ_CHECK(back->at(0).json == a && back->at(1).json == b && back->at(0).id == id);
  }
  return 0;
}
