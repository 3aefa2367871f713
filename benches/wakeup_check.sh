#!/usr/bin/env bash
# Is a low-rate tail the VM waking idle vCPUs? Runs the engine (2 reactors) and the loadgen
# (10,000 connections, 10 s) at RATES, each once with idle cores and once with two
# SCHED_IDLE spinners that keep both vCPUs from halting without taking time from anyone
# else, ROUNDS times interleaved, and prints each run's delivery percentiles.
#
# Knobs (environment): RATES ("250 5000"), ROUNDS (2), PORT (18480).
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"250 5000"}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-18480}
ulimit -n "$(ulimit -Hn)"
cargo build --release -p engine -p loadgen
spinners=()
engine=""
cleanup() {
  [ -n "$engine" ] && kill "$engine" 2>/dev/null || true
  [ ${#spinners[@]} -gt 0 ] && kill "${spinners[@]}" 2>/dev/null || true
}
trap cleanup EXIT
run() {
  target/release/engine --listen "127.0.0.1:$PORT" --reactors 2 --log-level warn > /dev/null 2>&1 &
  engine=$!
  sleep 1
  target/release/loadgen --target "127.0.0.1:$PORT" --connections 10000 --ramp-per-sec 10000 \
    --hold-secs 2 --workers 1 --rate "$1" --duration-secs 10 --out "target/wakeup-check" 2> /dev/null \
    | grep -E "^delivery" || true
  kill "$engine"; wait "$engine" 2> /dev/null || true
  engine=""
}
for round in $(seq "$ROUNDS"); do
  for rate in $RATES; do
    echo "round $round, $rate msg/s, idle cores:"
    run "$rate"
    chrt --idle 0 sh -c 'while :; do :; done' & spinners=($!)
    chrt --idle 0 sh -c 'while :; do :; done' & spinners+=($!)
    echo "round $round, $rate msg/s, SCHED_IDLE spinners:"
    run "$rate"
    kill "${spinners[@]}"; spinners=()
  done
done
