//! The durable store: offline queues in an embedded redb file under `--data-dir`, on one
//! dedicated thread with group commit. Reactors talk to it by message and never wait on
//! disk: commands go in over a channel, answers come back over each reactor's own channel
//! with a ring of its doorbell.
//!
//! Group commit: the thread takes every command waiting (up to [`BATCH_MAX`]), applies them
//! all in one write transaction, commits once (fsync), and only then answers. So a
//! `queued` ack always follows the commit that holds the message.
//!
//! Queue keys are `(user, priority, sequence)`: a user's messages read in key order come
//! high priority first and in send order within a priority.

use std::{
    collections::HashMap,
    io,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::{error, info};

use crate::{
    protocol::Priority,
    router::{dedup::PairKey, ConnAddr},
    stats::LatencyHistogram,
};

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

/// `(user, priority, sequence) → new_message JSON`.
const QUEUE: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("queue");

/// Where one queued message sits.
pub type QueueKey = (u8, u64);

/// What the store counts, read by `/api/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Messages committed to an offline queue.
    pub persisted: AtomicU64,
    /// Messages a commit failed to hold (their senders were told).
    pub failures: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Queued messages removed unread after the retention period.
    pub expired: AtomicU64,
    /// Time one group commit takes: begin, apply the batch, commit (fsync).
    pub commit_latency: LatencyHistogram,
}

/// A request to the store thread.
#[derive(Debug)]
pub enum Command {
    /// Queue `payload` (a `new_message` JSON) for `user`; answer `sender` on its reactor.
    Enqueue {
        /// The offline receiver.
        user: Box<str>,
        /// Its lane.
        priority: Priority,
        /// The `new_message` JSON, as it will be delivered.
        payload: Bytes,
        /// The sending connection (WebSocket or HTTP API), told the outcome; `None` for
        /// what nobody waits on (delivery receipts).
        sender: Option<ConnAddr>,
        /// The sender's message id.
        message_id: Box<str>,
        /// Send the sender a `delivery_receipt` when this is delivered.
        receipt: bool,
        /// The home that sent it and its dedup key: told when the message is not kept,
        /// so that a retry is tried again rather than acknowledged `queued`.
        dedup: Option<(usize, PairKey)>,
    },
    /// Read `user`'s queue for a device that just authenticated.
    Drain {
        /// The user.
        user: Box<str>,
        /// The device to deliver to.
        device: ConnAddr,
    },
    /// Read `user`'s queue for the HTTP API (and, with `drain`, remove what was read).
    Peek {
        /// The user.
        user: Box<str>,
        /// The HTTP connection waiting for it.
        requester: ConnAddr,
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
    /// Commit what came before, then stop (sent by the engine once its reactors are done).
    Shutdown,
}

/// Whether a message was queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed.
    Queued,
    /// The user's queue is at `--queue-max-per-user`.
    QueueFull,
    /// The commit failed (disk full, I/O error): nothing was stored.
    Failed(String),
}

