#!/usr/bin/env python3
"""What docs/cluster.md relies on in nats-server (2.9.10 here): a stream's RePublish sends
each stored message to the live subject with `Nats-Sequence` (the stream sequence, the
inbox `seq`) and `Nats-Last-Sequence` (the previous message on the same subject), and a
request nobody subscribes to is answered 503 ("no responders").

Starts its own nats-server with JetStream on a free port in a temporary directory, speaks
the NATS text protocol over a socket, prints what it saw, exits 1 if any of it is missing.
Usage: python3 benches/tools/nats_republish_check.py
"""
import json
import sys

from nats_wire import connect, read_message, start_server, stop


def main():
    server, port, store = start_server("nats-republish-")
    try:
        sock, f, info = connect(port)
        print("server", info["version"])
        sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n')
        sock.sendall(b"SUB _INBOX.check 1\r\nSUB chat.live.> 2\r\n")
        config = {
            "name": "CHECK_INBOX",
            "subjects": ["chat.inbox.>"],
            "storage": "file",
            "republish": {"src": "chat.inbox.>", "dest": "chat.live.>"},
        }
        body = json.dumps(config).encode()
        sock.sendall(b"PUB $JS.API.STREAM.CREATE.CHECK_INBOX _INBOX.check %d\r\n%s\r\n" % (len(body), body))
        read_message(sock, f)
        for user, text in [(b"alice", b"one"), (b"bob", b"two"), (b"alice", b"three")]:
            sock.sendall(b"PUB chat.inbox.%s _INBOX.check %d\r\n%s\r\n" % (user, len(text), text))
        republished = []
        while len(republished) < 3:
            subject, headers, payload = read_message(sock, f)
            if subject.startswith("chat.live."):
                fields = dict(
                    line.split(": ", 1) for line in headers.split("\r\n")[1:] if ": " in line
                )
                republished.append((subject, fields.get("Nats-Sequence"), fields.get("Nats-Last-Sequence"), payload))
        for row in republished:
            print("republished", row)
        sock.sendall(b"PUB chat.nobody _INBOX.check 0\r\n\r\n")
        headers = ""
        while not headers:  # the publish acks come first, without headers
            _, headers, _ = read_message(sock, f)
        print("no responders:", headers.split("\r\n")[0])
        want = [("chat.live.alice", "1", "0"), ("chat.live.bob", "2", "0"), ("chat.live.alice", "3", "1")]
        ok = [r[:3] for r in republished] == want and headers.startswith("NATS/1.0 503")
        print("ok" if ok else "MISSING: expected " + repr(want))
        return 0 if ok else 1
    finally:
        stop(server, store)


if __name__ == "__main__":
    sys.exit(main())
