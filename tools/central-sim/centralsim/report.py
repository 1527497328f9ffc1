"""`report` (per store: counts, uplinks, last status, gaps) and `verify` (the history checker's
centre side: lost, duplicated, reordered against the ids producers were told "accepted")."""

import bisect
import json
import os
import sys
from collections import defaultdict
from typing import Any, Dict, List, Optional

from . import ranges as rg
from .db import Database


def _store_key(tenant, store):
    return f"{tenant}/{store}"


def gaps(database: Database, tenant: str, store: str) -> Dict[str, Any]:
    """The gap check of one store (issue 14 point 7): per epoch, the seq ranges covered by
    batches, the ranges the agent reported dropped (by reason), and the ranges missing (neither).

    A batch covers [seq_first, seq_last] (or exactly its seq_ranges when it lists them): the
    agent promises every still-pending event of that range is in it, and that an absent seq was
    delivered before by another batch. A "sparse" batch (fewer events than its span, without
    seq_ranges) is counted, because for its holes the centre relies on that promise."""
    batches = database.query(
        "SELECT epoch, seq_first, seq_last, seq_ranges, epoch_start_seq, count FROM batches "
        "WHERE tenant = ? AND store_id = ?", (tenant, store))
    drops = database.query(
        "SELECT epoch, first, last, reason FROM drops WHERE tenant = ? AND store_id = ?",
        (tenant, store))
    without = sum(1 for b in batches if b[0] is None)
    epochs: Dict[str, Dict[str, Any]] = defaultdict(
        lambda: {"covered": [], "dropped": defaultdict(list), "start": None, "batches": 0,
                 "sparse": 0})
    for epoch, first, last, seq_ranges, start, count in batches:
        if epoch is None:
            continue
        e = epochs[epoch]
        e["batches"] += 1
        if seq_ranges:
            e["covered"].extend(json.loads(seq_ranges))
        else:
            e["covered"].append((first, last))
            if count < last - first + 1:
                e["sparse"] += 1
        e["start"] = start if e["start"] is None else min(e["start"], start)
    for epoch, first, last, reason in drops:
        epochs[epoch]["dropped"][reason].append((first, last))
    told = _agent_seq_last(database, tenant, store)
    if told:
        epochs[told[0]]  # an epoch the agent speaks of, even before its first batch
    out_epochs = []
    for name, e in sorted(epochs.items()):
        covered = rg.merge(e["covered"])
        dropped_all = [r for rs in e["dropped"].values() for r in rs]
        everything = rg.merge(covered + dropped_all)
        start = e["start"] or 1
        high = max((r[1] for r in everything), default=0)
        missing = rg.subtract((start, high), everything) if high >= start else []
        # The tail after the highest seq seen is visible only through the agent's status:
        # with nothing pending there, every seq up to its seq_last must have arrived.
        unconfirmed = []
        agent_last = pending = None
        if told and told[0] == name:
            _, agent_last, pending = told
            if agent_last > high:
                tail = (max(high + 1, start), agent_last)
                if pending == 0:
                    missing = rg.merge(missing + [tail])
                else:
                    unconfirmed = [tail]
            high = max(high, agent_last)
        dropped = [{"reason": reason, "ranges": [list(r) for r in rg.merge(rs)],
                    "events": rg.size(rs)} for reason, rs in sorted(e["dropped"].items())]
        out_epochs.append({
            "epoch": name, "batches": e["batches"], "first_seq": start, "highest_seq": high,
            "covered": [list(r) for r in covered], "covered_seqs": rg.size(covered),
            "dropped": dropped, "dropped_seqs": rg.size(dropped_all),
            "missing": [list(r) for r in missing], "missing_seqs": rg.size(missing),
            "agent_seq_last": agent_last, "agent_pending": pending,
            "unconfirmed": [list(r) for r in unconfirmed],
            "sparse_batches": e["sparse"]})
    missing_total = sum(e["missing_seqs"] for e in out_epochs)
    unconfirmed_total = sum(rg.size(e["unconfirmed"]) for e in out_epochs)
    if not batches and not missing_total:
        verdict, note = "no-batches", "no batch received from this store"
    elif not out_epochs:
        verdict, note = "not-checkable", ("the batches carry no epoch/seq_first/seq_last, so "
                                          "the gap check is not possible for them")
    elif missing_total:
        verdict, note = "gaps", f"{missing_total} seqs neither received nor reported dropped"
    else:
        verdict, note = "complete", "every seq is either received or reported dropped"
        if without:
            verdict = "partial"
            note += f"; {without} batches without epoch/seq ranges could not be checked"
    if unconfirmed_total:
        note += (f"; {unconfirmed_total} later seqs not received yet (the agent's last status "
                 "still had events pending)")
    return {"verdict": verdict, "note": note, "batches_without_seq": without,
            "missing_seqs": missing_total, "epochs": out_epochs}


