#!/usr/bin/env python3
"""How long a presence change takes to reach a watcher: a watcher on one node subscribes
to a probe user's presence; the probe logs in on another node (or the same) and leaves
with a close frame, ROUNDS times. Both clients are in this process, so one clock times
both ends. Online is timed from the probe's `auth` (its WebSocket already open) to the
watcher's `presence_update` online; offline from the probe's close frame to the update offline
(a close frame skips the presence grace). Prints p50 / p99 / max in milliseconds of each,
and the count of updates that never came.

usage: presence_latency.py --login ws://A/ws --watcher ws://B/ws [--rounds N]
Needs the `websockets` package (pip install websockets).
"""
import argparse
import asyncio
import json
import os
import time

import websockets

# An update that has not come in this long is counted missing.
UPDATE_WAIT_SECS = 5


async def authenticate(ws, user):
    await ws.send(json.dumps({"type": "auth", "userId": user, "deviceId": "bench"}))
    while json.loads(await ws.recv())["type"] != "auth_success":
        pass


async def login(url, user):
    ws = await websockets.connect(url, max_size=None)
    await authenticate(ws, user)
    return ws


async def next_update(watcher, status):
    """Waits for the watcher's presence_update with `status`; its arrival time, or None."""
    deadline = time.perf_counter() + UPDATE_WAIT_SECS
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        try:
            frame = json.loads(await asyncio.wait_for(watcher.recv(), left))
        except asyncio.TimeoutError:
            return None
        if frame.get("type") == "presence_update" and frame.get("status") == status:
            return time.perf_counter_ns()


def summary(name, times_ns, missing):
    lat = sorted(t / 1e6 for t in times_ns)

    def at(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    print(f"{name}: {len(lat)} updates, {missing} missing  p50 {at(0.5):.2f} ms  "
          f"p99 {at(0.99):.2f} ms  max {lat[-1] if lat else float('nan'):.2f} ms")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--login", required=True)
    parser.add_argument("--watcher", required=True)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    suffix = str(os.getpid())
    probe_user = "probe-" + suffix
    watcher = await login(args.watcher, "watcher-" + suffix)
    await watcher.send(json.dumps({"type": "presence_subscribe", "userIds": [probe_user]}))
    while json.loads(await watcher.recv())["type"] != "presence_state":
        pass
    online, offline = [], []
    missing_online = missing_offline = 0
    for _ in range(args.rounds):
        probe = await websockets.connect(args.login, max_size=None)
        authed = time.perf_counter_ns()
        await authenticate(probe, probe_user)
        arrived = await next_update(watcher, "online")
        if arrived is None:
            missing_online += 1
        else:
            online.append(arrived - authed)
        closing = time.perf_counter_ns()
        await probe.close()
        arrived = await next_update(watcher, "offline")
        if arrived is None:
            missing_offline += 1
        else:
            offline.append(arrived - closing)
        await asyncio.sleep(0.02)
    summary("online", online, missing_online)
    summary("offline", offline, missing_offline)
    await watcher.close()


asyncio.run(main())
