"""Failure injection for the HTTPS side: "answer the next N requests with status S", "delay T
seconds", "close the connection without an answer".

Rules come from a JSON file (`serve --fail-file`, re-read whenever it changes: written by
`central-sim fail` or by a test) or from `POST /-/fail`. Either replaces the whole rule list:

    {"rules": [{"match": "events:batch", "method": "POST", "status": 503, "count": 2,
                "delay": 0, "retry_after": 1, "close": false, "process": false}]}

- match: a substring of the request path ("" or absent: every request but /-/ ones).
- method: only this method (absent: any).
- count: how many requests the rule takes (default 1; -1: until replaced).
- delay: seconds to wait before doing anything else (a client with a shorter timeout sees a
  timeout). With neither status nor close, the request is then processed normally.
- status: answer this status with an error body, without processing the request (the batch is
  NOT stored), unless "process": true (then it is stored and the status still answered: an
  "answer lost after commit" case).
- retry_after: adds a Retry-After header (seconds).
- close: close the connection without any answer (after the delay).
Rules are tried in order; the first that matches and has count left is used.
"""

import json
import os
import threading
from typing import Any, Dict, List, Optional


class FaultError(Exception):
    pass


def validate(doc: Any) -> List[Dict[str, Any]]:
    """The rule list of a fail document; raises FaultError naming the bad field."""
    rules = doc.get("rules") if isinstance(doc, dict) else doc
    if not isinstance(rules, list):
        raise FaultError("rules: expected an array of rules (or {\"rules\": [...]})")
    out = []
    for i, r in enumerate(rules):
        if not isinstance(r, dict):
            raise FaultError(f"rules[{i}]: must be an object")
        unknown = set(r) - {"match", "method", "status", "count", "delay", "retry_after",
                            "close", "process"}
        if unknown:
            raise FaultError(f"rules[{i}].{sorted(unknown)[0]}: unknown field")
        rule = {"match": r.get("match") or "", "method": r.get("method"),
                "status": r.get("status"), "count": r.get("count", 1),
                "delay": r.get("delay", 0), "retry_after": r.get("retry_after"),
                "close": bool(r.get("close", False)), "process": bool(r.get("process", False)),
                "used": 0}
        if not isinstance(rule["match"], str):
            raise FaultError(f"rules[{i}].match: must be a string")
        if rule["status"] is not None and (not isinstance(rule["status"], int)
                                           or not 100 <= rule["status"] <= 599):
            raise FaultError(f"rules[{i}].status: must be an HTTP status 100-599")
        if not isinstance(rule["count"], int) or rule["count"] < -1 or rule["count"] == 0:
            raise FaultError(f"rules[{i}].count: must be a positive integer or -1")
        if not isinstance(rule["delay"], (int, float)) or rule["delay"] < 0:
            raise FaultError(f"rules[{i}].delay: must be a number of seconds >= 0")
        out.append(rule)
    return out


class Faults:
    """The live rule list. Thread-safe: HTTPS worker threads call take() concurrently."""

    def __init__(self, path: Optional[str] = None):
        self._path = path
        self._stamp = None
        self._rules: List[Dict[str, Any]] = []
        self._applied = 0
        self._lock = threading.Lock()
        self.last_error: Optional[str] = None

    def replace(self, doc: Any) -> None:
        rules = validate(doc)
        with self._lock:
            self._rules = rules

    def _reload_locked(self) -> None:
        if not self._path:
            return
        try:
            st = os.stat(self._path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        if stamp is None:
            self._rules = []
            return
        try:
            with open(self._path, encoding="utf-8") as f:
                self._rules = validate(json.load(f))
            self.last_error = None
        except (OSError, ValueError, FaultError) as e:
            self._rules = []
            self.last_error = f"{self._path}: {e}"

    def take(self, method: str, path: str) -> Optional[Dict[str, Any]]:
        """The rule this request falls under (its count is used up by one), or None."""
        with self._lock:
            self._reload_locked()
            for rule in self._rules:
                if rule["method"] and rule["method"].upper() != method:
                    continue
                if rule["match"] not in path:
                    continue
                rule["used"] += 1
                if rule["count"] > 0:
                    rule["count"] -= 1
                    if rule["count"] == 0:
                        self._rules.remove(rule)
                self._applied += 1
                return dict(rule)
            return None

    def state(self) -> Dict[str, Any]:
        with self._lock:
            self._reload_locked()
            return {"rules": [dict(r) for r in self._rules], "applied": self._applied,
                    "error": self.last_error}


def write_file(path: str, rules: List[Dict[str, Any]]) -> None:
    """Atomically replaces the fail file (a nonce makes every write a change serve notices)."""
    validate(rules)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"rules": rules, "nonce": os.urandom(8).hex()}, f)
    os.replace(tmp, path)
