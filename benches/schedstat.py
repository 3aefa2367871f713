#!/usr/bin/env python3
"""Where the time of a set of processes goes over a window: CPU (user, system), time spent
runnable but waiting for a core, and how often threads were scheduled.

Reads /proc/PID/stat and /proc/PID/task/*/{schedstat,status} at the start and the end of
the window (no tracer, no overhead) and prints the differences per process. With the
number of messages handled in the window it also prints the figures per message.

    python3 benches/schedstat.py --seconds 10 --messages 100000 engine=PID loadgen=PID
    python3 benches/schedstat.py --seconds 5 --threads engine=PID   # one row per thread name

Run queue wait is the time a thread was ready to run but no core was free: on a box where
more threads than cores take turns, it is the latency that every hop between threads adds.
"""

import argparse
import json
import os
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def sample(pid):
    """Totals over every thread of `pid` right now."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after the command: state is fields[0]; utime and stime are stat fields 14, 15.
    user, system = int(fields[11]) / TICKS, int(fields[12]) / TICKS
    run_ns = wait_ns = slices = voluntary = involuntary = 0
    threads = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                r, w, s = (int(x) for x in f.read().split())
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        involuntary += int(line.split()[1])
        except FileNotFoundError:
            continue  # the thread exited between the listing and the read
        run_ns, wait_ns, slices = run_ns + r, wait_ns + w, slices + s
        threads += 1
    return {
        "user_s": user,
        "system_s": system,
        "run_s": run_ns / 1e9,
        "runqueue_wait_s": wait_ns / 1e9,
        "slices": slices,
        "voluntary_switches": voluntary,
        "involuntary_switches": involuntary,
        "threads": threads,
    }


def thread_times(pid):
    """{thread name: (cpu s, run-queue wait s)} summed over the threads of that name."""
    totals = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait, _ = (int(x) for x in f.read().split())
        except FileNotFoundError:
            continue
        cpu0, wait0 = totals.get(name, (0.0, 0.0))
        totals[name] = (cpu0 + run / 1e9, wait0 + wait / 1e9)
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, required=True, help="length of the window")
    parser.add_argument("--messages", type=int, help="messages handled in the window, for per-message figures")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--threads", action="store_true",
                        help="one row per thread name: share of a core running and waiting for one")
    parser.add_argument("processes", nargs="+", metavar="NAME=PID")
    args = parser.parse_args()
    named = []
    for item in args.processes:
        name, _, pid = item.partition("=")
        if not pid.isdigit():
            sys.exit(f"schedstat.py: expected NAME=PID, got {item!r}")
        named.append((name, int(pid)))

    if args.threads:
        try:
            before = {name: thread_times(pid) for name, pid in named}
            time.sleep(args.seconds)
            after = {name: thread_times(pid) for name, pid in named}
        except FileNotFoundError as e:
            sys.exit(f"schedstat.py: a process is gone: {e.filename}")
        for name, _ in named:
            for thread, (cpu, wait) in sorted(after[name].items()):
                cpu0, wait0 = before[name].get(thread, (0.0, 0.0))
                busy, waiting = (cpu - cpu0) / args.seconds, (wait - wait0) / args.seconds
                if busy >= 0.01:
                    print(f"{name}/{thread:16} running {busy:5.0%} of a core, waiting for one {waiting:5.0%}")
        return

    try:
        before = {name: sample(pid) for name, pid in named}
        time.sleep(args.seconds)
        after = {name: sample(pid) for name, pid in named}
    except FileNotFoundError as e:
        sys.exit(f"schedstat.py: a process is gone: {e.filename}")

    report = {}
    for name, _ in named:
        delta = {k: after[name][k] - before[name][k] for k in before[name] if k != "threads"}
        delta["threads"] = after[name]["threads"]
        delta["cores_busy"] = (delta["user_s"] + delta["system_s"]) / args.seconds
        delta["wait_per_slice_us"] = 1e6 * delta["runqueue_wait_s"] / max(delta["slices"], 1)
        if args.messages:
            per = args.messages
            delta["cpu_us_per_message"] = 1e6 * (delta["user_s"] + delta["system_s"]) / per
            delta["slices_per_message"] = delta["slices"] / per
        report[name] = delta
        line = (
            f"{name:10} threads {delta['threads']:4}  cores busy {delta['cores_busy']:.2f} "
            f"(user {delta['user_s']:.2f} s, sys {delta['system_s']:.2f} s)  "
            f"run-queue wait {delta['runqueue_wait_s']:.2f} s over {delta['slices']} slices "
            f"({delta['wait_per_slice_us']:.0f} µs each)"
        )
        if args.messages:
            line += (
                f"  per message: {delta['cpu_us_per_message']:.1f} µs CPU, "
                f"{delta['slices_per_message']:.2f} slices"
            )
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": args.seconds, "messages": args.messages, "processes": report}, f, indent=2)


if __name__ == "__main__":
    main()
