#!/usr/bin/env python3
"""Latency of live events (call signals) from a sender to a receiver, both clients in this
process, so one clock times both ends: the sender sends EVENTS signals at RATE a second,
open loop, each carrying its index; the receiver records when each arrives. Prints
p50 / p99 / p99.9 / max in microseconds, the count lost, and, with --pid, the CPU seconds
each given process used over the run (per event, in microseconds).

usage: live_latency.py --sender ws://A/ws --receiver ws://B/ws [--events N] [--rate R]
                       [--pid NAME=PID ...]
Needs the `websockets` package (pip install websockets).
"""
import argparse
import asyncio
import json
import os
import time

import websockets

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def login(url, user):
    ws = await websockets.connect(url, max_size=None)
    await ws.send(json.dumps({"type": "auth", "userId": user, "deviceId": "bench"}))
    while json.loads(await ws.recv())["type"] != "auth_success":
        pass
    return ws


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sender", required=True)
    parser.add_argument("--receiver", required=True)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--pid", action="append", default=[])
    args = parser.parse_args()
    pids = dict(p.split("=", 1) for p in args.pid)
    suffix = str(os.getpid())
    sender = await login(args.sender, "live-a-" + suffix)
    receiver = await login(args.receiver, "live-b-" + suffix)
    to = "live-b-" + suffix

    def signal(i):
        return json.dumps({"type": "signal", "receiverId": to, "callId": "bench",
                           "kind": "webrtc:ice-candidate", "payload": {"i": i}})

    # Until the receiver's node is subscribed, and the path is warm.
    while True:
        await sender.send(signal(-1))
        try:
            frame = json.loads(await asyncio.wait_for(receiver.recv(), 0.2))
            if frame.get("type") == "signal":
                break
        except asyncio.TimeoutError:
            pass
    sent = [0] * args.events
    arrived = [0] * args.events

    async def receive():
        got = 0
        while got < args.events:
            try:
                frame = json.loads(await asyncio.wait_for(receiver.recv(), 5))
            except asyncio.TimeoutError:
                return
            i = frame.get("payload", {}).get("i", -1) if frame.get("type") == "signal" else -1
            if 0 <= i < args.events and not arrived[i]:
                arrived[i] = time.perf_counter_ns()
                got += 1

    cpu_before = {name: cpu_secs(pid) for name, pid in pids.items()}
    reader = asyncio.create_task(receive())
    start = time.perf_counter_ns()
    gap = 1e9 / args.rate
    for i in range(args.events):
        due = start + int(i * gap)
        now = time.perf_counter_ns()
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
        sent[i] = due  # open loop: latency counts from when it was due
        await sender.send(signal(i))
    await reader
    cpu_after = {name: cpu_secs(pid) for name, pid in pids.items()}
    lat = sorted((a - s) / 1000 for s, a in zip(sent, arrived) if a)
    lost = args.events - len(lat)

    def at(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    print(f"events {args.events} at {args.rate}/s  lost {lost}  "
          f"p50 {at(0.5):.0f} us  p99 {at(0.99):.0f} us  p99.9 {at(0.999):.0f} us  "
          f"max {lat[-1] if lat else float('nan'):.0f} us")
    for name in pids:
        used = cpu_after[name] - cpu_before[name]
        print(f"cpu {name}: {used:.2f} s, {used * 1e6 / args.events:.1f} us an event")
    await sender.close()
    await receiver.close()


asyncio.run(main())
