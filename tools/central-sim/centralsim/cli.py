"""Command line of central-sim. Exit codes follow omniedge's: 0 ok, 1 failure found (lost events,
ok=false), 2 usage or input error, 3 peer not reachable (broker, no command result in time)."""

import argparse
import base64
import json
import logging
import os
import sys
import threading
import uuid

from . import VERSION

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    pass


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None


def _json_arg(name: str, text: str):
    """A JSON option value; '@FILE' reads it from FILE."""
    if text.startswith("@"):
        text = _read_input(text[1:]).decode("utf-8")
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"{name}: not JSON: {e}") from None


# --- subcommands ------------------------------------------------------------------------------

def cmd_serve(args) -> int:
    from . import server
    if not args.mqtt and not args.https_listen:
        raise UsageError("serve needs --mqtt URL and/or --https-listen HOST:PORT")
    if args.https_listen and not (args.cert_dir or args.server_cert):
        raise UsageError("--https-listen needs --cert-dir DIR (or --server-cert/--server-key)")
    return server.serve(args)


def cmd_report(args) -> int:
    from . import report
    if not os.path.exists(args.db):
        raise UsageError(f"--db {args.db}: no such file")
    return report.run_report(args)


def cmd_verify(args) -> int:
    from . import report
    if not os.path.exists(args.db):
        raise UsageError(f"--db {args.db}: no such file")
    return report.run_verify(args)


def _profiles_doc(raw: bytes):
    """{"upserts": [...], "deletes": [...], "cursor": ...} from an R/profiles message, a JSON
    array of profiles or JSON Lines of profiles; checked like the agent will."""
    text = raw.decode("utf-8")
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            doc = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as e:
            raise UsageError(f"profiles: neither JSON nor JSON Lines: {e}") from None
    if isinstance(doc, list):
        doc = {"upserts": doc, "deletes": []}
    if not isinstance(doc, dict):
        raise UsageError("profiles: expected an object, an array or JSON Lines")
    upserts, deletes = doc.get("upserts", []), doc.get("deletes", [])
    if not isinstance(upserts, list):
        raise UsageError("upserts: must be an array of profiles")
    if not isinstance(deletes, list) or not all(isinstance(d, str) for d in deletes):
        raise UsageError("deletes: must be an array of keys (strings)")
    for i, p in enumerate(upserts):
        if not isinstance(p, dict) or not isinstance(p.get("id"), str) or not p["id"]:
            raise UsageError(f"upserts[{i}].id: missing or not a string")
        keys = p.get("keys")
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise UsageError(f"upserts[{i}].keys: must be a non-empty array of strings")
    return doc


def cmd_profiles_publish(args) -> int:
    from . import mqttc
    doc = _profiles_doc(_read_input(args.file))
    if args.cursor is not None:
        doc["cursor"] = args.cursor
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    topic = f"{mqttc.root(args.tenant, args.store)}/profiles"
    s = mqttc.Session(args, f"central-sim-cli-{uuid.uuid4().hex[:12]}")
    try:
        s.publish(topic, data)
    finally:
        s.close()
    print(json.dumps({"topic": topic, "upserts": len(doc.get("upserts", [])),
                      "deletes": len(doc.get("deletes", []))}))
    return EXIT_OK


def cmd_profiles_load(args) -> int:
    from . import db
    doc = _profiles_doc(_read_input(args.file))
    database = db.Database(args.db)
    up, deleted = database.load_profiles(doc.get("upserts", []), doc.get("deletes", []),
                                         args.store or "*")
    database.close()
    print(json.dumps({"loaded": up, "deleted": deleted, "scope": args.store or "*"}))
    return EXIT_OK


def cmd_keygen(args) -> int:
    from . import pki
    print(json.dumps(pki.keygen(args.out, args.name)))
    return EXIT_OK


def cmd_sign(args) -> int:
    from . import pki
    key = pki.load_signing_key(args.key)
    print(json.dumps(pki.envelope(_read_input(args.file), key)))
    return EXIT_OK


