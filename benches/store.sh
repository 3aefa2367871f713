#!/usr/bin/env bash
# Durable queued messages per second: the loadgen holds CONNECTIONS senders and addresses
# every message to users no connection holds (`--offline-receivers`), so each is committed
# to the store before its `queued` ack. Steps the offered rate; for each step reports the
# queued rate, the ack latency (p50/p99/p99.9: send → ack after commit), how many
# messages one commit carried (group commit), from the engine's /metrics, and the bytes
# the engine handed to write(2) per message (/proc/PID/io wchar over the run: the
# journal's records and the checkpoints' pages). /proc's write_bytes is not used: on the
# dev VM's ext4 it counts about 1 MB for every fdatasync, whatever was written.
# With STRACE_RATE=R, at that rate it also counts the store thread's write and sync calls
# for 3 s (strace -c; slow under ptrace, so read them per commit, not per second).
#
# Knobs (environment): ENGINE (target/release/engine, built), CONNECTIONS (10000),
# RATES ("5000 10000 20000 40000 80000"),
# DURATION_SECS (10), PORT (18580), OUT (target/store-bench), PROFILE_RATE (none: at this
# rate, print each engine and loadgen thread's share of a core, running and waiting, over
# 5 s in the middle of the load), PERF_RATE (none: at this rate, a CPU profile of the
# engine over 8 s of the load, perf-R-top.txt and perf-R-breakdown.txt, through
# benches/tools/perf_profile.sh). Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-10000}
RATES=${RATES:-"5000 10000 20000 40000 80000"}
DURATION_SECS=${DURATION_SECS:-10}
PORT=${PORT:-18580}
OUT=${OUT:-target/store-bench}
ENGINE=${ENGINE:-target/release/engine}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen
mkdir -p "$OUT"
engine=""
trap '[ -n "$engine" ] && kill $engine 2>/dev/null || true' EXIT
metric() { curl -s "127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
echo "rate  queued/s  ack p50 / p99 / p99.9 (ms)  messages per commit  bytes to write(2) per message  lost"
written() { awk '$1 == "wchar:" {print $2}' "/proc/$1/io"; }
for rate in $RATES; do
  rm -rf "$OUT/data-$rate"
  "$ENGINE" --listen "127.0.0.1:$PORT" --reactors 2 --data-dir "$OUT/data-$rate" \
    --queue-max-per-user 10000000 --log-level warn > "$OUT/engine-$rate.log" 2>&1 &
  engine=$!
  sleep 1
  written_before=$(written "$engine")
  target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec 10000 \
    --hold-secs 1 --workers 1 --rate "$rate" --duration-secs "$DURATION_SECS" --offline-receivers \
    --server-pid "$engine" --out "$OUT/run-$rate" > "$OUT/run-$rate.txt" 2> /dev/null &
  loadgen=$!
  if [ "$rate" = "${STRACE_RATE:-}" ]; then
    sleep $(( CONNECTIONS / 10000 + 3 + DURATION_SECS / 2 - 2 ))
    store_tid=$(grep -l '^store$' /proc/"$engine"/task/*/comm | head -1 | cut -d/ -f5)
    commits_before=$(metric engine_store_commits_total)
    timeout -s INT 3 strace -c -f -e trace=pwrite64,write,writev,fsync,fdatasync,sync_file_range \
      -p "$store_tid" 2> "$OUT/strace-$rate.txt" || true
    commits_after=$(metric engine_store_commits_total)
    echo "store thread over $(( commits_after - commits_before )) commits:" >&2
    cat "$OUT/strace-$rate.txt" >&2
  fi
  if [ "$rate" = "${PERF_RATE:-}" ]; then
    sleep $(( CONNECTIONS / 10000 + 3 + DURATION_SECS / 2 - 4 ))
    bash benches/tools/perf_profile.sh "$engine" 8 "$OUT" "perf-$rate" || true
  fi
  if [ "$rate" = "${PROFILE_RATE:-}" ]; then
    sleep $(( CONNECTIONS / 10000 + 3 + DURATION_SECS / 2 - 2 ))
    python3 benches/schedstat.py --seconds 5 --threads engine="$engine" loadgen="$loadgen" \
      | tee "$OUT/threads-$rate.txt" >&2
  fi
  wait "$loadgen" || true
  persisted=$(metric engine_store_messages_persisted_total)
  commits=$(metric engine_store_commits_total)
  written_after=$(written "$engine")
  kill "$engine"; wait "$engine" 2> /dev/null || true
  engine=""
  rm -rf "$OUT/data-$rate"
  python3 - "$OUT/run-$rate/report.json" "$rate" "$persisted" "$commits" "$DURATION_SECS" \
    "$(( written_after - written_before ))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rate, persisted, commits, secs = int(sys.argv[2]), int(sys.argv[3] or 0), int(sys.argv[4] or 1), int(sys.argv[5])
written = int(sys.argv[6])
ack = r["latency"]["ack"]
ms = lambda us: f"{us / 1000:.2f}" if us is not None else "-"
print(f"{rate:>5} {r['load']['queued'] / secs:>9.0f}  {ms(ack['p50_us'])} / {ms(ack['p99_us'])} / {ms(ack['p999_us'])}"
      f"  {persisted / max(commits, 1):>8.1f}  {written / max(persisted, 1):>8.0f}  {r['load']['lost']}")
PY
done
