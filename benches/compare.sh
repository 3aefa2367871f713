#!/usr/bin/env bash
# The engine side by side with the stacks users would otherwise pick (benches/peers/), in
# one run, driven by the same loadgen with the same parameters:
#
#   1. latency at a fixed rate, repetitions interleaved across servers (chat scenario);
#   2. the highest rate of a step series at which the median delivery p99 of STEP_REPS
#      runs stays under P99_LIMIT_US (1 ms by default) with nothing lost;
#   3. the same fixed-rate run in the plain echo scenario (the peers; the engine speaks
#      only its chat protocol);
#   4. user-space bytes per idle connection (server RSS growth ÷ held) at each of
#      MEMORY_CONNECTIONS, where the server can hold that many (a peer is one process
#      with one fd table, so at most RLIMIT_NOFILE sockets);
#   5. server CPU seconds per million messages, from the fixed-rate runs.
#
# Builds and installs every peer from the registries first (cargo, npm, pip into a venv
# under target/peers). Writes each run's loadgen report (.json, .hgrm, .svg) under OUT and
# a summary table with ratios to the engine in OUT/summary.md. Bounded: every loadgen run
# has a timeout and every server is stopped after its run.
#
# Knobs (environment): CONNECTIONS (10000), FIXED_RATE (5000 msg/s), DURATION_SECS (10),
# REPS (3), STEP_RATES ("2000 5000 10000 20000 40000 80000"), STEP_REPS (3: runs per
# rate, the median p99 decides), MEMORY_CONNECTIONS
# ("19000 100000"), P99_LIMIT_US (1000), SERVERS ("engine tokio-tungstenite node-ws
# python-websockets libwebsockets"; the C relay needs Debian's libwebsockets-dev), SECTIONS ("fixed step echo memory": which of 1-4 to run; 5 comes
# with 1), OUT (benches/results/compare-DATE; an existing run directory gains the sections).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-10000}
FIXED_RATE=${FIXED_RATE:-5000}
DURATION_SECS=${DURATION_SECS:-10}
REPS=${REPS:-3}
STEP_RATES=${STEP_RATES:-"2000 5000 10000 20000 40000 80000"}
MEMORY_CONNECTIONS=${MEMORY_CONNECTIONS:-"19000 100000"}
SERVERS=${SERVERS:-"engine tokio-tungstenite node-ws python-websockets libwebsockets"}
SECTIONS=${SECTIONS:-"fixed step echo memory"}
STEP_REPS=${STEP_REPS:-3}
export P99_LIMIT_US=${P99_LIMIT_US:-1000}
OUT=${OUT:-benches/results/compare-$(date -u +%Y%m%d-%H%M%S)}
PORT=18190
PEERS_DIR=target/peers
mkdir -p "$OUT" "$PEERS_DIR"
ulimit -n "$(ulimit -Hn)"
PER_TABLE=$(( $(ulimit -Hn) - 64 ))

log() { echo "compare.sh: $*" >&2; }

build() {
  log "building the engine, the loadgen and the peers"
  cargo build --release -p engine -p loadgen
  for server in $SERVERS; do
    case $server in
      engine) ;;
      tokio-tungstenite)
        CARGO_TARGET_DIR=$PEERS_DIR/cargo cargo build --release \
          --manifest-path benches/peers/tokio-tungstenite/Cargo.toml ;;
      node-ws)
        command -v node > /dev/null || { log "node-ws needs Node.js (apt install nodejs npm)"; exit 1; }
        npm ci --silent --no-audit --no-fund --prefix benches/peers/node-ws ;;
      python-websockets)
        [ -x "$PEERS_DIR/venv/bin/python" ] || python3 -m venv "$PEERS_DIR/venv"
        "$PEERS_DIR/venv/bin/pip" install --quiet -r benches/peers/python-websockets/requirements.txt ;;
      libwebsockets)
        pkg-config --exists libwebsockets ||
          { log "libwebsockets needs Debian's libwebsockets-dev (apt install libwebsockets-dev pkg-config)"; exit 1; }
        # shellcheck disable=SC2046 # pkg-config's flags are split on purpose
        cc -O2 -Wall -o "$PEERS_DIR/lws-relay" benches/peers/libwebsockets/relay.c \
          $(pkg-config --cflags --libs libwebsockets) ;;
      *) log "unknown server $server"; exit 2 ;;
    esac
  done
}

# Versions of what was measured, for the summary.
versions() {
  echo "engine $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine || echo -dirty)"
  echo "tokio-tungstenite: $(grep -A1 'name = "tokio-tungstenite"' benches/peers/tokio-tungstenite/Cargo.lock 2>/dev/null | tail -1 | tr -d ' "')"
  echo "node $(node --version 2>/dev/null), ws $(node -p 'require("./benches/peers/node-ws/node_modules/ws/package.json").version' 2>/dev/null)"
  echo "$("$PEERS_DIR/venv/bin/python" --version 2>&1), websockets $("$PEERS_DIR/venv/bin/python" -c 'import websockets; print(websockets.__version__)' 2>/dev/null)"
  echo "libwebsockets $(pkg-config --modversion libwebsockets 2>/dev/null) (libev loop), $(cc --version | head -1)"
}