def cmd_config(args) -> int:
    from . import mqttc, pki
    topic = (f"{mqttc.TOPIC_PREFIX}/{args.tenant}/all/config/desired" if args.all
             else f"{mqttc.root(args.tenant, args.store)}/config/desired")
    if args.clear:
        data = b""
    else:
        if args.version is None or args.settings is None:
            raise UsageError("config needs --version N and --settings JSON (or --clear)")
        settings = _json_arg("--settings", args.settings)
        if not isinstance(settings, dict):
            raise UsageError("--settings: must be a JSON object")
        document = pki.config_document(args.version, settings, args.expires_at)
        if args.unsigned:
            data = document
        else:
            if not args.key:
                raise UsageError("config needs --key PRIV (or --unsigned)")
            key = pki.load_signing_key(args.key)
            env = pki.envelope(document, key)
            if args.tamper is not None:
                # Signed as above, but the document carried is another one.
                if args.tamper == "":
                    carried = document.replace(b"{", b"{ ", 1)
                else:
                    ts = _json_arg("--tamper", args.tamper)
                    carried = pki.config_document(args.version, ts, args.expires_at)
                env["document"] = base64.b64encode(carried).decode("ascii")
            data = json.dumps(env).encode("utf-8")
    s = mqttc.Session(args, f"central-sim-cli-{uuid.uuid4().hex[:12]}")
    try:
        s.publish(topic, data, retain=True)
    finally:
        s.close()
    print(json.dumps({"topic": topic, "retained": True,
                      "payload": data.decode("utf-8")}))
    return EXIT_OK


def cmd_publish(args) -> int:
    from . import mqttc
    data = b"" if args.empty else _read_input(args.file)
    s = mqttc.Session(args, f"central-sim-cli-{uuid.uuid4().hex[:12]}")
    try:
        s.publish(args.topic, data, retain=args.retain, qos=args.qos)
    finally:
        s.close()
    print(json.dumps({"topic": args.topic, "bytes": len(data), "retained": args.retain}))
    return EXIT_OK


def cmd_cmd(args) -> int:
    from . import mqttc
    cmd_args = _json_arg("--args", args.args) if args.args else {}
    if not isinstance(cmd_args, dict):
        raise UsageError("--args: must be a JSON object")
    cid = args.id or str(uuid.uuid4())
    root = mqttc.root(args.tenant, args.store)
    got = threading.Event()
    result = {}

    def on_result(msg):
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("id") == cid and not got.is_set():
            result["doc"] = doc
            got.set()

    s = mqttc.Session(args, f"central-sim-cli-{uuid.uuid4().hex[:12]}")
    try:
        if args.wait > 0:
            s.subscribe(f"{root}/cmd/result", on_result)
        s.publish(f"{root}/cmd", json.dumps({"id": cid, "name": args.name,
                                             "args": cmd_args}).encode("utf-8"))
        if args.wait <= 0:
            print(json.dumps({"id": cid, "published": True}))
            return EXIT_OK
        if not got.wait(args.wait):
            print(f"central-sim cmd: no result for command {cid} ({args.name}) on "
                  f"{root}/cmd/result within {args.wait:g} s", file=sys.stderr)
            return EXIT_UNREACHABLE
    finally:
        s.close()
    doc = result["doc"]
    print(json.dumps(doc))
    return EXIT_OK if doc.get("ok") is True else EXIT_FAILED


def cmd_certs(args) -> int:
    from . import pki
    stores = [s for s in args.stores.split(",") if s]
    print(json.dumps(pki.make_certs(args.out, stores, args.days), indent=2))
    return EXIT_OK


