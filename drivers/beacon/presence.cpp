#include "drivers/beacon/presence.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace omniedge::beacon {
namespace {

constexpr std::size_t kMaxScannersPerTrack = 32;
constexpr double kNoSignal = -std::numeric_limits<double>::infinity();

double round1(double v) { return std::round(v * 10) / 10; }
double round2(double v) { return std::round(v * 100) / 100; }

}  // namespace

Result<std::map<std::string, std::string>> parseZones(const std::vector<std::string>& items) {
  std::map<std::string, std::string> zones;
  for (const std::string& item : items) {
    const auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
      return makeError("invalid", fmt::format("'{}' is not scanner=zone", item), "beacon.zones");
    }
    zones[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return zones;
}

double estimateDistance(double rssi, int rssi_at_1m, double n) {
  return std::pow(10.0, (rssi_at_1m - rssi) / (10.0 * n));
}

PresenceEngine::PresenceEngine(PresenceOptions options) : options_(std::move(options)) {
  options_.enter_after_sightings = std::max(1, options_.enter_after_sightings);
  options_.ewma_alpha = std::clamp(options_.ewma_alpha, 0.01, 1.0);
  options_.path_loss_exponent = std::max(0.5, options_.path_loss_exponent);
}

const std::string& PresenceEngine::zoneOf(const std::string& scanner) const {
  const auto it = options_.zones.find(scanner);
  return it == options_.zones.end() ? scanner : it->second;
}

double PresenceEngine::zoneRssi(const Track& track, const std::string& zone, int64_t now) const {
  double best = kNoSignal;
  for (const ScannerState& s : track.scanners) {
    if (now - s.last_ms <= options_.scanner_stale_ms && zoneOf(s.scanner) == zone) {
      best = std::max(best, s.rssi);
    }
  }
  return best;
}

PresenceEngine::ZoneBest PresenceEngine::best(const Track& track, int64_t now) const {
  ZoneBest out;
  for (const ScannerState& s : track.scanners) {
    if (now - s.last_ms > options_.scanner_stale_ms) {
      continue;
    }
    if (out.scanner == nullptr || s.rssi > out.scanner->rssi) {
      out.scanner = &s;
    }
  }
  if (out.scanner != nullptr) {
    out.zone = zoneOf(out.scanner->scanner);
  }
  return out;
}

Event PresenceEngine::makeEvent(const char* type, const Track& track, const ScannerState& scanner,
                                int64_t at_ms) const {
  Event event;
  event.type = type;
  event.source = "beacon:" + scanner.scanner;
  event.occurred_at_ms = at_ms;
  event.customer["beacon"] = track.identity;
  nlohmann::json data = {{"identity", track.identity},
                         {"zone", track.zone},
                         {"scanner", scanner.scanner},
                         {"rssi", round1(scanner.rssi)},
                         {"distance_m", round2(estimateDistance(scanner.rssi, scanner.rssi_at_1m,
                                                                options_.path_loss_exponent))}};
  event.data_json = data.dump();
  return event;
}

void PresenceEngine::expire(int64_t now, std::vector<Event>& out) {
  while (!lru_.empty()) {
    Track* track = lru_.back();
    if (track->last_seen_ms + options_.exit_after_ms > now) {
      return;
    }
    if (track->present) {
      // The strongest scanner of the last zone, whether or not still fresh.
      const ScannerState* last = &track->scanners.front();
      for (const ScannerState& s : track->scanners) {
        if (zoneOf(s.scanner) == track->zone &&
            (zoneOf(last->scanner) != track->zone || s.rssi > last->rssi)) {
          last = &s;
        }
      }
      Event event =
          makeEvent("beacon.exit", *track, *last, track->last_seen_ms + options_.exit_after_ms);
      auto data = nlohmann::json::parse(event.data_json);
      data["dwell_ms"] = track->last_seen_ms - track->entered_ms;
      event.data_json = data.dump();
      out.push_back(std::move(event));
      ++stats_.exits;
    } else {
      ++stats_.forgotten;
    }
    lru_.pop_back();
    tracks_.erase(track->identity);
  }
}

void PresenceEngine::tick(int64_t now_ms, std::vector<Event>& out) {
  now_ms_ = std::max(now_ms_, now_ms);
  expire(now_ms_, out);
}

void PresenceEngine::observe(const Sighting& sighting, int64_t now_ms, std::vector<Event>& out) {
  for (const std::string& prefix : options_.ignore_prefixes) {
    if (!prefix.empty() && sighting.identity.rfind(prefix, 0) == 0) {
      ++stats_.ignored;
      return;
    }
  }
  // Engine time never runs back: a late sighting counts as heard now.
  const int64_t t = std::max(now_ms_, sighting.timestamp_ms.value_or(now_ms));
  now_ms_ = t;
  expire(t, out);

  auto it = tracks_.find(sighting.identity);
  if (it == tracks_.end()) {
    if (tracks_.size() >= options_.max_tracked) {
      ++stats_.refused;
      return;
    }
    it = tracks_.emplace(sighting.identity, Track{}).first;
    it->second.identity = sighting.identity;
    lru_.push_front(&it->second);
    it->second.lru = lru_.begin();
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  ++stats_.sightings;
  Track& track = it->second;
  track.last_seen_ms = t;

  // Smooth this scanner's RSSI (restart when it went stale).
  auto scanner = std::find_if(track.scanners.begin(), track.scanners.end(),
                              [&](const ScannerState& s) { return s.scanner == sighting.scanner; });
  if (scanner == track.scanners.end()) {
    if (track.scanners.size() >= kMaxScannersPerTrack) {
      scanner = std::min_element(
          track.scanners.begin(), track.scanners.end(),
          [](const ScannerState& a, const ScannerState& b) { return a.last_ms < b.last_ms; });
    } else {
      track.scanners.emplace_back();
      scanner = track.scanners.end() - 1;
    }
    scanner->scanner = sighting.scanner;
    scanner->last_ms = std::numeric_limits<int64_t>::min() / 2;
  }
  if (t - scanner->last_ms > options_.scanner_stale_ms) {
    scanner->rssi = sighting.rssi;
  } else {
    scanner->rssi += options_.ewma_alpha * (sighting.rssi - scanner->rssi);
  }
  scanner->rssi_at_1m = sighting.rssi_at_1m.value_or(options_.default_rssi_at_1m);
  scanner->last_ms = t;

  if (!track.present) {
    track.recent.push_back(t);
    std::erase_if(track.recent, [&](int64_t at) { return at < t - options_.enter_window_ms; });
    if (track.recent.size() < static_cast<std::size_t>(options_.enter_after_sightings)) {
      return;
    }
    const ZoneBest b = best(track, t);
    track.present = true;
    track.zone = b.zone;
    track.entered_ms = track.recent.front();
    track.recent.clear();
    track.recent.shrink_to_fit();
    out.push_back(makeEvent("beacon.enter", track, *b.scanner, t));
    ++stats_.enters;
    return;
  }

  const ZoneBest b = best(track, t);
  if (b.scanner == nullptr || b.zone == track.zone ||
      b.scanner->rssi < zoneRssi(track, track.zone, t) + options_.switch_margin_db) {
    track.candidate.clear();
    return;
  }
  if (track.candidate != b.zone) {
    track.candidate = b.zone;
    track.candidate_since = t;
    return;
  }
  if (t - track.candidate_since < options_.switch_hold_ms) {
    return;
  }
  const std::string from = track.zone;
  track.zone = b.zone;
  track.candidate.clear();
  Event event = makeEvent("beacon.zone_change", track, *b.scanner, t);
  auto data = nlohmann::json::parse(event.data_json);
  data["from"] = from;
  data["to"] = track.zone;
  event.data_json = data.dump();
  out.push_back(std::move(event));
  ++stats_.zone_changes;
}

PresenceStats PresenceEngine::stats() const {
  PresenceStats s = stats_;
  s.tracked = tracks_.size();
  return s;
}

}  // namespace omniedge::beacon
