#include "agent/omni/privacy.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <utility>

#include "drivers/kiosk/customer_key.h"

namespace omniedge::omni {
namespace {

namespace fs = std::filesystem;
using OJson = nlohmann::ordered_json;

constexpr std::string_view kAnonymised = "(anonymised)";
// A kept POS file larger than this is not read for erasure (reported as such): processed/
// holds spool files, which the POS driver bounds far below.
constexpr std::uintmax_t kMaxPosFileBytes = 64u << 20;
// Seq ranges per report event: well below buffer.max_event_bytes.
constexpr std::size_t kRangesPerReport = 512;

bool isHex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](unsigned char c) {
           return std::isdigit(c) != 0 || (c >= 'a' && c <= 'f');
         });
}

std::string channelOf(std::string_view type) { return std::string(type.substr(0, type.find('.'))); }

// Who the buffered events of one or more subjects are, and how to take them out of a body.
class Matcher {
 public:
  explicit Matcher(const std::vector<std::pair<SubjectKeys, unsigned>>& subjects) {
    for (std::size_t i = 0; i < subjects.size(); ++i) {
      for (const auto& [field, value] : subjects[i].first) {
        pairs_.emplace(std::pair{field, value}, i);
        if (field == "beacon") {
          pairs_.emplace(std::pair{field, kiosk::canonicalCustomerKey(value)}, i);
        }
        values_.insert(value);
        if (isHex64(value)) {
          hex_.push_back(value);
        }
      }
    }
    bits_.reserve(subjects.size());
    for (const auto& s : subjects) {
      bits_.push_back(s.second);
    }
  }

  // Strings a body of one of the subjects' events must contain (the buffer's quick filter).
  std::vector<std::string> needles() const {
    std::vector<std::string> out(values_.begin(), values_.end());
    return out;
  }

