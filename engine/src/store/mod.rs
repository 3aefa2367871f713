//! The durable store: offline queues, conversation history and the index that finds a
//! message by id, in one embedded redb file under `--data-dir`, on one dedicated thread
//! with group commit. Reactors talk to it by message and never wait on disk: commands go
//! in over a channel, answers come back over each reactor's own channel with a ring of
//! its doorbell.
//!
//! Group commit: the thread takes every command waiting (up to [`BATCH_MAX`]), applies them
//! all in one write transaction, commits once (fsync), and only then answers. So a
//! `queued` ack always follows the commit that holds the message.
//!
//! - `queue`: per-user offline queues, `(user, priority, sequence)` keys.
//! - `history`: every chat message per conversation, and `(receiver, messageId, sender)`
//!   → where it sits, which serves `read_receipt` by id and dedup across restarts.
//! - `worker`: the thread, its transactions and the retention sweep; `apply`: one
//!   transaction's commands; `answers`: the replies, committed or failed; `state`:
//!   what the thread keeps in memory about the file; `failure`: why it failed, typed.

mod answers;
mod apply;
mod failure;
mod history;
mod queue;
mod state;
mod worker;

use std::{
    io,
    path::Path,
    sync::{atomic::AtomicU64, mpsc, Arc},
    thread::JoinHandle,
    time::Duration,
};

use bytes::Bytes;
use redb::Database;
use tracing::info;

use crate::{
    protocol::{codes::OutKind, Priority},
    stats::LatencyHistogram,
};

pub use failure::Failure;
pub use queue::QueueKey;

