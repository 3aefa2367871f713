"""A minimal chat relay as most Python services would write it: asyncio and the
`websockets` package, a dict from userId to that user's connections.

Speaks the subset of the engine's protocol that benches/compare.sh drives: `auth` (open
mode), `ping`, `send_message` routed to every device of the receiver with a `message_ack`
(or `peer_offline`), and the plain echo scenario (text that is not a JSON object comes back
as it was).

Usage: python3 relay.py 127.0.0.1:PORT
"""

import asyncio
import json
import functools
import sys
import time

from websockets.asyncio.server import serve

devices_of = {}  # userId -> set of connections


# Compact, as every other server writes it (and as the loadgen reads `{"type":"...`).
dumps = functools.partial(json.dumps, separators=(",", ":"))


def now_ms():
    return int(time.time() * 1000)


async def handle(connection):
    user = None
    try:
        async for text in connection:
            if not isinstance(text, str):
                continue
            try:
                request = json.loads(text)
            except ValueError:
                request = None
            if not isinstance(request, dict):
                await connection.send(text)  # the echo scenario
                continue
            kind = request.get("type")
            if kind == "auth" and isinstance(request.get("userId"), str):
                user = request["userId"]
                devices_of.setdefault(user, set()).add(connection)
                await connection.send(dumps({"type": "auth_success", "userId": user,
                                                  "deviceId": request.get("deviceId"), "timestamp": now_ms()}))
            elif kind == "ping":
                await connection.send(dumps({"type": "pong", "ts": request.get("ts"), "timestamp": now_ms()}))
            elif kind == "send_message" and user is not None:
                receiver = request.get("receiverId")
                devices = devices_of.get(receiver)
                if devices:
                    frame = dumps({"type": "new_message", "messageId": request.get("messageId"),
                                        "senderId": user, "receiverId": receiver,
                                        "content": request.get("content"), "timestamp": now_ms(),
                                        "status": "delivered"})
                    for device in list(devices):
                        try:
                            await device.send(frame)
                        except Exception:
                            pass  # that device is closing; its handler cleans up
                    reply = {"type": "message_ack", "messageId": request.get("messageId"),
                             "status": "sent", "timestamp": now_ms()}
                else:
                    reply = {"type": "error", "code": "peer_offline", "message": "no device online",
                             "ref": request.get("messageId")}
                await connection.send(dumps(reply))
    except Exception:
        pass  # abrupt disconnects end the handler
    finally:
        if user is not None:
            devices = devices_of.get(user)
            if devices is not None:
                devices.discard(connection)
                if not devices:
                    del devices_of[user]


async def main():
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:18092").rpartition(":")
    async with serve(handle, host, int(port), compression=None, max_queue=None,
                     ping_interval=None) as server:
        print(f"listening on {host}:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
