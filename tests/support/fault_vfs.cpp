#include "tests/support/fault_vfs.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <random>
#include <stdexcept>

namespace omniedge::testing {
namespace {

// One rule at a time, shared by every file the VFS opened (SQLite calls from many threads).
struct State {
  std::mutex mu;
  std::condition_variable cv;
  bool active = false;
  FaultVfs::Op op = FaultVfs::Op::kWrite;
  unsigned files = 0;
  int64_t skip = 0;
  int64_t times = 0;
  int error = SQLITE_IOERR;
  bool random = false;
  double p = 0;
  std::mt19937 rng;
  int64_t seen = 0;
  int64_t failed = 0;
  int64_t injected = 0;
  // holdNext()
  bool hold_armed = false;
  FaultVfs::Op hold_op = FaultVfs::Op::kSync;
  unsigned hold_files = 0;
  bool holding = false;
  bool released = false;
};

State& state() {
  static State s;
  return s;
}

sqlite3_vfs* g_real = nullptr;
sqlite3_vfs g_vfs;
bool g_registered = false;

struct File {
  sqlite3_file base;
  sqlite3_file* real;
  unsigned kind;
};

File* self(sqlite3_file* f) { return reinterpret_cast<File*>(f); }

// Decides, for one operation, whether to wait and whether to fail. Returns 0 or an error.
int check(FaultVfs::Op op, unsigned kind) {
  auto& s = state();
  std::unique_lock lock(s.mu);
  if (s.hold_armed && s.hold_op == op && (s.hold_files & kind) != 0) {
    s.hold_armed = false;
    s.holding = true;
    s.released = false;
    s.cv.notify_all();
    s.cv.wait(lock, [&] { return s.released; });
    s.holding = false;
    return 0;  // the held operation itself then goes ahead normally
  }
  if (!s.active || s.op != op || (s.files & kind) == 0) {
    return 0;
  }
  bool fail = false;
  if (s.random) {
    fail = std::uniform_real_distribution<double>(0, 1)(s.rng) < s.p;
  } else {
    ++s.seen;
    fail = s.seen > s.skip && (s.times < 0 || s.failed < s.times);
  }
  if (!fail) {
    return 0;
  }
  ++s.failed;
  ++s.injected;
  return s.error;
}

int xClose(sqlite3_file* f) {
  File* p = self(f);
  int rc = SQLITE_OK;
  if (p->real->pMethods != nullptr) {
    rc = p->real->pMethods->xClose(p->real);
  }
  p->real->pMethods = nullptr;
  return rc;
}
int xRead(sqlite3_file* f, void* buf, int n, sqlite3_int64 off) {
  if (int e = check(FaultVfs::Op::kRead, self(f)->kind)) {
    return e;
  }
  return self(f)->real->pMethods->xRead(self(f)->real, buf, n, off);
}
int xWrite(sqlite3_file* f, const void* buf, int n, sqlite3_int64 off) {
  if (int e = check(FaultVfs::Op::kWrite, self(f)->kind)) {
    return e;
  }
  return self(f)->real->pMethods->xWrite(self(f)->real, buf, n, off);
}
int xTruncate(sqlite3_file* f, sqlite3_int64 size) {
  if (int e = check(FaultVfs::Op::kTruncate, self(f)->kind)) {
    return e;
  }
  return self(f)->real->pMethods->xTruncate(self(f)->real, size);
}
int xSync(sqlite3_file* f, int flags) {
  if (int e = check(FaultVfs::Op::kSync, self(f)->kind)) {
    return e;
  }
  return self(f)->real->pMethods->xSync(self(f)->real, flags);
}
int xFileSize(sqlite3_file* f, sqlite3_int64* size) {
  return self(f)->real->pMethods->xFileSize(self(f)->real, size);
}
int xLock(sqlite3_file* f, int l) { return self(f)->real->pMethods->xLock(self(f)->real, l); }
int xUnlock(sqlite3_file* f, int l) { return self(f)->real->pMethods->xUnlock(self(f)->real, l); }
int xCheckReservedLock(sqlite3_file* f, int* out) {
  return self(f)->real->pMethods->xCheckReservedLock(self(f)->real, out);
}
int xFileControl(sqlite3_file* f, int op, void* arg) {
  return self(f)->real->pMethods->xFileControl(self(f)->real, op, arg);
}
int xSectorSize(sqlite3_file* f) { return self(f)->real->pMethods->xSectorSize(self(f)->real); }
int xDeviceCharacteristics(sqlite3_file* f) {
  return self(f)->real->pMethods->xDeviceCharacteristics(self(f)->real);
}
int xShmMap(sqlite3_file* f, int pg, int sz, int extend, void volatile** out) {
  return self(f)->real->pMethods->xShmMap(self(f)->real, pg, sz, extend, out);
}
int xShmLock(sqlite3_file* f, int offset, int n, int flags) {
  return self(f)->real->pMethods->xShmLock(self(f)->real, offset, n, flags);
}
void xShmBarrier(sqlite3_file* f) { self(f)->real->pMethods->xShmBarrier(self(f)->real); }
int xShmUnmap(sqlite3_file* f, int del) {
  return self(f)->real->pMethods->xShmUnmap(self(f)->real, del);
}
int xFetch(sqlite3_file* f, sqlite3_int64 off, int n, void** out) {
  return self(f)->real->pMethods->xFetch(self(f)->real, off, n, out);
}
int xUnfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  return self(f)->real->pMethods->xUnfetch(self(f)->real, off, p);
}

sqlite3_io_methods g_methods_v3 = {3,
                                   xClose,
                                   xRead,
                                   xWrite,
                                   xTruncate,
                                   xSync,
                                   xFileSize,
                                   xLock,
                                   xUnlock,
                                   xCheckReservedLock,
                                   xFileControl,
                                   xSectorSize,
                                   xDeviceCharacteristics,
                                   xShmMap,
                                   xShmLock,
                                   xShmBarrier,
                                   xShmUnmap,
                                   xFetch,
                                   xUnfetch};
sqlite3_io_methods g_methods_v1 = {1,
                                   xClose,
                                   xRead,
                                   xWrite,
                                   xTruncate,
                                   xSync,
                                   xFileSize,
                                   xLock,
                                   xUnlock,
                                   xCheckReservedLock,
                                   xFileControl,
                                   xSectorSize,
                                   xDeviceCharacteristics,
                                   nullptr,
                                   nullptr,
                                   nullptr,
                                   nullptr,
                                   nullptr,
                                   nullptr};

constexpr std::size_t kRealOffset = (sizeof(File) + 15) / 16 * 16;

int vOpen(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  File* p = self(f);
  p->real = reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(f) + kRealOffset);
  p->real->pMethods = nullptr;
  p->kind = (flags & SQLITE_OPEN_MAIN_DB) != 0 ? FaultVfs::kMainDb
            : (flags & SQLITE_OPEN_WAL) != 0   ? FaultVfs::kWal
                                               : FaultVfs::kJournal;
  const int rc = g_real->xOpen(g_real, name, p->real, flags, out_flags);
  if (p->real->pMethods == nullptr) {
    p->base.pMethods = nullptr;
    return rc;
  }
  p->base.pMethods = p->real->pMethods->iVersion >= 3 ? &g_methods_v3 : &g_methods_v1;
  return rc;
}
int vDelete(sqlite3_vfs*, const char* name, int sync) {
  return g_real->xDelete(g_real, name, sync);
}
int vAccess(sqlite3_vfs*, const char* name, int flags, int* out) {
  return g_real->xAccess(g_real, name, flags, out);
}
int vFullPathname(sqlite3_vfs*, const char* name, int n, char* out) {
  return g_real->xFullPathname(g_real, name, n, out);
}
void* vDlOpen(sqlite3_vfs*, const char* name) { return g_real->xDlOpen(g_real, name); }
void vDlError(sqlite3_vfs*, int n, char* out) { g_real->xDlError(g_real, n, out); }
void (*vDlSym(sqlite3_vfs*, void* h, const char* sym))(void) {
  return g_real->xDlSym(g_real, h, sym);
}
void vDlClose(sqlite3_vfs*, void* h) { g_real->xDlClose(g_real, h); }
int vRandomness(sqlite3_vfs*, int n, char* out) { return g_real->xRandomness(g_real, n, out); }
int vSleep(sqlite3_vfs*, int us) { return g_real->xSleep(g_real, us); }
int vCurrentTime(sqlite3_vfs*, double* out) { return g_real->xCurrentTime(g_real, out); }
int vGetLastError(sqlite3_vfs*, int n, char* out) { return g_real->xGetLastError(g_real, n, out); }
int vCurrentTimeInt64(sqlite3_vfs*, sqlite3_int64* out) {
  return g_real->xCurrentTimeInt64(g_real, out);
}

}  // namespace

