// A fault-injecting SQLite VFS for tests: it wraps the platform's VFS and, on command, makes
// chosen file operations fail (SQLITE_IOERR_*, SQLITE_FULL) or wait, deterministically.
//
// While a FaultVfs object lives it is SQLite's DEFAULT VFS, so code under test that opens a
// database with no VFS name (store::Buffer) goes through it unchanged. Create it before, and
// destroy it after, every connection the test opens.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>

namespace omniedge::testing {

class FaultVfs {
 public:
  enum class Op { kRead, kWrite, kSync, kTruncate };
  /// Which files a rule applies to (the kind SQLite opened them as).
  enum Files : unsigned {
    kMainDb = 1,
    kWal = 2,
    kJournal = 4,  // rollback journals, statement journals, temp files
    kAnyFile = 7,
  };

  FaultVfs();
  ~FaultVfs();
  FaultVfs(const FaultVfs&) = delete;
  FaultVfs& operator=(const FaultVfs&) = delete;

  /// From now on, the (skip+1)th to (skip+times)th `op` on `files` fail with `error` (an
  /// SQLite extended code, e.g. SQLITE_IOERR_WRITE or SQLITE_FULL) without touching the file;
  /// times < 0: every one after `skip`. Replaces the previous rule and resets its counters.
  void fail(Op op, unsigned files, int64_t skip, int64_t times, int error);
  /// Every `op` on `files` fails with `error` with probability `p` (a generator seeded with
  /// `seed`: the same seed, the same sequence of decisions).
  void failRandomly(Op op, unsigned files, double p, uint32_t seed, int error);
  /// No more failures.
  void clear();
  /// How many operations failed because of a rule since this object was made.
  int64_t injected() const;

  /// The next `op` on `files` waits (holding up the thread that does it) until release(), and
  /// then goes ahead without failing.
  void holdNext(Op op, unsigned files);
  /// Waits until an operation is held (false after `timeout_ms`).
  bool waitHeld(int timeout_ms) const;
  void release();
};

}  // namespace omniedge::testing
