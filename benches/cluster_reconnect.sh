#!/usr/bin/env bash
# What a node's reconnect to NATS costs (issue 21; docs/cluster.md, "Gaps" and "A gap
# the stream no longer has"): one engine node and one nats-server on this box, the
# loadgen holding USERS users on the node, each of whom has read its inbox (so the node
# keeps a chain of each user's events). nats-server is stopped and started again on the
# same port and store; the node reconnects, sets its streams up again and reads on for
# every user it holds. The report gives the CPU the node and nats-server spent in the
# SETTLE seconds after the restart, per user held, and how long the node took to be
# ready again. With WEBHOOK=1 the node posts to a local events sink
# (benches/tools/events_sink.py), and the report also counts the presence events posted
# after the restart: since the twenty-third session a node back on NATS checks the users
# it holds again, and reports online again each it held first (docs/cluster.md,
# "Checked again").
#
# Knobs (environment): USERS (20000), SETTLE (20), WEBHOOK (0), OUT (benches/results/
# cluster-reconnect-DATE), BIN_DIR (default: build target/release). Bounded; stops what
# it started.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-20000}
SETTLE=${SETTLE:-20}
WEBHOOK=${WEBHOOK:-0}
OUT=${OUT:-benches/results/cluster-reconnect-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
source benches/tools/release_bins.sh
source benches/tools/scratch.sh
source benches/tools/ports.sh

events="$work/events.txt"
: > "$events"
hook_flags=()
if [ "$WEBHOOK" = 1 ]; then
  sink_port=$(free_port)
  python3 benches/tools/events_sink.py "$sink_port" "$events" &
  pids+=($!)
  hook_flags=(--events-webhook "http://127.0.0.1:$sink_port/events"
    --events-secret "bench-events-secret-0123456789abcdef")
fi
nats_port=$(free_port)
start_nats() {
  /usr/sbin/nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >> "$OUT/nats.log" 2>&1 &
  nats_pid=$!
  pids+=($nats_pid)
}
start_nats
sleep 1
port=$(free_port)
"$BIN_DIR/engine" --listen "127.0.0.1:$port" --reactors 1 --data-dir "$work/a" \
  --cluster "nats://127.0.0.1:$nats_port" --node-id a --log-level warn "${hook_flags[@]}" \
  > "$OUT/engine.log" 2>&1 &
engine_pid=$!
pids+=($engine_pid)
wait_ready "$port"

exec > >(tee "$OUT/result.txt") 2>&1
online() { curl -sf "http://127.0.0.1:$port/api/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["online_users"])'; }
echo "== $USERS users on the node"
"$BIN_DIR/loadgen" --target "127.0.0.1:$port" --connections "$USERS" \
  --hold-secs 600 --rate 0 --out "$work/loadgen" > "$OUT/loadgen.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 1200); do
  [ "$(online)" -ge "$USERS" ] && break
  sleep 0.1
done
echo "online: $(online)"
sleep 2

echo "== nats-server stopped and started again"
kill "$nats_pid"
wait "$nats_pid" 2>/dev/null || true
sleep 1
start_nats
engine_before=$(cpu_ticks "$engine_pid")
restarted=$(date +%s.%N)
nats_before=$(cpu_ticks "$nats_pid")
wait_ready "$port" 600
ready=$(date +%s.%N)
sleep "$SETTLE"
hz=$(getconf CLK_TCK)
python3 - "$USERS" "$(( $(cpu_ticks "$engine_pid") - engine_before ))" \
  "$(( $(cpu_ticks "$nats_pid") - nats_before ))" "$hz" "$restarted" "$ready" "$SETTLE" \
  "$WEBHOOK" "$events" <<'PY'
import sys
users, engine_ticks, nats_ticks, hz = (int(v) for v in sys.argv[1:5])
restarted, ready, settle = float(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
webhook, events = sys.argv[8] == "1", sys.argv[9]
print(f"ready again {ready - restarted:.2f} s after nats-server started")
print(f"CPU in the {settle} s after: node {engine_ticks / hz:.2f} s, nats-server {nats_ticks / hz:.2f} s"
      f" ({engine_ticks / hz / users * 1e6:.0f} and {nats_ticks / hz / users * 1e6:.0f} us a user held)")
if webhook:
    lines = [line.split() for line in open(events)]
    before = sum(1 for at, kind, *_ in lines if float(at) < restarted and kind == "user_online")
    after = [(float(at), kind) for at, kind, *_ in lines if float(at) >= restarted]
    onlines = [at for at, kind in after if kind == "user_online"]
    offlines = sum(1 for _, kind in after if kind == "user_offline")
    last = f", the last {max(onlines) - restarted:.2f} s after the start" if onlines else ""
    print(f"events: {before} user_online before the restart; after it {len(onlines)} user_online"
          f"{last}, {offlines} user_offline")
PY