  // The union of the bits of the subjects `customer` names; -1 when none.
  int64_t match(const OJson& customer) const {
    if (!customer.is_object()) {
      return -1;
    }
    int64_t bits = -1;
    for (const auto& [field, v] : customer.items()) {
      if (!v.is_string()) {
        continue;
      }
      std::string value = v.get<std::string>();
      if (field.size() > 7 && field.compare(field.size() - 7, 7, "_sha256") == 0) {
        std::transform(value.begin(), value.end(), value.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      }
      auto range = pairs_.equal_range(std::pair{field, value});
      for (auto it = range.first; it != range.second; ++it) {
        bits = (bits < 0 ? 0 : bits) | bits_[it->second];
      }
    }
    return bits;
  }

  // Replaces, anywhere in `v`, a string that is one of the subjects' values or keys ("L1",
  // "loyalty:L1") and every hash of theirs inside a string. True when anything changed.
  bool scrub(OJson& v) const {
    bool changed = false;
    if (v.is_string()) {
      std::string s = v.get<std::string>();
      if (values_.count(s) != 0 || keyed(s)) {
        v = std::string(kAnonymised);
        return true;
      }
      for (const std::string& h : hex_) {
        for (std::size_t at = s.find(h); at != std::string::npos; at = s.find(h)) {
          s.replace(at, h.size(), kAnonymised);
          changed = true;
        }
      }
      if (changed) {
        v = s;
      }
    } else if (v.is_object() || v.is_array()) {
      for (auto& child : v) {
        changed = scrub(child) || changed;
      }
    }
    return changed;
  }

  // "loyalty:L1", "email_sha256:…", a beacon key: a subject's key with its kind.
  bool keyed(const std::string& s) const {
    const auto colon = s.find(':');
    return colon != std::string::npos && values_.count(s.substr(colon + 1)) != 0 && colon < 16 &&
           s.find(' ') == std::string::npos;
  }

 private:
  std::multimap<std::pair<std::string, std::string>, std::size_t> pairs_;
  std::set<std::string> values_;
  std::vector<std::string> hex_;
  std::vector<unsigned> bits_;
};

// The body without the subject: no customer, their keys out of data.
std::string anonymise(OJson doc, const Matcher& m) {
  doc["customer"] = OJson::object();
  if (doc.contains("data")) {
    m.scrub(doc["data"]);
  }
  return doc.dump(-1, ' ', false, OJson::error_handler_t::replace);
}

// What an edit did, by event id (an event is in the ring and in a table: counted once).
struct Tally {
  std::mutex mu;
  std::map<std::string, std::pair<std::string, bool>> by_id;  // id -> (channel, dropped)
  void note(const OJson& doc, const std::string& type, bool dropped) {
    const std::string id =
        doc.contains("id") && doc["id"].is_string() ? doc["id"].get<std::string>() : std::string();
    std::lock_guard lock(mu);
    by_id[id] = {channelOf(type), dropped};
  }
  nlohmann::json counts(int64_t& dropped, int64_t& anonymised) {
    std::lock_guard lock(mu);
    nlohmann::json by_channel = nlohmann::json::object();
    dropped = 0;
    anonymised = 0;
    for (const auto& [id, what] : by_id) {
      auto& c = by_channel[what.first];
      if (!c.is_object()) {
        c = {{"dropped", 0}, {"anonymised", 0}};
      }
      c[what.second ? "dropped" : "anonymised"] =
          c[what.second ? "dropped" : "anonymised"].get<int64_t>() + 1;
      (what.second ? dropped : anonymised) += 1;
    }
    return by_channel;
  }
};

std::vector<Event> reportEvents(const std::string& type, const std::string& epoch,
                                const std::string& reason, const store::SeqRanges& ranges,
                                const nlohmann::json& extra) {
  std::vector<Event> out;
  const std::size_t parts =
      std::max<std::size_t>(1, (ranges.size() + kRangesPerReport - 1) / kRangesPerReport);
  for (std::size_t part = 0; part < parts; ++part) {
    nlohmann::json data = extra;
    data["epoch"] = epoch;
    data["reason"] = reason;
    nlohmann::json list = nlohmann::json::array();
    for (std::size_t i = part * kRangesPerReport;
         i < std::min(ranges.size(), (part + 1) * kRangesPerReport); ++i) {
      list.push_back({ranges[i].first, ranges[i].second});
    }
    data["ranges"] = std::move(list);
    if (parts > 1) {
      data["part"] = part + 1;
      data["parts"] = parts;
    }
    Event e;
    e.type = type;
    e.source = "agent";
    e.data_json = data.dump();
    out.push_back(std::move(e));
  }
  return out;
}

nlohmann::json editCounts(const store::EditReport& r) {
  return {{"pending_dropped", r.pending_dropped},
          {"pending_anonymised", r.pending_replaced},
          {"quarantine_dropped", r.quarantine_dropped},
          {"quarantine_anonymised", r.quarantine_replaced},
          {"delivered_kept_dropped", r.delivered_dropped},
          {"delivered_kept_anonymised", r.delivered_replaced},
          {"recent_ring_dropped", r.recent_dropped},
          {"recent_ring_anonymised", r.recent_replaced},
          {"files_scrubbed", r.scrubbed}};
}

bool wordAt(const std::string& text, std::size_t at, std::size_t len) {
  const auto word = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-';
  };
  return (at == 0 || !word(text[at - 1])) && (at + len >= text.size() || !word(text[at + len]));
}

// Overwrites `path` with zeros, syncs it, unlinks it and syncs its directory.
Result<void> shred(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    return makeError("io", "opening " + path.string() + " to erase it failed");
  }
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  const std::string zeros(64 * 1024, '\0');
  bool ok = !ec;
  for (std::uintmax_t done = 0; ok && done < size;) {
    const auto n = static_cast<std::size_t>(std::min<std::uintmax_t>(zeros.size(), size - done));
    const ssize_t w = ::pwrite(fd, zeros.data(), n, static_cast<off_t>(done));
    ok = w > 0;
    done += ok ? static_cast<std::uintmax_t>(w) : 0;
  }
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  if (!ok || !fs::remove(path, ec) || ec) {
    return makeError("io", "erasing " + path.string() + " failed");
  }
  const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    (void)::fsync(dir);
    ::close(dir);
  }
  return {};
}

