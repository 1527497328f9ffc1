#include "agent/omni/visits.h"

#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

#include "agent/api/identity_resolver.h"
#include "agent/api/thread_name.h"
#include "agent/api/time.h"
#include "agent/store/profile_cache.h"
#include "agent/store/schema.h"
#include "agent/store/wal_vfs.h"
#include "drivers/kiosk/customer_key.h"

namespace omniedge::omni {
namespace {

using nlohmann::json;

// Per visit, so that one endless visit cannot take the whole budget and a summary stays well
// under buffer.max_event_bytes.
constexpr std::size_t kMaxTouchpoints = 200;
constexpr std::size_t kMaxTransactions = 20;
constexpr std::size_t kMaxLinesPerTransaction = 50;
constexpr std::size_t kMaxIds = 256;  // the ids joined lately, to skip duplicates
constexpr std::size_t kAttributionTouchpoints = 50;

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// The channel an event's type names ("kiosk.cart_add" -> "kiosk").
std::string channelOf(std::string_view type) { return std::string(type.substr(0, type.find('.'))); }

// A local trigger's engagement.* event (agent/omni/triggers.h), or any trigger.* a driver sends.
bool isTrigger(std::string_view type) {
  return type.rfind("engagement.", 0) == 0 || type.find("trigger") != std::string_view::npos;
}

// Events that can be part of a journey.
bool relevant(const Event& e) {
  if (e.customer.empty()) {
    return false;
  }
  return e.type == "beacon.enter" || e.type == "beacon.zone_change" || e.type == "beacon.exit" ||
         e.type == "pos.transaction" || startsWith(e.type, "kiosk.") || isTrigger(e.type);
}

// A string field of `data`, if any of `names` is one.
std::string stringField(const json& data, std::initializer_list<const char*> names) {
  for (const char* n : names) {
    const auto it = data.find(n);
    if (it != data.end() && it->is_string()) {
      return it->get<std::string>();
    }
    if (it != data.end() && it->is_number_integer()) {
      return std::to_string(it->get<int64_t>());
    }
  }
  return {};
}

// All-digit SKUs and GTINs compare without their leading zeros (a GTIN-14 "00000000067591" is
// the app's "67591").
std::string skuKey(std::string s) {
  if (!s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    const auto nz = s.find_first_not_of('0');
    s = nz == std::string::npos ? "0" : s.substr(nz);
  }
  return s;
}

// The lines of a transaction that were in `cart_items`: [{line, sku, channel, qty}].
json cartLines(const json& data, const json& cart_items) {
  json out = json::array();
  const auto lines = data.find("lines");
  if (lines == data.end() || !lines->is_array() || !cart_items.is_array()) {
    return out;
  }
  for (std::size_t i = 0; i < lines->size(); ++i) {
    const json& line = (*lines)[i];
    if (!line.is_object() || line.value("voided", false) || line.value("return", false)) {
      continue;
    }
    for (const json& item : cart_items) {
      if (!item.is_object() || !item.contains("sku") || !item["sku"].is_string()) {
        continue;
      }
      const std::string sku = skuKey(item["sku"].get<std::string>());
      const bool match =
          (!stringField(line, {"item_id"}).empty() &&
           skuKey(stringField(line, {"item_id"})) == sku) ||
          (!stringField(line, {"gtin"}).empty() && skuKey(stringField(line, {"gtin"})) == sku);
      if (match) {
        out.push_back({{"line", i},
                       {"sku", item["sku"]},
                       {"channel", item.value("channel", "unknown")},
                       {"qty", item.value("qty", json(1))}});
        break;
      }
    }
  }
  return out;
}

Error sqliteError(sqlite3* db, const std::string& what) {
  return makeError("io", what + ": " + (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
}

bool exec(sqlite3* db, const char* sql) {
  return sqlite3_exec(db, sql, nullptr, nullptr, nullptr) == SQLITE_OK;
}

// visits.db has had one layout (fad2525); version 0 is it without a version.
constexpr const char* kVisitsTable =
    "CREATE TABLE IF NOT EXISTS visits (id TEXT PRIMARY KEY, state TEXT NOT NULL)";

Result<void> visitsToV1(sqlite3* db) { return store::schema::exec(db, kVisitsTable); }

constexpr store::schema::Migration kVisitsMigrations[] = {
    {1, "versioned", visitsToV1},
};
static_assert(std::size(kVisitsMigrations) == store::schema::kVisits &&
              kVisitsMigrations[store::schema::kVisits - 1].to == store::schema::kVisits);

}  // namespace

std::string visitId(std::string_view store_id, std::string_view subject, int64_t started_ms) {
  std::string input;
  input.append(store_id).push_back('\n');
  input.append(subject).push_back('\n');
  input += std::to_string(started_ms);
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(input.data()), input.size(), md);
  md[6] = static_cast<unsigned char>((md[6] & 0x0f) | 0x80);  // version 8
  md[8] = static_cast<unsigned char>((md[8] & 0x3f) | 0x80);  // variant 10
  std::string out;
  out.reserve(36);
  static constexpr char kHex[] = "0123456789abcdef";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) {
      out.push_back('-');
    }
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 0xf]);
  }
  return out;
}

