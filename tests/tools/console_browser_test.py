#!/usr/bin/python3
"""The web console in a real browser, against a real agent.

  console_browser_test.py browser   Debian's chromium (headless) opens /console on an agent
                                    whose broker is unreachable (a backlog builds up); the
                                    figures the page shows must be those `omniedge status
                                    --json` prints, a new event must appear live, no customer
                                    identifier may be shown, and a screenshot is kept.
  console_browser_test.py auth      with http.tokens_file set, /console needs the token (401
                                    without, Bearer or Basic with it) and every answer carries
                                    the security headers.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe), not with
--dump-dom: the page keeps an event stream open, which holds --virtual-time-budget's clock
still forever, and without it --dump-dom dumps before the page's first fetch came back.
Exit 77 (ctest SKIP_RETURN_CODE) when no chromium is installed.
"""
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser

SKIP = 77
DEADLINE = 60.0
BINARY = os.environ.get("OMNIEDGE_BINARY", "")
SCREENSHOT = os.environ.get("CONSOLE_SCREENSHOT", "")


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def wait_until(predicate, what, timeout=DEADLINE):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise Failure(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    import ctypes
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Agent:
    """The real binary, `omniedge run`, configured through the environment."""

    def __init__(self, tmp, **settings):
        self.tmp = tmp
        self.port = free_port()
        closed = free_port()  # nothing listens there: the uplink stays down, a backlog builds
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("OMNIEDGE_") and k not in (
                        "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET")}
        self.env.update(OMNIEDGE_MQTT_URL=f"mqtt://127.0.0.1:{closed}",
                        OMNIEDGE_DATA_DIR=os.path.join(tmp, "data"),
                        OMNIEDGE_HTTP_LISTEN=f"127.0.0.1:{self.port}",
                        OMNIEDGE_STORE_ID="store-console", OMNIEDGE_STORE_TENANT="acme",
                        OMNIEDGE_CONSOLE_SAMPLE_INTERVAL="1", OMNIEDGE_LOG_LEVEL="info")
        self.env.update(settings)
        os.makedirs(self.env["OMNIEDGE_DATA_DIR"], exist_ok=True)
        self.log_path = os.path.join(tmp, "agent.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([BINARY, "run"], env=self.env, stdout=self.log,
                                     stderr=self.log, preexec_fn=die_with_parent)
        wait_until(self._up, "the agent to answer on its HTTP port")

    def _up(self):
        if self.proc.poll() is not None:
            with open(self.log_path, errors="replace") as f:
                raise Failure(f"omniedge exited {self.proc.returncode}:\n{f.read()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
        finally:
            c.close()

    def cli_status(self):
        """`omniedge status --json`, through the control socket, as a technician runs it."""
        out = subprocess.run([BINARY, "status", "--json"], env=self.env, capture_output=True,
                             timeout=30)
        check(out.returncode == 0, f"omniedge status --json failed: {out.stderr.decode()}")
        doc = json.loads(out.stdout)
        check(doc.get("daemon") == "running", f"status says the daemon is {doc.get('daemon')}")
        return doc

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Chromium:
    """Headless chromium driven over the DevTools protocol on fds 3 and 4."""

    def __init__(self, binary, tmp):
        import fcntl
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Above 10 first, so that putting them at 3 and 4 cannot overwrite one with the other.
        high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def fds():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)
            die_with_parent()

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={os.path.join(tmp, 'chromium-profile')}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "chromium.log"), "wb"),
            preexec_fn=fds, close_fds=False)
        os.close(high_r)
        os.close(high_w)
        self.next_id = 0
        self.buffer = b""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method, params=None, session=None, timeout=30.0):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self.next_id:
                    if "error" in answer:
                        raise Failure(f"chromium: {method}: {answer['error']}")
                    return answer.get("result", {})
            left = end - time.monotonic()
            check(left > 0, f"chromium did not answer {method} within {timeout:.0f} s")
            import select
            ready, _, _ = select.select([self.from_chrome], [], [], left)
            if ready:
                chunk = os.read(self.from_chrome, 1 << 20)
                check(chunk, "chromium closed its DevTools pipe")
                self.buffer += chunk

    def page(self, method, params=None, timeout=30.0):
        return self.call(method, params, self.session, timeout)

    def evaluate(self, expression):
        r = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return r.get("result", {}).get("value")

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)


