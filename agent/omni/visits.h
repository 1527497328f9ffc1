// Store-visit journeys and attribution (docs/omnichannel.md). The events of one customer in the
// store (beacon enter, zone changes and exit, kiosk interactions, POS transactions, triggers
// shown), joined by any identity key their profile links, become one open visit; the visit
// closes on beacon.exit or after visits.timeout without an event of the customer, and is then
// emitted once as a `visit.summary` event whose id is derived from the visit (a resend after a
// crash carries the same id: the buffer and the centre de-duplicate on it). Open visits live
// in data.dir/visits.db, so that a visit survives a restart and works with the uplink down.
// A pos.transaction of a known customer gets `data.attribution` before it is stored: the
// in-store touchpoints of the open visit before it and the lines that were in the customer's
// cross-channel cart.
#pragma once

#include <sqlite3.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "agent/api/clock.h"
#include "agent/api/event_hooks.h"
#include "agent/api/event_writer.h"
#include "agent/api/personal_data.h"
#include "agent/api/result.h"

namespace omniedge::store {
class ProfileCache;
}  // namespace omniedge::store

namespace omniedge::omni {

struct VisitOptions {
  std::filesystem::path dir;  // visits.db goes here
  std::string store_id;
  bool synchronous_full = true;                  // buffer.synchronous
  int64_t timeout_ms = int64_t{30} * 60 * 1000;  // visits.timeout
  std::size_t max_bytes = std::size_t{8} << 20;  // visits.max_bytes: the open visits' state
};

/// For status and tests.
struct VisitStats {
  std::size_t open = 0;          // visits open now (closing ones included)
  std::size_t bytes = 0;         // their state, as kept in visits.db
  uint64_t emitted = 0;          // visit.summary events made durable since start
  uint64_t refused = 0;          // events of customers who refused tracking: no journey
  uint64_t capacity_closed = 0;  // visits closed early to stay under visits.max_bytes
  std::string last_error;        // the newest failure to persist or emit, "" when none
};

class VisitTracker final : public EventObserver, public EventEnricher, public PersonalData {
 public:
  /// Opens (creating) options.dir/visits.db and loads the visits open at the last stop (or
  /// crash). `profiles` (may be null: then only the events' own keys join) must outlive the
  /// tracker. Fails "io". Thread: the owner's; reads the whole (bounded) state once.
  static Result<std::unique_ptr<VisitTracker>> open(const VisitOptions& options,
                                                    const store::ProfileCache* profiles,
                                                    const Clock& clock);
  ~VisitTracker() override;
  VisitTracker(const VisitTracker&) = delete;
  VisitTracker& operator=(const VisitTracker&) = delete;

  /// Starts the visit thread, which persists the visits, closes them and appends their
  /// summaries to `out` (which must outlive stop()). Thread: the owner's.
  void start(EventWriter& out);
  /// Stops the visit thread within about a second; open visits stay in visits.db.
  /// Thread: the owner's. Idempotent.
  void stop();

  /// One round of the visit thread's work on the caller's thread: persists the visits that
  /// changed, closes the visits whose exit came or whose timeout passed (or the least recently
  /// heard past visits.max_bytes), and appends their summaries to `out`; a summary the buffer
  /// cannot take now ("full", "io", "stopping") stays closing and is tried again next round,
  /// one too large goes with less detail. Returns how many summaries became durable.
  /// Thread: the visit thread (each second, and at once when a visit changed), or a test's
  /// without start(); never two at once. Blocks on visits.db and on `out`.
  std::size_t step(EventWriter& out);

  /// Thread: any. Never blocks on I/O.
  VisitStats stats() const;

  // EventObserver
  /// Joins the events that can belong to a journey (beacon presence, kiosk, POS transactions,
  /// triggers shown, with a customer) into the open visits in memory at once, so that the
  /// next event's attribution sees them; the visit thread persists them and closes visits.
  /// Thread: any producer's; memory, and at most one profile-cache read per event.
  void onStored(const std::vector<const Event*>& events) override;

  // EventEnricher
  /// Adds data.attribution to a pos.transaction whose customer is known (a profile, or an
  /// open visit): the visit's touchpoints so far and the lines in the customer's cart. Leaves
  /// the data's own bytes as they are (amounts keep the till's digits). Thread: any; memory
  /// and at most one profile-cache read.
  void enrich(Event& event) const override;

  // PersonalData
  std::string_view name() const override { return "visits"; }
  /// Drops the open (and closing) visits of the subject known by any of `keys`, from memory
  /// and visits.db (secure_delete, then a WAL checkpoint TRUNCATE), without a summary; returns
  /// how many. Fails "io" (the rows are then deleted at the next round; the checkpoint is
  /// retried by the next forget). Thread: any; waits for the visit thread's current round.
  Result<int64_t> forget(const SubjectKeys& keys) override;

 private:
  struct Visit;

  VisitTracker(const VisitOptions& options, const store::ProfileCache* profiles,
               const Clock& clock);
  Result<void> openDb();
  Result<void> load();
  void run(std::stop_token stop, EventWriter* out);

  // The keys an event's customer is known by, canonical ("loyalty:L1", "ibeacon:…"), with its
  // profile's when the cache knows it; `profile_id` is set when it does.
  std::vector<std::string> keysOf(const std::map<std::string, std::string>& customer,
                                  std::string* profile_id, nlohmann::json* profile) const;
  // state_mu_ held.
  Visit* findLocked(const std::vector<std::string>& keys) const;
  void indexLocked(Visit& v, const std::vector<std::string>& keys);
  void eraseLocked(const std::string& id);

  const VisitOptions options_;
  const store::ProfileCache* profiles_;
  const Clock& clock_;

  std::mutex db_mu_;       // one round of work or one erasure at a time; before state_mu_
  sqlite3* db_ = nullptr;  // guarded by db_mu_
  sqlite3_stmt* put_ = nullptr;
  sqlite3_stmt* drop_ = nullptr;

  mutable std::mutex state_mu_;
  std::map<std::string, std::unique_ptr<Visit>> visits_;  // by visit id; guarded by state_mu_
  // Customer key -> id of the customer's open visit (closing ones are not indexed: the
  // customer's next event starts a new visit). Guarded by state_mu_.
  std::unordered_map<std::string, std::string> subject_by_key_;
  std::vector<std::string> erased_;  // visits dropped from memory, still in visits.db; state_mu_
  std::size_t bytes_ = 0;            // guarded by state_mu_
  VisitStats counters_;              // guarded by state_mu_

  std::mutex queue_mu_;
  std::condition_variable_any queue_cv_;
  bool wake_ = false;  // guarded by queue_mu_: a visit changed, the visit thread has work

  std::jthread thread_;
};

/// The id of a visit: a UUID-shaped SHA-256 of the store, the subject and the start (version
/// nibble 8, RFC 9562 "custom"), so that the summary of a visit always has the same id.
std::string visitId(std::string_view store_id, std::string_view subject, int64_t started_ms);

}  // namespace omniedge::omni
