// libFuzzer target: the kiosk JSON parser against nlohmann-json as an oracle. Any input
// nlohmann rejects must be invalid_json here; any event parsed must match what nlohmann reads.
// Build and run: tools/fuzz/run [seconds]
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "drivers/kiosk/event_json.h"
using namespace omniedge;
static int depthOf(std::string_view s) {
  int d = 0, m = 0;
  bool in = false, esc = false;
  for (char c : s) {
    if (in) {
      if (esc)
        esc = false;
      else if (c == '\\')
        esc = true;
      else if (c == '"')
        in = false;
      continue;
    }
    if (c == '"')
      in = true;
    else if (c == '[' || c == '{') {
      if (++d > m) m = d;
    } else if ((c == ']' || c == '}') && d > 0)
      --d;
  }
  return m;
}
#define CHECKF(c)                                         \
  do {                                                    \
    if (!(c)) {                                           \
      fprintf(stderr, "FAIL %s line %d\n", #c, __LINE__); \
      abort();                                            \
    }                                                     \
  } while (0)
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  bool arr = false;
  auto r = kiosk::parseEvents(in, 5, &arr);
  if (in.size() >= 3 && (unsigned char)in[0] == 0xEF) return 0;
  if (in.find(char(0)) != std::string_view::npos) return 0;  // nlohmann stops at NUL
  bool nl = nlohmann::json::accept(in);
  int depth = depthOf(in);
  if (!nl) {
    CHECKF(!r.has_value() && r.error().code == "invalid_json");
    return 0;
  }
  if (depth <= 60) CHECKF(r.has_value() || r.error().code != "invalid_json");
  if (!r.has_value()) return 0;
  auto j = nlohmann::json::parse(in);
  std::vector<nlohmann::json> evs;
  if (j.is_array())
    for (auto& e : j) evs.push_back(e);
  else
    evs.push_back(j);
  CHECKF(evs.size() == r->size());
  for (size_t i = 0; i < evs.size(); ++i) {
    auto& e = evs[i];
    auto& ev = (*r)[i];
    CHECKF(e.is_object());
    CHECKF(e.at("type") == ev.type);
    if (e.contains("id")) CHECKF(e["id"] == ev.id);
    if (e.contains("source")) CHECKF(e["source"] == ev.source);
    if (e.contains("data"))
      CHECKF(nlohmann::json::parse(ev.data_json) == e["data"]);
    else
      CHECKF(ev.data_json == "{}");
    if (e.contains("customer")) {
      CHECKF(e["customer"].size() == ev.customer.size());
      for (auto& [k, v] : ev.customer) CHECKF(e["customer"][k] == v);
    }
    for (auto& [k, v] : e.items())
      CHECKF(k == "type" || k == "id" || k == "source" || k == "store_id" || k == "occurred_at" ||
             k == "customer" || k == "data");
  }
  return 0;
}
