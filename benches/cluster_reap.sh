#!/usr/bin/env bash
# How long a killed node's users take to be reported offline to the events webhook, and
# what reaping them costs (issue 21; docs/cluster.md, "Presence events"): two engine nodes
# and one nats-server on this box, both nodes posting to a local events sink
# (benches/tools/events_sink.py). The loadgen holds USERS users on node a; once every one
# is reported online, node a is killed with SIGKILL. Node b counts it dead after 10 s,
# claims its reap, walks its holdings in JetStream and checks each user: the report gives
# the time from the kill to the first and the last `user_offline`, how many came, and the
# CPU node b, nats-server and the sink spent from the kill to the last one. It also gives the CPU
# node a and nats-server spent while the users logged in (what each login costs with the
# webhook on: the check, and since the twenty-first session the holding's write), when
# node a's threads all ended and when node b counted it dead, and how often nats-server
# warned that reading a connection's input took over 2 s, before and after the kill. Each
# second's offlines and CPU shares (the loadgen's and the whole machine's too) go to
# offline-per-second.txt and cpu-per-second.txt.
#
# Knobs (environment): USERS (10000), KILL (1; 0: stop after the logins, for builds that
# do not reap), CLIENTS (pause: the loadgen is stopped at the kill, as clients on other
# machines would not share the reaper's cores; react: it takes its closed connections
# meanwhile), OUT (benches/results/cluster-reap-DATE), BIN_DIR (default: build
# target/release), NATS_FLAGS (more flags for nats-server, such as `-m PORT --profile
# PORT` to look inside it during a run). Bounded; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-10000}
KILL=${KILL:-1}
OUT=${OUT:-benches/results/cluster-reap-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
source benches/tools/release_bins.sh

source benches/tools/scratch.sh
source benches/tools/ports.sh

count() { grep -c " $1 " "$events" || true; }
# Waits until COUNT events of kind $1 came, at most $3 seconds. Each look reads the whole
# events file: past 200,000 users it looks once a second, so as not to take the CPU the
# reap is measured on (the times come from the sink's stamps, not from these looks).
poll=0.1
[ "$USERS" -le 200000 ] || poll=1
wait_for() {
  local deadline=$(( $(date +%s) + $3 ))
  while [ "$(count "$1")" -lt "$2" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep "$poll"; done
}

events="$work/events.txt"
: > "$events"
sink_port=$(free_port)
python3 benches/tools/events_sink.py "$sink_port" "$events" &
sink_pid=$!
pids+=($sink_pid)
nats_port=$(free_port)
# shellcheck disable=SC2086 # NATS_FLAGS is a list of flags
/usr/sbin/nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" ${NATS_FLAGS:-} > "$OUT/nats.log" 2>&1 &
nats_pid=$!
pids+=($nats_pid)
sleep 1
declare -A port pid
for node in a b; do
  port[$node]=$(free_port)
  "$BIN_DIR/engine" --listen "127.0.0.1:${port[$node]}" --reactors 1 --data-dir "$work/$node" \
    --cluster "nats://127.0.0.1:$nats_port" --node-id "$node" --log-level warn \
    --events-webhook "http://127.0.0.1:$sink_port/events" \
    --events-secret "bench-events-secret-0123456789abcdef" \
    > "$OUT/engine-$node.log" 2>&1 &
  pid[$node]=$!
  pids+=($!)
done
for node in a b; do wait_ready "${port[$node]}"; done

exec > >(tee "$OUT/result.txt") 2>&1
echo "== $USERS users on node a, reported online"
a_before=$(cpu_ticks "${pid[a]}")
nats_before=$(cpu_ticks "$nats_pid")
"$BIN_DIR/loadgen" --target "127.0.0.1:${port[a]}" --connections "$USERS" \
  --hold-secs 600 --rate 0 --out "$work/loadgen" > "$OUT/loadgen.log" 2>&1 &
loadgen_pid=$!
pids+=($loadgen_pid)
# The loadgen logs in 5,000 users a second; twice that long, and at least two minutes.
wait_for user_online "$USERS" $(( USERS / 2500 > 120 ? USERS / 2500 : 120 ))
echo "online: $(count user_online)"
hz=$(getconf CLK_TCK)
python3 - "$USERS" "$(( $(cpu_ticks "${pid[a]}") - a_before ))" \
  "$(( $(cpu_ticks "$nats_pid") - nats_before ))" "$hz" <<'PY'
import sys
users, a_ticks, nats_ticks, hz = (int(v) for v in sys.argv[1:])
print(f"CPU while they logged in: node a {a_ticks / hz:.2f} s, nats-server {nats_ticks / hz:.2f} s"
      f" ({a_ticks / hz / users * 1e6:.0f} and {nats_ticks / hz / users * 1e6:.0f} us a login)")
PY
[ "$KILL" = 1 ] || exit 0

echo "== node a killed (SIGKILL)"
# A real node's clients are on other machines. Here the loadgen shares the 2 cores, and
# its handling of USERS closed connections (and the kernel's, for both ends) would take
# the reaper's CPU: it is paused at the kill unless CLIENTS=react.
if [ "${CLIENTS:-pause}" = pause ]; then
  kill -STOP "$loadgen_pid"
  trap 'kill -CONT "$loadgen_pid" 2>/dev/null; stop_all; rm -rf "$work"' EXIT
  echo "the loadgen is paused at the kill (CLIENTS=react: it takes its closed connections meanwhile)"
fi
b_before=$(cpu_ticks "${pid[b]}")
nats_before=$(cpu_ticks "$nats_pid")
sink_before=$(cpu_ticks "$sink_pid")
killed=$(date +%s.%N)
kill -9 "${pid[a]}"
# When every thread of node a has ended (each a zombie, or the process gone): a process
# holding a million sockets may take the kernel a while to tear down, and its NATS
# connections close only then. The main thread alone is a zombie while others still exit.
a_ended() {
  local task
  [ -e "/proc/${pid[a]}" ] || return 0
  for task in "/proc/${pid[a]}"/task/*/stat; do
    [ "$(awk '{print $3}' "$task" 2>/dev/null)" = Z ] || return 1
  done
}
( until a_ended; do sleep 0.05; done; date +%s.%N > "$work/a-ended" ) &
# Each second from the kill on: the CPU node b, nats-server, the sink and the loadgen have
# used so far, and the whole machine's busy time (user, system, interrupts: the kernel's
# teardown of the dead node's sockets too).
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
( while sleep 1; do
    echo "$(date +%s.%N) $(cpu_ticks "${pid[b]}") $(cpu_ticks "$nats_pid") $(cpu_ticks "$sink_pid")" \
      "$(cpu_ticks "$loadgen_pid") $(busy_ticks)"
  done > "$work/cpu-samples" 2>/dev/null ) &
sampler=$!
wait_for user_offline "$USERS" $(( USERS / 5000 > 180 ? USERS / 5000 : 180 ))
b_after=$(cpu_ticks "${pid[b]}")
nats_after=$(cpu_ticks "$nats_pid")
sink_after=$(cpu_ticks "$sink_pid")
kill "$sampler" 2>/dev/null || true
python3 - "$events" "$killed" "$USERS" "$(( b_after - b_before ))" "$(( nats_after - nats_before ))" "$hz" "$OUT" "$work/a-ended" "$(( sink_after - sink_before ))" "$work/cpu-samples" <<'PY'
import collections, datetime, os, re, sys
events, killed, users, b_ticks, nats_ticks, hz = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
out_dir, a_ended, sink_ticks, samples = sys.argv[7], sys.argv[8], int(sys.argv[9]), sys.argv[10]
# The kill's timeline: node a's process ended, node b counted it dead.
if os.path.exists(a_ended):
    print(f"node a's process ended {float(open(a_ended).read()) - killed:.2f} s after the kill")
stamp = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")
for line in open(f"{out_dir}/engine-b.log", errors="replace"):
    found = stamp.search(line)
    if found and "counted dead" in line:
        at = datetime.datetime.fromisoformat(found.group(1)).replace(tzinfo=datetime.timezone.utc)
        print(f"node b counted it dead {at.timestamp() - killed:.2f} s after the kill")
# nats-server's warnings that reading a connection's input took long: every client of
# that connection waited meanwhile.
held_up = []
for line in open(f"{out_dir}/nats.log", errors="replace"):
    found = re.search(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+) .*Readloop processing time: ([\d.]+)(m?s)", line)
    if found:
        at = datetime.datetime.strptime(found.group(1), "%Y/%m/%d %H:%M:%S.%f")
        at = at.replace(tzinfo=datetime.timezone.utc).timestamp()
        seconds = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
        held_up.append((at - seconds - killed, seconds))
for label, part in [("before", [h for h in held_up if h[0] < 0]), ("after", [h for h in held_up if h[0] >= 0])]:
    longest = max(part, key=lambda h: h[1], default=None)
    where = f", the longest {longest[1]:.2f} s from {longest[0]:.2f} s after the kill" if longest else ""
    print(f"connections held up {label} the kill (nats-server's Readloop warnings): {len(part)}{where}")
offline = sorted(float(line.split()[0]) for line in open(events) if " user_offline " in line)
# How the reap's pace went: offlines posted in each second after the kill.
per_second = collections.Counter(int(at - killed) for at in offline)
with open(f"{out_dir}/offline-per-second.txt", "w") as out:
    out.writelines(f"{second} {per_second[second]}\n" for second in sorted(per_second))
# And the share of a core node b, nats-server and the sink each used in each second.
rows = [[float(v) for v in line.split()] for line in open(samples) if len(line.split()) == 6]
with open(f"{out_dir}/cpu-per-second.txt", "w") as out:
    out.write("# seconds after the kill, then the cores used since the sample before: node b, "
              "nats-server, the events sink, the loadgen, the whole machine\n")
    for before, after in zip(rows, rows[1:]):
        cores = [(after[i] - before[i]) / hz / (after[0] - before[0]) for i in (1, 2, 3, 4, 5)]
        out.write(f"{after[0] - killed:.1f} " + " ".join(f"{c:.2f}" for c in cores) + "\n")
nodes = {line.split()[3] for line in open(events) if " user_offline " in line}
users_off = {line.split()[2] for line in open(events) if " user_offline " in line}
print(f"user_offline events: {len(offline)} for {len(users_off)} distinct users of {users}, posted by {sorted(nodes)}")
if offline:
    first, last = offline[0] - killed, offline[-1] - killed
    print(f"first offline {first:.2f} s after the kill, last {last:.2f} s after it")
    walk = last - first
    rate = len(offline) / walk if walk > 0 else float("inf")
    print(f"reaped in {walk:.2f} s from the first to the last: {rate:.0f} users/s")
    # The sink stamps each batch once: how full the events thread's posts came, and how
    # far apart (a thread posting one batch at a time bounds the reap's pace).
    stamps = sorted(set(offline))
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:])) or [0.0]
    print(f"the sink took them in {len(stamps)} posts, {len(offline) / len(stamps):.0f} a post on "
          f"average, {gaps[len(gaps) // 2] * 1000:.1f} ms apart (median)")
print(f"CPU from the kill to the last: node b {b_ticks / hz:.2f} s, nats-server {nats_ticks / hz:.2f} s, "
      f"the events sink {sink_ticks / hz:.2f} s")
if offline:
    per_user = lambda ticks: f"{ticks / hz / len(offline) * 1e6:.0f} us"
    print(f"per user reaped: node b {per_user(b_ticks)}, nats-server {per_user(nats_ticks)}, "
          f"the events sink {per_user(sink_ticks)}")
PY
