#!/usr/bin/env python3
"""What reading a dead node's holdings costs nats-server per holding, two ways
(docs/cluster.md, "Reaping"): the direct gets a reap's walk makes today (`next_by_subj`
from a sequence, 128 under way at once), and a pull consumer filtered on the node's
holdings, fetched in batches (a way the walk could go; not built).

Starts its own nats-server with JetStream (benches/tools/nats_wire.py), writes N holdings
of node a and N of node b interleaved (as two nodes' users log in), and reads node a's.
nats-server's CPU comes from /proc, over each whole read (the consumer's creation, which
counts the holdings it will deliver, is timed apart too). Usage: python3
benches/tools/nats_reads.py [N] (default 200000).
"""
import json
import sys
import time

from nats_wire import connect, cpu_ticks, read_message, request, start_server, stop

WRITE_BATCH = 10_000
GETS_UNDER_WAY = 128
PULL_BATCH = 1024


def flush(sock, reader):
    sock.sendall(b"PING\r\n")
    while reader.readline() != b"PONG\r\n":
        pass


def direct_gets(sock, reader, last):
    """Node a's holdings by direct gets, GETS_UNDER_WAY stretches of the stream at once."""
    step = -(-last // GETS_UNDER_WAY)
    stretches = [[1 + k * step, min(1 + (k + 1) * step, last + 1)] for k in range(GETS_UNDER_WAY)]
    found, under_way = 0, 0

    def ask(k):
        body = json.dumps({"seq": stretches[k][0], "next_by_subj": "chat.held.a.>"}).encode()
        sock.sendall(b"PUB $JS.API.DIRECT.GET.CHAT_HELD _INBOX.c.%d %d\r\n%s\r\n" % (k, len(body), body))

    for k in range(GETS_UNDER_WAY):
        ask(k)
        under_way += 1
    while under_way:
        subject, headers, _ = read_message(sock, reader)
        under_way -= 1
        k = int(subject.rsplit(".", 1)[1])
        seq = next((int(h.split(":")[1]) for h in headers.split("\r\n") if h.startswith("Nats-Sequence")), None)
        if seq is None or seq >= stretches[k][1]:
            continue
        found += 1
        stretches[k][0] = seq + 1
        if seq + 1 < stretches[k][1]:
            ask(k)
            under_way += 1
    return found


def pull_consumer(sock, reader):
    """Node a's holdings through a pull consumer without acks, PULL_BATCH at a time."""
    config = {"stream_name": "CHAT_HELD", "config": {
        "filter_subject": "chat.held.a.>", "deliver_policy": "all", "ack_policy": "none",
        "mem_storage": True, "num_replicas": 1, "inactive_threshold": 60_000_000_000}}
    started = time.time()
    sock.sendall(request("$JS.API.CONSUMER.CREATE.CHAT_HELD", json.dumps(config).encode()))
    name = json.loads(read_message(sock, reader)[2])["name"]
    # Its creation counts the holdings it will deliver: a scan of the stream.
    print(f"  (the consumer's creation took {(time.time() - started) * 1000:.1f} ms)")
    found, pending = 0, None
    while pending != 0:
        body = json.dumps({"batch": PULL_BATCH, "no_wait": True}).encode()
        sock.sendall(b"PUB $JS.API.CONSUMER.MSG.NEXT.CHAT_HELD.%s _INBOX.c.1 %d\r\n%s\r\n"
                     % (name.encode(), len(body), body))
        for _ in range(PULL_BATCH):
            line = reader.readline()
            parts = line.split()
            if parts[0] == b"HMSG":  # a status: nothing more
                reader.read(int(parts[-1]) + 2)
                pending = 0
                break
            reader.read(int(parts[-1]) + 2)
            found += 1
            pending = int(parts[3].rsplit(b".", 1)[1])  # the ack subject's last token
            if pending == 0:
                break
    sock.sendall(request(f"$JS.API.CONSUMER.DELETE.CHAT_HELD.{name}", b""))
    read_message(sock, reader)
    return found


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    server, port, store = start_server("nats-reads-")
    try:
        sock, reader, info = connect(port)
        sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n'
                     b"SUB _INBOX.c.* 1\r\n")
        config = {"name": "CHAT_HELD", "subjects": ["chat.held.>"], "storage": "file",
                  "retention": "limits", "max_msgs_per_subject": 1, "discard": "old",
                  "allow_direct": True}
        sock.sendall(request("$JS.API.STREAM.CREATE.CHAT_HELD", json.dumps(config).encode()))
        read_message(sock, reader)
        print("server", info["version"])
        for first in range(0, n, WRITE_BATCH):
            sock.sendall(b"".join(
                b"PUB chat.held.%s.u%d 15\r\n1 1700000000000\r\n" % (node, i)
                for i in range(first, min(first + WRITE_BATCH, n)) for node in (b"a", b"b")))
            flush(sock, reader)
        print(f"{n} holdings of node a among {2 * n}; node a's read:")
        for label, read in [("direct gets", lambda: direct_gets(sock, reader, 2 * n)),
                            ("pull consumer", lambda: pull_consumer(sock, reader))]:
            before, started = cpu_ticks(server.pid), time.time()
            found = read()
            cpu_us = (cpu_ticks(server.pid) - before) * 10_000 / max(found, 1)
            print(f"  {label:14} {found} holdings, {cpu_us:5.1f} us of nats-server CPU and "
                  f"{(time.time() - started) * 1e6 / max(found, 1):5.1f} us wall a holding")
    finally:
        stop(server, store)


if __name__ == "__main__":
    main()
