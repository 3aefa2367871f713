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
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_message(f):
    """The next MSG or HMSG: (subject, headers text, payload)."""
    while True:
        line = f.readline()
        if not line:
            raise RuntimeError("connection closed")
        parts = line.split()
        if parts[0] == b"MSG":
            payload = f.read(int(parts[-1]) + 2)[:-2]
            return parts[1].decode(), "", payload
        if parts[0] == b"HMSG":
            head_len, total = int(parts[-2]), int(parts[-1])
            body = f.read(total + 2)[:-2]
            return parts[1].decode(), body[:head_len].decode(), body[head_len:]


def main():
    port = free_port()
    store = tempfile.mkdtemp(prefix="nats-republish-")
    server = subprocess.Popen(
        [SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        f = sock.makefile("rb")
        info = json.loads(f.readline()[5:])
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
        read_message(f)
        for user, text in [(b"alice", b"one"), (b"bob", b"two"), (b"alice", b"three")]:
            sock.sendall(b"PUB chat.inbox.%s _INBOX.check %d\r\n%s\r\n" % (user, len(text), text))
        republished = []
        while len(republished) < 3:
            subject, headers, payload = read_message(f)
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
            _, headers, _ = read_message(f)
        print("no responders:", headers.split("\r\n")[0])
        want = [("chat.live.alice", "1", "0"), ("chat.live.bob", "2", "0"), ("chat.live.alice", "3", "1")]
        ok = [r[:3] for r in republished] == want and headers.startswith("NATS/1.0 503")
        print("ok" if ok else "MISSING: expected " + repr(want))
        return 0 if ok else 1
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
