// A VFS over SQLite's default one that hands a commit's WAL frames to the kernel in a few large
// writes instead of two small ones per frame.
//
// SQLite writes each WAL frame as two writes (its 24-byte header, then the page), so a commit of
// ~45 pages of 2 KiB made ~90 pwrite() calls, each through ext4's per-call work: a quarter of
// the writer thread's CPU under the kiosk load (docs/benchmarks.md, "By thread"). Over this VFS
// the WAL file collects writes that follow each other and writes them when SQLite syncs the
// WAL, reads it, asks its size, truncates or closes it, when a write does not follow the last
// one, or at kMaxPending bytes; in pieces that end at 4 KiB boundaries, one call each: a larger
// write makes the kernel cache the WAL in large folios, which a later commit then dirties, and
// writes back, whole (one write per commit measured 4x the bytes per single event on this
// ext4). Only for connections with synchronous=FULL: there a commit always syncs the WAL before
// the commit is published to readers (the WAL index is written after the sync), so nothing a
// reader or a restart could see is ever held in memory; an error writing the collected frames
// is the sync's error, so the commit fails as it would have. Every other file (the database,
// the -shm) is the base VFS's own, untouched.
#pragma once

namespace omniedge::store::detail {

/// The name of the VFS (registered on first call; nullptr when "unix" is missing, and then
/// connections use SQLite's default VFS as they did before).
const char* coalescingWalVfs();

}  // namespace omniedge::store::detail
