// Ports picked at run time: never a fixed port in a test.
#pragma once

#include <chrono>

namespace omniedge::testing {

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
int freePort();

/// True once something accepts TCP connections on 127.0.0.1:port, false after `timeout`.
bool waitForPort(int port, std::chrono::milliseconds timeout);

}  // namespace omniedge::testing
