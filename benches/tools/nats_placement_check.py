#!/usr/bin/env python3
"""Where nats-server (2.9.10 here) puts one-copy streams on a NATS cluster of three servers
(tuning/cluster.md, docs/cluster.md "Shards"): twice, first with each server's default
store limit (from its free disk, which differs a little between servers on one disk),
then with the same `max_file_store` on every server. Each time it makes twelve streams
through the first server and prints how many each server leads.

Starts its own servers on free loopback ports in temporary directories, and stops them.
Usage: python3 benches/tools/nats_placement_check.py
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time

from nats_wire import SERVER, connect, free_port, read_message

STREAMS = 12


def start_cluster(same_limit):
    """Three servers routed to each other: (processes, client ports, directory)."""
    root = tempfile.mkdtemp(prefix="nats-placement-")
    routes = [free_port() for _ in range(3)]
    route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
    processes, ports = [], []
    for i in range(3):
        store = f"{root}/s{i + 1}"
        limit = ", max_file_store: 10G" if same_limit else ""
        config = f"{root}/s{i + 1}.conf"
        with open(config, "w") as f:
            f.write(f'jetstream {{ store_dir: "{store}"{limit} }}\n')
        port = free_port()
        processes.append(subprocess.Popen(
            [SERVER, "-c", config, "-a", "127.0.0.1", "-p", str(port),
             "--server_name", f"s{i + 1}", "--cluster_name", "chat",
             "--cluster", f"nats://127.0.0.1:{routes[i]}", "--routes", route_urls],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports.append(port)
    return processes, ports, root


def ask(port, subject, body):
    """One request on a connection of its own: the JSON answer, or None if none came
    within 2 s (a NATS cluster still electing its meta leader answers nothing)."""
    sock, f, _ = connect(port)
    try:
        sock.settimeout(2)
        sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n')
        sock.sendall(b"SUB _INBOX.place 1\r\n")
        sock.sendall(b"PUB %s _INBOX.place %d\r\n%s\r\n" % (subject.encode(), len(body), body))
        while True:
            answer_subject, _, payload = read_message(sock, f)
            if answer_subject == "_INBOX.place":
                return json.loads(payload or b"{}")
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def placements(same_limit):
    processes, ports, root = start_cluster(same_limit)
    try:
        leaders = {}
        for k in range(STREAMS):
            config = json.dumps({"name": f"P_{k}", "subjects": [f"p.{k}.>"], "storage": "file"})
            deadline = time.time() + 60
            while True:  # until the NATS cluster has elected its meta leader
                answer = ask(ports[0], f"$JS.API.STREAM.CREATE.P_{k}", config.encode())
                if (answer and "cluster" in answer) or time.time() > deadline:
                    break
                time.sleep(0.5)
            leader = (answer or {}).get("cluster", {}).get("leader", "none")
            leaders[leader] = leaders.get(leader, 0) + 1
        return leaders
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def main():
    for same_limit in (False, True):
        leaders = placements(same_limit)
        label = "same max_file_store" if same_limit else "default store limits"
        print(f"{label}: {STREAMS} streams, by server: {dict(sorted(leaders.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
