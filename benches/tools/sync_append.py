#!/usr/bin/env python3
"""What one journal append costs on a disk: `pwrite` of a record plus `fdatasync`, into a file
that grows with each append against one whose blocks were written before (what the store's
journal does: it grows in 1 MiB steps of zeros and is written over after a checkpoint).
Prints wall time and process CPU per append, and the latency p50 / p99.

usage: python3 benches/tools/sync_append.py [DIR] [APPENDS] [RECORD_BYTES]
       (defaults: target/, 2000 appends, 3000 bytes: about a 5,000 msg/s batch)
"""
import os
import sys
import time


def run(path, preallocated, appends, record):
    """One series of appends; returns (wall µs, cpu µs, p50 µs, p99 µs) per append."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        if preallocated:
            os.pwrite(fd, b"\0" * (appends * record), 0)
            os.fsync(fd)
        buf = b"x" * record
        took = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(appends):
            t = time.perf_counter()
            os.pwrite(fd, buf, i * record)
            os.fdatasync(fd)
            took.append(time.perf_counter() - t)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        os.close(fd)
        os.remove(path)
    took.sort()
    per = 1e6 / appends
    return wall * per, cpu * per, took[appends // 2] * 1e6, took[int(appends * 0.99)] * 1e6


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    appends = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    record = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "sync_append.tmp")
    print(f"{appends} appends of {record} B, each synced, in {directory}")
    for rep in (1, 2):
        for preallocated in (False, True):
            wall, cpu, p50, p99 = run(path, preallocated, appends, record)
            how = "written before" if preallocated else "growing       "
            print(f"  run {rep}, file {how}: {wall:6.0f} µs wall, {cpu:5.0f} µs CPU per append;"
                  f" p50 {p50:5.0f} µs, p99 {p99:5.0f} µs")


if __name__ == "__main__":
    main()
