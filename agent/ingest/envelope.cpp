#include "agent/ingest/envelope.h"

#include <utility>

#include "agent/api/time.h"

namespace omniedge {

Result<Event> eventFromEnvelope(const nlohmann::json& j, const std::string& where) {
  const auto bad = [&where](const std::string& field, const std::string& why) {
    return makeError("invalid", where + ": " + field + " " + why, field);
  };
  if (!j.is_object()) {
    return makeError("invalid", where + " must be a JSON object (an event envelope)", "");
  }
  if (!j.contains("type")) {
    return bad("type", "is required");
  }
  if (!j["type"].is_string()) {
    return bad("type", "must be a string");
  }
  Event e;
  e.type = j["type"].get<std::string>();
  for (auto [field, target] : {std::pair{"id", &e.id}, std::pair{"source", &e.source},
                               std::pair{"store_id", &e.store_id}}) {
    if (j.contains(field)) {
      if (!j[field].is_string()) {
        return bad(field, "must be a string");
      }
      *target = j[field].get<std::string>();
    }
  }
  if (j.contains("occurred_at")) {
    auto ms = j["occurred_at"].is_string() ? parseRfc3339(j["occurred_at"].get<std::string>())
                                           : std::nullopt;
    if (!ms) {
      return bad("occurred_at", "is not an RFC 3339 timestamp");
    }
    e.occurred_at_ms = *ms;
  }
  if (j.contains("customer")) {
    if (!j["customer"].is_object()) {
      return bad("customer", "must be an object");
    }
    for (const auto& [k, v] : j["customer"].items()) {
      if (!v.is_string()) {
        return bad("customer." + k, "must be a string");
      }
      e.customer[k] = v.get<std::string>();
    }
  }
  if (j.contains("data")) {
    if (!j["data"].is_object()) {
      return bad("data", "must be an object");
    }
    e.data_json = j["data"].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  return e;
}

bool jsonNestingWithin(std::string_view text, std::size_t max) {
  std::size_t depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max) {
        return false;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return true;
}

}  // namespace omniedge
