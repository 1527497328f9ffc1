#include "drivers/beacon/presence.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

namespace omniedge::beacon {
namespace {

constexpr std::size_t kMaxReadingsPerTrack = 32;
constexpr std::size_t kInitialReadings = 2;
constexpr double kMinLogDistance = -2;  // 1 cm
constexpr double kMaxLogDistance = 3;   // 1 km
constexpr double kMaxOffsetDb = 40;

// What the allocator adds to each block (glibc: a 16-byte header, 16-byte granularity), so that
// state_bytes follows what the heap really holds, not only sizeof.
constexpr std::size_t kMallocOverhead = 16;
constexpr std::size_t kSsoCapacity = 15;  // libstdc++: shorter strings live inside the object

std::size_t heapBytes(const std::string& s) {
  return s.capacity() > kSsoCapacity ? s.capacity() + 1 + kMallocOverhead : 0;
}

double round1(double v) { return std::round(v * 10) / 10; }
double round2(double v) { return std::round(v * 100) / 100; }

float median3(float a, float b, float c) {
  return std::max(std::min(a, b), std::min(std::max(a, b), c));
}

/// Splits "key=value"; nullopt when either side is empty.
std::optional<std::pair<std::string, std::string>> splitItem(const std::string& item) {
  const auto eq = item.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
    return std::nullopt;
  }
  return std::pair{item.substr(0, eq), item.substr(eq + 1)};
}

}  // namespace

Result<std::map<std::string, std::string>> parseZones(const std::vector<std::string>& items) {
  std::map<std::string, std::string> zones;
  for (const std::string& item : items) {
    auto kv = splitItem(item);
    if (!kv) {
      return makeError("invalid", fmt::format("'{}' is not scanner=zone", item), "beacon.zones");
    }
    zones[kv->first] = kv->second;
  }
  return zones;
}

Result<std::map<std::string, double>> parseScannerOffsets(const std::vector<std::string>& items) {
  std::map<std::string, double> offsets;
  for (const std::string& item : items) {
    auto kv = splitItem(item);
    double db = 0;
    if (kv) {
      const std::string& v = kv->second;
      const char* begin = v.data() + (v.front() == '+' ? 1 : 0);
      const auto [end, ec] = std::from_chars(begin, v.data() + v.size(), db);
      if (ec != std::errc() || end != v.data() + v.size() || !std::isfinite(db) ||
          std::abs(db) > kMaxOffsetDb) {
        kv.reset();
      }
    }
    if (!kv) {
      return makeError("invalid",
                       fmt::format("'{}' is not scanner=dB (dB a number from -40 to 40)", item),
                       "beacon.scanner_offsets");
    }
    offsets[kv->first] = db;
  }
  return offsets;
}

double estimateDistance(double rssi, int rssi_at_1m, double n) {
  return std::pow(10.0, (rssi_at_1m - rssi) / (10.0 * n));
}

PresenceEngine::PresenceEngine(PresenceOptions options) : options_(std::move(options)) {
  options_.enter_after_sightings = std::max(1, options_.enter_after_sightings);
  options_.ewma_alpha = std::clamp(options_.ewma_alpha, 0.01, 1.0);
  options_.path_loss_exponent = std::max(0.5, options_.path_loss_exponent);
  options_.switch_margin_db = std::max(0.0, options_.switch_margin_db);
  options_.window_ms = std::max<int64_t>(0, options_.window_ms);
  margin_log_ = options_.switch_margin_db / (10.0 * options_.path_loss_exponent);
  for (const auto& [scanner, zone] : options_.zones) {
    if (zone_index_.emplace(zone, static_cast<uint32_t>(zone_names_.size())).second) {
      zone_names_.push_back(zone);
    }
  }
}

PresenceEngine::~PresenceEngine() = default;

std::string_view PresenceEngine::zoneName(uint32_t zone) const {
  if (zone == kNone) {
    return {};
  }
  if ((zone & kSelfZone) != 0) {
    return *scanners_[zone & ~kSelfZone].name;
  }
  return zone_names_[zone];
}

