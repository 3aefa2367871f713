#!/usr/bin/env bash
# What slow consumers cost normal clients: the same chat load (loadgen, open loop) in three
# settings, interleaved REPS times each:
#   without  the load alone;
#   with     plus NON_READERS clients that never read: benches/tools/non_readers.py keeps
#            them connected and floods 60 KB messages at FLOOD_RATE per second at 16 of
#            them at a time, so the gateway keeps cutting slow consumers off (4002 at
#            --outbound-bytes-max) while the loadgen measures everyone else;
#   readers  the same flood to the same number of clients that do read (the control: the
#            flood's bytes and the flooder's CPU, without slow consumers).
# Prints each run, the medians and the ratios (benches/tools/ab_summary.py), and the
# flood's own counts.
#
# usage: bash benches/slow_consumers.sh
# Knobs (environment): CONNECTIONS (10000), RATE (5000), DURATION_SECS (20), REPS (3),
# NON_READERS (1000), FLOOD_RATE (800), REACTORS (2), PORT (18620),
# OUT (target/slow-consumers). Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-10000}
RATE=${RATE:-5000}
DURATION_SECS=${DURATION_SECS:-20}
REPS=${REPS:-3}
NON_READERS=${NON_READERS:-1000}
FLOOD_RATE=${FLOOD_RATE:-800}
REACTORS=${REACTORS:-2}
PORT=${PORT:-18620}
OUT=${OUT:-target/slow-consumers}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen
rm -rf "$OUT"
mkdir -p "$OUT"
engine="" flood=""
trap 'kill $engine $flood 2>/dev/null || true' EXIT
for rep in $(seq "$REPS"); do
  for mode in without with readers; do
    run="$OUT/$mode-$rep"
    # --message-pace 0: the flood is one client at FLOOD_RATE, which the default pace
    # (100 a second) would slow before it reaches the slow consumers this measures.
    target/release/engine --listen "127.0.0.1:$PORT" --reactors "$REACTORS" \
      --data-dir "$run-data" --log-level warn --message-pace 0 > "$run-engine.log" 2>&1 &
    engine=$!
    sleep 1
    if [ "$mode" != without ]; then
      python3 benches/tools/non_readers.py "127.0.0.1:$PORT" "$NON_READERS" "$FLOOD_RATE" \
        $((DURATION_SECS + 60)) $([ "$mode" = readers ] && echo --readers) \
        > "$run-flood.json" 2> "$run-flood.log" &
      flood=$!
      timeout 60 bash -c "until grep -q connected '$run-flood.log'; do sleep 0.2; done"
    fi
    target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" \
      --ramp-per-sec 10000 --hold-secs 2 --workers 1 --rate "$RATE" \
      --duration-secs "$DURATION_SECS" --server-pid "$engine" --out "$run" > "$run.txt" 2>&1 || true
    if [ -n "$flood" ]; then
      kill -TERM "$flood"; wait "$flood" 2> /dev/null || true
      flood=""
    fi
    kill "$engine"; wait "$engine" 2> /dev/null || true
    engine=""
    rm -rf "$run-data"
  done
done
echo "== slow consumers against the load alone"
python3 benches/tools/ab_summary.py "$OUT" "$REPS" without with
echo "== slow consumers against the same flood to clients that read"
python3 benches/tools/ab_summary.py "$OUT" "$REPS" readers with
for rep in $(seq "$REPS"); do
  for mode in with readers; do echo "flood $mode-$rep: $(cat "$OUT/$mode-$rep-flood.json")"; done
done
