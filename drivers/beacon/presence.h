// The presence engine (contract §8): sightings in, beacon.enter / beacon.zone_change /
// beacon.exit out. Pure: no threads, no I/O, time passed in.
#pragma once

#include <cstddef>
#include <cstdint>
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
  std::map<std::string, std::string> zones;       // beacon.zones: scanner → zone
  std::map<std::string, double> scanner_offsets;  // beacon.scanner_offsets: dB added to a
                                                  // scanner's RSSI (+: it hears too weakly)
  int64_t exit_after_ms = 30'000;                 // beacon.exit_after
  int enter_after_sightings = 3;                  // beacon.enter_after_sightings (any scanners)
  int64_t window_ms = 5'000;                      // beacon.window: evidence before the enter
  double switch_margin_db = 6.0;                  // beacon.switch_margin_db: a new zone must be
                                                  // this much nearer (in dB of path loss) ...
  int64_t switch_hold_ms = 5'000;                 // beacon.switch_hold: ... for this long
  double ewma_alpha = 0.3;                        // weight of a new (median-of-3) sample
  int64_t scanner_stale_ms = 10'000;              // a scanner unheard this long no longer competes
  std::size_t max_tracked = 10'000;               // beacon.max_tracked
  std::size_t max_state_bytes = 8u << 20;         // beacon.max_state_bytes
  std::vector<std::string> ignore_prefixes;       // beacon.ignore_prefixes: staff and asset tags
  double path_loss_exponent = 2.5;                // n of the log-distance model
  int default_rssi_at_1m = -59;                   // when neither frame nor gateway gives one
};

/// Counters since construction.
struct PresenceStats {
  uint64_t sightings = 0;        // accepted into the engine
  uint64_t ignored = 0;          // identity with an ignored prefix
  uint64_t refused = 0;          // new identity while max_tracked were tracked
  uint64_t refused_bytes = 0;    // refused because the state would pass max_state_bytes
  uint64_t refused_invalid = 0;  // empty or over-long identity or scanner (parse checks them)
  uint64_t enters = 0;
  uint64_t zone_changes = 0;
  uint64_t exits = 0;
  uint64_t forgotten = 0;       // tracks dropped after exit_after without ever entering
  std::size_t tracked = 0;      // now
  std::size_t scanners = 0;     // scanners known now
  std::size_t state_bytes = 0;  // the engine's memory now (see PresenceEngine)
};

/// "scanner=zone" items (beacon.zones) to a map. Fails with "invalid" naming the bad item.
/// Thread: any. Never throws.
Result<std::map<std::string, std::string>> parseZones(const std::vector<std::string>& items);

/// "scanner=dB" items (beacon.scanner_offsets, dB a decimal in -40..40) to a map. Fails with
/// "invalid" naming the bad item. Thread: any. Never throws.
Result<std::map<std::string, double>> parseScannerOffsets(const std::vector<std::string>& items);

/// Distance in metres from the log-distance path-loss model:
/// d = 10 ^ ((rssi_at_1m - rssi) / (10 n)). Thread: any.
double estimateDistance(double rssi, int rssi_at_1m, double n);

/// Placement, per identity:
/// - every sighting gives a distance estimate for its scanner: the gateway's own calibrated
///   distance when it sends one (ESPresense), else the log-distance model on the RSSI with the
///   frame's or gateway's power at 1 m; a scanner offset (dB) corrects either. Each scanner's
///   estimate is smoothed in log-distance (median of the last 3 samples against spikes, then
///   an EWMA); a scanner unheard for scanner_stale_ms stops competing.
/// - beacon.enter once window_ms have passed since the identity was first heard and at least
///   enter_after_sightings sightings (from any scanners) came in: the zone is decided on the
///   evidence of that whole window, not on whichever scanner spoke first.
/// - the zone is the one of the nearest scanner; a zone's distance is its nearest fresh
///   scanner's. A change needs the new zone nearer by switch_margin_db (as path loss) held
///   for switch_hold_ms (so also a minimum dwell).
/// - beacon.exit (with dwell_ms) once unseen exit_after_ms.
/// Engine time is the sighting's timestamp when it has one, else `now_ms`; it never runs back.
/// Memory: at most max_tracked identities and about max_state_bytes in all (tracks, their
/// per-scanner estimates, the scanner table); what would pass either is refused and counted.
/// Thread: one at a time (no locking). Never throws (but bad_alloc).
class PresenceEngine {
 public:
  /// Thread: any. Never fails.
  explicit PresenceEngine(PresenceOptions options);
  ~PresenceEngine();
  PresenceEngine(const PresenceEngine&) = delete;
  PresenceEngine& operator=(const PresenceEngine&) = delete;

