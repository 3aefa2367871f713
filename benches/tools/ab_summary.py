#!/usr/bin/env python3
"""Summarises interleaved loadgen runs of two variants: OUT/{LABEL}-{rep}/report.json for
each label and rep. Prints each run and the median per variant (delivery p50/p99, ack p99,
the engine's and the loadgen's CPU seconds per million messages; the loadgen's is NaN in
reports of loadgens before it was measured) and the second variant over the first.

usage: ab_summary.py OUT REPS LABEL_A LABEL_B
"""
import json, statistics, sys
out, reps, labels = sys.argv[1], int(sys.argv[2]), sys.argv[3:5]
rows = {label: [] for label in labels}
print("run   delivery p50 / p99 (ms)   ack p99 (ms)   CPU s per M msgs   loadgen CPU   lost")
for rep in range(1, reps + 1):
    for build in labels:
        r = json.load(open(f"{out}/{build}-{rep}/report.json"))
        d, a = r["latency"]["delivery"], r["latency"]["ack"]
        cpu = r.get("server", {}).get("cpu_secs_per_million_messages")
        own = r.get("loadgen", {}).get("cpu_secs_per_million_messages")
        row = (d["p50_us"] / 1000, d["p99_us"] / 1000, a["p99_us"] / 1000, cpu or float("nan"),
               own or float("nan"))
        rows[build].append(row)
        print(f"{build}-{rep}  {row[0]:8.2f} / {row[1]:8.2f}   {row[2]:10.2f}   {row[3]:14.1f}   {row[4]:11.1f}   {r['load']['lost']}")
med = {b: [statistics.median(col) for col in zip(*rows[b])] for b in labels}
for b in labels:
    m = med[b]
    print(f"median {b}  {m[0]:8.2f} / {m[1]:8.2f}   {m[2]:10.2f}   {m[3]:14.1f}   {m[4]:11.1f}")
print(f"{labels[1]} / {labels[0]}   " + "  ".join(f"{nb / na:.2f}x" if na else "-" for na, nb in zip(med[labels[0]], med[labels[1]])))