/// Commands applied in one transaction at most.
pub const BATCH_MAX: usize = 4096;
/// One `Drain` answer carries at most this many messages or bytes (at least one message):
/// the device's reactor asks for the next part once the kernel has taken this one, so a
/// long queue never piles up in a connection's outbound queue.
pub const DRAIN_MESSAGES_MAX: usize = 256;
/// See [`DRAIN_MESSAGES_MAX`].
pub const DRAIN_BYTES_MAX: usize = 256 * 1024;
/// One `Peek` (the HTTP queue endpoint) returns at most this many messages or bytes.
pub const PEEK_MESSAGES_MAX: usize = 1000;
/// See [`PEEK_MESSAGES_MAX`].
pub const PEEK_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What the store counts, read by `/api/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Messages committed to an offline queue.
    pub persisted: AtomicU64,
    /// Messages committed to conversation history.
    pub recorded: AtomicU64,
    /// Messages a commit failed to hold (their senders were told).
    pub failures: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Queued messages removed unread after the retention period.
    pub expired: AtomicU64,
    /// History entries removed after the retention period.
    pub expired_history: AtomicU64,
    /// Time one group commit takes: begin, apply the batch, commit (fsync).
    pub commit_latency: LatencyHistogram,
    /// The push hook's counts, shared with its thread (zero without `--push-webhook`).
    pub push: Arc<crate::push::PushStats>,
}

/// What makes a message a chat message: who sent it and when. The store keeps chat
/// messages in history and recognises a retry of one it already holds.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The sending user.
    pub sender: Arc<str>,
    /// When the gateway accepted it (the `timestamp` of its `new_message`).
    pub timestamp_ms: u64,
}

/// A value a reactor gives the store with a command and gets back with the answer; the
/// store never looks inside (the home's dedup key of a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// The reactor's key.
    pub key: u128,
    /// The reactor's serial.
    pub serial: u64,
}

/// Who waits for an answer: the reactor it goes back to, and a value only that reactor
/// reads (which connection; the store never looks inside). Answers carry it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Waiter {
    /// The reactor the answer goes to.
    pub reactor: usize,
    /// The reactor's own value.
    pub ticket: u64,
}

/// A request to the store thread.
#[derive(Debug)]
pub enum Command {
    /// Queue a message for an offline user; answer its sender on its reactor.
    Enqueue(Box<Enqueue>),
    /// Keep a chat message that reached a device in its conversation's history.
    Record {
        /// The receiver.
        receiver: Box<str>,
        /// The sender's message id.
        message_id: Box<str>,
        /// The `new_message` JSON.
        payload: Bytes,
        /// Sender and time.
        chat: Chat,
    },
    /// Read `user`'s queue for a device that just authenticated.
    Drain {
        /// The user.
        user: Box<str>,
        /// The device to deliver to.
        device: Waiter,
    },
    /// Read `user`'s queue for the HTTP API (and, with `drain`, remove what was read).
    Peek {
        /// The user.
        user: Box<str>,
        /// The HTTP connection waiting for it.
        requester: Waiter,
        /// Remove what is returned.
        drain: bool,
    },
    /// Delete messages written to a device.
    Remove {
        /// The user.
        user: Box<str>,
        /// The messages.
        keys: Vec<QueueKey>,
    },
    /// Queue a fanned-out message (a broadcast, a group post) for the users with no
    /// device online one home found, and tell the waiting reactor how many were kept.
    EnqueueFanOut(Box<FanOutBatch>),
    /// Read a page of the conversation between `user` and `peer`, newest first.
    History {
        /// The asking user.
        user: Box<str>,
        /// The other side of the conversation.
        peer: Box<str>,
        /// Only messages with a timestamp before this (Unix ms).
        before: Option<u64>,
        /// At most this many (1 to [`crate::protocol::inbound::HISTORY_LIMIT_MAX`]).
        limit: usize,
        /// The connection waiting for it.
        requester: Waiter,
    },
    /// Find who sent `reader` the message `message_id` (delivered or queued to it).
    FindSender {
        /// The user that read it.
        reader: Box<str>,
        /// The message id.
        message_id: Box<str>,
        /// The connection that sent the `read_receipt`.
        requester: Waiter,
    },
    /// Change a message in history (edit, delete, reaction) and answer who may see it.
    Amend(Box<Amend>),
    /// A user joined (`true`) or left a group; answered with [`Reply::Membership`].
    Membership {
        /// The group.
        group: Box<str>,
        /// The user.
        user: Box<str>,
        /// Joined, or left.
        joined: bool,
        /// The device that asked.
        device: Waiter,
        /// The group's home reactor, which announces the change once it is committed.
        home: usize,
    },
    /// Commit what came before, then stop (sent by the engine once its reactors are done).
    Shutdown,
}

/// A change to a message in history, asked for by one side of its conversation.
#[derive(Debug, Clone)]
pub struct Amend {
    /// Who changes it (an edit or delete must come from the message's sender).
    pub actor: Box<str>,
    /// The other side of the conversation.
    pub peer: Box<str>,
    /// The message.
    pub message_id: Box<str>,
    /// The change.
    pub change: Amendment,
    /// The connection that asked.
    pub requester: Waiter,
}

/// A change to a message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Amendment {
    /// New text.
    Edit(Box<str>),
    /// Deleted.
    Delete,
    /// A reaction added by the actor.
    ReactionAdd(Box<str>),
    /// A reaction removed by the actor.
    ReactionRemove(Box<str>),
}

impl Amendment {
    /// The borrowed form, as the protocol encodes it.
    pub fn as_change(&self) -> crate::protocol::inbound::Change<'_> {
        use crate::protocol::inbound::Change;
        match self {
            Amendment::Edit(content) => Change::Edit(content),
            Amendment::Delete => Change::Delete,
            Amendment::ReactionAdd(emoji) => Change::ReactionAdd(emoji),
            Amendment::ReactionRemove(emoji) => Change::ReactionRemove(emoji),
        }
    }

    /// The owned form of a parsed change.
    pub fn from_change(change: &crate::protocol::inbound::Change<'_>) -> Amendment {
        use crate::protocol::inbound::Change;
        match *change {
            Change::Edit(content) => Amendment::Edit(content.into()),
            Change::Delete => Amendment::Delete,
            Change::ReactionAdd(emoji) => Amendment::ReactionAdd(emoji.into()),
            Change::ReactionRemove(emoji) => Amendment::ReactionRemove(emoji.into()),
        }
    }
}

/// Queue `payload` (a message's JSON) for `user`; answer `sender` on its reactor.
#[derive(Debug)]
pub struct Enqueue {
    /// The offline receiver.
    pub user: Box<str>,
    /// Its lane.
    pub priority: Priority,
    /// The JSON, as it will be delivered.
    pub payload: Bytes,
    /// What it is (`new_message`, `read_receipt`, …), kept with it.
    pub kind: OutKind,
    /// The sending connection (WebSocket or HTTP API), told the outcome; `None` for
    /// what nobody waits on (delivery and read receipts).
    pub sender: Option<Waiter>,
    /// The sender's message id.
    pub message_id: Box<str>,
    /// Send the sender a `delivery_receipt` when this is delivered.
    pub receipt: bool,
    /// The home that sent it and its ticket: told when the message is not kept, so
    /// that a retry is tried again rather than acknowledged `queued`.
    pub dedup: Option<(usize, Ticket)>,
    /// Set for chat messages: kept in history too, and not queued twice.
    pub chat: Option<Chat>,
}

/// The part of a fanned-out message one home could not deliver: queue it for these users.
#[derive(Debug)]
pub struct FanOutBatch {
    /// The users with no device online, each with its `new_message` JSON.
    pub messages: Vec<(Box<str>, Bytes)>,
    /// The message's lane.
    pub priority: Priority,
    /// What was fanned out; says what the answer goes on to.
    pub purpose: FanOut,
    /// The reactor waiting for the counts (the broadcast's requester, the group's home).
    pub reply_to: usize,
    /// The pending broadcast or group post there.
    pub request: u32,
    /// Users this home reached on a device (passed through to the answer).
    pub delivered: u32,
}

/// What a [`FanOutBatch`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOut {
    /// An HTTP API broadcast.
    Broadcast,
    /// A group post.
    GroupPost,
}

/// Whether a message was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or already held: a retry).
    Queued,
    /// The user's queue is at `--queue-max-per-user`.
    QueueFull,
    /// The commit failed (disk full, I/O error): nothing was stored.
    Failed(Failure),
}

impl Reply {
    /// Whether the answer is for the reactor's [`crate::shard::Shard`] rather than for
    /// its driver (which writes queues to devices and answers HTTP API requests).
    pub fn is_for_shard(&self) -> bool {
        match self {
            Reply::NotKept { .. }
            | Reply::Membership { .. }
            | Reply::History { .. }
            | Reply::Amended { .. }
            | Reply::SenderFound { .. } => true,
            Reply::FanOutQueued { purpose, .. } => *purpose == FanOut::GroupPost,
            Reply::Enqueued { .. } | Reply::Pending { .. } | Reply::Peeked { .. } => false,
        }
    }
}

/// An answer from the store to a reactor.
#[derive(Debug)]
pub enum Reply {
    /// The outcome of an `Enqueue`.
    Enqueued {
        /// The sending connection.
        sender: Waiter,
        /// Its message id.
        message_id: Box<str>,
        /// What happened.
        outcome: Outcome,
    },
    /// A user's queued messages, in delivery order, for one device.
    Pending {
        /// The device.
        device: Waiter,
        /// The user.
        user: Box<str>,
        /// The messages, in order.
        messages: Vec<Queued>,
        /// More remain queued after these.
        more: bool,
    },
    /// To a home: a message it sent was not kept (full queue, failed commit).
    NotKept {
        /// The ticket the home gave it.
        ticket: Ticket,
    },
    /// A user's queue for the HTTP API.
    Peeked {
        /// The HTTP connection.
        requester: Waiter,
        /// The user.
        user: Box<str>,
        /// `new_message` JSON of each queued message, in delivery order.
        messages: Vec<Bytes>,
        /// More remain queued after these.
        more: bool,
        /// Set when the store could not read (or drain) the queue.
        error: Option<Failure>,
    },
    /// To the reactor waiting on a fan-out: one home's counts, after the commit.
    FanOutQueued {
        /// What was fanned out.
        purpose: FanOut,
        /// The pending broadcast or group post there.
        request: u32,
        /// Users reached on a device.
        delivered: u32,
        /// Users whose queue now holds it.
        queued: u32,
        /// Users it could not be queued for (full queue, failed commit).
        not_kept: u32,
        /// The commit failed (nothing of this batch is stored).
        failed: bool,
    },
    /// A page of history, newest first.
    History {
        /// The connection that asked.
        requester: Waiter,
        /// The other side of the conversation.
        peer: Box<str>,
        /// `new_message` JSON of each message.
        messages: Vec<Bytes>,
        /// Set when the store could not read it.
        error: Option<Failure>,
    },
    /// The outcome of an `Amend`.
    Amended {
        /// What was asked.
        amend: Box<Amend>,
        /// Whether the message was found (and changed).
        found: bool,
        /// Set when the store could not look.
        error: Option<Failure>,
    },
    /// Who sent the message a `read_receipt` named.
    SenderFound {
        /// The connection that sent the `read_receipt`.
        requester: Waiter,
        /// The user that read it.
        reader: Box<str>,
        /// The message id.
        message_id: Box<str>,
        /// The sender; `None` when no such message reached the reader.
        sender: Option<Box<str>>,
        /// Set when the store could not look.
        error: Option<Failure>,
    },
    /// A membership change is committed (or could not be).
    Membership {
        /// The group.
        group: Box<str>,
        /// The user.
        user: Box<str>,
        /// Joined, or left.
        joined: bool,
        /// The device that asked.
        device: Waiter,
        /// Whether it is on disk.
        committed: bool,
    },
}

/// One queued message as read back.
#[derive(Debug)]
pub struct Queued {
    /// Where it sits (for removal).
    pub key: QueueKey,
    /// The JSON as it is delivered.
    pub payload: Bytes,
    /// Its lane.
    pub priority: Priority,
    /// Whether its sender wants a `delivery_receipt`.
    pub receipt: bool,
    /// What it is.
    pub kind: OutKind,
}

/// The reactors' side: send commands; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    commands: mpsc::Sender<Command>,
    /// Counters.
    pub stats: Arc<StoreStats>,
}

impl Store {
    /// Hands a command to the store thread. Never blocks; fails only if the thread is
    /// gone, which the caller reports as a persistence failure.
    pub fn send(&self, command: Command) -> Result<(), Command> {
        self.commands.send(command).map_err(|e| e.0)
    }
}

/// Where the store thread delivers answers: one channel and doorbell per reactor.
pub struct ReplyRoutes {
    /// Per reactor, the sending side of its reply channel.
    pub senders: Vec<mpsc::Sender<Reply>>,
    /// The reactors' doorbells (shared with them).
    pub doorbells: Arc<dyn DoorbellSet + Send + Sync>,
}

/// Something that can wake reactor `index`.
pub trait DoorbellSet {
    /// Wakes reactor `index`.
    fn ring(&self, index: usize);
}

/// What the store keeps and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages one user's offline queue holds at most.
    pub queue_max_per_user: u64,
    /// How long queued messages and history are kept.
    pub retention: Duration,
    /// Bytes of redb's page cache (its default, 1 GiB, would grow the gateway's RSS with
    /// the history it reads and writes).
    pub cache_bytes: usize,
}

/// Group memberships as the store holds them: `(group, user)` pairs.
pub type Memberships = Vec<(Box<str>, Box<str>)>;

/// Opens (or creates) the store in `dir` and starts its thread, which hands each message
/// it queues to `push` (the push hook the engine started, if any); returns the group
/// memberships it holds, for the groups' home reactors.
pub fn open(
    dir: &Path,
    limits: Limits,
    routes: ReplyRoutes,
    push: Option<crate::push::Push>,
) -> io::Result<(Store, JoinHandle<()>, Memberships)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("engine.redb");
    let db = open_file(&path, limits.cache_bytes).map_err(io::Error::other)?;
    let state = state::State::load(&db).map_err(io::Error::other)?;
    let memberships = state::memberships(&db).map_err(io::Error::other)?;
    info!(
        path = %path.display(),
        queued = state.queued(),
        users = state.users_with_queue(),
        memberships = memberships.len(),
        "store open"
    );
    let stats = Arc::new(StoreStats {
        push: push
            .as_ref()
            .map(crate::push::Push::stats)
            .unwrap_or_default(),
        ..StoreStats::default()
    });
    let (commands, inbox) = mpsc::channel();
    let parts = worker::Parts {
        db,
        path,
        state,
        limits,
        routes,
        stats: stats.clone(),
        push,
    };
    let worker = worker::Worker::new(parts);
    let thread = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || worker.run(inbox))?;
    Ok((Store { commands, stats }, thread, memberships))
}

/// Opens (or creates) the database file with a page cache of `cache_bytes`.
fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
}
