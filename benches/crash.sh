#!/usr/bin/env bash
# Crash test of the durable store: while the loadgen sends to offline users (every message
# is committed before its `queued` ack), `kill -9` the engine; restart it on the same data
# directory; read back every receiver's queue through the HTTP API (draining it) and check
# that every message acknowledged `queued` is there exactly once.
#
# MODE=online: the crash under online load instead. The loadgen's churn scenario (v2
# devices that resume and ack, every sender's receiver online) kills the engine itself
# (`--kill-server-at`); this script restarts it; the devices reconnect and resume, and the
# loadgen fails the run if a message acknowledged `sent` or `queued` never arrived, or
# arrived twice.
#
# Knobs (environment): CONNECTIONS (5000 senders; receivers are lgoff0…N-1), RATE (20000
# msg/s), KILL_AFTER_SECS (3 s into the load), PORT (18590), OUT (target/crash-test),
# MODE (offline, or online).
# Bounded: the load lasts 2 × KILL_AFTER_SECS; exits non-zero on any lost or repeated
# message. Stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-5000}
RATE=${RATE:-20000}
KILL_AFTER_SECS=${KILL_AFTER_SECS:-3}
PORT=${PORT:-18590}
OUT=${OUT:-target/crash-test}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen
rm -rf "$OUT"
mkdir -p "$OUT"
engine=""
trap '[ -n "$engine" ] && kill -9 $engine 2>/dev/null || true' EXIT
start_engine() {
  target/release/engine --listen "127.0.0.1:$PORT" --reactors 2 --data-dir "$OUT/data" \
    --queue-max-per-user 1000000 --log-level warn >> "$OUT/engine.log" 2>&1 &
  engine=$!
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$PORT/health/ready" > /dev/null && return 0
    sleep 0.1
  done
  echo "the engine did not become ready" >&2
  exit 1
}
start_engine
if [ "${MODE:-offline}" = online ]; then
  target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec 10000 \
    --hold-secs 1 --workers 1 --rate "$RATE" --duration-secs $(( 2 * KILL_AFTER_SECS )) \
    --scenario churn --churn-per-min 0 --server-pid "$engine" --kill-server-at "$KILL_AFTER_SECS" \
    --min-held 0 --out "$OUT/load" > "$OUT/load.txt" 2> "$OUT/load.err" &
  loadgen=$!
  while kill -0 "$engine" 2> /dev/null; do sleep 0.05; done
  wait "$engine" 2> /dev/null || true
  echo "the loadgen killed the engine (-9) $KILL_AFTER_SECS s into the load; restarting it"
  start_engine
  status=0
  wait "$loadgen" || status=$?
  grep -E "sent / delivered|ack latency|churn|lost / duplicated" "$OUT/load.txt"
  if [ "$status" -ne 0 ]; then
    echo "FAIL: the loadgen exited $status"; tail -3 "$OUT/load.err"; exit 1
  fi
  echo "PASS: every message acknowledged under online load arrived, none twice"
  exit 0
fi
ramp_secs=$(( CONNECTIONS / 10000 + 2 ))
target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec 10000 \
  --hold-secs 1 --workers 1 --rate "$RATE" --duration-secs $(( 2 * KILL_AFTER_SECS )) \
  --offline-receivers --queued-ids --min-held 0 --out "$OUT/load" > "$OUT/load.txt" 2>&1 &
loadgen=$!
sleep $(( ramp_secs + 1 + KILL_AFTER_SECS ))
kill -9 "$engine"
wait "$engine" 2> /dev/null || true
echo "engine killed (-9) $KILL_AFTER_SECS s into the load"
wait "$loadgen" || true
start_engine
python3 - "$PORT" "$CONNECTIONS" "$OUT/load/queued-ids.txt" <<'PY'
import collections, http.client, json, sys
port, receivers, ids_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
acked = [line for line in open(ids_file).read().split("\n") if line]
found = collections.Counter()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for n in range(receivers):
    while True:
        conn.request("GET", f"/api/messages/queue/lgoff{n}?drain=true")
        answer = conn.getresponse()
        body = json.loads(answer.read())
        if answer.status != 200:
            sys.exit(f"queue of lgoff{n}: HTTP {answer.status} {body}")
        found.update(m["message_id"] for m in body["messages"])
        if not body["more"]:
            break
missing = [i for i in acked if found[i] == 0]
repeated = [i for i, count in found.items() if count > 1]
acked_set = set(acked)
unacked = sum(1 for i in found if i not in acked_set)
print(f"acked queued before the kill: {len(acked)}")
print(f"found in the queues after the restart: {sum(found.values())} ({len(found)} distinct)")
print(f"acked but missing: {len(missing)}")
print(f"found more than once: {len(repeated)}")
print(f"stored but never acked (committed, ack lost in the crash): {unacked}")
if len(acked) == 0:
    sys.exit("nothing was acked before the kill: the test proved nothing")
if missing or repeated:
    sys.exit(f"FAIL: missing {missing[:5]}, repeated {repeated[:5]}")
print("PASS: every message acked queued was kept, none twice")
PY
