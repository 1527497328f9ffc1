// A VFS over SQLite's default one that hands a commit's WAL frames to the kernel in a few large
// writes instead of two small ones per frame.
//
// SQLite writes each WAL frame as two writes (its 24-byte header, then the page), so a commit of
// ~45 pages of 2 KiB made ~90 pwrite() calls, each through ext4's per-call work: a quarter of
// the writer thread's CPU under the kiosk load (docs/benchmarks.md, "By thread"). Over this VFS
// the WAL file holds writes that follow each other and writes them when SQLite syncs or
// truncates the WAL, when a write does not follow the held ones, or at kMaxPending bytes; in
// pieces that end at 4 KiB boundaries, one call each: a larger write makes the kernel cache the
// WAL in large folios, which a later commit then dirties, and writes back, whole (one write per
// commit measured 4x the bytes per single event on this ext4). Reads of held frames (pages a
// big transaction spilled) are answered from memory. Only for connections with
// synchronous=FULL: there a commit always syncs the WAL before the commit is published to
// readers (the WAL index is written after the sync), so only frames of a transaction not yet
// committed are ever held, never one a reader or a restart could need. A failed write of held
// frames is the error of the write or sync that needed it (a sync's: the commit fails, as for a
// failed fsync), and they stay held for the next try: nothing SQLite was told is written is
// ever dropped while the file is open.
//
// A flush of at most 16 KiB (a commit of a few events: a lone kiosk's, an acknowledgement) goes
// to the disk with O_DIRECT, in whole 512-byte sectors, not through the page cache: once synced, a
// page-cache page is clean, so each small commit dirtied and wrote back one or two whole 4 KiB
// pages; a commit of one event (~2.5 KB of frames) now writes ~3 KB. The first sector's earlier
// bytes come from the last direct write (kept while no connection of this process changed that WAL
// file since: a count per file) or are read from the file; the last sector's later bytes are read
// from the file, or are zeros where nothing of the WAL's current generation lies (SQLite starts one
// with the header at offset 0; recovery reads frames only up to the first that does not check out,
// so zeros past the end are never read as a frame). Larger flushes go through the page cache, where
// the readers that deliver them find them. Only over the platform's "unix" VFS (a test's
// fault-injecting VFS sees every write) and where the file system takes O_DIRECT in 512-byte
// sectors (where it takes only 4 KiB, a direct write would write as much as the page cache does);
// elsewhere the WAL is written as before. Every other file (the database, the -shm) is the base
// VFS's own, untouched.
#pragma once

namespace omniedge::store::detail {

/// The name of the VFS (registered on first call; nullptr when "unix" is missing, and then
/// connections use SQLite's default VFS as they did before).
const char* coalescingWalVfs();

}  // namespace omniedge::store::detail
