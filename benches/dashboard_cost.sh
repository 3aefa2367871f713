#!/usr/bin/env bash
# What an open dashboard costs the engine: the live dashboard (`GET /admin`) polls
# `GET /api/stats` once a second (`?scope=cluster` in a cluster). This asks REQUESTS
# times, over one keep-alive connection, each of `GET /health` (the baseline: the
# cheapest JSON answer), `GET /api/stats` and `GET /admin` (the page, fetched once per
# dashboard opened), and reports the engine's CPU per request from /proc/PID/stat (user +
# system), and what one dashboard polling once a second costs a core. CONNECTIONS idle
# WebSocket connections are held meanwhile by the loadgen, so the figures cover a node
# with users.
#
# Then, unless CLUSTER=0, the same node joins a two-node cluster on a nats-server of its
# own: `GET /api/stats?scope=cluster` asked REQUESTS_CLUSTER times of node a, with the
# CPU of node a (which gathers) and node b (which answers with its figures) per request.
#
# Knobs (environment): REQUESTS (20000), REQUESTS_CLUSTER (5000), CONNECTIONS (10000),
# PORT (18095; the second node and NATS take the next two), REACTORS (2), CLUSTER (1),
# OUT (benches/results/dashboard-cost-DATE). Release build. Bounded in time; stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
REQUESTS_CLUSTER=${REQUESTS_CLUSTER:-5000}
CONNECTIONS=${CONNECTIONS:-10000}
PORT=${PORT:-18095}
REACTORS=${REACTORS:-2}
CLUSTER=${CLUSTER:-1}
OUT=${OUT:-benches/results/dashboard-cost-$(date -u +%Y%m%d)}
TOKEN=dashboard-cost-token
PORT_B=$((PORT + 1))
NATS_PORT=$((PORT + 2))
mkdir -p "$OUT"

for port in "$PORT" "$PORT_B" "$NATS_PORT"; do
  if ss -Hltn "( sport = :$port )" | grep -q .; then
    echo "dashboard_cost.sh: port $port is in use; stop what listens there or set PORT" >&2
    exit 1
  fi
done
cargo build --release -q -p engine -p loadgen
source benches/tools/scratch.sh

# engine PORT NAME [flags…]: starts a node, leaves its pid in $started.
engine() {
  local port=$1 name=$2
  shift 2
  target/release/engine --listen "127.0.0.1:$port" --reactors "$REACTORS" --api-token "$TOKEN" \
    --data-dir "$work/$name" --log-level warn "$@" > "$OUT/$name.log" 2>&1 &
  started=$!
  pids+=("$started")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/health/ready" > /dev/null && return
    sleep 0.1
  done
  echo "dashboard_cost.sh: node $name did not get ready" >&2
  exit 1
}

# hold PORT: the loadgen holds CONNECTIONS idle connections on the node at PORT.
hold() {
  timeout 900 target/release/loadgen --target "127.0.0.1:$1" --connections "$CONNECTIONS" \
    --ramp-per-sec 5000 --hold-secs 600 --rate 0 > "$OUT/loadgen-$1.txt" 2>&1 &
  pids+=($!)
  for _ in $(seq 60); do
    held=$(ss -Htn state established "( sport = :$1 )" | wc -l)
    [ "$held" -ge "$CONNECTIONS" ] && break
    sleep 1
  done
  sleep 2
}

# measure REQUESTS PORT PATH… -- PID…: engine CPU per request of each PID, per path.
measure() {
  python3 - "$TOKEN" "$@" <<'EOF'
import http.client, os, sys
args = sys.argv[1:]
token, requests, port = args[0], int(args[1]), int(args[2])
split = args.index("--")
paths, pids = args[3:split], args[split + 1:]
tick = os.sysconf("SC_CLK_TCK")

def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

for path in paths:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {token}"}
    before = [cpu_s(pid) for pid in pids]
    for _ in range(requests):
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            sys.exit(f"{path}: {answer.status} {body[:200]!r}")
    conn.close()
    costs = [(cpu_s(pid) - b) * 1e6 / requests for pid, b in zip(pids, before)]
    print(f"{path:<26} {len(body):8d} B  " + "  ".join(f"{c:8.1f}" for c in costs))
EOF
}

exec > >(tee "$OUT/summary.txt")
engine "$PORT" alone
alone=$started
hold "$PORT"
echo "engine CPU µs per request; $REQUESTS requests each over one keep-alive connection;"
echo "$held WebSocket connections held; $(nproc) CPUs; release build"
echo "== one node"
echo "request                        body     node"
measure "$REQUESTS" "$PORT" /health /api/stats /admin -- "$alone"
stop_all

if [ "$CLUSTER" != 0 ]; then
  /usr/sbin/nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$work/nats" > "$OUT/nats.log" 2>&1 &
  pids+=($!)
  engine "$PORT" a --cluster "nats://127.0.0.1:$NATS_PORT" --node-id a
  a=$started
  engine "$PORT_B" b --cluster "nats://127.0.0.1:$NATS_PORT" --node-id b
  b=$started
  hold "$PORT"
  echo "== two nodes and one nats-server; asked of node a ($REQUESTS_CLUSTER requests each)"
  echo "request                        body     node a    node b"
  measure "$REQUESTS_CLUSTER" "$PORT" /health /api/stats '/api/stats?scope=cluster' -- "$a" "$b"
fi
echo "dashboard_cost.sh: results in $OUT"
