#!/usr/bin/env bash
# A CPU profile of a running process, kept as text: `perf record -g` for SECS seconds,
# then the most-sampled symbols (PREFIX-top.txt) and the breakdown by thread, syscall and
# io_uring operation of benches/tools/perf_breakdown.py (PREFIX-breakdown.txt). The raw
# perf.data is removed. Failing to profile (no perf, no permission) only leaves the files
# empty.
#
# usage: bash benches/tools/perf_profile.sh PID SECS OUT_DIR PREFIX
set -uo pipefail
pid=$1 secs=$2 dir=$3 prefix=$4
data="$dir/$prefix.data"
perf record -F 499 -g -p "$pid" -o "$data" -- sleep "$secs" 2> /dev/null
perf report -i "$data" --no-children --sort sym --stdio 2> /dev/null \
  | grep -E "^ +[0-9]" | head -60 > "$dir/$prefix-top.txt"
perf script -i "$data" 2> /dev/null \
  | python3 "$(dirname "$0")/perf_breakdown.py" > "$dir/$prefix-breakdown.txt"
rm -f "$data"
