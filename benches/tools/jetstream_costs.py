#!/usr/bin/env python3
"""What each JetStream operation a cluster node's inboxes use costs nats-server, in CPU per
operation (docs/cluster.md, "Inboxes"): a publish to an inbox subject, the direct gets a
read and an ack make, a user's acknowledgement record replaced in a key-value bucket, and
the two ways to take acknowledged events out (a delete by
sequence, a purge of the user's subject up to a sequence).

Starts its own nats-server with JetStream on a free port in a temporary directory
(benches/tools/nats_wire.py), makes the stream as a node does, and runs each operation N
times over 3,000 users' subjects, pipelined 100 at a time; nats-server's CPU comes from
/proc. Exits 1 if the server does not start.
Usage: python3 benches/tools/jetstream_costs.py [N]   (default 5000)
"""
import json
import sys
import time

from nats_wire import connect, cpu_ticks, read_message, request, start_server, stop

USERS = [f"u{i}" for i in range(3000)]
BATCH = 100


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    server, port, store = start_server("nats-costs-")
    try:
        sock, reader, info = connect(port)
        sock.sendall(
            b'CONNECT {"verbose":false,"headers":true,"no_responders":true,"echo":false}\r\n'
            b"SUB _INBOX.c.* 1\r\n"
        )
        config = {
            "name": "CHAT_INBOX", "subjects": ["chat.inbox.>"], "storage": "file",
            "allow_direct": True, "max_msgs_per_subject": 1000, "discard": "new",
            "discard_new_per_subject": True, "duplicate_window": 120_000_000_000,
            "republish": {"src": "chat.inbox.>", "dest": "chat.live.>"},
        }
        sock.sendall(request("$JS.API.STREAM.CREATE.CHAT_INBOX", json.dumps(config).encode()))
        read_message(sock, reader)
        records = {
            "name": "KV_chat_acks", "subjects": ["$KV.chat_acks.>"], "storage": "file",
            "max_msgs_per_subject": 1, "discard": "new", "allow_rollup_hdrs": True,
            "deny_delete": True, "allow_direct": True,
        }
        sock.sendall(request("$JS.API.STREAM.CREATE.KV_chat_acks", json.dumps(records).encode()))
        read_message(sock, reader)
        print("server", info["version"])

        def phase(name, make):
            before, started = cpu_ticks(server.pid), time.time()
            for first in range(0, n, BATCH):
                sock.sendall(b"".join(make(first + i) for i in range(BATCH)))
                for _ in range(BATCH):
                    read_message(sock, reader)
            cpu_us = (cpu_ticks(server.pid) - before) * 10_000 / n
            print(f"{name:40} {cpu_us:6.0f} us of nats-server CPU per operation, "
                  f"{(time.time() - started) * 1e6 / n:6.0f} us wall")

        body = b'\x00\x01{"type":"new_message","content":"hello there"}'

        def publish(i):
            return request(f"chat.inbox.{USERS[i % len(USERS)]}", body)

        def direct_get(query):
            return request("$JS.API.DIRECT.GET.CHAT_INBOX", json.dumps(query).encode())

        phase("publish", publish)
        phase("direct get last_by_subj", lambda i: direct_get({"last_by_subj": f"chat.inbox.{USERS[i % len(USERS)]}"}))
        phase("direct get next_by_subj", lambda i: direct_get({"seq": 1, "next_by_subj": f"chat.inbox.{USERS[i % len(USERS)]}"}))
        phase("delete by sequence (no_erase)", lambda i: request(
            "$JS.API.STREAM.MSG.DELETE.CHAT_INBOX", json.dumps({"seq": i + 1, "no_erase": True}).encode()))
        phase("key-value put over a user's last value", lambda i: request(
            f"$KV.chat_acks.{USERS[i % len(USERS)]}", b"%d 0 0 1" % i))
        # A compare-and-set needs each key's last revision: the answers come in order.
        revisions, refused = {}, 0
        before, started = cpu_ticks(server.pid), time.time()
        for first in range(0, n, BATCH):
            users = [USERS[(first + i) % len(USERS)] for i in range(BATCH)]
            batch = []
            for i, user in enumerate(users):
                headers = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\n\r\n" % revisions.get(user, 0)
                body = b"%d 0 0 1" % (first + i)
                batch.append(b"HPUB $KV.chat_acks.cas-%s _INBOX.c.1 %d %d\r\n%s%s\r\n" % (
                    user.encode(), len(headers), len(headers) + len(body), headers, body))
            sock.sendall(b"".join(batch))
            for user in users:
                answer = json.loads(read_message(sock, reader)[2])
                if "error" in answer:
                    refused += 1
                else:
                    revisions[user] = answer["seq"]
        cpu_us = (cpu_ticks(server.pid) - before) * 10_000 / n
        print(f"{'key-value compare-and-set':40} {cpu_us:6.0f} us of nats-server CPU per operation, "
              f"{(time.time() - started) * 1e6 / n:6.0f} us wall ({refused} refused)")
        phase("publish again", publish)
        phase("purge of the user's subject up to a seq", lambda i: request(
            "$JS.API.STREAM.PURGE.CHAT_INBOX",
            json.dumps({"filter": f"chat.inbox.{USERS[i % len(USERS)]}", "seq": 2 * n + 1}).encode()))
        return 0
    finally:
        stop(server, store)


if __name__ == "__main__":
    sys.exit(main())
