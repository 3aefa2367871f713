#!/usr/bin/env python3
"""What reading and removing a dead node's holdings costs nats-server (docs/cluster.md,
"Reaping"), three ways:

- direct gets (`next_by_subj` from a sequence, 128 under way at once) in one stream of
  every node's holdings (the reap's walk before the twenty-fifth session);
- a pull consumer filtered on the node's holdings in that stream, fetched in batches
  (the twenty-fifth session's), then a purge of its subjects;
- a pull consumer without a filter on a stream of the node's own (the twenty-sixth
  session's), then the stream's deletion.

And the other half of a reap's cost a user: the check, a request on the user's
`chat.live.<user>` that nobody holds, which nats-server answers "no responders"
(CHECKS_UNDER_WAY at once, as the reaping relay asks them).

Starts its own nats-server with JetStream (benches/tools/nats_wire.py), writes N holdings
of node a and N of node b interleaved (as two nodes' users log in), both into the shared
stream and into each node's own, and reads node a's. nats-server's CPU comes from /proc,
over each whole read; a consumer's creation (with a filter it counts the holdings it will
deliver, a scan) and the removal are timed apart. Usage: python3
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


def timed_request(server, sock, reader, subject, body=b""):
    """One request: its answer, and (wall ms, nats-server CPU ms)."""
    before, started = cpu_ticks(server.pid), time.time()
    sock.sendall(request(subject, body))
    answer = json.loads(read_message(sock, reader)[2])
    return answer, ((time.time() - started) * 1000, (cpu_ticks(server.pid) - before) * 10)


def pull_consumer(server, sock, reader, stream, filter_subject):
    """Node a's holdings in `stream` through a pull consumer without acks (filtered on
    `filter_subject`, if given), PULL_BATCH at a time."""
    config = {"stream_name": stream, "config": {
        "deliver_policy": "all", "ack_policy": "none", "mem_storage": True,
        "num_replicas": 1, "inactive_threshold": 60_000_000_000}}
    if filter_subject:
        config["config"]["filter_subject"] = filter_subject
    answer, (wall, cpu) = timed_request(server, sock, reader,
                                        f"$JS.API.CONSUMER.CREATE.{stream}",
                                        json.dumps(config).encode())
    name = answer["name"]
    print(f"  (the consumer's creation: {wall:.1f} ms wall, {cpu} ms nats-server CPU)")
    found, pending = 0, None
    while pending != 0:
        body = json.dumps({"batch": PULL_BATCH, "no_wait": True}).encode()
        sock.sendall(b"PUB $JS.API.CONSUMER.MSG.NEXT.%s.%s _INBOX.c.1 %d\r\n%s\r\n"
                     % (stream.encode(), name.encode(), len(body), body))
        # A batch ends with its PULL_BATCH-th holding, or with a status (408: fewer
        # came than asked; 404: none), read so that the next answer is not taken for it.
        for _ in range(PULL_BATCH):
            line = reader.readline()
            parts = line.split()
            reader.read(int(parts[-1]) + 2)
            if parts[0] == b"HMSG":  # a status: nothing more
                pending = 0
                break
            found += 1
            pending = int(parts[3].rsplit(b".", 1)[1])  # the ack subject's last token
    sock.sendall(request(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b""))
    read_message(sock, reader)
    return found


CHECKS_UNDER_WAY = 1024


def checks(sock, reader, n):
    """n requests on subjects nobody subscribes to, each answered "no responders"."""
    answered = 0
    for first in range(0, n, CHECKS_UNDER_WAY):
        count = min(CHECKS_UNDER_WAY, n - first)
        sock.sendall(b"".join(b"PUB chat.live.u%d _INBOX.c.%d 2\r\nfx\r\n" % (i, i)
                              for i in range(first, first + count)))
        for _ in range(count):
            read_message(sock, reader)
            answered += 1
    return answered


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    server, port, store = start_server("nats-reads-")
    try:
        sock, reader, info = connect(port)
        sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n'
                     b"SUB _INBOX.c.* 1\r\n")
        for name, subjects in [("CHAT_HELD", ["chat.held.>"]),
                               ("CHAT_HOLDINGS_a", ["chat.holdings.a.>"]),
                               ("CHAT_HOLDINGS_b", ["chat.holdings.b.>"])]:
            config = {"name": name, "subjects": subjects, "storage": "file",
                      "retention": "limits", "max_msgs_per_subject": 1, "discard": "old",
                      "allow_direct": True}
            sock.sendall(request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(config).encode()))
            read_message(sock, reader)
        print("server", info["version"])
        for first in range(0, n, WRITE_BATCH):
            sock.sendall(b"".join(
                b"PUB chat.%s.%s.u%d 15\r\n1 1700000000000\r\n" % (root, node, i)
                for i in range(first, min(first + WRITE_BATCH, n)) for node in (b"a", b"b")
                for root in (b"held", b"holdings")))
            flush(sock, reader)
        print(f"{n} holdings of node a among {2 * n}; node a's read:")
        for label, read in [
            ("direct gets, one stream", lambda: direct_gets(sock, reader, 2 * n)),
            ("pull, one stream", lambda: pull_consumer(
                server, sock, reader, "CHAT_HELD", "chat.held.a.>")),
            ("pull, its own stream", lambda: pull_consumer(
                server, sock, reader, "CHAT_HOLDINGS_a", None)),
            ("checks, no responders", lambda: checks(sock, reader, n)),
        ]:
            before, started = cpu_ticks(server.pid), time.time()
            found = read()
            cpu_us = (cpu_ticks(server.pid) - before) * 10_000 / max(found, 1)
            print(f"  {label:24} {found} holdings, {cpu_us:5.1f} us of nats-server CPU and "
                  f"{(time.time() - started) * 1e6 / max(found, 1):5.1f} us wall a holding")
        print("node a's holdings removed:")
        purge = json.dumps({"filter": "chat.held.a.>"}).encode()
        for label, subject, body in [
            ("purged from one stream", "$JS.API.STREAM.PURGE.CHAT_HELD", purge),
            ("its own stream deleted", "$JS.API.STREAM.DELETE.CHAT_HOLDINGS_a", b""),
        ]:
            answer, (wall, cpu) = timed_request(server, sock, reader, subject, body)
            assert "error" not in answer, answer
            print(f"  {label:24} {wall:8.1f} ms wall, {cpu:5} ms nats-server CPU")
    finally:
        stop(server, store)


if __name__ == "__main__":
    main()
