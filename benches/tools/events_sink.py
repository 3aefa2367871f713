#!/usr/bin/env python3
"""A bench's events webhook: takes the engine's signed batches (`--events-webhook`) and
appends one line per presence event to a file: `<receipt unix s> <type> <user> <node>`.
It checks no signature (the engine's tests do); it only counts and times.

Usage: events_sink.py PORT FILE
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, FILE = int(sys.argv[1]), sys.argv[2]
out = open(FILE, "a", buffering=1)


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        now = time.time()
        try:
            batch = json.loads(body)
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        for event in batch.get("events", []):
            kind = event.get("type", "")
            if kind in ("user_online", "user_offline"):
                out.write(f"{now:.6f} {kind} {event.get('user_id')} {batch.get('node')}\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Sink).serve_forever()
