// The process's resident memory: what start-up left mapped, and giving it back.
#pragma once

#include <cstddef>

namespace omniedge {

/// Drops from this process's page tables the pages of clean, read-only file mappings: the code
/// and read-only data of the binary and its shared libraries that start-up touched (config
/// parsing, schema checks, migrations, OpenSSL's and the loader's tables). Nothing is lost: the
/// pages stay in the page cache and come back on the next use as minor faults. Mappings that
/// are writable, or that hold private copies of pages (RELRO after relocation, a debugger's
/// breakpoints), are left alone. Returns the kB removed from the resident set.
///
/// The daemon calls it once, a few seconds after READY (agent.cpp): VmRSS then counts what the
/// running daemon uses rather than everything start-up ever touched (docs/benchmarks.md,
/// "What the idle daemon's memory is"). Thread: any; other threads may run meanwhile.
std::size_t releaseStartupPages();

/// Configures SQLite's memory before its first use: no bulk page-cache allocation at each
/// connection's open (20 pages per connection by default, ~80 KB each, most never used by the
/// small databases). Call first thing in main(); false if SQLite was already initialised.
bool configureSqliteMemory();

}  // namespace omniedge
