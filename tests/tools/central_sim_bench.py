#!/usr/bin/python3
"""How fast central-sim stores MQTT batches: N gzip batches of PER ~480-byte events published
at once to a local mosquitto, timed until all are in its database. Not a ctest (no timing in
tests): run it by hand, `/usr/bin/python3 tests/tools/central_sim_bench.py [N PER]`."""

import gzip
import os
import shutil
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import central_sim_test as t  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    tmp = tempfile.mkdtemp(prefix="central-sim-bench-")
    broker = t.Broker(tmp)
    db = os.path.join(tmp, "central.db")
    serve = t.Serve(tmp, db, "--mqtt", broker.url)
    payloads, seq = [], 1
    for i in range(n):
        evs = [{"id": str(uuid.uuid4()), "type": "kiosk.view", "source": "kiosk:1",
                "store_id": "s1", "occurred_at": "2026-11-22T13:32:42.123Z",
                "received_at": "2026-11-22T13:32:42.131Z", "data": {"n": i, "pad": "x" * 300}}
               for _ in range(per)]
        payloads.append(gzip.compress(t.batch("s1", evs, "E", (seq, seq + per - 1)), 1))
        seq += per
    pub = t.Client(broker.url, "bench")
    start = time.monotonic()
    for data in payloads:
        pub.c.publish("omniedge/v1/t/s1/events", data, qos=1)
    t.wait_until(lambda: t.db_count(db, "SELECT count(*) FROM events") == n * per,
                 "every event stored", timeout=600)
    took = time.monotonic() - start
    print(f"{n * per} events in {n} batches stored in {took:.2f} s: {n * per / took:.0f} events/s")
    pub.close()
    serve.stop()
    broker.stop()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
