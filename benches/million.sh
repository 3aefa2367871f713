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
# CONNECTIONS need; also the loadgen's workers), IDLE_TIMEOUT_MS (0, as in every million
# run so far; the engine's default 60000 pings silent connections, at a million about
# 16,700 pings a second),
# BIN_DIR (default: build target/release; set it to run prebuilt binaries, e.g. to compare
# two engine builds at the same scale), PERF_SECS (unset: with it, `perf record` of the
# engine for that long after the schedstat window; perf-top.txt, perf-breakdown.txt),
# ENGINE_ARGS (extra engine flags, split on spaces), TLS (unset: plain; 1: the engine
# serves TLS 1.3 with a self-signed ECDSA P-256 certificate `openssl` makes in a temporary
# directory, removed at the end, and the loadgen connects with --tls).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-1000000}
RAMP_PER_SEC=${RAMP_PER_SEC:-10000}
HOLD_SECS=${HOLD_SECS:-600}
RATE=${RATE:-50000}
DURATION_SECS=${DURATION_SECS:-60}
PORT=${PORT:-18080}
IDLE_TIMEOUT_MS=${IDLE_TIMEOUT_MS:-0}
OUT=${OUT:-benches/results/million-$(date -u +%Y%m%d-%H%M%S)}
# The engine's listeners are SO_REUSEPORT: another process listening on the port would
# silently take a share of the connections (it once took half of a run's).
if ss -Hltn "sport = :$PORT" | grep -q .; then
  echo "million.sh: something already listens on port $PORT (ss -ltnp); stop it or set PORT" >&2
  exit 1
fi
mkdir -p "$OUT"

source benches/tools/scale_setup.sh million

# A long auth deadline: during the ramp the generator and engine share the same cores.
# A fresh store: an old one would fill the store's cache at start and count in the RSS
# "before the ramp" (a 1.1 GB file left by earlier runs did: 181 MB before any connection).
data_dir="target/million-data-$$"
rm -rf "$data_dir"
trap 'cleanup; rm -rf "$data_dir"' EXIT
tls_engine=() tls_loadgen=()
if [ -n "${TLS:-}" ]; then
  tls_dir=$(mktemp -d)
  trap 'cleanup; rm -rf "$data_dir" "$tls_dir"' EXIT
  openssl ecparam -genkey -name prime256v1 -noout -out "$tls_dir/tls.key" 2> /dev/null
  openssl req -x509 -new -key "$tls_dir/tls.key" -subj /CN=localhost -days 2 \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -out "$tls_dir/tls.pem" 2> /dev/null
  tls_engine=(--tls-cert "$tls_dir/tls.pem" --tls-key "$tls_dir/tls.key")
  # The certificate is self-signed, so the loadgen checks the handshake's signature with
  # it but does not look for an authority.
  tls_loadgen=(--tls --tls-insecure)
fi

# shellcheck disable=SC2086 # the extra flags are split on purpose
"$BIN_DIR/engine" "${tls_engine[@]}" --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --sockets "$SOCKETS" \
  --auth-timeout-ms 120000 --idle-timeout-ms "$IDLE_TIMEOUT_MS" --data-dir "$data_dir" \
  --log-level warn ${ENGINE_ARGS:-} > "$OUT/engine.log" 2>&1 &
engine_pid=$!
sleep 2

# Bound: ramp + connect timeout + sweep + hold + load + drains, with a margin.
bound=$(( CONNECTIONS / RAMP_PER_SEC + 60 + 60 + HOLD_SECS + DURATION_SECS + 120 ))
status=0
timeout --signal=INT --kill-after=30 "$bound" "$BIN_DIR/loadgen" "${tls_loadgen[@]}" \
  --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec "$RAMP_PER_SEC" \
  --hold-secs "$HOLD_SECS" --workers "$REACTORS" --sockets "$SOCKETS" \
  --rate "$RATE" --duration-secs "$DURATION_SECS" \
  --connect-timeout-secs 60 --server-pid "$engine_pid" --out "$OUT" \
  > "$OUT/summary.txt" 2> "$OUT/progress.txt" &
run_pid=$!

# Where the time goes under load: CPU, run-queue wait and wake-ups of both processes over
# the middle of the load (schedstat.json), once the loadgen reports its first sends.
window=$(( DURATION_SECS / 2 ))
while kill -0 "$run_pid" 2>/dev/null && ! grep -q "sent [1-9]" "$OUT/progress.txt"; do
  sleep 1
done
loadgen_pid=$(pgrep -P "$run_pid" -x loadgen || true)
if [ -n "$loadgen_pid" ] && [ "$RATE" -gt 0 ]; then
  sleep $(( DURATION_SECS / 4 ))
  python3 benches/schedstat.py --seconds "$window" --messages $(( RATE * window )) \
    --json "$OUT/schedstat.json" engine="$engine_pid" loadgen="$loadgen_pid" \
    > "$OUT/schedstat.txt" 2>&1 || true
fi
# With PERF_SECS, a CPU profile of the engine after that window (perf's own cost then
# shows in the rest of the load's latency): perf-top.txt and perf-breakdown.txt.
if [ -n "${PERF_SECS:-}" ] && [ -n "$loadgen_pid" ]; then
  bash benches/tools/perf_profile.sh "$engine_pid" "$PERF_SECS" "$OUT" perf || true
fi
wait "$run_pid" || status=$?
cat "$OUT/summary.txt"
echo "million.sh: report in $OUT (loadgen exit $status)"
exit "$status"