class Dom(HTMLParser):
    """Elements by id (their data-value and text) and the rows of the two tables."""

    def __init__(self, html):
        super().__init__()
        self.by_id = {}
        self.drivers = {}
        self.event_rows = []
        self.body = {}
        self._open = []  # ids whose text is being collected
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if "id" in a:
            self.by_id[a["id"]] = {"value": a.get("data-value"), "text": ""}
            self._open.append(a["id"])
        else:
            self._open.append(None)
        if tag == "tr" and "data-driver" in a:
            self.drivers[a["data-driver"]] = a.get("data-state")
        if tag == "tr" and "data-seq" in a:
            self.event_rows.append(int(a["data-seq"]))

    def handle_endtag(self, tag):
        if self._open and tag not in ("meta", "link", "br", "img", "input"):
            self._open.pop()

    def handle_data(self, data):
        for i in self._open:
            if i is not None:
                self.by_id[i]["text"] += data

    def value(self, element_id):
        check(element_id in self.by_id, f"the page has no #{element_id}")
        return self.by_id[element_id]["value"]


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_browser(tmp):
    chromium = find_chromium()
    if chromium is None:
        print("SKIP: no chromium on PATH (apt-get install chromium; scripts/setup installs it)")
        return SKIP
    agent = Agent(tmp)
    browser = None
    try:
        # A backlog the uplink cannot send: kiosk events with a customer's identifiers, which
        # the console must never show.
        events = [{"type": "kiosk.view", "source": "kiosk:door",
                   "customer": {"loyalty_id": "LOY-SECRET-4711", "email": "jane.doe@example.com"},
                   "data": {"n": i}} for i in range(37)]
        status, _, body = agent.request("POST", "/v1/events", json.dumps(events).encode())
        check(status == 202, f"POST /v1/events answered {status}: {body!r}")

        # Settled: two readings a second apart agree (agent.* events of the start are in).
        def settled():
            a = agent.cli_status()
            time.sleep(1)
            b = agent.cli_status()
            figures = lambda d: (d["queue"]["pending"], d["queue"]["bytes"],  # noqa: E731
                                 d["counters"]["appended"], d["seq_last"])
            return b if figures(a) == figures(b) else None
        before = wait_until(settled, "the queue to settle")
        check(before["queue"]["pending"] >= 37, f"no backlog: {before['queue']}")
        check(before["uplink"]["mqtt"]["state"] == "disconnected", "the broker is reachable")
        # A few samples for the plots (console.sample_interval=1).
        wait_until(lambda: len(json.loads(agent.request("GET", "/console/history.json")[2])
                               ["samples"]["at_ms"]) >= 3, "three history samples")

        browser = Chromium(chromium, tmp)
        browser.page("Emulation.setDeviceMetricsOverride",
                      {"width": 1280, "height": 1800, "deviceScaleFactor": 1, "mobile": False})
        browser.page("Page.enable")
        url = f"http://127.0.0.1:{agent.port}/console"
        browser.page("Page.navigate", {"url": url})
        ready = ("document.body && document.body.dataset.ready === '1' && "
                 "document.getElementById('events-live').textContent === 'live' && "
                 "Number(document.getElementById('sample-count').textContent) >= 3 && "
                 "Number(document.getElementById('events-body').dataset.lastSeq || 0) >= " +
                 str(before["seq_last"]))
        wait_until(lambda: browser.evaluate(ready), "the page to show status, history and events")

        # Live: an event stored now appears without a reload.
        status, _, body = agent.request("POST", "/v1/events",
                                        json.dumps({"type": "kiosk.console_live"}).encode())
        check(status == 202, f"POST answered {status}")
        wait_until(lambda: browser.evaluate(
            "document.querySelector('#events-body tr[data-type=\"kiosk.console_live\"]') !== null"),
            "the new event to appear in the live list")
        # The status the page shows after that, compared with the CLI's.
        after = wait_until(lambda: (lambda s: s if s["queue"]["pending"] ==
                                    before["queue"]["pending"] + 1 else None)(agent.cli_status()),
                           "status to count the new event")
        wait_until(lambda: browser.evaluate(
            "document.getElementById('queue-total').dataset.value") ==
            str(after["queue"]["pending"]), "the page to refresh its status")

        html = browser.evaluate("document.documentElement.outerHTML")
        dom = Dom(html)
        s = agent.cli_status()
        expect = {
            "store-id": s["store_id"],
            "agent-state": s["daemon"],
            "agent-version": s["version"],
            "config-version": s["config_version"],
            "mqtt-state": s["uplink"]["mqtt"]["state"],
            "https-state": s["uplink"]["https"]["state"],
            "queue-high": s["queue"]["high"],
            "queue-normal": s["queue"]["normal"],
            "queue-low": s["queue"]["low"],
            "queue-total": s["queue"]["pending"],
            "queue-bytes": s["queue"]["bytes"],
            "quarantine-events": s["quarantine"]["events"],
            "counter-appended": s["counters"]["appended"],
            "counter-delivered": s["counters"]["delivered"],
        }
        mismatches = [f"#{k}: page {dom.value(k)!r}, status --json {str(v)!r}"
                      for k, v in expect.items() if dom.value(k) != str(v)]
        check(not mismatches, "the page differs from `omniedge status --json`:\n  " +
              "\n  ".join(mismatches))
        drivers = {d["name"]: d["state"] for d in s["drivers"]}
        check(dom.drivers == drivers, f"drivers: page {dom.drivers}, status {drivers}")
        check(dom.by_id["queue-total"]["text"].replace(",", "") == str(s["queue"]["pending"]),
              f"#queue-total reads {dom.by_id['queue-total']['text']!r}")
        check(max(dom.event_rows) == s["seq_last"],
              f"newest event on the page is seq {max(dom.event_rows)}, status says "
              f"{s['seq_last']}")
        for secret in ("LOY-SECRET-4711", "jane.doe", "example.com"):
            check(secret not in html, f"the page shows a customer's identifier ({secret})")

        shot = base64.b64decode(browser.page("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True})["data"])
        check(shot.startswith(b"\x89PNG") and len(shot) > 20000,
              f"the screenshot is not a real picture ({len(shot)} bytes)")
        path = SCREENSHOT or os.path.join(tmp, "console.png")
        with open(path, "wb") as f:
            f.write(shot)
        print(f"screenshot: {path}")
        print("the page shows what `omniedge status --json` shows: " +
              ", ".join(f"{k}={v}" for k, v in expect.items()))
        return 0
    finally:
        if browser is not None:
            browser.close()
        agent.stop()


def test_auth(tmp):
    token = "console-token-0123456789abcdef"
    tokens = os.path.join(tmp, "tokens")
    with open(tokens, "w") as f:
        f.write(token + "\n")
    agent = Agent(tmp, OMNIEDGE_HTTP_TOKENS_FILE=tokens)
    try:
        # Five failures from one address lock it out (the API's brute-force rule, which the
        # console shares): exactly five here, and a valid token is never locked out.
        for path in ("/console", "/console/events"):
            status, headers, _ = agent.request("GET", path)
            check(status == 401, f"GET {path} without a token answered {status}")
            check(headers.get("www-authenticate", "").startswith("Basic"),
                  f"GET {path}: a browser is not asked for the token: {headers}")
        status, _, _ = agent.request("GET", "/console/status.json",
                                     headers={"Authorization": "Bearer wrong"})
        check(status == 401, f"GET /console/status.json with a wrong token answered {status}")
        # The API's own routes still ask for a bearer token, not Basic.
        status, headers, _ = agent.request("GET", "/metrics")
        check(status == 401 and headers.get("www-authenticate") == "Bearer",
              f"/metrics answered {status} {headers}")
        basic = "Basic " + base64.b64encode(f"manager:{token}".encode()).decode()
        status, _, _ = agent.request("GET", "/metrics", headers={"Authorization": basic})
        check(status == 401, f"/metrics took Basic authentication ({status})")

        for auth in (f"Bearer {token}", basic):
            status, headers, body = agent.request("GET", "/console",
                                                  headers={"Authorization": auth})
            check(status == 200 and b"<canvas" in body, f"GET /console with {auth[:6]}: {status}")
            check("script-src 'self'" in headers.get("content-security-policy", ""),
                  f"no strict Content-Security-Policy: {headers}")
            check(headers.get("x-content-type-options") == "nosniff", "no nosniff")
            status, headers, body = agent.request("GET", "/console/status.json",
                                                  headers={"Authorization": auth})
            check(status == 200 and json.loads(body)["store_id"] == "store-console",
                  f"status.json: {status} {body[:200]!r}")
        status, headers, _ = agent.request("POST", "/console", body=b"{}",
                                           headers={"Authorization": basic})
        check(status == 405, f"POST /console answered {status}")
        status, _, body = agent.request("GET", "/console/nothing",
                                        headers={"Authorization": basic})
        check(status == 404, f"GET /console/nothing answered {status}")
        print("/console asks for the token (401, WWW-Authenticate: Basic) and takes it as Bearer "
              "or Basic; /metrics still takes Bearer only")
        return 0
    finally:
        agent.stop()


def main():
    case = sys.argv[1] if len(sys.argv) > 1 else "browser"
    if not BINARY or not os.access(BINARY, os.X_OK):
        print(f"no omniedge binary (OMNIEDGE_BINARY={BINARY!r})")
        return 1
    tmp = tempfile.mkdtemp(prefix="omniedge-console-")
    try:
        rc = {"browser": test_browser, "auth": test_auth}[case](tmp)
    except Failure as e:
        print(f"FAIL: {e}")
        log = os.path.join(tmp, "agent.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                print("--- agent log (last 40 lines) ---\n" + "".join(f.readlines()[-40:]))
        rc = 1
    if rc == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
