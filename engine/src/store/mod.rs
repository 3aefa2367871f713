//! The durable store: per-user inboxes, conversation history and the index that finds a
//! message by id, in an embedded redb file under `--data-dir` with a journal beside it,
//! on one dedicated thread with group commit and a checkpoint thread. Reactors talk to it
//! by message and never wait on disk: commands go in over a channel, answers come back
//! over each reactor's own channel with a ring of its doorbell.
//!
//! Group commit: the thread takes every command waiting (up to [`BATCH_MAX`], at most one
//! commit per `--store-commit-spacing-us`), applies them together, appends their changes
//! to the journal as one record and syncs it (one write, one `fdatasync`), and only then
//! answers. So every ack (`sent` or `queued`) follows the commit that holds the message.
//! The changes are kept in memtables that reads merge over the file, and the file catches
//! up in checkpoints on their own thread: no ack waits for redb's B-tree pages.
//!
//! - `commands`: what reactors ask and what the store answers.
//! - `schema`: the file's tables.
//! - `inbox`: per-user inboxes, `(user, seq)` keys, and their heads.
//! - `history`: every chat message per conversation, and `(receiver, messageId, sender)`
//!   → where it sits, which serves `read_receipt` by id and dedup across restarts.
//! - `journal`: the commit point, its two files and its replay at open; `checkpoint`: the
//!   thread that writes a frozen memtable into the file.
//! - `memtable`: what the journal holds and the file not yet; `logged`: one table as a
//!   batch reads and writes it, through the memtables to the file, every change recorded
//!   for the journal; `view`: every table of one batch.
//! - `worker`: the thread, its batches, freezes and the retention sweep; `apply`: one
//!   batch's commands; `answers`: the replies, committed or failed; `state`: what the
//!   thread keeps in memory about the file; `failure`: why it failed, typed.

pub(crate) mod answers;
mod apply;
mod checkpoint;
mod commands;
mod failure;
pub(crate) mod history;
mod inbox;
mod journal;
mod logged;
mod memtable;
mod recent;
mod schema;
mod state;
mod view;
mod worker;

use std::{
    io,
    path::Path,
    sync::{atomic::AtomicU64, mpsc, Arc},
    thread::JoinHandle,
    time::Duration,
};

use redb::Database;
use tracing::info;

use crate::stats::LatencyHistogram;

pub use commands::{
    AckTo, Amend, Amendment, Append, Chat, Command, Confirm, Event, FanOut, Greeting, Outcome,
    ReadFrom, ReceiptsDue, Reply, SenderCopy, SettingsChange, Share, ShareRow,
};
pub use failure::Failure;
pub use inbox::{InboxEvent, UnackedCursor};
pub use recent::RecentPair;

