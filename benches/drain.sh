#!/usr/bin/env bash
# The drain at scale: the loadgen opens CONNECTIONS authenticated connections and holds
# them; the engine, started with --drain-secs DRAIN_SECS, is sent SIGTERM; its log says
# once a second how many connections are still open (drain.csv), and this reports how long
# the drain took against its bound (--drain-secs + --shutdown-timeout-ms 5 s + 1 s) and
# whether every connection was closed before the exit (the engine logs "stopped") or the
# bound cut it short ("exiting with connections still open").
# Same setup as million.sh (release build, tuning as root, socket placement and reactors).
#
# Knobs (environment): CONNECTIONS (200000), DRAIN_SECS (10), RAMP_PER_SEC (10000),
# PORT (18090), OUT (benches/results/drain-DATE-N-S), SOCKETS, REACTORS, BIN_DIR.
# Bounded in time; stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-200000}
DRAIN_SECS=${DRAIN_SECS:-10}
RAMP_PER_SEC=${RAMP_PER_SEC:-10000}
PORT=${PORT:-18090}
OUT=${OUT:-benches/results/drain-$(date -u +%Y%m%d)-$CONNECTIONS-${DRAIN_SECS}s}
mkdir -p "$OUT"

source benches/tools/scale_setup.sh drain
loadgen_pid=""
trap 'kill $loadgen_pid 2>/dev/null || true; cleanup' EXIT

rm -rf target/drain-data
"$BIN_DIR/engine" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --sockets "$SOCKETS" --auth-timeout-ms 120000 \
  --drain-secs "$DRAIN_SECS" --data-dir target/drain-data --log-level info > "$OUT/engine.log" 2>&1 &
engine_pid=$!
sleep 2
ramp_bound=$(( CONNECTIONS / RAMP_PER_SEC + 120 ))
"$BIN_DIR/loadgen" --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" \
  --ramp-per-sec "$RAMP_PER_SEC" --hold-secs $(( ramp_bound + DRAIN_SECS + 60 )) \
  --workers "$REACTORS" --sockets "$SOCKETS" --rate 0 --connect-timeout-secs 60 --out "$OUT/loadgen" \
  > "$OUT/loadgen.txt" 2>&1 &
loadgen_pid=$!

established() { ss -Htn state established "( sport = :$PORT )" | wc -l; }
started=$SECONDS
until [ "$(established)" -ge "$CONNECTIONS" ]; do
  if (( SECONDS - started > ramp_bound )); then
    echo "drain.sh: only $(established) of $CONNECTIONS connected in ${ramp_bound}s" >&2
    exit 1
  fi
  sleep 2
done
sleep 5 # settle: every auth answered
held=$(established)
t0=$(date +%s.%N)
kill -TERM "$engine_pid"
wait "$engine_pid" && code=0 || code=$?
took=$(echo "$(date +%s.%N) - $t0" | bc)
engine_pid=""
{
  echo "seconds,open"
  sed 's/\x1b\[[0-9;]*m//g' "$OUT/engine.log" | grep -oE "draining open=[0-9]+ secs=[0-9.]+" |
    sed -E 's/draining open=([0-9]+) secs=([0-9.]+)/\2,\1/' || true
} > "$OUT/drain.csv"
outcome=$(grep -oE "stopped|exiting with connections still open" "$OUT/engine.log" | tail -1 || true)
bound=$(( DRAIN_SECS + 5 + 1 ))
{
  echo "connections held at SIGTERM: $held (reactors: $REACTORS)"
  echo "drain: --drain-secs $DRAIN_SECS, bound ${bound}s; exit after ${took}s, code $code: $outcome"
  echo "open connections by second after SIGTERM (the engine's count): $OUT/drain.csv"
} | tee "$OUT/summary.txt"