server_pid=""
# Starts SERVER able to hold CONNS connections on $PORT; sets server_pid; waits until it listens.
start_server() {
  local server=$1 conns=$2 log_file=$3
  case $server in
    engine)
      local reactors=$(( (conns + PER_TABLE - 1) / PER_TABLE ))
      [ "$reactors" -lt 2 ] && reactors=2
      # A fresh store each run, as every peer starts empty.
      rm -rf "$PEERS_DIR/engine-data"
      target/release/engine --listen "127.0.0.1:$PORT" --reactors "$reactors" \
        --data-dir "$PEERS_DIR/engine-data" --auth-timeout-ms 60000 --log-level warn \
        > "$log_file" 2>&1 & ;;
    tokio-tungstenite)
      "$PEERS_DIR/cargo/release/peer-tokio-tungstenite" "127.0.0.1:$PORT" > "$log_file" 2>&1 & ;;
    node-ws)
      node benches/peers/node-ws/relay.js "127.0.0.1:$PORT" > "$log_file" 2>&1 & ;;
    python-websockets)
      "$PEERS_DIR/venv/bin/python" benches/peers/python-websockets/relay.py "127.0.0.1:$PORT" > "$log_file" 2>&1 & ;;
    libwebsockets)
      "$PEERS_DIR/lws-relay" "127.0.0.1:$PORT" > "$log_file" 2>&1 & ;;
  esac
  server_pid=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$log_file" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || { log "$server exited at start: $(tail -3 "$log_file")"; return 1; }
    sleep 0.1
  done
  log "$server did not start listening in 10 s"
  return 1
}

stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    timeout 30 tail --pid="$server_pid" -f /dev/null || kill -9 "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT

# One loadgen run against a fresh server: run SERVER SCENARIO CONNS RATE DIR.
run() {
  local server=$1 scenario=$2 conns=$3 rate=$4 dir=$5
  mkdir -p "$dir"
  start_server "$server" "$conns" "$dir/server.log" || return 0
  local workers=$(( (conns + PER_TABLE - 1) / PER_TABLE ))
  local bound=$(( conns / 5000 + 30 + 5 + DURATION_SECS + 30 ))
  timeout --signal=INT --kill-after=15 "$bound" target/release/loadgen \
    --target "127.0.0.1:$PORT" --scenario "$scenario" --connections "$conns" \
    --ramp-per-sec 10000 --hold-secs 3 --workers "$workers" --rate "$rate" \
    --duration-secs "$DURATION_SECS" --connect-timeout-secs 20 --server-pid "$server_pid" \
    --out "$dir" > "$dir/summary.txt" 2> "$dir/progress.txt" || true
  stop_server
  log "$(basename "$(dirname "$dir")")/$(basename "$dir"): $(grep -E '^(held|delivery latency)' "$dir/summary.txt" | tr -s ' ' | paste -sd ';')"
}

section() { [[ " $SECTIONS " == *" $1 "* ]]; }

build
versions > "$OUT/versions.txt"
cp /proc/cpuinfo "$OUT/cpuinfo.txt" 2>/dev/null || true

section fixed && for rep in $(seq "$REPS"); do
  for server in $SERVERS; do
    run "$server" chat "$CONNECTIONS" "$FIXED_RATE" "$OUT/fixed/$server-$rep"
  done
done

section step && rm -rf "$OUT/step" && echo "$P99_LIMIT_US" > "$OUT/p99_limit_us.txt" &&
for server in $SERVERS; do
  for rate in $STEP_RATES; do
    for rep in $(seq "$STEP_REPS"); do
      run "$server" chat "$CONNECTIONS" "$rate" "$OUT/step/$server-$rate-$rep"
    done
    # Stop stepping once the median p99 of the repetitions is past the limit or any
    # message was lost.
    python3 - "$OUT/step" "$server-$rate" <<'EOF' || break
import json, os, statistics, sys
from pathlib import Path
reports = []
for d in Path(sys.argv[1]).glob(sys.argv[2] + "-*"):
    try:
        reports.append(json.loads((d / "report.json").read_text()))
    except (OSError, ValueError):
        sys.exit(1)
limit = int(os.environ["P99_LIMIT_US"])
p99 = statistics.median(r["latency"]["delivery"]["p99_us"] or 10**9 for r in reports)
ok = all(r["load"]["lost"] == 0 and r["load"].get("rejected", 0) == 0 and r["held"] > 0
         for r in reports) and p99 <= limit
sys.exit(0 if ok else 1)
EOF
  done
done

section echo && for rep in $(seq "$REPS"); do
  for server in $SERVERS; do
    [ "$server" = engine ] && continue
    run "$server" echo "$CONNECTIONS" "$FIXED_RATE" "$OUT/echo/$server-$rep"
  done
done

section memory && for conns in $MEMORY_CONNECTIONS; do
  for server in $SERVERS; do
    if [ "$server" != engine ] && [ "$conns" -gt "$PER_TABLE" ]; then
      mkdir -p "$OUT/memory/$server-$conns"
      echo "one process with one fd table of $(ulimit -Hn): cannot hold $conns" > "$OUT/memory/$server-$conns/skipped.txt"
      continue
    fi
    run "$server" chat "$conns" 0 "$OUT/memory/$server-$conns"
  done
done

python3 benches/compare_summary.py "$OUT" | tee "$OUT/summary.md"
