// libFuzzer target: OpenMQTTGateway / Theengs BTtoMQTT messages (see gateway_fuzz.h).
// Run: tools/fuzz/run gateway_omg
#include "tools/fuzz/gateway_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view head, payload;
  omniedge::fuzz::splitInput(data, size, head, payload);
  std::string topic = "home/" + std::string(head);
  if (head.find("BTtoMQTT") == std::string_view::npos) topic += "/BTtoMQTT";
  omniedge::fuzz::checkGateway(topic, payload);
  return 0;
}
