// libFuzzer target: ESPresense messages, espresense/devices/<id>/<room> (see gateway_fuzz.h).
// Run: tools/fuzz/run gateway_espresense
#include "tools/fuzz/gateway_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view head, payload;
  omniedge::fuzz::splitInput(data, size, head, payload);
  omniedge::fuzz::checkGateway("espresense/devices/" + std::string(head), payload);
  return 0;
}
