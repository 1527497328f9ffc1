#include "agent/omni/triggers.h"

#include <fcntl.h>
#include <openssl/hmac.h>
#include <spdlog/spdlog.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "agent/api/identity_resolver.h"
#include "agent/api/json_string.h"
#include "agent/api/thread_name.h"
#include "agent/api/uuid.h"
#include "agent/store/profile_cache.h"

namespace omniedge::omni {
namespace {

using Json = nlohmann::json;

// The customer fields a profile can be found by, in facts_'s order.
constexpr std::string_view kFields[] = {"loyalty_id",   "app_user_id", "email_sha256",
                                        "phone_sha256", "beacon",      "profile_id"};
constexpr int kFieldCount = 6;

int fieldIndex(std::string_view field) {
  for (int i = 0; i < kFieldCount; ++i) {
    if (kFields[i] == field) {
      return i;
    }
  }
  return -1;
}

// A rough per-entry overhead of the hash maps and lists, so that the bound holds in practice.
constexpr std::size_t kEntryOverhead = 96;

// The string value of a top-level field of a JSON object as ingest stores it, without parsing
// the whole object (the hot path reads only data.zone). Nested objects and arrays are skipped;
// a value with escapes is decoded by the JSON library. nullopt when absent or not a string.
std::optional<std::string> topLevelString(std::string_view json, std::string_view name) {
  std::size_t i = 0;
  int depth = 0;
  bool expect_key = false;
  while (i < json.size()) {
    const char c = json[i];
    if (c == '"') {
      const std::size_t start = i + 1;
      std::size_t end = start;
      bool escaped = false;
      while (end < json.size() && json[end] != '"') {
        if (json[end] == '\\') {
          escaped = true;
          ++end;
        }
        ++end;
      }
      if (end >= json.size()) {
        return std::nullopt;
      }
      i = end + 1;
      if (depth == 1 && expect_key) {
        expect_key = false;
        const bool hit = !escaped && json.substr(start, end - start) == name;
        while (i < json.size() && (json[i] == ' ' || json[i] == '\n' || json[i] == '\t' ||
                                   json[i] == '\r' || json[i] == ':')) {
          ++i;
        }
        if (hit) {
          if (i >= json.size() || json[i] != '"') {
            return std::nullopt;
          }
          const std::size_t vs = i + 1;
          std::size_t ve = vs;
          bool value_escaped = false;
          while (ve < json.size() && json[ve] != '"') {
            if (json[ve] == '\\') {
              value_escaped = true;
              ++ve;
            }
            ++ve;
          }
          if (ve >= json.size()) {
            return std::nullopt;
          }
          if (!value_escaped) {
            return std::string(json.substr(vs, ve - vs));
          }
          const Json v = Json::parse(json.substr(i, ve + 1 - i), nullptr, false);
          return v.is_string() ? std::optional<std::string>(v.get<std::string>()) : std::nullopt;
        }
      }
      continue;
    }
    if (c == '{' || c == '[') {
      ++depth;
      expect_key = c == '{' && depth == 1;
    } else if (c == '}' || c == ']') {
      --depth;
    } else if (c == ',' && depth == 1) {
      expect_key = true;
    }
    ++i;
  }
  return std::nullopt;
}

bool contains(const std::vector<std::string>& list, const std::string& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

unsigned purposeBit(std::string_view purpose) {
  if (purpose == "tracking") {
    return static_cast<unsigned>(ConsentPurpose::kTracking);
  }
  if (purpose == "personalization") {
    return static_cast<unsigned>(ConsentPurpose::kPersonalization);
  }
  if (purpose == "marketing") {
    return static_cast<unsigned>(ConsentPurpose::kMarketing);
  }
  return 0;
}

}  // namespace

// What the rules read of a profile, taken out of its JSON once per profile change.
struct TriggerEngine::Facts {
  bool known = false;
  std::string profile_id;
  std::string tier;
  std::string lifecycle;
  std::string customer_key;  // the key a kiosk asks GET /v1/customers/{key} with
  std::vector<std::string> segments;
  bool cart_not_empty = false;
  unsigned granted = 0;  // ConsentPurpose bits the profile grants explicitly (true)
  std::size_t bytes = 0;
};

struct TriggerEngine::Compiled {
  std::vector<TriggerRule> rules;
  std::unordered_map<std::string, std::vector<std::size_t>> by_type;  // exact `on`
  std::vector<std::size_t> globs;                                     // `on` with '*'
  std::vector<unsigned> consent_bits;                                 // by rule
};

TriggerEngine::TriggerEngine(TriggerOptions options, const store::ProfileCache& profiles,
                             EventWriter& out, const Clock& clock,
                             std::function<void(const Engagement&)> notify)
    : options_(std::move(options)),
      profiles_(profiles),
      out_(out),
      clock_(clock),
      notify_(std::move(notify)) {}

TriggerEngine::~TriggerEngine() { stop(); }

void TriggerEngine::setRules(std::vector<TriggerRule> rules) {
  auto c = std::make_shared<Compiled>();
  c->rules = std::move(rules);
  for (std::size_t i = 0; i < c->rules.size(); ++i) {
    const TriggerRule& r = c->rules[i];
    if (r.on.find('*') != std::string::npos) {
      c->globs.push_back(i);
    } else {
      c->by_type[r.on].push_back(i);
    }
    unsigned bits = 0;
    for (const std::string& p : r.consent) {
      bits |= purposeBit(p);
    }
    c->consent_bits.push_back(bits);
  }
  std::lock_guard lock(rules_mu_);
  rules_ = std::move(c);
}

void TriggerEngine::start() {
  if (!thread_.joinable()) {
    thread_ = std::jthread([this](std::stop_token stop) {
      nameThisThread("oe-triggers");
      run(stop);
    });
  }
}

void TriggerEngine::stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    queue_cv_.notify_all();
    thread_.join();
  }
}