// One open (or closing) visit. Timestamps are the events' occurred_at, except heard_ms (the
// agent's clock when it last heard of the customer: what visits.timeout counts from, also for
// replayed input with old timestamps).
struct VisitTracker::Visit {
  std::string id;
  std::string subject;
  std::vector<std::string> keys;  // canonical customer keys ("loyalty:L1", "ibeacon:…")
  int64_t started_ms = 0;
  int64_t last_ms = 0;
  int64_t heard_ms = 0;
  int64_t beacon_first_ms = 0;  // the beacon.enter's occurred_at (exit's dwell_ms counts from it)
  json zones = json::array();   // [{zone, entered_at, dwell_ms (absent while in it)}]
  json touchpoints = json::array();
  json transactions = json::array();
  json cart_bought = json::array();  // [{sku, channel, qty}]
  std::set<std::string> channels;
  std::deque<std::string> ids;
  uint64_t touchpoints_dropped = 0;
  std::string closed_by;  // "" while open; exit | timeout | capacity
  int64_t ended_ms = 0;
  std::size_t bytes = 0;  // its state's size when last persisted
  bool dirty = false;

  json toJson() const {
    return {{"id", id},
            {"subject", subject},
            {"keys", keys},
            {"started_ms", started_ms},
            {"last_ms", last_ms},
            {"heard_ms", heard_ms},
            {"beacon_first_ms", beacon_first_ms},
            {"zones", zones},
            {"touchpoints", touchpoints},
            {"transactions", transactions},
            {"cart_bought", cart_bought},
            {"channels", channels},
            {"ids", ids},
            {"touchpoints_dropped", touchpoints_dropped},
            {"closed_by", closed_by},
            {"ended_ms", ended_ms}};
  }

  static std::unique_ptr<Visit> fromJson(const json& j) {
    auto v = std::make_unique<Visit>();
    try {
      v->id = j.at("id").get<std::string>();
      v->subject = j.at("subject").get<std::string>();
      v->keys = j.at("keys").get<std::vector<std::string>>();
      v->started_ms = j.at("started_ms").get<int64_t>();
      v->last_ms = j.at("last_ms").get<int64_t>();
      v->heard_ms = j.at("heard_ms").get<int64_t>();
      v->beacon_first_ms = j.at("beacon_first_ms").get<int64_t>();
      v->zones = j.at("zones");
      v->touchpoints = j.at("touchpoints");
      v->transactions = j.at("transactions");
      v->cart_bought = j.at("cart_bought");
      v->channels = j.at("channels").get<std::set<std::string>>();
      v->ids = j.at("ids").get<std::deque<std::string>>();
      v->touchpoints_dropped = j.at("touchpoints_dropped").get<uint64_t>();
      v->closed_by = j.at("closed_by").get<std::string>();
      v->ended_ms = j.at("ended_ms").get<int64_t>();
    } catch (const json::exception&) {
      return nullptr;
    }
    return v;
  }

  bool seen(const std::string& event_id) const {
    return std::find(ids.begin(), ids.end(), event_id) != ids.end();
  }

  void addTouchpoint(json tp) {
    if (touchpoints.size() >= kMaxTouchpoints) {
      ++touchpoints_dropped;
      return;
    }
    touchpoints.push_back(std::move(tp));
  }

  // Ends the zone the customer is in (if any) at `at_ms`.
  void leaveZone(int64_t at_ms) {
    if (!zones.empty() && !zones.back().contains("dwell_ms")) {
      const int64_t entered = zones.back()["entered_at"].get<int64_t>();
      zones.back()["dwell_ms"] = std::max<int64_t>(0, at_ms - entered);
    }
  }

  // The customer keys for the summary's `customer`, as events carry them.
  std::map<std::string, std::string> customer() const {
    std::map<std::string, std::string> out;
    for (const auto& key : keys) {
      if (startsWith(key, "profile:")) {
        out.try_emplace("profile_id", key.substr(8));
        continue;
      }
      auto [field, value] = kiosk::customerFieldOf(key);
      if (!field.empty() && !value.empty()) {
        out.try_emplace(std::move(field), std::move(value));
      }
    }
    return out;
  }