def _agent_seq_last(database: Database, tenant: str, store: str):
    """(epoch, seq_last, queue.pending) from the store's latest status that carries them:
    `{"epoch": "...", "seq_last": N, "queue": {"pending": P, ...}, ...}`; None otherwise."""
    rows = database.query(
        "SELECT payload FROM messages WHERE kind = 'status' AND tenant = ? AND store_id = ? "
        "ORDER BY n DESC LIMIT 1000", (tenant, store))
    for (text,) in rows:
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        epoch, last = doc.get("epoch"), doc.get("seq_last")
        if not isinstance(epoch, str) or not epoch or not isinstance(last, int) or last < 0:
            continue
        queue = doc.get("queue")
        pending = queue.get("pending") if isinstance(queue, dict) else None
        return epoch, last, pending if isinstance(pending, int) else None
    return None


def collect(database: Database, store_filter: Optional[str] = None) -> List[Dict[str, Any]]:
    stores = set()
    for t, s in database.query("SELECT DISTINCT tenant, store_id FROM batches UNION "
                               "SELECT DISTINCT tenant, store_id FROM messages UNION "
                               "SELECT DISTINCT tenant, store_id FROM rejects"):
        stores.add((t, s))
    out = []
    for tenant, store in sorted(stores, key=lambda x: (x[0] or "", x[1] or "")):
        if store_filter and store != store_filter and _store_key(tenant, store) != store_filter:
            continue
        unique, total = database.query(
            "SELECT count(*), coalesce(sum(received), 0) FROM events WHERE tenant = ? AND "
            "store_id = ?", (tenant, store))[0]
        # Copies counted by the batches that carried them (a duplicate whose first copy came
        # from another store is still one this store sent).
        recv = database.query("SELECT coalesce(sum(count), 0), coalesce(sum(new), 0) FROM "
                              "batches WHERE tenant = ? AND store_id = ?", (tenant, store))[0]
        uplinks = {}
        for via, n, events, new in database.query(
                "SELECT via, count(*), coalesce(sum(count),0), coalesce(sum(new),0) FROM batches "
                "WHERE tenant = ? AND store_id = ? GROUP BY via", (tenant, store)):
            uplinks[via] = {"batches": n, "events": events, "new": new}
        last = {}
        for kind in ("status", "config_reported", "cmd_result"):
            row = database.query(
                "SELECT payload, received_ms, retained FROM messages WHERE kind = ? AND "
                "tenant = ? AND store_id = ? ORDER BY n DESC LIMIT 1", (kind, tenant, store))
            if row:
                try:
                    doc = json.loads(row[0][0]) if row[0][0] else None
                except ValueError:
                    doc = row[0][0]
                last[kind] = {"payload": doc, "received_ms": row[0][1],
                              "retained": bool(row[0][2])}
        rejects = database.query(
            "SELECT field, message FROM rejects WHERE tenant = ? AND store_id = ? ORDER BY n",
            (tenant, store))
        types = dict(database.query(
            "SELECT type, count(*) FROM events WHERE tenant = ? AND store_id = ? GROUP BY type",
            (tenant, store)))
        out.append({
            "tenant": tenant, "store_id": store,
            "events": {"received": recv[0], "unique": unique, "duplicates": recv[0] - recv[1],
                       "copies_of_unique": total},
            "types": types, "uplinks": uplinks,
            "status": last.get("status"), "config_reported": last.get("config_reported"),
            "last_cmd_result": last.get("cmd_result"),
            "commands_answered": database.query(
                "SELECT count(*) FROM messages WHERE kind = 'cmd_result' AND tenant = ? AND "
                "store_id = ?", (tenant, store))[0][0],
            "rejects": {"count": len(rejects),
                        "last": [{"field": f, "message": m} for f, m in rejects[-5:]]},
            "gaps": gaps(database, tenant, store)})
    return out


# Ranges a text line lists before it says how many more there are (--json has them all).
_SHOWN = 20


