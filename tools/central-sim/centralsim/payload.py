"""Batch payloads as the agent sends them (contract §5, §6): decompression and validation.

A batch is `{"batch_id", "store_id", "agent_version", "count", "events": [...]}`, plain JSON,
gzip (magic 1f 8b) or zstd (magic 28 b5 2f fd). For the gap check (issue 14 point 7) it may also
carry `"epoch"` (string), `"seq_first"`, `"seq_last"` (integers, 1 <= first <= last), and
optionally `"seq_ranges"` ([[first, last], ...] inside that span: exactly the seqs the batch
holds) and `"epoch_start_seq"` (the first seq the epoch ever gave, default 1).
"""

import io
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

try:  # python3-zstandard (Debian 12) is optional: without it zstd batches are refused, named.
    import zstandard
except ImportError:  # pragma: no cover - depends on the machine
    zstandard = None

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_JSON_BYTES = 256 * 1024 * 1024  # a decompression bomb stops here


class PayloadError(Exception):
    """The payload cannot be used at all. `field` names what is wrong ("" for the whole body)."""

    def __init__(self, field_name: str, message: str, status: int = 400):
        super().__init__(message)
        self.field = field_name
        self.message = message
        self.status = status


def _gunzip(data: bytes) -> bytes:
    out = bytearray()
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            out += d.decompress(data, MAX_JSON_BYTES + 1 - len(out))
        except zlib.error as e:
            raise PayloadError("", f"corrupt gzip stream: {e}") from None
        if len(out) > MAX_JSON_BYTES or d.unconsumed_tail:
            raise PayloadError("", f"decompresses to more than {MAX_JSON_BYTES} bytes", 413)
        if not d.eof:
            raise PayloadError("", "truncated gzip stream")
        data = d.unused_data  # a second gzip member, if any
        if data and not data.startswith(GZIP_MAGIC):
            raise PayloadError("", "trailing bytes after the gzip stream")
    return bytes(out)


def _unzstd(data: bytes) -> bytes:
    if zstandard is None:
        raise PayloadError(
            "", "zstd batch but python3-zstandard is not installed on the centre", 415)
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        out = reader.read(MAX_JSON_BYTES + 1)
    except zstandard.ZstdError as e:
        raise PayloadError("", f"corrupt zstd frame: {e}") from None
    if len(out) > MAX_JSON_BYTES:
        raise PayloadError("", f"decompresses to more than {MAX_JSON_BYTES} bytes", 413)
    return out


def decompress(data: bytes, content_encoding: Optional[str] = None) -> Tuple[bytes, str]:
    """(JSON bytes, "gzip" | "zstd" | "none"). With a Content-Encoding (HTTPS) the body must
    match it; without one (MQTT, or HTTPS without the header) the magic bytes decide."""
    enc = (content_encoding or "").strip().lower()
    if enc in ("gzip", "x-gzip"):
        if not data.startswith(GZIP_MAGIC):
            raise PayloadError("", "Content-Encoding: gzip but the body is not a gzip stream")
        return _gunzip(data), "gzip"
    if enc == "zstd":
        if not data.startswith(ZSTD_MAGIC):
            raise PayloadError("", "Content-Encoding: zstd but the body is not a zstd frame")
        return _unzstd(data), "zstd"
    if enc not in ("", "identity"):
        raise PayloadError("", f"unsupported Content-Encoding '{content_encoding}'", 415)
    if data.startswith(GZIP_MAGIC):
        return _gunzip(data), "gzip"
    if data.startswith(ZSTD_MAGIC):
        return _unzstd(data), "zstd"
    return data, "none"


@dataclass
class Event:
    id: str
    type: Optional[str]
    source: Optional[str]
    body: str  # the event re-serialised compactly (the agent's bytes are not kept verbatim)
    data: Any


