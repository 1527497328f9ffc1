#include "agent/store/wal_vfs.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

namespace omniedge::store::detail {
namespace {

// Bounds the memory a writing connection holds (a group commit of the kiosk load is ~100 KB),
// and stays under what the unix VFS writes in one call: its seekAndWrite() keeps only the low
// 17 bits of a size (a write of 128 KiB would be a write of 0 bytes, reported as a full disk).
constexpr std::size_t kMaxPending = 0x1ffff;
// Each write ends at a 4 KiB boundary: the kernel then keeps the WAL in single pages (wal_vfs.h).
constexpr sqlite3_int64 kPiece = 4096;
// A flush up to this size goes to the disk's sectors directly (O_DIRECT), not through the page
// cache: a lone commit of one event then writes its ~2.5 KB rounded to 512-byte sectors instead
// of dirtying, and after the sync writing back, two 4 KiB pages. Larger flushes (the groups of
// a busy store) go through the page cache, where the readers that deliver them find them.
constexpr std::size_t kDirectMax = 16 * 1024;
// The sector direct writes are aligned to. A device (or a file system: btrfs) that takes only
// 4 KiB would make a small commit write as many bytes as the page cache does, so there the WAL
// is written as before.
constexpr sqlite3_int64 kSector = 512;

// One wrapper per base VFS it was asked over (in production only "unix"; tests make a
// fault-injecting VFS the default, and the wrapper goes over that one). Never unregistered.
struct Wrapper {
  sqlite3_vfs vfs{};
  sqlite3_vfs* base = nullptr;
  std::string name;
};

sqlite3_vfs* baseOf(sqlite3_vfs* v) { return static_cast<Wrapper*>(v->pAppData)->base; }

// Changes made to one WAL file (a write or a truncation) by any connection of this process,
// counted where all its connections see them: a remembered last sector is only used while
// nobody changed the file since. Per file, so that the inbox's or the visits' commits do not
// make the buffer's next commit read its first sector back from the disk.
struct WalChanges {
  std::atomic<std::uint64_t> count{0};
};

// The counter of the file at `path`, shared by every connection that has it open (found by
// device and inode; a file nobody has open any more is forgotten).
std::shared_ptr<WalChanges> changesOf(const char* path) {
  static std::mutex mu;
  static std::map<std::pair<dev_t, ino_t>, std::weak_ptr<WalChanges>> files;
  struct stat st {};
  if (path == nullptr || ::stat(path, &st) != 0) {
    return std::make_shared<WalChanges>();  // its own: nothing to share it with
  }
  std::lock_guard lock(mu);
  std::erase_if(files, [](const auto& f) { return f.second.expired(); });
  auto& slot = files[{st.st_dev, st.st_ino}];
  auto shared = slot.lock();
  if (!shared) {
    shared = std::make_shared<WalChanges>();
    slot = shared;
  }
  return shared;
}

// A WAL file: the base VFS's file right after it in the same allocation (szOsFile covers both).
// `pending` only ever holds frames of a transaction that has not committed (or whose commit
// failed): a commit (FULL) syncs, and the sync writes them first. Nothing handed to it is dropped
// while the file is open: a write that fails is tried again at the next flush, and reads are
// answered from it meanwhile, so the file reads as if every write had reached it (frames of a
// failed commit, beyond the last commit, too: as with SQLite's own VFS, the next transaction
// writes over them).
struct WalFile {
  sqlite3_file file;  // pMethods = &kMethods; first, so a WalFile* is the sqlite3_file*
  sqlite3_file* real = nullptr;
  std::string pending;  // writes not yet on the base file, starting at pending_at
  sqlite3_int64 pending_at = 0;
  std::size_t written = 0;  // of `pending`, already on the base file (a flush that failed)
  sqlite3_int64 pendingEnd() const {
    return pending_at + static_cast<sqlite3_int64>(pending.size());
  }
  // Direct writes: the file's path over the unix VFS only (nullptr otherwise, or once the file
  // system refused O_DIRECT or an aligned write: every flush is then the base file's), and the
  // descriptor, opened at the first small flush (a reading connection never opens it).
  const char* direct_path = nullptr;
  int direct_fd = -1;
  char* aligned = nullptr;  // the buffer direct writes go from (4 KiB-aligned)
  std::size_t aligned_size = 0;
  // The last sector a direct write wrote (its bytes, as the file now has them), so the next
  // commit's first sector needs no read; -1 when unknown.
  sqlite3_int64 last_sector_at = -1;
  std::string last_sector;
  std::shared_ptr<WalChanges> changes;   // of this file, by every connection
  std::uint64_t last_sector_change = 0;  // valid while changes->count is still this
  // The end of what this WAL's current generation holds (SQLite starts one by writing the
  // header at offset 0): bytes beyond it in the file are a past generation's, and a direct
  // write's last sector may zero them.
  sqlite3_int64 generation_end = 0;
};

constexpr std::size_t kHeadSize = (sizeof(WalFile) + 15) / 16 * 16;

WalFile* asWal(sqlite3_file* f) { return reinterpret_cast<WalFile*>(f); }

void stopDirect(WalFile* w) {
  w->direct_path = nullptr;
  if (w->direct_fd >= 0) {
    ::close(w->direct_fd);
    w->direct_fd = -1;
  }
  std::free(w->aligned);
  w->aligned = nullptr;
  w->aligned_size = 0;
  w->last_sector_at = -1;
}

// The bytes [at, at + n) of the file as it is, through the base file (whose page cache a
// direct write keeps true); zeros beyond its end.
int readBase(WalFile* w, char* out, sqlite3_int64 n, sqlite3_int64 at) {
  const int rc = w->real->pMethods->xRead(w->real, out, static_cast<int>(n), at);
  return rc == SQLITE_IOERR_SHORT_READ ? SQLITE_OK : rc;  // the rest is zero-filled
}

enum class Direct { kDone, kRefused, kFailed };

// Writes `pending` (what is not written yet) in whole sectors with O_DIRECT: the first sector's
// earlier bytes from the last direct write or the file, the last one's later bytes from the
// file or, past the generation's end, zeros. kRefused when the file system does not take
// 512-byte sectors (the caller then writes through the base file, from now on).
Direct flushDirect(WalFile* w, int* rc) {
  const sqlite3_int64 from = w->pending_at + static_cast<sqlite3_int64>(w->written);
  const sqlite3_int64 to = w->pendingEnd();
  if (w->last_sector_change != w->changes->count.load()) {
    w->last_sector_at = -1;
  }
  const std::uint64_t change = ++w->changes->count;
  const sqlite3_int64 start = from / kSector * kSector;
  const sqlite3_int64 end = (to + kSector - 1) / kSector * kSector;
  const auto size = static_cast<std::size_t>(end - start);
  if (size > w->aligned_size) {
    std::free(w->aligned);
    w->aligned_size = (size + 4095) / 4096 * 4096;
    w->aligned = static_cast<char*>(std::aligned_alloc(4096, w->aligned_size));
    if (w->aligned == nullptr) {
      w->aligned_size = 0;
      *rc = SQLITE_NOMEM;
      return Direct::kFailed;
    }
  }
  char* buf = w->aligned;
  const sqlite3_int64 last = end - kSector;
  const bool tail_read = end > to && to < w->generation_end;
  if (end > to) {  // the last sector's bytes after this write: the file's, or zeros
    if (!tail_read) {
      std::memset(buf + (last - start), 0, static_cast<std::size_t>(kSector));
    } else if (*rc = readBase(w, buf + (last - start), kSector, last); *rc != SQLITE_OK) {
      return Direct::kFailed;
    }
  }
  if (start < from && !(tail_read && last == start)) {  // the first sector's earlier bytes
    if (w->last_sector_at == start) {
      std::memcpy(buf, w->last_sector.data(), static_cast<std::size_t>(from - start));
    } else if (*rc = readBase(w, buf, kSector, start); *rc != SQLITE_OK) {
      return Direct::kFailed;
    }
  }
  std::memcpy(buf + (from - start), w->pending.data() + w->written,
              static_cast<std::size_t>(to - from));
  std::size_t done = 0;
  while (done < size) {
    // The 64-bit calls: off_t is 32 bits on armhf, and a WAL kept through a failing disk grows.
    const ssize_t n = ::pwrite64(w->direct_fd, buf + done, size - done,
                                 static_cast<off64_t>(start) + static_cast<off64_t>(done));
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && errno == EINVAL && done == 0) {
      return Direct::kRefused;  // no 512-byte sectors here
    }
    w->last_sector_at = -1;  // some sectors may hold the new bytes: read them again next time
    *rc = (n == 0 || errno == ENOSPC || errno == EDQUOT) ? SQLITE_FULL : SQLITE_IOERR_WRITE;
    return Direct::kFailed;
  }
  w->last_sector_at = last;
  w->last_sector_change = change;
  w->last_sector.assign(buf + (last - start), static_cast<std::size_t>(kSector));
  w->generation_end = std::max(w->generation_end, to);
  return Direct::kDone;
}

// Hands `pending` to the base file, a write per 4 KiB piece. On failure it keeps what is not
// written yet, so no frame SQLite was told is written is ever lost: the next flush tries again.
int flush(WalFile* w) {
  const auto total = w->pending.size();
  if (total == 0) {
    return SQLITE_OK;
  }
  if (w->direct_path != nullptr && w->direct_fd < 0 && total - w->written <= kDirectMax) {
    w->direct_fd = ::open64(w->direct_path, O_WRONLY | O_DIRECT | O_CLOEXEC);
    if (w->direct_fd < 0) {
      w->direct_path = nullptr;  // tmpfs before Linux 6.6, or no descriptor left: as before
    }
  }
  if (w->direct_fd >= 0 && total - w->written <= kDirectMax) {
    int rc = SQLITE_OK;
    switch (flushDirect(w, &rc)) {
      case Direct::kDone:
        w->pending.clear();
        w->written = 0;
        return SQLITE_OK;
      case Direct::kFailed:
        return rc;
      case Direct::kRefused:
        stopDirect(w);
        break;
    }
  }
  ++w->changes->count;
  w->last_sector_at = -1;
  w->generation_end = std::max(w->generation_end, w->pendingEnd());
  while (w->written < total) {
    const sqlite3_int64 at = w->pending_at + static_cast<sqlite3_int64>(w->written);
    const auto piece =
        std::min<std::size_t>(total - w->written, static_cast<std::size_t>(kPiece - at % kPiece));
    const int rc = w->real->pMethods->xWrite(w->real, w->pending.data() + w->written,
                                             static_cast<int>(piece), at);
    if (rc != SQLITE_OK) {
      return rc;
    }
    w->written += piece;
  }
  w->pending.clear();
  w->written = 0;
  return SQLITE_OK;
}

// Frames still held when the file closes belong to a transaction that never committed.
int walClose(sqlite3_file* f) {
  WalFile* w = asWal(f);
  const int rc = w->real->pMethods->xClose(w->real);
  stopDirect(w);
  w->~WalFile();
  return rc;
}

int walRead(sqlite3_file* f, void* buf, int amt, sqlite3_int64 off) {
  WalFile* w = asWal(f);
  const sqlite3_int64 end = off + amt;
  if (!w->pending.empty() && off < w->pendingEnd() && end > w->pending_at) {
    if (off >= w->pending_at && end <= w->pendingEnd()) {  // a frame SQLite wrote: from memory
      std::memcpy(buf, w->pending.data() + (off - w->pending_at), static_cast<std::size_t>(amt));
      return SQLITE_OK;
    }
    // Partly held: SQLite reads whole frames or pages, so not in practice; written out first.
    if (const int rc = flush(w); rc != SQLITE_OK) {
      return rc;
    }
  }
  return w->real->pMethods->xRead(w->real, buf, amt, off);
}

int walWrite(sqlite3_file* f, const void* buf, int amt, sqlite3_int64 off) {
  WalFile* w = asWal(f);
  const auto n = static_cast<std::size_t>(amt);
  if (!w->pending.empty() && off >= w->pending_at && off + amt <= w->pendingEnd() &&
      static_cast<std::size_t>(off - w->pending_at) >= w->written) {
    // A frame of this transaction written again (its page changed, or its checksum): in place.
    std::memcpy(w->pending.data() + (off - w->pending_at), buf, n);
    return SQLITE_OK;
  }
  const bool follows = !w->pending.empty() && off == w->pendingEnd();
  if (!follows || w->pending.size() + n > kMaxPending) {
    if (const int rc = flush(w); rc != SQLITE_OK) {
      return rc;  // this write is not taken; what was held stays held
    }
    if (off == 0) {  // the header: a new generation of the WAL starts
      w->generation_end = 0;
      w->last_sector_at = -1;
    }
    if (n > kMaxPending) {
      ++w->changes->count;
      w->last_sector_at = -1;
      w->generation_end = std::max(w->generation_end, off + amt);
      return w->real->pMethods->xWrite(w->real, buf, amt, off);
    }
    w->pending_at = off;
  }
  w->pending.append(static_cast<const char*>(buf), n);
  return SQLITE_OK;
}

int walTruncate(sqlite3_file* f, sqlite3_int64 size) {
  WalFile* w = asWal(f);
  if (const int rc = flush(w); rc != SQLITE_OK) {
    return rc;
  }
  ++w->changes->count;
  w->last_sector_at = -1;
  w->generation_end = std::min(w->generation_end, size);
  return w->real->pMethods->xTruncate(w->real, size);
}

// The held frames are written first; a failure to write them is this sync's failure (the
// commit fails, and the frames stay held for the next attempt).
int walSync(sqlite3_file* f, int flags) {
  WalFile* w = asWal(f);
  if (const int rc = flush(w); rc != SQLITE_OK) {
    return rc;
  }
  return w->real->pMethods->xSync(w->real, flags);
}

int walFileSize(sqlite3_file* f, sqlite3_int64* size) {
  WalFile* w = asWal(f);
  const int rc = w->real->pMethods->xFileSize(w->real, size);
  if (rc == SQLITE_OK && !w->pending.empty()) {
    *size = std::max(*size, w->pendingEnd());
  }
  return rc;
}

int walFileControl(sqlite3_file* f, int op, void* arg) {
  return asWal(f)->real->pMethods->xFileControl(asWal(f)->real, op, arg);
}

// The rest is the base file's own.
int walLock(sqlite3_file* f, int l) { return asWal(f)->real->pMethods->xLock(asWal(f)->real, l); }
int walUnlock(sqlite3_file* f, int l) {
  return asWal(f)->real->pMethods->xUnlock(asWal(f)->real, l);
}
int walCheckReserved(sqlite3_file* f, int* out) {
  return asWal(f)->real->pMethods->xCheckReservedLock(asWal(f)->real, out);
}
int walSectorSize(sqlite3_file* f) { return asWal(f)->real->pMethods->xSectorSize(asWal(f)->real); }
int walDevice(sqlite3_file* f) {
  return asWal(f)->real->pMethods->xDeviceCharacteristics(asWal(f)->real);
}

const sqlite3_io_methods kMethods = {
    1,  // no shared memory, no mmap: SQLite uses neither on a WAL file
    walClose, walRead,   walWrite,         walTruncate,    walSync,       walFileSize,
    walLock,  walUnlock, walCheckReserved, walFileControl, walSectorSize, walDevice,
    nullptr,  nullptr,   nullptr,          nullptr,        nullptr,       nullptr,
};

int walOpen(sqlite3_vfs* vfs, sqlite3_filename name, sqlite3_file* file, int flags,
            int* out_flags) {
  sqlite3_vfs* base = baseOf(vfs);
  if ((flags & SQLITE_OPEN_WAL) == 0) {
    return base->xOpen(base, name, file, flags, out_flags);  // the base's file, as it is
  }
  auto* w = new (file) WalFile{};
  w->file.pMethods = nullptr;
  w->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(file) + kHeadSize);
  w->real->pMethods = nullptr;
  const int rc = base->xOpen(base, name, w->real, flags, out_flags);
  if (w->real->pMethods == nullptr) {
    w->~WalFile();
    file->pMethods = nullptr;
    return rc;
  }
  w->file.pMethods = &kMethods;  // SQLite closes it through us even if the open failed
  w->changes = changesOf(rc == SQLITE_OK ? name : nullptr);
  // Direct writes only over the platform's own VFS (a test's fault-injecting VFS sees every
  // write), and only where the file system takes them (not tmpfs before Linux 6.6).
  if (rc == SQLITE_OK && std::strcmp(base->zName, "unix") == 0 && name != nullptr &&
      (flags & SQLITE_OPEN_READWRITE) != 0) {
    w->direct_path = name;  // valid until xClose (SQLite's promise for a file's name)
  }
  return rc;
}
int walDelete(sqlite3_vfs* v, const char* name, int sync) {
  return baseOf(v)->xDelete(baseOf(v), name, sync);
}
int walAccess(sqlite3_vfs* v, const char* name, int flags, int* out) {
  return baseOf(v)->xAccess(baseOf(v), name, flags, out);
}
int walFullPathname(sqlite3_vfs* v, const char* name, int n, char* out) {
  return baseOf(v)->xFullPathname(baseOf(v), name, n, out);
}
void* walDlOpen(sqlite3_vfs* v, const char* name) { return baseOf(v)->xDlOpen(baseOf(v), name); }
void walDlError(sqlite3_vfs* v, int n, char* out) { baseOf(v)->xDlError(baseOf(v), n, out); }
void (*walDlSym(sqlite3_vfs* v, void* h, const char* sym))(void) {
  return baseOf(v)->xDlSym(baseOf(v), h, sym);
}
void walDlClose(sqlite3_vfs* v, void* h) { baseOf(v)->xDlClose(baseOf(v), h); }
int walRandomness(sqlite3_vfs* v, int n, char* out) {
  return baseOf(v)->xRandomness(baseOf(v), n, out);
}
int walSleep(sqlite3_vfs* v, int us) { return baseOf(v)->xSleep(baseOf(v), us); }
int walCurrentTime(sqlite3_vfs* v, double* out) { return baseOf(v)->xCurrentTime(baseOf(v), out); }
int walGetLastError(sqlite3_vfs* v, int n, char* out) {
  return baseOf(v)->xGetLastError(baseOf(v), n, out);
}
int walCurrentTimeInt64(sqlite3_vfs* v, sqlite3_int64* out) {
  sqlite3_vfs* b = baseOf(v);
  if (b->iVersion >= 2 && b->xCurrentTimeInt64 != nullptr) {
    return b->xCurrentTimeInt64(b, out);
  }
  double days = 0;
  const int rc = b->xCurrentTime(b, &days);
  *out = static_cast<sqlite3_int64>(days * 86400000.0);
  return rc;
}

}  // namespace