def _print_store(s: Dict[str, Any], w) -> None:
    ev = s["events"]
    w(f"store {_store_key(s['tenant'], s['store_id'])}: {ev['received']} events received, "
      f"{ev['unique']} unique, {ev['duplicates']} duplicates")
    up = ", ".join(f"{via} {u['batches']} batches ({u['events']} events, {u['new']} new)"
                   for via, u in sorted(s["uplinks"].items())) or "none"
    w(f"  batches: {up}")
    st = s["status"]
    if st:
        p = st["payload"] if isinstance(st["payload"], dict) else {}
        w(f"  status: {p.get('state', '?')}"
          + (f" (version {p['version']})" if "version" in p else "")
          + (f", config_version {p['config_version']}" if "config_version" in p else ""))
    if s["config_reported"]:
        w(f"  config reported: {json.dumps(s['config_reported']['payload'])}")
    if s["commands_answered"]:
        w(f"  commands answered: {s['commands_answered']}")
    if s["rejects"]["count"]:
        w(f"  rejected: {s['rejects']['count']} (last: "
          + "; ".join(f"{r['field'] or 'payload'}: {r['message']}" for r in s["rejects"]["last"])
          + ")")
    g = s["gaps"]
    w(f"  gaps: {g['verdict']}: {g['note']}")
    for e in g["epochs"]:
        w(f"    epoch {e['epoch']}: seqs {e['first_seq']}-{e['highest_seq']}, "
          f"{e['batches']} batches, covered {rg.text(e['covered'], _SHOWN)}")
        for d in e["dropped"]:
            w(f"      dropped {rg.text(d['ranges'], _SHOWN)} ({d['events']} events): {d['reason']}")
        w(f"      missing {rg.text(e['missing'], _SHOWN)}"
          + (f" ({e['missing_seqs']} events LOST)" if e["missing_seqs"] else ""))
        if e["unconfirmed"]:
            w(f"      not received yet {rg.text(e['unconfirmed'], _SHOWN)} "
              f"(the agent's last status says "
              f"{e['agent_pending']} events pending)")
        if e["sparse_batches"]:
            w(f"      {e['sparse_batches']} batches had holes the agent says were delivered "
              "earlier (no seq_ranges to check them)")


def run_report(args) -> int:
    database = Database(args.db, read_only=True)
    stores = collect(database, args.store)
    if args.json:
        print(json.dumps({"stores": stores}, indent=2))
    else:
        if not stores:
            print("no store has sent anything yet")
        for s in stores:
            _print_store(s, print)
    return 0

# --- verify -----------------------------------------------------------------------------------

# Events that carry a key of their own besides the id: what a producer that never sees ids (a
# POS till, a beacon gateway) can check, and what catches one thing arriving under several ids.
#   pos.transaction / pos.control  ->  pos:<workstation>:<sequence>
#   beacon.enter                   ->  beacon:<identity>
#   an event the load generator posted (data.lg, data.n)  ->  kiosk:<lg>:<n>
_KEY_SQL = (
    "SELECT id, received, arrival, type, json_extract(body, '$.data.workstation'), "
    "json_extract(body, '$.data.sequence'), json_extract(body, '$.data.identity'), "
    "json_extract(body, '$.data.lg'), json_extract(body, '$.data.n') FROM events "
    "WHERE type IN ('pos.transaction', 'pos.control', 'beacon.enter') "
    "OR (type LIKE 'kiosk.%' AND json_extract(body, '$.data.lg') IS NOT NULL)")


def _event_key(etype, workstation, sequence, identity, lg, n) -> Optional[str]:
    if etype in ("pos.transaction", "pos.control"):
        if workstation is not None and sequence is not None:
            return f"pos:{workstation}:{sequence}"
    elif etype == "beacon.enter":
        if identity is not None:
            return f"beacon:{identity}"
    elif lg is not None and n is not None:
        return f"kiosk:{lg}:{n}"
    return None


