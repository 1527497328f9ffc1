// Ingest: the EventWriter every driver writes to. Validates, completes and serialises events,
// replaces raw PII by keyed hashes, then hands them to the buffer's group commit.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/clock.h"
#include "agent/api/event_hooks.h"
#include "agent/api/event_metrics.h"
#include "agent/api/event_writer.h"
#include "agent/api/identity_resolver.h"
#include "agent/ingest/pii.h"
#include "agent/store/buffer.h"

namespace omniedge {

struct IngestOptions {
  std::string store_id;
  std::size_t max_event_bytes = 64 * 1024;  // buffer.max_event_bytes: the serialised envelope
};

class Ingest final : public EventWriter {
 public:
  /// `resolver` (may be null) maps a beacon identity to the customer the profile cache knows.
  Ingest(IngestOptions options, store::Buffer& buffer, const PiiHasher& pii, const Clock& clock,
         const IdentityResolver* resolver = nullptr);

  // EventWriter
  Result<AppendOutcome> append(std::vector<Event> events) override;
  Result<AppendOutcome> appendEach(std::vector<Event> events) override;

  /// append() for events read back from an export (omniedge import): an id already pending is
  /// not stored again, the ids this agent made itself included (store::IdOrigin::kExport).
  Result<AppendOutcome> appendExported(std::vector<Event> events);

  /// Validates and completes `e` (the `index`-th of a request, for error fields) and serialises
  /// it. Thread: any; pure apart from the clock and id generation.
  Result<store::StoredEvent> prepare(Event& e, std::size_t index, int64_t now_ms) const;

  /// The enricher every event passes before it is stored (null: none), and the observers that
  /// see it once it is durable (agent/api/event_hooks.h). Thread: the owner, before any
  /// producer starts; they must outlive the Ingest.
  void setEnricher(const EventEnricher* enricher) { enricher_ = enricher; }
  void addObserver(EventObserver* observer) { observers_.push_back(observer); }
  /// consent.on_refusal at ingest: true when an event of this type from a customer who refused
  /// tracking is dropped (else it is kept without identity). Unset: low-priority events
  /// (presence) are dropped. Thread: the owner, before any producer starts; `drop` is called
  /// on producers' threads.
  void setRefusalDrop(std::function<bool(std::string_view type)> drop) {
    refusal_drop_ = std::move(drop);
  }
  /// Where events accepted, refused and dropped are counted by channel (null: nowhere).
  /// Thread: the owner, before any producer starts; it must outlive the Ingest.
  void setMetrics(EventMetrics* metrics) { metrics_ = metrics; }

 private:
  Result<AppendOutcome> validateAndAppend(std::vector<Event> events, bool skip_invalid,
                                          bool exported = false);

  IngestOptions options_;
  store::Buffer& buffer_;
  const PiiHasher& pii_;
  const Clock& clock_;
  const IdentityResolver* resolver_;
  const EventEnricher* enricher_ = nullptr;
  std::vector<EventObserver*> observers_;
  std::function<bool(std::string_view type)> refusal_drop_;
  EventMetrics* metrics_ = nullptr;
};

/// The envelope of contract §3 as compact JSON. Thread: any.
std::string serialiseEvent(const Event& e);

}  // namespace omniedge
