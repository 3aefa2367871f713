#!/usr/bin/env bash
# Where sockets live, compared under the same chat load: the fd table (as many reactors,
# and loadgen workers, as tables of RLIMIT_NOFILE the connections need) against io_uring
# direct descriptors (one reactor and one worker per core). Runs alternate, REPS each, on
# one release build; prints each run and the medians (delivery p50/p99, ack p99, engine CPU
# per million messages) via benches/tools/ab_summary.py.
#
# Knobs (environment): CONNECTIONS (100000), RATE (10000), DURATION_SECS (20), REPS (2),
# PORT (18620), OUT (target/placement). Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-100000}
RATE=${RATE:-10000}
DURATION_SECS=${DURATION_SECS:-20}
REPS=${REPS:-2}
PORT=${PORT:-18620}
OUT=${OUT:-target/placement}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen
rm -rf "$OUT"
mkdir -p "$OUT"
per_table=$(( $(ulimit -Hn) - 64 ))
tables=$(( (CONNECTIONS + per_table - 1) / per_table ))
cores=$(nproc)
engine=""
trap '[ -n "$engine" ] && kill $engine 2>/dev/null || true' EXIT
bound=$(( CONNECTIONS / 10000 + 60 + DURATION_SECS + 60 ))
for rep in $(seq "$REPS"); do
  for placement in fd-table direct; do
    if [ "$placement" = fd-table ]; then threads=$tables; else threads=$cores; fi
    run="$OUT/$placement-$rep"
    target/release/engine --listen "127.0.0.1:$PORT" --reactors "$threads" \
      --sockets "$placement" --data-dir "$run-data" --log-level warn > "$run-engine.log" 2>&1 &
    engine=$!
    sleep 1
    timeout --signal=INT "$bound" target/release/loadgen --target "127.0.0.1:$PORT" \
      --connections "$CONNECTIONS" --ramp-per-sec 10000 --hold-secs 5 --workers "$threads" \
      --sockets "$placement" --rate "$RATE" --duration-secs "$DURATION_SECS" \
      --connect-timeout-secs 30 --server-pid "$engine" --out "$run" > "$run.txt" 2>&1 || true
    kill "$engine"; wait "$engine" 2> /dev/null || true
    engine=""
  done
done
echo "$CONNECTIONS connections, $RATE msg/s: fd-table on $tables reactors and workers, direct on $cores"
python3 benches/tools/ab_summary.py "$OUT" "$REPS" fd-table direct