def cmd_fail(args) -> int:
    from . import faults
    if args.clear:
        rules = []
    else:
        if args.status is None and not args.delay and not args.close:
            raise UsageError("fail needs --status S, --delay T, --close or --clear")
        rule = {"match": args.match, "count": args.count, "delay": args.delay,
                "close": args.close, "process": args.process}
        if args.method:
            rule["method"] = args.method
        if args.status is not None:
            rule["status"] = args.status
        if args.retry_after is not None:
            rule["retry_after"] = args.retry_after
        rules = [rule]
        if args.append and os.path.exists(args.fail_file):
            with open(args.fail_file, encoding="utf-8") as f:
                old = json.load(f)
            rules = faults.validate(old) + rules
            for r in rules:
                r.pop("used", None)
    try:
        faults.write_file(args.fail_file, rules)
    except faults.FaultError as e:
        raise UsageError(str(e)) from None
    print(json.dumps({"fail_file": args.fail_file, "rules": rules}))
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from . import mqttc
    p = argparse.ArgumentParser(
        prog="central-sim",
        description="omniedge's reference central service: consumes batches over MQTT and "
                    "HTTPS, reports per store and checks for gaps; publishes profiles, signed "
                    "config and commands; makes its own certificates. See README.md.")
    p.add_argument("--version", action="version", version=f"central-sim {VERSION}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("serve", help="consume batches (MQTT and HTTPS) into --db and serve "
                                     "the HTTPS endpoints")
    mqttc.add_arguments(s, required=False)
    s.add_argument("--db", required=True, help="the centre's SQLite file (created if missing)")
    s.add_argument("--client-id", default="omniedge-central-sim",
                   help="MQTT client id of the persistent session (default %(default)s)")
    s.add_argument("--https-listen", metavar="HOST:PORT",
                   help="serve HTTPS here (port 0: any free port, see --port-file)")
    s.add_argument("--cert-dir", help="server.crt/server.key (and ca.crt, crl.pem for --mtls); "
                                      "made with `certs` when server.crt is missing")
    s.add_argument("--server-cert", help="server certificate (default CERT_DIR/server.crt)")
    s.add_argument("--server-key", help="server key (default CERT_DIR/server.key)")
    s.add_argument("--client-ca", help="require client certificates signed by this CA")
    s.add_argument("--crl", help="refuse client certificates this CRL revokes")
    s.add_argument("--mtls", action="store_true",
                   help="shorthand for --client-ca CERT_DIR/ca.crt --crl CERT_DIR/crl.pem")
    s.add_argument("--check-store-cn", action="store_true",
                   help="answer 403 unless the client certificate's CN is the path's store id")
    s.add_argument("--https-tenant", default="default",
                   help="tenant recorded for HTTPS batches (the path has none; default "
                        "%(default)s)")
    s.add_argument("--fail-file", help="failure-injection rules, re-read when it changes")
    s.add_argument("--port-file", help="write the HTTPS port here once ready")
    s.add_argument("--ready-file", help="write {\"pid\", \"https_port\"} here once subscribed "
                                        "and listening")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("report", help="per store: events, duplicates, uplinks, status, gaps")
    s.add_argument("--db", required=True)
    s.add_argument("--store", help="only this store (STORE or TENANT/STORE)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("verify", help="lost / duplicated / reordered against the accepted ids; "
                                      "exit 0 only when nothing is lost")
    s.add_argument("--db", required=True)
    s.add_argument("--accepted", required=True, metavar="FILE.jsonl",
                   help="one JSON per line: {\"id\" or \"key\", \"source\"?, \"n\"?} or "
                        "{\"ids\": [...], ...} ('-': stdin)")
    s.add_argument("--store", help="gap check only for this store (STORE or TENANT/STORE)")
    s.add_argument("--show", type=int, default=20, help="ids to list in text output")
    s.add_argument("--json", action="store_true")
    s.add_argument("--json-out", metavar="FILE",
                   help="also write the JSON verdict to FILE (the text still goes to stdout)")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("profiles", help="publish profiles on R/profiles, or load the HTTPS "
                                        "snapshot")
    psub = s.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    pp = psub.add_parser("publish", help="publish an R/profiles message (QoS 1)")
    mqttc.add_arguments(pp)
    pp.add_argument("--tenant", required=True)
    pp.add_argument("--store", required=True)
    pp.add_argument("--cursor", help="set the message's cursor")
    pp.add_argument("file", metavar="FILE|-")
    pp.set_defaults(func=cmd_profiles_publish)
    pl = psub.add_parser("load", help="add profiles to the snapshot served over HTTPS")
    pl.add_argument("--db", required=True)
    pl.add_argument("--store", help="only for this store (default: every store)")
    pl.add_argument("file", metavar="FILE|-")
    pl.set_defaults(func=cmd_profiles_load)

    s = sub.add_parser("keygen", help="an Ed25519 key pair for signed config")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--name", default="signing", help="file names NAME.key, NAME.pub")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("sign", help="print the signed envelope of a document's exact bytes")
    s.add_argument("--key", required=True, metavar="PRIV")
    s.add_argument("file", metavar="FILE|-")
    s.set_defaults(func=cmd_sign)

    s = sub.add_parser("config", help="publish a (signed) config, retained, on "
                                      "R/config/desired or TENANT/all/config/desired")
    mqttc.add_arguments(s)
    s.add_argument("--tenant", required=True)
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--store")
    where.add_argument("--all", action="store_true", help="every store of the tenant")
    s.add_argument("--key", metavar="PRIV", help="Ed25519 private key (PEM)")
    s.add_argument("--version", type=int, dest="version")
    s.add_argument("--settings", metavar="JSON", help="the settings object ('@FILE' reads it)")
    s.add_argument("--expires-at", metavar="RFC3339")
    s.add_argument("--unsigned", action="store_true", help="publish the bare document")
    s.add_argument("--tamper", nargs="?", const="", metavar="JSON",
                   help="sign the document, then carry another: with JSON, the same document "
                        "with these settings; without, the same bytes with one space added")
    s.add_argument("--clear", action="store_true", help="remove the retained config")
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("cmd", help="send a command on R/cmd and wait for its R/cmd/result")
    mqttc.add_arguments(s)
    s.add_argument("--tenant", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("name", help="flush, ping, resync-profiles, set-log-level, diagnostics, ...")
    s.add_argument("--args", metavar="JSON", help="the command's args object")
    s.add_argument("--id", help="command id (default: a random UUID)")
    s.add_argument("--wait", type=float, default=10.0,
                   help="seconds to wait for the result (0: do not wait); default %(default)s")
    s.set_defaults(func=cmd_cmd)

    s = sub.add_parser("publish", help="publish raw bytes on any topic (replays, bad payloads)")
    mqttc.add_arguments(s)
    s.add_argument("--topic", required=True)
    s.add_argument("--retain", action="store_true")
    s.add_argument("--qos", type=int, choices=[0, 1], default=1)
    s.add_argument("--empty", action="store_true", help="a zero-length payload (clears a "
                                                        "retained message with --retain)")
    s.add_argument("file", metavar="FILE|-", nargs="?", default="-")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("certs", help="make a test PKI: CA, server, clients, and bad ones")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--stores", default="store-1", help="comma-separated store ids that get a "
                                                       "client certificate (default %(default)s)")
    s.add_argument("--days", type=int, default=30)
    s.set_defaults(func=cmd_certs)

    s = sub.add_parser("fail", help="write a failure-injection rule for `serve --fail-file`")
    s.add_argument("--fail-file", required=True)
    s.add_argument("--status", type=int, help="answer with this HTTP status")
    s.add_argument("--delay", type=float, default=0, help="wait this many seconds first")
    s.add_argument("--close", action="store_true", help="close the connection, no answer")
    s.add_argument("--count", type=int, default=1, help="requests it takes (-1: all)")
    s.add_argument("--match", default="", help="only paths containing this")
    s.add_argument("--method")
    s.add_argument("--retry-after", type=int)
    s.add_argument("--process", action="store_true",
                   help="store the batch anyway, then answer --status")
    s.add_argument("--append", action="store_true", help="add to the rules instead of "
                                                         "replacing them")
    s.add_argument("--clear", action="store_true", help="no more failures")
    s.set_defaults(func=cmd_fail)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s central-sim %(levelname)s %(message)s")
    from . import faults, mqttc, pki
    try:
        return args.func(args)
    except UsageError as e:
        print(f"central-sim {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except pki.PkiError as e:
        print(f"central-sim {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except faults.FaultError as e:
        print(f"central-sim {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except mqttc.MqttError as e:
        print(f"central-sim {args.command}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokenPipeError:
        return EXIT_OK
