#!/usr/bin/env bash
# bench_sub, the subscriber whose count is every end-to-end and drain figure in
# docs/benchmarks.md, counts each distinct id once: a real mosquitto on a free port, real
# publishes (mosquitto_pub), plain JSON and gzip. It keeps canonical UUIDs in a flat table of
# their 16 bytes and anything else as strings; this checks duplicates within and across
# messages, an upper-case UUID (another id to the agent), the nil UUID, an id that is not a
# UUID, and a table that grows while a message is counted.
# Usage: bench_sub_check.sh BUILD_DIR
set -euo pipefail
build=$1
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port=$("$build/bench/bench_launch" --free-port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n' "$port" >"$work/m.conf"
mosquitto -c "$work/m.conf" >"$work/m.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "running" "$work/m.log" 2>/dev/null && break
  sleep 0.1
done

# A: 6 ids in one plain message, 4 distinct (the first UUID twice, "abc" twice).
"$build/bench/bench_sub" --url "tcp://127.0.0.1:$port" --topic a --expect 4 --timeout 20 \
  --ready "$work/a.ready" >"$work/a.txt" 2>"$work/a.err" &
pa=$!
pids+=($pa)
# B: 3,100 ids in one gzip message, 3,000 distinct; --expect 1030 sizes the table at 4,096 slots,
# which must grow to take them.
"$build/bench/bench_sub" --url "tcp://127.0.0.1:$port" --topic b --expect 1030 --timeout 20 \
  --ready "$work/b.ready" >"$work/b.txt" 2>"$work/b.err" &
pb=$!
pids+=($pb)
for _ in $(seq 100); do
  [ -e "$work/a.ready" ] && [ -e "$work/b.ready" ] && break
  sleep 0.1
done
[ -e "$work/a.ready" ] && [ -e "$work/b.ready" ] || { echo "bench_sub did not subscribe"; cat "$work"/*.err "$work/m.log"; exit 1; }

u=0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b
mosquitto_pub -p "$port" -t a -q 1 -m "[{\"id\":\"$u\",\"type\":\"kiosk.view\"},{\"id\":\"$u\"},{\"id\":\"${u^^}\"},{\"id\":\"abc\"},{\"id\":\"abc\"},{\"id\":\"00000000-0000-0000-0000-000000000000\"}]"
python3 - "$work/b.json" <<'PY'
import json, sys, uuid
ids = [str(uuid.UUID(int=(0x0190A1B2C3D47E5F << 64) | (i * 0x9E3779B97F4A7C15 % (1 << 62)) | (2 << 62))) for i in range(1, 3001)]
with open(sys.argv[1], "w") as f:
    json.dump({"events": [{"id": i} for i in ids + ids[::30]]}, f, separators=(",", ":"))
PY
gzip -c "$work/b.json" >"$work/b.json.gz"
mosquitto_pub -p "$port" -t b -q 1 -f "$work/b.json.gz"

rc=0
wait "$pa" || rc=$?
[ "$rc" = 0 ] || { echo "bench_sub A exited $rc"; cat "$work/a.txt" "$work/a.err"; exit 1; }
rc=0
wait "$pb" || rc=$?
[ "$rc" = 0 ] || { echo "bench_sub B exited $rc"; cat "$work/b.txt" "$work/b.err"; exit 1; }
# RESULT sub <distinct> <messages> <events_with_dups> ...
read -r _ _ a_distinct a_messages a_events _ <"$work/a.txt"
read -r _ _ b_distinct b_messages b_events _ <"$work/b.txt"
fail=0
[ "$a_distinct $a_messages $a_events" = "4 1 6" ] || { echo "plain message: distinct/messages/events $a_distinct/$a_messages/$a_events, expected 4/1/6"; fail=1; }
[ "$b_distinct $b_messages $b_events" = "3000 1 3100" ] || { echo "gzip message: distinct/messages/events $b_distinct/$b_messages/$b_events, expected 3000/1/3100"; fail=1; }
[ "$fail" = 0 ] || exit 1
echo "bench_sub counted 4 of 6 ids (plain) and 3000 of 3100 (gzip, its table grown) as distinct"