void TriggerEngine::onStored(const std::vector<const Event*>& events) {
  std::vector<Firing> fired;
  const int64_t now = clock_.nowMs();
  for (const Event* e : events) {
    evaluate(*e, now, fired);
  }
  if (!fired.empty()) {
    enqueue(std::move(fired));
  }
}

std::shared_ptr<const TriggerEngine::Facts> TriggerEngine::factsFor(const Event& event) {
  const uint64_t generation = profiles_.generation();
  {
    std::lock_guard lock(facts_mu_);
    if (generation != facts_generation_) {
      for (auto& m : facts_) {
        m.clear();
      }
      facts_bytes_ = 0;
      facts_generation_ = generation;
    }
    bool all_known = true;
    for (const auto& [field, value] : event.customer) {
      const int f = fieldIndex(field);
      if (f < 0) {
        continue;
      }
      auto it = facts_[f].find(value);
      if (it == facts_[f].end()) {
        all_known = false;
      } else if (it->second->known) {
        return it->second;
      }
    }
    if (all_known) {
      return nullptr;  // every key was looked at since the last change: no profile
    }
  }

  // First look at this customer since the profiles changed: one read, outside the lock.
  auto facts = std::make_shared<Facts>();
  if (auto profile = profiles_.profileFor(event.customer); profile && profile->is_object()) {
    const Json& p = *profile;
    facts->known = true;
    if (auto it = p.find("id"); it != p.end() && it->is_string()) {
      facts->profile_id = it->get<std::string>();
    }
    if (auto it = p.find("tier"); it != p.end() && it->is_string()) {
      facts->tier = it->get<std::string>();
    }
    for (const char* name : {"lifecycle", "lifecycle_stage"}) {
      if (auto it = p.find(name); it != p.end() && it->is_string() && facts->lifecycle.empty()) {
        facts->lifecycle = it->get<std::string>();
      }
    }
    if (auto it = p.find("segments"); it != p.end() && it->is_array()) {
      for (const Json& s : *it) {
        if (s.is_string()) {
          facts->segments.push_back(s.get<std::string>());
        }
      }
    }
    if (auto it = p.find("cart"); it != p.end() && it->is_object()) {
      auto items = it->find("items");
      facts->cart_not_empty = items != it->end() && items->is_array() && !items->empty();
    }
    if (auto it = p.find("consent"); it != p.end() && it->is_object()) {
      for (const auto& [purpose, v] : it->items()) {
        if (v.is_boolean() && v.get<bool>()) {
          facts->granted |= purposeBit(purpose);
        }
      }
    }
    if (auto it = p.find("keys"); it != p.end() && it->is_array()) {
      // The key a kiosk looks the customer up by: a loyalty id, else an app user, else any.
      int best = 3;
      for (const Json& k : *it) {
        if (!k.is_string()) {
          continue;
        }
        const auto& key = k.get_ref<const std::string&>();
        const int rank = key.rfind("loyalty:", 0) == 0 ? 0 : (key.rfind("app:", 0) == 0 ? 1 : 2);
        if (rank < best) {
          best = rank;
          facts->customer_key = key;
        }
      }
    }
    if (facts->profile_id.empty()) {
      facts->known = false;  // a profile without an id cannot be rate-limited or held out
    }
  }
  facts->bytes = sizeof(Facts) + facts->profile_id.size() + facts->tier.size() +
                 facts->lifecycle.size() + facts->customer_key.size();
  for (const std::string& s : facts->segments) {
    facts->bytes += s.size() + sizeof(std::string);
  }

  std::lock_guard lock(facts_mu_);
  if (facts_generation_ == generation) {
    const std::size_t cap = options_.max_state_bytes / 2;
    bool counted = false;  // the facts once, each key that leads to them
    for (const auto& [field, value] : event.customer) {
      const int f = fieldIndex(field);
      if (f < 0) {
        continue;
      }
      const std::size_t add = value.size() + kEntryOverhead + (counted ? 0 : facts->bytes);
      counted = true;
      if (facts_bytes_ + add > cap) {
        // Past the bound: start again empty. Facts are a cache; the next look reads again.
        for (auto& m : facts_) {
          m.clear();
        }
        facts_bytes_ = 0;
      }
      if (facts_[f].insert_or_assign(value, facts).second) {
        facts_bytes_ += add;
      }
    }
  }
  return facts->known ? facts : nullptr;
}