const char* coalescingWalVfs() {
  static std::mutex mu;
  static std::vector<std::unique_ptr<Wrapper>> wrappers;
  if (sqlite3_initialize() != SQLITE_OK) {
    return nullptr;
  }
  sqlite3_vfs* base = sqlite3_vfs_find(nullptr);  // "unix", or a test's VFS made the default
  if (base == nullptr) {
    return nullptr;
  }
  std::lock_guard lock(mu);
  for (const auto& w : wrappers) {
    if (w->base == base || &w->vfs == base) {
      return w->vfs.zName;
    }
  }
  auto w = std::make_unique<Wrapper>();
  w->base = base;
  w->name = std::string("omniedge-wal-over-") + base->zName;
  sqlite3_vfs& v = w->vfs;
  v.iVersion = 2;
  v.szOsFile = static_cast<int>(kHeadSize) + base->szOsFile;
  v.mxPathname = base->mxPathname;
  v.zName = w->name.c_str();
  v.pAppData = w.get();
  v.xOpen = walOpen;
  v.xDelete = walDelete;
  v.xAccess = walAccess;
  v.xFullPathname = walFullPathname;
  v.xDlOpen = walDlOpen;
  v.xDlError = walDlError;
  v.xDlSym = walDlSym;
  v.xDlClose = walDlClose;
  v.xRandomness = walRandomness;
  v.xSleep = walSleep;
  v.xCurrentTime = walCurrentTime;
  v.xGetLastError = walGetLastError;
  v.xCurrentTimeInt64 = walCurrentTimeInt64;
  if (sqlite3_vfs_register(&v, 0) != SQLITE_OK) {
    return nullptr;
  }
  wrappers.push_back(std::move(w));
  return wrappers.back()->vfs.zName;
}

}  // namespace omniedge::store::detail
