#!/usr/bin/env bash
# The million-connection run: from a fresh checkout, builds in release, applies the kernel
# tuning (tuning/apply.sh, reverted at the end), checks the host, starts the engine with
# enough reactors, and runs the loadgen to N authenticated connections, holds them (ping
# sweep), then an open-loop message load while they are still held, and writes the report.
# Bounded in time; stops everything it started.
#
# Knobs (environment): CONNECTIONS (1000000), RAMP_PER_SEC (10000), HOLD_SECS (600),
# RATE (50000 msg/s), DURATION_SECS (60), PORT (18080), OUT (benches/results/million-DATE),
# SOCKETS (auto: io_uring direct descriptors where the kernel has them, else fd-table),
# REACTORS (default: one per core with direct descriptors, else as many fd tables as
# CONNECTIONS need; also the loadgen's workers), IDLE_TIMEOUT_MS (the engine's default,
# 60000: silent connections are pinged, a million of them about 16,700 pings a second),
# BIN_DIR (default: build target/release; set it to run prebuilt binaries, e.g. to compare
# two engine builds at the same scale).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-1000000}
RAMP_PER_SEC=${RAMP_PER_SEC:-10000}
HOLD_SECS=${HOLD_SECS:-600}
RATE=${RATE:-50000}
DURATION_SECS=${DURATION_SECS:-60}
PORT=${PORT:-18080}
IDLE_TIMEOUT_MS=${IDLE_TIMEOUT_MS:-60000}
OUT=${OUT:-benches/results/million-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

source benches/tools/scale_setup.sh million

# A long auth deadline: during the ramp the generator and engine share the same cores.
"$BIN_DIR/engine" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --sockets "$SOCKETS" \
  --auth-timeout-ms 120000 --idle-timeout-ms "$IDLE_TIMEOUT_MS" --log-level warn \
  > "$OUT/engine.log" 2>&1 &
engine_pid=$!
sleep 2

# Bound: ramp + connect timeout + sweep + hold + load + drains, with a margin.
bound=$(( CONNECTIONS / RAMP_PER_SEC + 60 + 60 + HOLD_SECS + DURATION_SECS + 120 ))
status=0
timeout --signal=INT --kill-after=30 "$bound" "$BIN_DIR/loadgen" \
  --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec "$RAMP_PER_SEC" \
  --hold-secs "$HOLD_SECS" --workers "$REACTORS" --sockets "$SOCKETS" \
  --rate "$RATE" --duration-secs "$DURATION_SECS" \
  --connect-timeout-secs 60 --server-pid "$engine_pid" --out "$OUT" | tee "$OUT/summary.txt" || status=$?
echo "million.sh: report in $OUT (loadgen exit $status)"
exit "$status"
