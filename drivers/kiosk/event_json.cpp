#include "drivers/kiosk/event_json.h"

#include <array>
#include <exception>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "agent/api/time.h"

namespace omniedge::kiosk {
namespace {

// ordered_json keeps the producer's key order in `data` and reports the first bad field in
// document order.
using Json = nlohmann::ordered_json;

// Deeper documents are refused before parsing: serialising `data` back is recursive, and a
// body of a few MiB of '[' must not be able to exhaust the stack.
constexpr std::size_t kMaxDepth = 64;

constexpr std::array<std::string_view, 8> kCustomerKeys = {
    "loyalty_id", "app_user_id", "profile_id",   "beacon",
    "email",      "phone",       "email_sha256", "phone_sha256"};

std::string prefix(std::size_t index) { return "[" + std::to_string(index) + "]"; }

Error invalidField(std::size_t index, std::string_view name, std::string_view reason) {
  std::string field = prefix(index);
  field += '.';
  field += name;
  std::string message = field;
  message += ' ';
  message += reason;
  return makeError("invalid", std::move(message), std::move(field));
}

// The byte offset at which nesting first exceeds kMaxDepth, or npos. Tracks strings so that
// brackets inside them do not count; malformed JSON is left to the parser.
std::size_t tooDeepAt(std::string_view body) {
  std::size_t depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (std::size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxDepth) {
        return i;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string_view::npos;
}

bool isCustomerKey(std::string_view key) {
  for (std::string_view known : kCustomerKeys) {
    if (key == known) {
      return true;
    }
  }
  return false;
}

// Moves a string value out, or fails with "must be a string".
Result<std::string> takeString(Json& value, std::size_t index, std::string_view name) {
  if (!value.is_string()) {
    return invalidField(index, name, "must be a string");
  }
  return std::move(value.get_ref<std::string&>());
}

Result<void> parseCustomer(Json& value, std::size_t index, Event& event) {
  if (!value.is_object()) {
    return invalidField(index, "customer", "must be an object");
  }
  for (auto it = value.begin(); it != value.end(); ++it) {
    const std::string& key = it.key();
    const std::string name = "customer." + key;
    if (!isCustomerKey(key)) {
      return invalidField(index, name, "unknown field");
    }
    auto text = takeString(it.value(), index, name);
    if (!text) {
      return text.error();
    }
    event.customer[key] = std::move(*text);
  }
  return {};
}

Result<Event> parseEvent(Json& object, std::size_t index) {
  if (!object.is_object()) {
    return makeError("invalid", prefix(index) + " must be an object", prefix(index));
  }
  Event event;
  bool has_type = false;
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string& key = it.key();
    Json& value = it.value();
    if (key == "type" || key == "id" || key == "source" || key == "store_id") {
      auto text = takeString(value, index, key);
      if (!text) {
        return text.error();
      }
      if (key == "type") {
        event.type = std::move(*text);
        has_type = true;
      } else if (key == "id") {
        event.id = std::move(*text);
      } else if (key == "source") {
        event.source = std::move(*text);
      } else {
        event.store_id = std::move(*text);
      }
    } else if (key == "occurred_at") {
      if (!value.is_string()) {
        return invalidField(index, key, "must be a string");
      }
      auto ms = parseRfc3339(value.get_ref<const std::string&>());
      if (!ms) {
        return invalidField(index, key, "is not an RFC 3339 timestamp");
      }
      event.occurred_at_ms = *ms;
    } else if (key == "received_at") {
      return invalidField(index, key, "is set by the agent and not accepted from producers");
    } else if (key == "customer") {
      auto ok = parseCustomer(value, index, event);
      if (!ok) {
        return ok.error();
      }
    } else if (key == "data") {
      if (!value.is_object()) {
        return invalidField(index, key, "must be an object");
      }
      event.data_json = value.dump(-1, ' ', false, Json::error_handler_t::replace);
    } else {
      return invalidField(index, key, "unknown field");
    }
  }
  if (!has_type) {
    return invalidField(index, "type", "is required");
  }
  return event;
}

}  // namespace

Result<std::vector<Event>> parseEvents(std::string_view body, std::size_t max_events,
                                       bool* was_array) {
  if (was_array != nullptr) {
    *was_array = false;
  }
  if (const std::size_t at = tooDeepAt(body); at != std::string_view::npos) {
    return makeError("invalid_json", "JSON nested deeper than " + std::to_string(kMaxDepth) +
                                         " levels at byte " + std::to_string(at + 1));
  }
  Json root;
  try {
    root = Json::parse(body.begin(), body.end());
  } catch (const Json::parse_error& e) {
    // what() is "[json.exception.parse_error.101] parse error at line 1, column 16: <reason>".
    std::string_view reason = e.what();
    if (const auto colon = reason.find(": "); colon != std::string_view::npos) {
      reason.remove_prefix(colon + 2);
    }
    return makeError("invalid_json", "malformed JSON at byte " + std::to_string(e.byte) + ": " +
                                         std::string(reason));
  } catch (const std::exception& e) {
    return makeError("invalid_json", std::string("malformed JSON: ") + e.what());
  }

  std::vector<Event> events;
  try {
    if (root.is_object()) {
      auto event = parseEvent(root, 0);
      if (!event) {
        return event.error();
      }
      events.push_back(std::move(*event));
      return events;
    }
    if (!root.is_array()) {
      return makeError("invalid", "the body must be a JSON event object or an array of them");
    }
    if (was_array != nullptr) {
      *was_array = true;
    }
    if (root.empty()) {
      return makeError("invalid", "the array holds no events");
    }
    if (root.size() > max_events) {
      return makeError("too_large", std::to_string(root.size()) +
                                        " events in one request; at most " +
                                        std::to_string(max_events) + " are accepted");
    }
    events.reserve(root.size());
    for (std::size_t i = 0; i < root.size(); ++i) {
      auto event = parseEvent(root[i], i);
      if (!event) {
        return event.error();
      }
      events.push_back(std::move(*event));
    }
  } catch (const std::exception& e) {
    // Not expected (types are checked before each access); a bad body must never escape.
    return makeError("invalid", std::string("cannot read the events: ") + e.what());
  }
  return events;
}

}  // namespace omniedge::kiosk
