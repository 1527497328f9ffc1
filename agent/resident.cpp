#include "agent/resident.h"

#include <fcntl.h>
#include <link.h>
#include <sqlite3.h>
#include <sys/mman.h>
#include <unistd.h>

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace omniedge {
namespace {

constexpr std::size_t kMaxSmapsBytes = 8u << 20;  // ~1 KB per mapping; the daemon has ~150

// /proc/self/smaps, whole (its lines change while it is read piecewise, so one pass). Plain
// read(2): iostreams would touch, during the release, the libstdc++ pages being released.
std::string readSmaps() {
  std::string text;
  text.reserve(512u << 10);  // one mmap, untouched beyond what is read, unmapped when freed
  const int fd = ::open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return text;
  }
  char chunk[16384];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0 || text.size() + static_cast<std::size_t>(n) > kMaxSmapsBytes) {
      break;
    }
    text.append(chunk, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

std::string_view nextField(std::string_view& line) {
  while (!line.empty() && line.front() == ' ') {
    line.remove_prefix(1);
  }
  const auto end = line.find(' ');
  const std::string_view field = line.substr(0, end);
  line.remove_prefix(end == std::string_view::npos ? line.size() : end);
  return field;
}

uint64_t number(std::string_view s, int base) {
  while (!s.empty() && s.front() == ' ') {
    s.remove_prefix(1);
  }
  uint64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v, base);
  return v;
}

struct Range {
  uintptr_t begin;
  uintptr_t end;
  std::size_t rss_kb;
};

struct Release {
  std::vector<Range> candidates;  // from smaps: clean, read-only file mappings
  std::size_t released_kb = 0;
};

// Called by dl_iterate_phdr once per loaded object (the binary, each shared library), with the
// loader's lock held: no object can be unloaded meanwhile, so its read-only segments still hold
// its file's pages and nothing else can have been mapped at their addresses. Only what is both
// such a segment and a clean mapping in smaps is given back.
int releaseObject(dl_phdr_info* info, std::size_t /*size*/, void* data) {
  auto& r = *static_cast<Release*>(data);
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || (ph.p_flags & PF_W) != 0 || ph.p_memsz == 0) {
      continue;
    }
    const uintptr_t begin = (info->dlpi_addr + ph.p_vaddr) & ~(page - 1);
    const uintptr_t end = (info->dlpi_addr + ph.p_vaddr + ph.p_memsz + page - 1) & ~(page - 1);
    for (const Range& c : r.candidates) {
      if (c.begin >= begin && c.end <= end &&
          ::madvise(reinterpret_cast<void*>(c.begin), c.end - c.begin, MADV_DONTNEED) == 0) {
        r.released_kb += c.rss_kb;
      }
    }
  }
  return 0;
}

}  // namespace

std::size_t releaseStartupPages() {
  const std::string smaps = readSmaps();
  Release release;
  release.candidates.reserve(256);
  Range current{};
  bool candidate = false;  // the current mapping is a read-only file mapping
  std::string_view rest(smaps);
  for (;;) {
    const auto eol = rest.find('\n');
    if (eol == std::string_view::npos) {
      break;  // the end, or a line cut short by the size bound: not trusted
    }
    std::string_view line = rest.substr(0, eol);
    rest.remove_prefix(eol + 1);
    const char c = line.empty() ? '\0' : line.front();
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
      // "7f3a…-7f3b… r-xp 00000000 08:01 1234   /usr/lib/…": a mapping. Field lines start with
      // a capitalised name ("Rss:", "Anonymous:").
      const std::string_view range = nextField(line);
      const std::string_view perms = nextField(line);
      for (int i = 0; i < 3; ++i) {
        (void)nextField(line);  // offset, device, inode
      }
      const std::string_view path = nextField(line);
      const auto dash = range.find('-');
      candidate = dash != std::string_view::npos && perms.size() == 4 && perms[0] == 'r' &&
                  perms[1] == '-' && path.starts_with('/');  // files only, never writable
      current = {number(range.substr(0, dash), 16), number(range.substr(dash + 1), 16), 0};
    } else if (candidate && line.starts_with("Rss:")) {
      current.rss_kb = number(line.substr(4), 10);
    } else if (candidate && line.starts_with("Anonymous:") && line.ends_with(" kB")) {
      // Anonymous > 0: the mapping holds private copies (relocated RELRO data, a debugger's
      // breakpoints): dropping them would bring back the file's bytes. Only clean pages go.
      if (number(line.substr(10), 10) == 0 && current.rss_kb > 0 && current.end > current.begin) {
        release.candidates.push_back(current);
      }
      candidate = false;
    }
  }
  // Only the segments of loaded objects, under the loader's lock (releaseObject): a mapping
  // that smaps listed may be gone by now, and its addresses given to anonymous memory, which
  // MADV_DONTNEED would zero.
  ::dl_iterate_phdr(releaseObject, &release);
  return release.released_kb;
}

bool configureSqliteMemory() {
  return sqlite3_config(SQLITE_CONFIG_PAGECACHE, nullptr, 0, 0) == SQLITE_OK;
}

}  // namespace omniedge
