#!/usr/bin/env bash
# Sleeps and preemptions per message, per thread: runs the release engine and the loadgen at
# a fixed rate and reads each thread's voluntary and involuntary context switches
# (/proc/PID/task/*/status) at the start and end of a window in the middle of the load.
# A voluntary switch is a sleep (an idle wait, or a blocking syscall such as fdatasync)
# and so, on a VM, usually a wake-up later: the cost this counts.
#
# Knobs (environment): ENGINE (target/release/engine), REACTORS (2), CONNECTIONS (10000),
# RATE (5000), WINDOW_SECS (10), PORT (18701), DATA_DIR (target/wakeups-data, emptied),
# ENGINE_ARGS (extra engine flags, split on spaces).
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-target/release/engine}
REACTORS=${REACTORS:-2}
CONNECTIONS=${CONNECTIONS:-10000}
RATE=${RATE:-5000}
WINDOW_SECS=${WINDOW_SECS:-10}
PORT=${PORT:-18701}
DATA_DIR=${DATA_DIR:-target/wakeups-data}
ENGINE_ARGS=${ENGINE_ARGS:-}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p loadgen
[ "$ENGINE" = target/release/engine ] && cargo build --release -p engine
rm -rf "$DATA_DIR"
mkdir -p "$DATA_DIR"
out=$(mktemp -d)
# shellcheck disable=SC2086 # the extra flags are split on purpose
"$ENGINE" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --data-dir "$DATA_DIR" \
  --log-level warn $ENGINE_ARGS > "$out/engine.log" 2>&1 &
engine=$!
trap 'kill $engine 2>/dev/null || true; rm -rf "$out" "$DATA_DIR"' EXIT
sleep 1
# The load runs 10 s past the window on each side (ramp and hold first).
target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" \
  --ramp-per-sec 10000 --hold-secs 2 --workers 1 --rate "$RATE" \
  --duration-secs $((WINDOW_SECS + 15)) --server-pid "$engine" --out "$out/loadgen" \
  > "$out/loadgen.txt" 2>&1 &
loadgen=$!
# name voluntary involuntary, one line per thread
switches() {
  for task in /proc/"$1"/task/*; do
    printf '%s %s\n' "$(cat "$task/comm")" \
      "$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ { printf "%s ", $2 }' "$task/status")"
  done
}
sleep $((CONNECTIONS / 10000 + 10))
switches $engine > "$out/e0"
switches $loadgen > "$out/l0"
sleep "$WINDOW_SECS"
switches $engine > "$out/e1"
switches $loadgen > "$out/l1"
wait $loadgen
messages=$((RATE * WINDOW_SECS))
echo "context switches per message ($RATE msg/s, $REACTORS reactors, $CONNECTIONS connections, ${WINDOW_SECS} s window):"
for side in e:engine l:loadgen; do
  paste "$out/${side%%:*}0" "$out/${side%%:*}1" | awk -v m="$messages" -v who="${side#*:}" \
    '{ printf "  %-8s %-16s sleeps %.2f  preempted %.2f\n", who, $1, ($5 - $2) / m, ($6 - $3) / m }'
done
grep -E "^(sent / delivered|delivery latency|ack latency|server cpu|loadgen cpu)" "$out/loadgen.txt"
