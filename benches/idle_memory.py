#!/usr/bin/env python3
"""Measures the engine's user-space bytes per idle authenticated WebSocket connection.

Starts the release engine, reads its RSS (VmRSS from /proc) with no connections, opens N
WebSocket connections that each authenticate (open mode) and then sit idle, and reads the
RSS at N/2 and at N connections, each after the connections have settled (past the auth
deadline, so no timer entry is left). Prints the average (RSS delta / N, which includes
one-off warm-up such as mailbox ring pages and allocator arenas) and the marginal cost
(RSS(N) - RSS(N/2)) / (N/2), the steady per-connection figure. Kernel socket memory is not
in RSS, so these are the user-space costs DESIGN.md's 256-byte budget is about.

Usage: benches/idle_memory.py [--connections 10000] [--reactors 2] [--engine PATH]
                               [--engine-args "FLAGS"]
"""
import argparse
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


# Short, so auth deadlines have fired (and left the timer wheel) before each reading.
AUTH_TIMEOUT_MS = 1000
SETTLE_S = AUTH_TIMEOUT_MS / 1000 + 1.5


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def open_connection(addr, index):
    sock = socket.create_connection(addr, timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET /ws HTTP/1.1\r\nHost: {addr[0]}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ).encode()
    auth = f'{{"type":"auth","userId":"user{index}","deviceId":"d"}}'.encode()
    sock.sendall(handshake + masked_text_frame(auth))
    return sock


def await_auth(sock):
    data = b""
    while b"auth_success" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed before auth_success: {data!r}")
        data += chunk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--reactors", type=int, default=2)
    parser.add_argument("--engine", default="target/release/engine")
    parser.add_argument("--engine-args", default="", help="extra engine flags, split on spaces")
    args = parser.parse_args()

    # A fresh store each run: one left by an earlier run (the default ./data) would be
    # read at start and counted.
    data_dir = tempfile.mkdtemp(prefix="idle-memory-")
    engine = subprocess.Popen(
        [args.engine, "--listen", "127.0.0.1:0", "--reactors", str(args.reactors), "--log-level", "error",
         "--auth-timeout-ms", str(AUTH_TIMEOUT_MS), "--data-dir", data_dir] + args.engine_args.split(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = engine.stdout.readline().strip()
        host, port = line.removeprefix("listening on ").rsplit(":", 1)
        addr = (host, int(port))
        time.sleep(0.5)
        before = rss_bytes(engine.pid)
        sockets = []
        readings = {}
        half = args.connections // 2
        batch = 500
        for target in (half, args.connections):
            while len(sockets) < target:
                start = len(sockets)
                opened = [open_connection(addr, i) for i in range(start, min(start + batch, target))]
                for sock in opened:
                    await_auth(sock)
                sockets.extend(opened)
            time.sleep(SETTLE_S)
            readings[target] = rss_bytes(engine.pid)
        after = readings[args.connections]
        average = (after - before) / args.connections
        marginal = (after - readings[half]) / (args.connections - half)
        print(f"connections: {len(sockets)}")
        print(f"reactors: {args.reactors}")
        print(f"rss_before_bytes: {before}")
        print(f"rss_at_{half}_bytes: {readings[half]}")
        print(f"rss_at_{args.connections}_bytes: {after}")
        print(f"average_bytes_per_idle_connection: {average:.1f}")
        print(f"marginal_bytes_per_idle_connection: {marginal:.1f}")
        for sock in sockets:
            sock.close()
    finally:
        engine.terminate()
        engine.wait(timeout=15)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