@dataclass
class Batch:
    batch_id: Optional[str]
    store_id: Optional[str]
    agent_version: Optional[str]
    count: Optional[int]
    events: List[Event]
    epoch: Optional[str] = None
    seq_first: Optional[int] = None
    seq_last: Optional[int] = None
    seq_ranges: Optional[List[Tuple[int, int]]] = None
    epoch_start_seq: Optional[int] = None
    json_bytes: int = 0
    # Non-fatal findings: (field, message). MQTT keeps what it can and records these;
    # HTTPS answers 400 naming the first one.
    problems: List[Tuple[str, str]] = field(default_factory=list)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _seq_fields(doc: Dict[str, Any], batch: Batch) -> None:
    keys = ("epoch", "seq_first", "seq_last")
    present = [k for k in keys if k in doc]
    extras = [k for k in ("seq_ranges", "epoch_start_seq") if k in doc]
    if not present and not extras:
        return
    for k in keys:
        if k not in doc:
            batch.problems.append((k, f"missing while {', '.join(present + extras)} is present"))
            return
    epoch, first, last = doc["epoch"], doc["seq_first"], doc["seq_last"]
    if not isinstance(epoch, str) or not epoch:
        batch.problems.append(("epoch", "must be a non-empty string"))
        return
    if not _is_int(first) or first < 1:
        batch.problems.append(("seq_first", "must be an integer >= 1"))
        return
    if not _is_int(last) or last < first:
        batch.problems.append(("seq_last", "must be an integer >= seq_first"))
        return
    start = doc.get("epoch_start_seq", 1)
    if not _is_int(start) or start < 1 or start > first:
        batch.problems.append(("epoch_start_seq", "must be an integer in [1, seq_first]"))
        return
    ranges = None
    if "seq_ranges" in doc:
        raw = doc["seq_ranges"]
        ok = isinstance(raw, list) and raw
        ranges = []
        for i, r in enumerate(raw if isinstance(raw, list) else []):
            if not (isinstance(r, list) and len(r) == 2 and _is_int(r[0]) and _is_int(r[1])
                    and first <= r[0] <= r[1] <= last):
                batch.problems.append(
                    (f"seq_ranges[{i}]", "must be [first, last] inside [seq_first, seq_last]"))
                return
            ranges.append((r[0], r[1]))
        if not ok:
            batch.problems.append(("seq_ranges", "must be a non-empty array of [first, last]"))
            return
    batch.epoch, batch.seq_first, batch.seq_last = epoch, first, last
    batch.seq_ranges, batch.epoch_start_seq = ranges, start


def parse_batch(raw_json: bytes) -> Batch:
    """Validates a decompressed batch. Raises PayloadError when nothing in it can be used (not
    JSON, not an object, no events array); everything else lands in `problems`, and events
    without a usable id are left out of `events`."""
    try:
        doc = json.loads(raw_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadError("", f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PayloadError("", "a batch must be a JSON object")
    events = doc.get("events")
    if not isinstance(events, list):
        raise PayloadError("events", "missing or not an array")
    batch = Batch(batch_id=None, store_id=None, agent_version=None, count=None, events=[],
                  json_bytes=len(raw_json))
    for key in ("batch_id", "store_id", "agent_version"):
        v = doc.get(key)
        if v is None:
            if key != "agent_version":
                batch.problems.append((key, "missing"))
        elif not isinstance(v, str) or not v:
            batch.problems.append((key, "must be a non-empty string"))
        else:
            setattr(batch, key, v)
    count = doc.get("count")
    if count is None:
        batch.problems.append(("count", "missing"))
    elif not _is_int(count) or count != len(events):
        batch.problems.append(("count", f"is {count!r} but the batch holds {len(events)} events"))
    else:
        batch.count = count
    if not events:
        batch.problems.append(("events", "empty: a batch carries at least one event"))
    for i, e in enumerate(events):
        if not isinstance(e, dict):
            batch.problems.append((f"events[{i}]", "must be an object"))
            continue
        eid = e.get("id")
        if not isinstance(eid, str) or not eid:
            batch.problems.append((f"events[{i}].id", "missing or not a non-empty string"))
            continue
        t, s = e.get("type"), e.get("source")
        batch.events.append(Event(
            id=eid, type=t if isinstance(t, str) else None,
            source=s if isinstance(s, str) else None,
            body=json.dumps(e, separators=(",", ":"), ensure_ascii=False), data=e.get("data")))
    _seq_fields(doc, batch)
    if batch.seq_first is not None and batch.seq_ranges is None:
        span = batch.seq_last - batch.seq_first + 1
        if len(events) > span:
            batch.problems.append(
                ("seq_last", f"the batch holds {len(events)} events but its seq range only {span}"))
    return batch


def drop_report(event: Event) -> Optional[Tuple[str, List[Tuple[int, int]], str]]:
    """(epoch, ranges, reason) when `event` is an agent report of events it dropped or
    quarantined: any `agent.*` event whose data has `epoch` (string) and `ranges`
    ([[first, last], ...]); `reason` is data.reason (or the event type). None otherwise, also
    for a malformed report (which the centre then cannot count: it stays an ordinary event)."""
    if not event.type or not event.type.startswith("agent.") or not isinstance(event.data, dict):
        return None
    epoch, ranges = event.data.get("epoch"), event.data.get("ranges")
    if not isinstance(epoch, str) or not epoch or not isinstance(ranges, list):
        return None
    out = []
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and _is_int(r[0]) and _is_int(r[1])
                and 1 <= r[0] <= r[1]):
            return None
        out.append((r[0], r[1]))
    reason = event.data.get("reason")
    return epoch, out, reason if isinstance(reason, str) and reason else event.type
