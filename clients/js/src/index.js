// A client for the engine's WebSocket protocol (PROTOCOL.md, v1 and v2), for browsers and
// Node >= 20 (the global WebSocket). No runtime dependencies.
//
// What it does for an app:
// - connects, authenticates, and after a drop reconnects with exponential backoff and
//   full jitter (not after a refusal: 1008, or 4003 when the same device connected again);
// - resumes from the last inbox `seq` this device processed (protocol v2) and acks what
//   it processed, so nothing is lost or repeated across reconnects;
// - keeps every message it sends in an outbox until its `message_ack`, and sends it
//   again, with the same `messageId`, after a reconnect (the gateway delivers a retry once);
// - drops anything delivered twice (an inbox event at or below the processed `seq`);
// - keeps presence subscriptions across reconnects, and wraps group calls.
//
// Every server message is an event of its `type` (`client.on("new_message", m => …)`),
// plus `state` events for the connection.

const BACKOFF_BASE_MS = 250;
const BACKOFF_MAX_MS = 30_000;
const ACK_DELAY_MS = 100;
const HISTORY_TIMEOUT_MS = 15_000;
// Recent (senderId, messageId) pairs remembered to drop a message delivered twice
// without an inbox seq (a v1 gateway, or a copy outside the inbox).
const RECENT_MESSAGES_MAX = 1000;
// Close codes after which reconnecting would only be refused again.
const FINAL_CLOSE_CODES = new Set([1008, 4003]);

/** Where a device is in its inbox, kept between sessions by a `storage`. */
function position(storage, key) {
  try {
    const kept = storage.get(key);
    if (kept && typeof kept.epoch === "string" && Number.isInteger(kept.seq)) return kept;
  } catch {
    // A storage that cannot be read is an empty one.
  }
  return { epoch: "", seq: 0 };
}

/** A storage in memory: positions last as long as the page or process. */
export function memoryStorage() {
  const map = new Map();
  return { get: (key) => map.get(key), set: (key, value) => map.set(key, value) };
}

/** A storage over the Web Storage API (`localStorage`), for browsers. */
export function webStorage(store) {
  return {
    get: (key) => {
      const text = store.getItem(key);
      return text ? JSON.parse(text) : undefined;
    },
    set: (key, value) => store.setItem(key, JSON.stringify(value)),
  };
}

/** A refusal from the server: `error` (with `code`) or a rejected message. */
export class ChatError extends Error {
  constructor(code, message, reference) {
    super(message || code);
    this.name = "ChatError";
    this.code = code;
    this.ref = reference;
  }
}

function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
}

