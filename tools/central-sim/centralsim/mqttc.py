"""MQTT connection helpers over paho-mqtt 1.6 (Debian 12's python3-paho-mqtt).

URLs: mqtt://host[:1883], mqtts://host[:8883], ws://host[:80][/path], wss://host[:443][/path]
(the path defaults to /mqtt). TLS options come from the command line (`add_arguments`).
"""

import argparse
import ssl
import threading
import time
import urllib.parse
from typing import Callable, Optional

import paho.mqtt.client as paho

TOPIC_PREFIX = "omniedge/v1"


class MqttError(Exception):
    pass


def add_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("MQTT")
    g.add_argument("--mqtt", metavar="URL", required=required,
                   help="broker: mqtt://, mqtts://, ws:// or wss:// HOST[:PORT]")
    g.add_argument("--ca-file", help="CA certificate(s) to verify the broker (mqtts/wss)")
    g.add_argument("--cert-file", help="client certificate for mutual TLS")
    g.add_argument("--key-file", help="client private key for mutual TLS")
    g.add_argument("--insecure", action="store_true",
                   help="do not verify the broker's certificate (tests of the agent only)")
    g.add_argument("--username")
    g.add_argument("--password-file", help="file whose first line is the password")


def root(tenant: str, store: str) -> str:
    """The topic root R of contract §5."""
    return f"{TOPIC_PREFIX}/{tenant}/{store}"


def make_client(args: argparse.Namespace, client_id: str, clean_session: bool) -> paho.Client:
    """A configured but unconnected client; `client.oe_host`/`oe_port` say where to connect."""
    url = urllib.parse.urlsplit(args.mqtt)
    scheme = url.scheme.lower()
    defaults = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "ws": 80, "wss": 443}
    if scheme not in defaults or not url.hostname:
        raise MqttError(f"--mqtt '{args.mqtt}': expected mqtt://, mqtts://, ws:// or wss://HOST")
    transport = "websockets" if scheme in ("ws", "wss") else "tcp"
    client = paho.Client(client_id=client_id, clean_session=clean_session,
                         protocol=paho.MQTTv311, transport=transport)
    if transport == "websockets":
        client.ws_set_options(path=url.path or "/mqtt")
    if scheme in ("mqtts", "ssl", "wss"):
        ctx = ssl.create_default_context(cafile=args.ca_file)
        if args.cert_file:
            ctx.load_cert_chain(args.cert_file, args.key_file)
        if args.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        client.tls_set_context(ctx)
    if args.username:
        password = None
        if args.password_file:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        client.username_pw_set(args.username, password)
    client.oe_host = url.hostname
    client.oe_port = url.port or defaults[scheme]
    return client


class Session:
    """A short-lived connection for the CLI commands: connect, subscribe, publish, wait."""

    def __init__(self, args: argparse.Namespace, client_id: str, timeout: float = 10.0):
        self.timeout = timeout
        self.client = make_client(args, client_id, clean_session=True)
        self._connected = threading.Event()
        self._rc: Optional[int] = None
        self._subacks: dict = {}
        self._cv = threading.Condition()
        self._error: Optional[str] = None
        self._closing = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        try:
            self.client.connect(self.client.oe_host, self.client.oe_port, keepalive=30)
        except OSError as e:  # ssl.SSLError included
            raise MqttError(f"cannot reach the broker at {args.mqtt}: {e}") from None
        # Our own network loop, not loop_start(): a TLS alert after the handshake (TLS 1.3
        # refuses a client certificate that way) raises inside paho's loop, and must become
        # an error here rather than a dead thread and a timeout.
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()
        if not self._connected.wait(timeout):
            self.close()
            raise MqttError(f"no CONNACK from {args.mqtt} within {timeout:g} s")
        if self._error:
            self.close()
            raise MqttError(f"cannot connect to {args.mqtt}: {self._error}")
        if self._rc != 0:
            self.close()
            raise MqttError(f"broker refused the connection: {paho.connack_string(self._rc)}")

    def _run(self):
        while True:
            try:
                rc = self.client.loop(0.1)
            except OSError as e:
                rc, err = None, str(e)
            else:
                err = None if rc == paho.MQTT_ERR_SUCCESS else paho.error_string(rc)
            if err is None:
                continue
            if not self._closing.is_set():
                self._error = self._error or err
                self._connected.set()
                with self._cv:
                    self._cv.notify_all()
            return

    def _check(self):
        if self._error:
            raise MqttError(f"connection to the broker lost: {self._error}")

    def _on_connect(self, client, userdata, flags, rc):
        self._rc = rc
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, granted_qos):
        with self._cv:
            self._subacks[mid] = granted_qos
            self._cv.notify_all()

    def subscribe(self, topic: str, on_message: Callable[[paho.MQTTMessage], None]) -> None:
        self.client.message_callback_add(topic, lambda c, u, m: on_message(m))
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"subscribe {topic}: {paho.error_string(rc)}")
        deadline = time.monotonic() + self.timeout
        with self._cv:
            while mid not in self._subacks:
                self._check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MqttError(f"no SUBACK for {topic} within {self.timeout:g} s")
                self._cv.wait(left)
        if self._subacks[mid][0] == 0x80:
            raise MqttError(f"the broker refused the subscription to {topic}")

    def publish(self, topic: str, data: bytes, retain: bool = False, qos: int = 1) -> None:
        """Returns once the broker acknowledged (QoS 1) or the message left (QoS 0)."""
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise MqttError(f"publish {topic}: {paho.error_string(info.rc)}")
        deadline = time.monotonic() + self.timeout
        while not info.is_published() and time.monotonic() < deadline:
            self._check()
            info.wait_for_publish(0.1)
        if not info.is_published():
            raise MqttError(f"no PUBACK for {topic} within {self.timeout:g} s")

    def close(self) -> None:
        self._closing.set()
        try:
            self.client.disconnect()
        except OSError:
            pass  # the connection is already gone
        self._thread.join(2)


def split_topic(topic: str):
    """(tenant, store, leaf) of omniedge/v1/{tenant}/{store}/{leaf...}, or None."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "omniedge" or parts[1] != "v1":
        return None
    return parts[2], parts[3], "/".join(parts[4:])
