#!/usr/bin/env python3
"""Writes synthetic envelopes, one JSON file each, for training the buffer's zstd dictionary.

    tools/body_dict/samples.py DIR [COUNT]

The shapes are the ones the agent stores (contract.md section 3): kiosk, POS and beacon events with
the agent's own fields (UUIDv7 or POS ids, source, store_id, timestamps, hashed customer keys).
Field values are random; free text uses a vocabulary of its own, on purpose not the benchmark's
(bench/post100.lua), so that bench/run does not measure a dictionary trained on its own words.
The seed is fixed: the same command writes the same files. See tools/body_dict/train.
"""
import hashlib
import json
import os
import random
import sys
import time

WORDS = ("welcome loyalty offer weekly flyer recipe store hours pickup delivery locker gift card "
         "return policy warranty price match survey feedback spring summer autumn winter kids home "
         "garden outdoor kitchen sport travel office pets beauty health snacks drinks local fresh "
         "bakery deli florist pharmacy optical photo print kiosk help map floor level near open").split()


def ts(rng):
    t = 1764800000 + rng.randint(0, 10**7)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % rng.randint(0, 999)


def uuid7(rng):
    ms = (1764800000 + rng.randint(0, 10**7)) * 1000 + rng.randint(0, 999)
    return "%08x-%04x-7%03x-%04x-%012x" % (ms >> 16, ms & 0xFFFF, rng.getrandbits(12),
                                          0x8000 | rng.getrandbits(14), rng.getrandbits(48))


def sha(rng):
    return hashlib.sha256(str(rng.random()).encode()).hexdigest()


def customer(rng):
    c = {}
    if rng.random() < 0.5:
        c["loyalty_id"] = "4%010d" % rng.randint(0, 10**10)
    if rng.random() < 0.4:
        c["email_sha256"] = sha(rng)
    if rng.random() < 0.3:
        c["app_user_id"] = "%032x" % rng.getrandbits(128)
    return c


def base(rng, id_, type_, source):
    e = {"id": id_, "type": type_, "source": source, "store_id": "store-%03d" % rng.randint(1, 999),
         "occurred_at": ts(rng), "received_at": ts(rng)}
    c = customer(rng)
    if c:
        e["customer"] = c
    return e


def kiosk(rng):
    e = base(rng, uuid7(rng), rng.choice(["kiosk.view", "kiosk.tap", "kiosk.search", "kiosk.cart_add",
                                          "kiosk.session_start", "kiosk.session_end"]),
             "kiosk:k-%d" % rng.randint(1, 12))
    data = {"screen": rng.choice(WORDS), "session": "%016x" % rng.getrandbits(64)}
    if rng.random() < 0.6:
        data["sku"] = "SKU-%06d" % rng.randint(0, 999999)
    if rng.random() < 0.5:
        data["dwell_ms"] = rng.randint(0, 60000)
    if rng.random() < 0.6:
        data["query"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
    e["data"] = data
    return e


def pos(rng):
    ws = rng.randint(1, 40)
    e = base(rng, "pos:store-%03d:%d:2026-%02d-%02d:%06d" % (rng.randint(1, 999), ws, rng.randint(1, 12),
                                                        rng.randint(1, 28), rng.randint(1, 9999)),
             rng.choice(["pos.transaction", "pos.return", "pos.void"]), "pos:ws-%d" % ws)
    items = [{"sku": "%013d" % rng.randint(0, 10**13), "qty": rng.randint(1, 4),
              "price": round(rng.uniform(0.5, 60), 2),
              "desc": " ".join(rng.choice(WORDS).upper() for _ in range(rng.randint(1, 3)))}
             for _ in range(rng.randint(1, 8))]
    e["data"] = {"total": round(sum(i["price"] * i["qty"] for i in items), 2),
                 "currency": rng.choice(["USD", "EUR", "GBP"]),
                 "tender": rng.choice(["card", "cash", "mobile", "gift_card"]), "items": items,
                 "workstation": str(ws), "sequence": rng.randint(1, 9999),
                 "operator": str(rng.randint(100, 200)), "business_day": "2026-%02d-%02d" % (
                     rng.randint(1, 12), rng.randint(1, 28))}
    return e


def beacon(rng):
    e = base(rng, uuid7(rng), rng.choice(["beacon.seen", "beacon.zone_enter", "beacon.zone_exit"]),
             "beacon:gw-%d" % rng.randint(1, 8))
    u = "%032x" % rng.getrandbits(128)
    e["data"] = {"beacon": "ibeacon:%s-%s-%s-%s-%s:%d:%d" % (u[:8], u[8:12], u[12:16], u[16:20], u[20:],
                                                          rng.randint(1, 65535), rng.randint(1, 65535)),
                 "rssi": -rng.randint(30, 99), "zone": rng.choice(WORDS), "gateway": "gw-%d" % rng.randint(1, 8),
                 "dwell_s": rng.randint(0, 3600)}
    return e


def main():
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rng = random.Random(18)
    os.makedirs(out, exist_ok=True)
    for i in range(count):
        e = rng.choice([kiosk, pos, beacon])(rng)
        with open(os.path.join(out, "%05d.json" % i), "w") as f:
            f.write(json.dumps(e, separators=(",", ":")))


if __name__ == "__main__":
    main()
