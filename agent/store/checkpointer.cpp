#include "agent/store/checkpointer.h"

#include <string>

namespace omniedge::store::detail {

namespace {
// Passes over a WAL that keeps growing meanwhile: each copies what the one before left, which
// the writer added while it ran, so a few are enough unless the disk is slower than the intake
// (the writer then waits for the pass; see Buffer::maybeCheckpoint).
constexpr int kMaxCheckpoints = 8;
}  // namespace

Checkpointer::Checkpointer(sqlite3* db, int64_t frame_bytes, int64_t tail_bytes)
    : db_(db), frame_bytes_(frame_bytes), tail_bytes_(tail_bytes) {
  thread_ = std::thread([this] { loop(); });
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
  bool progress = false;
  for (int i = 0; i < kMaxCheckpoints; ++i) {
    int copied = 0;
    rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log, &copied);
    // `copied` counts from the WAL's start; a shorter WAL than last time was rewound since.
    const int before = log >= last_log_ ? last_copied_ : 0;
    last_log_ = log;
    last_copied_ = copied;
    if (rc != SQLITE_OK || copied <= before) {
      break;  // failed, or held back by a reader
    }
    progress = true;
    std::lock_guard lock(mu_);
    if (int64_t{log - copied} * frame_bytes_ <= tail_bytes_ || stopping_) {
      break;
    }
  }
  std::string error = rc != SQLITE_OK ? sqlite3_errmsg(db_) : "";
  // SQLite syncs the file only after a checkpoint that reached the end of the WAL, which a
  // pass beside a busy writer never does: without this, the writer's RESTART would wait for
  // the whole pass to reach the disk. Through SQLite's own file handle (its VFS, its flags).
  bool unsynced = false;
  if (rc == SQLITE_OK && progress) {
    sqlite3_file* file = nullptr;
    int sync = sqlite3_file_control(db_, "main", SQLITE_FCNTL_FILE_POINTER, &file);
    if (sync == SQLITE_OK && file != nullptr && file->pMethods != nullptr) {
      sync = file->pMethods->xSync(file, SQLITE_SYNC_NORMAL);
    }
    if (sync != SQLITE_OK) {
      rc = sync;
      unsynced = true;
      error = "syncing buffer.db after copying the WAL into it failed (SQLite code " +
              std::to_string(sync) + ")";
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