def _read_accepted(path: str) -> List[Dict[str, Any]]:
    """One JSON object per line with `id` or `key` (optionally `source`, `n`), or a kiosk API
    answer `{"ids": [...]}` (each id in it accepted; `source`/`n` of the line apply to the
    first, the next ids counting up)."""
    out = []
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not JSON: {e}") from None
            if isinstance(doc, dict) and isinstance(doc.get("ids"), list):
                for i, eid in enumerate(doc["ids"]):
                    out.append({"id": eid, "source": doc.get("source"),
                                "n": doc["n"] + i if isinstance(doc.get("n"), int) else None})
                continue
            if isinstance(doc, dict) and isinstance(doc.get("key"), str) and doc["key"]:
                n = doc.get("n")
                out.append({"key": doc["key"], "source": doc.get("source"),
                            "n": n if isinstance(n, (int, float)) else None})
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'id' or "
                                 "'key', or an 'ids' array")
            n = doc.get("n")
            out.append({"id": doc["id"], "source": doc.get("source"),
                        "n": n if isinstance(n, (int, float)) else None})
    return out


def _reordered(by_source: Dict[str, list]) -> Dict[str, Any]:
    """Per source, (n, arrival, name) items -> the fewest events whose removal leaves the rest
    arriving in n order (len - longest increasing run of arrivals: one late event counts 1,
    not 99), and the first example."""
    reordered = {}
    for source, items in sorted(by_source.items()):
        items.sort()
        tails = []
        highest, first = None, None
        for n, arrival, name in items:
            i = bisect.bisect_left(tails, arrival)
            if i == len(tails):
                tails.append(arrival)
            else:
                tails[i] = arrival
            if highest is not None and arrival < highest[0] and first is None:
                first = {"id": name, "n": n, "arrived_before_n": highest[1]}
            if highest is None or arrival > highest[0]:
                highest = (arrival, n)
        if first is not None:
            reordered[source] = {"events": len(items) - len(tails), "first": first}
    return {"events": sum(r["events"] for r in reordered.values()), "sources": reordered}


def _kind(key: str) -> str:
    return key.split(":", 1)[0]


def verify(database: Database, accepted: List[Dict[str, Any]], store: Optional[str],
           show: int) -> Dict[str, Any]:
    def clip(items):
        return items[:show] if show >= 0 else items

    ids = list(dict.fromkeys(a["id"] for a in accepted if "id" in a))
    keys = list(dict.fromkeys(a["key"] for a in accepted if "key" in a))
    found: Dict[str, tuple] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for row in database.query(
                "SELECT id, received, arrival FROM events WHERE id IN (%s)" % ",".join(
                    "?" * len(chunk)), chunk):
            found[row[0]] = row[1:]
    lost = [i for i in ids if i not in found]
    dup = [(i, found[i][0]) for i in ids if i in found and found[i][0] > 1]

    # Every keyed event the centre holds: key -> [(id, received, arrival)], and id -> key.
    by_key: Dict[str, list] = defaultdict(list)
    key_of: Dict[str, str] = {}
    for eid, received, arrival, etype, ws, seq, identity, lg, n in database.query(_KEY_SQL):
        k = _event_key(etype, ws, seq, identity, lg, n)
        if k is not None:
            by_key[k].append((eid, received, arrival))
            key_of[eid] = k

    by_source = defaultdict(list)
    for a in accepted:
        if a["n"] is None:
            continue
        if "id" in a and a["id"] in found:
            by_source[a["source"] or ""].append((a["n"], found[a["id"]][1], a["id"]))
        elif "key" in a and a["key"] in by_key:
            arrival = min(x[2] for x in by_key[a["key"]])
            by_source[a["source"] or ""].append((a["n"], arrival, a["key"]))

    # Keys: lost, copies of one id (before de-dup), several ids for one key (after de-dup).
    key_lost = [k for k in keys if k not in by_key]
    key_dup_before = [(k, sum(r - 1 for _, r, _ in by_key[k])) for k in keys if k in by_key]
    key_dup_before = [(k, c) for k, c in key_dup_before if c > 0]
    # After de-dup by id, for every accepted thing with a key (accepted keys, and accepted ids
    # whose event carries one): one key under several ids is one thing delivered twice.
    checked = set(k for k in keys if k in by_key)
    checked.update(key_of[i] for i in ids if i in key_of)
    after = defaultdict(list)
    for k in sorted(checked):
        if len(by_key[k]) > 1:
            after[_kind(k)].append({"key": k, "ids": [x[0] for x in by_key[k]]})
    by_kind = defaultdict(lambda: {"accepted": 0, "lost": 0})
    for k in keys:
        by_kind[_kind(k)]["accepted"] += 1
    for k in key_lost:
        by_kind[_kind(k)]["lost"] += 1

    stores = collect(database, store)
    gap_stores = [{"store": _store_key(s["tenant"], s["store_id"]), **s["gaps"]} for s in stores]
    missing = sum(g["missing_seqs"] for g in gap_stores)
    dropped = sum(e["dropped_seqs"] for g in gap_stores for e in g["epochs"])
    return {
        "accepted": len(ids), "received": len(ids) - len(lost),
        "lost": len(lost), "lost_ids": clip(lost),
        "duplicated": len(dup), "duplicate_copies": sum(c - 1 for _, c in dup),
        "duplicated_ids": clip([i for i, _ in dup]),
        "keys": {
            "accepted": len(keys), "received": len(keys) - len(key_lost),
            "lost": len(key_lost), "lost_keys": clip(key_lost),
            "by_kind": dict(by_kind),
            "duplicated_before_dedup": len(key_dup_before),
            "duplicate_copies_before_dedup": sum(c for _, c in key_dup_before),
            "duplicated_after_dedup": sum(len(v) for v in after.values()),
            "extra_ids_after_dedup": sum(len(x["ids"]) - 1 for v in after.values() for x in v),
            "after_dedup_by_kind": {kind: {"keys": len(v),
                                           "extra_ids": sum(len(x["ids"]) - 1 for x in v),
                                           "examples": clip(v)}
                                    for kind, v in sorted(after.items())},
        },
        "reordered": _reordered(by_source),
        "agent_reported_dropped_seqs": dropped, "missing_seqs": missing,
        "gaps": gap_stores,
        "ok": not lost and not key_lost and not missing}


