#include "agent/omni/trigger_rules.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

namespace omniedge::omni {
namespace {

using Json = nlohmann::json;

constexpr std::size_t kMaxShowBytes = 2048;
constexpr std::size_t kMaxListItems = 64;
constexpr int64_t kMaxWindowMs = int64_t{366} * 24 * 3600 * 1000;

Error fail(const std::string& field, const std::string& why) {
  return makeError("config", "triggers.rules" + field + ": " + why, "triggers.rules" + field);
}

// A value as the error message shows it (short).
std::string shown(const Json& v) {
  std::string text = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 60) {
    text = text.substr(0, 57) + "...";
  }
  return text;
}

bool isIdChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '_' || c == '-';
}

bool isTypeChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_';
}

// An event type as ingest takes it: lower case, dotted, a channel and a name.
bool isEventType(std::string_view t) {
  return !t.empty() && t.size() <= 64 && std::all_of(t.begin(), t.end(), isTypeChar) &&
         t.find('.') != std::string_view::npos && t.front() != '.' && t.back() != '.';
}

Result<std::vector<std::string>> stringList(const Json& v, const std::string& field) {
  const std::string why =
      "must be an array of non-empty strings (at most " + std::to_string(kMaxListItems) + "), got ";
  if (!v.is_array() || v.empty() || v.size() > kMaxListItems) {
    return fail(field, why + shown(v));
  }
  std::vector<std::string> out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string() || v[i].get_ref<const std::string&>().empty()) {
      return fail(field + "[" + std::to_string(i) + "]",
                  "must be a non-empty string, got " + shown(v[i]));
    }
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

// "1/4h", "3/30m", "1/d": at most N within a window of the given length.
Result<void> parseRate(const Json& v, const std::string& field, TriggerRule& rule) {
  if (v.is_object()) {
    if (v.size() != 1 || !v.contains("per_customer_s")) {
      return fail(field, "an object must be {\"per_customer_s\": seconds}, got " + shown(v));
    }
    const Json& s = v["per_customer_s"];
    if (!s.is_number_integer() || s.get<int64_t>() < 1 || s.get<int64_t>() > kMaxWindowMs / 1000) {
      return fail(field + ".per_customer_s",
                  "must be a whole number of seconds from 1 to 31622400, got " + shown(s));
    }
    rule.rate_count = 1;
    rule.rate_window_ms = s.get<int64_t>() * 1000;
    return {};
  }
  const std::string why =
      "must be \"N/<duration>\" (e.g. \"1/4h\", \"2/30m\"; units s, m, h, d) or "
      "{\"per_customer_s\": seconds}, got ";
  if (!v.is_string()) {
    return fail(field, why + shown(v));
  }
  const std::string& text = v.get_ref<const std::string&>();
  const std::size_t slash = text.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 >= text.size()) {
    return fail(field, why + shown(v));
  }
  int64_t count = 0;
  auto [c_end, c_ec] = std::from_chars(text.data(), text.data() + slash, count);
  if (c_ec != std::errc() || c_end != text.data() + slash || count < 1 || count > 1000) {
    return fail(field, "the count must be a whole number from 1 to 1000, got " + shown(v));
  }
  const std::string_view span(text.data() + slash + 1, text.size() - slash - 1);
  int64_t amount = 1;
  std::size_t unit_at = 0;
  if (std::isdigit(static_cast<unsigned char>(span.front())) != 0) {
    auto [a_end, a_ec] = std::from_chars(span.data(), span.data() + span.size(), amount);
    if (a_ec != std::errc() || amount < 1) {
      return fail(field, why + shown(v));
    }
    unit_at = static_cast<std::size_t>(a_end - span.data());
  }
  const std::string_view unit = span.substr(unit_at);
  int64_t unit_ms = 0;
  if (unit == "s") {
    unit_ms = 1000;
  } else if (unit == "m") {
    unit_ms = 60'000;
  } else if (unit == "h") {
    unit_ms = 3'600'000;
  } else if (unit == "d") {
    unit_ms = 86'400'000;
  } else {
    return fail(field, why + shown(v));
  }
  if (amount > kMaxWindowMs / unit_ms) {
    return fail(field, "the window must be at most 366d, got " + shown(v));
  }
  rule.rate_count = count;
  rule.rate_window_ms = amount * unit_ms;
  return {};
}

