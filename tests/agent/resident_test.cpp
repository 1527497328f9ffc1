// Giving back start-up pages (agent/resident.h): clean file pages leave the resident set and
// come back with the same bytes; private copies (RELRO-like) and writable mappings are kept.
#include "agent/resident.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/support/temp_dir.h"

using omniedge::testing::TempDir;

namespace {

constexpr std::size_t kBytes = 1u << 20;

// The Rss of the mapping that starts at `at`, in kB, from /proc/self/smaps; -1 if none does.
long mappingRssKb(const void* at) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool ours = false;
  while (std::getline(smaps, line)) {
    std::istringstream in(line);
    std::string first;
    in >> first;
    if (const auto dash = first.find('-'); dash != std::string::npos && !first.ends_with(':')) {
      ours = std::stoull(first.substr(0, dash), nullptr, 16) == reinterpret_cast<uintptr_t>(at);
    } else if (ours && first == "Rss:") {
      long kb = -1;
      in >> kb;
      return kb;
    }
  }
  return -1;
}

char* mapFile(const std::string& path, int prot) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  void* p = ::mmap(nullptr, kBytes, prot, MAP_PRIVATE, fd, 0);
  ::close(fd);
  REQUIRE(p != MAP_FAILED);
  return static_cast<char*>(p);
}

long sum(const char* p) {
  long s = 0;
  for (std::size_t i = 0; i < kBytes; i += 512) {
    s += p[i];
  }
  return s;
}

}  // namespace

TEST_CASE("clean read-only file pages leave the resident set and come back with their bytes",
          "[resident]") {
  TempDir tmp;
  const std::string path = (tmp / "data.bin").string();
  {
    std::ofstream out(path, std::ios::binary);
    for (std::size_t i = 0; i < kBytes; ++i) {
      out.put(static_cast<char>('a' + i % 26));
    }
  }
  // Clean: read only.
  char* clean = mapFile(path, PROT_READ);
  const long clean_sum = sum(clean);
  // RELRO-like: written (a private copy of each page), then made read-only.
  char* copied = mapFile(path, PROT_READ | PROT_WRITE);
  std::memset(copied, 'Z', kBytes);
  REQUIRE(::mprotect(copied, kBytes, PROT_READ) == 0);
  // Writable and written.
  char* writable = mapFile(path, PROT_READ | PROT_WRITE);
  std::memset(writable, 'Y', kBytes);

  REQUIRE(mappingRssKb(clean) == static_cast<long>(kBytes / 1024));
  const std::size_t released = omniedge::releaseStartupPages();
  CHECK(released >= kBytes / 1024);  // this mapping, and the test binary's own code
  CHECK(mappingRssKb(clean) == 0);
  CHECK(mappingRssKb(copied) == static_cast<long>(kBytes / 1024));
  CHECK(mappingRssKb(writable) == static_cast<long>(kBytes / 1024));

  // Every byte as it was: the file's in the clean mapping, the private copies in the others.
  CHECK(sum(clean) == clean_sum);
  CHECK(clean[kBytes - 1] == static_cast<char>('a' + (kBytes - 1) % 26));
  CHECK(std::string(copied, 4) == "ZZZZ");
  CHECK(copied[kBytes - 1] == 'Z');
  CHECK(std::string(writable, 4) == "YYYY");
  CHECK(writable[kBytes - 1] == 'Y');
  ::munmap(clean, kBytes);
  ::munmap(copied, kBytes);
  ::munmap(writable, kBytes);
}
