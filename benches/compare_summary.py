#!/usr/bin/env python3
"""Summarises a benches/compare.sh run directory as Markdown tables, each figure also as a
ratio to the engine's (peer ÷ engine: above 1 means the peer needs more time, memory or CPU,
or for throughput, sustains more).

    python3 benches/compare_summary.py benches/results/compare-DATE
"""

import json
import statistics
import sys
from pathlib import Path


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def runs(root, kind):
    """{server: [report, ...]} for OUT/kind/SERVER-X directories."""
    found = {}
    for d in sorted((root / kind).glob("*")):
        server = d.name.rsplit("-", 1)[0]
        found.setdefault(server, []).append((d, load(d / "report.json")))
    return found


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, unit="", digits=0):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def ratio(value, base):
    if value is None or not base:
        return "—"
    return f"{value / base:.2f}×"


def order(servers):
    return sorted(servers, key=lambda s: (s != "engine", s))


def latency_table(root, kind, title):
    found = runs(root, kind)
    if not found:
        return ""
    rows = {}
    for server, reports in found.items():
        ok = [r for _, r in reports if r]
        delivery = [r["latency"]["delivery"] for r in ok]
        rows[server] = {
            "reps": len(ok),
            "held": min((r["held"] for r in ok), default=None),
            "lost": sum(r["load"]["lost"] for r in ok),
            "rate": ok[0]["load"]["rate_per_sec"] if ok else None,
            "p50": median(d["p50_us"] for d in delivery),
            "p99": median(d["p99_us"] for d in delivery),
            "p999": median(d["p999_us"] for d in delivery),
            "p99_range": (min(d["p99_us"] for d in delivery), max(d["p99_us"] for d in delivery)) if delivery else None,
            "cpu": median(r["server"].get("cpu_secs_per_million_messages") for r in ok),
        }
    base = rows.get("engine", {})
    out = [f"### {title}", "",
           "| server | runs | held | lost | p50 µs | p99 µs (range) | p99.9 µs | CPU s per million msgs | p99 ÷ engine | CPU ÷ engine |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for server in order(rows):
        r = rows[server]
        rng = f" ({r['p99_range'][0]:,}–{r['p99_range'][1]:,})" if r["p99_range"] else ""
        out.append(
            f"| {server} | {r['reps']} | {fmt(r['held'])} | {r['lost']:,} | {fmt(r['p50'])} | {fmt(r['p99'])}{rng} | "
            f"{fmt(r['p999'])} | {fmt(r['cpu'], digits=1)} | {ratio(r['p99'], base.get('p99'))} | {ratio(r['cpu'], base.get('cpu'))} |")
    return "\n".join(out) + "\n"


def step_table(root):
    """Per server, the highest rate whose runs' median p99 stayed within the limit."""
    step = root / "step"
    if not step.exists():
        return ""
    limit_file = root / "p99_limit_us.txt"
    limit = int(limit_file.read_text()) if limit_file.exists() else 1000
    by_rate = {}  # server -> rate -> [report]
    for d in sorted(step.glob("*")):
        parts = d.name.rsplit("-", 2)
        if len(parts) < 3 or not parts[1].isdigit():
            parts = d.name.rsplit("-", 1) + ["1"]  # one run per rate (older runs)
        server, rate = parts[0], int(parts[1])
        by_rate.setdefault(server, {}).setdefault(rate, []).append(load(d / "report.json"))
    best, detail = {}, {}
    for server, rates in by_rate.items():
        best[server] = 0
        tried = []
        for rate in sorted(rates):
            reports = [r for r in rates[rate] if r]
            p99 = median(r["latency"]["delivery"]["p99_us"] for r in reports)
            lost = sum(r["load"]["lost"] for r in reports)
            tried.append(f"{rate:,}: {fmt(p99)} µs" + (f" ({lost:,} lost)" if lost else ""))
            if reports and lost == 0 and p99 is not None and p99 <= limit:
                best[server] = rate
        detail[server] = ", ".join(tried)
    base = best.get("engine")
    out = [f"### Highest rate with median delivery p99 ≤ {limit:,} µs and nothing lost (step series)", "",
           "| server | msg/s | ÷ engine | median p99 at each rate tried |", "|---|---|---|---|"]
    for server in order(best):
        out.append(f"| {server} | {best[server]:,} | {ratio(best[server], base)} | {detail[server]} |")
    return "\n".join(out) + "\n"


def memory_table(root):
    mem = root / "memory"
    if not mem.exists():
        return ""
    rows = {}
    for d in sorted(mem.glob("*")):
        server, conns = d.name.rsplit("-", 1)
        r = load(d / "report.json")
        skipped = (d / "skipped.txt").read_text().strip() if (d / "skipped.txt").exists() else None
        rows.setdefault(int(conns), {})[server] = (r, skipped)
    out = ["### User-space bytes per idle authenticated connection (server RSS growth ÷ held)", "",
           "| connections | server | held | B per connection | ÷ engine |", "|---|---|---|---|---|"]
    for conns in sorted(rows):
        per_server = rows[conns]
        engine = per_server.get("engine", (None, None))[0]
        base = engine["server"]["rss_bytes_per_connection"] if engine else None
        for server in order(per_server):
            r, skipped = per_server[server]
            if skipped:
                out.append(f"| {conns:,} | {server} | — | {skipped} | — |")
            elif r:
                b = r["server"]["rss_bytes_per_connection"]
                out.append(f"| {conns:,} | {server} | {r['held']:,} | {fmt(b)} | {ratio(b, base)} |")
            else:
                out.append(f"| {conns:,} | {server} | — | no report (see the run's logs) | — |")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().split("\n\n")[-1])
    root = Path(sys.argv[1])
    versions = (root / "versions.txt").read_text().strip() if (root / "versions.txt").exists() else ""
    parts = [f"## Comparison run {root.name}", "", "Versions: " + "; ".join(versions.splitlines()), "",
             latency_table(root, "fixed", "Chat scenario at a fixed rate (median of the runs)"),
             step_table(root),
             latency_table(root, "echo", "Plain echo scenario at the same rate (peers only)"),
             memory_table(root)]
    print("\n".join(p for p in parts if p is not None))


if __name__ == "__main__":
    main()