Result<void> parseWhen(const Json& when, const std::string& field, TriggerRule& rule) {
  if (!when.is_object()) {
    return fail(field, "must be an object, got " + shown(when));
  }
  for (const auto& [name, v] : when.items()) {
    const std::string f = field + "." + name;
    std::vector<std::string>* list = nullptr;
    if (name == "tier") {
      list = &rule.tiers;
    } else if (name == "segments_any") {
      list = &rule.segments_any;
    } else if (name == "segments_all") {
      list = &rule.segments_all;
    } else if (name == "lifecycle") {
      list = &rule.lifecycle;
    } else if (name == "zone") {
      list = &rule.zones;
    } else if (name == "consent") {
      list = &rule.consent;
    } else if (name == "cart_not_empty") {
      if (!v.is_boolean()) {
        return fail(f, "must be true or false, got " + shown(v));
      }
      rule.cart = v.get<bool>() ? 1 : -1;
      continue;
    } else {
      return fail(f,
                  "is not a condition (tier, segments_any, segments_all, lifecycle, zone, "
                  "cart_not_empty, consent)");
    }
    auto items = stringList(v, f);
    if (!items) {
      return items.error();
    }
    *list = std::move(*items);
  }
  for (std::size_t i = 0; i < rule.consent.size(); ++i) {
    const std::string& p = rule.consent[i];
    if (p != "tracking" && p != "personalization" && p != "marketing") {
      return fail(field + ".consent[" + std::to_string(i) + "]",
                  "must be tracking, personalization or marketing, got \"" + p + "\"");
    }
  }
  return {};
}

// FNV-1a: a rule's version only tells its edits apart; nothing depends on it being secret.
std::string versionOf(const Json& rule) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const char c : rule.dump()) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i) {
    out[static_cast<std::size_t>(i)] = kHex[h & 0xf];
    h >>= 4;
  }
  return out;
}