/// The database file's name in the data directory (its journal sits beside it).
const FILE_NAME: &str = "engine.redb";
/// Commands applied in one transaction at most.
pub const BATCH_MAX: usize = 4096;
/// One inbox page carries at most this many events or bytes (at least one event): the
/// device's reactor asks for the next page once the kernel has taken this one, so a long
/// inbox never piles up in a connection's outbound queue.
pub const INBOX_PAGE_EVENTS_MAX: usize = 256;
/// See [`INBOX_PAGE_EVENTS_MAX`].
pub const INBOX_PAGE_BYTES_MAX: usize = 256 * 1024;
/// A `history` page holds at most this much JSON (PROTOCOL.md, "Bounds on answers"):
/// with the frame around it, it fits the smallest `--outbound-bytes-max`.
pub const HISTORY_PAGE_BYTES_MAX: usize = 1 << 20;
/// One `Peek` (the HTTP queue endpoint) returns at most this many messages or bytes.
pub const PEEK_MESSAGES_MAX: usize = 1000;
/// See [`PEEK_MESSAGES_MAX`].
pub const PEEK_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What the store counts, read by `/api/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Events committed to an inbox with no device online to take them (queued).
    pub persisted: AtomicU64,
    /// Messages committed to conversation history.
    pub recorded: AtomicU64,
    /// Messages a commit failed to hold (their senders were told), group posts and
    /// broadcasts counted once.
    pub failures: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Checkpoints: durable commits of the file that hold the journal up to a freeze.
    pub checkpoints: AtomicU64,
    /// Checkpoints that failed (a full disk, say): each is tried again a second later,
    /// and the memtables hold what it had meanwhile.
    pub checkpoint_failures: AtomicU64,
    /// Inbox events removed after the retention period.
    pub expired: AtomicU64,
    /// History entries removed after the retention period.
    pub expired_history: AtomicU64,
    /// Time one group commit takes: apply the batch, journal it and sync.
    pub commit_latency: LatencyHistogram,
    /// Time one checkpoint takes on its thread: a frozen memtable written into the file
    /// and synced (the acks do not wait for it).
    pub checkpoint_latency: LatencyHistogram,
    /// The push hook's counts, shared with its thread (zero without `--push-webhook`).
    pub push: Arc<crate::push::HookStats>,
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

/// The reactors' side: send commands; cheap to clone.
#[derive(Clone)]
pub struct Store {
    commands: mpsc::Sender<Command>,
    /// In a cluster, where what every node shares goes instead of the file.
    shared: Option<Arc<dyn SharedStore>>,
    /// Counters.
    pub stats: Arc<StoreStats>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("shared_elsewhere", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// Where a cluster node keeps what every node shares, its users' inboxes, the
/// conversations' history and the groups' members: JetStream, through the cluster thread ([`crate::cluster`]). It takes those
/// commands ([`Command::is_shared`]) and answers them as the store thread would, over each
/// reactor's cluster channel.
pub trait SharedStore: Send + Sync {
    /// Hands over one shared command; never blocks. Fails only if the host is gone.
    fn send(&self, command: Command) -> Result<(), Command>;
}

impl Store {
    /// Hands a command to the store thread (or, in a cluster, a shared one to the shared
    /// store). Never blocks; fails only if the thread is gone, which the caller
    /// reports as a persistence failure.
    pub fn send(&self, command: Command) -> Result<(), Command> {
        let Some(host) = self.shared.as_ref().filter(|_| command.is_shared()) else {
            return self.commands.send(command).map_err(|e| e.0);
        };
        host.send(command)
    }

    /// This store with what every node shares kept by `host` (a cluster node's: in
    /// JetStream).
    pub fn with_shared_store(mut self, host: Arc<dyn SharedStore>) -> Store {
        self.shared = Some(host);
        self
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
    /// Unacknowledged events one user's inbox holds at most (and acknowledged ones kept
    /// for the user's other devices to resume).
    pub queue_max_per_user: u64,
    /// How long queued messages and history are kept.
    pub retention: Duration,
    /// Bytes of redb's page cache (its default, 1 GiB, would grow the gateway's RSS with
    /// the history it reads and writes).
    pub cache_bytes: usize,
    /// The least time between the starts of two commits: what comes meanwhile shares
    /// the next one's `fdatasync` (`--store-commit-spacing-us`).
    pub commit_spacing: Duration,
    /// Added to every commit (zero but under the `slow_commit_ms` failpoint).
    pub commit_delay: Duration,
    /// How many of the first checkpoints fail (zero but under the `failed_checkpoints`
    /// failpoint).
    pub failed_checkpoints: u32,
    /// How far back, and how many at most, the direct messages read at start for the
    /// homes' dedup windows go ([`Opened::recent`]).
    pub recent: (Duration, usize),
}

/// The groups as the store holds them, for the groups' home reactors.
#[derive(Debug, Default)]
pub struct StoredGroups {
    /// Memberships: `(group, user)` pairs.
    pub members: Vec<(Box<str>, Box<str>)>,
    /// Each group's settings other than a v1 group's.
    pub settings: Vec<(Box<str>, crate::protocol::access::Settings)>,
}

/// An open store: its handle and thread, and what the reactors start with.
pub struct Opened {
    /// Where commands go.
    pub store: Store,
    /// The store's thread.
    pub thread: JoinHandle<()>,
    /// The groups it holds, for the groups' home reactors.
    pub groups: StoredGroups,
    /// The direct messages its inboxes received lately, oldest first, for the homes'
    /// dedup windows: a retry after a restart is then not delivered again.
    pub recent: Vec<RecentPair>,
}

/// Opens (or creates) the store in `dir` and starts its thread, which hands each message
/// it queues to `push` (the push hook the engine started, if any).
pub fn open(
    dir: &Path,
    limits: Limits,
    routes: ReplyRoutes,
    push: Option<crate::push::Push>,
) -> io::Result<Opened> {
    std::fs::create_dir_all(dir)?;
    let db = open_file(dir, limits.cache_bytes).map_err(io::Error::other)?;
    let journal = journal::Journal::recover(dir, &db).map_err(io::Error::other)?;
    let state = state::State::load(&db).map_err(io::Error::other)?;
    let groups = state::groups(&db).map_err(io::Error::other)?;
    let (window, recent_max) = limits.recent;
    let since_ms = crate::protocol::now_ms().saturating_sub(window.as_millis() as u64);
    let recent =
        recent::recent_pairs(&db, &state.heads, since_ms, recent_max).map_err(io::Error::other)?;
    info!(
        dir = %dir.display(),
        epoch = &*state.epoch,
        unacknowledged = state.heads.unacked_total(),
        users = state.heads.users_waiting(),
        memberships = groups.members.len(),
        recent = recent.len(),
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
        commands: inbox,
        db,
        journal,
        dir: dir.to_path_buf(),
        state,
        limits,
        routes,
        stats: stats.clone(),
        push,
    };
    let worker = worker::Worker::new(parts)?;
    let thread = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || worker.run())?;
    Ok(Opened {
        store: Store {
            commands,
            shared: None,
            stats,
        },
        thread,
        groups,
        recent,
    })
}

/// The store thread's nice value: on a busy box the reactors (delivery) get the cores
/// first, and the store catches up in bigger group commits (acks wait a little longer).
/// The checkpoint thread runs at the same.
const STORE_NICE: libc::c_int = 5;

/// Gives the calling thread (the store's or the checkpoint's) [`STORE_NICE`]; failing
/// only costs latency.
pub(super) fn lower_own_priority() {
    // SAFETY: setpriority(2) with PRIO_PROCESS and who 0 sets the calling thread's nice
    // value on Linux; no memory is passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, STORE_NICE) } != 0 {
        tracing::debug!(
            "store: nice {STORE_NICE} not set: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Opens (or creates) the database file in `dir` with a page cache of `cache_bytes`.
fn open_file(dir: &Path, cache_bytes: usize) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(dir.join(FILE_NAME))
}