  // The visit.summary's data. `detail` 0: everything; 1: transactions without lines and the
  // last 50 touchpoints; 2: no touchpoints (for a summary too large for the buffer).
  json summary(int detail) const {
    json zones_out = json::array();
    for (const auto& z : zones) {
      zones_out.push_back({{"zone", z["zone"]},
                           {"entered_at", formatRfc3339Ms(z["entered_at"].get<int64_t>())},
                           {"dwell_ms", z.value("dwell_ms", int64_t{0})}});
    }
    json tps = json::array();
    if (detail < 2) {
      const std::size_t from =
          detail == 0 || touchpoints.size() <= 50 ? 0 : touchpoints.size() - 50;
      for (std::size_t i = from; i < touchpoints.size(); ++i) {
        json tp = touchpoints[i];
        tp["at"] = formatRfc3339Ms(tp["at"].get<int64_t>());
        tps.push_back(std::move(tp));
      }
    }
    json txs = json::array();
    bool converted = false;
    for (const auto& t : transactions) {
      json tx = t;
      tx["at"] = formatRfc3339Ms(t["at"].get<int64_t>());
      if (detail > 0) {
        tx.erase("lines");
      }
      converted = converted || t.value("kind", "sale") == "sale";
      txs.push_back(std::move(tx));
    }
    json out = {{"visit_id", id},
                {"started_at", formatRfc3339Ms(started_ms)},
                {"ended_at", formatRfc3339Ms(ended_ms != 0 ? ended_ms : last_ms)},
                {"closed_by", closed_by},
                {"zones", std::move(zones_out)},
                {"touchpoints", std::move(tps)},
                {"transactions", std::move(txs)},
                {"converted", converted},
                {"cart_items_bought", cart_bought},
                {"channels", channels}};
    const uint64_t dropped =
        touchpoints_dropped +
        (detail == 0 ? 0 : (detail == 1 && touchpoints.size() > 50 ? touchpoints.size() - 50 : 0)) +
        (detail == 2 ? touchpoints.size() : 0);
    if (dropped > 0) {
      out["touchpoints_dropped"] = dropped;
    }
    return out;
  }
};

VisitTracker::VisitTracker(const VisitOptions& options, const store::ProfileCache* profiles,
                           const Clock& clock)
    : options_(options), profiles_(profiles), clock_(clock) {}

Result<std::unique_ptr<VisitTracker>> VisitTracker::open(const VisitOptions& options,
                                                         const store::ProfileCache* profiles,
                                                         const Clock& clock) {
  std::unique_ptr<VisitTracker> t(new VisitTracker(options, profiles, clock));
  if (auto r = t->openDb(); !r) {
    return r.error();
  }
  if (auto r = t->load(); !r) {
    return r.error();
  }
  return t;
}

VisitTracker::~VisitTracker() {
  stop();
  sqlite3_finalize(put_);
  sqlite3_finalize(drop_);
  sqlite3_close(db_);
}

Result<void> VisitTracker::openDb() {
  const std::string path = (options_.dir / "visits.db").string();
  // Before SQLite opens it for writing: a file a newer omniedge made is refused unchanged.
  if (auto r = store::schema::refuseNewer(path, store::schema::kVisits); !r) {
    return r.error();
  }
  // With synchronous=FULL through the buffer's WAL VFS (agent/store/wal_vfs.h): a round's small
  // commit goes to the disk's sectors instead of rewriting 4 KiB pages. The VFS relies on FULL
  // from the first frame written, so that comes first.
  if (sqlite3_open_v2(
          path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
          options_.synchronous_full ? store::detail::coalescingWalVfs() : nullptr) != SQLITE_OK) {
    return sqliteError(db_, "cannot open " + path);
  }
  sqlite3_busy_timeout(db_, 5000);
  const std::string pragmas = std::string("PRAGMA synchronous=") +
                              (options_.synchronous_full ? "FULL" : "NORMAL") +
                              "; PRAGMA journal_mode=WAL; PRAGMA secure_delete=ON;";
  if (!exec(db_, pragmas.c_str())) {
    return sqliteError(db_, "cannot set up " + path);
  }
  if (auto r = store::schema::upgrade(db_, path, {"visits.db", kVisitsTable, kVisitsMigrations});
      !r) {
    return makeError(r.error().code, "visits: " + r.error().message);
  }
  // An upsert, not INSERT OR REPLACE: a visit's row keeps its rowid and is rewritten in its own
  // leaf. REPLACE deleted it and inserted it anew at the table's end, and changed the id index
  // and the free list besides: ~20 KB written for each event joined to a visit.
  if (sqlite3_prepare_v2(db_,
                         "INSERT INTO visits (id, state) VALUES (?1, ?2) "
                         "ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                         -1, &put_, nullptr) != SQLITE_OK ||
      sqlite3_prepare_v2(db_, "DELETE FROM visits WHERE id = ?1", -1, &drop_, nullptr) !=
          SQLITE_OK) {
    return sqliteError(db_, "cannot prepare statements on " + path);
  }
  return {};
}

Result<void> VisitTracker::load() {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT id, state FROM visits", -1, &st, nullptr) != SQLITE_OK) {
    return sqliteError(db_, "cannot read visits.db");
  }
  std::vector<std::string> broken;
  std::lock_guard lock(state_mu_);
  while (sqlite3_step(st) == SQLITE_ROW) {
    const auto* id = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, 1));
    const std::string doc = text != nullptr ? text : "";
    auto v = Visit::fromJson(json::parse(doc, nullptr, false));
    if (!v) {
      broken.emplace_back(id != nullptr ? id : "");
      continue;
    }
    v->bytes = doc.size();
    bytes_ += v->bytes;
    Visit& ref = *v;
    const std::string key = ref.id;
    visits_[key] = std::move(v);
    if (ref.closed_by.empty()) {
      const std::vector<std::string> keys = ref.keys;
      indexLocked(ref, keys);
    }
  }
  sqlite3_finalize(st);
  for (const auto& id : broken) {
    spdlog::warn("visits.db: the state of visit {} is unreadable; dropped", id);
    sqlite3_bind_text(drop_, 1, id.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_step(drop_);
    sqlite3_reset(drop_);
  }
  if (!visits_.empty()) {
    spdlog::info("visits: {} visits resumed from visits.db", visits_.size());
  }
  return {};
}

