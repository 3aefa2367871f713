#!/usr/bin/env python3
"""Where a process's CPU samples go, from `perf script` output (perf record -g): by thread and
user/kernel, kernel samples by the syscall (or interrupt) they came in through, samples
inside io_uring_enter by the operation that ran, and who holds the most-sampled kernel
symbol `_raw_spin_unlock_irqrestore` (where a VM's cpu-clock sampler charges time spent
with interrupts off).

usage: perf script -i perf.data | python3 benches/tools/perf_breakdown.py
"""
import collections
import sys

# io_uring functions that say which operation a sample inside io_uring_enter belongs to,
# innermost first wins.
URING_OPS = [
    "io_send", "io_sendmsg", "io_recv", "io_recvmsg", "io_poll_task_func", "io_async_cancel",
    "io_close", "io_cqring_wait", "io_eventfd_signal", "io_poll_add", "io_handle_tw_list",
    "tctx_task_work", "io_run_task_work", "__io_register_rsrc_update",
]


def frames(block):
    """(thread, [symbol, ...] innermost first, in_kernel) of one sample."""
    lines = block.strip().split("\n")
    thread = lines[0].split()[0]
    syms = []
    for line in lines[1:]:
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            syms.append(parts[1].split("+")[0].split(" (")[0])
    kernel = "[kernel.kallsyms]" in lines[1] if len(lines) > 1 else False
    return thread, syms, kernel


def entry_of(syms):
    for s in syms:
        if s.startswith(("__do_sys_", "__x64_sys_", "__se_sys_")):
            return s
    for s in syms:
        if "irq" in s:
            return "interrupt (" + s + ")"
    return "no syscall: fault or trap (" + (syms[0] if syms else "?") + ")"


def main():
    samples = [frames(b) for b in sys.stdin.read().split("\n\n") if b.strip().count("\n") >= 1]
    total = len(samples)
    if not total:
        sys.exit("no samples on standard input (perf script output expected)")
    by_thread = collections.Counter()
    entries = collections.Counter()
    uring = collections.Counter()
    irq_off = collections.Counter()
    for thread, syms, kernel in samples:
        by_thread[(thread, "kernel" if kernel else "user")] += 1
        if kernel:
            entries[entry_of(syms)] += 1
        if "__do_sys_io_uring_enter" in syms:
            op = next((s for s in syms if s in URING_OPS), "other")
            uring[op] += 1
        if syms and syms[0] == "_raw_spin_unlock_irqrestore":
            irq_off[" < ".join(syms[1:3])] += 1
    pct = lambda n, of=total: f"{100 * n / of:5.1f}%"
    print(f"{total} samples\n\nby thread:")
    for (thread, side), n in sorted(by_thread.items()):
        print(f"  {pct(n)}  {thread} {side}")
    print("\nkernel samples by entry (share of all samples):")
    for name, n in entries.most_common(8):
        print(f"  {pct(n)}  {name}")
    in_uring = sum(uring.values())
    if in_uring:
        print(f"\ninside io_uring_enter ({pct(in_uring)} of all), by operation:")
        for name, n in uring.most_common(8):
            print(f"  {pct(n, in_uring)}  {name}")
    held = sum(irq_off.values())
    if held:
        print(f"\n_raw_spin_unlock_irqrestore ({pct(held)} of all), by caller:")
        for name, n in irq_off.most_common(5):
            print(f"  {pct(n, held)}  {name}")


if __name__ == "__main__":
    main()
