#!/usr/bin/python3
"""Tests of tools/central-sim against a real mosquitto, real TLS, the openssl CLI and (for the
end-to-end case) the real omniedge binary. Run one class per ctest:

    /usr/bin/python3 tests/tools/central_sim_test.py MqttIngest

Every wait has a deadline; ports are chosen at run time; every child process dies with us.
"""

import base64
import ctypes
import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

import paho.mqtt.client as paho

try:
    import zstandard
except ImportError:  # the test then covers gzip and plain only, and says so
    zstandard = None

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIM = os.path.join(ROOT, "tools", "central-sim", "central-sim")
MOSQUITTO = "/usr/sbin/mosquitto"
DEADLINE = 20.0  # seconds for any single condition; the suite stays well under a minute


def _die_with_parent():
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def sim(*args, stdin: bytes = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([SIM, *args], input=stdin, capture_output=True, timeout=timeout,
                          preexec_fn=_die_with_parent)


def sim_json(*args, **kw):
    r = sim(*args, **kw)
    if r.returncode not in (0, 1):
        raise AssertionError(f"central-sim {' '.join(args)} exited {r.returncode}: "
                             f"{r.stderr.decode()}")
    return r.returncode, json.loads(r.stdout)


class Broker:
    """mosquitto configured like tests/support/broker.cpp: persistent, nothing dropped."""

    def __init__(self, tmp: str, pki: str = None):
        self.dir = os.path.join(tmp, "broker")
        os.makedirs(self.dir)
        self.port = free_port()
        self.tls = pki is not None
        conf = [f"listener {self.port} 127.0.0.1"]
        if pki:
            conf += [f"cafile {pki}/ca.crt", f"certfile {pki}/server.crt",
                     f"keyfile {pki}/server.key", "require_certificate true",
                     f"crlfile {pki}/crl.pem"]
        conf += ["allow_anonymous true", "persistence true",
                f"persistence_location {self.dir}/", "autosave_interval 1",
                "autosave_on_changes true", "max_queued_messages 0", "max_inflight_messages 0",
                f"log_dest file {self.dir}/mosquitto.log"]
        if os.geteuid() == 0:
            conf.append("user root")
        with open(os.path.join(self.dir, "mosquitto.conf"), "w") as f:
            f.write("\n".join(conf) + "\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", os.path.join(self.dir, "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        wait_until(self._listening, "mosquitto to listen")

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    @property
    def url(self):
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def log(self):
        try:
            with open(os.path.join(self.dir, "mosquitto.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Serve:
    """`central-sim serve` as a child process; ready once its ready file exists."""

    def __init__(self, tmp: str, db: str, *args: str):
        self.tmp, self.db, self.args = tmp, db, args
        self.ready_file = os.path.join(tmp, f"ready-{uuid.uuid4().hex[:6]}.json")
        self.log_path = os.path.join(tmp, "serve.log")
        self.proc = None
        self.start()

    def start(self):
        if os.path.exists(self.ready_file):
            os.unlink(self.ready_file)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SIM, "--log-level", "debug", "serve", "--db", self.db, "--ready-file",
                 self.ready_file, *self.args], stdout=log, stderr=log,
                preexec_fn=_die_with_parent)
        wait_until(self._ready, "central-sim serve to be ready")
        with open(self.ready_file) as f:
            self.info = json.load(f)

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"central-sim serve exited {self.proc.returncode}:\n{self.log()}")
        return os.path.exists(self.ready_file)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("central-sim serve did not stop on SIGTERM")
            if rc != 0:
                raise AssertionError(f"central-sim serve exited {rc}:\n{self.log()}")


def db_count(db: str, sql: str, args=()) -> int:
    if not os.path.exists(db):
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


class Client:
    """A paho client for the test's own publishing and listening (QoS 1, acknowledged)."""

    def __init__(self, url: str, name: str):
        host, port = url.split("//")[1].split(":")
        self.messages = []
        self.lock = threading.Lock()
        self.c = paho.Client(client_id=f"test-{name}-{uuid.uuid4().hex[:8]}", clean_session=True)
        self.c.on_message = self._on_message
        connected = threading.Event()
        self.c.on_connect = lambda *a: connected.set()
        self.c.connect(host, int(port), 30)
        self.c.loop_start()
        assert connected.wait(DEADLINE), "test client could not connect"

    def _on_message(self, c, u, m):
        with self.lock:
            self.messages.append(m)

    def subscribe(self, topic):
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, 1)
        assert done.wait(DEADLINE), f"no SUBACK for {topic}"

    def publish(self, topic, data, retain=False):
        info = self.c.publish(topic, data, qos=1, retain=retain)
        info.wait_for_publish(DEADLINE)
        assert info.is_published(), f"no PUBACK for {topic}"

    def wait_message(self, topic, predicate=lambda m: True):
        def find():
            with self.lock:
                for m in self.messages:
                    if m.topic == topic and predicate(m):
                        return m
            return None
        return wait_until(find, f"a message on {topic}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def event(n: int, type_: str = "kiosk.view", source: str = "kiosk:1", **data) -> dict:
    return {"id": str(uuid.uuid4()), "type": type_, "source": source, "store_id": "s1",
            "occurred_at": "2026-11-22T13:32:42.123Z", "data": {"n": n, **data}}


def batch(store: str, events, epoch=None, seq=None, **extra) -> bytes:
    doc = {"batch_id": str(uuid.uuid4()), "store_id": store, "agent_version": "test",
           "count": len(events), "events": events}
    if epoch is not None:
        doc.update(epoch=epoch, seq_first=seq[0], seq_last=seq[1])
    doc.update(extra)
    return json.dumps(doc).encode()


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="central-sim-test-")
        self.cleanups = []

    def tearDown(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # keep tearing down; the test already reported its failure
                print(f"teardown: {e}", file=sys.stderr)
        if getattr(self._outcome, "success", True) or not os.environ.get("CENTRAL_SIM_KEEP"):
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"kept {self.tmp} for inspection", file=sys.stderr)

    def path(self, name):
        return os.path.join(self.tmp, name)


# --- MQTT ingest, de-duplication, gaps, verify ------------------------------------------------

class MqttIngest(TempDirTest):
    def test_batches_are_deduplicated_and_the_exact_missing_range_is_reported(self):
        broker = Broker(self.tmp)
        self.cleanups.append(broker.stop)
        db = self.path("central.db")
        serve = Serve(self.tmp, db, "--mqtt", broker.url)
        self.cleanups.append(serve.stop)
        pub = Client(broker.url, "pub")
        self.cleanups.append(pub.close)
        topic = "omniedge/v1/t1/s1/events"

        evs = [event(n) for n in range(1, 31)]  # seqs 1..30 of epoch E1
        sent = 0

        def send(data):
            nonlocal sent
            pub.publish(topic, data)
            sent += 1

        send(gzip.compress(batch("s1", evs[0:10], "E1", (1, 10))))        # gzip
        b = [evs[11], evs[10]] + evs[12:20]                                # 12 before 11
        send(batch("s1", b, "E1", (11, 20)))                               # plain JSON
        send(gzip.compress(batch("s1", evs[0:10], "E1", (1, 10))))        # resent: 10 dups
        tail = batch("s1", evs[25:30], "E1", (26, 30))                     # 21-25 never sent
        send(zstandard.ZstdCompressor().compress(tail) if zstandard else tail)
        drop = event(0, "agent.data_dropped", "agent", epoch="E1", ranges=[[21, 22]],
                     reason="buffer full: low-priority events evicted oldest-first")
        send(gzip.compress(batch("s1", [drop], "E1", (31, 31))))
        send(b"this is not a batch")
        today = [event(n) for n in range(3)]                               # no epoch/seq
        pub.publish("omniedge/v1/t1/s2/events", gzip.compress(batch("s2", today)))
        sent_s2 = 1
        pub.publish("omniedge/v1/t1/s1/status",
                    json.dumps({"state": "online", "version": "9.9", "config_version": 4}),
                    retain=True)
        wait_until(lambda: db_count(db, "SELECT count(*) FROM batches") == sent - 1 + sent_s2
                   and db_count(db, "SELECT count(*) FROM messages") == 1
                   and db_count(db, "SELECT count(*) FROM rejects") >= 1,
                   "every batch, the status and the reject to be stored")

        # central-sim's own restart loses nothing: its session is persistent.
        serve.stop()
        late = [event(n) for n in range(32, 36)]
        send(batch("s1", late, "E1", (32, 35)))
        serve.start()
        wait_until(lambda: db_count(db, "SELECT count(*) FROM events WHERE tenant='t1' AND "
                                        "store_id='s1'") == 20 + 5 + 1 + 4,
                   "the batch published while central-sim was down")

        rc, rep = sim_json("report", "--db", db, "--json")
        self.assertEqual(rc, 0)
        stores = {s["store_id"]: s for s in rep["stores"]}
        s1 = stores["s1"]
        self.assertEqual(s1["tenant"], "t1")
        self.assertEqual(s1["events"], {"received": 40, "unique": 30, "duplicates": 10,
                                        "copies_of_unique": 40})
        self.assertEqual(s1["uplinks"]["mqtt"]["batches"], 6)
        self.assertEqual(s1["status"]["payload"]["config_version"], 4)
        self.assertTrue(s1["status"]["retained"])
        self.assertEqual(s1["rejects"]["count"], 1)
        self.assertIn("not JSON", s1["rejects"]["last"][0]["message"])
        g = s1["gaps"]
        self.assertEqual(g["verdict"], "gaps")
        self.assertEqual(len(g["epochs"]), 1)
        e1 = g["epochs"][0]
        self.assertEqual(e1["epoch"], "E1")
        self.assertEqual(e1["covered"], [[1, 20], [26, 35]])
        self.assertEqual(e1["dropped"], [{"reason": "buffer full: low-priority events evicted "
                                          "oldest-first", "ranges": [[21, 22]], "events": 2}])
        self.assertEqual(e1["missing"], [[23, 25]])
        self.assertEqual(e1["missing_seqs"], 3)
        s2 = stores["s2"]
        self.assertEqual(s2["events"]["unique"], 3)
        self.assertEqual(s2["gaps"]["verdict"], "not-checkable")

        text = sim("report", "--db", db).stdout.decode()
        self.assertIn("store t1/s1: 40 events received, 30 unique, 10 duplicates", text)
        self.assertIn("missing 23-25 (3 events LOST)", text)
        self.assertIn("dropped 21-22 (2 events): buffer full", text)
        self.assertIn("not possible", text)

        # verify: one accepted id never arrived, 10 duplicated, 11 arrived after 12.
        never = str(uuid.uuid4())
        accepted = self.path("accepted.jsonl")
        with open(accepted, "w") as f:
            for n, e in enumerate(evs[:20] + evs[25:30], 1):
                f.write(json.dumps({"id": e["id"], "source": "kiosk:1", "n": n}) + "\n")
            f.write(json.dumps({"id": never, "source": "kiosk:1", "n": 99}) + "\n")
        r = sim("verify", "--db", db, "--accepted", accepted, "--json")
        self.assertEqual(r.returncode, 1, r.stderr)
        v = json.loads(r.stdout)
        self.assertEqual(v["accepted"], 26)
        self.assertEqual(v["lost"], 1)
        self.assertEqual(v["lost_ids"], [never])
        self.assertEqual(v["duplicated"], 10)
        self.assertEqual(v["duplicate_copies"], 10)
        self.assertEqual(v["reordered"]["events"], 1)
        self.assertEqual(v["reordered"]["sources"]["kiosk:1"]["first"],
                         {"id": evs[11]["id"], "n": 12, "arrived_before_n": 11})
        self.assertEqual(v["missing_seqs"], 3)
        text = sim("verify", "--db", db, "--accepted", accepted).stdout.decode()
        self.assertIn(f"lost: {never}", text)
        self.assertIn("epoch E1 missing 23-25", text)

        # The tail after the last batch shows only through the status: pending there, it is
        # "not received yet"; once the agent says nothing is pending, it is missing.
        def status(pending):
            before = db_count(db, "SELECT count(*) FROM messages")
            pub.publish("omniedge/v1/t1/s1/status", json.dumps(
                {"state": "online", "epoch": "E1", "seq_last": 38,
                 "queue": {"pending": pending}}), retain=True)
            wait_until(lambda: db_count(db, "SELECT count(*) FROM messages") > before,
                       "the status to be stored")
            return sim_json("report", "--db", db, "--json", "--store", "s1")[1]["stores"][0]
        e1 = status(3)["gaps"]["epochs"][0]
        self.assertEqual((e1["missing"], e1["unconfirmed"]), ([[23, 25]], [[36, 38]]))
        e1 = status(0)["gaps"]["epochs"][0]
        self.assertEqual((e1["missing"], e1["unconfirmed"]), ([[23, 25], [36, 38]], []))

        # Nothing lost for s2 (its accepted ids all arrived, no seq gap to check): exit 0.
        ok = self.path("ok.jsonl")
        with open(ok, "w") as f:
            f.write(json.dumps({"accepted": 3, "ids": [e["id"] for e in today]}) + "\n")
        r = sim("verify", "--db", db, "--accepted", ok, "--store", "t1/s2")
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        self.assertIn("verdict: OK: nothing lost", r.stdout.decode())


# --- HTTPS: batches, failure injection, certificates, profile pages ---------------------------

class HttpsEndpoints(TempDirTest):
    def setUp(self):
        super().setUp()
        self.pki = self.path("pki")
        r = sim("certs", "--out", self.pki, "--stores", "store-1,store-2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.db = self.path("central.db")
        self.fail_file = self.path("fail.json")
        self.port_file = self.path("port")
        self.serve = Serve(self.tmp, self.db, "--https-listen", "127.0.0.1:0", "--cert-dir",
                           self.pki, "--mtls", "--check-store-cn", "--fail-file",
                           self.fail_file, "--port-file", self.port_file)
        self.cleanups.append(self.serve.stop)
        with open(self.port_file) as f:
            self.port = int(f.read())

    def ctx(self, client="client-store-1", ca="ca.crt"):
        ctx = ssl.create_default_context(cafile=os.path.join(self.pki, ca))
        if client:
            ctx.load_cert_chain(os.path.join(self.pki, f"{client}.crt"),
                                os.path.join(self.pki, f"{client}.key"))
        return ctx

    def request(self, method, path, body=None, client="client-store-1", timeout=10.0,
                headers=None, conn=None, ca="ca.crt"):
        c = conn or http.client.HTTPSConnection("127.0.0.1", self.port,
                                                context=self.ctx(client, ca), timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            res = c.getresponse()
            data = res.read()
            return res.status, (json.loads(data) if data else None), res
        finally:
            if conn is None:
                c.close()

    def post(self, events, store="store-1", **kw):
        body = gzip.compress(batch(store, events))
        return self.request("POST", f"/v1/stores/{store}/events:batch", body,
                            headers={"Content-Encoding": "gzip",
                                     "Content-Type": "application/json"}, **kw)

    def fail(self, *args):
        r = sim("fail", "--fail-file", self.fail_file, *args)
        self.assertEqual(r.returncode, 0, r.stderr)

    def stats(self):
        return self.request("GET", "/-/stats")[1]

    def test_batches_are_stored_once_and_failures_are_injected_on_demand(self):
        evs = [event(n) for n in range(10)]
        status, doc, _ = self.post(evs[:5])
        self.assertEqual((status, doc["accepted"], doc["duplicates"]), (200, 5, 0))
        status, doc, _ = self.post(evs[:5])
        self.assertEqual((status, doc["accepted"], doc["duplicates"]), (409, 0, 5))
        status, doc, _ = self.post(evs[3:7])
        self.assertEqual((status, doc["accepted"], doc["duplicates"]), (200, 2, 2))

        # 503 twice (with Retry-After), then the batch goes through, stored once.
        self.fail("--status", "503", "--count", "2", "--retry-after", "1",
                  "--match", "events:batch")
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx(), timeout=10)
        self.cleanups.append(conn.close)
        for _ in range(2):
            status, doc, res = self.post(evs[7:8], conn=conn)  # keep-alive survives a 503
            self.assertEqual(status, 503)
            self.assertEqual(res.getheader("Retry-After"), "1")
            self.assertEqual(doc["error"]["code"], "injected")
        self.assertEqual(db_count(self.db, "SELECT count(*) FROM events"), 7)
        self.assertEqual(self.post(evs[7:8], conn=conn)[0], 200)

        # A timeout: the client gives up after 1 s; the server stores the batch after 3 s
        # (an answer lost after the commit), so the agent's resend is a 409.
        self.fail("--delay", "3")
        with self.assertRaises((socket.timeout, TimeoutError)):
            self.post(evs[8:9], timeout=1)
        wait_until(lambda: db_count(self.db, "SELECT count(*) FROM events") == 9,
                   "the delayed batch to be stored")
        self.assertEqual(self.post(evs[8:9])[0], 409)

        # The connection closed without an answer; then a 400 and a 500 set over /-/fail.
        self.fail("--close")
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            self.post(evs[9:10])
        self.fail("--status", "400")
        self.assertEqual(self.post(evs[9:10])[0], 400)
        status, doc, _ = self.request("POST", "/-/fail", json.dumps(
            {"rules": [{"match": "events:batch", "status": 500, "count": 1}]}).encode())
        self.assertEqual(status, 200)
        self.assertEqual(doc["rules"][0]["status"], 500)
        self.assertEqual(self.post(evs[9:10])[0], 500)
        self.assertEqual(self.post(evs[9:10])[0], 200)
        self.assertEqual(db_count(self.db, "SELECT count(*) FROM events"), 10)

        # Bad batches: 400 naming the field (the agent quarantines them).
        bad = json.loads(batch("store-1", [event(1), event(2)]))
        del bad["events"][1]["id"]
        status, doc, _ = self.request("POST", "/v1/stores/store-1/events:batch",
                                      gzip.compress(json.dumps(bad).encode()),
                                      headers={"Content-Encoding": "gzip"})
        self.assertEqual((status, doc["error"]["field"]), (400, "events[1].id"))
        status, doc, _ = self.request("POST", "/v1/stores/store-1/events:batch",
                                      batch("store-2", [event(1)]))
        self.assertEqual((status, doc["error"]["field"]), (400, "store_id"))
        status, doc, _ = self.request("POST", "/v1/stores/store-1/events:batch",
                                      batch("store-1", [event(1)]),
                                      headers={"Content-Encoding": "gzip"})
        self.assertEqual(status, 400)
        self.assertIn("not a gzip stream", doc["error"]["message"])
        if zstandard:  # sync.compression=zstd
            status, doc, _ = self.request(
                "POST", "/v1/stores/store-1/events:batch",
                zstandard.ZstdCompressor().compress(batch("store-1", [event(1)])),
                headers={"Content-Encoding": "zstd"})
            self.assertEqual((status, doc["accepted"]), (200, 1))
        # A store may only post for itself when --check-store-cn is on.
        status, doc, _ = self.post([event(1)], store="store-1", client="client-store-2")
        self.assertEqual((status, doc["error"]["code"]), (403, "forbidden"))

        rc, rep = sim_json("report", "--db", self.db, "--json")
        s = rep["stores"][0]
        self.assertEqual((s["tenant"], s["store_id"]), ("default", "store-1"))
        zstd = 1 if zstandard else 0
        self.assertEqual(s["events"]["unique"], 10 + zstd)
        # Stored: the 200s, the 409s and the delayed one; not the injected or refused ones.
        self.assertEqual(s["uplinks"]["https"]["batches"], 7 + zstd)
        self.assertEqual(s["rejects"]["count"], 3)

    def test_bad_client_certificates_are_refused_with_the_reason(self):
        expectations = {
            None: "did not return a certificate",
            "client-selfsigned": "self-signed",
            "client-expired": "expired",
            "client-other-ca": "unable to get local issuer",
            "client-revoked": "revoked",
        }
        for client, reason in expectations.items():
            with self.subTest(client=client):
                before = self.stats()["tls_handshake_failures"]
                with self.assertRaises((ssl.SSLError, ConnectionError)):
                    self.post([event(1)], client=client)
                after = wait_until(
                    lambda: (lambda s: s if s["tls_handshake_failures"] > before else None)(
                        self.stats()), "the refusal to be counted")
                self.assertIn(reason, after["last_tls_error"])
        # A client that trusts only the rogue CA refuses our server; our CA refuses the
        # rogue server certificate (the MITM case the agent's tests use).
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.request("GET", "/-/stats", client=None, ca="rogue-ca.crt")
        r = subprocess.run(["openssl", "verify", "-CAfile", os.path.join(self.pki, "ca.crt"),
                            os.path.join(self.pki, "rogue-server.crt")], capture_output=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(db_count(self.db, "SELECT count(*) FROM events"), 0)

    def test_its_certificates_secure_mosquitto_too(self):
        broker = Broker(self.tmp, self.pki)
        self.cleanups.append(broker.stop)

        def tls(client):
            return ("--mqtt", broker.url, "--ca-file", os.path.join(self.pki, "ca.crt"),
                    "--cert-file", os.path.join(self.pki, f"{client}.crt"),
                    "--key-file", os.path.join(self.pki, f"{client}.key"))
        db = self.path("mqtts.db")
        serve = Serve(self.tmp, db, *tls("client-store-2"))
        self.cleanups.append(serve.stop)
        r = sim("publish", *tls("client-store-1"), "--topic", "omniedge/v1/t/store-1/events",
                stdin=gzip.compress(batch("store-1", [event(1)])))
        self.assertEqual(r.returncode, 0, r.stderr)
        wait_until(lambda: db_count(db, "SELECT count(*) FROM events") == 1,
                   "the batch sent over mqtts")
        for bad in ("client-revoked", "client-expired", "client-other-ca", "client-selfsigned"):
            with self.subTest(client=bad):
                r = sim("publish", *tls(bad), "--topic", "omniedge/v1/t/store-1/events",
                        stdin=gzip.compress(batch("store-1", [event(2)])))
                self.assertEqual(r.returncode, 3, r.stdout)
                self.assertIn("mqtts://127.0.0.1", r.stderr.decode())
        # The rogue server (the MITM the agent must refuse) is refused by a client of our CA.
        rogue = self.path("rogue")
        os.makedirs(rogue)
        for f in ("ca.crt", "crl.pem"):
            shutil.copy(os.path.join(self.pki, f), rogue)
        for ext in ("crt", "key"):
            shutil.copy(os.path.join(self.pki, f"rogue-server.{ext}"),
                        os.path.join(rogue, f"server.{ext}"))
        os.makedirs(self.path("mitm"))
        mitm = Broker(self.path("mitm"), rogue)
        self.cleanups.append(mitm.stop)
        r = sim("publish", "--mqtt", mitm.url, "--ca-file", os.path.join(self.pki, "ca.crt"),
                "--cert-file", os.path.join(self.pki, "client-store-1.crt"), "--key-file",
                os.path.join(self.pki, "client-store-1.key"), "--topic", "x", stdin=b"x")
        self.assertEqual(r.returncode, 3)
        self.assertIn("certificate verify failed", r.stderr.decode())
        self.assertEqual(db_count(db, "SELECT count(*) FROM events"), 1)

    def test_profile_snapshot_pages_follow_the_cursor(self):
        profiles = [{"id": f"c-{i}", "keys": [f"loyalty:L{i}"], "segments": ["vip"],
                     "tier": "gold"} for i in range(5)]
        src = self.path("profiles.json")
        with open(src, "w") as f:
            json.dump(profiles, f)
        r = sim("profiles", "load", "--db", self.db, src)
        self.assertEqual(r.returncode, 0, r.stderr)
        only2 = self.path("only2.json")
        with open(only2, "w") as f:
            json.dump({"upserts": [{"id": "c-other", "keys": ["app:X"]}]}, f)
        self.assertEqual(sim("profiles", "load", "--db", self.db, "--store", "store-2",
                             only2).returncode, 0)

        got, cursor, pages = [], "", 0
        while True:
            status, doc, _ = self.request(
                "GET", f"/v1/stores/store-1/profiles?cursor={cursor}&limit=2")
            self.assertEqual(status, 200)
            got += doc["profiles"]
            cursor = doc["next_cursor"]
            pages += 1
            if not doc["has_more"]:
                break
        self.assertEqual([p["id"] for p in got], [f"c-{i}" for i in range(5)])
        self.assertEqual(pages, 3)
        self.assertEqual(got[0]["segments"], ["vip"])

        # Caught up: the same cursor gives an empty page; later changes appear after it.
        status, doc, _ = self.request("GET", f"/v1/stores/store-1/profiles?cursor={cursor}")
        self.assertEqual((doc["profiles"], doc["deletes"], doc["next_cursor"]),
                         ([], [], cursor))
        change = self.path("change.json")
        with open(change, "w") as f:
            json.dump({"upserts": [{"id": "c-1", "keys": ["loyalty:L1"], "tier": "platinum"}],
                       "deletes": ["loyalty:L3"]}, f)
        r = sim("profiles", "load", "--db", self.db, change)
        self.assertEqual(json.loads(r.stdout), {"loaded": 1, "deleted": 1, "scope": "*"})
        status, doc, _ = self.request("GET", f"/v1/stores/store-1/profiles?cursor={cursor}")
        self.assertEqual([(p["id"], p["tier"]) for p in doc["profiles"]], [("c-1", "platinum")])
        self.assertEqual(doc["deletes"], ["loyalty:L3"])
        # A fresh snapshot holds the live profiles only.
        status, doc, _ = self.request("GET", "/v1/stores/store-1/profiles?limit=100")
        self.assertEqual(sorted(p["id"] for p in doc["profiles"]), ["c-0", "c-1", "c-2", "c-4"])
        status, doc, _ = self.request("GET", "/v1/stores/store-2/profiles", client="client-store-2")
        self.assertIn("c-other", [p["id"] for p in doc["profiles"]])
        status, doc, _ = self.request("GET", "/v1/stores/store-1/profiles?cursor=zz")
        self.assertEqual((status, doc["error"]["field"]), (400, "cursor"))


# --- signed config, commands, profiles over MQTT ----------------------------------------------

class ConfigAndCommands(TempDirTest):
    def openssl_verify(self, pub, document: bytes, signature: bytes) -> bool:
        d, s = self.path("doc.bin"), self.path("sig.bin")
        with open(d, "wb") as f:
            f.write(document)
        with open(s, "wb") as f:
            f.write(signature)
        r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin",
                            "-in", d, "-sigfile", s], capture_output=True)
        return r.returncode == 0

    def test_signed_config_verifies_with_openssl_and_commands_round_trip(self):
        keys = json.loads(sim("keygen", "--out", self.path("keys")).stdout)
        pub = keys["public_key"]
        self.assertEqual(os.stat(keys["private_key"]).st_mode & 0o777, 0o600)
        doc = self.path("config.json")
        with open(doc, "wb") as f:
            f.write(b'{"version": 7, "settings": {"log.level": "debug"}}\n')
        env = json.loads(sim("sign", "--key", keys["private_key"], doc).stdout)
        carried = base64.b64decode(env["document"])
        with open(doc, "rb") as f:
            self.assertEqual(carried, f.read())  # the exact bytes, newline and spaces kept
        self.assertTrue(self.openssl_verify(pub, carried, base64.b64decode(env["signature"])))
        self.assertFalse(self.openssl_verify(pub, carried.replace(b"7", b"8"),
                                             base64.b64decode(env["signature"])))

        broker = Broker(self.tmp)
        self.cleanups.append(broker.stop)
        db = self.path("central.db")
        serve = Serve(self.tmp, db, "--mqtt", broker.url)
        self.cleanups.append(serve.stop)
        listener = Client(broker.url, "listener")
        self.cleanups.append(listener.close)
        listener.subscribe("omniedge/v1/t1/#")
        mq = ("--mqtt", broker.url, "--tenant", "t1")

        r = sim("config", *mq, "--store", "s1", "--key", keys["private_key"], "--version", "3",
                "--settings", '{"log.level": "debug"}', "--expires-at", "2030-01-01T00:00:00Z")
        self.assertEqual(r.returncode, 0, r.stderr)
        m = listener.wait_message("omniedge/v1/t1/s1/config/desired")
        env = json.loads(m.payload)
        document = base64.b64decode(env["document"])
        self.assertTrue(self.openssl_verify(pub, document, base64.b64decode(env["signature"])))
        self.assertEqual(json.loads(document), {"version": 3, "settings": {"log.level": "debug"},
                                                "expires_at": "2030-01-01T00:00:00Z"})
        # Retained: a late subscriber (the agent after a restart) still gets it.
        late = Client(broker.url, "late")
        self.cleanups.append(late.close)
        late.subscribe("omniedge/v1/t1/s1/config/desired")
        self.assertTrue(late.wait_message("omniedge/v1/t1/s1/config/desired").retain)

        self.assertEqual(sim("config", *mq, "--all", "--key", keys["private_key"], "--version",
                             "4", "--settings", "{}").returncode, 0)
        m = listener.wait_message("omniedge/v1/t1/all/config/desired")
        self.assertEqual(json.loads(base64.b64decode(json.loads(m.payload)["document"]))
                         ["version"], 4)

        def published(*args):
            r = sim("config", *mq, "--store", "s9", *args)
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout)["payload"]

        for tamper in ([], ['{"log.level": "trace"}']):
            env = json.loads(published("--key", keys["private_key"], "--version", "5",
                                       "--settings", '{"log.level": "info"}', "--tamper",
                                       *tamper))
            document = base64.b64decode(env["document"])
            self.assertFalse(self.openssl_verify(pub, document,
                                                 base64.b64decode(env["signature"])))
        self.assertEqual(json.loads(published("--unsigned", "--version", "6", "--settings",
                                              '{"a": 1}')), {"version": 6, "settings": {"a": 1}})

        # A fake agent answers commands; another one is never there.
        def agent(c, u, m):
            cmd = json.loads(m.payload)
            if cmd["name"] == "ping":
                res = {"id": cmd["id"], "ok": True, "result": {"pong": cmd["args"]}}
            else:
                res = {"id": cmd["id"], "ok": False, "error": f"unknown command '{cmd['name']}'"}
            c.publish("omniedge/v1/t1/s1/cmd/result", json.dumps(res), qos=1)

        fake = Client(broker.url, "agent")
        self.cleanups.append(fake.close)
        fake.c.message_callback_add("omniedge/v1/t1/s1/cmd", agent)
        fake.subscribe("omniedge/v1/t1/s1/cmd")
        fake.publish("omniedge/v1/t1/s1/config/reported",
                     json.dumps({"version": 3, "status": "applied"}), retain=True)

        r = sim("cmd", *mq, "--store", "s1", "ping", "--args", '{"x": 1}', "--id", "c-1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), {"id": "c-1", "ok": True,
                                                "result": {"pong": {"x": 1}}})
        r = sim("cmd", *mq, "--store", "s1", "reboot-everything")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(json.loads(r.stdout)["error"], "unknown command 'reboot-everything'")
        r = sim("cmd", *mq, "--store", "nobody", "ping", "--wait", "1")
        self.assertEqual(r.returncode, 3)
        self.assertIn("no result", r.stderr.decode())
        r = sim("cmd", "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--tenant", "t1", "--store",
                "s1", "ping")
        self.assertEqual(r.returncode, 3)
        self.assertIn("cannot reach the broker", r.stderr.decode())

        profiles = json.dumps({"upserts": [{"id": "c-1", "keys": ["loyalty:L1"]}],
                               "deletes": ["app:gone"]}).encode()
        r = sim("profiles", "publish", *mq, "--store", "s1", "--cursor", "42", "-",
                stdin=profiles)
        self.assertEqual(r.returncode, 0, r.stderr)
        m = listener.wait_message("omniedge/v1/t1/s1/profiles")
        self.assertEqual(json.loads(m.payload)["cursor"], "42")
        self.assertEqual(json.loads(m.payload)["upserts"][0]["keys"], ["loyalty:L1"])
        r = sim("profiles", "publish", *mq, "--store", "s1", "-",
                stdin=b'{"upserts": [{"id": "c-2"}]}')
        self.assertEqual(r.returncode, 2)
        self.assertIn("upserts[0].keys", r.stderr.decode())

        wait_until(lambda: db_count(db, "SELECT count(*) FROM messages WHERE kind='cmd_result'")
                   == 2 and db_count(db, "SELECT count(*) FROM messages WHERE "
                                         "kind='config_reported'") == 1,
                   "central-sim to record the command results and the config report")
        rc, rep = sim_json("report", "--db", db, "--json", "--store", "t1/s1")
        s1 = rep["stores"][0]
        self.assertEqual(s1["config_reported"]["payload"], {"version": 3, "status": "applied"})
        self.assertEqual(s1["commands_answered"], 2)


