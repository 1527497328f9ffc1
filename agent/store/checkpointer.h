// The buffer's background checkpoint: copies the WAL into buffer.db on its own thread and its
// own connection, so that the writer goes on committing meanwhile. Internal to agent/store.
//
// Why: a checkpoint writes every page of the WAL into the file and fsyncs the file; on the
// writer it stalled every producer for that long (under the kiosk load, ingest ran 1.5-1.75x
// faster with no checkpoint at all; docs/benchmarks.md, "The checkpoint off the writer"). SQLite's
// PASSIVE checkpoint never blocks a writer, so it runs here; what only the writer can do (RESTART,
// which rewinds the WAL and so keeps it bounded; TRUNCATE) stays on the writer, and then only has
// the last few commits left to copy.
#pragma once

#include <sqlite3.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace omniedge::store::detail {

class Checkpointer {
 public:
  /// Takes `db` (a connection to the same file, closed by the destructor). A pass copies the
  /// WAL until at most `tail_bytes` of it are left uncopied, or it can copy no more (a reader
  /// still reads older pages), in a bounded number of PASSIVE checkpoints.
  Checkpointer(sqlite3* db, int64_t frame_bytes, int64_t tail_bytes);
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  /// What the last pass left: SQLite's code and message when a checkpoint failed.
  struct Outcome {
    bool copied = false;  // a pass ended since the last take()
    int64_t frames = 0;   // the WAL's frames when it ended (more than now: rewound since)
    // Pages were copied into the file and its sync failed: SQLite counts them as copied, and the
    // kernel may have dropped them (a failed fsync can mark the pages clean), so only a WAL
    // kept until the next start, whose recovery copies every frame again, still holds them.
    bool unsynced = false;
    int rc = SQLITE_OK;
    std::string error;
  };

  /// Asks for a pass; does nothing when one is asked for or running.
  void request();
  /// True while a pass is asked for or running.
  bool busy() const;
  /// Waits until no pass is asked for or running, then returns (and forgets) what the last one
  /// left. The writer calls it before its own checkpoints (only one checkpoint runs at a time).
  Outcome take();

 private:
  void loop();
  void pass();

  sqlite3* db_;
  const int64_t frame_bytes_;
  const int64_t tail_bytes_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool requested_ = false;  // guarded by mu_
  bool running_ = false;    // guarded by mu_
  bool stopping_ = false;   // guarded by mu_
  Outcome outcome_;         // guarded by mu_
  std::thread thread_;
};

}  // namespace omniedge::store::detail
