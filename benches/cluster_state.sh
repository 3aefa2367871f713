#!/usr/bin/env bash
# What a cluster node's routing state costs per user online (issue 21): the same USERS
# connections held by an engine alone and by an engine in a cluster (one nats-server with
# JetStream), one after the other in the same run. Reports the engine's RSS per held
# connection both ways (the loadgen's --server-pid figure), and nats-server's RSS and
# subscription count while they are held (its monitoring port's /varz and /subsz).
#
# Knobs (environment): USERS (100000), HOLD_SECS (20), RAMP_PER_SEC (10000), PORT (18080),
# OUT (benches/results/cluster-state-DATE), BIN_DIR (default: build target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${USERS:-100000}
HOLD_SECS=${HOLD_SECS:-20}
RAMP_PER_SEC=${RAMP_PER_SEC:-10000}
PORT=${PORT:-18080}
OUT=${OUT:-benches/results/cluster-state-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
source benches/tools/scale_setup.sh cluster_state

nats_dir=$(mktemp -d)
nats_pid=""
data_dir="target/cluster-state-data-$$"
stop_all() {
  cleanup
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null || true
  rm -rf "$nats_dir" "$data_dir"
}
trap stop_all EXIT

source benches/tools/ports.sh
nats_port=$(free_port)
monitor_port=$(free_port)
/usr/sbin/nats-server -a 127.0.0.1 -p "$nats_port" -m "$monitor_port" -js -sd "$nats_dir" \
  > "$OUT/nats.log" 2>&1 &
nats_pid=$!
sleep 1
nats_figures() {
  python3 - "$monitor_port" <<'EOF'
import json, sys, urllib.request
port = sys.argv[1]
varz = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/varz"))
subsz = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/subsz"))
print(varz["mem"], subsz["num_subscriptions"])
EOF
}

# The held connections' peak: nats-server's memory and subscriptions, sampled each second.
sample_nats() {
  local best_mem=0 best_subs=0
  while kill -0 "$1" 2>/dev/null; do
    read -r mem subs < <(nats_figures)
    [ "$mem" -gt "$best_mem" ] && best_mem=$mem
    [ "$subs" -gt "$best_subs" ] && best_subs=$subs
    echo "$best_mem $best_subs" > "$2"
    sleep 1
  done
}

for mode in alone cluster; do
  rm -rf "$data_dir"
  cluster_args=()
  if [ "$mode" = cluster ]; then
    cluster_args=(--cluster "nats://127.0.0.1:$nats_port" --node-id "state-$$")
  fi
  "$BIN_DIR/engine" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --sockets "$SOCKETS" \
    --auth-timeout-ms 120000 --idle-timeout-ms 0 --data-dir "$data_dir" --log-level warn \
    "${cluster_args[@]}" > "$OUT/engine-$mode.log" 2>&1 &
  engine_pid=$!
  sleep 4
  read -r nats_before subs_before < <(nats_figures)
  timeout --signal=INT 600 "$BIN_DIR/loadgen" --target "127.0.0.1:$PORT" \
    --connections "$CONNECTIONS" --ramp-per-sec "$RAMP_PER_SEC" --hold-secs "$HOLD_SECS" \
    --workers "$REACTORS" --sockets "$SOCKETS" --connect-timeout-secs 60 \
    --server-pid "$engine_pid" --out "$OUT/$mode" > "$OUT/summary-$mode.txt" 2> /dev/null &
  run_pid=$!
  sample_nats "$run_pid" "$OUT/nats-peak-$mode.txt" &
  wait "$run_pid"
  sleep 1
  read -r nats_peak subs_peak < "$OUT/nats-peak-$mode.txt"
  kill "$engine_pid"; wait "$engine_pid" 2>/dev/null || true
  engine_pid=""
  python3 - "$OUT" "$mode" "$nats_before" "$nats_peak" "$subs_before" "$subs_peak" <<'EOF' | tee -a "$OUT/result.txt"
import json, sys
out, mode, before, peak, subs_before, subs_peak = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
report = json.load(open(f"{out}/{mode}/report.json"))
held = report["held"]
per_conn = report["server"]["rss_bytes_per_connection"]
print(f"{mode:8} held {held:>8}  engine RSS {per_conn:7.1f} B/conn  "
      f"nats-server +{(peak - before) / max(held, 1):7.1f} B/user  "
      f"subscriptions +{subs_peak - subs_before}")
EOF
done