void VisitTracker::start(EventWriter& out) {
  thread_ = std::jthread([this, &out](std::stop_token stop) {
    nameThisThread("oe-visits");
    run(stop, &out);
  });
}

void VisitTracker::stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    queue_cv_.notify_all();
    thread_.join();
  }
}

void VisitTracker::run(std::stop_token stop, EventWriter* out) {
  while (!stop.stop_requested()) {
    step(*out);
    std::unique_lock lock(queue_mu_);
    queue_cv_.wait_for(lock, stop, std::chrono::seconds(1), [this] { return wake_; });
    wake_ = false;
  }
  step(*out);  // what the last events changed goes to visits.db before the thread ends
}

VisitStats VisitTracker::stats() const {
  std::lock_guard lock(state_mu_);
  VisitStats s = counters_;
  s.open = visits_.size();
  s.bytes = bytes_;
  return s;
}

std::vector<std::string> VisitTracker::keysOf(const std::map<std::string, std::string>& customer,
                                              std::string* profile_id, json* profile) const {
  std::vector<std::string> keys;
  auto add = [&keys](std::string key) {
    if (!key.empty() && std::find(keys.begin(), keys.end(), key) == keys.end()) {
      keys.push_back(std::move(key));
    }
  };
  std::optional<json> found;
  if (profiles_ != nullptr) {
    found = profiles_->profileFor(customer);
  }
  if (found && found->is_object() && found->contains("id") && (*found)["id"].is_string()) {
    *profile_id = (*found)["id"].get<std::string>();
    add("profile:" + *profile_id);
  }
  static constexpr std::pair<const char*, const char*> kOrder[] = {
      {"profile_id", "profile:"},        {"loyalty_id", "loyalty:"},        {"app_user_id", "app:"},
      {"email_sha256", "email_sha256:"}, {"phone_sha256", "phone_sha256:"}, {"beacon", ""}};
  for (const auto& [field, prefix] : kOrder) {
    if (auto it = customer.find(field); it != customer.end()) {
      add(field == std::string_view("profile_id")
              ? "profile:" + it->second
              : kiosk::canonicalCustomerKey(std::string(prefix) + it->second));
    }
  }
  if (found && found->contains("keys") && (*found)["keys"].is_array()) {
    for (const auto& k : (*found)["keys"]) {
      if (k.is_string()) {
        add(kiosk::canonicalCustomerKey(k.get<std::string>()));
      }
    }
  }
  if (found && profile != nullptr) {
    *profile = std::move(*found);
  }
  return keys;
}

VisitTracker::Visit* VisitTracker::findLocked(const std::vector<std::string>& keys) const {
  for (const auto& key : keys) {
    if (auto it = subject_by_key_.find(key); it != subject_by_key_.end()) {
      if (auto v = visits_.find(it->second); v != visits_.end()) {
        return v->second.get();
      }
    }
  }
  return nullptr;
}

void VisitTracker::indexLocked(Visit& v, const std::vector<std::string>& keys) {
  for (const auto& key : keys) {
    if (std::find(v.keys.begin(), v.keys.end(), key) == v.keys.end()) {
      v.keys.push_back(key);
      v.dirty = true;
    }
    subject_by_key_[key] = v.id;
  }
}

void VisitTracker::eraseLocked(const std::string& id) {
  auto it = visits_.find(id);
  if (it == visits_.end()) {
    return;
  }
  for (const auto& key : it->second->keys) {
    if (auto k = subject_by_key_.find(key); k != subject_by_key_.end() && k->second == id) {
      subject_by_key_.erase(k);
    }
  }
  bytes_ -= std::min(bytes_, it->second->bytes);
  visits_.erase(it);
}