bool TriggerEngine::rateOpen(const std::string& profile_id, const TriggerRule& rule,
                             int64_t now_ms) const {
  std::string key;
  key.reserve(profile_id.size() + rule.id.size() + 1);
  key += profile_id;
  key += '\n';
  key += rule.id;
  std::lock_guard lock(rate_mu_);
  auto it = rate_.find(key);
  return it == rate_.end() || it->second.count < rule.rate_count ||
         now_ms - it->second.window_start_ms >= rule.rate_window_ms ||
         now_ms < it->second.window_start_ms;
}

bool TriggerEngine::takeRate(const std::string& profile_id, const TriggerRule& rule,
                             int64_t now_ms) {
  std::string key;
  key.reserve(profile_id.size() + rule.id.size() + 1);
  key += profile_id;
  key += '\n';
  key += rule.id;
  std::lock_guard lock(rate_mu_);
  if (auto it = rate_.find(key); it != rate_.end()) {
    RateEntry& r = it->second;
    if (now_ms - r.window_start_ms < rule.rate_window_ms && now_ms >= r.window_start_ms) {
      if (r.count >= rule.rate_count) {
        return false;
      }
      ++r.count;
      return true;
    }
    // A new window: it ends last of all now.
    r.window_start_ms = now_ms;
    r.count = 1;
    rate_order_.splice(rate_order_.end(), rate_order_, r.order);
    return true;
  }
  const std::size_t cap = options_.max_state_bytes / 2;
  const std::size_t add = 2 * key.size() + kEntryOverhead;
  // Beyond the bound the windows that began first go first: they are the nearest to ending.
  while (!rate_order_.empty() && rate_bytes_ + add > cap) {
    const std::string& oldest = rate_order_.front();
    rate_bytes_ -= std::min(rate_bytes_, 2 * oldest.size() + kEntryOverhead);
    rate_.erase(oldest);
    rate_order_.pop_front();
  }
  rate_order_.push_back(key);
  RateEntry entry;
  entry.window_start_ms = now_ms;
  entry.count = 1;
  entry.order = std::prev(rate_order_.end());
  rate_.emplace(std::move(key), entry);
  rate_bytes_ += add;
  return true;
}

