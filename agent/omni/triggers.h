// Local triggers (docs/omnichannel.md): every durable event of a known customer is held against
// the rules of triggers.rules (trigger_rules.h); a rule that holds emits an engagement.* event
// into the buffer (for the centre, which measures each rule's uplift against its hold-out) and,
// unless the customer is held out, tells the kiosks listening on GET /v1/stream. All of it in
// memory and within the store: it works with the uplink down.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "agent/api/clock.h"
#include "agent/api/event.h"
#include "agent/api/event_hooks.h"
#include "agent/api/event_writer.h"
#include "agent/api/personal_data.h"
#include "agent/omni/trigger_rules.h"

namespace omniedge::store {
class ProfileCache;
}

namespace omniedge::omni {

/// What the kiosk streams are told when a trigger fires for a customer who is not held out.
struct Engagement {
  std::string zone;  // data.zone of the event that fired it; "" when it had none
  std::string json;  // the frame's data (one line of JSON): id, type, rule, customer, show, cart
};

struct TriggerOptions {
  /// Per-customer memory: the profile facts rules read and the rate-limit windows, half each.
  std::size_t max_state_bytes = std::size_t{4} << 20;
  /// Firings waiting for the trigger thread; beyond it the oldest are dropped and counted.
  std::size_t max_queue_bytes = std::size_t{1} << 20;
  /// The key of the hold-out hash (HMAC-SHA256 over the rule id and the profile id).
  std::string holdout_key;
};

struct TriggerStats {
  uint64_t evaluated = 0;           // events held against at least one rule's type
  uint64_t fired = 0;               // engagement events made (held-out ones included)
  uint64_t held_out = 0;            // of those, for customers in the rule's hold-out
  uint64_t rate_limited = 0;        // a rule held but its rate limit for the customer did not
  uint64_t no_personalization = 0;  // a rule held for a customer who refused personalization
  uint64_t no_marketing = 0;        // ... who refused marketing: no event, nothing shown
  uint64_t queue_dropped = 0;       // firings dropped: the queue was over its bound
  uint64_t append_failed = 0;       // engagement events the buffer refused
  uint64_t shown = 0;               // engagements handed to the streams
  std::size_t rules = 0;
  std::size_t state_bytes = 0;
};

/// Thread: onStored() and evaluate() from any producer thread, concurrently; the engagement
/// events are appended and the streams told from the engine's own thread (start()/stop()).
class TriggerEngine final : public EventObserver, public PersonalData {
 public:
  /// `profiles`, `out` and `clock` must outlive the engine. `notify` is called on the engine's
  /// thread for each engagement to show (never for a held-out customer); it must not block.
  TriggerEngine(TriggerOptions options, const store::ProfileCache& profiles, EventWriter& out,
                const Clock& clock, std::function<void(const Engagement&)> notify);
  /// Stops (see stop()).
  ~TriggerEngine() override;
  TriggerEngine(const TriggerEngine&) = delete;
  TriggerEngine& operator=(const TriggerEngine&) = delete;

  /// Replaces the rule set at once (hot: applyConfig). Rate-limit windows of rules that keep
  /// their id are kept. Thread: any. Never blocks on I/O.
  void setRules(std::vector<TriggerRule> rules);

  /// Starts the thread that appends engagement events and tells the streams. Idempotent.
  /// Thread: the owner's.
  void start();
  /// Appends what is queued (bounded by a second), then joins the thread. Idempotent.
  /// Thread: the owner's.
  void stop();

  // EventObserver
  /// Evaluates each event in place (microseconds; no I/O for customers seen since the last
  /// profile change) and queues what fired. Thread: any producer's.
  void onStored(const std::vector<const Event*>& events) override;