# --- end to end with the real agent -----------------------------------------------------------

class EndToEnd(TempDirTest):
    def test_a_real_agent_delivers_100_kiosk_events(self):
        binary = os.environ.get("OMNIEDGE_BINARY") or os.path.join(ROOT, "build", "agent",
                                                                   "omniedge")
        self.assertTrue(os.access(binary, os.X_OK), f"no omniedge binary at {binary}")
        broker = Broker(self.tmp)
        self.cleanups.append(broker.stop)
        db = self.path("central.db")
        serve = Serve(self.tmp, db, "--mqtt", broker.url)
        self.cleanups.append(serve.stop)

        http_port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("OMNIEDGE_") and k not in ("RUNTIME_DIRECTORY",
                                                              "STATE_DIRECTORY", "NOTIFY_SOCKET")}
        env.update(OMNIEDGE_MQTT_URL=broker.url, OMNIEDGE_DATA_DIR=self.path("agent-data"),
                   OMNIEDGE_HTTP_LISTEN=f"127.0.0.1:{http_port}", OMNIEDGE_STORE_ID="store-e2e",
                   OMNIEDGE_STORE_TENANT="acme", OMNIEDGE_LOG_LEVEL="info")
        os.makedirs(env["OMNIEDGE_DATA_DIR"])
        log = open(self.path("agent.log"), "wb")
        self.cleanups.append(log.close)
        agent = subprocess.Popen([binary, "run"], env=env, stdout=log, stderr=log,
                                 preexec_fn=_die_with_parent)

        def stop_agent():
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(15)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
        self.cleanups.append(stop_agent)

        def api(method, path, body=None):
            c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
            try:
                c.request(method, path, body=body, headers={"Content-Type": "application/json"})
                r = c.getresponse()
                return r.status, r.read()
            except OSError:
                return None, b""
            finally:
                c.close()

        def healthy():
            if agent.poll() is not None:
                with open(self.path("agent.log"), errors="replace") as f:
                    raise AssertionError(f"omniedge exited {agent.returncode}:\n{f.read()}")
            return api("GET", "/v1/health")[0] == 200
        wait_until(healthy, "the agent to be ready")

        accepted = self.path("accepted.jsonl")
        with open(accepted, "w") as f:
            for k in range(4):
                evs = [{"type": "kiosk.view", "source": "kiosk:e2e",
                        "data": {"n": k * 25 + i}} for i in range(25)]
                status, body = api("POST", "/v1/events", json.dumps(evs).encode())
                self.assertEqual(status, 202, body)
                doc = json.loads(body)
                self.assertEqual(doc["accepted"], 25)
                f.write(json.dumps({"ids": doc["ids"], "source": "kiosk:e2e", "n": k * 25}) +
                        "\n")

        wait_until(lambda: db_count(db, "SELECT count(*) FROM events WHERE store_id = "
                                        "'store-e2e' AND type = 'kiosk.view'") == 100,
                   "central-sim to hold the 100 kiosk events", timeout=30)
        rc, rep = sim_json("report", "--db", db, "--json", "--store", "acme/store-e2e")
        s = rep["stores"][0]
        self.assertEqual(s["types"]["kiosk.view"], 100)
        self.assertEqual(s["events"]["unique"], s["events"]["received"] - s["events"]["duplicates"])
        self.assertGreaterEqual(s["uplinks"]["mqtt"]["batches"], 1)
        # Today's agent sends no epoch/seq ranges ("not-checkable"); once it does, the check
        # must find nothing missing.
        self.assertIn(s["gaps"]["verdict"], ("not-checkable", "complete"))
        self.assertEqual(s["gaps"]["missing_seqs"], 0)
        self.assertIn(f"store acme/store-e2e: {s['events']['received']} events received, "
                      f"{s['events']['unique']} unique",
                      sim("report", "--db", db, "--store", "store-e2e").stdout.decode())
        wait_until(lambda: db_count(db, "SELECT count(*) FROM messages WHERE kind = 'status' "
                                        "AND store_id = 'store-e2e'") >= 1, "the agent's status")
        r = sim("verify", "--db", db, "--accepted", accepted, "--store", "acme/store-e2e")
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        self.assertIn("accepted 100, received 100, lost 0", r.stdout.decode())