std::size_t TriggerEngine::evaluate(const Event& event, int64_t now_ms, std::vector<Firing>& out) {
  if (event.customer.empty() || event.type.rfind("engagement.", 0) == 0) {
    return 0;
  }
  std::shared_ptr<const Compiled> compiled;
  {
    std::lock_guard lock(rules_mu_);
    compiled = rules_;
  }
  if (!compiled || compiled->rules.empty()) {
    return 0;
  }
  const std::vector<std::size_t>* exact = nullptr;
  if (auto it = compiled->by_type.find(event.type); it != compiled->by_type.end()) {
    exact = &it->second;
  }
  bool any_glob = false;
  for (const std::size_t i : compiled->globs) {
    if (typeMatches(compiled->rules[i].on, event.type)) {
      any_glob = true;
      break;
    }
  }
  if (exact == nullptr && !any_glob) {
    return 0;
  }
  ++counters_.evaluated;
  const auto facts = factsFor(event);
  if (!facts) {
    return 0;  // triggers are for customers the centre sent a profile of
  }

  std::optional<std::string> zone;
  bool zone_read = false;
  int personalization = -1;  // -1 not asked yet, 0 allowed, 1 refused
  int marketing = -1;
  std::size_t fired = 0;
  const auto consider = [&](std::size_t index) {
    const TriggerRule& rule = compiled->rules[index];
    if (!rule.tiers.empty() && !contains(rule.tiers, facts->tier)) {
      return;
    }
    if (!rule.lifecycle.empty() && !contains(rule.lifecycle, facts->lifecycle)) {
      return;
    }
    if (!rule.segments_any.empty() &&
        std::none_of(rule.segments_any.begin(), rule.segments_any.end(),
                     [&](const std::string& s) { return contains(facts->segments, s); })) {
      return;
    }
    if (!rule.segments_all.empty() &&
        !std::all_of(rule.segments_all.begin(), rule.segments_all.end(),
                     [&](const std::string& s) { return contains(facts->segments, s); })) {
      return;
    }
    if (rule.cart != 0 && facts->cart_not_empty != (rule.cart > 0)) {
      return;
    }
    const unsigned required = compiled->consent_bits[index];
    if ((facts->granted & required) != required) {
      return;
    }
    if (!zone_read) {
      zone = topLevelString(event.data_json, "zone");
      zone_read = true;
    }
    if (!rule.zones.empty() && (!zone || !contains(rule.zones, *zone))) {
      return;
    }
    // A customer already served by this rule lately: nothing more to ask (the common case of
    // a customer walking about, and the cheapest answer).
    if (!rateOpen(facts->profile_id, rule, now_ms)) {
      ++counters_.rate_limited;
      return;
    }
    // Consent as the profile cache knows it now (every key of the event asked): refused
    // personalization means no trigger at all; refused marketing, no engagement event either.
    if (personalization < 0) {
      personalization = profiles_.refused(event.customer, ConsentPurpose::kPersonalization) ? 1 : 0;
    }
    if (personalization == 1) {
      ++counters_.no_personalization;
      return;
    }
    if (marketing < 0) {
      marketing = profiles_.refused(event.customer, ConsentPurpose::kMarketing) ? 1 : 0;
    }
    if (marketing == 1) {
      ++counters_.no_marketing;
      return;
    }
    if (!takeRate(facts->profile_id, rule, now_ms)) {
      ++counters_.rate_limited;
      return;
    }
    Firing f;
    f.holdout = heldOut(rule.id, facts->profile_id, rule.holdout);
    f.zone = zone.value_or("");
    f.profile_id = facts->profile_id;
    f.customer_key = facts->customer_key;
    f.rule_id = rule.id;
    f.rule_version = rule.version;
    f.show_json = rule.show_json;
    f.show_kind = rule.show_kind;
    f.tier = facts->tier;
    Event& e = f.event;
    e.id = makeUuidV7(now_ms);
    e.type = rule.emit;
    e.source = "triggers";
    e.occurred_at_ms = now_ms;
    e.customer = event.customer;
    e.customer.try_emplace("profile_id", facts->profile_id);
    std::string& d = e.data_json;
    d = "{\"rule\":";
    appendJsonString(d, rule.id);
    d += ",\"rule_version\":";
    appendJsonString(d, rule.version);
    d += f.holdout ? ",\"holdout\":true" : ",\"holdout\":false";
    if (rule.holdout > 0) {
      d += ",\"holdout_share\":" + Json(rule.holdout).dump();
    }
    d += ",\"trigger\":{\"id\":";
    appendJsonString(d, event.id);
    d += ",\"type\":";
    appendJsonString(d, event.type);
    d += '}';
    if (zone) {
      d += ",\"zone\":";
      appendJsonString(d, *zone);
    }
    if (!rule.show_json.empty()) {
      d += ",\"show\":";
      d += rule.show_json;
    }
    d += '}';
    f.bytes = sizeof(Firing) + d.size() + e.id.size() + e.type.size() + f.zone.size() +
              f.customer_key.size() + f.show_json.size();
    for (const auto& [k, v] : e.customer) {
      f.bytes += k.size() + v.size() + 64;
    }
    ++counters_.fired;
    if (f.holdout) {
      ++counters_.held_out;
    }
    out.push_back(std::move(f));
    ++fired;
  };
  if (exact != nullptr) {
    for (const std::size_t i : *exact) {
      consider(i);
    }
  }
  if (any_glob) {
    for (const std::size_t i : compiled->globs) {
      if (typeMatches(compiled->rules[i].on, event.type)) {
        consider(i);
      }
    }
  }
  return fired;
}

