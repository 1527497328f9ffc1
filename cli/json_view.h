// Reading a status document that other parts of the agent fill in: a missing field or one of
// an unexpected type gives the fallback, never an exception (nlohmann's value() throws on a
// type mismatch).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace omniedge::cli {

inline const nlohmann::json& member(const nlohmann::json& j, const char* key) {
  static const nlohmann::json kNull;
  if (!j.is_object()) {
    return kNull;
  }
  const auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

inline bool has(const nlohmann::json& j, const char* key) { return !member(j, key).is_null(); }

inline std::string str(const nlohmann::json& j, const char* key, std::string fallback = "") {
  const auto& v = member(j, key);
  return v.is_string() ? v.get<std::string>() : fallback;
}

inline int64_t num(const nlohmann::json& j, const char* key, int64_t fallback = 0) {
  const auto& v = member(j, key);
  if (v.is_number_integer()) {
    return v.get<int64_t>();
  }
  return v.is_number() ? static_cast<int64_t>(v.get<double>()) : fallback;
}

inline double real(const nlohmann::json& j, const char* key, double fallback = 0) {
  const auto& v = member(j, key);
  return v.is_number() ? v.get<double>() : fallback;
}

inline bool flag(const nlohmann::json& j, const char* key, bool fallback = false) {
  const auto& v = member(j, key);
  return v.is_boolean() ? v.get<bool>() : fallback;
}

}  // namespace omniedge::cli
