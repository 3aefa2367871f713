#!/usr/bin/env bash
# A/B of two engine builds under the same chat load: each run starts a fresh engine (fresh
# data directory) and the loadgen, alternating A and B, REPS times each; prints per run
# and the median per build: delivery p50/p99, ack p99, and the engine's CPU seconds per
# million messages.
#
# usage: A=path/to/engine B=path/to/engine bash benches/ab.sh
#    or, one build under two settings:
#        A=target/release/engine A_ARGS="--sockets fd-table" \
#        B=target/release/engine B_ARGS="--sockets direct" bash benches/ab.sh
#    or two loadgens against one engine:
#        A=target/release/engine B=target/release/engine A_LOADGEN=/tmp/loadgen-old \
#        B_LOADGEN=target/release/loadgen bash benches/ab.sh
# Knobs (environment): CONNECTIONS (10000), RATE (5000), DURATION_SECS (20), REPS (3),
# REACTORS (2), PORT (18610), OUT (target/ab), A_ARGS and B_ARGS (extra engine flags, split
# on spaces), LOADGEN_ARGS (extra loadgen flags), A_LOADGEN and B_LOADGEN (the loadgen
# binaries; default target/release/loadgen, built here). Build B (and A) in release first.
# Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${A:?set A to the baseline engine binary}" "${B:?set B to the engine binary to compare}"
CONNECTIONS=${CONNECTIONS:-10000}
RATE=${RATE:-5000}
DURATION_SECS=${DURATION_SECS:-20}
REPS=${REPS:-3}
REACTORS=${REACTORS:-2}
PORT=${PORT:-18610}
OUT=${OUT:-target/ab}
A_ARGS=${A_ARGS:-}
B_ARGS=${B_ARGS:-}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
A_LOADGEN=${A_LOADGEN:-target/release/loadgen}
B_LOADGEN=${B_LOADGEN:-target/release/loadgen}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p loadgen
rm -rf "$OUT"
mkdir -p "$OUT"
engine=""
trap '[ -n "$engine" ] && kill $engine 2>/dev/null || true' EXIT
for rep in $(seq "$REPS"); do
  for build in A B; do
    bin=${!build}
    extra=${build}_ARGS
    loadgen=${build}_LOADGEN
    run="$OUT/$build-$rep"
    # shellcheck disable=SC2086 # the extra flags are split on purpose
    "$bin" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --data-dir "$run-data" \
      --log-level warn ${!extra} > "$run-engine.log" 2>&1 &
    engine=$!
    sleep 1
    "${!loadgen}" --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" \
      --ramp-per-sec 10000 --hold-secs 2 --workers 1 --rate "$RATE" \
      --duration-secs "$DURATION_SECS" --server-pid "$engine" --out "$run" $LOADGEN_ARGS \
      > "$run.txt" 2>&1 || true
    kill "$engine"; wait "$engine" 2> /dev/null || true
    engine=""
  done
done
python3 benches/tools/ab_summary.py "$OUT" "$REPS" A B
