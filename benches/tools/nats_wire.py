"""What the NATS bench tools share: a nats-server with JetStream of their own on a free
loopback port in a temporary directory, a plain-socket connection to it, and the reading
of its messages (the NATS text protocol). Imported by nats_republish_check.py,
nats_placement_check.py, jetstream_costs.py, nats_stalls.py and nats_reads.py, which sit
beside it.
"""
import json
import shutil
import socket
import subprocess
import tempfile
import time

SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(prefix):
    """A nats-server with JetStream: (process, port, store directory). Stop it with stop()."""
    port = free_port()
    store = tempfile.mkdtemp(prefix=prefix)
    server = subprocess.Popen(
        [SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, port, store


def stop(server, store):
    server.kill()
    server.wait()
    shutil.rmtree(store, ignore_errors=True)


def connect(port):
    """A socket to the server once it takes connections, its reader, and its INFO."""
    for _ in range(100):
        try:
            sock = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit("nats-server took no connection")
    reader = sock.makefile("rb")
    info = json.loads(reader.readline()[5:])
    return sock, reader, info


def read_message(sock, reader):
    """The next MSG or HMSG: (subject, headers text, payload); PINGs are answered."""
    while True:
        line = reader.readline()
        if not line:
            raise RuntimeError("connection closed")
        parts = line.split()
        if parts[0] == b"MSG":
            payload = reader.read(int(parts[-1]) + 2)[:-2]
            return parts[1].decode(), "", payload
        if parts[0] == b"HMSG":
            head_len, total = int(parts[-2]), int(parts[-1])
            body = reader.read(total + 2)[:-2]
            return parts[1].decode(), body[:head_len].decode(), body[head_len:]
        if parts[0] == b"PING":
            sock.sendall(b"PONG\r\n")


def request(subject, body):
    """A request whose answer comes to `_INBOX.c.1`."""
    return b"PUB %s _INBOX.c.1 %d\r\n%s\r\n" % (subject.encode(), len(body), body)


def cpu_ticks(pid):
    """The CPU process `pid` has used, user and system, in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().split(")")[1].split()
    return int(fields[11]) + int(fields[12])