FaultVfs::FaultVfs() {
  if (g_registered) {
    throw std::logic_error("one FaultVfs at a time");
  }
  sqlite3_initialize();
  g_real = sqlite3_vfs_find(nullptr);
  std::memset(&g_vfs, 0, sizeof g_vfs);
  g_vfs.iVersion = 2;
  g_vfs.szOsFile = static_cast<int>(kRealOffset) + g_real->szOsFile;
  g_vfs.mxPathname = g_real->mxPathname;
  g_vfs.zName = "omniedge-fault";
  g_vfs.xOpen = vOpen;
  g_vfs.xDelete = vDelete;
  g_vfs.xAccess = vAccess;
  g_vfs.xFullPathname = vFullPathname;
  g_vfs.xDlOpen = vDlOpen;
  g_vfs.xDlError = vDlError;
  g_vfs.xDlSym = vDlSym;
  g_vfs.xDlClose = vDlClose;
  g_vfs.xRandomness = vRandomness;
  g_vfs.xSleep = vSleep;
  g_vfs.xCurrentTime = vCurrentTime;
  g_vfs.xGetLastError = vGetLastError;
  g_vfs.xCurrentTimeInt64 = vCurrentTimeInt64;
  clear();
  {
    auto& s = state();
    std::lock_guard lock(s.mu);
    s.injected = 0;
    s.hold_armed = false;
    s.holding = false;
  }
  sqlite3_vfs_register(&g_vfs, 1);
  g_registered = true;
}

