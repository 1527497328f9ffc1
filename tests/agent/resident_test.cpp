// Giving back start-up pages (agent/resident.h): the read-only segments of loaded objects leave
// the resident set; any other file mapping, private copies (RELRO-like) and writable mappings
// keep their pages and bytes.
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

// The Rss of the mapping that holds `at` (an address inside it), in kB; -1 if none does.
long mappingRssKb(const void* at) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool ours = false;
  const auto a = reinterpret_cast<uintptr_t>(at);
  while (std::getline(smaps, line)) {
    std::istringstream in(line);
    std::string first;
    in >> first;
    if (const auto dash = first.find('-'); dash != std::string::npos && !first.ends_with(':')) {
      ours = std::stoull(first.substr(0, dash), nullptr, 16) <= a &&
             a < std::stoull(first.substr(dash + 1), nullptr, 16);
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

TEST_CASE("the code of loaded objects leaves the resident set, other mappings keep theirs",
          "[resident]") {
  TempDir tmp;
  const std::string path = (tmp / "data.bin").string();
  {
    std::ofstream out(path, std::ios::binary);
    for (std::size_t i = 0; i < kBytes; ++i) {
      out.put(static_cast<char>('a' + i % 26));
    }
  }
  // A file mapped by someone (a library's data file, SQLite's mmap): not a loaded object, so
  // never touched, clean or not: it could be unmapped meanwhile and its addresses reused.
  char* clean = mapFile(path, PROT_READ);
  const long clean_sum = sum(clean);
  // RELRO-like: written (a private copy of each page), then made read-only.
  char* copied = mapFile(path, PROT_READ | PROT_WRITE);
  std::memset(copied, 'Z', kBytes);
  REQUIRE(::mprotect(copied, kBytes, PROT_READ) == 0);
  // Writable and written.
  char* writable = mapFile(path, PROT_READ | PROT_WRITE);
  std::memset(writable, 'Y', kBytes);
  // This test binary's code: a loaded object's read-only segment.
  const void* code = reinterpret_cast<const void*>(&mappingRssKb);
  const long code_before = mappingRssKb(code);
  REQUIRE(code_before > 0);

  const std::size_t released = omniedge::releaseStartupPages();
  CHECK(released > 0);
  const long code_after = mappingRssKb(code);  // what running this much faulted back
  INFO("the test binary's code: " << code_before << " kB resident before, " << code_after
                                  << " kB after; " << released << " kB released in all");
  CHECK(code_after < code_before);
  CHECK(mappingRssKb(clean) == static_cast<long>(kBytes / 1024));
  CHECK(mappingRssKb(copied) == static_cast<long>(kBytes / 1024));
  CHECK(mappingRssKb(writable) == static_cast<long>(kBytes / 1024));

  // Every byte as it was: the file's in the clean mapping, the private copies in the others.
  CHECK(sum(clean) == clean_sum);
  CHECK(std::string(copied, 4) == "ZZZZ");
  CHECK(copied[kBytes - 1] == 'Z');
  CHECK(std::string(writable, 4) == "YYYY");
  CHECK(writable[kBytes - 1] == 'Y');
  ::munmap(clean, kBytes);
  ::munmap(copied, kBytes);
  ::munmap(writable, kBytes);
}