// The WAL of a SQLite file of the agent's that this code does not own (the inbox): checkpointed
// and truncated, so a copy of a message about the subject does not stay in it.
void truncateWal(const fs::path& db) {
  std::error_code ec;
  if (!fs::exists(db, ec)) {
    return;
  }
  sqlite3* conn = nullptr;
  int rc = sqlite3_open_v2(db.c_str(), &conn, SQLITE_OPEN_READWRITE, nullptr);
  if (rc == SQLITE_OK) {
    sqlite3_busy_timeout(conn, 1000);
    // A fresh connection knows the file is in WAL mode only once it has read it; before,
    // the checkpoint is a no-op that says SQLITE_OK.
    rc = sqlite3_exec(conn, "SELECT count(*) FROM sqlite_master", nullptr, nullptr, nullptr);
    int log = -1;
    if (rc == SQLITE_OK) {
      rc = sqlite3_wal_checkpoint_v2(conn, nullptr, SQLITE_CHECKPOINT_TRUNCATE, &log, nullptr);
    }
    if (rc == SQLITE_OK && log != 0) {
      rc = SQLITE_BUSY;  // not emptied
    }
  }
  if (rc != SQLITE_OK) {
    spdlog::warn("forget: {}: the WAL could not be emptied yet: {}", db.string(),
                 conn != nullptr ? sqlite3_errmsg(conn) : "cannot open");
  }
  sqlite3_close(conn);
}

}  // namespace

ConsentPolicy ConsentPolicy::fromList(const std::vector<std::string>& items) {
  ConsentPolicy p;
  for (const std::string& item : items) {
    const auto eq = item.find('=');
    if (eq == std::string::npos) {
      continue;
    }
    p.by_channel_[item.substr(0, eq)] =
        item.substr(eq + 1) == "drop" ? Action::kDrop : Action::kAnonymise;
  }
  return p;
}

ConsentPolicy::Action ConsentPolicy::actionFor(std::string_view type) const {
  const std::string channel = channelOf(type);
  if (channel == "pos") {
    return Action::kAnonymise;  // a sale is always kept
  }
  const auto it = by_channel_.find(channel);
  return it != by_channel_.end() ? it->second : Action::kAnonymise;
}

SubjectKeys subjectKeysOf(const std::vector<std::string>& canonical,
                          const std::string& profile_id) {
  SubjectKeys keys;
  for (const std::string& k : canonical) {
    auto pair = kiosk::customerFieldOf(k);
    if (!pair.first.empty() && !pair.second.empty() &&
        std::find(keys.begin(), keys.end(), pair) == keys.end()) {
      keys.push_back(std::move(pair));
    }
  }
  if (!profile_id.empty()) {
    keys.emplace_back("profile_id", profile_id);
  }
  return keys;
}

Privacy::Privacy(store::Buffer& buffer, store::ProfileCache& profiles, const PiiHasher& pii,
                 std::filesystem::path data_dir, Reporter report)
    : buffer_(buffer),
      profiles_(profiles),
      pii_(pii),
      data_dir_(std::move(data_dir)),
      report_(std::move(report)) {}

void Privacy::addHolder(PersonalData* holder) {
  std::lock_guard lock(mu_);
  if (holder != nullptr) {
    holders_.push_back(holder);
  }
}

void Privacy::setPolicy(ConsentPolicy policy) {
  std::lock_guard lock(mu_);
  policy_ = std::move(policy);
}

bool Privacy::dropsOnTrackingRefusal(std::string_view type) const {
  std::lock_guard lock(mu_);
  return policy_.actionFor(type) == ConsentPolicy::Action::kDrop;
}

void Privacy::setPosSpoolDir(std::filesystem::path dir) {
  std::lock_guard lock(mu_);
  pos_spool_dir_ = std::move(dir);
}