FaultVfs::~FaultVfs() {
  release();
  clear();
  sqlite3_vfs_unregister(&g_vfs);
  sqlite3_vfs_register(g_real, 1);
  g_registered = false;
}

void FaultVfs::fail(Op op, unsigned files, int64_t skip, int64_t times, int error) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.active = true;
  s.random = false;
  s.op = op;
  s.files = files;
  s.skip = skip;
  s.times = times;
  s.error = error;
  s.seen = 0;
  s.failed = 0;
}

void FaultVfs::failRandomly(Op op, unsigned files, double p, uint32_t seed, int error) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.active = true;
  s.random = true;
  s.op = op;
  s.files = files;
  s.p = p;
  s.rng.seed(seed);
  s.error = error;
  s.seen = 0;
  s.failed = 0;
}

void FaultVfs::clear() {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.active = false;
}

int64_t FaultVfs::injected() const {
  auto& s = state();
  std::lock_guard lock(s.mu);
  return s.injected;
}

void FaultVfs::holdNext(Op op, unsigned files) {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.hold_armed = true;
  s.hold_op = op;
  s.hold_files = files;
  s.released = false;
}

bool FaultVfs::waitHeld(int timeout_ms) const {
  auto& s = state();
  std::unique_lock lock(s.mu);
  return s.cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return s.holding; });
}

void FaultVfs::release() {
  auto& s = state();
  std::lock_guard lock(s.mu);
  s.hold_armed = false;
  s.released = true;
  s.cv.notify_all();
}

}  // namespace omniedge::testing