bool TriggerEngine::heldOut(std::string_view rule_id, std::string_view profile_id,
                            double share) const {
  if (share <= 0) {
    return false;
  }
  if (share >= 1) {
    return true;
  }
  std::string message = "holdout";
  message += '\0';
  message += rule_id;
  message += '\0';
  message += profile_id;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), options_.holdout_key.data(), static_cast<int>(options_.holdout_key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &mac_len);
  uint64_t x = 0;
  for (int i = 0; i < 8; ++i) {
    x = (x << 8) | mac[i];
  }
  // x / 2^64 < share, without rounding x to a double's 53 bits first.
  return static_cast<long double>(x) < static_cast<long double>(share) * 18446744073709551616.0L;
}

void TriggerEngine::enqueue(std::vector<Firing> firings) {
  {
    std::lock_guard lock(queue_mu_);
    for (Firing& f : firings) {
      queue_bytes_ += f.bytes;
      queue_.push_back(std::move(f));
    }
    while (queue_bytes_ > options_.max_queue_bytes && queue_.size() > 1) {
      queue_bytes_ -= std::min(queue_bytes_, queue_.front().bytes);
      queue_.pop_front();
      ++counters_.queue_dropped;
    }
  }
  queue_cv_.notify_one();
}

void TriggerEngine::run(std::stop_token stop) {
  while (true) {
    std::vector<Firing> batch;
    {
      std::unique_lock lock(queue_mu_);
      queue_cv_.wait(lock, stop, [this] { return !queue_.empty(); });
      if (queue_.empty()) {
        return;  // stopping, and everything queued went out
      }
      batch.reserve(queue_.size());
      for (Firing& f : queue_) {
        batch.push_back(std::move(f));
      }
      queue_.clear();
      queue_bytes_ = 0;
    }
    deliver(batch);
  }
}

void TriggerEngine::deliver(std::vector<Firing>& batch) {
  // The kiosks first: the customer is walking by now; the event is for the centre.
  for (const Firing& f : batch) {
    if (f.holdout || !notify_) {
      continue;
    }
    std::string j = "{\"id\":";
    appendJsonString(j, f.event.id);
    j += ",\"type\":";
    appendJsonString(j, f.event.type);
    j += ",\"rule\":";
    appendJsonString(j, f.rule_id);
    j += ",\"rule_version\":";
    appendJsonString(j, f.rule_version);
    j += ",\"zone\":";
    appendJsonString(j, f.zone);
    j += ",\"at\":" + std::to_string(f.event.occurred_at_ms);
    j += ",\"customer\":{\"profile_id\":";
    appendJsonString(j, f.profile_id);
    j += ",\"key\":";
    appendJsonString(j, f.customer_key);
    j += ",\"tier\":";
    appendJsonString(j, f.tier);
    j += '}';
    if (!f.show_json.empty()) {
      j += ",\"show\":";
      j += f.show_json;
    }
    if (f.show_kind == "cart" && !f.customer_key.empty()) {
      if (auto cart = profiles_.cartJson(f.customer_key)) {
        j += ",\"cart\":";
        j += *cart;
      }
    }
    j += '}';
    notify_(Engagement{f.zone, std::move(j)});
    ++counters_.shown;
  }
  std::vector<Event> events;
  events.reserve(batch.size());
  for (Firing& f : batch) {
    events.push_back(std::move(f.event));
  }
  const std::size_t n = events.size();
  if (auto stored = out_.appendEach(std::move(events)); !stored) {
    counters_.append_failed += n;
    spdlog::warn("triggers: {} engagement event(s) not stored: {}", n, stored.error().message);
  } else if (!stored->rejected.empty()) {
    counters_.append_failed += stored->rejected.size();
    spdlog::warn("triggers: an engagement event was refused: {} ({})",
                 stored->rejected.front().error.message, stored->rejected.front().error.field);
  }
}

