// libFuzzer target: the buffer's packed bodies (agent/store/body_codec.h). A body read back from
// buffer.db may be anything a damaged sector or a stray write left there. Checks: unpackBody()
// on any bytes returns the JSON or a "corrupt" error naming the reason, never crashes, never
// allocates what a length field merely claims (libFuzzer's -rss_limit_mb), and nothing it gives
// back exceeds kMaxUnpackedBody; packBody() on the input (as if it were an envelope) gives back
// either nothing (stored as it is) or a body at least an eighth smaller that unpacks to exactly
// the input.  Run: tools/fuzz/run body_codec
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "agent/store/body_codec.h"
#include "tools/fuzz/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  auto unpacked = omniedge::store::unpackBody(in);
  if (unpacked) {
    FUZZ_CHECK(unpacked->size() <= omniedge::store::kMaxUnpackedBody);
  } else {
    FUZZ_CHECK(unpacked.error().code == "corrupt" || unpacked.error().code == "io");
    FUZZ_CHECK(!unpacked.error().message.empty());
  }

  const std::string packed = omniedge::store::packBody(in);
  if (!packed.empty()) {
    FUZZ_CHECK(packed.size() <= in.size() - in.size() / 8);
    auto back = omniedge::store::unpackBody(packed);
    FUZZ_CHECK(back.has_value());
    FUZZ_CHECK(*back == in);
  }
  return 0;
}
