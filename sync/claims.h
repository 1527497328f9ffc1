// How the two uplinks drain ONE queue without double work (issue 14 point 1).
//
// The buffer's pending events are numbered by seq. Each link sends a batch only after it has
// claimed the batch's seq range here; claims never overlap, so no event is ever in flight on
// both links. A claim ends when its batch is delivered or quarantined (done), or returns to the
// pool when its link fails (release; every release bumps generation(), and a link that sees a
// new generation reads its cursor from the head again, so released seqs are picked up).
//
// Who takes what:
//  - MQTT up, backlog <= sync.backfill_threshold: MQTT sends everything, oldest first; HTTPS
//    idles.
//  - MQTT up, backlog over the threshold: a backfill round. HTTPS sets the floor to the newest
//    seq at that moment minus sync.backfill_threshold and sends the OLDEST events from the head
//    up to the floor; MQTT reads only above the floor, so the newest (real-time) events, and
//    the threshold's worth before them, go at once and are never starved by a slow backfill.
//    When HTTPS has taken everything up to the floor, a new round starts if the backlog is
//    still over the threshold (its floor again leaves the newest threshold's worth to MQTT: a
//    round never sweeps up the real-time events MQTT has not sent yet); otherwise the floor
//    drops to 0 and MQTT reads from the head again (whatever HTTPS could not deliver is still
//    pending there).
//  - MQTT down (not connected for https.failover_after): HTTPS sends everything, oldest first.
//    Once MQTT is back, it reads from the head and skips what HTTPS holds.
//  - HTTPS failing (5xx, timeouts, unreachable): it releases its claim and drops the floor
//    while it backs off, so MQTT (if up) takes over everything.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>

namespace omniedge::sync {

enum class Uplink { kMqtt, kHttps };

/// Thread: any (one short mutex). Never blocks, never fails.
class ClaimBook {
 public:
  /// The answer to claim(): `granted` means [first, last] is the caller's (last may be lower
  /// than asked: the range stops before another claim); otherwise `first` lies in a claim held
  /// by someone (possibly the caller itself, still in flight) that ends at `last`: skip to it.
  struct Grant {
    bool granted = false;
    int64_t last = 0;
  };

  /// Claims seqs first..last (first <= last) for `link`.
  Grant claim(Uplink link, int64_t first, int64_t last);
  /// The claim that began at `first` now ends at `last` (the batch was cut to fit a packet):
  /// the seqs after it are free again.
  void shrink(Uplink link, int64_t first, int64_t last);
  /// The batch that began at `first` was delivered or quarantined: its claim ends.
  void done(Uplink link, int64_t first);
  /// The batch that began at `first` failed: its seqs return to the pool (generation bumps).
  void release(Uplink link, int64_t first);
  /// Every claim of `link` returns to the pool (its connection was lost).
  void releaseAll(Uplink link);
  /// Bumped whenever seqs return to the pool or the floor drops: read from the head again.
  uint64_t generation() const;
  /// Claims held now (tests, status).
  std::size_t claims(Uplink link) const;

  /// While a backfill round runs, MQTT reads only seqs above this (0: no floor). Lowering it
  /// bumps the generation.
  void setFloor(int64_t seq);
  int64_t floor() const;

  /// The MQTT link's state, for HTTPS's choice (failover after https.failover_after).
  void setMqttUp(bool up, int64_t now_ms);
  bool mqttUp() const;
  /// When mqttUp() last changed (or when the engine started).
  int64_t mqttChangedMs() const;

 private:
  struct Claim {
    int64_t last = 0;
    Uplink link = Uplink::kMqtt;
  };
  mutable std::mutex mu_;
  std::map<int64_t, Claim> claims_;  // by first seq; guarded by mu_
  uint64_t generation_ = 0;          // guarded by mu_
  int64_t floor_ = 0;                // guarded by mu_
  bool mqtt_up_ = false;             // guarded by mu_
  int64_t mqtt_changed_ms_ = 0;      // guarded by mu_
};

}  // namespace omniedge::sync
