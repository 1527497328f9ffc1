#!/usr/bin/python3
"""Checks an omniedge GET /metrics page with the real Prometheus parser.

Usage: metrics_check.py METRICS_FILE EXPECT_JSON [DOCS_MD]

METRICS_FILE is the page as the agent served it. EXPECT_JSON is a JSON object:
  {"values": [{"name": SAMPLE_NAME, "labels": {...}, "op": "==" | ">=" | "<=", "value": N}, ...]}
naming samples (as written on the page, e.g. omniedge_events_delivered_total) that must exist
with that value. DOCS_MD, when given, must mention every family the page has.

Beyond EXPECT_JSON it checks what every page must hold (docs/metrics.md): the families of
issue 16 with their types, the naming conventions (omniedge_ prefix, counters end in _total,
HELP text on every family), bounded label values, and a batch latency histogram whose buckets
are cumulative, end in +Inf and agree with _count, counting at least every batch delivered.
Prints every problem found and exits 1 if there is any, 0 otherwise.
"""

import json
import re
import sys

from prometheus_client.parser import text_string_to_metric_families

# Family (as the parser names it: a counter without its _total) -> type.
REQUIRED = {
    "omniedge_events_ingested": "counter",
    "omniedge_events_delivered": "counter",
    "omniedge_events_rejected": "counter",
    "omniedge_events_dropped": "counter",
    "omniedge_buffer_pending": "gauge",
    "omniedge_buffer_pending_bytes": "gauge",
    "omniedge_buffer_oldest_pending_age_seconds": "gauge",
    "omniedge_buffer_file_bytes": "gauge",
    "omniedge_buffer_wal_bytes": "gauge",
    "omniedge_data_dir_free_bytes": "gauge",
    "omniedge_process_resident_memory_bytes": "gauge",
    "omniedge_uplink_connected": "gauge",
    "omniedge_uplink_reconnects": "counter",
    "omniedge_uplink_batch_latency_seconds": "histogram",
    "omniedge_driver_state": "gauge",
    "omniedge_driver_errors": "counter",
    "omniedge_quarantine_events": "gauge",
    "omniedge_quarantine_bytes": "gauge",
    "omniedge_config_version": "gauge",
    # Kept from before issue 16 (tests and docs use them).
    "omniedge_events_appended": "counter",
    "omniedge_events_duplicate": "counter",
    "omniedge_events_evicted": "counter",
    "omniedge_mqtt_connected": "gauge",
    "omniedge_mqtt_batches_acked": "counter",
    "omniedge_mqtt_reconnects": "counter",
    "omniedge_http_requests": "counter",
    "omniedge_triggers": "counter",
}

CHANNELS = {"pos", "kiosk", "beacon", "engagement", "visit", "web", "app", "agent", "other"}
REJECT_REASONS = {"invalid", "too_large", "full", "stopping", "io", "other"}
DROP_REASONS = {"consent", "evicted"}
LINKS = {"mqtt", "https"}


def raw_types(text):
    """TYPE lines as written (the parser strips _total from counters)."""
    types = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)$", line)
        if m:
            types[m.group(1)] = m.group(2)
    return types


