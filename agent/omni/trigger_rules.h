// Trigger rules (config key triggers.rules, docs/omnichannel.md): what the edge does, by itself
// and within microseconds, when an event of a known customer matches (a gold-tier customer with
// items in their app cart walks in: the kiosk near them shows the cart). Parsed and checked here,
// as a whole, so that the config layer refuses a bad set before anything applies it; evaluated
// by TriggerEngine (triggers.h).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/api/result.h"

namespace omniedge::omni {

/// One rule, as checked. Lists are empty when the rule does not ask for that condition.
struct TriggerRule {
  std::string id;                         // 1-64 of [A-Za-z0-9._-], unique in the set
  std::string on;                         // event type, or a glob with '*' ("beacon.*")
  std::vector<std::string> tiers;         // when.tier: the profile's tier is one of these
  std::vector<std::string> segments_any;  // when.segments_any: one of its segments is
  std::vector<std::string> segments_all;  // when.segments_all: every one of these is
  std::vector<std::string> lifecycle;     // when.lifecycle: its lifecycle stage is one of
  std::vector<std::string> zones;         // when.zone: the event's data.zone is one of
  std::vector<std::string> consent;       // when.consent: purposes the profile explicitly grants
  int cart = 0;                           // when.cart_not_empty: 1 true, -1 false, 0 not asked
  std::string emit;                       // engagement.<name>
  std::string show_json;                  // the "show" object, compact ("" when none)
  std::string show_kind;                  // its "kind" ("cart": the stream carries the cart)
  int64_t rate_count = 1;                 // at most rate_count firings ...
  int64_t rate_window_ms = 3'600'000;     // ... per customer within this window
  double holdout = 0;                     // share of customers held out, 0 to 1
  std::string version;                    // 16 hex digits hashing the rule: which edit fired
};

/// The most rules a set may hold.
inline constexpr std::size_t kMaxTriggerRules = 200;

/// Parses and checks a whole rule set (a JSON array of rule objects; "" or "[]" is no rule).
/// Fails "config" with a message that starts with the offending field, e.g.
/// "triggers.rules[2].when.tier: must be an array of non-empty strings, got 5"; unknown fields
/// are refused by name. Thread: any. Never throws.
Result<std::vector<TriggerRule>> parseTriggerRules(std::string_view json);

/// The config layer's check of triggers.rules: the set compacted (one line, as stored) when it
/// is valid. Thread: any. Never throws.
Result<std::string> checkTriggerRules(std::string_view json);

/// True when `type` matches `pattern` (an exact type, or '*' standing for any run of
/// characters). Thread: any.
bool typeMatches(std::string_view pattern, std::string_view type);

}  // namespace omniedge::omni
