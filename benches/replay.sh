#!/usr/bin/env bash
# How long a restart after a crash takes when the store's journal is near its checkpoint
# bound (every batch goes through the journal; a checkpoint freezes it at 16 MiB or 1 s):
# the loadgen queues RATE msg/s for offline users until one of the journal's two files
# passes JOURNAL_BYTES, the engine is killed (-9), and the time from the restart to
# /health/ready (the replay included) is printed with the replay's log.
#
# Knobs (environment): RATE (20000), JOURNAL_BYTES (12000000), CONNECTIONS (10000),
# PORT (18640), OUT (target/replay). Bounded: gives up after 10 s of load. Stops what it
# started.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-20000}
JOURNAL_BYTES=${JOURNAL_BYTES:-12000000}
CONNECTIONS=${CONNECTIONS:-10000}
PORT=${PORT:-18640}
OUT=${OUT:-target/replay}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen
rm -rf "$OUT"; mkdir -p "$OUT"
engine=""; loadgen=""
trap '[ -n "$engine" ] && kill $engine 2>/dev/null; [ -n "$loadgen" ] && kill $loadgen 2>/dev/null; true' EXIT
journal_size() {
  { stat -c %s "$OUT/data/journal.log" "$OUT/data/journal-2.log" 2> /dev/null || true; echo 0; } |
    sort -n | tail -1
}
target/release/engine --listen "127.0.0.1:$PORT" --reactors 2 \
  --data-dir "$OUT/data" --queue-max-per-user 10000000 --log-level warn > "$OUT/engine.log" 2>&1 &
engine=$!
sleep 1
target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec 10000 \
  --hold-secs 1 --workers 1 --rate "$RATE" --duration-secs 10 --offline-receivers \
  --out "$OUT/load" > "$OUT/load.txt" 2>&1 &
loadgen=$!
for _ in $(seq 1 80); do
  sleep 0.25
  [ "$(journal_size)" -gt "$JOURNAL_BYTES" ] && break
done
kill -9 "$engine"; wait "$engine" 2> /dev/null || true
engine=""
kill "$loadgen" 2> /dev/null || true; wait "$loadgen" 2> /dev/null || true
loadgen=""
echo "journal at the kill: $(journal_size) bytes"
started=$(date +%s%N)
target/release/engine --listen "127.0.0.1:$PORT" --reactors 2 --data-dir "$OUT/data" \
  --log-level info > "$OUT/restart.log" 2>&1 &
engine=$!
for _ in $(seq 1 600); do
  curl -sf "127.0.0.1:$PORT/health/ready" > /dev/null 2>&1 && break
  sleep 0.05
done
ready=$(date +%s%N)
echo "restart to ready: $(( (ready - started) / 1000000 )) ms"
sed 's/\x1b\[[0-9;]*m//g' "$OUT/restart.log" | grep -E "journal replayed|store open" || true
