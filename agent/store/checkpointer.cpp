#include "agent/store/checkpointer.h"

#include <string>

#include "agent/api/thread_name.h"

namespace omniedge::store::detail {

namespace {
// Passes over a WAL that keeps growing meanwhile: each copies what the one before left, which
// the writer added while it ran, so a few are enough unless the disk is slower than the intake
// (the writer then waits for the pass; see Buffer::maybeCheckpoint).
constexpr int kMaxCheckpoints = 8;
}  // namespace

Checkpointer::Checkpointer(sqlite3* db, int64_t frame_bytes, int64_t tail_bytes)
    : db_(db), frame_bytes_(frame_bytes), tail_bytes_(tail_bytes) {
  thread_ = std::thread([this] {
    nameThisThread("oe-checkpoint");
    loop();
  });
}

Checkpointer::~Checkpointer() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  sqlite3_close(db_);
}

void Checkpointer::request() {
  {
    std::lock_guard lock(mu_);
    if (requested_ || running_ || stopping_) {
      return;
    }
    requested_ = true;
  }
  cv_.notify_all();
}

bool Checkpointer::busy() const {
  std::lock_guard lock(mu_);
  return requested_ || running_;
}

Checkpointer::Outcome Checkpointer::take() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return !requested_ && !running_; });
  Outcome out = std::move(outcome_);
  outcome_ = Outcome{};
  return out;
}

void Checkpointer::loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return requested_ || stopping_; });
    if (stopping_) {
      requested_ = false;
      cv_.notify_all();
      return;
    }
    requested_ = false;
    running_ = true;
    lock.unlock();
    pass();
    lock.lock();
    running_ = false;
    cv_.notify_all();
  }
}

void Checkpointer::pass() {
  int rc = SQLITE_OK;
  int log = 0;
  int counted = 0;  // frames SQLite counts as in the file, from the last checkpoint that worked
  for (int i = 0; i < kMaxCheckpoints; ++i) {
    int copied = 0;
    rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
    if (rc != SQLITE_OK || copied <= counted) {
      break;  // failed, or held back by a reader
    }
    counted = copied;
    std::lock_guard lock(mu_);
    if (int64_t{log - counted} * frame_bytes_ <= tail_bytes_ || stopping_) {
      break;
    }
  }
  std::string error = rc != SQLITE_OK ? sqlite3_errmsg(db_) : "";
  // SQLite syncs the file only after a checkpoint that reached the end of the WAL, which a
  // pass beside a busy writer never does: without this, the writer's RESTART would wait for
  // the whole pass to reach the disk. Through SQLite's own file handle (its VFS, its flags).
  // Whenever SQLite counts frames as copied, whether or not they were synced before: a sync of
  // a clean file costs little, one skipped could let the WAL be rewound over unsynced pages.
  // An I/O error after frames were counted (the failing call may have been SQLite's own sync,
  // whose error a second sync would no longer see) counts as a failed sync.
  bool unsynced = counted > 0 && (rc & 0xff) == SQLITE_IOERR;
  if (unsynced) {
    error = "copying the WAL into buffer.db failed after part of it was counted as copied (" +
            error + ")";
  }
  if (rc == SQLITE_OK && counted > 0) {
    sqlite3_file* file = nullptr;
    int sync = sqlite3_file_control(db_, "main", SQLITE_FCNTL_FILE_POINTER, &file);
    if (sync == SQLITE_OK && file != nullptr && file->pMethods != nullptr) {
      sync = file->pMethods->xSync(file, SQLITE_SYNC_NORMAL);
    }
    if (sync != SQLITE_OK) {
      rc = sync;
      unsynced = true;
      error = std::string("syncing buffer.db after copying the WAL into it failed (") +
              sqlite3_errstr(sync) + ")";
    }
  }
  std::lock_guard lock(mu_);
  outcome_.copied = true;
  outcome_.frames = log;
  outcome_.unsynced = outcome_.unsynced || unsynced;
  if (rc != SQLITE_OK) {
    outcome_.rc = rc;
    outcome_.error = std::move(error);
  }
}

}  // namespace omniedge::store::detail
