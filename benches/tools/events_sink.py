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
        lines = [
            f"{now:.6f} {event.get('type')} {event.get('user_id')} {batch.get('node')}\n"
            for event in batch.get("events", [])
            if event.get("type") in ("user_online", "user_offline")
        ]
        # One write a batch: a line at a time cost the bench's box a write(2) an event.
        out.write("".join(lines))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Sink).serve_forever()
