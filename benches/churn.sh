#!/usr/bin/env bash
# Churn under load (protocol v2): the loadgen holds CONNECTIONS v2 devices (each resumes
# from the last inbox seq it processed and acks), drives RATE msg/s between them for
# DURATION_SECS, and each minute drops CHURN_PER_MIN percent of the connections with a
# reset; each reconnects at once and resumes. The loadgen fails the run if any message
# acknowledged to its sender never reached its receiver's device, or reached it twice.
#
# Knobs (environment): CONNECTIONS (100000), RATE (10000), DURATION_SECS (60),
# CHURN_PER_MIN (10), REACTORS (2), WORKERS (2), PORT (18620), OUT (target/churn),
# ENGINE_ARGS (extra engine flags, split on spaces).
# Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-100000}
RATE=${RATE:-10000}
DURATION_SECS=${DURATION_SECS:-60}
CHURN_PER_MIN=${CHURN_PER_MIN:-10}
REACTORS=${REACTORS:-2}
WORKERS=${WORKERS:-2}
PORT=${PORT:-18620}
OUT=${OUT:-target/churn}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen
rm -rf "$OUT"
mkdir -p "$OUT"
engine=""
trap '[ -n "$engine" ] && kill $engine 2>/dev/null || true' EXIT
# shellcheck disable=SC2086 # the extra flags are split on purpose
target/release/engine --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --data-dir "$OUT/data" \
  --log-level warn ${ENGINE_ARGS:-} > "$OUT/engine.log" 2>&1 &
engine=$!
for _ in $(seq 100); do
  curl -sf "127.0.0.1:$PORT/health/ready" > /dev/null && break
  sleep 0.1
done
status=0
target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec 10000 \
  --hold-secs 2 --workers "$WORKERS" --rate "$RATE" --duration-secs "$DURATION_SECS" \
  --scenario churn --churn-per-min "$CHURN_PER_MIN" --server-pid "$engine" --out "$OUT/load" \
  > "$OUT/load.txt" 2> "$OUT/load.err" || status=$?
cat "$OUT/load.txt"
exit "$status"
