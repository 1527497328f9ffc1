// data.dir/inbox.db: the durable inbound queue (see agent/api/inbox.h), the journal of the
// commands executed (so that a command id redelivered is answered again, never run twice), and
// a few small durable values (the profile cursor). Its own file and connection: the buffer's
// single writer is never shared, and these writes are rare and small.
#pragma once

#include <sqlite3.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/api/inbox.h"
#include "agent/api/result.h"

namespace omniedge::store {

struct InboxOptions {
  std::filesystem::path dir;        // the data dir; the file is dir/inbox.db
  int64_t max_bytes = 16LL << 20;   // sync.inbound_max_bytes: payload + topic bytes stored
  std::size_t max_commands = 1000;  // executed command ids remembered ...
  int64_t command_ttl_ms = 7LL * 24 * 3600 * 1000;  // ... and for at most this long
};

/// One command id the agent has seen.
struct CommandRecord {
  std::string id;
  std::string name;
  bool done = false;   // false: started but never finished (the agent stopped while running it)
  std::string result;  // the answer published, JSON, when done
  int64_t at_ms = 0;   // when it was first received
};

struct InboxStats {
  std::size_t pending = 0;    // messages stored, not yet handled
  int64_t pending_bytes = 0;  // their topic + payload bytes
  uint64_t stored = 0;        // put() since open
  uint64_t refused = 0;       // put() refused (full, io) since open
  std::size_t commands = 0;   // command ids remembered
};

class InboxStore final : public Inbox {
 public:
  /// Opens (creating) dir/inbox.db (WAL, synchronous=FULL: a put() survives a power cut).
  /// Fails with "io".
  static Result<std::unique_ptr<InboxStore>> open(const InboxOptions& options);
  ~InboxStore() override;
  InboxStore(const InboxStore&) = delete;
  InboxStore& operator=(const InboxStore&) = delete;

  // Inbox
  Result<int64_t> put(std::string_view topic, std::string_view payload) override;
  Result<std::vector<InboundMessage>> pending(std::size_t max) override;
  Result<void> remove(int64_t id) override;

  /// The record of command `id`, nullopt when never seen (or forgotten: older than the bounds).
  /// Thread: any. Fails "io".
  Result<std::optional<CommandRecord>> findCommand(const std::string& id);
  /// Records that command `id` is about to run (durably, before it runs: a crash while it runs
  /// leaves it "started", and it is then not run again). Forgets the oldest records beyond
  /// max_commands and those older than command_ttl_ms. Thread: any. Fails "io".
  Result<void> commandStarted(const std::string& id, const std::string& name, int64_t now_ms);
  /// Records the answer to command `id`. Thread: any. Fails "io".
  Result<void> commandFinished(const std::string& id, const std::string& result_json);
  /// The broker has the answer to command `id` (its PUBACK came). Thread: any. Fails "io".
  Result<void> commandReported(const std::string& id);
  /// Answers recorded but never acknowledged by the broker (the agent stopped first), oldest
  /// first, at most `max`: to be published again. Thread: any. Fails "io".
  Result<std::vector<CommandRecord>> unreportedCommands(std::size_t max);

  /// A small durable value ("" when unset). Thread: any. Fails "io".
  Result<std::string> meta(const std::string& key);
  /// Sets it ("" deletes it). Thread: any. Fails "io".
  Result<void> setMeta(const std::string& key, const std::string& value);

  /// Thread: any. Cheap (no scans).
  InboxStats stats() const;

 private:
  explicit InboxStore(InboxOptions options);
  struct Statements;
  Result<void> exec(const char* sql);

  InboxOptions options_;
  mutable std::mutex mu_;           // one connection, shared by Paho's callback and the sync thread
  sqlite3* db_ = nullptr;           // guarded by mu_
  std::unique_ptr<Statements> st_;  // guarded by mu_
  InboxStats stats_;                // guarded by mu_
};

}  // namespace omniedge::store