def verdict_lines(r: Dict[str, Any]) -> List[str]:
    """The verdict as text (also what every fault test prints)."""
    out = [f"accepted {r['accepted']}, received {r['received']}, lost {r['lost']}, "
           f"duplicated {r['duplicated']} ({r['duplicate_copies']} extra copies), "
           f"reordered {r['reordered']['events']}"]
    for i in r["lost_ids"][:20]:
        out.append(f"  lost: {i}")
    k = r["keys"]
    if k["accepted"] or k["duplicated_after_dedup"]:
        kinds = ", ".join(f"{kind} {v['accepted']}" for kind, v in sorted(k["by_kind"].items()))
        out.append(f"keys: accepted {k['accepted']}" + (f" ({kinds})" if kinds else "")
                   + f", received {k['received']}, lost {k['lost']}, duplicated before de-dup "
                   f"by id {k['duplicated_before_dedup']} ({k['duplicate_copies_before_dedup']} "
                   f"extra copies)")
        for key in k["lost_keys"][:20]:
            out.append(f"  lost: {key}")
    after = k["after_dedup_by_kind"]
    out.append("duplicated after de-dup by id (one key under several ids): "
               + (", ".join(f"{kind} {v['keys']} ({v['extra_ids']} extra ids)"
                            for kind, v in after.items()) if after else "0"))
    for kind, v in after.items():
        for x in v["examples"][:3]:
            out.append(f"  {x['key']}: ids {', '.join(x['ids'])}")
    for source, d in r["reordered"]["sources"].items():
        first = d["first"]
        out.append(f"  reordered in source '{source}': {d['events']} events (first: "
                   f"n={first['n']} arrived before n={first['arrived_before_n']})")
    for g in r["gaps"]:
        line = f"  gaps of {g['store']}: {g['verdict']}"
        for e in g["epochs"]:
            if e["missing"]:
                line += f"; epoch {e['epoch']} missing {rg.text(e['missing'], _SHOWN)}"
            for d in e["dropped"]:
                line += (f"; epoch {e['epoch']} dropped {rg.text(d['ranges'], _SHOWN)} "
                         f"({d['reason']})")
        out.append(line)
    out.append("verdict: " + (
        "OK: nothing lost" if r["ok"] else
        f"LOST: {r['lost']} accepted ids and {k['lost']} accepted keys never arrived, "
        f"{r['missing_seqs']} seqs missing"))
    return out


def run_verify(args) -> int:
    try:
        accepted = _read_accepted(args.accepted)
    except (OSError, ValueError) as e:
        print(f"central-sim verify: {e}", file=sys.stderr)
        return 2
    database = Database(args.db, read_only=True)
    json_out = getattr(args, "json_out", None)
    r = verify(database, accepted, args.store, -1 if (args.json or json_out) else args.show)
    if json_out:
        tmp = json_out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
        os.replace(tmp, json_out)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print("\n".join(verdict_lines(r)))
    return 0 if r["ok"] else 1
