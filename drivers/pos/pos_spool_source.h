// The POS spool (contract §8): POSLog XML and JSON transaction files dropped into a directory
// become pos.* events, exactly once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>

#include "agent/api/event_writer.h"
#include "agent/api/result.h"
#include "agent/api/source.h"
#include "drivers/pos/transaction.h"

namespace omniedge::pos {

struct PosSpoolOptions {
  std::filesystem::path spool_dir;  // pos.spool_dir
  std::string store_id;             // store.id: the first part of every event id
  bool keep_processed = true;       // pos.keep_processed: false deletes a file once durable
  int keep_processed_days = 7;      // pos.keep_processed_days: processed/ files older than this
                                    // are deleted; 0 deletes a file once durable
  int rescan_interval_s = 10;       // pos.rescan_interval: full rescans besides inotify
  std::size_t max_file_bytes = std::size_t{64} << 20;     // pos.max_file_bytes: bigger: rejected
  std::size_t max_parse_memory = kDefaultMaxParseMemory;  // pos.max_parse_memory, per file
  // Tuning, not configuration keys:
  int settle_ms = 1000;         // a file found by a scan is left alone until unchanged this long
  int retry_backoff_ms = 1000;  // after the writer pushed back ("full", "stopping", "io")
  int prune_interval_s = 3600;  // how often processed/ is checked for files past their days
  // TEST ONLY: poll() returns right after a successful append, leaving the file in place, as
  // if the agent were killed between the commit and the move. A new source over the same
  // directory then reads the file again and yields the same ids (the buffer ignores them).
  bool crash_after_append = false;
};

/// What the spool has done since it was made. Thread: any (a copy).
struct PosSpoolStats {
  uint64_t files_processed = 0;   // appended and moved (or deleted)
  uint64_t files_rejected = 0;    // moved to rejected/ with a .error
  uint64_t budget_refusals = 0;   // of those, over pos.max_file_bytes or pos.max_parse_memory
  uint64_t events = 0;            // events appended (duplicates included)
  uint64_t duplicates = 0;        // of those, ids the buffer already had
  uint64_t retries = 0;           // appends the writer pushed back
  uint64_t processed_pruned = 0;  // processed/ files deleted after pos.keep_processed_days
  std::string last_error;         // the newest rejection or push-back, for status
  std::string last_rejected;      // "<file>: <why> (line, element)": the newest rejection
};

/// Reads spool_dir: `*.xml` (ARTS POSLog), `*.json` (one transaction or an array) and `*.jsonl`
/// (one per line), oldest first (mtime, then name). A file's events go to the writer in ONE
/// append (all or nothing); only once that succeeded is the file moved to processed/ (its
/// mtime set to then) or deleted, and the directory fsynced. Files in processed/ whose mtime is
/// more than keep_processed_days old are deleted (checked at the first poll and then every
/// prune_interval_s). A file that cannot be read as a whole goes to rejected/ with
/// `<name>.error` (why, line, element); so does one over max_file_bytes (never read) or one
/// whose parse would hold more than max_parse_memory (the parse stops there). When the writer
/// pushes back, the file stays and is tried again about retry_backoff_ms later. Dotfiles, `*.tmp`,
/// `*.part` and files changed within settle_ms (unless they arrived by rename) are left alone.
/// Event ids are deterministic, so a file read twice (a crash between append and move) gives
/// duplicates only.
class PosSpoolSource final : public Source {
 public:
  /// Does no I/O: the directories and the inotify watch are made by the first poll().
  explicit PosSpoolSource(PosSpoolOptions options);
  /// Closes the inotify and wake descriptors; files are left as they are.
  /// Thread: the owner's, once poll() has returned for good. Never blocks or throws.
  ~PosSpoolSource() override;
  PosSpoolSource(const PosSpoolSource&) = delete;
  PosSpoolSource& operator=(const PosSpoolSource&) = delete;

  // Source
  /// "pos". Thread: any. Never fails.
  std::string_view name() const override;
  /// Creates processed/ and rejected/ and the inotify watch when missing, handles the files
  /// that are ready (for about a second at most), else waits up to 500 ms for one to arrive.
  /// Thread: the source's own (never concurrently). Blocks for parsing, the writer's append
  /// (its group commit) and file moves; returns within about a second of `stop`.
  /// Fails with the writer's error ("full", "stopping", "io": the file stays for a retry) or
  /// "io" when the spool directory cannot be used. A rejected file is not a failure of poll().
  /// Never throws.
  Result<void> poll(EventWriter& out, std::stop_token stop) override;

  /// For `omniedge status`: input_errors = files rejected, last_input_error = the newest
  /// rejected file's name and why, counters files_processed, files_rejected, budget_refusals,
  /// events, duplicates, retries, processed_pruned. Thread: any. Blocks only on a short
  /// internal lock. Never fails or throws (but bad_alloc).
  SourceHealth health() const override;

  /// Counters since construction. Thread: any. Blocks only on a short internal lock.
  PosSpoolStats stats() const;

 private:
  struct Candidate;
  struct Observation {  // a file as a scan last saw it
    int64_t size = 0;
    int64_t mtime_ns = 0;
    int64_t since_ms = 0;  // steady clock: unchanged since
    int64_t first_ms = 0;  // steady clock: first seen
  };
  enum class Outcome { kDone, kSkipped, kCrashed };

  Result<void> setUp();
  void closeWatch();
  bool drainEvents();
  bool wait(std::stop_token stop, int timeout_ms);
  Result<std::size_t> scanAndProcess(EventWriter& out, std::stop_token stop);
  bool settled(const Candidate& file, int64_t now_ms);
  Result<Outcome> processFile(const Candidate& file, EventWriter& out);
  // Moves the file to rejected/ with its .error; `over_budget`: refused for its size alone.
  Result<void> reject(const std::string& name, const ParseError& error, bool over_budget = false);
  Result<void> finish(const std::string& name);
  void countError(const std::string& text, bool rejected);
  void pruneProcessed();

  const PosSpoolOptions options_;
  const std::filesystem::path processed_dir_;
  const std::filesystem::path rejected_dir_;
  int inotify_fd_ = -1;  // poll() thread only, as is everything down to stats_mu_
  int watch_ = -1;
  int wake_fd_ = -1;  // an eventfd: a stop request ends a wait at once
  bool set_up_ = false;
  bool dirty_ = true;              // a scan is due: events came, files were left for later
  std::set<std::string> renamed_;  // names that arrived by rename: complete at once
  std::map<std::string, Observation> seen_;  // files not yet settled
  int64_t next_rescan_ms_ = 0;               // steady clock
  int64_t retry_at_ms_ = 0;                  // steady clock; no appends before
  int64_t next_settle_ms_ = 0;               // steady clock; when a waiting file may be ready
  int64_t next_prune_ms_ = 0;                // steady clock; when processed/ is checked next

  mutable std::mutex stats_mu_;
  PosSpoolStats stats_;  // guarded by stats_mu_
};

/// The POS spool as the agent runs it (one thread calling poll()).
/// Thread: any. Does no I/O. Never fails or throws (but bad_alloc).
std::unique_ptr<Source> makePosSpool(PosSpoolOptions options);

}  // namespace omniedge::pos
