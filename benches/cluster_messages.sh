#!/usr/bin/env bash
# Chat messages through a cluster against one node (issue 21): the same open-loop load from
# the loadgen, first on one engine alone (its inboxes in its own file), then on three nodes
# and one nats-server (inboxes in JetStream), with the connections spread over the nodes
# (`--target a,b,c`, so 2/3 of the messages cross nodes). Reports each run's delivery and
# ack percentiles (the loadgen's), and the CPU each process used per message.
#
# Knobs (environment): CONNECTIONS (3000), RATE (5000), DURATION_SECS (20), NODES (3),
# OUT (benches/results/cluster-messages-DATE), BIN_DIR (default: build target/release).
# Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-3000}
RATE=${RATE:-5000}
DURATION_SECS=${DURATION_SECS:-20}
NODES=${NODES:-3}
OUT=${OUT:-benches/results/cluster-messages-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -p engine -p loadgen
  BIN_DIR=target/release
fi
ulimit -n "$(ulimit -Hn)"

source benches/tools/scratch.sh
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_ready() {
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$1/health/ready" > /dev/null && return 0
    sleep 0.1
  done
  echo "node on port $1 never ready" >&2
  return 1
}
# Starts engine node $1 on port $2 (extra flags after them).
start_node() {
  local name=$1 port=$2; shift 2
  "$BIN_DIR/engine" --listen "127.0.0.1:$port" --reactors 1 --data-dir "$work/$name" \
    --log-level warn "$@" > "$OUT/engine-$name.log" 2>&1 &
  pids+=($!)
}
# The loadgen against comma-separated targets; its report in $OUT/$1.txt.
load() {
  local run=$1 targets=$2 server_pid=$3
  "$BIN_DIR/loadgen" --target "$targets" --connections "$CONNECTIONS" --ramp-per-sec 5000 \
    --hold-secs 2 --workers 1 --rate "$RATE" --duration-secs "$DURATION_SECS" \
    --server-pid "$server_pid" --out "$OUT/$run" > "$OUT/$run.txt" 2>&1 || true
  grep -E "^(target|sent|undeliverable|delivery latency|ack latency|server cpu|loadgen cpu)" "$OUT/$run.txt"
}
# CPU ms of each pid over the run of "$@".
cpu_of() {
  local -n labels_=$1 ids_=$2; shift 2
  local before=()
  for pid in "${ids_[@]}"; do before+=("$(ticks "$pid")"); done
  "$@"
  local i=0
  for pid in "${ids_[@]}"; do
    echo "cpu ${labels_[$i]}: $(( ($(ticks "$pid") - ${before[$i]}) * 10 )) ms over the whole run (ramp, hold, load)"
    i=$((i + 1))
  done
}

# In this shell, not a pipeline's subshell: the trap then stops everything started here.
exec > >(tee "$OUT/result.txt") 2>&1
echo "== one node alone: $CONNECTIONS connections, $RATE msg/s for $DURATION_SECS s"
port=$(free_port)
start_node alone "$port"
wait_ready "$port"
alone_names=(node)
alone_pids=("${pids[0]}")
cpu_of alone_names alone_pids load alone "127.0.0.1:$port" "${pids[0]}"
stop_all

echo "== $NODES nodes and one nats-server, connections spread over the nodes"
nats_port=$(free_port)
/usr/sbin/nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" > "$OUT/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
sleep 1
targets=""
names=(nats-server)
for n in $(seq 1 "$NODES"); do
  port=$(free_port)
  start_node "n$n" "$port" --cluster "nats://127.0.0.1:$nats_port" --node-id "n$n"
  targets="${targets:+$targets,}127.0.0.1:$port"
  names+=("node-n$n")
done
for target in ${targets//,/ }; do wait_ready "${target##*:}"; done
all_pids=("${pids[@]}")
# The loadgen's "server cpu" is nats-server's here.
cpu_of names all_pids load cluster "$targets" "$nats_pid"
