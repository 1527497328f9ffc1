"""`central-sim serve`: the MQTT consumer and the HTTPS endpoints of the centre.

Threads: paho's network thread runs the MQTT callbacks (each message is committed to SQLite
before its callback returns, and paho sends the PUBACK only after that, so a crash of this
process never loses a message the broker handed over); the HTTPS server runs one thread per
connection (the TLS handshake happens there, not in the accepting thread); the main thread
waits for SIGTERM/SIGINT and shuts both down.
"""

import http.server
import json
import logging
import os
import re
import signal
import socket
import socketserver
import sqlite3
import ssl
import threading
import time
import urllib.parse
from typing import Optional

from . import db as dbmod
from . import faults as faultsmod
from . import mqttc, payload, pki

log = logging.getLogger("central-sim")

MAX_BODY = 64 * 1024 * 1024
SUBSCRIPTIONS = ["events", "status", "config/reported", "cmd/result"]
MESSAGE_KINDS = {"status": "status", "config/reported": "config_reported",
                 "cmd/result": "cmd_result"}


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = {"mqtt_batches": 0, "https_batches": 0, "events_new": 0,
                       "events_duplicate": 0, "rejected": 0, "tls_handshake_failures": 0}
        self.last_tls_error = ""

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                self.values[k] += v

    def snapshot(self):
        with self.lock:
            return dict(self.values, last_tls_error=self.last_tls_error)


# --- MQTT -------------------------------------------------------------------------------------

class MqttConsumer:
    def __init__(self, args, database: dbmod.Database, counters: Counters):
        self.db = database
        self.counters = counters
        self.subscribed = threading.Event()
        self.client = mqttc.make_client(args, args.client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)  # R2 restarts the broker often
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self._sub_mid = None

    def start(self):
        self.client.connect_async(self.client.oe_host, self.client.oe_port, keepalive=30)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def _run(self):
        # paho reconnects by itself after socket errors, but a TLS alert raised while reading
        # (a refused or revoked certificate under TLS 1.3) escapes its loop: keep going.
        while not self._stopping.is_set():
            try:
                self.client.loop_forever(retry_first_connection=True)
                return  # stop() disconnected
            except OSError as e:
                log.warning("mqtt: %s; reconnecting", e)
            if self._stopping.wait(2):
                return
            try:
                self.client.reconnect()
            except OSError as e:
                log.warning("mqtt: reconnect failed: %s", e)

    def stop(self):
        self._stopping.set()
        try:
            self.client.disconnect()
        except OSError:
            pass  # the connection is already gone
        self._thread.join(5)

    def _on_connect(self, client, userdata, flags, rc):
        if rc != 0:
            log.warning("mqtt: connection refused: %s", mqttc.paho.connack_string(rc))
            return
        log.info("mqtt: connected (session present: %s)", flags.get("session present"))
        # Subscribing again on every connect covers a broker that lost the session.
        topics = [(f"{mqttc.TOPIC_PREFIX}/+/+/{leaf}", 1) for leaf in SUBSCRIPTIONS]
        _, self._sub_mid = client.subscribe(topics)

    def _on_subscribe(self, client, userdata, mid, granted_qos):
        if mid == self._sub_mid:
            if any(q == 0x80 for q in granted_qos):
                log.error("mqtt: the broker refused a subscription: %s", granted_qos)
            self.subscribed.set()

    def _on_disconnect(self, client, userdata, rc):
        if rc != 0:
            log.warning("mqtt: connection lost (%s); reconnecting", mqttc.paho.error_string(rc))

    def _on_message(self, client, userdata, msg):
        try:
            self._handle(msg)
        except sqlite3.Error as e:
            # Returning would PUBACK a message that is not stored; dying leaves it with the
            # broker (persistent session), which hands it over again after a restart.
            log.critical("mqtt: cannot store a message on %s: %s; exiting without PUBACK",
                         msg.topic, e)
            logging.shutdown()
            os._exit(70)
        except Exception:  # a bug here must not stop the consumer
            log.exception("mqtt: unexpected error on %s", msg.topic)

    def _handle(self, msg):
        parts = mqttc.split_topic(msg.topic)
        if parts is None:
            return
        tenant, store, leaf = parts
        data = msg.payload
        if leaf == "events":
            try:
                raw, compression = payload.decompress(data)
                batch = payload.parse_batch(raw)
            except payload.PayloadError as e:
                log.warning("mqtt: %s/%s: unusable batch: %s%s", tenant, store,
                            f"{e.field}: " if e.field else "", e.message)
                self.db.record_reject("mqtt", tenant, store, e.field, e.message, data)
                self.counters.add(rejected=1)
                return
            if batch.store_id and batch.store_id != store:
                batch.problems.append(
                    ("store_id", f"'{batch.store_id}' but published on the topic of '{store}'"))
            for f, m in batch.problems:
                log.warning("mqtt: %s/%s batch %s: %s: %s", tenant, store, batch.batch_id, f, m)
            res = self.db.ingest(batch, tenant, store, "mqtt", compression, len(data))
            self.counters.add(mqtt_batches=1, events_new=res.new, events_duplicate=res.duplicates)
            log.debug("mqtt: %s/%s batch %s: %d events, %d new, %d duplicates", tenant, store,
                      batch.batch_id, len(batch.events), res.new, res.duplicates)
            return
        kind = MESSAGE_KINDS.get(leaf)
        if kind is None:
            return
        text = data.decode("utf-8", "replace")
        if data:
            try:
                json.loads(text)
            except ValueError as e:
                self.db.record_reject("mqtt", tenant, store, leaf, f"not JSON: {e}", data)
        self.db.record_message(kind, tenant, store, bool(msg.retain), text)
        log.info("mqtt: %s/%s %s%s: %s", tenant, store, leaf, " (retained)" if msg.retain else "",
                 text[:300])


