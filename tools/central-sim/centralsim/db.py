"""The centre's own SQLite file: events de-duplicated on id, every batch received, statuses,
config reports, command results, drop reports, rejected payloads and the profile snapshot.

One `Database` object is shared by the MQTT thread and the HTTPS worker threads of `serve`;
every method takes its lock, so writes are serialised on one connection (SQLite allows one
writer anyway). Other processes (`report`, `profiles load`) open the same file at the same
time: WAL mode, and a busy timeout instead of errors.
"""

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import payload

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
-- One row per distinct event id. `arrival` is the order of first receipt (verify's reorder
-- check); `received` counts every copy that arrived (duplicates are received - 1).
CREATE TABLE IF NOT EXISTS events(
  arrival INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  tenant TEXT, store_id TEXT, type TEXT, source TEXT,
  received INTEGER NOT NULL DEFAULT 1,
  first_batch INTEGER, first_via TEXT, first_ms INTEGER,
  body TEXT);
CREATE INDEX IF NOT EXISTS events_store ON events(tenant, store_id);
-- One row per batch received (a resent batch gets a row of its own).
CREATE TABLE IF NOT EXISTS batches(
  n INTEGER PRIMARY KEY,
  batch_id TEXT, tenant TEXT, store_id TEXT, via TEXT, received_ms INTEGER,
  count INTEGER, new INTEGER, duplicates INTEGER,
  epoch TEXT, seq_first INTEGER, seq_last INTEGER, seq_ranges TEXT, epoch_start_seq INTEGER,
  compression TEXT, wire_bytes INTEGER, json_bytes INTEGER, agent_version TEXT,
  problems TEXT);
CREATE INDEX IF NOT EXISTS batches_store ON batches(tenant, store_id);
-- Seq ranges the agent reported dropped or quarantined, from the first copy of each report.
CREATE TABLE IF NOT EXISTS drops(
  event_id TEXT, tenant TEXT, store_id TEXT, epoch TEXT, first INTEGER, last INTEGER,
  reason TEXT, type TEXT);
-- status, config_reported and cmd_result messages, in arrival order.
CREATE TABLE IF NOT EXISTS messages(
  n INTEGER PRIMARY KEY, kind TEXT, tenant TEXT, store_id TEXT, received_ms INTEGER,
  retained INTEGER, payload TEXT);
CREATE INDEX IF NOT EXISTS messages_store ON messages(kind, tenant, store_id);
-- Payloads (or parts) the centre could not use, with the field and reason.
CREATE TABLE IF NOT EXISTS rejects(
  n INTEGER PRIMARY KEY, via TEXT, tenant TEXT, store_id TEXT, received_ms INTEGER,
  field TEXT, message TEXT, excerpt TEXT);
-- The HTTPS profile snapshot: only entries not superseded by a later one are kept, so a page
-- is "rev > cursor ORDER BY rev". scope '*' serves every store.
CREATE TABLE IF NOT EXISTS profiles(
  rev INTEGER PRIMARY KEY AUTOINCREMENT,
  scope TEXT NOT NULL, profile_id TEXT, keys TEXT, deleted_key TEXT, body TEXT);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class IngestResult:
    batch_row: int
    new: int
    duplicates: int


