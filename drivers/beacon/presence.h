// The presence engine (contract §8): sightings in, beacon.enter / beacon.zone_change /
// beacon.exit out. Pure: no threads, no I/O, time passed in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "agent/api/event.h"
#include "agent/api/result.h"
#include "drivers/beacon/gateway.h"

namespace omniedge::beacon {

struct PresenceOptions {
  std::map<std::string, std::string> zones;  // beacon.zones: scanner → zone
  int64_t exit_after_ms = 30'000;            // beacon.exit_after
  int enter_after_sightings = 3;             // beacon.enter_after_sightings
  int64_t enter_window_ms = 10'000;          // ... all within this window
  double ewma_alpha = 0.3;                   // weight of a new RSSI sample
  double switch_margin_db = 6.0;             // a new zone must be this much stronger ...
  int64_t switch_hold_ms = 5'000;            // ... for this long
  int64_t scanner_stale_ms = 10'000;         // a scanner unheard this long no longer competes
  std::size_t max_tracked = 10'000;          // beacon.max_tracked
  std::vector<std::string> ignore_prefixes;  // beacon.ignore_prefixes: staff and asset tags
  double path_loss_exponent = 2.5;           // n of the log-distance model
  int default_rssi_at_1m = -59;              // when neither frame nor gateway gives one
};

/// Counters since construction.
struct PresenceStats {
  uint64_t sightings = 0;  // accepted into the engine
  uint64_t ignored = 0;    // identity with an ignored prefix
  uint64_t refused = 0;    // new identity while max_tracked were tracked
  uint64_t enters = 0;
  uint64_t zone_changes = 0;
  uint64_t exits = 0;
  uint64_t forgotten = 0;   // tracks dropped after exit_after without ever entering
  std::size_t tracked = 0;  // now
};

/// "scanner=zone" items (beacon.zones) to a map. Fails with "invalid" naming the bad item.
/// Thread: any. Never throws.
Result<std::map<std::string, std::string>> parseZones(const std::vector<std::string>& items);

/// Distance in metres from the log-distance path-loss model:
/// d = 10 ^ ((rssi_at_1m - rssi) / (10 n)). Thread: any.
double estimateDistance(double rssi, int rssi_at_1m, double n);

/// Per identity: the RSSI of each scanner smoothed by an EWMA; a zone's RSSI is that of its
/// strongest fresh scanner; the identity is in the strongest zone, with hysteresis (a change
/// needs switch_margin_db held for switch_hold_ms). beacon.enter after enter_after_sightings
/// within enter_window_ms; beacon.exit (with dwell_ms) once unseen exit_after_ms.
/// Engine time is the sighting's timestamp when it has one, else `now_ms`; it never runs back.
/// Thread: one at a time (no locking). Never throws (but bad_alloc).
class PresenceEngine {
 public:
  /// Thread: any. Never fails.
  explicit PresenceEngine(PresenceOptions options);

  /// Feeds one sighting; events it causes (an enter, a zone change, exits of other identities
  /// that timed out meanwhile) are appended to `out`. Thread: the owner. Never blocks or fails.
  void observe(const Sighting& sighting, int64_t now_ms, std::vector<Event>& out);

  /// Advances time to `now_ms`: exits for identities unseen exit_after_ms, forgets stale tracks.
  /// Call about once a second. Thread: the owner. Never blocks or fails.
  void tick(int64_t now_ms, std::vector<Event>& out);

  /// Counters. Thread: the owner.
  PresenceStats stats() const;

 private:
  struct ScannerState {
    std::string scanner;
    double rssi = 0;  // smoothed
    int rssi_at_1m = 0;
    int64_t last_ms = 0;
  };
  struct Track {
    std::string identity;
    std::vector<ScannerState> scanners;  // a handful per identity
    std::vector<int64_t> recent;         // sighting times before the enter (≤ N)
    bool present = false;
    std::string zone;
    std::string candidate;        // a zone that beats `zone` by the margin ...
    int64_t candidate_since = 0;  // ... since then
    int64_t entered_ms = 0;
    int64_t last_seen_ms = 0;
    std::list<Track*>::iterator lru;
  };
  struct ZoneBest {
    std::string zone;
    const ScannerState* scanner = nullptr;
  };

  const std::string& zoneOf(const std::string& scanner) const;
  double zoneRssi(const Track& track, const std::string& zone, int64_t now) const;
  ZoneBest best(const Track& track, int64_t now) const;
  Event makeEvent(const char* type, const Track& track, const ScannerState& scanner,
                  int64_t at_ms) const;
  void expire(int64_t now, std::vector<Event>& out);

  PresenceOptions options_;
  int64_t now_ms_ = 0;
  std::unordered_map<std::string, Track> tracks_;
  std::list<Track*> lru_;  // most recently seen first
  PresenceStats stats_;
};

}  // namespace omniedge::beacon