# --- HTTPS ------------------------------------------------------------------------------------

BATCH_PATH = re.compile(r"^/v1/stores/([^/]+)/events:batch$")
PROFILES_PATH = re.compile(r"^/v1/stores/([^/]+)/profiles$")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, ctx: ssl.SSLContext, state):
        self.ctx = ctx
        self.state = state
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    def server_bind(self):
        # HTTPServer.server_bind would resolve our own name (socket.getfqdn): a DNS wait on a
        # machine without DNS, for a name nobody reads.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        request.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self.state.counters.lock:
                self.state.counters.values["tls_handshake_failures"] += 1
                self.state.counters.last_tls_error = str(e)
            log.info("https: TLS handshake with %s refused: %s", client_address[0], e)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        log.debug("https: connection from %s ended with an error", client_address[0],
                  exc_info=True)


class State:
    def __init__(self, database, counters, faults, https_tenant, check_store_cn):
        self.db = database
        self.counters = counters
        self.faults = faults
        self.https_tenant = https_tenant
        self.check_store_cn = check_store_cn


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the agent reuses its connection
    server_version = "central-sim"

    def log_message(self, fmt, *a):
        log.debug("https: %s %s", self.address_string(), fmt % a)

    # helpers

    def _send(self, status: int, doc, headers=None):
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, field: str = "", headers=None):
        err = {"code": code, "message": message}
        if field:
            err["field"] = field
        self._send(status, {"error": err}, headers)

    def _body(self) -> Optional[bytes]:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._error(411, "length_required", "send Content-Length, not chunked")
            return None
        if length is None or not length.isdigit():
            self.close_connection = True
            self._error(411, "length_required", "Content-Length is required")
            return None
        n = int(length)
        if n > MAX_BODY:
            self.close_connection = True
            self._error(413, "too_large", f"body of {n} bytes exceeds {MAX_BODY}")
            return None
        return self.rfile.read(n)

    def _client_cn(self) -> Optional[str]:
        cert = self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    return v
        return None

    def _store_allowed(self, store: str) -> bool:
        if not self.state.check_store_cn:
            return True
        cn = self._client_cn()
        if cn == store:
            return True
        self._error(403, "forbidden",
                    f"client certificate '{cn}' may not act for store '{store}'", "store_id")
        return False

    @property
    def state(self) -> State:
        return self.server.state

    def _inject(self, method: str, path: str) -> bool:
        """Applies a failure rule; True when the request is answered (or dropped) already."""
        rule = self.state.faults.take(method, path)
        if rule is None:
            return False
        log.info("https: injecting %s into %s %s", {k: rule[k] for k in
                 ("status", "delay", "close", "process") if rule[k]}, method, path)
        if rule["delay"]:
            time.sleep(rule["delay"])
        if rule["close"]:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        if rule["status"] is None:
            return False
        if method == "POST":
            body = self._body()
            if body is None:
                return True
            if rule["process"]:
                self._process_batch(path, body, answer=False)
        headers = {}
        if rule["retry_after"] is not None:
            headers["Retry-After"] = str(rule["retry_after"])
        self._error(rule["status"], "injected", f"failure injected by central-sim "
                    f"(status {rule['status']})", headers=headers)
        return True

    # routes

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/-/fail":
            return self._send(200, self.state.faults.state())
        if url.path == "/-/stats":
            return self._send(200, self.state.counters.snapshot())
        if self._inject("GET", url.path):
            return
        m = PROFILES_PATH.match(url.path)
        if not m:
            return self._error(404, "not_found", f"no route for GET {url.path}")
        store = urllib.parse.unquote(m.group(1))
        if not self._store_allowed(store):
            return
        q = urllib.parse.parse_qs(url.query)
        cursor = q.get("cursor", [""])[0]
        if cursor and not cursor.isdigit():
            return self._error(400, "invalid", f"unknown cursor '{cursor}'", "cursor")
        limit = q.get("limit", ["100"])[0]
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            return self._error(400, "invalid", "limit must be 1-1000", "limit")
        profiles, deletes, last, more = self.state.db.profile_page(
            store, int(cursor or 0), int(limit))
        self._send(200, {"profiles": profiles, "deletes": deletes, "next_cursor": str(last),
                         "has_more": more})

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/-/fail":
            body = self._body()
            if body is None:
                return
            try:
                self.state.faults.replace(json.loads(body))
            except (ValueError, faultsmod.FaultError) as e:
                return self._error(400, "invalid", str(e))
            return self._send(200, self.state.faults.state())
        if self._inject("POST", url.path):
            return
        if not BATCH_PATH.match(url.path):
            self.close_connection = True  # its body is not read: the connection cannot go on
            return self._error(404, "not_found", f"no route for POST {url.path}")
        body = self._body()
        if body is not None:
            self._process_batch(url.path, body, answer=True)

    def _process_batch(self, path: str, body: bytes, answer: bool):
        store = urllib.parse.unquote(BATCH_PATH.match(path).group(1))
        if answer and not self._store_allowed(store):
            return
        tenant = self.state.https_tenant
        try:
            raw, compression = payload.decompress(body, self.headers.get("Content-Encoding"))
            batch = payload.parse_batch(raw)
            if batch.store_id and batch.store_id != store:
                raise payload.PayloadError(
                    "store_id", f"'{batch.store_id}' but posted to the path of store '{store}'")
            if batch.problems:
                f, m = batch.problems[0]
                raise payload.PayloadError(f, m)
        except payload.PayloadError as e:
            self.state.db.record_reject("https", tenant, store, e.field, e.message, body)
            self.state.counters.add(rejected=1)
            log.warning("https: %s: batch refused: %s%s", store,
                        f"{e.field}: " if e.field else "", e.message)
            if answer:
                code = {413: "too_large", 415: "unsupported"}.get(e.status, "invalid")
                self._error(e.status, code, e.message, e.field)
            return
        try:
            res = self.state.db.ingest(batch, tenant, store, "https", compression, len(body))
        except sqlite3.Error as e:
            log.error("https: cannot store a batch of %s: %s", store, e)
            if answer:
                self._error(503, "unavailable", f"cannot store: {e}", headers={"Retry-After": "1"})
            return
        self.state.counters.add(https_batches=1, events_new=res.new,
                                events_duplicate=res.duplicates)
        log.debug("https: %s batch %s: %d events, %d new", store, batch.batch_id,
                  len(batch.events), res.new)
        if not answer:
            return
        doc = {"batch_id": batch.batch_id, "accepted": res.new, "duplicates": res.duplicates}
        self._send(409 if res.new == 0 else 200, doc)


