// The systemd notify protocol (sd_notify(3)): READY=1, WATCHDOG=1, STOPPING=1, STATUS=...
// Written here rather than linked from libsystemd: it is one datagram to $NOTIFY_SOCKET, and
// libsystemd brings five more shared libraries (~1 MB of resident memory) for it.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace omniedge {

/// Sends `state` to the service manager; false when not run by one ($NOTIFY_SOCKET unset) or
/// the send failed. Thread: any. Never blocks.
bool systemdNotify(std::string_view state);

/// The watchdog interval systemd expects pings within ($WATCHDOG_USEC, for this pid), if any.
std::optional<std::chrono::microseconds> systemdWatchdogInterval();

}  // namespace omniedge