  /// One firing: the engagement event to append, and what to show (unless held out).
  struct Firing {
    Event event;
    bool holdout = false;
    std::string zone;
    std::string profile_id;
    std::string customer_key;  // the profile's first key ("loyalty:L1"), for the kiosk
    std::string rule_id;
    std::string rule_version;
    std::string show_json;
    std::string show_kind;
    std::string tier;
    std::size_t bytes = 0;
  };
  /// Holds `event` against the rules as of `now_ms`, records the rate limits of what fired and
  /// adds the firings to `out` (nothing is appended or shown). Returns how many fired.
  /// Thread: any. In memory, except the first look at a customer after a profile change (one
  /// profile read).
  std::size_t evaluate(const Event& event, int64_t now_ms, std::vector<Firing>& out);

  /// Whether `profile_id` is in the hold-out of a rule with this id and share. Deterministic:
  /// HMAC-SHA256(holdout_key, "holdout" 0 rule_id 0 profile_id) read as a fraction of 2^64,
  /// below `share`. Thread: any.
  bool heldOut(std::string_view rule_id, std::string_view profile_id, double share) const;

  /// Thread: any.
  TriggerStats stats() const;

  // PersonalData
  std::string_view name() const override { return "triggers"; }
  /// Forgets the rate-limit windows, cached facts and queued firings of the subject (memory
  /// only: nothing of it is on disk). Thread: any. Never fails.
  Result<int64_t> forget(const SubjectKeys& keys) override;

 private:
  struct Facts;
  struct Compiled;
  struct RateEntry {
    int64_t window_start_ms = 0;
    int64_t count = 0;
    std::list<std::string>::iterator order;
  };

  std::shared_ptr<const Facts> factsFor(const Event& event);
  // Whether the rule's rate limit lets it fire for the customer now (no change), and taking
  // one firing of it (false when it does not).
  bool rateOpen(const std::string& profile_id, const TriggerRule& rule, int64_t now_ms) const;
  bool takeRate(const std::string& profile_id, const TriggerRule& rule, int64_t now_ms);
  void enqueue(std::vector<Firing> firings);
  void run(std::stop_token stop);
  void deliver(std::vector<Firing>& batch);

  const TriggerOptions options_;
  const store::ProfileCache& profiles_;
  EventWriter& out_;
  const Clock& clock_;
  const std::function<void(const Engagement&)> notify_;

  mutable std::mutex rules_mu_;
  std::shared_ptr<const Compiled> rules_;  // guarded by rules_mu_; immutable once made

  mutable std::mutex facts_mu_;
  // One map per customer field (loyalty_id, app_user_id, ...): looked up by the event's value
  // as it is, without building a key. Cleared when the profiles change or past the bound.
  std::unordered_map<std::string, std::shared_ptr<const Facts>> facts_[6];  // facts_mu_
  uint64_t facts_generation_ = ~uint64_t{0};                                // facts_mu_
  std::size_t facts_bytes_ = 0;                                             // facts_mu_

  mutable std::mutex rate_mu_;
  std::unordered_map<std::string, RateEntry> rate_;  // "profile_id\nrule_id"; rate_mu_
  std::list<std::string> rate_order_;                // oldest window first; rate_mu_
  std::size_t rate_bytes_ = 0;                       // rate_mu_

  mutable std::mutex queue_mu_;
  std::condition_variable_any queue_cv_;
  std::deque<Firing> queue_;     // guarded by queue_mu_
  std::size_t queue_bytes_ = 0;  // guarded by queue_mu_
  std::jthread thread_;

  struct Counters {
    std::atomic<uint64_t> evaluated{0}, fired{0}, held_out{0}, rate_limited{0},
        no_personalization{0}, no_marketing{0}, queue_dropped{0}, append_failed{0}, shown{0};
  };
  mutable Counters counters_;
};

/// The hold-out key: identity.hmac_key_file's key when it is set (`tenant_key`), so that a
/// customer is held out of a rule in every store alike; else a per-install secret kept in
/// `dir`/triggers.key (32 random bytes, made on first use, 0600). Fails "io".
/// Thread: the owner's, at start.
Result<std::string> holdoutKey(const std::string& tenant_key, const std::string& dir);

}  // namespace omniedge::omni