def tls_context(args) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.server_cert or os.path.join(args.cert_dir, "server.crt"),
                        args.server_key or os.path.join(args.cert_dir, "server.key"))
    client_ca = args.client_ca
    crl = args.crl
    if args.mtls:
        client_ca = client_ca or os.path.join(args.cert_dir, "ca.crt")
        crl = crl or os.path.join(args.cert_dir, "crl.pem")
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
        if crl:
            ctx.load_verify_locations(cafile=crl)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def serve(args) -> int:
    database = dbmod.Database(args.db)
    counters = Counters()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    consumer = None
    if args.mqtt:
        consumer = MqttConsumer(args, database, counters)
        consumer.start()

    server = None
    https_port = None
    if args.https_listen:
        if args.cert_dir and not os.path.exists(os.path.join(args.cert_dir, "server.crt")) \
                and not args.server_cert:
            pki.make_certs(args.cert_dir, ["store-1"])
            log.info("https: made certificates in %s", args.cert_dir)
        host, _, port = args.https_listen.rpartition(":")
        state = State(database, counters, faultsmod.Faults(args.fail_file), args.https_tenant,
                      args.check_store_cn)
        server = Server((host.strip("[]") or "127.0.0.1", int(port)), tls_context(args), state)
        https_port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="https", daemon=True).start()
        log.info("https: listening on %s:%d", host, https_port)

    # Ready = subscribed (nothing published from now on is missed) and listening.
    while consumer and not consumer.subscribed.wait(0.2) and not stop.is_set():
        pass
    if not stop.is_set():
        if args.port_file and https_port is not None:
            _write_atomic(args.port_file, f"{https_port}\n")
        if args.ready_file:
            _write_atomic(args.ready_file,
                          json.dumps({"pid": os.getpid(), "https_port": https_port}))
        log.info("ready")

    last = None
    while not stop.wait(5):
        snap = counters.snapshot()
        if snap != last:
            log.info("totals: %s", json.dumps(snap))
            last = snap
    log.info("stopping")
    if server:
        server.shutdown()
        server.server_close()
    if consumer:
        consumer.stop()
    database.close()
    return 0
