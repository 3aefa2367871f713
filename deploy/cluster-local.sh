#!/usr/bin/env bash
# Three gateway nodes and one nats-server (JetStream) on this machine, for trying the
# cluster (docs/cluster.md): nodes gw-1..gw-3 on ports 8081..8083, NATS on 4222, its
# monitoring on 8222. Ctrl-C (or SIGTERM) stops the nodes with SIGTERM, so each leaves
# the cluster, then NATS. Logs and data go to a temporary directory, removed at the end.
#
# usage: bash deploy/cluster-local.sh            (builds the engine in release first)
#        ENGINE=path/to/engine bash deploy/cluster-local.sh
# Knobs: NODES (3), FIRST_PORT (8081), NATS_PORT (4222), NATS_MONITOR_PORT (8222).
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-3}
FIRST_PORT=${FIRST_PORT:-8081}
NATS_PORT=${NATS_PORT:-4222}
NATS_MONITOR_PORT=${NATS_MONITOR_PORT:-8222}
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
if [ ! -x "$NATS_SERVER" ]; then
  echo "cluster-local: nats-server is not installed (apt install nats-server)" >&2
  exit 1
fi
if [ -z "${ENGINE:-}" ]; then
  cargo build --release -p engine
  ENGINE=target/release/engine
fi

work=$(mktemp -d -t engine-cluster-XXXXXX)
pids=()
nats_pid=""
stop() {
  trap - INT TERM EXIT
  echo "cluster-local: stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap stop INT TERM EXIT

"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" -js -sd "$work/nats" \
  > "$work/nats.log" 2>&1 &
nats_pid=$!
for node in $(seq 1 "$NODES"); do
  port=$((FIRST_PORT + node - 1))
  "$ENGINE" --listen "127.0.0.1:$port" --cluster "nats://127.0.0.1:$NATS_PORT" \
    --node-id "gw-$node" --data-dir "$work/gw-$node" > "$work/gw-$node.log" 2>&1 &
  pids+=($!)
done

# Ready when every node says so (it has joined the cluster).
for node in $(seq 1 "$NODES"); do
  port=$((FIRST_PORT + node - 1))
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health/ready" > /dev/null && break
    sleep 0.1
  done
done
for node in $(seq 1 "$NODES"); do
  port=$((FIRST_PORT + node - 1))
  echo "gw-$node  ws://127.0.0.1:$port/ws  $(curl -s "http://127.0.0.1:$port/health" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("cluster"))')"
done
echo "nats     nats://127.0.0.1:$NATS_PORT  (monitoring http://127.0.0.1:$NATS_MONITOR_PORT)"
echo "logs in $work; Ctrl-C stops everything"
wait "${pids[@]}"
