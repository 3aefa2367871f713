#!/usr/bin/env bash
# A/B of two engine builds under the same chat load: each run starts a fresh engine (fresh
# data directory) and the loadgen, alternating A and B, REPS times each; prints per run
# and the median per build: delivery p50/p99, ack p99, and the engine's CPU seconds per
# million messages.
#
# usage: A=path/to/engine B=path/to/engine bash benches/ab.sh
# Knobs (environment): CONNECTIONS (10000), RATE (5000), DURATION_SECS (20), REPS (3),
# REACTORS (2), PORT (18610), OUT (target/ab). Build B (and A) in release first; the
# loadgen is built here. Bounded; stops what it started.
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
ulimit -n "$(ulimit -Hn)"
cargo build --release -p loadgen
rm -rf "$OUT"
mkdir -p "$OUT"
engine=""
trap '[ -n "$engine" ] && kill $engine 2>/dev/null || true' EXIT
for rep in $(seq "$REPS"); do
  for build in A B; do
    bin=${!build}
    run="$OUT/$build-$rep"
    "$bin" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --data-dir "$run-data" \
      --log-level warn > "$run-engine.log" 2>&1 &
    engine=$!
    sleep 1
    target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" \
      --ramp-per-sec 10000 --hold-secs 2 --workers 1 --rate "$RATE" \
      --duration-secs "$DURATION_SECS" --server-pid "$engine" --out "$run" > "$run.txt" 2>&1 || true
    kill "$engine"; wait "$engine" 2> /dev/null || true
    engine=""
  done
done
python3 - "$OUT" "$REPS" <<'PY'
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
rows = {"A": [], "B": []}
print("run   delivery p50 / p99 (ms)   ack p99 (ms)   CPU s per M msgs   lost")
for rep in range(1, reps + 1):
    for build in "AB":
        r = json.load(open(f"{out}/{build}-{rep}/report.json"))
        d, a = r["latency"]["delivery"], r["latency"]["ack"]
        cpu = r.get("server", {}).get("cpu_secs_per_million_messages")
        row = (d["p50_us"] / 1000, d["p99_us"] / 1000, a["p99_us"] / 1000, cpu or float("nan"))
        rows[build].append(row)
        print(f"{build}-{rep}  {row[0]:8.2f} / {row[1]:8.2f}   {row[2]:10.2f}   {row[3]:14.1f}   {r['load']['lost']}")
med = {b: [statistics.median(col) for col in zip(*rows[b])] for b in "AB"}
for b in "AB":
    m = med[b]
    print(f"median {b}  {m[0]:8.2f} / {m[1]:8.2f}   {m[2]:10.2f}   {m[3]:14.1f}")
print("B / A   " + "  ".join(f"{nb / na:.2f}x" if na else "-" for na, nb in zip(med["A"], med["B"])))
PY
