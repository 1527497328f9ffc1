// libFuzzer target: what a store parses from the centre before anything is trusted: the config
// envelope's base64 and the config document (quality.md R6, "remote config").
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "sync/remote_config.h"
#include "sync/signing.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  // Strict base64: whatever decodes encodes back to the same text; any bytes round-trip.
  if (auto decoded = omniedge::sync::base64Decode(input)) {
    if (omniedge::sync::base64Encode(*decoded) != input) {
      std::abort();
    }
  }
  if (omniedge::sync::base64Decode(omniedge::sync::base64Encode(input)) != std::string(input)) {
    std::abort();
  }

  // The document: an error names a field, or the values keep their promises.
  auto doc = omniedge::sync::parseConfigDocument(input);
  if (doc) {
    if (doc->version < 1 || doc->settings.size() > 256) {
      std::abort();
    }
  } else if (doc.error().message.empty()) {
    std::abort();
  }
  return 0;
}
