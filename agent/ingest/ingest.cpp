#include "agent/ingest/ingest.h"

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>

#include "agent/api/json_string.h"
#include "agent/api/time.h"
#include "agent/api/uuid.h"

namespace omniedge {
namespace {

constexpr std::size_t kMaxIdLength = 128;
constexpr int64_t kEarliestMs = 946684800000;       // 2000-01-01: older is a broken clock
constexpr int64_t kMaxFutureMs = 24 * 3600 * 1000;  // producers' clocks may run a day ahead

// [a-z0-9_]+(\.[a-z0-9_]+)+
bool validType(std::string_view t) {
  if (t.empty() || t.size() > 128) {
    return false;
  }
  std::size_t parts = 1;
  bool part_empty = true;
  for (const char c : t) {
    if (c == '.') {
      if (part_empty) {
        return false;
      }
      ++parts;
      part_empty = true;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_') {
      part_empty = false;
    } else {
      return false;
    }
  }
  return parts >= 2 && !part_empty;
}

bool validId(std::string_view id) {
  return !id.empty() && id.size() <= kMaxIdLength && std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == ':' || c == '@';
  });
}

bool printable(std::string_view s) {
  return std::none_of(s.begin(), s.end(),
                      [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

bool isHex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

Error invalid(std::size_t index, const std::string& field, const std::string& why) {
  return makeError("invalid", field + " " + why, "[" + std::to_string(index) + "]." + field);
}

// Replaces, in `data_json`, the string values that name the customer: one of their key values
// ("L1") or a key with its kind ("loyalty:L1"). Left as it is when it is not a JSON object.
void forgetIdentityInData(std::string& data_json, const std::map<std::string, std::string>& who) {
  bool mentioned = false;
  for (const auto& [field, value] : who) {
    mentioned = mentioned || data_json.find(value) != std::string::npos;
  }
  if (!mentioned || data_json.empty() || data_json.front() != '{') {
    return;
  }
  auto doc = nlohmann::ordered_json::parse(data_json, nullptr, false);
  if (doc.is_discarded()) {
    return;
  }
  const auto theirs = [&who](const std::string& s) {
    const auto colon = s.find(':');
    for (const auto& [field, value] : who) {
      if (s == value || (colon != std::string::npos && s.compare(colon + 1, s.npos, value) == 0)) {
        return true;
      }
    }
    return false;
  };
  std::function<bool(nlohmann::ordered_json&)> walk = [&](nlohmann::ordered_json& v) {
    bool changed = false;
    if (v.is_string() && theirs(v.get<std::string>())) {
      v = "(anonymised)";
      return true;
    }
    if (v.is_object() || v.is_array()) {
      for (auto& child : v) {
        changed = walk(child) || changed;
      }
    }
    return changed;
  };
  if (walk(doc)) {
    data_json = doc.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  }
}

}  // namespace

std::string serialiseEvent(const Event& e) {
  std::string out;
  out.reserve(160 + e.data_json.size() + e.id.size() + e.type.size() + e.source.size());
  out += "{\"id\":";
  appendJsonString(out, e.id);
  out += ",\"type\":";
  appendJsonString(out, e.type);
  out += ",\"source\":";
  appendJsonString(out, e.source);
  out += ",\"store_id\":";
  appendJsonString(out, e.store_id);
  out += ",\"occurred_at\":\"";
  out += formatRfc3339Ms(e.occurred_at_ms);
  out += "\",\"received_at\":\"";
  out += formatRfc3339Ms(e.received_at_ms);
  out += "\",\"customer\":{";
  bool first = true;
  for (const auto& [k, v] : e.customer) {
    if (!first) {
      out.push_back(',');
    }
    first = false;
    appendJsonString(out, k);
    out.push_back(':');
    appendJsonString(out, v);
  }
  out += "},\"data\":";
  out += e.data_json.empty() ? "{}" : e.data_json;
  out.push_back('}');
  return out;
}

Ingest::Ingest(IngestOptions options, store::Buffer& buffer, const PiiHasher& pii,
               const Clock& clock, const IdentityResolver* resolver)
    : options_(std::move(options)),
      buffer_(buffer),
      pii_(pii),
      clock_(clock),
      resolver_(resolver) {}

Result<store::StoredEvent> Ingest::prepare(Event& e, std::size_t index, int64_t now_ms) const {
  if (e.type.empty()) {
    return invalid(index, "type", "is required");
  }
  if (!validType(e.type)) {
    return invalid(index, "type",
                   "must be lower-case dotted words, [a-z0-9_]+(.[a-z0-9_]+)+, e.g. kiosk.view");
  }
  const bool made = e.id.empty();
  if (made) {
    e.id = makeUuidV7(now_ms);
  } else if (!validId(e.id)) {
    return invalid(index, "id", "must be 1-128 characters of A-Z a-z 0-9 - _ . : @");
  } else if (e.id.find('@') != std::string::npos && PiiHasher::normaliseEmail(e.id)) {
    // The id travels in clear everywhere (it is the centre's idempotency key).
    return invalid(index, "id", "must not be personal data (it is an e-mail address)");
  }
  if (e.source.empty()) {
    e.source = e.type.substr(0, e.type.find('.'));
  } else if (e.source.size() > 128 || !printable(e.source)) {
    return invalid(index, "source", "must be at most 128 printable characters");
  }
  if (e.store_id.empty()) {
    e.store_id = options_.store_id;
  } else if (e.store_id != options_.store_id) {
    return invalid(index, "store_id",
                   "is '" + e.store_id + "' but this agent is store '" + options_.store_id + "'");
  }
  e.received_at_ms = now_ms;
  if (e.occurred_at_ms == 0) {
    e.occurred_at_ms = now_ms;
  } else if (e.occurred_at_ms < kEarliestMs) {
    return invalid(index, "occurred_at", "is before 2000-01-01");
  } else if (e.occurred_at_ms > now_ms + kMaxFutureMs) {
    return invalid(index, "occurred_at", "is more than a day in the future");
  }

  // Identity: raw e-mail and phone are replaced by keyed hashes here, before anything is stored.
  std::map<std::string, std::string> customer;
  for (auto& [key, value] : e.customer) {
    const std::string field = "customer." + key;
    if (key == "email" || key == "phone") {
      auto normal = key == "email" ? PiiHasher::normaliseEmail(value) : pii_.normalisePhone(value);
      if (!normal) {
        return invalid(index, field, normal.error().message);
      }
      customer[key + "_sha256"] = pii_.hash(*normal);
    } else if (key == "email_sha256" || key == "phone_sha256") {
      std::string hex = value;
      std::transform(hex.begin(), hex.end(), hex.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (!isHex64(hex)) {
        return invalid(index, field, "must be 64 hexadecimal digits (a SHA-256)");
      }
      customer.try_emplace(key, std::move(hex));
    } else if (key == "loyalty_id" || key == "app_user_id" || key == "profile_id" ||
               key == "beacon") {
      if (value.empty() || value.size() > 128 || !printable(value)) {
        return invalid(index, field, "must be 1-128 printable characters");
      }
      // An app user id is often an e-mail address: it is personal data like any other, so it
      // goes up as its hash (the centre joins on email_sha256), never in clear.
      std::string normal;
      bool is_email = false;
      auto personal = pii_.looksPersonal(value, normal, is_email);
      if (!personal) {
        return makeError("io", field + " " + personal.error().message,
                         "[" + std::to_string(index) + "]." + field);
      }
      if (*personal) {
        if (pii_.dataPolicy() == DataPiiPolicy::kReject) {
          return invalid(index, field,
                         std::string("is ") + (is_email ? "an e-mail address" : "a phone number") +
                             "; send it as customer." + (is_email ? "email" : "phone") +
                             " (hashed by the agent) or its _sha256");
        }
        customer.try_emplace(is_email ? "email_sha256" : "phone_sha256", pii_.hash(normal));
        continue;
      }
      customer[key] = value;
    } else {
      return invalid(index, field,
                     "is not an identity key (loyalty_id, app_user_id, profile_id, beacon, email, "
                     "phone, email_sha256, phone_sha256)");
    }
  }
  // A beacon the profile cache knows is a customer: the centre gets the profile's keys too.
  if (resolver_ != nullptr) {
    if (auto beacon = customer.find("beacon"); beacon != customer.end()) {
      for (auto& [k, v] : resolver_->customerFor(beacon->second)) {
        customer.try_emplace(k, std::move(v));
      }
    }
  }
  // Consent: a customer who refused tracking is not tracked. Their presence (beacon.*) is
  // dropped (or what consent.on_refusal says); any other event (a sale is still a sale) keeps
  // its data but loses every identity, also where data names them (a kiosk cart's "key").
  // Marketing refused: their engagement.* events are dropped.
  if (resolver_ != nullptr && !customer.empty()) {
    if (e.type.rfind("engagement.", 0) == 0 &&
        resolver_->refused(customer, ConsentPurpose::kMarketing)) {
      return makeError("consent", "marketing refused", "[" + std::to_string(index) + "].customer");
    }
    if (resolver_->trackingRefused(customer)) {
      const bool drop =
          refusal_drop_ ? refusal_drop_(e.type) : priorityOf(e.type) == Priority::kLow;
      if (drop) {
        return makeError("consent", "tracking refused", "[" + std::to_string(index) + "].customer");
      }
      forgetIdentityInData(e.data_json, customer);
      customer.clear();
    }
  }
  e.customer = std::move(customer);
  if (e.data_json.empty()) {
    e.data_json = "{}";
  } else if (e.data_json.front() != '{') {
    return invalid(index, "data", "must be a JSON object");
  } else if (auto scrubbed = pii_.scrubData(e.data_json); !scrubbed) {
    return makeError(scrubbed.error().code, scrubbed.error().field + " " + scrubbed.error().message,
                     "[" + std::to_string(index) + "]." + scrubbed.error().field);
  }

  if (enricher_ != nullptr) {
    enricher_->enrich(e);
  }

  store::StoredEvent out;
  out.body = serialiseEvent(e);
  if (out.body.size() > options_.max_event_bytes) {
    return makeError("too_large",
                     "the event is " + std::to_string(out.body.size()) +
                         " bytes serialised; buffer.max_event_bytes allows " +
                         std::to_string(options_.max_event_bytes),
                     "[" + std::to_string(index) + "]");
  }
  out.id = e.id;
  out.id_origin = made ? store::IdOrigin::kAgent : store::IdOrigin::kProducer;
  out.type = e.type;
  out.priority = priorityOf(e.type);
  out.received_at_ms = now_ms;
  return out;
}

Result<AppendOutcome> Ingest::append(std::vector<Event> events) {
  return validateAndAppend(std::move(events), /*skip_invalid=*/false);
}

Result<AppendOutcome> Ingest::appendEach(std::vector<Event> events) {
  return validateAndAppend(std::move(events), /*skip_invalid=*/true);
}

Result<AppendOutcome> Ingest::appendExported(std::vector<Event> events) {
  return validateAndAppend(std::move(events), /*skip_invalid=*/false, /*exported=*/true);
}

Result<AppendOutcome> Ingest::validateAndAppend(std::vector<Event> events, bool skip_invalid,
                                                bool exported) {
  const int64_t now = clock_.nowMs();
  std::vector<store::StoredEvent> stored;
  stored.reserve(events.size());
  std::vector<const Event*> kept;  // for the observers
  AppendOutcome outcome;
  outcome.ids.reserve(events.size());
  // Counted here, at the cause, per channel: plain adds into `tally`, then one relaxed atomic
  // add per channel present (EventMetrics), never a lock or an allocation per event.
  ChannelTally tally;
  for (std::size_t i = 0; i < events.size(); ++i) {
    auto prepared = prepare(events[i], i, now);
    if (!prepared) {
      const Channel channel = channelOf(events[i].type);
      if (prepared.error().code == "consent") {
        outcome.ids.push_back(events[i].id);  // acknowledged, deliberately not kept
        ++outcome.consent_dropped;
        if (metrics_ != nullptr) {
          metrics_->consentDropped(channel);
        }
        continue;
      }
      if (!skip_invalid) {
        // All or nothing: the whole request is refused for this event's reason.
        if (metrics_ != nullptr) {
          ChannelTally all;
          for (const Event& e : events) {
            all.add(channelOf(e.type));
          }
          metrics_->rejected(all, rejectReasonOf(prepared.error().code));
        }
        return prepared.error();
      }
      if (metrics_ != nullptr) {
        metrics_->rejected(channel, rejectReasonOf(prepared.error().code));
      }
      outcome.ids.emplace_back();
      outcome.rejected.push_back(Rejection{i, prepared.error()});
      continue;
    }
    if (exported && prepared->id_origin == store::IdOrigin::kProducer) {
      prepared->id_origin = store::IdOrigin::kExport;
    }
    tally.add(channelOf(prepared->type));
    outcome.ids.push_back(prepared->id);
    stored.push_back(std::move(*prepared));
    if (!observers_.empty()) {
      kept.push_back(&events[i]);
    }
  }
  if (stored.empty()) {
    return outcome;
  }
  auto counts = buffer_.append(std::move(stored));
  if (!counts) {
    if (metrics_ != nullptr) {
      metrics_->rejected(tally, rejectReasonOf(counts.error().code));
    }
    return counts.error();
  }
  if (metrics_ != nullptr) {
    metrics_->ingested(tally);  // stored or already there (duplicates): accepted either way
  }
  outcome.stored = counts->stored;
  outcome.duplicates = counts->duplicates;
  for (EventObserver* o : observers_) {
    o->onStored(kept);
  }
  return outcome;
}

}  // namespace omniedge