uint32_t PresenceEngine::internScanner(const std::string& name) {
  if (const auto it = scanner_index_.find(name); it != scanner_index_.end()) {
    return it->second;
  }
  constexpr std::size_t kNodeBytes = sizeof(std::pair<const std::string, uint32_t>) +
                                     sizeof(void*) + sizeof(std::size_t) + kMallocOverhead;
  std::size_t growth =
      kNodeBytes + (name.size() > kSsoCapacity ? name.size() + 1 + kMallocOverhead : 0);
  if (free_slots_.empty() && scanners_.size() == scanners_.capacity()) {
    growth += std::max<std::size_t>(scanners_.capacity(), 8) * sizeof(ScannerInfo);
  }
  if (stateBytes() + growth > options_.max_state_bytes) {
    return kNone;
  }
  uint32_t slot = 0;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    if (scanners_.size() == scanners_.capacity()) {
      scanners_.reserve(std::max<std::size_t>(scanners_.capacity() * 2, 8));
    }
    slot = static_cast<uint32_t>(scanners_.size());
    scanners_.emplace_back();
    free_slots_.reserve(scanners_.capacity());  // so a later free never allocates
  }
  const auto [it, inserted] = scanner_index_.emplace(name, slot);
  ScannerInfo& info = scanners_[slot];
  info = ScannerInfo{};
  info.name = &it->first;
  placeScanner(slot);
  scanners_bytes_ += kNodeBytes + heapBytes(it->first);
  return slot;
}

void PresenceEngine::placeScanner(uint32_t slot) {
  ScannerInfo& info = scanners_[slot];
  const std::string& name = *info.name;
  if (const auto z = options_.zones.find(name); z != options_.zones.end()) {
    info.zone = zone_index_.at(z->second);
  } else if (const auto same = zone_index_.find(name); same != zone_index_.end()) {
    info.zone = same->second;  // a scanner named like a configured zone is in it
  } else {
    info.zone = kSelfZone | slot;
  }
  info.offset_log = 0;
  if (const auto o = options_.scanner_offsets.find(name); o != options_.scanner_offsets.end()) {
    // +dB: the scanner hears too weakly, so its estimates come nearer.
    info.offset_log = static_cast<float>(-o->second / (10.0 * options_.path_loss_exponent));
  }
}

void PresenceEngine::retune(std::map<std::string, std::string> zones,
                            std::map<std::string, double> offsets) {
  options_.zones = std::move(zones);
  options_.scanner_offsets = std::move(offsets);
  // Zone ids only grow: tracks keep theirs, and a zone no longer configured keeps its name for
  // the zone_change that moves its customers out.
  for (const auto& [scanner, zone] : options_.zones) {
    if (zone_index_.emplace(zone, static_cast<uint32_t>(zone_names_.size())).second) {
      zone_names_.push_back(zone);
    }
  }
  for (uint32_t slot = 0; slot < scanners_.size(); ++slot) {
    if (scanners_[slot].name != nullptr) {
      placeScanner(slot);
    }
  }
}

std::size_t PresenceEngine::trackBytes(const Track& track) const {
  constexpr std::size_t kNodeBytes = sizeof(std::pair<const std::string, Track>) + sizeof(void*) +
                                     sizeof(std::size_t) + kMallocOverhead;
  const std::size_t readings = track.readings.capacity() == 0
                                   ? 0
                                   : track.readings.capacity() * sizeof(Reading) + kMallocOverhead;
  return kNodeBytes + heapBytes(*track.identity) + readings;
}

void PresenceEngine::account(Track& track) {
  const std::size_t now = trackBytes(track);
  tracks_bytes_ = tracks_bytes_ - track.bytes + now;
  track.bytes = now;
}

std::size_t PresenceEngine::stateBytes() const {
  return sizeof(*this) + tracks_bytes_ + scanners_bytes_ +
         (tracks_.bucket_count() + scanner_index_.bucket_count()) * sizeof(void*) +
         scanners_.capacity() * sizeof(ScannerInfo) + free_slots_.capacity() * sizeof(uint32_t);
}