Result<TriggerRule> parseRule(const Json& r, std::size_t index) {
  const std::string at = "[" + std::to_string(index) + "]";
  if (!r.is_object()) {
    return fail(at, "must be an object, got " + shown(r));
  }
  TriggerRule rule;
  bool has_id = false;
  bool has_on = false;
  bool has_emit = false;
  for (const auto& [name, v] : r.items()) {
    const std::string f = at + "." + name;
    if (name == "id") {
      const bool ok = v.is_string() && !v.get_ref<const std::string&>().empty() &&
                      v.get_ref<const std::string&>().size() <= 64 &&
                      std::all_of(v.get_ref<const std::string&>().begin(),
                                  v.get_ref<const std::string&>().end(), isIdChar);
      if (!ok) {
        return fail(
            f, "must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', got " + shown(v));
      }
      rule.id = v.get<std::string>();
      has_id = true;
    } else if (name == "on") {
      const bool ok = v.is_string() && !v.get_ref<const std::string&>().empty() &&
                      v.get_ref<const std::string&>().size() <= 64 &&
                      std::all_of(v.get_ref<const std::string&>().begin(),
                                  v.get_ref<const std::string&>().end(),
                                  [](char c) { return isTypeChar(c) || c == '*'; });
      if (!ok) {
        return fail(f,
                    "must be an event type or a pattern with '*' (lower case, e.g. "
                    "\"beacon.enter\", \"app.*\"), got " +
                        shown(v));
      }
      rule.on = v.get<std::string>();
      if (rule.on.rfind("engagement.", 0) == 0) {
        return fail(f, "must not match engagement.* events (a trigger would fire itself)");
      }
      has_on = true;
    } else if (name == "emit") {
      if (!v.is_string() || v.get_ref<const std::string&>().rfind("engagement.", 0) != 0 ||
          !isEventType(v.get_ref<const std::string&>())) {
        return fail(f, "must be an event type engagement.<name> (lower case), got " + shown(v));
      }
      rule.emit = v.get<std::string>();
      has_emit = true;
    } else if (name == "when") {
      if (auto w = parseWhen(v, f, rule); !w) {
        return w.error();
      }
    } else if (name == "show") {
      if (!v.is_object() || !v.contains("kind") || !v["kind"].is_string() ||
          v["kind"].get_ref<const std::string&>().empty()) {
        return fail(f,
                    "must be an object with a \"kind\" string (e.g. {\"kind\": \"cart\"}), got " +
                        shown(v));
      }
      rule.show_json = v.dump(-1, ' ', false, Json::error_handler_t::replace);
      rule.show_kind = v["kind"].get<std::string>();
      if (rule.show_json.size() > kMaxShowBytes) {
        return fail(f, "is longer than " + std::to_string(kMaxShowBytes) + " bytes");
      }
    } else if (name == "rate_limit") {
      if (auto rate = parseRate(v, f, rule); !rate) {
        return rate.error();
      }
    } else if (name == "holdout") {
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0 ||
          v.get<double>() > 1) {
        return fail(
            f, "must be a number from 0 to 1 (the share of customers held out), got " + shown(v));
      }
      rule.holdout = v.get<double>();
    } else {
      return fail(f, "is not a rule field (id, on, when, emit, show, rate_limit, holdout)");
    }
  }
  if (!has_id) {
    return fail(at + ".id", "is missing");
  }
  if (!has_on) {
    return fail(at + ".on", "is missing");
  }
  if (!has_emit) {
    return fail(at + ".emit", "is missing");
  }
  rule.version = versionOf(r);
  return rule;
}

}  // namespace

Result<std::vector<TriggerRule>> parseTriggerRules(std::string_view json) {
  std::vector<TriggerRule> rules;
  const auto blank = json.find_first_not_of(" \t\r\n");
  if (blank == std::string_view::npos) {
    return rules;
  }
  const Json doc = Json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return fail("", "is not valid JSON (expected an array of rule objects)");
  }
  if (!doc.is_array()) {
    return fail("", "must be a JSON array of rule objects, got " + shown(doc));
  }
  if (doc.size() > kMaxTriggerRules) {
    return fail("", "holds " + std::to_string(doc.size()) + " rules; at most " +
                        std::to_string(kMaxTriggerRules) + " are allowed");
  }
  std::set<std::string> ids;
  for (std::size_t i = 0; i < doc.size(); ++i) {
    auto rule = parseRule(doc[i], i);
    if (!rule) {
      return rule.error();
    }
    if (!ids.insert(rule->id).second) {
      return fail("[" + std::to_string(i) + "].id", "\"" + rule->id + "\" is used by another rule");
    }
    rules.push_back(std::move(*rule));
  }
  return rules;
}

Result<std::string> checkTriggerRules(std::string_view json) {
  auto rules = parseTriggerRules(json);
  if (!rules) {
    return rules.error();
  }
  if (rules->empty()) {
    return std::string();
  }
  return Json::parse(json).dump();
}

bool typeMatches(std::string_view pattern, std::string_view type) {
  // Iterative glob with backtracking to the last '*': linear for the patterns rules use.
  std::size_t p = 0;
  std::size_t t = 0;
  std::size_t star = std::string_view::npos;
  std::size_t mark = 0;
  while (t < type.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && pattern[p] == type[t]) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') {
    ++p;
  }
  return p == pattern.size();
}

}  // namespace omniedge::omni