/// An answer from the store to a reactor.
#[derive(Debug)]
pub enum Reply {
    /// The outcome of an `Enqueue`.
    Enqueued {
        /// The sending connection.
        sender: ConnAddr,
        /// Its message id.
        message_id: Box<str>,
        /// What happened.
        outcome: Outcome,
    },
    /// A user's queued messages, in delivery order, for one device.
    Pending {
        /// The device.
        device: ConnAddr,
        /// The user.
        user: Box<str>,
        /// The messages, in order.
        messages: Vec<Queued>,
        /// More remain queued after these.
        more: bool,
    },
    /// To a home: a message it sent was not kept (full queue, failed commit).
    NotKept {
        /// Its dedup key.
        key: PairKey,
    },
    /// A user's queue for the HTTP API.
    Peeked {
        /// The HTTP connection.
        requester: ConnAddr,
        /// The user.
        user: Box<str>,
        /// `new_message` JSON of each queued message, in delivery order.
        messages: Vec<Bytes>,
        /// More remain queued after these.
        more: bool,
        /// Set when the store could not read (or drain) the queue.
        error: Option<String>,
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
}

/// A stored value is `[flags][enqueued at, Unix ms, u64 LE][new_message JSON]`.
const VALUE_HEADER_BYTES: usize = 9;
/// Flags bit 0: the sender wants a delivery receipt.
const RECEIPT_FLAG: u8 = 1;
/// How often expired messages are swept at most (less often when retention is long).
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(3600);

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

/// Opens (or creates) the store in `dir` and starts its thread. Queued messages older than
/// `retention` are swept away in the background.
pub fn open(
    dir: &Path,
    queue_max_per_user: u64,
    retention: Duration,
    routes: ReplyRoutes,
) -> io::Result<(Store, JoinHandle<()>)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("engine.redb");
    let db = Database::create(&path).map_err(io::Error::other)?;
    let (counts, next_sequence) = scan(&db).map_err(io::Error::other)?;
    info!(
        path = %path.display(),
        queued = counts.values().sum::<u64>(),
        users = counts.len(),
        "store open"
    );
    let stats = Arc::new(StoreStats::default());
    let (commands, inbox) = mpsc::channel();
    let worker = Worker {
        db: Some(db),
        path,
        counts,
        next_sequence,
        queue_max_per_user,
        retention,
        last_sweep: Instant::now(),
        routes,
        stats: stats.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("store".into())
        .spawn(move || worker.run(inbox))?;
    Ok((Store { commands, stats }, thread))
}

/// Per-user queue lengths and the next sequence number, from the file.
fn scan(db: &Database) -> Result<(HashMap<Box<str>, u64>, u64), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(QUEUE)?; // create it on first start
    txn.commit()?;
    let read = db.begin_read()?;
    let table = read.open_table(QUEUE)?;
    let mut counts: HashMap<Box<str>, u64> = HashMap::new();
    let mut next = 1;
    for entry in table.iter()? {
        let (key, _) = entry?;
        let (user, _, sequence) = key.value();
        *counts.entry(user.into()).or_default() += 1;
        next = next.max(sequence + 1);
    }
    Ok((counts, next))
}

/// The first of `user`'s queued messages in delivery order, up to `max_messages` or
/// `max_bytes` (at least one); the flag says whether more remain.
fn read_queue(
    table: &redb::Table<(&str, u8, u64), &[u8]>,
    user: &str,
    max_messages: usize,
    max_bytes: usize,
) -> Result<(Vec<Queued>, bool), redb::Error> {
    let mut messages = Vec::new();
    let mut bytes = 0;
    for entry in table.range((user, 0u8, 0u64)..=(user, u8::MAX, u64::MAX))? {
        if messages.len() >= max_messages || (bytes >= max_bytes && !messages.is_empty()) {
            return Ok((messages, true));
        }
        let (key, value) = entry?;
        let (_, priority, sequence) = key.value();
        let value = value.value();
        let flags = value.first().copied().unwrap_or(0);
        let payload = value.get(VALUE_HEADER_BYTES..).unwrap_or_default();
        messages.push(Queued {
            key: (priority, sequence),
            payload: Bytes::copy_from_slice(payload),
            priority: match priority {
                0 => Priority::High,
                1 => Priority::Normal,
                _ => Priority::Low,
            },
            receipt: flags & RECEIPT_FLAG != 0,
        });
        bytes += payload.len();
    }
    Ok((messages, false))
}

/// Deletes `keys` of `user`'s queue and keeps the per-user count right.
fn remove_keys(
    table: &mut redb::Table<(&str, u8, u64), &[u8]>,
    counts: &mut HashMap<Box<str>, u64>,
    user: &str,
    keys: impl Iterator<Item = QueueKey>,
) -> Result<(), redb::Error> {
    let mut removed = 0;
    for (priority, sequence) in keys {
        if table.remove((user, priority, sequence))?.is_some() {
            removed += 1;
        }
    }
    if let Some(count) = counts.get_mut(user) {
        *count = count.saturating_sub(removed);
        if *count == 0 {
            counts.remove(user);
        }
    }
    Ok(())
}

/// The answers to one `Enqueue`: its sender hears the outcome, and a home whose message
/// was not kept forgets it from its dedup window (so a retry is tried again).
fn enqueue_outcome(
    replies: &mut Vec<(usize, Reply)>,
    sender: Option<ConnAddr>,
    message_id: &str,
    dedup: Option<(usize, PairKey)>,
    outcome: Outcome,
) {
    if outcome != Outcome::Queued {
        if let Some((home, key)) = dedup {
            replies.push((home, Reply::NotKept { key }));
        }
    }
    if let Some(sender) = sender {
        let reply = Reply::Enqueued {
            sender,
            message_id: message_id.into(),
            outcome,
        };
        replies.push((sender.reactor as usize, reply));
    }
}