void PresenceEngine::touch(Track& track) {
  if (newest_ == &track) {
    return;
  }
  unlink(track);
  track.older = newest_;
  track.newer = nullptr;
  if (newest_ != nullptr) {
    newest_->newer = &track;
  }
  newest_ = &track;
  if (oldest_ == nullptr) {
    oldest_ = &track;
  }
}

void PresenceEngine::unlink(Track& track) {
  if (track.newer != nullptr) {
    track.newer->older = track.older;
  } else if (newest_ == &track) {
    newest_ = track.older;
  }
  if (track.older != nullptr) {
    track.older->newer = track.newer;
  } else if (oldest_ == &track) {
    oldest_ = track.newer;
  }
  track.newer = nullptr;
  track.older = nullptr;
}

void PresenceEngine::erase(Track& track) {
  unlink(track);
  for (const Reading& r : track.readings) {
    unref(r.scanner);
  }
  if (track.zone_scanner != kNone) {
    unref(track.zone_scanner);
  }
  tracks_bytes_ -= track.bytes;
  tracks_.erase(tracks_.find(*track.identity));
}

const PresenceEngine::Reading* PresenceEngine::nearest(const Track& track, uint32_t zone,
                                                       int64_t now, bool fresh_only) const {
  const Reading* best = nullptr;
  for (const Reading& r : track.readings) {
    if (fresh_only && now - r.last_ms > options_.scanner_stale_ms) {
      continue;
    }
    if (zone != kNone && scanners_[r.scanner].zone != zone) {
      continue;
    }
    if (best == nullptr || r.log_d < best->log_d) {
      best = &r;
    }
  }
  return best;
}

Event PresenceEngine::makeEvent(const char* type, const Track& track, const Reading* reading,
                                int64_t at_ms, uint32_t scanner_slot) const {
  Event event;
  event.type = type;
  const std::string& scanner = *scanners_[scanner_slot].name;
  event.source = "beacon:" + scanner;
  event.occurred_at_ms = at_ms;
  event.customer["beacon"] = *track.identity;
  nlohmann::json data = {
      {"identity", *track.identity}, {"zone", zoneName(track.zone)}, {"scanner", scanner}};
  if (reading != nullptr) {
    data["rssi"] = round1(reading->rssi);
    data["distance_m"] = round2(std::pow(10.0, reading->log_d));
  }
  event.data_json = data.dump();
  return event;
}

void PresenceEngine::expire(int64_t now, std::vector<Event>& out) {
  while (oldest_ != nullptr && oldest_->last_seen_ms + options_.exit_after_ms <= now) {
    Track& track = *oldest_;
    if (track.present) {
      const Reading* last = nearest(track, track.zone, now, /*fresh_only=*/false);
      Event event =
          makeEvent("beacon.exit", track, last, track.last_seen_ms + options_.exit_after_ms,
                    last != nullptr ? last->scanner : track.zone_scanner);
      event.data_json.pop_back();  // the object's '}': dwell_ms goes last
      event.data_json += fmt::format(",\"dwell_ms\":{}}}", track.last_seen_ms - track.first_ms);
      out.push_back(std::move(event));
      ++stats_.exits;
    } else {
      ++stats_.forgotten;
    }
    erase(track);
  }
}

void PresenceEngine::tick(int64_t now_ms, std::vector<Event>& out) {
  now_ms_ = std::max(now_ms_, now_ms);
  expire(now_ms_, out);
  // A device heard often enough, all within the window, and then quiet: its window closes now
  // (it must not wait for a sighting that may never come).
  if (waiting_ > 0) {
    std::size_t still = 0;
    for (auto& [identity, track] : tracks_) {
      if (!track.present && !tryEnter(track, now_ms_, out)) {
        ++still;
      }
    }
    waiting_ = still;
  }
  // Scanners no track refers to any more (also a flood of made-up names) leave the table.
  for (uint32_t slot = 0; slot < scanners_.size(); ++slot) {
    ScannerInfo& info = scanners_[slot];
    if (info.name == nullptr || info.refs != 0) {
      continue;
    }
    const auto it = scanner_index_.find(*info.name);
    scanners_bytes_ -= sizeof(std::pair<const std::string, uint32_t>) + sizeof(void*) +
                       sizeof(std::size_t) + kMallocOverhead + heapBytes(it->first);
    scanner_index_.erase(it);
    info = ScannerInfo{};
    free_slots_.push_back(slot);
  }
}

