// Counters of events through the pipeline by channel and reason, and the uplinks' batch latency,
// for GET /metrics (docs/metrics.md). Counted where things happen (Ingest, the uplinks), read by
// the agent's metrics page.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "agent/api/histogram.h"

namespace omniedge {

/// The channel of an event: the first part of its type, mapped to a fixed set so that a type
/// a client invents ("foo.bar") cannot grow the metrics' label values ("other").
enum class Channel : uint8_t {
  kPos,
  kKiosk,
  kBeacon,
  kEngagement,
  kVisit,
  kWeb,
  kApp,
  kAgent,
  kOther,
};
inline constexpr std::size_t kChannelCount = 9;
inline constexpr std::array<std::string_view, kChannelCount> kChannelNames = {
    "pos", "kiosk", "beacon", "engagement", "visit", "web", "app", "agent", "other"};

/// "pos.transaction" -> kPos; anything not in the set, or without a '.', -> kOther. Thread: any.
inline Channel channelOf(std::string_view type) noexcept {
  const auto dot = type.find('.');
  if (dot == std::string_view::npos) {
    return Channel::kOther;
  }
  const std::string_view prefix = type.substr(0, dot);
  for (std::size_t i = 0; i + 1 < kChannelCount; ++i) {
    if (prefix == kChannelNames[i]) {
      return static_cast<Channel>(i);
    }
  }
  return Channel::kOther;
}

/// The channel of a serialised envelope (a PendingEvent body): from its first `"type":"…"`.
/// The envelope starts with the id, which cannot hold a quote, so the first match is the
/// event's own type. Looks at the first 512 bytes only. Thread: any.
inline Channel channelOfBody(std::string_view body) noexcept {
  constexpr std::string_view kKey = "\"type\":\"";
  const std::string_view head = body.substr(0, 512);
  const auto at = head.find(kKey);
  if (at == std::string_view::npos) {
    return Channel::kOther;
  }
  const std::string_view rest = head.substr(at + kKey.size());
  return channelOf(rest.substr(0, rest.find('"')));
}

/// Events of one batch or request, by channel: counted locally (plain adds), then added to the
/// shared counters with one atomic add per channel present.
struct ChannelTally {
  std::array<uint32_t, kChannelCount> n{};
  void add(Channel c, uint32_t count = 1) noexcept { n[static_cast<std::size_t>(c)] += count; }
};

/// Why an event was refused at ingest (the Error code of EventWriter::append); any other code
/// counts as kOther.
enum class RejectReason : uint8_t { kInvalid, kTooLarge, kFull, kStopping, kIo, kOther };
inline constexpr std::size_t kRejectReasonCount = 6;
inline constexpr std::array<std::string_view, kRejectReasonCount> kRejectReasonNames = {
    "invalid", "too_large", "full", "stopping", "io", "other"};

inline RejectReason rejectReasonOf(std::string_view code) noexcept {
  for (std::size_t i = 0; i + 1 < kRejectReasonCount; ++i) {
    if (code == kRejectReasonNames[i]) {
      return static_cast<RejectReason>(i);
    }
  }
  return RejectReason::kOther;
}

/// The uplinks a batch is delivered over.
enum class Link : uint8_t { kMqtt, kHttps };
inline constexpr std::size_t kLinkCount = 2;
inline constexpr std::array<std::string_view, kLinkCount> kLinkNames = {"mqtt", "https"};

/// The pipeline's event counters and batch latencies, shared (by pointer) by Ingest, the
/// uplinks and the metrics page. Thread: any; every update is a relaxed atomic add (no lock,
/// no allocation), made once per event or once per channel of a batch; reads are relaxed
/// too, so a page may show a batch delivered a moment before its events' ingest is visible.
class EventMetrics {
 public:
  void ingested(const ChannelTally& t) noexcept { addAll(ingested_, t); }
  void delivered(const ChannelTally& t) noexcept { addAll(delivered_, t); }
  void rejected(Channel c, RejectReason r, uint64_t n = 1) noexcept {
    rejected_[idx(c)][static_cast<std::size_t>(r)].fetch_add(n, std::memory_order_relaxed);
  }
  void rejected(const ChannelTally& t, RejectReason r) noexcept {
    for (std::size_t c = 0; c < kChannelCount; ++c) {
      if (t.n[c] != 0) {
        rejected_[c][static_cast<std::size_t>(r)].fetch_add(t.n[c], std::memory_order_relaxed);
      }
    }
  }
  /// Dropped on purpose at ingest: a customer refused tracking (consent.on_refusal).
  void consentDropped(Channel c) noexcept {
    consent_dropped_[idx(c)].fetch_add(1, std::memory_order_relaxed);
  }

  uint64_t ingestedCount(Channel c) const noexcept { return load(ingested_[idx(c)]); }
  uint64_t deliveredCount(Channel c) const noexcept { return load(delivered_[idx(c)]); }
  uint64_t rejectedCount(Channel c, RejectReason r) const noexcept {
    return load(rejected_[idx(c)][static_cast<std::size_t>(r)]);
  }
  uint64_t consentDroppedCount(Channel c) const noexcept { return load(consent_dropped_[idx(c)]); }

  /// A batch's publish → PUBACK (MQTT) or request → 2xx (HTTPS).
  LatencyHistogram& batchLatency(Link l) noexcept { return latency_[static_cast<std::size_t>(l)]; }
  const LatencyHistogram& batchLatency(Link l) const noexcept {
    return latency_[static_cast<std::size_t>(l)];
  }

 private:
  using Counter = std::atomic<uint64_t>;
  static std::size_t idx(Channel c) noexcept { return static_cast<std::size_t>(c); }
  static uint64_t load(const Counter& c) noexcept { return c.load(std::memory_order_relaxed); }
  static void addAll(std::array<Counter, kChannelCount>& to, const ChannelTally& t) noexcept {
    for (std::size_t c = 0; c < kChannelCount; ++c) {
      if (t.n[c] != 0) {
        to[c].fetch_add(t.n[c], std::memory_order_relaxed);
      }
    }
  }

  std::array<Counter, kChannelCount> ingested_{};
  std::array<Counter, kChannelCount> delivered_{};
  std::array<std::array<Counter, kRejectReasonCount>, kChannelCount> rejected_{};
  std::array<Counter, kChannelCount> consent_dropped_{};
  std::array<LatencyHistogram, kLinkCount> latency_{};
};

}  // namespace omniedge
