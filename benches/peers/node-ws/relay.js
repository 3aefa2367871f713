// A minimal chat relay as most Node.js services would write it: the `ws` package, one
// event loop, a Map from userId to the set of that user's sockets.
//
// Speaks the subset of the engine's protocol that benches/compare.sh drives: `auth` (open
// mode), `ping`, `send_message` routed to every device of the receiver with a
// `message_ack` (or `peer_offline`), and the plain echo scenario (text that is not a JSON
// object comes back as it was).
//
// Usage: node relay.js 127.0.0.1:PORT
'use strict';
const { WebSocketServer } = require('ws');

const [host, port] = (process.argv[2] || '127.0.0.1:18091').split(':');
const devicesOf = new Map(); // userId -> Set<WebSocket>

const server = new WebSocketServer({ host, port: Number(port), perMessageDeflate: false });
server.on('listening', () => console.log(`listening on ${host}:${server.address().port}`));
server.on('connection', (socket) => {
  let user = null;
  socket.on('message', (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    let request = null;
    try {
      request = JSON.parse(text);
    } catch (_) {
      // not JSON: the echo scenario
    }
    if (request === null || typeof request !== 'object') {
      socket.send(text);
      return;
    }
    switch (request.type) {
      case 'auth': {
        if (typeof request.userId !== 'string') return;
        user = request.userId;
        if (!devicesOf.has(user)) devicesOf.set(user, new Set());
        devicesOf.get(user).add(socket);
        socket.send(JSON.stringify({ type: 'auth_success', userId: user,
          deviceId: request.deviceId, timestamp: Date.now() }));
        break;
      }
      case 'ping':
        socket.send(JSON.stringify({ type: 'pong', ts: request.ts, timestamp: Date.now() }));
        break;
      case 'send_message': {
        if (user === null) return;
        const devices = devicesOf.get(request.receiverId);
        if (devices && devices.size > 0) {
          const frame = JSON.stringify({ type: 'new_message', messageId: request.messageId,
            senderId: user, receiverId: request.receiverId, content: request.content,
            timestamp: Date.now(), status: 'delivered' });
          for (const device of devices) device.send(frame);
          socket.send(JSON.stringify({ type: 'message_ack', messageId: request.messageId,
            status: 'sent', timestamp: Date.now() }));
        } else {
          socket.send(JSON.stringify({ type: 'error', code: 'peer_offline',
            message: 'no device online', ref: request.messageId }));
        }
        break;
      }
      default:
        break;
    }
  });
  socket.on('close', () => {
    if (user === null) return;
    const devices = devicesOf.get(user);
    if (!devices) return;
    devices.delete(socket);
    if (devices.size === 0) devicesOf.delete(user);
  });
  socket.on('error', () => socket.terminate());
});
