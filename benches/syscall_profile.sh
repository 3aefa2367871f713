#!/usr/bin/env bash
# Syscalls per message: runs the release engine and the loadgen at a fixed rate, attaches
# `strace -c -f` to the engine for a window in the middle of the load, and prints each
# syscall's count per delivered message (strace slows the engine, so its latency figures
# mean nothing here; the counts are what this is for).
#
# Knobs (environment): REACTORS (2), CONNECTIONS (10000), RATE (2000), DURATION_SECS (20),
# WINDOW_SECS (8), PORT (18290), OUT (target/syscall-profile), SOCKETS (the engine's and
# the loadgen's --sockets: auto, direct or fd-table).
set -euo pipefail
cd "$(dirname "$0")/.."
REACTORS=${REACTORS:-2}
CONNECTIONS=${CONNECTIONS:-10000}
RATE=${RATE:-2000}
DURATION_SECS=${DURATION_SECS:-20}
WINDOW_SECS=${WINDOW_SECS:-8}
PORT=${PORT:-18290}
OUT=${OUT:-target/syscall-profile}
SOCKETS=${SOCKETS:-auto}
command -v strace > /dev/null || { echo "syscall_profile.sh: needs strace (apt install strace)" >&2; exit 1; }
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen

target/release/engine --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --sockets "$SOCKETS" \
  --log-level warn > "$OUT/engine.log" 2>&1 &
engine=$!
trap 'kill $engine 2>/dev/null || true' EXIT
sleep 1
if [ "$SOCKETS" = fd-table ]; then workers=$(( (CONNECTIONS + 19935) / 19936 )); else workers=1; fi
target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec 10000 \
  --hold-secs 2 --workers "$workers" --sockets "$SOCKETS" --rate "$RATE" --duration-secs "$DURATION_SECS" \
  --out "$OUT" > "$OUT/summary.txt" 2> /dev/null &
loadgen=$!
# Wait for the load phase (ramp and hold first), then into its middle.
sleep $(( CONNECTIONS / 10000 + 2 + 2 + (DURATION_SECS - WINDOW_SECS) / 2 ))
timeout --signal=INT "$WINDOW_SECS" strace -c -f -p "$engine" -o "$OUT/strace.txt" || true
wait "$loadgen" || true
messages=$(( RATE * WINDOW_SECS ))
echo "engine syscalls per message (${RATE} msg/s, ${REACTORS} reactors, ${CONNECTIONS} connections, sockets ${SOCKETS}, ${WINDOW_SECS} s window ≈ ${messages} messages):"
awk -v m="$messages" '$1 ~ /^[0-9.]+$/ && NF >= 5 { name = $NF; calls = $4; if (calls ~ /^[0-9]+$/ && calls / m >= 0.01) printf "  %-16s %6.2f\n", name, calls / m }' "$OUT/strace.txt" | sort -k2 -nr
grep -E "^(held|sent|undeliv)" "$OUT/summary.txt"