void VisitTracker::onStored(const std::vector<const Event*>& events) {
  bool touched = false;
  for (const Event* e : events) {
    if (e == nullptr || !relevant(*e)) {
      continue;
    }
    // The profile lookup and the consent check are made before the state lock is taken.
    std::string profile_id;
    const auto keys = keysOf(e->customer, &profile_id, nullptr);
    const bool refused =
        profiles_ != nullptr && profiles_->refused(e->customer, ConsentPurpose::kTracking);
    json data = json::parse(e->data_json, nullptr, false);
    if (!data.is_object()) {
      data = json::object();
    }
    std::lock_guard lock(state_mu_);
    Visit* v = findLocked(keys);
    if (refused) {
      // No journey for a customer who refused tracking: what was kept of an open one goes.
      ++counters_.refused;
      if (v != nullptr) {
        erased_.push_back(v->id);
        eraseLocked(v->id);
        touched = true;
      }
      continue;
    }
    if (v == nullptr) {
      if (e->type == "beacon.exit" || keys.empty()) {
        continue;  // the end of a visit that was never seen to start (or was erased)
      }
      const std::string subject = profile_id.empty() ? keys.front() : "profile:" + profile_id;
      auto fresh = std::make_unique<Visit>();
      fresh->id = visitId(e->store_id, subject, e->occurred_at_ms);
      fresh->subject = subject;
      fresh->started_ms = e->occurred_at_ms;
      fresh->last_ms = e->occurred_at_ms;
      if (visits_.count(fresh->id) != 0) {
        continue;  // a visit of this subject started at this very moment is closing
      }
      v = fresh.get();
      const std::string id = fresh->id;
      visits_[id] = std::move(fresh);
    }
    if (v->seen(e->id)) {
      continue;
    }
    v->ids.push_back(e->id);
    if (v->ids.size() > kMaxIds) {
      v->ids.pop_front();
    }
    indexLocked(*v, keys);
    v->dirty = true;
    touched = true;
    v->heard_ms = clock_.nowMs();
    v->last_ms = std::max(v->last_ms, e->occurred_at_ms);
    const int64_t at = e->occurred_at_ms;
    if (auto ch = data.find("channel"); ch != data.end() && ch->is_string()) {
      v->channels.insert(ch->get<std::string>());
    }
    json tp = {{"at", at}, {"type", e->type}};
    if (e->type == "beacon.enter" || e->type == "beacon.zone_change") {
      v->channels.insert("store");
      std::string zone = stringField(data, {"to", "zone"});
      if (v->beacon_first_ms == 0) {
        v->beacon_first_ms = at;
      }
      if (!zone.empty() && (v->zones.empty() || v->zones.back().contains("dwell_ms") ||
                            v->zones.back()["zone"] != zone)) {
        v->leaveZone(at);
        v->zones.push_back({{"zone", zone}, {"entered_at", at}});
      }
      tp["zone"] = zone;
    } else if (e->type == "beacon.exit") {
      v->channels.insert("store");
      int64_t end = at;
      if (auto dwell = data.find("dwell_ms");
          dwell != data.end() && dwell->is_number_integer() && v->beacon_first_ms != 0) {
        end = std::min(at, v->beacon_first_ms + dwell->get<int64_t>());
      }
      v->leaveZone(end);
      tp["zone"] = stringField(data, {"zone"});
      v->closed_by = "exit";
      v->ended_ms = at;
    } else if (e->type == "pos.transaction") {
      v->channels.insert("pos");
      json tx = {{"id", e->id},
                 {"at", at},
                 {"workstation", stringField(data, {"workstation"})},
                 {"sequence", stringField(data, {"sequence"})},
                 {"kind", data.value("kind", "sale")},
                 {"currency", stringField(data, {"currency"})}};
      if (auto totals = data.find("totals"); totals != data.end() && totals->is_object()) {
        tx["total"] = totals->value("grand", json());
      }
      json lines = json::array();
      if (auto ls = data.find("lines"); ls != data.end() && ls->is_array()) {
        for (const auto& l : *ls) {
          if (lines.size() >= kMaxLinesPerTransaction || !l.is_object() ||
              l.value("voided", false)) {
            continue;
          }
          std::string sku = stringField(l, {"item_id", "gtin"});
          json line = {{"sku", sku},
                       {"quantity", l.value("quantity", json(1))},
                       {"amount", l.value("amount", json())}};
          if (l.value("return", false)) {
            line["return"] = true;
          }
          lines.push_back(std::move(line));
        }
      }
      tx["lines"] = std::move(lines);
      if (v->transactions.size() < kMaxTransactions) {
        v->transactions.push_back(std::move(tx));
      }
      if (auto attr = data.find("attribution"); attr != data.end() && attr->is_object()) {
        for (const auto& cl : attr->value("cart_lines", json::array())) {
          const bool known =
              std::any_of(v->cart_bought.begin(), v->cart_bought.end(),
                          [&cl](const json& b) { return b["sku"] == cl.value("sku", json()); });
          if (!known && cl.is_object()) {
            v->cart_bought.push_back(
                {{"sku", cl.value("sku", json())}, {"channel", cl.value("channel", json())}});
            if (cl.contains("channel") && cl["channel"].is_string()) {
              v->channels.insert(cl["channel"].get<std::string>());
            }
          }
        }
      }
      tp["transaction_id"] = e->id;
    } else if (isTrigger(e->type)) {
      tp["trigger"] = stringField(data, {"trigger_id", "rule", "trigger", "name", "id"});
      if (data.is_object() && data.value("holdout", false) == true) {
        tp["held_out"] = true;  // held back to measure the rule: nothing was shown
      }
      if (const std::string zone = stringField(data, {"zone"}); !zone.empty()) {
        tp["zone"] = zone;
      }
      v->channels.insert(channelOf(e->type));
    } else {  // kiosk.*
      v->channels.insert("kiosk");
      if (const std::string screen = stringField(data, {"screen", "page", "view"});
          !screen.empty()) {
        tp["screen"] = screen;
      }
      std::string sku = stringField(data, {"sku"});
      if (sku.empty() && data.contains("item") && data["item"].is_object()) {
        sku = stringField(data["item"], {"sku"});
      }
      if (!sku.empty()) {
        tp["sku"] = sku;
      }
      if (const std::string zone = stringField(data, {"zone"}); !zone.empty()) {
        tp["zone"] = zone;
      }
    }
    v->addTouchpoint(std::move(tp));
    if (!v->closed_by.empty()) {
      // Closing: the customer's next event starts a new visit.
      for (const auto& key : v->keys) {
        if (auto k = subject_by_key_.find(key); k != subject_by_key_.end() && k->second == v->id) {
          subject_by_key_.erase(k);
        }
      }
    }
  }
  if (touched) {
    {
      std::lock_guard lock(queue_mu_);
      wake_ = true;
    }
    queue_cv_.notify_all();
  }
}