void PresenceEngine::observe(const Sighting& sighting, int64_t now_ms, std::vector<Event>& out) {
  for (const std::string& prefix : options_.ignore_prefixes) {
    if (!prefix.empty() && sighting.identity.rfind(prefix, 0) == 0) {
      ++stats_.ignored;
      return;
    }
  }
  // parseGatewayMessage() already refuses these; the engine's memory bound relies on it.
  if (sighting.identity.empty() || sighting.identity.size() > kMaxIdentityBytes ||
      sighting.scanner.empty() || sighting.scanner.size() > kMaxScannerBytes) {
    ++stats_.refused_invalid;
    return;
  }
  // Engine time never runs back: a late sighting counts as heard now.
  const int64_t t = std::max(now_ms_, sighting.timestamp_ms.value_or(now_ms));
  now_ms_ = t;
  expire(t, out);

  auto it = tracks_.find(sighting.identity);
  if (it == tracks_.end() && tracks_.size() >= options_.max_tracked) {
    ++stats_.refused;
    return;
  }
  const uint32_t slot = internScanner(sighting.scanner);
  if (slot == kNone) {
    ++stats_.refused_bytes;
    return;
  }
  if (it == tracks_.end()) {
    std::size_t growth =
        sizeof(std::pair<const std::string, Track>) + sizeof(void*) + sizeof(std::size_t) +
        2 * kMallocOverhead + kInitialReadings * sizeof(Reading) +
        (sighting.identity.size() > kSsoCapacity ? sighting.identity.size() + 1 + kMallocOverhead
                                                 : 0);
    if (static_cast<double>(tracks_.size() + 1) >
        static_cast<double>(tracks_.bucket_count()) * tracks_.max_load_factor()) {
      growth += tracks_.bucket_count() * 2 * sizeof(void*);  // the rehash to come
    }
    if (stateBytes() + growth > options_.max_state_bytes) {
      ++stats_.refused_bytes;
      return;
    }
    it = tracks_.emplace(sighting.identity, Track{}).first;
    Track& fresh = it->second;
    fresh.identity = &it->first;
    fresh.first_ms = t;
    fresh.readings.reserve(kInitialReadings);
    account(fresh);
    ++waiting_;
  }
  ++stats_.sightings;
  Track& track = it->second;
  track.last_seen_ms = t;
  touch(track);

  // This scanner's reading: found, added, or (at the cap, or when growing would pass the byte
  // bound) the stalest one taken over.
  auto reading = std::find_if(track.readings.begin(), track.readings.end(),
                              [&](const Reading& r) { return r.scanner == slot; });
  if (reading == track.readings.end()) {
    const std::size_t size = track.readings.size();
    bool grow = size < track.readings.capacity();
    if (!grow && size < kMaxReadingsPerTrack) {
      const std::size_t more = std::min(kMaxReadingsPerTrack, std::max<std::size_t>(size * 2, 2));
      const std::size_t extra = (more - track.readings.capacity()) * sizeof(Reading);
      if (stateBytes() + extra <= options_.max_state_bytes) {
        track.readings.reserve(more);
        grow = true;
      }
    }
    if (grow) {
      track.readings.emplace_back();
      reading = track.readings.end() - 1;
    } else {
      reading = std::min_element(
          track.readings.begin(), track.readings.end(),
          [](const Reading& a, const Reading& b) { return a.last_ms < b.last_ms; });
      unref(reading->scanner);
    }
    *reading = Reading{};
    reading->scanner = slot;
    ref(slot);
    account(track);
  }

  // The raw estimate: the gateway's calibrated distance, else the path-loss model.
  const double n10 = 10.0 * options_.path_loss_exponent;
  double raw =
      sighting.distance_m
          ? std::log10(std::max(*sighting.distance_m, 0.01))
          : (sighting.rssi_at_1m.value_or(options_.default_rssi_at_1m) - sighting.rssi) / n10;
  raw = std::clamp(raw + scanners_[slot].offset_log, kMinLogDistance, kMaxLogDistance);
  if (t - reading->last_ms > options_.scanner_stale_ms) {
    reading->samples = 0;  // it went stale: start over
  }
  const auto x = static_cast<float>(raw);
  const float a = static_cast<float>(options_.ewma_alpha);
  if (reading->samples == 0) {
    reading->log_d = x;
    reading->rssi = static_cast<float>(sighting.rssi);
    reading->recent[0] = reading->recent[1] = x;
  } else {
    const float m = reading->samples >= 2 ? median3(reading->recent[0], reading->recent[1], x) : x;
    reading->log_d += a * (m - reading->log_d);
    reading->rssi += a * (static_cast<float>(sighting.rssi) - reading->rssi);
    reading->recent[0] = reading->recent[1];
    reading->recent[1] = x;
  }
  reading->samples = static_cast<uint8_t>(std::min(3, reading->samples + 1));
  reading->last_ms = t;

  decide(track, t, out);
}

