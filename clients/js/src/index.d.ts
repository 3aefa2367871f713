// Types of the engine's JavaScript client (src/index.js). Server messages follow
// PROTOCOL.md: camelCase fields, Unix-millisecond timestamps, `seq` on inbox events.

/** Where a device is in its inbox. */
export interface InboxPosition {
  epoch: string;
  seq: number;
}

/** Keeps inbox positions between sessions. */
export interface PositionStorage {
  get(key: string): InboxPosition | undefined;
  set(key: string, value: InboxPosition): void;
}

export function memoryStorage(): PositionStorage;
export function webStorage(store: Storage): PositionStorage;

export type Priority = "high" | "normal" | "low";

export interface AuthSuccess {
  type: "auth_success";
  userId: string;
  deviceId: string;
  timestamp: number;
  epoch?: string;
  seq?: number;
  resumed?: boolean;
}

export interface NewMessage {
  type: "new_message";
  messageId: string;
  senderId: string;
  receiverId: string;
  content: string;
  messageType: string;
  priority: Priority;
  timestamp: number;
  groupId?: string;
  seq?: number;
}

export interface MessageAck {
  type: "message_ack";
  messageId: string;
  status: "sent" | "queued" | "rejected";
  reason?: string;
  timestamp: number;
}

export interface DeliveryReceipt { type: "delivery_receipt"; messageId: string; receiverId: string; timestamp: number; seq?: number }
export interface ReadReceipt { type: "read_receipt"; messageId: string; readerId: string; timestamp: number; seq?: number }
export interface Typing { type: "typing"; senderId: string; isTyping: boolean; timestamp: number }
export interface PresenceState { type: "presence_state"; users: { userId: string; status: "online" | "offline"; lastSeen: number | null }[] }
export interface PresenceUpdate { type: "presence_update"; userId: string; status: "online" | "offline"; timestamp: number }
export interface GroupMember { type: "group_member"; groupId: string; userId: string; action: "joined" | "left"; role?: "owner" | "admin" | "member"; timestamp: number; seq?: number }
export interface History { type: "history"; peerId: string; messages: NewMessage[]; more?: boolean }
export interface Signal { type: "signal"; senderId: string; callId: string; kind: string; payload: unknown; timestamp: number }
export interface MessageEdited { type: "message_edited"; messageId: string; senderId: string; content: string; timestamp: number; seq?: number }
export interface MessageDeleted { type: "message_deleted"; messageId: string; senderId: string; timestamp: number; seq?: number }
export interface ReactionChanged { type: "reaction_added" | "reaction_removed"; messageId: string; senderId: string; emoji: string; timestamp: number; seq?: number }
export interface ServerError { type: "error"; code: string; message: string; ref?: string }
export interface Pong { type: "pong"; ts?: number; timestamp: number }

/** Every server message by its `type`. */
export interface ServerMessages {
  auth_success: AuthSuccess;
  new_message: NewMessage;
  message_ack: MessageAck;
  delivery_receipt: DeliveryReceipt;
  read_receipt: ReadReceipt;
  typing: Typing;
  presence_state: PresenceState;
  presence_update: PresenceUpdate;
  group_member: GroupMember;
  history: History;
  signal: Signal;
  message_edited: MessageEdited;
  message_deleted: MessageDeleted;
  reaction_added: ReactionChanged;
  reaction_removed: ReactionChanged;
  error: ServerError;
  pong: Pong;
}

export type ConnectionState = "idle" | "connecting" | "online" | "waiting" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** The close code that led here, if any. */
  code?: number;
  reason?: string;
  /** `waiting`: milliseconds until the next attempt. */
  delay?: number;
  /** `online`: whether the session resumed from the stored position. */
  resumed?: boolean;
  attempt?: number;
}

export interface ClientEvents extends ServerMessages {
  state: StateChange;
  protocol_error: { reason: string; data: unknown };
  "*": ServerMessages[keyof ServerMessages];
}

export interface ChatClientOptions {
  url: string;
  userId: string;
  deviceId: string;
  token?: string | (() => string | Promise<string>);
  storage?: PositionStorage;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  ackDelayMs?: number;
  WebSocket?: typeof WebSocket;
  random?: () => number;
}

export interface SendOptions {
  messageId?: string;
  messageType?: string;
  priority?: Priority;
  metadata?: Record<string, unknown>;
}

export class ChatError extends Error {
  code: string;
  ref?: string;
}

export class ChatClient {
  constructor(options: ChatClientOptions);
  readonly state: ConnectionState;
  /** The last `auth_success`. */
  readonly session: AuthSuccess | null;
  /** Messages sent and not yet acknowledged. */
  readonly pending: Record<string, unknown>[];
  on<K extends keyof ClientEvents>(type: K, handler: (event: ClientEvents[K]) => void): () => void;
  once<K extends keyof ClientEvents>(type: K): Promise<ClientEvents[K]>;
  connect(): Promise<AuthSuccess>;
  close(): void;
  send(receiverId: string, content: string, options?: SendOptions): Promise<MessageAck>;
  sendToGroup(groupId: string, content: string, options?: Omit<SendOptions, "metadata">): Promise<MessageAck>;
  typing(receiverId: string, isTyping?: boolean): boolean;
  markRead(messageId: string, senderId?: string): boolean;
  subscribePresence(userIds: string[]): boolean;
  unsubscribePresence(userIds: string[]): boolean;
  presenceOf(userId: string): { online: boolean; lastSeen: number | null } | undefined;
  history(peerId: string, options?: { before?: number; limit?: number }): Promise<History>;
  createGroup(groupId: string, options?: { access?: "open" | "invite" }): boolean;
  joinGroup(groupId: string): boolean;
  leaveGroup(groupId: string): boolean;
  addMember(groupId: string, userId: string, options?: { role?: "admin" | "member" }): boolean;
  removeMember(groupId: string, userId: string): boolean;
}
