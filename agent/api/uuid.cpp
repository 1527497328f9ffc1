#include "agent/api/uuid.h"

#include <array>
#include <random>

namespace omniedge {
namespace {

// Seeded with 128 bits: the ids Ingest makes are stored as unique without being checked
// (store::IdOrigin::kAgent), so two generators must never start alike.
std::mt19937_64 seededRng() {
  std::random_device rd;
  std::seed_seq seed{rd(), rd(), rd(), rd()};
  return std::mt19937_64(seed);
}

struct Generator {
  std::mt19937_64 rng = seededRng();
  int64_t last_ms = -1;
  uint32_t counter = 0;
};

}  // namespace

std::string makeUuidV7(int64_t epoch_ms) {
  thread_local Generator gen;
  auto ms = static_cast<uint64_t>(epoch_ms);
  if (epoch_ms <= gen.last_ms) {
    // Same (or an earlier, after a clock step back) millisecond: count up within the last one so
    // this thread's ids stay ordered; borrow the next millisecond when the counter runs out.
    ms = static_cast<uint64_t>(gen.last_ms);
    if (++gen.counter > 0xfff) {
      ++ms;
      gen.counter = static_cast<uint32_t>(gen.rng() & 0x3ff);
    }
  } else {
    gen.counter = static_cast<uint32_t>(gen.rng() & 0x3ff);  // headroom for the counter
  }
  gen.last_ms = static_cast<int64_t>(ms);
  const uint64_t rand_b = gen.rng();

  std::array<uint8_t, 16> b{};
  for (int i = 0; i < 6; ++i) {
    b[i] = static_cast<uint8_t>(ms >> (40 - 8 * i));
  }
  b[6] = static_cast<uint8_t>(0x70 | ((gen.counter >> 8) & 0x0f));
  b[7] = static_cast<uint8_t>(gen.counter & 0xff);
  for (int i = 0; i < 8; ++i) {
    b[8 + i] = static_cast<uint8_t>(rand_b >> (56 - 8 * i));
  }
  b[8] = static_cast<uint8_t>(0x80 | (b[8] & 0x3f));

  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) {
      out.push_back('-');
    }
    out.push_back(kHex[b[i] >> 4]);
    out.push_back(kHex[b[i] & 0x0f]);
  }
  return out;
}

bool isUuid(const std::string& s) {
  if (s.size() != 36) {
    return false;
  }
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') {
        return false;
      }
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

}  // namespace omniedge
