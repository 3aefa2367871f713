#!/usr/bin/env bash
# Whether disk writes elsewhere on the box move the engine's delivery latency: one engine
# build under the ab.sh chat load, its store on DATA_DIR (the disk by default; /dev/shm
# takes the store's I/O away), optionally beside a writer of synced 64 KiB blocks
# (SYNCED_WRITER=1: `dd oflag=dsync`, about the bytes per second the v2 store writes at
# 10,000 msg/s online). Prints the loadgen's latencies and CPU figures, and the box's busy
# and idle CPU over a 10 s window in the middle of the load (from /proc/stat).
#
# usage: ENGINE=target/release/engine bash benches/io_interference.sh
#        ENGINE=… DATA_DIR=/dev/shm/io-data bash benches/io_interference.sh
#        ENGINE=… SYNCED_WRITER=1 DATA_DIR=/dev/shm/io-data bash benches/io_interference.sh
# Knobs (environment): CONNECTIONS (10000), RATE (10000), DURATION_SECS (20), REACTORS (2),
# PORT (18642), DATA_DIR (target/io-data), OUT (target/io), SYNCED_WRITER (0). Bounded;
# stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ENGINE:?set ENGINE to the engine binary}"
CONNECTIONS=${CONNECTIONS:-10000}
RATE=${RATE:-10000}
DURATION_SECS=${DURATION_SECS:-20}
REACTORS=${REACTORS:-2}
PORT=${PORT:-18642}
DATA_DIR=${DATA_DIR:-target/io-data}
OUT=${OUT:-target/io}
SYNCED_WRITER=${SYNCED_WRITER:-0}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p loadgen
rm -rf "$OUT" "$DATA_DIR"
mkdir -p "$OUT"
engine="" writer=""
trap '[ -n "$engine" ] && kill $engine 2>/dev/null; [ -n "$writer" ] && kill $writer 2>/dev/null; rm -f "$OUT/synced-writes"' EXIT
"$ENGINE" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --data-dir "$DATA_DIR" \
  --log-level warn > "$OUT/engine.log" 2>&1 &
engine=$!
sleep 1
target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" \
  --ramp-per-sec 10000 --hold-secs 2 --workers 1 --rate "$RATE" \
  --duration-secs "$DURATION_SECS" --server-pid "$engine" --out "$OUT/run" \
  > "$OUT/run.txt" 2>&1 &
loadgen=$!
sleep 5 # the ramp and the hold
if [ "$SYNCED_WRITER" = 1 ]; then
  dd if=/dev/zero of="$OUT/synced-writes" bs=64k count=$((RATE * 4)) oflag=dsync \
    2> "$OUT/synced-writer.txt" &
  writer=$!
fi
sleep 4
box() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat; }
read -r busy0 idle0 < <(box)
sleep 10
read -r busy1 idle1 < <(box)
wait "$loadgen" || true
echo "box over 10 s of load: busy $((busy1 - busy0)) ticks, idle $((idle1 - idle0)) ticks ($(getconf CLK_TCK) per second per core)"
grep -E "delivery latency|ack latency|server cpu|loadgen cpu" "$OUT/run.txt"
[ -n "$writer" ] && { wait "$writer" || true; tail -1 "$OUT/synced-writer.txt"; }
true