std::size_t VisitTracker::step(EventWriter& out) {
  std::lock_guard db_lock(db_mu_);
  const int64_t now = clock_.nowMs();
  struct Row {
    std::string id;
    std::string doc;  // "" to delete
  };
  std::vector<Row> rows;
  struct Closing {
    std::string id;
    std::map<std::string, std::string> customer;
    std::string store;
    json data[3];
    int64_t ended_ms = 0;
    int64_t heard_ms = 0;
  };
  std::vector<Closing> closing;
  {
    std::lock_guard lock(state_mu_);
    for (auto& id : erased_) {
      rows.push_back({id, ""});
    }
    erased_.clear();
    // Timeouts, then the byte bound: the visit heard of least recently closes first.
    std::vector<Visit*> open;
    for (auto& [id, v] : visits_) {
      if (v->closed_by.empty()) {
        if (now - v->heard_ms >= options_.timeout_ms) {
          v->closed_by = "timeout";
          v->ended_ms = v->last_ms;
          v->leaveZone(v->last_ms);
          v->dirty = true;
        } else {
          open.push_back(v.get());
        }
      }
    }
    std::sort(open.begin(), open.end(),
              [](const Visit* a, const Visit* b) { return a->heard_ms < b->heard_ms; });
    std::size_t bytes = 0;
    for (auto& [id, v] : visits_) {
      if (v->dirty) {
        v->bytes = v->toJson().dump().size();
      }
      bytes += v->bytes;
    }
    for (Visit* v : open) {
      if (bytes <= options_.max_bytes) {
        break;
      }
      v->closed_by = "capacity";
      v->ended_ms = v->last_ms;
      v->leaveZone(v->last_ms);
      v->dirty = true;
      ++counters_.capacity_closed;
      bytes -= std::min(bytes, v->bytes);  // it leaves once its summary is durable
    }
    // A customer who withdrew consent to tracking during the visit: it ends without a summary.
    std::vector<std::string> withdrawn;
    for (auto& [id, v] : visits_) {
      if (!v->closed_by.empty() && profiles_ != nullptr &&
          profiles_->refused(v->customer(), ConsentPurpose::kTracking)) {
        withdrawn.push_back(id);
      }
    }
    for (const auto& id : withdrawn) {
      eraseLocked(id);
      rows.push_back({id, ""});
      ++counters_.refused;
    }
    bytes_ = 0;
    for (auto& [id, v] : visits_) {
      if (!v->closed_by.empty()) {
        for (const auto& key : v->keys) {
          if (auto k = subject_by_key_.find(key);
              k != subject_by_key_.end() && k->second == v->id) {
            subject_by_key_.erase(k);
          }
        }
        Closing c;
        c.id = v->id;
        c.customer = v->customer();
        c.store = options_.store_id;
        for (int detail = 0; detail < 3; ++detail) {
          c.data[detail] = v->summary(detail);
        }
        c.ended_ms = v->ended_ms != 0 ? v->ended_ms : v->last_ms;
        c.heard_ms = v->heard_ms;
        closing.push_back(std::move(c));
      }
      if (v->dirty) {
        std::string doc = v->toJson().dump();
        v->bytes = doc.size();
        rows.push_back({v->id, std::move(doc)});
        v->dirty = false;
      }
      bytes_ += v->bytes;
    }
  }
  // In the order the customers were last heard of: the summaries go up as the visits ended.
  std::stable_sort(closing.begin(), closing.end(),
                   [](const Closing& a, const Closing& b) { return a.heard_ms < b.heard_ms; });
  if (rows.empty() && closing.empty()) {
    return 0;  // an idle round touches no file
  }
  // visits.db first: a summary is appended only for a visit whose closing is on disk.
  bool ok = exec(db_, "BEGIN IMMEDIATE");
  for (const Row& r : rows) {
    sqlite3_stmt* st = r.doc.empty() ? drop_ : put_;
    sqlite3_bind_text(st, 1, r.id.c_str(), -1, SQLITE_TRANSIENT);
    if (!r.doc.empty()) {
      sqlite3_bind_text(st, 2, r.doc.c_str(), static_cast<int>(r.doc.size()), SQLITE_TRANSIENT);
    }
    ok = ok && sqlite3_step(st) == SQLITE_DONE;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  ok = ok && exec(db_, "COMMIT");
  if (!ok) {
    const std::string why = sqlite3_errmsg(db_);
    exec(db_, "ROLLBACK");
    spdlog::warn("visits: cannot write visits.db: {}", why);
    std::lock_guard lock(state_mu_);
    counters_.last_error = "visits.db: " + why;
    for (const Row& r : rows) {
      if (auto it = visits_.find(r.id); it != visits_.end()) {
        it->second->dirty = true;  // tried again next round
      } else if (r.doc.empty()) {
        erased_.push_back(r.id);
      }
    }
    return 0;
  }
  std::size_t emitted = 0;
  std::vector<std::string> done;
  for (Closing& c : closing) {
    bool gone = false;
    for (int detail = 0; detail < 3; ++detail) {
      Event e;
      e.id = c.id;
      e.type = "visit.summary";
      e.source = "visits";
      e.store_id = c.store;
      e.occurred_at_ms = c.ended_ms;
      e.customer = c.customer;
      e.data_json = c.data[detail].dump();
      auto r = out.append({std::move(e)});
      if (r) {
        gone = true;
        ++emitted;
        break;
      }
      if (r.error().code == "too_large" && detail < 2) {
        continue;  // the same visit with less detail
      }
      if (r.error().code == "full" || r.error().code == "stopping" || r.error().code == "io") {
        break;  // kept closing: tried again next round
      }
      spdlog::warn("visits: the summary of visit {} was refused ({}); dropped", c.id,
                   r.error().message);
      std::lock_guard lock(state_mu_);
      counters_.last_error = "visit " + c.id + ": " + r.error().message;
      gone = true;
      break;
    }
    if (gone) {
      done.push_back(c.id);
    }
  }
  if (!done.empty()) {
    // The summaries are durable in the buffer: the visits leave visits.db. A crash before
    // this commit emits them again with the same ids (de-duplicated).
    bool deleted = exec(db_, "BEGIN IMMEDIATE");
    for (const auto& id : done) {
      sqlite3_bind_text(drop_, 1, id.c_str(), -1, SQLITE_TRANSIENT);
      deleted = deleted && sqlite3_step(drop_) == SQLITE_DONE;
      sqlite3_reset(drop_);
    }
    deleted = deleted && exec(db_, "COMMIT");
    std::lock_guard lock(state_mu_);
    if (!deleted) {
      exec(db_, "ROLLBACK");
      counters_.last_error = std::string("visits.db: ") + sqlite3_errmsg(db_);
      for (const auto& id : done) {
        erased_.push_back(id);  // deleted next round
      }
    }
    for (const auto& id : done) {
      eraseLocked(id);
    }
    counters_.emitted += emitted;
  }
  return emitted;
}

void VisitTracker::enrich(Event& event) const {
  if (event.type != "pos.transaction" || event.customer.empty()) {
    return;
  }
  json data = json::parse(event.data_json, nullptr, false);
  if (!data.is_object() || data.contains("attribution")) {
    return;
  }
  std::string profile_id;
  json profile;
  const auto keys = keysOf(event.customer, &profile_id, &profile);
  json attr = json::object();
  {
    std::lock_guard lock(state_mu_);
    if (const Visit* v = findLocked(keys); v != nullptr) {
      attr["visit_id"] = v->id;
      attr["visit_started_at"] = formatRfc3339Ms(v->started_ms);
      json zones = json::array();
      for (const auto& z : v->zones) {
        const int64_t entered = z["entered_at"].get<int64_t>();
        zones.push_back(
            {{"zone", z["zone"]},
             {"dwell_ms",
              z.contains("dwell_ms")
                  ? z["dwell_ms"].get<int64_t>()
                  : std::max<int64_t>(0, std::max(v->last_ms, event.occurred_at_ms) - entered)}});
      }
      json screens = json::array();
      json triggers = json::array();
      json tps = json::array();
      const std::size_t from = v->touchpoints.size() > kAttributionTouchpoints
                                   ? v->touchpoints.size() - kAttributionTouchpoints
                                   : 0;
      for (std::size_t i = 0; i < v->touchpoints.size(); ++i) {
        const json& tp = v->touchpoints[i];
        const std::string type = tp["type"].get<std::string>();
        if (startsWith(type, "kiosk.")) {
          json screen = tp.contains("screen") ? tp["screen"] : tp.value("sku", json());
          if (!screen.is_null() &&
              std::find(screens.begin(), screens.end(), screen) == screens.end()) {
            screens.push_back(screen);
          }
        } else if (isTrigger(type) && tp.contains("trigger") && !tp.contains("held_out") &&
                   std::find(triggers.begin(), triggers.end(), tp["trigger"]) == triggers.end()) {
          triggers.push_back(tp["trigger"]);
        }
        if (i >= from) {
          json out = tp;
          out["at"] = formatRfc3339Ms(tp["at"].get<int64_t>());
          tps.push_back(std::move(out));
        }
      }
      attr["zones"] = std::move(zones);
      attr["kiosk_screens"] = std::move(screens);
      attr["triggers"] = std::move(triggers);
      attr["touchpoints"] = std::move(tps);
    }
  }
  json cart_items = json::array();
  if (profile.is_object() && profile.contains("cart") && profile["cart"].is_object()) {
    cart_items = profile["cart"].value("items", json::array());
  } else if (profiles_ != nullptr) {
    // A cart started at a kiosk for a customer the centre has not sent (yet).
    for (const auto& key : keys) {
      if (auto cart = profiles_->cartJson(key)) {
        json doc = json::parse(*cart, nullptr, false);
        if (doc.is_object() && doc.contains("items") && doc["items"].is_array()) {
          cart_items = std::move(doc["items"]);
          break;
        }
      }
    }
  }
  if (attr.empty() && profile_id.empty() && cart_items.empty()) {
    return;  // nobody this agent knows: nothing to attribute
  }
  attr["cart_lines"] = cartLines(data, cart_items);
  // Spliced in, not re-serialised: the data's amounts keep the till's own digits.
  std::string& d = event.data_json;
  while (!d.empty() &&
         (d.back() == ' ' || d.back() == '\n' || d.back() == '\r' || d.back() == '\t')) {
    d.pop_back();
  }
  if (d.empty() || d.back() != '}') {
    return;
  }
  d.pop_back();
  const bool empty_object =
      d.find_first_not_of(" \n\r\t", 1) == std::string::npos;  // "{" and whitespace
  d += empty_object ? "\"attribution\":" : ",\"attribution\":";
  d += attr.dump(-1, ' ', false, json::error_handler_t::replace);
  d.push_back('}');
}

Result<int64_t> VisitTracker::forget(const SubjectKeys& keys) {
  std::vector<std::string> canonical;
  for (const auto& [field, value] : keys) {
    if (field == "profile_id") {
      canonical.push_back("profile:" + value);
      continue;
    }
    static const std::map<std::string, std::string, std::less<>> kPrefix = {
        {"loyalty_id", "loyalty:"},
        {"app_user_id", "app:"},
        {"email_sha256", "email_sha256:"},
        {"phone_sha256", "phone_sha256:"},
        {"beacon", ""}};
    if (auto p = kPrefix.find(field); p != kPrefix.end()) {
      canonical.push_back(kiosk::canonicalCustomerKey(p->second + value));
    }
  }
  std::lock_guard db_lock(db_mu_);
  std::vector<std::string> ids;
  {
    std::lock_guard lock(state_mu_);
    for (const auto& [id, v] : visits_) {  // closing visits too: their summary is not sent
      if (std::any_of(v->keys.begin(), v->keys.end(), [&canonical](const std::string& k) {
            return std::find(canonical.begin(), canonical.end(), k) != canonical.end();
          })) {
        ids.push_back(id);
      }
    }
    for (const auto& id : ids) {
      eraseLocked(id);
    }
  }
  bool ok = exec(db_, "BEGIN IMMEDIATE");
  for (const auto& id : ids) {
    sqlite3_bind_text(drop_, 1, id.c_str(), -1, SQLITE_TRANSIENT);
    ok = ok && sqlite3_step(drop_) == SQLITE_DONE;
    sqlite3_reset(drop_);
  }
  ok = ok && exec(db_, "COMMIT");
  if (!ok) {
    const std::string why = sqlite3_errmsg(db_);
    exec(db_, "ROLLBACK");
    std::lock_guard lock(state_mu_);
    erased_.insert(erased_.end(), ids.begin(), ids.end());
    return makeError("io", "visits.db: " + why);
  }
  // secure_delete zeroed the rows' pages; the checkpoint copies them into the main file and
  // empties the WAL, so that no old copy of a page stays behind in it.
  if (sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr) !=
      SQLITE_OK) {
    return makeError("io", std::string("visits.db checkpoint: ") + sqlite3_errmsg(db_));
  }
  return static_cast<int64_t>(ids.size());
}

}  // namespace omniedge::omni
