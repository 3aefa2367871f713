#!/usr/bin/env bash
# TLS handshakes against the real engine: the loadgen (`--tls`) opens CONNECTIONS
# connections at RAMP_PER_SEC, each a full TLS 1.3 handshake, upgrade and auth, against a
# one-reactor engine serving an ECDSA P-256 and then an RSA-2048 certificate (made with
# openssl), and once in plaintext for the baseline. Prints per run the connect rate
# reached and the engine's CPU seconds per thousand connections (utime + stime from
# /proc over the ramp), from which handshakes per second of one engine core follow.
# The loadgen runs on the same 2 cores, doing the client's half of every handshake.
#
# RAMP_PER_SEC must stay below what the two cores sustain for both halves of the
# handshakes (about 900 a second with ECDSA here): past it, handshakes wait past the
# engine's --handshake-timeout-ms and are dropped, and the figures measure the overload.
#
# Knobs (environment): CONNECTIONS (10000), RAMP_PER_SEC (500), PORT (18640),
# OUT (target/tls-handshakes). Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-10000}
RAMP_PER_SEC=${RAMP_PER_SEC:-500}
PORT=${PORT:-18640}
OUT=${OUT:-target/tls-handshakes}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen
rm -rf "$OUT"
mkdir -p "$OUT"
openssl ecparam -genkey -name prime256v1 -noout -out "$OUT/ec.key" 2> /dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$OUT/rsa.key" 2> /dev/null
for key in ec rsa; do
  openssl req -x509 -new -key "$OUT/$key.key" -subj /CN=localhost -days 2 \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -out "$OUT/$key.pem" 2> /dev/null
done
engine=""
trap '[ -n "$engine" ] && kill $engine 2>/dev/null || true' EXIT
ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
bound=$(( CONNECTIONS / RAMP_PER_SEC * 4 + 60 ))
printf '%-6s %8s %8s %22s %26s\n' run held "conn/s" "engine CPU s per 1000" "per engine CPU second"
for run in plain ec rsa; do
  tls_engine=() tls_loadgen=()
  if [ "$run" != plain ]; then
    tls_engine=(--tls-cert "$OUT/$run.pem" --tls-key "$OUT/$run.key")
    tls_loadgen=(--tls --tls-insecure)
  fi
  target/release/engine "${tls_engine[@]}" --listen "127.0.0.1:$PORT" --reactors 1 \
    --data-dir "$OUT/$run-data" --log-level warn > "$OUT/$run-engine.log" 2>&1 &
  engine=$!
  sleep 1
  before=$(cpu_ticks "$engine")
  timeout --signal=INT "$bound" target/release/loadgen "${tls_loadgen[@]}" \
    --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" --ramp-per-sec "$RAMP_PER_SEC" \
    --hold-secs 0 --workers 1 --connect-timeout-secs 60 --out "$OUT/$run" \
    > "$OUT/$run.txt" 2>&1 || true
  after=$(cpu_ticks "$engine")
  kill "$engine"; wait "$engine" 2> /dev/null || true
  engine=""
  python3 - "$OUT/$run/report.json" "$run" "$before" "$after" "$ticks" "$CONNECTIONS" <<'PY'
import json, sys
report_path, run, before, after, ticks, n = sys.argv[1:]
report = json.load(open(report_path))
cpu = (int(after) - int(before)) / int(ticks)
per_1000 = cpu * 1000 / int(n)
print(f"{run:<6} {report['held']:>8} {report['connect_rate_per_sec']:>8.0f} {per_1000:>22.3f} {1000 / per_1000:>26.0f}")
PY
done
