#!/usr/bin/env bash
# How long a presence change takes to reach a watcher across nodes (issue 21), idle and
# under load: three engine nodes and one nats-server on this box. A watcher subscribes to
# a probe user's presence and the probe logs in and leaves (with a close frame) ROUNDS
# times, timed by benches/tools/presence_latency.py with both clients in one process:
# first on the same node, then with the probe on node a and the watcher on node b. Then
# the same again while the loadgen sends RATE chat messages a second between CONNECTIONS
# users spread over the three nodes. The client needs Python's `websockets`
# (benches/tools/websockets_python.sh).
#
# Knobs (environment): ROUNDS (200), CONNECTIONS (3000), RATE (1000),
# OUT (benches/results/cluster-presence-DATE), BIN_DIR (default: build target/release).
# Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-200}
CONNECTIONS=${CONNECTIONS:-3000}
RATE=${RATE:-1000}
OUT=${OUT:-benches/results/cluster-presence-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
source benches/tools/release_bins.sh

source benches/tools/scratch.sh
source benches/tools/websockets_python.sh
source benches/tools/ports.sh

nats_port=$(free_port)
/usr/sbin/nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" > "$OUT/nats.log" 2>&1 &
pids+=($!)
sleep 1
ports=()
for node in a b c; do
  port=$(free_port)
  # The watcher shares no group with the probe: every user may see every user's presence.
  "$BIN_DIR/engine" --listen "127.0.0.1:$port" --reactors 1 --data-dir "$work/$node" \
    --cluster "nats://127.0.0.1:$nats_port" --node-id "$node" --log-level warn \
    --presence-visibility all > "$OUT/engine-$node.log" 2>&1 &
  pids+=($!)
  ports+=("$port")
done
for port in "${ports[@]}"; do wait_ready "$port"; done

a="ws://127.0.0.1:${ports[0]}/ws"
b="ws://127.0.0.1:${ports[1]}/ws"
probe() {
  echo "== $1"
  timeout 300 "$python" benches/tools/presence_latency.py --login "$a" --watcher "$2" \
    --rounds "$ROUNDS"
}
measure() {
  probe "$1: same node (login on a, watcher on a)" "$a"
  probe "$1: across nodes (login on a, watcher on b)" "$b"
}
exec > >(tee "$OUT/result.txt") 2>&1
measure idle
targets="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
# Long enough to cover both measurements; stopped once they are done.
"$BIN_DIR/loadgen" --target "$targets" --connections "$CONNECTIONS" --ramp-per-sec 5000 \
  --hold-secs 2 --workers 1 --rate "$RATE" --duration-secs 120 --out "$OUT/load" \
  > "$OUT/load.txt" 2>&1 &
loadgen_pid=$!
pids+=("$loadgen_pid")
# The ramp and the hold, then the load is on.
sleep $(( CONNECTIONS / 5000 + 4 ))
measure "under $RATE msg/s between $CONNECTIONS users"
kill -INT "$loadgen_pid" 2> /dev/null || true
wait "$loadgen_pid" 2> /dev/null || true
grep -E "^(sent|undeliverable|delivery latency)" "$OUT/load.txt" || true
