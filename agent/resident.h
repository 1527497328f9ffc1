// The process's resident memory: what start-up left mapped, and giving it back.
#pragma once

#include <cstddef>

namespace omniedge {

/// Drops from this process's page tables the pages of the read-only segments of loaded objects
/// (the binary and its shared libraries: code, read-only data) that start-up touched (config
/// parsing, schema checks, migrations, OpenSSL's and the loader's tables). Nothing is lost: the
/// pages stay in the page cache and come back on the next use as minor faults. Mappings that are
/// writable, that hold private copies of pages (relocated RELRO data, a debugger's breakpoints)
/// or that belong to no loaded object (a data file some library mapped: it could be unmapped and
/// its addresses reused meanwhile) are left alone; the objects' segments are released under the
/// loader's lock (dl_iterate_phdr), so none of them is unloaded meanwhile. Returns the kB
/// removed from the resident set.
///
/// The daemon calls it at READY, 2 s later, and after each burst of work (agent.cpp): VmRSS
/// then counts what the running daemon uses rather than everything start-up ever touched
/// (docs/benchmarks.md, "What the idle daemon's memory is"). Thread: any; other threads may run
/// meanwhile.
std::size_t releaseStartupPages();

/// Configures SQLite's memory before its first use: no bulk page-cache allocation at each
/// connection's open (20 pages per connection by default, ~80 KB each, most never used by the
/// small databases). Call first thing in main(); false if SQLite was already initialised.
bool configureSqliteMemory();

}  // namespace omniedge
