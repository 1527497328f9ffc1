// The CLI's side of the control socket (agent/control_socket.h is the daemon's): one JSON
// request per line, one JSON answer per line.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>

#include "agent/api/result.h"

namespace omniedge {

/// Sends `request` to the daemon at `socket_path` and returns its answer (which may itself say
/// {"ok": false}). Fails with code "absent" (no socket file), "refused" (a socket nobody
/// listens on: a daemon that died), "permission" (not allowed to connect), "timeout" (no
/// answer within `timeout_ms`) or "io"; the message says which path and why. Thread: any.
Result<nlohmann::json> controlRequest(const std::filesystem::path& socket_path,
                                      const nlohmann::json& request, int timeout_ms = 5000);

}  // namespace omniedge
