#!/usr/bin/env python3
"""Slow consumers for the engine: COUNT WebSocket clients that authenticate and never read,
and one flooder that sends 60 KB messages at RATE per second to FOCUS of them at a time.

A flooded non-reader fills its socket buffers and then its outbound queue on the gateway,
which cuts it off (4002) at --outbound-bytes-max; the flooder learns it from its acks
(`queued`: the receiver is offline), the non-reader reconnects, and the next one takes its
place in the focus. So COUNT of them stay connected, each holding what it was sent, and
the gateway keeps cutting off slow consumers throughout.
Runs until SECONDS have passed or it is sent SIGTERM, then prints one JSON line: messages
flooded, cut-offs seen. Standard library only.

With --readers the same clients read (and discard) everything: the same flood reaches
clients that keep up, the control that separates the cost of slow consumers from the cost
of the flood's bytes.

usage: non_readers.py HOST:PORT COUNT RATE SECONDS [--readers]
"""

import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time

CONTENT = "x" * 60_000
FOCUS = 16


def frame(text: str) -> bytes:
    """A client text frame masked with the zero key (legal, and no per-byte work)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


def login(addr, user: str, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(addr)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        + frame(json.dumps({"type": "auth", "userId": user, "deviceId": "d"}))
    )
    return sock


def parse_frame(buf: bytes):
    """(opcode, payload, rest) of the first whole server frame in buf, or None."""
    if len(buf) < 2:
        return None
    n, at = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, at = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, at = struct.unpack("!Q", buf[2:10])[0], 10
    if len(buf) < at + n:
        return None
    return buf[0] & 0x0F, buf[at : at + n], buf[at + n :]


def text_frames(sock: socket.socket):
    """Yields the server's text frames until the socket closes."""
    buf = b""
    while b"\r\n\r\n" not in buf:  # the 101 answer
        buf += sock.recv(65536)
    buf = buf.partition(b"\r\n\r\n")[2]
    while True:
        parsed = parse_frame(buf)
        if parsed is None:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
            continue
        opcode, payload, buf = parsed
        if opcode == 1:
            yield payload


def drain_forever(sinks):
    """Reads and discards whatever reaches the sinks (the --readers control)."""
    selector = selectors.DefaultSelector()
    for sock in sinks:
        selector.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if not key.fileobj.recv(1 << 20):
                selector.unregister(key.fileobj)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    addr = (host, int(port))
    count, rate, seconds = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    readers = "--readers" in sys.argv[5:]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Small receive buffers: the gateway, not the kernel, is what fills up.
    sinks = [login(addr, f"slow-{k}", rcvbuf=0 if readers else 4096) for k in range(count)]
    if readers:
        threading.Thread(target=drain_forever, args=(sinks,), daemon=True).start()
    flooder = login(addr, "slow-flooder")
    stats = {"non_readers": count, "flooded": 0, "cut_off": 0}
    lock = threading.Lock()
    focus = list(range(min(FOCUS, count)))
    upcoming = len(focus)

    def read_acks():
        nonlocal upcoming
        for payload in text_frames(flooder):
            ack = json.loads(payload)
            if ack.get("type") != "message_ack" or ack.get("status") != "queued":
                continue
            k = int(ack["messageId"].split("-")[1])
            with lock:
                if k not in focus:
                    continue  # in flight when it was cut off
                stats["cut_off"] += 1
                sinks[k].close()
                sinks[k] = login(addr, f"slow-{k}", rcvbuf=4096)
                while upcoming % count in focus:
                    upcoming += 1
                focus[focus.index(k)] = upcoming % count
                upcoming += 1

    threading.Thread(target=read_acks, daemon=True).start()
    print(f"non_readers: {count} connected{' (reading)' if readers else ''}", file=sys.stderr, flush=True)
    started = time.monotonic()
    sent = 0
    while not stop.is_set() and time.monotonic() - started < seconds:
        due = started + sent / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        with lock:
            k = focus[sent % len(focus)]
        message = {"type": "send_message", "messageId": f"f-{k}-{sent}",
                   "receiverId": f"slow-{k}", "content": CONTENT}
        flooder.sendall(frame(json.dumps(message)))
        sent += 1
    stats["flooded"] = sent
    time.sleep(1)  # the last acks
    with lock:
        print(json.dumps(stats), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