Result<nlohmann::json> Privacy::applyRefusals(const std::vector<store::ConsentRefusal>& refusals) {
  constexpr auto kTracking = static_cast<unsigned>(ConsentPurpose::kTracking);
  constexpr auto kMarketing = static_cast<unsigned>(ConsentPurpose::kMarketing);
  std::vector<std::pair<SubjectKeys, unsigned>> subjects;
  unsigned purposes = 0;
  for (const auto& r : refusals) {
    // Personalization acts at the kiosk API and in triggers, on nothing buffered.
    if ((r.added & (kTracking | kMarketing)) != 0) {
      subjects.emplace_back(subjectKeysOf(r.keys, r.id), r.added);
      purposes |= r.added;
    }
  }
  if (subjects.empty()) {
    return nlohmann::json::object();
  }
  ConsentPolicy policy;
  {
    std::lock_guard lock(mu_);
    policy = policy_;
  }
  const Matcher matcher(subjects);
  auto tally = std::make_shared<Tally>();
  auto edit = buffer_.editEvents(
      matcher.needles(),
      [&matcher, policy, tally](const std::string& type,
                                const std::string& body) -> store::EventEdit {
        auto doc = OJson::parse(body, nullptr, false);
        if (!doc.is_object() || !doc.contains("customer")) {
          return {};
        }
        const int64_t bits = matcher.match(doc["customer"]);
        if (bits <= 0) {
          return {};
        }
        const auto b = static_cast<unsigned>(bits);
        bool drop = false;
        if ((b & kMarketing) != 0 && type.rfind("engagement.", 0) == 0) {
          drop = true;
        } else if ((b & kTracking) != 0) {
          drop = policy.actionFor(type) == ConsentPolicy::Action::kDrop;
        } else {
          return {};
        }
        tally->note(doc, type, drop);
        if (drop) {
          return {store::EventEdit::Action::kDrop, {}};
        }
        return {store::EventEdit::Action::kReplace, anonymise(std::move(doc), matcher)};
      },
      true);
  if (!edit) {
    return edit.error();
  }
  int64_t dropped = 0;
  int64_t anonymised = 0;
  nlohmann::json by_channel = tally->counts(dropped, anonymised);
  nlohmann::json purposes_json = nlohmann::json::array();
  for (const auto& [name, bit] :
       {std::pair{"tracking", kTracking}, std::pair{"marketing", kMarketing}}) {
    if ((purposes & bit) != 0) {
      purposes_json.push_back(name);
    }
  }
  nlohmann::json counts = {{"customers", subjects.size()}, {"purposes", purposes_json},
                           {"events_dropped", dropped},    {"events_anonymised", anonymised},
                           {"by_channel", by_channel},     {"buffer", editCounts(*edit)}};
  if (edit->changed() == 0) {
    return counts;
  }
  spdlog::info("consent: a refusal reached buffered events: {} dropped, {} anonymised", dropped,
               anonymised);
  if (report_) {
    auto events = reportEvents("agent.consent_applied", buffer_.epoch(),
                               "consent refused: buffered events of the customer dropped or "
                               "anonymised (consent.on_refusal)",
                               edit->dropped_seqs, counts);
    if (auto r = report_(std::move(events)); !r) {
      spdlog::warn("consent: agent.consent_applied not recorded: {}", r.error().message);
    }
  }
  return counts;
}

void Privacy::tick() {
  {
    std::lock_guard lock(mu_);
    if (inbox_scrubs_ == 0) {
      return;
    }
    --inbox_scrubs_;
  }
  truncateWal(data_dir_ / "inbox.db");
}

Result<Subject> Privacy::resolve(std::string_view raw) const {
  std::string key(raw);
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back())) != 0) {
    key.pop_back();
  }
  Subject s;
  std::string canonical;
  const auto colon = key.find(':');
  const std::string kind = colon == std::string::npos ? "" : key.substr(0, colon);
  const std::string rest = colon == std::string::npos ? key : key.substr(colon + 1);
  if (kind == "email" || (kind.empty() && key.find('@') != std::string::npos)) {
    auto normal = PiiHasher::normaliseEmail(rest);
    if (!normal) {
      return makeError("invalid", "key is not an e-mail address (email:ADDRESS)", "key");
    }
    canonical = "email_sha256:" + pii_.hash(*normal);
  } else if (kind == "phone" || (kind.empty() && !key.empty() && key.front() == '+')) {
    auto normal = pii_.normalisePhone(rest);
    if (!normal) {
      return makeError("invalid",
                       "key is not a phone number (phone:NUMBER, with its country code unless "
                       "identity.default_region is set)",
                       "key");
    }
    canonical = "phone_sha256:" + pii_.hash(*normal);
  } else if (kind == "profile") {
    if (rest.empty()) {
      return makeError("invalid", "key: profile: needs the profile's id", "key");
    }
    s.profile_id = rest;
  } else {
    auto parsed = kiosk::parseCustomerKey(key);
    if (!parsed) {
      // Not echoed: the key may be personal data.
      return makeError("invalid",
                       "key is not a customer key: expected loyalty:ID, app:ID, email:ADDRESS, "
                       "phone:NUMBER, email_sha256:HEX, phone_sha256:HEX, a beacon id "
                       "(ibeacon:UUID:MAJOR:MINOR, eddystone:NS:INSTANCE, altbeacon:ID1:ID2:ID3) "
                       "or profile:ID",
                       "key");
    }
    canonical = *parsed;
  }
  if (!canonical.empty()) {
    s.canonical.push_back(canonical);
  }
  // Every key the profile links: the subject is whoever the profile is.
  std::optional<nlohmann::json> doc;
  if (!canonical.empty()) {
    doc = profiles_.lookup(canonical);
  } else {
    doc = profiles_.profileFor({{"profile_id", s.profile_id}});
  }
  if (doc && doc->is_object()) {
    if (doc->contains("id") && (*doc)["id"].is_string()) {
      s.profile_id = (*doc)["id"].get<std::string>();
    }
    if (doc->contains("keys") && (*doc)["keys"].is_array()) {
      for (const auto& k : (*doc)["keys"]) {
        if (k.is_string()) {
          std::string c = kiosk::canonicalCustomerKey(k.get<std::string>());
          if (std::find(s.canonical.begin(), s.canonical.end(), c) == s.canonical.end()) {
            s.canonical.push_back(std::move(c));
          }
        }
      }
    }
  }
  s.keys = subjectKeysOf(s.canonical, s.profile_id);
  return s;
}

