#!/usr/bin/env python3
"""Two ways a cluster of a million users makes nats-server stop answering for a while
(docs/cluster.md, "Presence events" and "Failure modes"), each measured against
nats-server itself, with no engine:

- scan: a direct get by subject wildcard scans the stream from the sequence asked. With
  N holdings (`chat.held.a.<user>`) in the same stream as the reap claims (the layout
  before CHAT_REAPS), one get of `chat.reaps.reaper.*` from sequence 1 is timed; then the
  same get in a stream of its own (CHAT_REAPS), beside the holdings.
- subs: a connection holding N subscriptions (one per user, as a node's relay holds
  `chat.live.<user>`) is closed. Another connection sends a request on a new subject every
  2 ms, which nobody answers (nats-server says "no responders"); the longest round trip
  around the close is how long nats-server stopped routing.

Starts its own nats-server with JetStream (benches/tools/nats_wire.py); nats-server's CPU
comes from /proc. Usage: python3 benches/tools/nats_stalls.py scan|subs [N] (1000000).
"""
import json
import socket
import sys
import threading
import time

from nats_wire import connect, cpu_ticks, read_message, request, start_server, stop

BATCH = 10_000


def session(port):
    sock, reader, info = connect(port)
    sock.sendall(
        b'CONNECT {"verbose":false,"headers":true,"no_responders":true,"echo":true}\r\n'
        b"SUB _INBOX.c.* 1\r\n"
    )
    return sock, reader, info


def flush(sock, reader):
    """Waits until the server has read everything sent so far."""
    sock.sendall(b"PING\r\n")
    while reader.readline() != b"PONG\r\n":
        pass


def create(sock, reader, name, subjects):
    config = {
        "name": name, "subjects": subjects, "storage": "file", "retention": "limits",
        "max_msgs_per_subject": 1, "discard": "old", "allow_direct": True,
    }
    sock.sendall(request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(config).encode()))
    read_message(sock, reader)


def timed_get(server, sock, reader, stream, query):
    """One direct get: (wall ms, nats-server CPU ms, what it found)."""
    before, started = cpu_ticks(server.pid), time.time()
    sock.sendall(request(f"$JS.API.DIRECT.GET.{stream}", json.dumps(query).encode()))
    _, headers, _ = read_message(sock, reader)
    wall = (time.time() - started) * 1000
    found = next((h for h in headers.split("\r\n") if h.startswith("Nats-Subject")), headers)
    return wall, (cpu_ticks(server.pid) - before) * 10, found


def scan(n):
    server, port, store = start_server("nats-stalls-")
    try:
        sock, reader, info = session(port)
        print("server", info["version"])
        create(sock, reader, "ONE", ["one.held.>", "one.reaps.holder.*", "one.reaps.reaper.*"])
        create(sock, reader, "HELD", ["two.held.>"])
        create(sock, reader, "REAPS", ["two.reaps.holder.*", "two.reaps.reaper.*"])
        for layout in ("one", "two"):
            sock.sendall(b"PUB %s.reaps.holder.a 1\r\na\r\n" % layout.encode())
            for first in range(0, n, BATCH):
                sock.sendall(b"".join(
                    b"PUB %s.held.a.u%d 15\r\n1 1700000000000\r\n" % (layout.encode(), i)
                    for i in range(first, min(first + BATCH, n))))
                flush(sock, reader)
            sock.sendall(b"PUB %s.reaps.reaper.a 1\r\nb\r\n" % layout.encode())
            flush(sock, reader)
        time.sleep(2)
        print(f"{n} holdings; one direct get of the claims, by wildcard, from sequence 1:")
        for label, stream, filter_ in [
            ("claims in the holdings' stream", "ONE", "one.reaps.reaper.*"),
            ("claims in a stream of their own", "REAPS", "two.reaps.reaper.*"),
        ]:
            wall, cpu, found = timed_get(server, sock, reader, stream,
                                         {"seq": 1, "next_by_subj": filter_})
            print(f"  {label:34} {wall:7.1f} ms wall, {cpu:5.0f} ms nats-server CPU ({found})")
    finally:
        stop(server, store)


def subs(n):
    server, port, store = start_server("nats-stalls-")
    try:
        holder, holder_reader, info = session(port)
        print("server", info["version"])
        for first in range(0, n, BATCH):
            holder.sendall(b"".join(
                b"SUB chat.live.u%d %d\r\n" % (i, i + 2)
                for i in range(first, min(first + BATCH, n))))
        flush(holder, holder_reader)
        prober, prober_reader, _ = session(port)
        trips = []

        def probe(seconds):
            end, number = time.time() + seconds, 0
            while time.time() < end:
                started, number = time.time(), number + 1
                # A subject of its own each time, as a relay's users' are: nobody
                # subscribes, so the server answers "no responders".
                prober.sendall(request(f"probe.{number}", b"x"))
                read_message(prober, prober_reader)
                trips.append((started, (time.time() - started) * 1000))
                time.sleep(0.002)

        thread = threading.Thread(target=probe, args=(6.0,))
        thread.start()
        time.sleep(1)
        before, closed_at = cpu_ticks(server.pid), time.time()
        holder.shutdown(socket.SHUT_RDWR)
        holder.close()
        thread.join()
        after = [ms for at, ms in trips if at >= closed_at - 0.01]
        earlier = [ms for at, ms in trips if at < closed_at - 0.01]
        print(f"{n} subscriptions on one connection, closed:")
        print(f"  longest round trip before the close {max(earlier):8.1f} ms")
        print(f"  longest round trip after it         {max(after):8.1f} ms "
              f"(nats-server CPU over the 5 s after: {(cpu_ticks(server.pid) - before) * 10} ms)")
    finally:
        stop(server, store)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    {"scan": scan, "subs": subs}.get(mode, lambda _: sys.exit(__doc__))(count)