export class ChatClient {
  /**
   * @param {object} options
   * @param {string} options.url `ws://host:port/ws` or `wss://…`
   * @param {string} options.userId
   * @param {string} options.deviceId
   * @param {string | (() => string | Promise<string>)} [options.token] a JWT, or a function
   *   that gives a fresh one for each connection
   * @param {{get(key: string): any, set(key: string, value: any): void}} [options.storage]
   *   where the inbox position is kept (default: memory)
   * @param {number} [options.backoffBaseMs] first reconnect's bound (default 250)
   * @param {number} [options.backoffMaxMs] largest bound (default 30000)
   * @param {number} [options.ackDelayMs] acks are sent this long after the last event (100)
   * @param {typeof WebSocket} [options.WebSocket] the WebSocket class (default the global)
   * @param {() => number} [options.random] a number in [0, 1) for jitter (Math.random)
   */
  constructor(options) {
    for (const field of ["url", "userId", "deviceId"]) {
      if (typeof options?.[field] !== "string" || options[field] === "") {
        throw new TypeError(`ChatClient: options.${field} must be a non-empty string`);
      }
    }
    this.url = options.url;
    this.userId = options.userId;
    this.deviceId = options.deviceId;
    this.token = options.token;
    this.storage = options.storage ?? memoryStorage();
    this.backoffBaseMs = options.backoffBaseMs ?? BACKOFF_BASE_MS;
    this.backoffMaxMs = options.backoffMaxMs ?? BACKOFF_MAX_MS;
    this.ackDelayMs = options.ackDelayMs ?? ACK_DELAY_MS;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.random = options.random ?? Math.random;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("ChatClient: no WebSocket (Node < 22 needs --experimental-websocket)");
    }
    this.state = "idle"; // idle | connecting | online | waiting | closed
    this.socket = null;
    this.attempts = 0;
    this.wanted = false;
    this.reconnectTimer = null;
    this.ackTimer = null;
    this.listeners = new Map();
    this.outbox = new Map(); // messageId -> {message, resolve, reject}
    this.watching = new Set(); // presence subscriptions, renewed after a reconnect
    this.presence = new Map(); // userId -> {online, lastSeen}
    this.histories = new Map(); // peerId -> [{resolve, reject, timer}]
    this.inboxKey = `engine-inbox:${this.userId}:${this.deviceId}`;
    this.inbox = position(this.storage, this.inboxKey);
    this.acked = this.inbox.seq;
    this.resumed = false; // the session resumed: its inbox events come in seq order
    this.recent = new Set(); // recent "senderId messageId" of new_message, oldest first
    this.session = null; // the last auth_success
  }

  /** Calls `handler(message)` for each server message of `type` (or `"state"`, `"*"`). */
  on(type, handler) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(handler);
    return () => this.listeners.get(type)?.delete(handler);
  }

  /** Like `on`, for the next one only; resolves with it. */
  once(type) {
    return new Promise((resolve) => {
      const off = this.on(type, (message) => {
        off();
        resolve(message);
      });
    });
  }

  emit(type, value) {
    for (const handler of [...(this.listeners.get(type) ?? [])]) handler(value);
    if (type !== "state") for (const handler of [...(this.listeners.get("*") ?? [])]) handler(value);
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit("state", { state, ...detail });
  }

  /** Connects (and keeps reconnecting until `close`); resolves at the first `auth_success`. */
  connect() {
    this.wanted = true;
    const online = this.once("auth_success");
    this.open();
    return online;
  }

  /** Closes for good: no reconnect; what waits in the outbox stays there. */
  close() {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    this.flushAck();
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000);
    }
    this.setState("closed", { code: 1000 });
  }

  async open() {
    if (!this.wanted) return;
    this.setState("connecting", { attempt: this.attempts });
    let token;
    try {
      token = typeof this.token === "function" ? await this.token() : this.token;
    } catch (error) {
      return this.retry(0, `no token: ${error}`);
    }
    const socket = new this.WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      const auth = { type: "auth", userId: this.userId, deviceId: this.deviceId };
      if (token) auth.token = token;
      if (this.inbox.epoch) auth.resume = { epoch: this.inbox.epoch, seq: this.inbox.seq };
      this.sendRaw(auth);
    };
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return this.emit("protocol_error", { reason: "not JSON", data: event.data });
      }
      this.receive(message);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      clearTimeout(this.ackTimer);
      this.failHistories("the connection closed");
      this.retry(event.code, event.reason);
    };
    socket.onerror = () => {}; // a close follows
  }

  /** After a drop: waits a random time below an exponential bound, then connects again. */
  retry(code, reason) {
    if (!this.wanted || FINAL_CLOSE_CODES.has(code)) {
      this.wanted = false;
      return this.setState("closed", { code, reason });
    }
    const bound = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** this.attempts);
    const delay = Math.floor(this.random() * bound);
    this.attempts += 1;
    this.setState("waiting", { code, reason, delay });
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  sendRaw(message) {
    if (this.socket && this.socket.readyState === 1) {
      this.socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  /** Whether `message` was processed already (and so is dropped). */
  repeated(message) {
    if (message.type === "auth_success") return false;
    if (Number.isInteger(message.seq)) {
      // A resumed session gets inbox events in seq order: one at or below the processed
      // seq is a repeat. Without resume they come in priority order, each once.
      if (this.resumed && message.seq <= this.inbox.seq) return true;
      this.inbox.seq = Math.max(this.inbox.seq, message.seq);
      this.keepPosition();
      this.scheduleAck();
    }
    if (message.type === "new_message") {
      const key = `${message.senderId} ${message.messageId} ${message.groupId ?? ""}`;
      if (this.recent.has(key)) return true;
      this.recent.add(key);
      if (this.recent.size > RECENT_MESSAGES_MAX) {
        this.recent.delete(this.recent.values().next().value);
      }
    }
    return false;
  }

  receive(message) {
    if (this.repeated(message)) return;
    switch (message.type) {
      case "auth_success":
        this.attempts = 0;
        this.session = message;
        if (message.epoch !== undefined) {
          // Not resumed (a new epoch, or events no longer kept): what comes now is what
          // no device acknowledged, whatever its seq.
          this.resumed = message.resumed === true;
          if (!this.resumed) {
            this.inbox.seq = 0;
            this.acked = 0;
          }
          this.inbox.epoch = String(message.epoch);
          this.keepPosition();
        }
        this.setState("online", { resumed: message.resumed === true });
        for (const pending of this.outbox.values()) this.sendRaw(pending.message);
        if (this.watching.size) {
          this.sendRaw({ type: "presence_subscribe", userIds: [...this.watching] });
        }
        break;
      case "message_ack": {
        const pending = this.outbox.get(message.messageId);
        if (pending) {
          this.outbox.delete(message.messageId);
          if (message.status === "rejected") {
            pending.reject(new ChatError(message.reason ?? "rejected", message.reason, message.messageId));
          } else {
            pending.resolve(message);
          }
        }
        break;
      }
      case "error": {
        const pending = message.ref !== undefined && this.outbox.get(message.ref);
        // A message refused for good leaves the outbox; one refused for now stays.
        if (pending && !["rate_limited", "cluster_unavailable", "persistence_failed"].includes(message.code)) {
          this.outbox.delete(message.ref);
          pending.reject(new ChatError(message.code, message.message, message.ref));
        }
        break;
      }
      case "presence_state":
        for (const user of message.users ?? []) {
          this.presence.set(user.userId, { online: user.status === "online", lastSeen: user.lastSeen ?? null });
        }
        break;
      case "presence_update":
        this.presence.set(message.userId, {
          online: message.status === "online",
          lastSeen: message.status === "online" ? null : message.timestamp,
        });
        break;
      case "history": {
        const waiting = this.histories.get(message.peerId);
        const first = waiting?.shift();
        if (first) {
          clearTimeout(first.timer);
          first.resolve(message);
        }
        break;
      }
    }
    this.emit(message.type, message);
  }

  keepPosition() {
    try {
      this.storage.set(this.inboxKey, { epoch: this.inbox.epoch, seq: this.inbox.seq });
    } catch {
      // Positions are a convenience: without them the device gets what none acknowledged.
    }
  }

  scheduleAck() {
    clearTimeout(this.ackTimer);
    this.ackTimer = setTimeout(() => this.flushAck(), this.ackDelayMs);
  }

  flushAck() {
    clearTimeout(this.ackTimer);
    if (this.inbox.seq > this.acked && this.sendRaw({ type: "ack", seq: this.inbox.seq })) {
      this.acked = this.inbox.seq;
    }
  }

  /** Puts `message` in the outbox and sends it when connected; resolves with its ack. */
  submit(message) {
    return new Promise((resolve, reject) => {
      this.outbox.set(message.messageId, { message, resolve, reject });
      this.sendRaw(message);
    });
  }

  /**
   * Sends a direct message. Resolves with the `message_ack` (`status` "sent" or "queued")
   * once the gateway holds it durably; rejects with a ChatError when refused
   * (`queue_full`, `peer_offline`, …). Kept and sent again after a reconnect until then.
   */
  send(receiverId, content, { messageId = randomId(), messageType, priority, metadata } = {}) {
    const message = { type: "send_message", messageId, receiverId, content };
    if (messageType) message.messageType = messageType;
    if (priority) message.priority = priority;
    if (metadata) message.metadata = metadata;
    return this.submit(message);
  }

  /** Sends a message to a group (same guarantees as `send`). */
  sendToGroup(groupId, content, { messageId = randomId(), messageType, priority } = {}) {
    const message = { type: "group_message", messageId, groupId, content };
    if (messageType) message.messageType = messageType;
    if (priority) message.priority = priority;
    return this.submit(message);
  }

  /** Messages sent and not yet acknowledged. */
  get pending() {
    return [...this.outbox.values()].map((p) => p.message);
  }

  /** `typing` to `receiverId` (never stored). */
  typing(receiverId, isTyping = true) {
    return this.sendRaw({ type: "typing", receiverId, isTyping });
  }

  /** Tells the sender that a message was read. */
  markRead(messageId, senderId) {
    const receipt = { type: "read_receipt", messageId };
    if (senderId) receipt.senderId = senderId;
    return this.sendRaw(receipt);
  }

  /** Watches these users' presence, across reconnects (`presence_state`, `presence_update`). */
  subscribePresence(userIds) {
    for (const id of userIds) this.watching.add(id);
    return this.sendRaw({ type: "presence_subscribe", userIds });
  }

  /** Stops watching these users. */
  unsubscribePresence(userIds) {
    for (const id of userIds) {
      this.watching.delete(id);
      this.presence.delete(id);
    }
    return this.sendRaw({ type: "presence_unsubscribe", userIds });
  }

  /** The last known presence of a watched user: `{online, lastSeen}` or undefined. */
  presenceOf(userId) {
    return this.presence.get(userId);
  }

  /** Asks for a page of the conversation with `peerId`, newest first; resolves with it. */
  history(peerId, { before, limit } = {}) {
    return new Promise((resolve, reject) => {
      const request = { type: "history", peerId };
      if (before !== undefined) request.before = before;
      if (limit !== undefined) request.limit = limit;
      if (!this.sendRaw(request)) return reject(new ChatError("not_connected", "not connected"));
      const waiting = this.histories.get(peerId) ?? [];
      const entry = { resolve, reject };
      entry.timer = setTimeout(() => {
        const list = this.histories.get(peerId) ?? [];
        const at = list.indexOf(entry);
        if (at >= 0) list.splice(at, 1);
        reject(new ChatError("timeout", "no history page in time"));
      }, HISTORY_TIMEOUT_MS);
      waiting.push(entry);
      this.histories.set(peerId, waiting);
    });
  }

  failHistories(why) {
    for (const waiting of this.histories.values()) {
      for (const entry of waiting) {
        clearTimeout(entry.timer);
        entry.reject(new ChatError("not_connected", why));
      }
    }
    this.histories.clear();
  }

  /** Group calls; the members (this device included) hear `group_member`. */
  createGroup(groupId, { access = "open" } = {}) {
    return this.sendRaw({ type: "group_create", groupId, access });
  }

  joinGroup(groupId) {
    return this.sendRaw({ type: "group_join", groupId });
  }

  leaveGroup(groupId) {
    return this.sendRaw({ type: "group_leave", groupId });
  }

  addMember(groupId, userId, { role } = {}) {
    const request = { type: "group_add", groupId, userId };
    if (role) request.role = role;
    return this.sendRaw(request);
  }

  removeMember(groupId, userId) {
    return this.sendRaw({ type: "group_remove", groupId, userId });
  }
}