Result<nlohmann::json> Privacy::forget(std::string_view key, bool dry_run) {
  auto subject = resolve(key);
  if (!subject) {
    return subject.error();
  }
  const Subject& s = *subject;
  std::vector<PersonalData*> holders;
  fs::path spool;
  {
    std::lock_guard lock(mu_);
    holders = holders_;
    spool = pos_spool_dir_;
  }
  // Named by a hash only: the answer goes to the centre and into logs.
  const std::string named = s.canonical.empty() ? "profile:" + s.profile_id : s.canonical.front();
  nlohmann::json out = {{"subject", "sha256:" + pii_.hash(named)},
                        {"dry_run", dry_run},
                        {"keys_joined", s.keys.size()},
                        {"profile_known", !s.profile_id.empty()}};
  std::vector<std::string> problems;

  // The buffer: events of the subject go, sales stay without the subject.
  const Matcher matcher({{s.keys, 1u}});
  auto tally = std::make_shared<Tally>();
  auto edit = buffer_.editEvents(
      matcher.needles(),
      [&matcher, tally, dry_run](const std::string& type,
                                 const std::string& body) -> store::EventEdit {
        auto doc = OJson::parse(body, nullptr, false);
        if (!doc.is_object()) {
          return {};
        }
        const bool theirs = doc.contains("customer") && matcher.match(doc["customer"]) > 0;
        OJson data = doc.contains("data") ? doc["data"] : OJson::object();
        const bool mentioned = matcher.scrub(data);
        if (!theirs && !mentioned) {
          return {};
        }
        const bool drop = theirs && type.rfind("pos.", 0) != 0 && type.rfind("agent.", 0) != 0;
        tally->note(doc, type, drop);
        if (dry_run) {
          return {};
        }
        if (drop) {
          return {store::EventEdit::Action::kDrop, {}};
        }
        if (theirs) {
          doc["customer"] = OJson::object();
        }
        doc["data"] = std::move(data);
        return {store::EventEdit::Action::kReplace,
                doc.dump(-1, ' ', false, OJson::error_handler_t::replace)};
      },
      !dry_run);
  int64_t dropped = 0;
  int64_t anonymised = 0;
  if (edit) {
    const auto by_channel = tally->counts(dropped, anonymised);
    out["buffer"] = editCounts(*edit);
    out["buffer"]["events_dropped"] = dropped;
    out["buffer"]["events_anonymised"] = anonymised;
    out["buffer"]["by_channel"] = by_channel;
    if (!dry_run && !edit->scrubbed) {
      problems.push_back("buffer: the WAL could not be emptied (a reader held it)");
    }
  } else {
    out["buffer"] = {{"error", edit.error().message}};
    problems.push_back("buffer: " + edit.error().message);
  }

  // The profile cache.
  if (dry_run) {
    out["profiles"] = {{"profiles", s.profile_id.empty() ? 0 : 1}};
  } else {
    std::vector<std::string> ids;
    if (!s.profile_id.empty()) {
      ids.push_back(s.profile_id);
    }
    auto gone = profiles_.forget(s.canonical, ids);
    if (gone) {
      out["profiles"] = {
          {"profiles", gone->profiles}, {"keys", gone->keys}, {"files_scrubbed", gone->scrubbed}};
      if (!gone->scrubbed) {
        problems.push_back("profiles: the WAL could not be emptied (a reader held it)");
      }
    } else {
      out["profiles"] = {{"error", gone.error().message}};
      problems.push_back("profiles: " + gone.error().message);
    }
  }

  // POS files kept in processed/.
  if (!spool.empty()) {
    std::vector<std::string> needles;
    std::vector<std::string> email_hashes;
    for (const auto& [field, value] : s.keys) {
      if (field == "email_sha256") {
        email_hashes.push_back(value);
      }
      if (field != "profile_id" && field != "beacon") {
        needles.push_back(value);
      }
    }
    auto files = erasePosFiles(spool / "processed", needles, email_hashes, pii_, dry_run);
    if (files) {
      out["pos_files"] = {{"deleted", *files}};
    } else {
      out["pos_files"] = {{"error", files.error().message}};
      problems.push_back("pos_files: " + files.error().message);
    }
  }

  // Every other holder (visits, triggers).
  nlohmann::json parts = nlohmann::json::object();
  for (PersonalData* h : holders) {
    const std::string name(h->name());
    if (dry_run) {
      parts[name] = "would be asked";
      continue;
    }
    auto n = h->forget(s.keys);
    if (n) {
      parts[name] = {{"removed", *n}};
    } else {
      parts[name] = {{"error", n.error().message}};
      problems.push_back(name + ": " + n.error().message);
    }
  }
  out["holders"] = std::move(parts);

  if (!dry_run) {
    // The inbox kept the centre's messages about the subject until they were applied: its rows
    // are gone (deleted with secure_delete), its WAL goes now.
    truncateWal(data_dir_ / "inbox.db");
    std::lock_guard lock(mu_);
    inbox_scrubs_ = 10;
  }
  out["complete"] = problems.empty();
  if (!problems.empty()) {
    out["problems"] = problems;
  }
  if (!dry_run) {
    spdlog::info("forget: {} events dropped, {} anonymised, {} profile(s){}", dropped, anonymised,
                 out["profiles"].value("profiles", int64_t{0}),
                 problems.empty() ? "" : " (incomplete: repeat)");
    if (report_ && edit) {
      // Counts only: neither the key nor its hash goes upstream.
      nlohmann::json counts = {{"events_dropped", dropped},
                               {"events_anonymised", anonymised},
                               {"profiles", out["profiles"].value("profiles", int64_t{0})},
                               {"complete", problems.empty()}};
      auto events = reportEvents("agent.data_erased", buffer_.epoch(),
                                 "erasure of a data subject (omniedge forget): their buffered "
                                 "events dropped, sales anonymised",
                                 edit->dropped_seqs, counts);
      if (auto r = report_(std::move(events)); !r) {
        spdlog::warn("forget: agent.data_erased not recorded: {}", r.error().message);
      }
    }
  }
  return out;
}

