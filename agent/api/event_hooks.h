// What the edge's own intelligence (visit journeys, attribution, triggers: agent/omni/) hooks
// into ingest with: an enricher sees an event before it is stored, observers after.
#pragma once

#include <vector>

#include "agent/api/event.h"

namespace omniedge {

/// Adds to an event before it is serialised and stored (e.g. data.attribution on a sale).
/// Called by Ingest::prepare() after validation, PII hashing and consent, so `event.customer`
/// holds the keys as they will be stored; also for `import --dry-run` (then nothing is stored:
/// the enricher must not change its own state here). Thread: any producer's, concurrently;
/// in memory, microseconds; never fails (an enrichment it cannot make is left out).
class EventEnricher {
 public:
  virtual ~EventEnricher() = default;
  virtual void enrich(Event& event) const = 0;
};

/// Sees the events of each Ingest append once they are durable in the buffer, in the order
/// given (ids, customer and data as stored; duplicates of events already stored included:
/// observers key their state on the id). Thread: the producer's (any, concurrently); must not
/// block long (queue the work to a thread of its own) and must not append synchronously to the
/// same Ingest from here.
class EventObserver {
 public:
  virtual ~EventObserver() = default;
  virtual void onStored(const std::vector<const Event*>& events) = 0;
};

}  // namespace omniedge
