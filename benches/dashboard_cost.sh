#!/usr/bin/env bash
# What an open dashboard costs the engine: the live dashboard (`GET /admin`) polls
# `GET /api/stats` once a second. This asks REQUESTS times, over one keep-alive
# connection, each of `GET /health` (the baseline: the cheapest JSON answer),
# `GET /api/stats` and `GET /admin` (the page, fetched once per dashboard opened), and
# reports the engine's CPU per request from /proc/PID/stat (user + system), and what
# one dashboard polling once a second costs a core. CONNECTIONS idle WebSocket
# connections are held meanwhile by the loadgen, so the figures cover a node with users.
#
# Knobs (environment): REQUESTS (20000), CONNECTIONS (10000), PORT (18095), REACTORS (2),
# OUT (benches/results/dashboard-cost-DATE). Release build. Bounded in time; stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-10000}
PORT=${PORT:-18095}
REACTORS=${REACTORS:-2}
OUT=${OUT:-benches/results/dashboard-cost-$(date -u +%Y%m%d)}
TOKEN=dashboard-cost-token
mkdir -p "$OUT"

if ss -Hltn "( sport = :$PORT )" | grep -q .; then
  echo "dashboard_cost.sh: port $PORT is in use; stop what listens there or set PORT" >&2
  exit 1
fi
cargo build --release -q -p engine -p loadgen
data=$(mktemp -d)
engine_pid=""
loadgen_pid=""
cleanup() {
  kill "$loadgen_pid" "$engine_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

target/release/engine --listen "127.0.0.1:$PORT" --reactors "$REACTORS" --api-token "$TOKEN" \
  --data-dir "$data" --log-level warn > "$OUT/engine.log" 2>&1 &
engine_pid=$!
sleep 1
timeout 600 target/release/loadgen --target "127.0.0.1:$PORT" --connections "$CONNECTIONS" \
  --ramp-per-sec 5000 --hold-secs 300 --rate 0 --out "$OUT/loadgen" > "$OUT/loadgen.txt" 2>&1 &
loadgen_pid=$!
for _ in $(seq 60); do
  held=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
  [ "$held" -ge "$CONNECTIONS" ] && break
  sleep 1
done
sleep 2

python3 - "$engine_pid" "$PORT" "$TOKEN" "$REQUESTS" "$held" <<'EOF' | tee "$OUT/summary.txt"
import http.client, os, sys, time
pid, port, token, requests, held = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
tick = os.sysconf("SC_CLK_TCK")

def cpu_s():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

def run(path):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {token}"}
    size = 0
    before, started = cpu_s(), time.monotonic()
    for _ in range(requests):
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            sys.exit(f"{path}: {answer.status} {body[:200]!r}")
        size = len(body)
    cpu, wall = cpu_s() - before, time.monotonic() - started
    conn.close()
    return cpu * 1e6 / requests, size, wall

print(f"engine CPU per request, {requests} requests each over one keep-alive connection,")
print(f"{held} WebSocket connections held, {os.cpu_count()} CPUs")
print(f"{'request':<14} {'CPU µs':>8} {'x /health':>10} {'body B':>8}")
base = None
for path in ["/health", "/api/stats", "/admin"]:
    us, size, _ = run(path)
    base = base or us
    print(f"{path:<14} {us:8.1f} {us / base:10.2f} {size:8d}")
    if path == "/api/stats":
        stats_us = us
print(f"one dashboard polling once a second: {stats_us:.1f} µs of CPU a second "
      f"= {stats_us / 1e4:.4f}% of one core")
EOF
echo "dashboard_cost.sh: results in $OUT"