struct Worker {
    /// `None` after a failed transaction until the file could be opened again.
    db: Option<Database>,
    /// The database file, for reopening.
    path: std::path::PathBuf,
    counts: HashMap<Box<str>, u64>,
    next_sequence: u64,
    queue_max_per_user: u64,
    /// How long a queued message is kept.
    retention: Duration,
    /// When expired messages were last swept.
    last_sweep: Instant,
    routes: ReplyRoutes,
    stats: Arc<StoreStats>,
}

impl Worker {
    fn run(mut self, inbox: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        // Ends on `Shutdown`, or when every `Store` handle is gone.
        let sweep_every = (self.retention / 10).min(SWEEP_INTERVAL_MAX);
        loop {
            if self.last_sweep.elapsed() >= sweep_every {
                self.sweep();
            }
            let first = match inbox.recv_timeout(sweep_every) {
                Ok(command) => command,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut stopping = matches!(first, Command::Shutdown);
            if !stopping {
                batch.push(first);
            }
            while !stopping && batch.len() < BATCH_MAX {
                match inbox.try_recv() {
                    Ok(Command::Shutdown) => stopping = true,
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let replies = self.apply(&mut batch);
                self.answer(replies);
            }
            if stopping {
                break;
            }
        }
        info!("store closed");
    }

    /// Applies a batch in one transaction; returns each reactor's answers.
    fn apply(&mut self, batch: &mut Vec<Command>) -> Vec<(usize, Reply)> {
        let counts_before = self.counts.clone();
        let sequence_before = self.next_sequence;
        let mut replies = Vec::new();
        if self.db.is_none() {
            self.reopen();
        }
        let result = match self.db.take() {
            Some(db) => {
                let result = self.transact(&db, batch, &mut replies);
                if result.is_ok() {
                    self.db = Some(db);
                } else {
                    // redb refuses all work after an I/O error until the file is reopened.
                    drop(db);
                    self.reopen();
                }
                result.map_err(|e| e.to_string())
            }
            None => Err("the store file could not be reopened after an earlier error".to_owned()),
        };
        if let Err(why) = result {
            error!("store commit failed: {why}");
            // Nothing of the batch is stored: undo the bookkeeping and tell every waiter.
            self.counts = counts_before;
            self.next_sequence = sequence_before;
            replies = self.failure_replies(batch, &why);
        }
        batch.clear();
        replies
    }

    /// The answers to a batch whose transaction failed: senders hear `persistence_failed`,
    /// queue readers an error; a device asking for its queue hears nothing (the queue is
    /// still there for its next authentication).
    fn failure_replies(&self, batch: &[Command], why: &str) -> Vec<(usize, Reply)> {
        let mut replies = Vec::new();
        for command in batch {
            match command {
                Command::Enqueue {
                    sender,
                    message_id,
                    dedup,
                    ..
                } => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let outcome = Outcome::Failed(why.to_owned());
                    enqueue_outcome(&mut replies, *sender, message_id, *dedup, outcome);
                }
                Command::Peek {
                    user, requester, ..
                } => {
                    let reply = Reply::Peeked {
                        requester: *requester,
                        user: user.clone(),
                        messages: Vec::new(),
                        more: false,
                        error: Some(why.to_owned()),
                    };
                    replies.push((requester.reactor as usize, reply));
                }
                Command::Drain { .. } | Command::Remove { .. } | Command::Shutdown => {}
            }
        }
        replies
    }

    /// Removes queued messages older than the retention period, in one transaction.
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        let Some(db) = self.db.as_ref() else {
            return;
        };
        let cutoff = crate::protocol::now_ms()
            .saturating_sub(self.retention.as_millis().min(u128::from(u64::MAX)) as u64);
        let result = (|| -> Result<Vec<(Box<str>, u8, u64)>, redb::Error> {
            let txn = db.begin_write()?;
            let mut expired = Vec::new();
            {
                let mut table = txn.open_table(QUEUE)?;
                for entry in table.iter()? {
                    let (key, value) = entry?;
                    let header = value.value().get(1..VALUE_HEADER_BYTES);
                    let at =
                        header.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
                    if at < cutoff {
                        let (user, priority, sequence) = key.value();
                        expired.push((Box::from(user), priority, sequence));
                    }
                }
                for (user, priority, sequence) in &expired {
                    table.remove((&**user, *priority, *sequence))?;
                }
            }
            txn.commit()?;
            Ok(expired)
        })();
        match result {
            Ok(expired) if !expired.is_empty() => {
                for (user, _, _) in &expired {
                    if let Some(count) = self.counts.get_mut(user) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            self.counts.remove(user);
                        }
                    }
                }
                self.stats
                    .expired
                    .fetch_add(expired.len() as u64, Ordering::Relaxed);
                info!(
                    expired = expired.len(),
                    "store: expired queued messages removed"
                );
            }
            Ok(_) => {}
            Err(e) => error!("store: retention sweep failed: {e}"),
        }
    }

    /// Opens the file again after a failed transaction (the next batch retries if this
    /// fails too). What was committed before is intact; the in-memory counts match it.
    fn reopen(&mut self) {
        match Database::create(&self.path) {
            Ok(db) => {
                info!("store reopened after an error");
                self.db = Some(db);
            }
            Err(e) => error!("store reopen failed: {e}"),
        }
    }

    fn transact(
        &mut self,
        db: &Database,
        batch: &[Command],
        replies: &mut Vec<(usize, Reply)>,
    ) -> Result<(), redb::Error> {
        let started = std::time::Instant::now();
        let txn = db.begin_write()?;
        let mut persisted = 0;
        {
            let mut table = txn.open_table(QUEUE)?;
            // By reference: on an error the whole batch is still here to be answered.
            for command in batch.iter() {
                match command {
                    Command::Enqueue {
                        user,
                        priority,
                        payload,
                        sender,
                        message_id,
                        receipt,
                        dedup,
                    } => {
                        let count = self.counts.entry(user.clone()).or_default();
                        let (priority, receipt) = (*priority, *receipt);
                        let outcome = if *count >= self.queue_max_per_user {
                            Outcome::QueueFull
                        } else {
                            let sequence = self.next_sequence;
                            self.next_sequence += 1;
                            let mut value = Vec::with_capacity(VALUE_HEADER_BYTES + payload.len());
                            value.push(if receipt { RECEIPT_FLAG } else { 0 });
                            value.extend_from_slice(&crate::protocol::now_ms().to_le_bytes());
                            value.extend_from_slice(payload);
                            table.insert((&**user, priority as u8, sequence), &value[..])?;
                            *count += 1;
                            persisted += 1;
                            Outcome::Queued
                        };
                        enqueue_outcome(replies, *sender, message_id, *dedup, outcome);
                    }
                    Command::Drain { user, device } => {
                        let (messages, more) =
                            read_queue(&table, user, DRAIN_MESSAGES_MAX, DRAIN_BYTES_MAX)?;
                        let reply = Reply::Pending {
                            device: *device,
                            user: user.clone(),
                            messages,
                            more,
                        };
                        replies.push((device.reactor as usize, reply));
                    }
                    Command::Peek {
                        user,
                        requester,
                        drain,
                    } => {
                        let (queued, more) =
                            read_queue(&table, user, PEEK_MESSAGES_MAX, PEEK_BYTES_MAX)?;
                        if *drain {
                            let keys = queued.iter().map(|m| m.key);
                            remove_keys(&mut table, &mut self.counts, user, keys)?;
                        }
                        let messages = queued.into_iter().map(|m| m.payload).collect();
                        let reply = Reply::Peeked {
                            requester: *requester,
                            user: user.clone(),
                            messages,
                            more,
                            error: None,
                        };
                        replies.push((requester.reactor as usize, reply));
                    }
                    Command::Shutdown => {}
                    Command::Remove { user, keys } => {
                        remove_keys(&mut table, &mut self.counts, user, keys.iter().copied())?;
                    }
                }
            }
        }
        txn.commit()?;
        let took_us = started.elapsed().as_micros() as u64;
        self.stats.commit_latency.observe_us(took_us);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.persisted.fetch_add(persisted, Ordering::Relaxed);
        Ok(())
    }

    fn answer(&self, replies: Vec<(usize, Reply)>) {
        let mut rung = vec![false; self.routes.senders.len()];
        for (reactor, reply) in replies {
            // A reactor that is gone is shutting down; its connections are closing.
            if self.routes.senders[reactor].send(reply).is_ok() {
                rung[reactor] = true;
            }
        }
        for (reactor, ring) in rung.into_iter().enumerate() {
            if ring {
                self.routes.doorbells.ring(reactor);
            }
        }
    }
}