def check(text, expect, docs):
    problems = []
    families = {f.name: f for f in text_string_to_metric_families(text)}

    for name, kind in REQUIRED.items():
        f = families.get(name)
        if f is None:
            problems.append(f"family {name} ({kind}) is missing")
        elif f.type != kind:
            problems.append(f"family {name} is a {f.type}, expected a {kind}")

    for written, kind in raw_types(text).items():
        if not written.startswith("omniedge_"):
            problems.append(f"{written}: no omniedge_ prefix")
        if kind == "counter" and not written.endswith("_total"):
            problems.append(f"counter {written} does not end in _total")
        if kind != "counter" and written.endswith("_total"):
            problems.append(f"{kind} {written} ends in _total, which is for counters")
    for f in families.values():
        if not f.documentation.strip():
            problems.append(f"family {f.name} has no HELP text")
        if docs is not None and not re.search(re.escape(f.name) + r"(_total)?\b", docs):
            problems.append(f"family {f.name} is not documented in docs/metrics.md")

    # Bounded labels: a channel or reason from user input is mapped to a fixed set.
    for f in families.values():
        for s in f.samples:
            ch = s.labels.get("channel")
            if ch is not None and ch not in CHANNELS:
                problems.append(f"{s.name}: channel label {ch!r} outside the fixed set")
            if f.name == "omniedge_events_rejected" and s.labels.get("reason") not in REJECT_REASONS:
                problems.append(f"{s.name}: reason {s.labels.get('reason')!r} unknown")
            if f.name == "omniedge_events_dropped" and s.labels.get("reason") not in DROP_REASONS:
                problems.append(f"{s.name}: reason {s.labels.get('reason')!r} unknown")

    # The histogram: per link, cumulative buckets ending in +Inf == _count, and a _sum.
    hist = families.get("omniedge_uplink_batch_latency_seconds")
    if hist is not None:
        by_link = {}
        for s in hist.samples:
            link = s.labels.get("link")
            if link not in LINKS:
                problems.append(f"{s.name}: link {link!r} unknown")
                continue
            entry = by_link.setdefault(link, {"buckets": [], "sum": None, "count": None})
            if s.name.endswith("_bucket"):
                le = s.labels["le"]
                entry["buckets"].append((float("inf") if le == "+Inf" else float(le), s.value))
            elif s.name.endswith("_sum"):
                entry["sum"] = s.value
            elif s.name.endswith("_count"):
                entry["count"] = s.value
        if "mqtt" not in by_link:
            problems.append("histogram omniedge_uplink_batch_latency_seconds has no link=mqtt")
        for link, e in by_link.items():
            bounds = [b for b, _ in e["buckets"]]
            counts = [c for _, c in e["buckets"]]
            if not bounds or bounds[-1] != float("inf"):
                problems.append(f"latency histogram link={link}: no +Inf bucket")
            if bounds != sorted(bounds) or counts != sorted(counts):
                problems.append(f"latency histogram link={link}: buckets not cumulative")
            if e["sum"] is None or e["count"] is None:
                problems.append(f"latency histogram link={link}: _sum or _count missing")
            elif counts and counts[-1] != e["count"]:
                problems.append(f"latency histogram link={link}: +Inf {counts[-1]} != _count "
                                f"{e['count']}")
        acked = value(families, "omniedge_mqtt_batches_acked_total", {})
        got = by_link.get("mqtt", {}).get("count")
        if acked is not None and got is not None and got < acked:
            problems.append(f"latency histogram link=mqtt counts {got} batches, but "
                            f"{acked} were PUBACKed")

    for want in expect.get("values", []):
        got = value(families, want["name"], want.get("labels", {}))
        op = want.get("op", "==")
        ok = got is not None and {"==": got == want["value"], ">=": got >= want["value"],
                                  "<=": got <= want["value"]}[op]
        if not ok:
            problems.append(f"{want['name']}{want.get('labels', {})}: got {got}, expected "
                            f"{op} {want['value']}")
    return problems


def value(families, sample_name, labels):
    for f in families.values():
        for s in f.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                if set(s.labels) - {"node"} == set(labels) - {"node"}:
                    return s.value
    return None


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        text = f.read()
    with open(argv[2], encoding="utf-8") as f:
        expect = json.load(f)
    docs = None
    if len(argv) == 4:
        with open(argv[3], encoding="utf-8") as f:
            docs = f.read()
    try:
        problems = check(text, expect, docs)
    except ValueError as e:  # the parser refuses the page
        problems = [f"the Prometheus parser refused the page: {e}"]
    for p in problems:
        print("PROBLEM:", p)
    if not problems:
        print("metrics OK:", len(text.splitlines()), "lines")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
