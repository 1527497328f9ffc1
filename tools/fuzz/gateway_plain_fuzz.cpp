// libFuzzer target: the plain {"scanner","mac","rssi","adv"} form (or an array of them) on any
// topic, the topic fuzzed too (see gateway_fuzz.h).  Run: tools/fuzz/run gateway_plain
#include "tools/fuzz/gateway_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view head, payload;
  omniedge::fuzz::splitInput(data, size, head, payload);
  omniedge::fuzz::checkGateway(head, payload);
  return 0;
}
