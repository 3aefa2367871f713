#!/usr/bin/env bash
# Broadcast fan-out at scale: the loadgen holds CONNECTIONS authenticated users, then
# `POST /api/messages/broadcast {"all": true}` is sent REPS times. For each it reports the
# time until the API answered (every home has handed its users' frames to their reactors)
# and, from the engine's routing-latency histogram in /metrics, the time until the last
# member's frame was queued on its socket (to the histogram's power-of-two resolution).
#
# The engine and the loadgen are set up as for the other scale runs
# (benches/tools/scale_setup.sh: kernel tuning as root, reverted at the end; sockets as io_uring
# direct descriptors on one reactor per core where the kernel has them, else fd tables).
#
# Knobs (environment): CONNECTIONS (100000), REPS (3), PORT (18380), OUT
# (target/broadcast), SOCKETS and REACTORS (as million.sh), BIN_DIR, ENGINE_ARGS (extra
# engine flags, split on spaces). Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-100000}
REPS=${REPS:-3}
PORT=${PORT:-18380}
OUT=${OUT:-target/broadcast}
mkdir -p "$OUT"
source benches/tools/scale_setup.sh broadcast

data_dir="target/broadcast-data-$$"
rm -rf "$data_dir"
loadgen=""
trap 'kill ${loadgen:-} 2>/dev/null || true; cleanup; rm -rf "$data_dir"' EXIT
# shellcheck disable=SC2086 # the extra flags are split on purpose
"$BIN_DIR/engine" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --sockets "$SOCKETS" \
  --auth-timeout-ms 120000 --idle-timeout-ms 0 --data-dir "$data_dir" \
  --log-level warn ${ENGINE_ARGS:-} > "$OUT/engine.log" 2>&1 &
engine_pid=$!
sleep 1
ramp_secs=$(( CONNECTIONS / 10000 + 60 ))
hold=$(( ramp_secs + REPS * 70 + 30 ))
timeout --signal=INT "$(( hold + 120 ))" "$BIN_DIR/loadgen" --target "127.0.0.1:$PORT" \
  --connections "$CONNECTIONS" --ramp-per-sec 10000 --hold-secs "$hold" --workers "$REACTORS" \
  --sockets "$SOCKETS" --connect-timeout-secs 60 --out "$OUT" > "$OUT/loadgen.txt" 2> /dev/null &
loadgen=$!

online() { curl -s "127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics"]["online_users"])'; }
for _ in $(seq "$ramp_secs"); do
  [ "$(online)" -ge "$CONNECTIONS" ] && break
  sleep 1
done
echo "broadcast.sh: $(online) users online on $REACTORS reactors; broadcasting to all $REPS times"
sleep 5  # let the loadgen's ping sweep finish

python3 - "$PORT" "$REPS" "$OUT/results.json" <<'EOF'
import json, sys, time, urllib.request

port, reps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = f"http://127.0.0.1:{port}"

def histogram():
    """Summed routing-latency buckets: [(upper bound in s, cumulative count)]."""
    text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("engine_routing_latency_seconds_bucket"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="')[1].rstrip('"}')
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0) + int(value)
    return sorted(buckets.items())

def quantile(delta, q):
    total = delta[-1][1]
    for bound, count in delta:
        if count >= q * total:
            return bound
    return float("inf")

runs = []
for rep in range(reps):
    before = histogram()
    body = json.dumps({"message": {"sender_id": "ops", "text": f"broadcast {rep}"}, "all": True}).encode()
    request = urllib.request.Request(f"{base}/api/messages/broadcast", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    started = time.monotonic()
    answer = json.load(urllib.request.urlopen(request, timeout=60))
    answered_ms = (time.monotonic() - started) * 1000
    # Until the histogram has every member's frame (at most 60 s).
    deadline = time.monotonic() + 60
    while True:
        after = histogram()
        delta = [(b, a - c) for (b, a), (_, c) in zip(after, before)]
        if delta[-1][1] >= answer["delivered"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    run = {"delivered": answer["delivered"], "answered_ms": round(answered_ms, 1),
           "p50_queued_ms_at_most": quantile(delta, 0.5) * 1000,
           "last_queued_ms_at_most": quantile(delta, 1.0) * 1000,
           "frames_timed": delta[-1][1]}
    runs.append(run)
    print(f"broadcast {rep + 1}: {run}")
    time.sleep(2)
json.dump(runs, open(out, "w"), indent=2)
EOF
kill -INT "$loadgen" 2>/dev/null || true
wait "$loadgen" 2>/dev/null || true
