// The buffer file as the CLI reads it without the daemon's help: read-only (see
// agent/store/buffer_reader.h), pending events and the delivered ones buffer.retain_delivered
// keeps, merged in seq order.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "agent/api/result.h"
#include "agent/store/buffer_reader.h"

namespace omniedge::cli {

struct BufferRow {
  int64_t seq = 0;
  std::string type;
  std::string body;  // the envelope as JSON
  int64_t received_ms = 0;
  bool pending = true;
};

/// Which events a scan visits.
struct Scan {
  int64_t after_seq = 0;           // seq > after_seq
  int64_t before_seq = INT64_MAX;  // seq < before_seq
  std::string glob = "*";          // type GLOB
  int64_t since_ms = INT64_MIN;    // received_ms >= since_ms
  int64_t until_ms = INT64_MAX;    // received_ms < until_ms
  bool pending_only = false;
  bool newest_first = false;
};

class BufferFile {
 public:
  /// Opens data dir's buffer read-only; errors as store::openBufferReadOnly().
  static Result<BufferFile> open(const std::filesystem::path& dir);

  store::ReadMode mode() const { return mode_; }
  sqlite3* db() const { return db_.get(); }
  bool hasTable(const std::string& name) const;
  /// The first column of the first row of `sql`, or nullopt (no row, or an error).
  std::optional<int64_t> integer(const std::string& sql) const;

  /// Calls `visit` for each event of `scan` in seq order until it returns false. Fails "io"
  /// with SQLite's message when the file cannot be read.
  Result<void> scan(const Scan& scan, const std::function<bool(BufferRow&&)>& visit) const;
  /// The highest seq stored (pending or retained), 0 when empty.
  int64_t maxSeq() const;
  /// The events pending (a row of several events counts each of them).
  int64_t pendingEvents() const;

 private:
  BufferFile(std::shared_ptr<sqlite3> db, store::ReadMode mode) : db_(std::move(db)), mode_(mode) {}
  std::shared_ptr<sqlite3> db_;
  store::ReadMode mode_;
};

}  // namespace omniedge::cli