Result<int64_t> erasePosFiles(const std::filesystem::path& processed_dir,
                              const std::vector<std::string>& needles,
                              const std::vector<std::string>& email_hashes, const PiiHasher& pii,
                              bool dry_run) {
  std::error_code ec;
  if (!fs::is_directory(processed_dir, ec)) {
    return int64_t{0};
  }
  static const std::regex kEmail(R"([A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,})");
  int64_t erased = 0;
  std::vector<fs::path> files;
  for (fs::directory_iterator it(processed_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) {
      files.push_back(it->path());
    }
  }
  if (ec) {
    return makeError("io", "listing " + processed_dir.string() + ": " + ec.message());
  }
  for (const fs::path& f : files) {
    if (fs::file_size(f, ec) > kMaxPosFileBytes || ec) {
      continue;
    }
    std::ifstream in(f, std::ios::binary);
    std::stringstream buf;
    buf << in.rdbuf();
    const std::string text = buf.str();
    bool hit = false;
    for (const std::string& n : needles) {
      for (std::size_t at = text.find(n); !hit && at != std::string::npos;
           at = text.find(n, at + 1)) {
        hit = wordAt(text, at, n.size());
      }
    }
    if (!hit && !email_hashes.empty()) {
      for (auto m = std::sregex_iterator(text.begin(), text.end(), kEmail);
           !hit && m != std::sregex_iterator(); ++m) {
        if (auto normal = PiiHasher::normaliseEmail(m->str())) {
          const std::string h = pii.hash(*normal);
          hit = std::find(email_hashes.begin(), email_hashes.end(), h) != email_hashes.end();
        }
      }
    }
    if (!hit) {
      continue;
    }
    if (!dry_run) {
      if (auto r = shred(f); !r) {
        return r.error();
      }
    }
    ++erased;
  }
  return erased;
}

}  // namespace omniedge::omni