# --- verify of keyed histories (POS, beacon, load generator) ---------------------------------

class VerifyKeys(TempDirTest):
    """verify against a centre database filled through central-sim's own ingest (the path serve
    takes for MQTT and HTTPS alike): keys, copies before and after de-duplication by id."""

    def ingest(self, db_path, events, seq_first):
        sys.path.insert(0, os.path.join(ROOT, "tools", "central-sim"))
        from centralsim import db as simdb, payload
        d = simdb.Database(db_path)
        doc = {"batch_id": str(uuid.uuid4()), "store_id": "s1", "count": len(events),
               "epoch": "E1", "seq_first": seq_first, "seq_last": seq_first + len(events) - 1,
               "events": events}
        d.ingest(payload.parse_batch(json.dumps(doc).encode()), "t1", "s1", "mqtt", "none", 0)
        d.close()

    def test_a_long_list_of_ranges_is_cut_short_in_text_only(self):
        # A run of I/O errors gives up thousands of short seq ranges: the text report names
        # the first 20 and how many more, the JSON keeps every one.
        db = self.path("central.db")
        kiosk = [{"id": str(uuid.uuid4()), "type": "kiosk.view", "source": "kiosk",
                  "data": {"n": n}} for n in range(2)]
        for k in range(30):  # seqs 1-2 received, 3 missing; 4-5 received, 6 missing; ...
            self.ingest(db, [dict(e, id=str(uuid.uuid4())) for e in kiosk], 3 * k + 1)
        r = sim("report", "--db", db)
        self.assertEqual(r.returncode, 0, r.stderr)
        line = next(x for x in r.stdout.decode().splitlines() if x.strip().startswith("missing "))
        self.assertEqual(line.strip(), "missing 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, "
                         "42, 45, 48, 51, 54, 57, 60 and 9 more ranges (9 seqs) (29 events LOST)")
        r = sim("report", "--db", db, "--json")
        epoch = json.loads(r.stdout)["stores"][0]["gaps"]["epochs"][0]
        self.assertEqual(len(epoch["missing"]), 29)

    def test_keys(self):
        db = self.path("central.db")
        pos = [{"id": str(uuid.uuid4()), "type": "pos.transaction", "source": "pos",
                "data": {"workstation": "w1", "sequence": str(s)}} for s in range(1, 5)]
        # POS sequence 2 re-ingested under a new id (what a kill -9 before the move could do).
        again = dict(pos[1], id=str(uuid.uuid4()))
        enter = {"id": str(uuid.uuid4()), "type": "beacon.enter", "source": "beacon",
                 "data": {"identity": "mac:020000000001", "zone": "a"}}
        kiosk = [{"id": str(uuid.uuid4()), "type": "kiosk.view", "source": "kiosk",
                  "data": {"lg": "kiosk-1-0", "n": n}} for n in range(3)]
        # Sequence 4 arrives before 3 (reordered), pos[0] is resent (a copy of one id).
        self.ingest(db, [pos[0], pos[1], pos[3], pos[2], enter] + kiosk, 1)
        self.ingest(db, [pos[0], again], 9)
        accepted = self.path("accepted.jsonl")
        with open(accepted, "w") as f:
            for s in range(1, 5):
                f.write(json.dumps({"key": f"pos:w1:{s}", "source": "pos", "n": s}) + "\n")
            f.write(json.dumps({"key": "beacon:mac:020000000001"}) + "\n")
            f.write(json.dumps({"key": "beacon:mac:02000000ffff"}) + "\n")  # never entered
            f.write(json.dumps({"ids": [e["id"] for e in kiosk], "source": "kiosk-1-0",
                                "n": 0}) + "\n")
        r = sim("verify", "--db", db, "--accepted", accepted, "--json")
        self.assertEqual(r.returncode, 1, r.stderr)
        v = json.loads(r.stdout)
        self.assertEqual((v["accepted"], v["lost"], v["duplicated"]), (3, 0, 0))
        k = v["keys"]
        self.assertEqual((k["accepted"], k["received"], k["lost"]), (6, 5, 1))
        self.assertEqual(k["lost_keys"], ["beacon:mac:02000000ffff"])
        self.assertEqual(k["by_kind"], {"pos": {"accepted": 4, "lost": 0},
                                        "beacon": {"accepted": 2, "lost": 1}})
        self.assertEqual((k["duplicated_before_dedup"], k["duplicate_copies_before_dedup"]),
                         (1, 1))
        self.assertEqual((k["duplicated_after_dedup"], k["extra_ids_after_dedup"]), (1, 1))
        self.assertEqual(k["after_dedup_by_kind"]["pos"]["examples"],
                         [{"key": "pos:w1:2", "ids": [pos[1]["id"], again["id"]]}])
        self.assertEqual(v["reordered"]["sources"]["pos"],
                         {"events": 1, "first": {"id": "pos:w1:4", "n": 4,
                                                 "arrived_before_n": 3}})
        text = sim("verify", "--db", db, "--accepted", accepted).stdout.decode()
        self.assertIn("keys: accepted 6 (beacon 2, pos 4), received 5, lost 1, duplicated "
                      "before de-dup by id 1 (1 extra copies)", text)
        self.assertIn("  lost: beacon:mac:02000000ffff", text)
        self.assertIn("duplicated after de-dup by id (one key under several ids): pos 1 "
                      "(1 extra ids)", text)
        self.assertIn("verdict: LOST: 0 accepted ids and 1 accepted keys never arrived", text)

        # Without the beacon that never entered: nothing lost, exit 0; a kiosk event the load
        # generator posted that arrives under a second id is a duplicate after de-dup too.
        self.ingest(db, [dict(kiosk[2], id=str(uuid.uuid4()))], 11)
        with open(accepted, "w") as f:
            f.write(json.dumps({"key": "pos:w1:1", "source": "pos", "n": 1}) + "\n")
            f.write(json.dumps({"ids": [e["id"] for e in kiosk], "source": "kiosk-1-0",
                                "n": 0}) + "\n")
        r = sim("verify", "--db", db, "--accepted", accepted, "--json")
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        v = json.loads(r.stdout)
        self.assertEqual(v["keys"]["after_dedup_by_kind"]["kiosk"]["keys"], 1)
        self.assertEqual(v["keys"]["after_dedup_by_kind"]["kiosk"]["examples"][0]["key"],
                         "kiosk:kiosk-1-0:2")


if __name__ == "__main__":
    unittest.main(verbosity=2)
