#pragma once
// Names the calling thread, as `top -H`, `ps -L`, perf, gdb and /proc/PID/task/*/comm show it:
// "oe-" and what it does (the kernel keeps 15 characters).

#include <string_view>

namespace omniedge {

void nameThisThread(std::string_view name);

}  // namespace omniedge