class Database:
    """Thread-safe access to the centre's file (see the module comment)."""

    def __init__(self, path: str, read_only: bool = False):
        if read_only:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                         isolation_level=None, check_same_thread=False)
        else:
            self._conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a crash of this process (the PUBACK follows the commit);
            # a power cut of the test machine is not this tool's concern.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES('schema_version', ?)",
                               (str(SCHEMA_VERSION),))
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- writes (serve) ---------------------------------------------------------------------

    def ingest(self, batch: payload.Batch, tenant: str, store_id: str, via: str,
               compression: str, wire_bytes: int) -> IngestResult:
        """Stores a batch and its events, de-duplicated on id, in one transaction.
        Raises sqlite3.Error when it cannot (the caller must then not acknowledge)."""
        problems = json.dumps(batch.problems) if batch.problems else None
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                cur = c.execute(
                    "INSERT INTO batches(batch_id, tenant, store_id, via, received_ms, count, "
                    "epoch, seq_first, seq_last, seq_ranges, epoch_start_seq, compression, "
                    "wire_bytes, json_bytes, agent_version, problems) "
                    "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (batch.batch_id, tenant, store_id, via, now_ms(), len(batch.events),
                     batch.epoch, batch.seq_first, batch.seq_last,
                     json.dumps(batch.seq_ranges) if batch.seq_ranges is not None else None,
                     batch.epoch_start_seq, compression, wire_bytes, batch.json_bytes,
                     batch.agent_version, problems))
                row = cur.lastrowid
                existing = set()
                ids = [e.id for e in batch.events]
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    q = "SELECT id FROM events WHERE id IN (%s)" % ",".join("?" * len(chunk))
                    existing.update(r[0] for r in c.execute(q, chunk))
                fresh, dups, seen = [], [], set()
                ms = now_ms()
                for e in batch.events:
                    if e.id in existing or e.id in seen:
                        dups.append((e.id,))
                        continue
                    seen.add(e.id)
                    fresh.append((e.id, tenant, store_id, e.type, e.source, row, via, ms, e.body))
                    report = payload.drop_report(e)
                    if report:
                        epoch, ranges, reason = report
                        c.executemany(
                            "INSERT INTO drops VALUES(?,?,?,?,?,?,?,?)",
                            [(e.id, tenant, store_id, epoch, a, b, reason, e.type)
                             for a, b in ranges])
                c.executemany(
                    "INSERT INTO events(id, tenant, store_id, type, source, first_batch, "
                    "first_via, first_ms, body) VALUES(?,?,?,?,?,?,?,?,?)", fresh)
                c.executemany("UPDATE events SET received = received + 1 WHERE id = ?", dups)
                c.execute("UPDATE batches SET new = ?, duplicates = ? WHERE n = ?",
                          (len(fresh), len(dups), row))
                for f, m in batch.problems:
                    c.execute(
                        "INSERT INTO rejects(via, tenant, store_id, received_ms, field, message, "
                        "excerpt) VALUES(?,?,?,?,?,?,?)",
                        (via, tenant, store_id, ms, f, m, f"batch {batch.batch_id}"))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return IngestResult(row, len(fresh), len(dups))

    def record_message(self, kind: str, tenant: str, store_id: str, retained: bool,
                       text: str) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO messages(kind, tenant, store_id, received_ms, retained, payload) "
                "VALUES(?,?,?,?,?,?)", (kind, tenant, store_id, now_ms(), int(retained), text))

    def record_reject(self, via: str, tenant: Optional[str], store_id: Optional[str],
                      field_name: str, message: str, raw: bytes) -> None:
        excerpt = raw[:200].decode("utf-8", "replace") if raw else ""
        with self._lock:
            self._conn.execute(
                "INSERT INTO rejects(via, tenant, store_id, received_ms, field, message, excerpt) "
                "VALUES(?,?,?,?,?,?,?)",
                (via, tenant, store_id, now_ms(), field_name, message, excerpt))

    # --- profile snapshot -------------------------------------------------------------------

    def load_profiles(self, upserts: List[Dict[str, Any]], deletes: List[str],
                      scope: str) -> Tuple[int, int]:
        """Adds upserts, then deletes, to the snapshot of `scope` (a store id or '*').
        Returns (upserted, deleted profiles)."""
        deleted = 0
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for p in upserts:
                    c.execute("DELETE FROM profiles WHERE scope = ? AND profile_id = ?",
                              (scope, p["id"]))
                    c.execute("INSERT INTO profiles(scope, profile_id, keys, body) "
                              "VALUES(?,?,?,?)",
                              (scope, p["id"], json.dumps(p.get("keys", [])),
                               json.dumps(p, separators=(",", ":"), ensure_ascii=False)))
                for key in deletes:
                    rows = c.execute(
                        "SELECT rev, profile_id, keys FROM profiles WHERE scope = ? AND "
                        "deleted_key IS NULL", (scope,)).fetchall()
                    hit = [r for r in rows if key in json.loads(r[2] or "[]")]
                    for rev, pid, _ in hit:
                        c.execute("DELETE FROM profiles WHERE rev = ?", (rev,))
                        c.execute("DELETE FROM profiles WHERE scope = ? AND profile_id = ? "
                                  "AND deleted_key IS NOT NULL", (scope, pid))
                    deleted += len(hit)
                    c.execute("DELETE FROM profiles WHERE scope = ? AND deleted_key = ?",
                              (scope, key))
                    c.execute("INSERT INTO profiles(scope, profile_id, deleted_key) "
                              "VALUES(?,?,?)", (scope, hit[0][1] if hit else None, key))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return len(upserts), deleted

    def profile_page(self, store_id: str, after_rev: int, limit: int):
        """(profiles, deleted keys, last rev returned, more after it) for one page."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT rev, body, deleted_key FROM profiles WHERE rev > ? AND scope IN (?, '*') "
                "ORDER BY rev LIMIT ?", (after_rev, store_id, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        profiles = [json.loads(r[1]) for r in rows if r[2] is None]
        deletes = [r[2] for r in rows if r[2] is not None]
        last = rows[-1][0] if rows else after_rev
        return profiles, deletes, last, more

    # --- reads (report, verify) -------------------------------------------------------------

    def query(self, sql: str, args: Iterable[Any] = ()) -> List[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()
