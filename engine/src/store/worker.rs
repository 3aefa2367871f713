//! The store thread: group commit of every command waiting, answers after the commit, and
//! the retention sweep in small transactions between batches.

use std::{
    path::PathBuf,
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use redb::{Database, WriteTransaction};
use tracing::{error, info};

use super::{
    answers::{enqueue_outcome, fan_out_counts, history_answer, membership_answer, sender_answer},
    apply::{Apply, Tally},
    history::{self, Tables},
    queue::{self, QUEUE},
    state::{State, MEMBERS, META, NEXT_SEQUENCE},
    Command, Enqueue, Failure, Limits, Outcome, Reply, ReplyRoutes, StoreStats, BATCH_MAX,
};
use crate::protocol::now_ms;

/// How often expired messages are swept at most (less often when retention is long).
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// The store thread's nice value while it commits history only (see [`Background`]).
const BACKGROUND_NICE: libc::c_int = 10;
/// How long history records of delivered messages may wait to share a commit.
const RECORD_DELAY: Duration = Duration::from_millis(200);
/// Entries one sweep transaction looks at, so a sweep of a large file never holds the
/// thread (and every sender waiting for a commit) for long.
const SWEEP_VISIT_MAX: usize = 20_000;

/// Where a retention sweep has got to.
enum Sweep {
    /// Going through queues, from this key on.
    Queue(Option<queue::Cursor>),
    /// Going through the message index, from this key on.
    History(Option<history::Cursor>),
}

/// The store thread's state.
pub(super) struct Worker {
    /// `None` after a failed transaction until the file could be opened again.
    db: Option<Database>,
    /// The database file, for reopening.
    path: PathBuf,
    state: State,
    limits: Limits,
    /// When the last sweep started.
    last_sweep: Instant,
    /// The sweep under way: its position and the time before which messages expire.
    sweep: Option<(Sweep, u64)>,
    routes: ReplyRoutes,
    stats: Arc<StoreStats>,
    push: Option<crate::push::Push>,
}

/// What a worker is made of.
pub(super) struct Parts {
    /// The open file.
    pub db: Database,
    /// Its path, for reopening.
    pub path: PathBuf,
    /// What was read from it at start.
    pub state: State,
    /// Bounds.
    pub limits: Limits,
    /// Where answers go.
    pub routes: ReplyRoutes,
    /// Counters.
    pub stats: Arc<StoreStats>,
    /// The push hook, if configured.
    pub push: Option<crate::push::Push>,
}

impl Worker {
    pub(super) fn new(parts: Parts) -> Worker {
        Worker {
            db: Some(parts.db),
            path: parts.path,
            state: parts.state,
            limits: parts.limits,
            last_sweep: Instant::now(),
            sweep: None,
            routes: parts.routes,
            stats: parts.stats,
            push: parts.push,
        }
    }

    /// Runs until `Shutdown`, or until every `Store` handle is gone.
    ///
    /// A batch of nothing but history records (messages already delivered: nobody waits
    /// on them) is held back up to [`RECORD_DELAY`] to share a commit with what comes
    /// next, so online traffic costs a few large commits a second rather than one small
    /// commit (and fsync) per turn. Anything else commits at once, records included.
    pub(super) fn run(mut self, inbox: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let mut held_since: Option<Instant> = None;
        let sweep_every = (self.limits.retention / 10).min(SWEEP_INTERVAL_MAX);
        loop {
            if self.sweep.is_none() && self.last_sweep.elapsed() >= sweep_every {
                self.start_sweep();
            }
            // While a sweep is under way, commands go first and a sweep step follows.
            let wait = match held_since {
                _ if self.sweep.is_some() => Duration::ZERO,
                Some(since) => RECORD_DELAY.saturating_sub(since.elapsed()),
                None => sweep_every,
            };
            let mut stopping = false;
            match inbox.recv_timeout(wait) {
                Ok(Command::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    stopping = true
                }
                Ok(command) => batch.push(command),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            while !stopping && batch.len() < BATCH_MAX {
                match inbox.try_recv() {
                    Ok(Command::Shutdown) => stopping = true,
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let only_records = batch.iter().all(|c| matches!(c, Command::Record { .. }));
            let due = stopping
                || !only_records
                || batch.len() >= BATCH_MAX
                || held_since.is_some_and(|since| since.elapsed() >= RECORD_DELAY);
            if !batch.is_empty() {
                if due {
                    // History nobody waits on yields the core to routing; acks do not.
                    let _background = only_records.then(Background::enter);
                    let replies = self.apply(&mut batch);
                    self.answer(replies);
                    held_since = None;
                } else {
                    held_since.get_or_insert_with(Instant::now);
                }
            }
            if stopping {
                break;
            }
            if self.sweep.is_some() {
                self.sweep_step();
            }
        }
        info!("store closed");
    }

    /// Applies a batch in one transaction; returns each reactor's answers.
    fn apply(&mut self, batch: &mut Vec<Command>) -> Vec<(usize, Reply)> {
        let sequence_before = self.state.next_sequence;
        self.state.counts.begin();
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
                result.map_err(Failure::from)
            }
            None => Err(Failure::Closed),
        };
        if let Err(why) = result {
            error!("store commit failed: {why}");
            // Nothing of the batch is stored: undo the bookkeeping and tell every waiter.
            self.state.counts.roll_back();
            self.state.next_sequence = sequence_before;
            replies = self.failure_replies(batch, why);
        }
        batch.clear();
        replies
    }

    /// Applies `batch` in one write transaction and commits it.
    fn transact(
        &mut self,
        db: &Database,
        batch: &[Command],
        replies: &mut Vec<(usize, Reply)>,
    ) -> Result<(), redb::Error> {
        let started = Instant::now();
        let sequence_before = self.state.next_sequence;
        let txn = db.begin_write()?;
        let tally = self.apply_commands(&txn, batch, replies)?;
        if self.state.next_sequence != sequence_before {
            txn.open_table(META)?
                .insert(NEXT_SEQUENCE, self.state.next_sequence)?;
        }
        txn.commit()?;
        if let Some(push) = &self.push {
            for (user, payload) in tally.queued {
                push.notify(&user, payload);
            }
        }
        let took_us = started.elapsed().as_micros() as u64;
        self.stats.commit_latency.observe_us(took_us);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .persisted
            .fetch_add(tally.persisted, Ordering::Relaxed);
        self.stats
            .recorded
            .fetch_add(tally.recorded, Ordering::Relaxed);
        Ok(())
    }

    /// Applies every command of `batch` in `txn`, collecting the answers.
    fn apply_commands(
        &mut self,
        txn: &WriteTransaction,
        batch: &[Command],
        replies: &mut Vec<(usize, Reply)>,
    ) -> Result<Tally, redb::Error> {
        let mut apply = Apply {
            queues: txn.open_table(QUEUE)?,
            tables: Tables {
                history: txn.open_table(history::HISTORY)?,
                received: txn.open_table(history::RECEIVED)?,
            },
            members: txn.open_table(MEMBERS)?,
            state: &mut self.state,
            queue_max_per_user: self.limits.queue_max_per_user,
            pushing: self.push.is_some(),
            now_ms: now_ms(),
            tally: Tally::default(),
            replies,
        };
        // By reference: on an error the whole batch is still here to be answered.
        for command in batch {
            apply.command(command)?;
        }
        Ok(apply.tally)
    }

    fn failure_replies(&self, batch: &[Command], why: Failure) -> Vec<(usize, Reply)> {
        let mut replies = Vec::new();
        let error = || Some(why);
        for command in batch {
            match command {
                Command::Enqueue(enqueue) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let outcome = Outcome::Failed(why);
                    let Enqueue {
                        sender,
                        message_id,
                        dedup,
                        ..
                    } = &**enqueue;
                    enqueue_outcome(&mut replies, *sender, message_id, *dedup, outcome);
                }
                Command::Record { .. } => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                }
                Command::EnqueueFanOut(batch) => {
                    let not_kept = batch.messages.len() as u32;
                    self.stats
                        .failures
                        .fetch_add(u64::from(not_kept), Ordering::Relaxed);
                    replies.push(fan_out_counts(batch, 0, not_kept, true));
                }
                Command::Peek {
                    user, requester, ..
                } => {
                    let reply = Reply::Peeked {
                        requester: *requester,
                        user: user.clone(),
                        messages: Vec::new(),
                        more: false,
                        error: error(),
                    };
                    replies.push((requester.reactor, reply));
                }
                Command::History {
                    peer, requester, ..
                } => {
                    replies.push(history_answer(*requester, peer, Vec::new(), error()));
                }
                Command::FindSender {
                    reader,
                    message_id,
                    requester,
                } => {
                    let found = (&**reader, &**message_id, None);
                    replies.push(sender_answer(*requester, found, error()));
                }
                Command::Amend(amend) => {
                    let reply = Reply::Amended {
                        amend: amend.clone(),
                        found: false,
                        error: error(),
                    };
                    replies.push((amend.requester.reactor, reply));
                }
                Command::Membership { .. } => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    replies.extend(membership_answer(command, false));
                }
                Command::Drain { .. } | Command::Remove { .. } | Command::Shutdown => {}
            }
        }
        replies
    }

    /// Begins a sweep of everything older than the retention period.
    fn start_sweep(&mut self) {
        self.last_sweep = Instant::now();
        let retention_ms = self.limits.retention.as_millis().min(u128::from(u64::MAX)) as u64;
        let cutoff = now_ms().saturating_sub(retention_ms);
        self.sweep = Some((Sweep::Queue(None), cutoff));
    }

    /// One sweep transaction: up to [`SWEEP_VISIT_MAX`] entries of the queues, then of the
    /// message index (with their conversation entries).
    fn sweep_step(&mut self) {
        let (Some(db), Some((position, cutoff))) = (self.db.as_ref(), self.sweep.take()) else {
            return;
        };
        let counter = match position {
            Sweep::Queue(_) => &self.stats.expired,
            Sweep::History(_) => &self.stats.expired_history,
        };
        self.state.counts.begin();
        let counts = &mut self.state.counts;
        let result = (|| -> Result<(u64, Option<Sweep>), redb::Error> {
            let txn = db.begin_write()?;
            let (removed, next) = match position {
                Sweep::Queue(cursor) => {
                    let mut table = txn.open_table(QUEUE)?;
                    let (removed, next) =
                        queue::sweep(&mut table, counts, cursor, cutoff, SWEEP_VISIT_MAX)?;
                    let next = match next {
                        Some(key) => Sweep::Queue(Some(key)),
                        None => Sweep::History(None), // the queues are done: history next
                    };
                    (removed, Some(next))
                }
                Sweep::History(cursor) => {
                    let mut tables = Tables {
                        history: txn.open_table(history::HISTORY)?,
                        received: txn.open_table(history::RECEIVED)?,
                    };
                    let (removed, next) = tables.sweep(cursor, cutoff, SWEEP_VISIT_MAX)?;
                    (removed, next.map(|key| Sweep::History(Some(key))))
                }
            };
            txn.commit()?;
            Ok((removed, next))
        })();
        match result {
            Ok((removed, next)) => {
                counter.fetch_add(removed, Ordering::Relaxed);
                if removed > 0 {
                    info!(removed, "store: expired messages removed");
                }
                self.sweep = next.map(|n| (n, cutoff));
            }
            Err(e) => {
                self.state.counts.roll_back();
                error!("store: retention sweep failed: {e}");
            }
        }
    }

    /// Opens the file again after a failed transaction (the next batch retries if this
    /// fails too). What was committed before is intact; the in-memory counts match it.
    fn reopen(&mut self) {
        match super::open_file(&self.path, self.limits.cache_bytes) {
            Ok(db) => {
                info!("store reopened after an error");
                self.db = Some(db);
            }
            Err(e) => error!("store reopen failed: {e}"),
        }
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

/// While alive, the store thread runs at a lower CPU priority (nice
/// [`BACKGROUND_NICE`]): a commit of history records only, tens of milliseconds of CPU
/// at a time, then waits for a core behind the reactors instead of holding one while
/// online messages queue up. Failing to change the priority only costs latency.
struct Background;

impl Background {
    fn enter() -> Background {
        set_own_nice(BACKGROUND_NICE);
        Background
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        set_own_nice(0);
    }
}

fn set_own_nice(nice: libc::c_int) {
    // SAFETY: setpriority(2) with PRIO_PROCESS and who 0 sets the calling thread's nice
    // value on Linux; no memory is passed. Returning to 0 needs no privilege we lack
    // (root, or RLIMIT_NICE allows it; otherwise it fails and is logged).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        tracing::debug!(
            "store: cannot set the thread's nice value to {nice}: {}",
            std::io::Error::last_os_error()
        );
    }
}