bool PresenceEngine::tryEnter(Track& track, int64_t t, std::vector<Event>& out) {
  if (t - track.first_ms < options_.window_ms ||
      track.sightings < static_cast<uint32_t>(options_.enter_after_sightings)) {
    return false;
  }
  const Reading* best = nearest(track, kNone, t, /*fresh_only=*/true);
  if (best == nullptr) {
    return false;  // every scanner went stale: the next sighting decides
  }
  track.present = true;
  track.zone = scanners_[best->scanner].zone;
  track.zone_scanner = best->scanner;
  ref(best->scanner);
  // It entered when first heard; the window only gathered the evidence.
  out.push_back(makeEvent("beacon.enter", track, best, track.first_ms, best->scanner));
  ++stats_.enters;
  return true;
}

void PresenceEngine::decide(Track& track, int64_t t, std::vector<Event>& out) {
  if (!track.present) {
    track.sightings = std::min<uint32_t>(track.sightings + 1, 1'000'000);
    tryEnter(track, t, out);
    return;
  }
  const Reading* best = nearest(track, kNone, t, /*fresh_only=*/true);
  const uint32_t zone = best == nullptr ? kNone : scanners_[best->scanner].zone;
  if (best == nullptr || zone == track.zone) {
    track.candidate = kNone;
    return;
  }
  const Reading* current = nearest(track, track.zone, t, /*fresh_only=*/true);
  const double current_log =
      current == nullptr ? std::numeric_limits<double>::infinity() : current->log_d;
  if (best->log_d > current_log - margin_log_) {
    track.candidate = kNone;
    return;
  }
  if (track.candidate != zone) {
    track.candidate = zone;
    track.candidate_since = t;
  }
  if (t - track.candidate_since < options_.switch_hold_ms) {
    return;
  }
  const std::string from(zoneName(track.zone));
  unref(track.zone_scanner);
  track.zone = zone;
  track.zone_scanner = best->scanner;
  ref(best->scanner);
  track.candidate = kNone;
  Event event = makeEvent("beacon.zone_change", track, best, t, best->scanner);
  event.data_json.pop_back();
  nlohmann::json from_to = {{"from", from}, {"to", zoneName(zone)}};
  event.data_json += "," + from_to.dump().substr(1);
  out.push_back(std::move(event));
  ++stats_.zone_changes;
}

PresenceStats PresenceEngine::stats() const {
  PresenceStats s = stats_;
  s.tracked = tracks_.size();
  s.scanners = scanner_index_.size();
  s.state_bytes = stateBytes();
  return s;
}

}  // namespace omniedge::beacon
