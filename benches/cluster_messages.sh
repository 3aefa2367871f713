#!/usr/bin/env bash
# Chat messages through a cluster against one node (issue 21): the same open-loop load from
# the loadgen, first on one engine alone (its inboxes in its own file), then on three nodes
# and NATS (inboxes in JetStream), with the connections spread over the nodes
# (`--target a,b,c`, so 2/3 of the messages cross nodes). Reports each run's delivery and
# ack percentiles (the loadgen's), and the CPU each process used per message, each NATS
# server's too.
#
# Knobs (environment): CONNECTIONS (3000), RATE (5000), DURATION_SECS (20), NODES (3),
# NATS_SERVERS (1; more make a NATS cluster of as many servers), SHARDS (1: the nodes'
# --cluster-shards), REPLICAS (1: their --cluster-replicas), OUT (benches/results/cluster-messages-DATE), BIN_DIR (default: build
# target/release). Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-3000}
RATE=${RATE:-5000}
DURATION_SECS=${DURATION_SECS:-20}
NODES=${NODES:-3}
NATS_SERVERS=${NATS_SERVERS:-1}
SHARDS=${SHARDS:-1}
REPLICAS=${REPLICAS:-1}
OUT=${OUT:-benches/results/cluster-messages-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
source benches/tools/release_bins.sh

source benches/tools/scratch.sh
source benches/tools/ports.sh
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
  for pid in "${ids_[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  "$@"
  local i=0
  for pid in "${ids_[@]}"; do
    echo "cpu ${labels_[$i]}: $(( ($(cpu_ticks "$pid") - ${before[$i]}) * 10 )) ms over the whole run (ramp, hold, load)"
    i=$((i + 1))
  done
}

# In this shell, not a pipeline's subshell: the trap then stops everything started here.
exec > >(tee "$OUT/result.txt") 2>&1
echo "== one node alone: $CONNECTIONS connections, $RATE msg/s for $DURATION_SECS s"
port=$(free_port)
start_node alone "$port"
wait_ready "$port" 300
alone_names=(node)
alone_pids=("${pids[0]}")
cpu_of alone_names alone_pids load alone "127.0.0.1:$port" "${pids[0]}"
stop_all

echo "== $NODES nodes and $NATS_SERVERS nats-server(s), $SHARDS shard(s), $REPLICAS replica(s), connections spread over the nodes"
names=()
monitor_ports=()
nats_urls=""
routes=""
route_ports=()
for s in $(seq 1 "$NATS_SERVERS"); do
  route_ports+=("$(free_port)")
  routes="${routes:+$routes,}nats://127.0.0.1:${route_ports[-1]}"
done
for s in $(seq 1 "$NATS_SERVERS"); do
  nats_port=$(free_port)
  cluster_flags=()
  if [ "$NATS_SERVERS" -gt 1 ]; then
    monitor_ports+=("$(free_port)")
    cluster_flags=(-m "${monitor_ports[-1]}" --server_name "s$s" --cluster_name chat
      --cluster "nats://127.0.0.1:${route_ports[$((s - 1))]}" --routes "$routes")
  fi
  # The same max_file_store on every server: nats-server 2.9 puts a new one-copy stream
  # on the server with the most room, and shuffles only among equals (tuning/cluster.md).
  printf 'jetstream { store_dir: "%s", max_file_store: 10G }\n' "$work/nats-s$s" > "$work/nats-s$s.conf"
  /usr/sbin/nats-server -c "$work/nats-s$s.conf" -a 127.0.0.1 -p "$nats_port" \
    "${cluster_flags[@]}" > "$OUT/nats-s$s.log" 2>&1 &
  pids+=($!)
  names+=("nats-server-s$s")
  nats_urls="${nats_urls:+$nats_urls,}nats://127.0.0.1:$nats_port"
done
nats_pid=${pids[0]}
sleep 1
targets=""
for n in $(seq 1 "$NODES"); do
  port=$(free_port)
  start_node "n$n" "$port" --cluster "$nats_urls" --node-id "n$n" \
    --cluster-shards "$SHARDS" --cluster-replicas "$REPLICAS"
  targets="${targets:+$targets,}127.0.0.1:$port"
  names+=("node-n$n")
done
# A NATS cluster elects JetStream's leaders before the nodes can make their streams.
for target in ${targets//,/ }; do wait_ready "${target##*:}" 300; done
all_pids=("${pids[@]}")
# The loadgen's "server cpu" is the first nats-server's here.
cpu_of names all_pids load cluster "$targets" "$nats_pid"
# Where JetStream put the streams (with one replica, each lives on one server).
for s in "${!monitor_ports[@]}"; do
  curl -s "http://127.0.0.1:${monitor_ports[$s]}/jsz?accounts=true&streams=true" | python3 -c '
import json, sys
names = [s["name"] for a in json.load(sys.stdin).get("account_details", []) for s in a.get("stream_detail", [])]
print("streams on nats-server-s'"$((s + 1))"':", len(names), " ".join(sorted(names)))'
done