TriggerStats TriggerEngine::stats() const {
  TriggerStats s;
  s.evaluated = counters_.evaluated;
  s.fired = counters_.fired;
  s.held_out = counters_.held_out;
  s.rate_limited = counters_.rate_limited;
  s.no_personalization = counters_.no_personalization;
  s.no_marketing = counters_.no_marketing;
  s.queue_dropped = counters_.queue_dropped;
  s.append_failed = counters_.append_failed;
  s.shown = counters_.shown;
  {
    std::lock_guard lock(rules_mu_);
    s.rules = rules_ ? rules_->rules.size() : 0;
  }
  {
    std::lock_guard lock(facts_mu_);
    s.state_bytes += facts_bytes_;
  }
  {
    std::lock_guard lock(rate_mu_);
    s.state_bytes += rate_bytes_;
  }
  return s;
}

Result<int64_t> TriggerEngine::forget(const SubjectKeys& keys) {
  std::vector<std::string> ids;
  {
    std::lock_guard lock(facts_mu_);
    for (const auto& [field, value] : keys) {
      if (field == "profile_id") {
        ids.push_back(value);
      }
      const int f = fieldIndex(field);
      if (f < 0) {
        continue;
      }
      if (auto it = facts_[f].find(value); it != facts_[f].end() && it->second->known) {
        ids.push_back(it->second->profile_id);
      }
    }
    // Facts are only a cache of the profile cache (which erasure clears itself): drop them all
    // rather than hunt for every key that led to the subject.
    for (auto& m : facts_) {
      m.clear();
    }
    facts_bytes_ = 0;
  }
  int64_t gone = 0;
  const auto mine = [&ids](std::string_view profile_id) {
    return std::find(ids.begin(), ids.end(), profile_id) != ids.end();
  };
  {
    std::lock_guard lock(rate_mu_);
    for (auto it = rate_.begin(); it != rate_.end();) {
      const std::string& key = it->first;
      if (mine(std::string_view(key).substr(0, key.find('\n')))) {
        rate_bytes_ -= std::min(rate_bytes_, 2 * key.size() + kEntryOverhead);
        rate_order_.erase(it->second.order);
        it = rate_.erase(it);
        ++gone;
      } else {
        ++it;
      }
    }
  }
  {
    std::lock_guard lock(queue_mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (mine(it->profile_id)) {
        queue_bytes_ -= std::min(queue_bytes_, it->bytes);
        it = queue_.erase(it);
        ++gone;
      } else {
        ++it;
      }
    }
  }
  return gone;
}

Result<std::string> holdoutKey(const std::string& tenant_key, const std::string& dir) {
  if (!tenant_key.empty()) {
    return tenant_key;
  }
  const std::filesystem::path path = std::filesystem::path(dir) / "triggers.key";
  {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      std::string key((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (key.size() >= 16) {
        return key;
      }
    }
  }
  // The kernel's generator, not RAND_bytes: drawing from OpenSSL at start would load its
  // providers and configuration (2.4 MB of resident memory) in an agent that may never need them.
  std::string key(32, '\0');
  if (::getrandom(key.data(), key.size(), 0) != static_cast<ssize_t>(key.size())) {
    return makeError(
        "io", std::string("cannot draw the triggers' hold-out key: ") + std::strerror(errno));
  }
  // Written aside and renamed: a crash never leaves a short key that would reshuffle hold-outs.
  const std::filesystem::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return makeError("io", "cannot write " + tmp.string() + ": " + std::strerror(errno));
  }
  const bool written =
      ::write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!written || ::rename(tmp.c_str(), path.c_str()) != 0) {
    return makeError("io", "cannot write " + path.string() + ": " + std::strerror(errno));
  }
  return key;
}

}  // namespace omniedge::omni
