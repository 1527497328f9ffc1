// libFuzzer target: what a store parses of a config document before it trusts it
// (sync/remote_config.h parseConfigDocument) and the strict base64 of the signed envelope
// (sync/signing.h). Checks: base64 is canonical both ways; a refused document is "invalid" with
// a message, naming its field unless the whole document is the problem; an accepted one keeps
// its promises (version >= 1, at most 256 settings, expires_at a time) and reads the same when
// written back with its values as strings.  Run: tools/fuzz/run remote_config_doc
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "agent/api/time.h"
#include "sync/remote_config.h"
#include "sync/signing.h"
#include "tools/fuzz/check.h"

namespace rcfg = omniedge::sync;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  // Strict base64: whatever decodes encodes back to the same text; any bytes round-trip.
  if (auto decoded = rcfg::base64Decode(input)) {
    FUZZ_CHECK(rcfg::base64Encode(*decoded) == input);
  }
  FUZZ_CHECK(rcfg::base64Decode(rcfg::base64Encode(input)) == std::string(input));

  auto doc = rcfg::parseConfigDocument(input);
  if (!doc) {
    FUZZ_CHECK(doc.error().code == "invalid");
    FUZZ_CHECK(!doc.error().message.empty());
    FUZZ_CHECK(!doc.error().field.empty() || doc.error().message.starts_with("the document"));
    return 0;
  }
  FUZZ_CHECK(doc->version >= 1);
  FUZZ_CHECK(doc->settings.size() <= 256);
  nlohmann::json again = {{"version", doc->version}, {"settings", doc->settings}};
  if (doc->expires_at_ms) {
    FUZZ_CHECK(omniedge::parseRfc3339(omniedge::formatRfc3339Ms(*doc->expires_at_ms)) ==
               doc->expires_at_ms);
    again["expires_at"] = omniedge::formatRfc3339Ms(*doc->expires_at_ms);
  }
  const auto reread = rcfg::parseConfigDocument(again.dump());
  if (reread) {
    FUZZ_CHECK(reread->version == doc->version && reread->settings == doc->settings &&
               reread->expires_at_ms == doc->expires_at_ms);
  } else {
    // A list joined into one string may be longer than a string value may be.
    FUZZ_CHECK(reread.error().field.starts_with("settings."));
  }
  return 0;
}
