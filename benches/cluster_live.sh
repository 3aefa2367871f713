#!/usr/bin/env bash
# What a hop between nodes costs a live event (issue 21): two engine nodes and one
# nats-server on this box; EVENTS call signals at RATE a second from a client on node a to
# a client on node a (same node), then to a client on node b (across NATS), timed by
# benches/tools/live_latency.py with both clients in one process (one clock). Also the
# CPU each process used per event. One client sends them all, so the nodes run with
# `--message-pace 0` (the default reads a connection at 100 messages a second). The client
# needs Python's `websockets`: without it, a venv in target/peers/venv gets it from the
# registry (as compare.sh's Python peer does).
#
# Knobs (environment): EVENTS (20000), RATE (2000), OUT (benches/results/cluster-live-DATE),
# BIN_DIR (default: build target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-20000}
RATE=${RATE:-2000}
OUT=${OUT:-benches/results/cluster-live-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -p engine
  BIN_DIR=target/release
fi

source benches/tools/scratch.sh
source benches/tools/websockets_python.sh
source benches/tools/ports.sh

nats_port=$(free_port)
/usr/sbin/nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" > "$OUT/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
sleep 1
ports=()
for node in a b; do
  port=$(free_port)
  "$BIN_DIR/engine" --listen "127.0.0.1:$port" --reactors 1 --data-dir "$work/$node" \
    --cluster "nats://127.0.0.1:$nats_port" --node-id "$node" --log-level warn \
    --message-pace 0 > "$OUT/engine-$node.log" 2>&1 &
  pids+=($!)
  ports+=("$port")
done
node_a_pid=${pids[1]}
node_b_pid=${pids[2]}
for port in "${ports[@]}"; do wait_ready "$port"; done

a="ws://127.0.0.1:${ports[0]}/ws"
b="ws://127.0.0.1:${ports[1]}/ws"
measure() {
  timeout 600 "$python" benches/tools/live_latency.py --sender "$a" --receiver "$1" \
    --events "$EVENTS" --rate "$RATE" --pid "node-a=$node_a_pid" --pid "node-b=$node_b_pid" \
    --pid "nats=$nats_pid"
}
# nats-server's own CPU with the two nodes idle (heartbeats, the node bucket's watches),
# over as long as one measurement takes: the baseline for its per-event figures.
idle_secs=$(( EVENTS / RATE ))
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
before=$(ticks "$nats_pid"); sleep "$idle_secs"; after=$(ticks "$nats_pid")
{
  echo "== idle: nats-server used $(( (after - before) * 10 )) ms of CPU in ${idle_secs} s (clock ticks of 10 ms)"
  echo "== same node (a to a)"
  measure "$a"
  echo "== across nodes (a to b, through nats-server)"
  measure "$b"
} | tee "$OUT/result.txt"