  /// Feeds one sighting; events it causes (an enter, a zone change, exits of other identities
  /// that timed out meanwhile) are appended to `out`. Thread: the owner. Never blocks or fails.
  void observe(const Sighting& sighting, int64_t now_ms, std::vector<Event>& out);

  /// Advances time to `now_ms`: exits for identities unseen exit_after_ms, forgets stale tracks
  /// and scanners no track refers to. Call about once a second. Thread: the owner. Never fails.
  void tick(int64_t now_ms, std::vector<Event>& out);

  /// Counters. Thread: the owner. O(1).
  PresenceStats stats() const;

  /// New beacon.zones and beacon.scanner_offsets, keeping every track: each known scanner is
  /// placed in its new zone at once, and an identity whose nearest scanner is now in another
  /// zone gets a beacon.zone_change under the usual margin and hold. Offsets apply to the
  /// sightings from now on. Thread: the owner.
  void retune(std::map<std::string, std::string> zones, std::map<std::string, double> offsets);

 private:
  static constexpr uint32_t kNone = 0xFFFFFFFF;
  static constexpr uint32_t kSelfZone = 0x80000000;  // | scanner slot: a zone of its own name

  /// One scanner's view of one identity.
  struct Reading {
    uint32_t scanner = kNone;  // slot in scanners_
    float log_d = 0;           // smoothed log10(distance in m)
    float rssi = 0;            // smoothed measured RSSI, dBm (reported, not compared)
    float recent[2] = {0, 0};  // the previous two raw log distances (median of three)
    uint8_t samples = 0;       // raw samples so far, up to 3
    int64_t last_ms = 0;
  };
  struct Track {
    const std::string* identity = nullptr;  // the key of tracks_
    std::vector<Reading> readings;          // a handful per identity, at most 32
    Track* newer = nullptr;                 // LRU by last_seen_ms
    Track* older = nullptr;
    int64_t first_ms = 0;
    int64_t last_seen_ms = 0;
    int64_t candidate_since = 0;
    uint32_t sightings = 0;         // before the enter (saturating)
    uint32_t zone = kNone;          // while present
    uint32_t zone_scanner = kNone;  // the scanner that placed it there (holds a ref)
    uint32_t candidate = kNone;     // a zone nearer by the margin ...
    std::size_t bytes = 0;          // what this track accounts for in state_bytes_
    bool present = false;
  };
  struct ScannerInfo {
    const std::string* name = nullptr;  // the key of scanner_index_; nullptr: a free slot
    uint32_t zone = kNone;
    float offset_log = 0;  // the configured offset as log10 distance (−dB / 10 n)
    uint32_t refs = 0;     // readings and tracks pointing here
  };

  uint32_t internScanner(const std::string& name);
  void placeScanner(uint32_t slot);
  /// Enters `track` (not present) when its window closed by `t` with enough sightings: a
  /// beacon.enter into the zone of its nearest fresh scanner. False when not (yet).
  bool tryEnter(Track& track, int64_t t, std::vector<Event>& out);
  void ref(uint32_t slot) { ++scanners_[slot].refs; }
  void unref(uint32_t slot) { --scanners_[slot].refs; }
  std::string_view zoneName(uint32_t zone) const;
  const Reading* nearest(const Track& track, uint32_t zone, int64_t now, bool fresh_only) const;
  Event makeEvent(const char* type, const Track& track, const Reading* reading, int64_t at_ms,
                  uint32_t scanner_slot) const;
  std::size_t trackBytes(const Track& track) const;
  void account(Track& track);
  std::size_t stateBytes() const;
  void touch(Track& track);
  void unlink(Track& track);
  void erase(Track& track);
  void expire(int64_t now, std::vector<Event>& out);
  void decide(Track& track, int64_t t, std::vector<Event>& out);

  PresenceOptions options_;
  double margin_log_ = 0;
  int64_t now_ms_ = 0;
  std::unordered_map<std::string, Track> tracks_;
  std::size_t waiting_ = 0;  // tracks that may still be waiting to enter (an upper bound)
  Track* newest_ = nullptr;  // LRU list ends
  Track* oldest_ = nullptr;
  std::vector<ScannerInfo> scanners_;
  std::vector<uint32_t> free_slots_;
  std::unordered_map<std::string, uint32_t> scanner_index_;
  std::vector<std::string> zone_names_;                   // configured zones; id = index
  std::unordered_map<std::string, uint32_t> zone_index_;  // zone name → id
  std::size_t tracks_bytes_ = 0;                          // sum of Track::bytes
  std::size_t scanners_bytes_ = 0;                        // index nodes and names
  PresenceStats stats_;
};

}  // namespace omniedge::beacon
