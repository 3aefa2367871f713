//! The store thread: group commit of every command waiting, answers after the commit, and
//! the retention sweep in small transactions between batches.

use std::{
    cell::RefCell,
    path::PathBuf,
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use redb::{Database, Durability, WriteTransaction};
use tracing::{error, info, warn};

use super::{
    answers::{append_outcome, fan_out_counts, membership_answer, unread_answer},
    apply::{Apply, Tally},
    history::{self, Tables},
    inbox::{self, Inboxes},
    journal::{Journal, CHECKPOINT_BYTES, CHECKPOINT_INTERVAL, JOURNAL_THROUGH},
    logged::{Logged, Redo},
    state::{State, MEMBERS, META, NEXT_POST, NEXT_SEQUENCE},
    Command, Failure, Limits, Outcome, Reply, ReplyRoutes, StoreStats, BATCH_MAX,
};
use crate::protocol::now_ms;

/// The store thread's nice value: on a busy box the reactors (delivery) get the cores
/// first, and the store catches up in bigger group commits (acks wait a little longer).
const STORE_NICE: libc::c_int = 5;

/// How often expired messages are swept at most (less often when retention is long).
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// Entries one sweep transaction looks at, so a sweep of a large file never holds the
/// thread (and every sender waiting for a commit) for long.
const SWEEP_VISIT_MAX: usize = 20_000;
/// A commit slower than this is logged: every ack in it waited that long (a disk stalled
/// by other writers, say). At most one line per such commit, so at most one a second.
const SLOW_COMMIT: Duration = Duration::from_secs(1);

/// Where a retention sweep has got to.
enum Sweep {
    /// Going through inboxes, from this key on.
    Inbox(Option<inbox::Cursor>),
    /// Going through the message index, from this key on.
    History(Option<history::Cursor>),
}

/// The store thread's state.
pub(super) struct Worker {
    /// `None` after a failed transaction until the file could be opened again.
    db: Option<Database>,
    /// The data directory, for reopening.
    dir: PathBuf,
    /// The commit point (`None` while `db` is).
    journal: Option<Journal>,
    /// The open transaction's changes, shared by its tables.
    redo: RefCell<Redo>,
    /// Where a journal record is built (kept between batches).
    record: Vec<u8>,
    /// When the last checkpoint (a durable commit of the file) was.
    last_checkpoint: Instant,
    /// Where commands come in.
    commands: mpsc::Receiver<Command>,
    /// A command taken early, to see whether the store is behind: the next batch's first.
    early: Option<Command>,
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
    /// Its journal, recovered.
    pub journal: Journal,
    /// The data directory, for reopening.
    pub dir: PathBuf,
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
    /// Where commands come in.
    pub commands: mpsc::Receiver<Command>,
}

impl Worker {
    pub(super) fn new(parts: Parts) -> Worker {
        Worker {
            db: Some(parts.db),
            dir: parts.dir,
            journal: Some(parts.journal),
            redo: RefCell::default(),
            record: Vec::new(),
            last_checkpoint: Instant::now(),
            commands: parts.commands,
            early: None,
            state: parts.state,
            limits: parts.limits,
            last_sweep: Instant::now(),
            sweep: None,
            routes: parts.routes,
            stats: parts.stats,
            push: parts.push,
        }
    }

    /// Runs until `Shutdown`, or until every `Store` handle is gone: each turn takes
    /// every command waiting (up to [`BATCH_MAX`]), commits them together and answers;
    /// a retention sweep, when one is under way, takes a small step between turns.
    pub(super) fn run(mut self) {
        lower_own_priority();
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let sweep_every = (self.limits.retention / 10).min(SWEEP_INTERVAL_MAX);
        loop {
            if self.sweep.is_none() && self.last_sweep.elapsed() >= sweep_every {
                self.start_sweep();
            }
            // While a sweep is under way, commands go first and a sweep step follows.
            let wait = if self.sweep.is_some() {
                Duration::ZERO
            } else {
                sweep_every
            };
            let mut stopping = false;
            let first = match self.early.take() {
                Some(command) => Ok(command),
                None => self.commands.recv_timeout(wait),
            };
            match first {
                Ok(Command::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    stopping = true
                }
                Ok(command) => batch.push(command),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            while !stopping && batch.len() < BATCH_MAX {
                match self.commands.try_recv() {
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
            if self.sweep.is_some() {
                self.sweep_step();
            }
        }
        self.checkpoint_at_close();
        info!("store closed");
    }

    /// Applies a batch in one transaction; returns each reactor's answers.
    fn apply(&mut self, batch: &mut Vec<Command>) -> Vec<(usize, Reply)> {
        let sequences_before = (self.state.next_sequence, self.state.next_post);
        self.state.heads.begin();
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
            // Nothing of the batch is stored: undo the bookkeeping (but the `seq`s given
            // out) and tell every waiter.
            self.state.heads.roll_back();
            (self.state.next_sequence, self.state.next_post) = sequences_before;
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
        let sequences_before = (self.state.next_sequence, self.state.next_post);
        self.redo.get_mut().clear();
        let txn = db.begin_write()?;
        let tally = self.apply_commands(&txn, batch, replies)?;
        if !self.limits.commit_delay.is_zero() {
            std::thread::sleep(self.limits.commit_delay); // the slow_commit_ms failpoint
        }
        if (self.state.next_sequence, self.state.next_post) != sequences_before {
            let mut meta = Logged::open(&txn, &META, &self.redo)?;
            meta.insert(NEXT_SEQUENCE, self.state.next_sequence)?;
            meta.insert(NEXT_POST, self.state.next_post)?;
        }
        self.commit(txn)?;
        if let Some(push) = &self.push {
            for (user, payload) in tally.queued {
                push.notify(&user, payload);
            }
        }
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            warn!(
                commands = batch.len(),
                "store: a commit took {} ms; every answer in it waited (is the disk busy?)",
                took.as_millis()
            );
        }
        self.stats
            .commit_latency
            .observe_us(took.as_micros() as u64);
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
        let redo = &self.redo;
        let mut apply = Apply {
            inboxes: Inboxes::open(txn, redo)?,
            tables: Tables::open(txn, redo)?,
            members: Logged::open(txn, &MEMBERS, redo)?,
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
        apply.inboxes.write_heads(&apply.state.heads)?;
        Ok(apply.tally)
    }

    fn failure_replies(&self, batch: &[Command], why: Failure) -> Vec<(usize, Reply)> {
        let mut replies = Vec::new();
        let count_failures = |n: usize| {
            self.stats.failures.fetch_add(n as u64, Ordering::Relaxed);
        };
        for command in batch {
            match command {
                Command::Append(append) => {
                    // A message its sender waits on (not the copies that go with it).
                    count_failures(usize::from(append.ack.is_some()));
                    let outcome = Outcome::Failed(why);
                    append_outcome(&mut replies, append.ack.as_ref(), append.dedup, outcome);
                }
                Command::AppendShare(share) => {
                    count_failures(1);
                    let not_kept = share.rows.len() as u32;
                    replies.push(fan_out_counts(share, 0, not_kept, true));
                }
                Command::Confirm(confirm) => {
                    let outcome = Outcome::Failed(why);
                    append_outcome(&mut replies, Some(&confirm.ack), None, outcome);
                }
                Command::OpenInbox { user, home, ticket } => {
                    // Nothing was written: the `seq` given out so far is still the answer.
                    let last = self.state.heads.of(user).last;
                    let reply = Reply::InboxOpened {
                        user: user.clone(),
                        ticket: *ticket,
                        last,
                    };
                    replies.push((*home, reply));
                }
                Command::ReadInbox { .. }
                | Command::Peek { .. }
                | Command::History { .. }
                | Command::FindSender { .. }
                | Command::Amend(_) => replies.extend(unread_answer(command, why)),
                Command::Membership { .. } => {
                    count_failures(1);
                    replies.extend(membership_answer(command, false));
                }
                // An ack that did not hold is asked again by the device's next ack.
                Command::Ack { .. } | Command::Shutdown => {}
            }
        }
        replies
    }

    /// Begins a sweep of everything older than the retention period.
    fn start_sweep(&mut self) {
        self.last_sweep = Instant::now();
        let now = now_ms();
        let grace = super::state::READ_GRACE_MS;
        self.state
            .reading
            .retain(|_, at| now.saturating_sub(*at) <= grace);
        let retention_ms = self.limits.retention.as_millis().min(u128::from(u64::MAX)) as u64;
        let cutoff = now_ms().saturating_sub(retention_ms);
        self.sweep = Some((Sweep::Inbox(None), cutoff));
    }

    /// One sweep transaction: up to [`SWEEP_VISIT_MAX`] entries of the queues, then of the
    /// message index (with their conversation entries).
    fn sweep_step(&mut self) {
        let (Some(db), Some((position, cutoff))) = (self.db.take(), self.sweep.take()) else {
            return;
        };
        let stats = self.stats.clone();
        let counter = match position {
            Sweep::Inbox(_) => &stats.expired,
            Sweep::History(_) => &stats.expired_history,
        };
        self.state.heads.begin();
        self.redo.get_mut().clear();
        let (heads, redo) = (&mut self.state.heads, &self.redo);
        let result = (|| -> Result<_, redb::Error> {
            let txn = db.begin_write()?;
            let (removed, next) = match position {
                Sweep::Inbox(cursor) => {
                    let mut tables = Inboxes::open(&txn, redo)?;
                    let (removed, next) =
                        inbox::sweep(&mut tables, heads, cursor, cutoff, SWEEP_VISIT_MAX)?;
                    tables.write_heads(heads)?;
                    let next = match next {
                        Some(key) => Sweep::Inbox(Some(key)),
                        None => Sweep::History(None), // the inboxes are done: history next
                    };
                    (removed, Some(next))
                }
                Sweep::History(cursor) => {
                    let mut tables = Tables::open(&txn, redo)?;
                    let (removed, next) = tables.sweep(cursor, cutoff, SWEEP_VISIT_MAX)?;
                    (removed, next.map(|key| Sweep::History(Some(key))))
                }
            };
            Ok((txn, removed, next))
        })();
        let result = result.and_then(|(txn, removed, next)| {
            self.commit(txn)?;
            Ok((removed, next))
        });
        match result {
            Ok((removed, next)) => {
                self.db = Some(db);
                counter.fetch_add(removed, Ordering::Relaxed);
                if removed > 0 {
                    info!(removed, "store: expired messages removed");
                }
                self.sweep = next.map(|n| (n, cutoff));
            }
            Err(e) => {
                drop(db);
                self.reopen();
                self.state.heads.roll_back();
                error!("store: retention sweep failed: {e}");
            }
        }
    }

    /// Commits `txn`, whose tables journaled their changes into `self.redo`, so that it is
    /// durable when this returns `Ok`. When nothing else waits, as a durable commit of the
    /// file (one `fdatasync` of the pages it changed, and of any a journal held: then a
    /// checkpoint, after which the journal starts again). When commands wait already (the
    /// store is behind), in memory with its changes appended to the journal and synced,
    /// which costs what the batch changed, not the B-tree pages it touched; until the
    /// journal reaches [`CHECKPOINT_BYTES`] or [`CHECKPOINT_INTERVAL`]. On an error the
    /// caller drops the file and reopens it.
    fn commit(&mut self, mut txn: WriteTransaction) -> Result<(), redb::Error> {
        let behind = self.more_waiting() || self.limits.journal_only;
        let Some(journal) = self.journal.as_mut() else {
            return Err(redb::Error::PreviousIo);
        };
        let journaled = journal.len();
        let checkpoint_due = journaled >= CHECKPOINT_BYTES
            || (journaled > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL);
        if !behind || checkpoint_due {
            if journaled > 0 {
                let mut meta = Logged::open(&txn, &META, &self.redo)?;
                meta.insert(JOURNAL_THROUGH, journal.last_number())?;
            }
            txn.commit()?; // durable: it holds every journal record so far
            self.redo.get_mut().clear();
            if journaled > 0 {
                self.last_checkpoint = Instant::now();
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                journal.checkpointed();
            }
            return Ok(());
        }
        if journaled == 0 {
            self.last_checkpoint = Instant::now(); // the file is durable up to here
        }
        txn.set_durability(Durability::None)?;
        txn.commit()?;
        let redo = self.redo.get_mut();
        let appended = if redo.is_empty() {
            Ok(())
        } else {
            journal.append(redo, &mut self.record)
        };
        redo.clear();
        appended.map_err(redb::Error::Io)
    }

    /// A last checkpoint, so that a clean stop leaves no journal to replay (a replay at
    /// start then always means a crash).
    fn checkpoint_at_close(&mut self) {
        let (Some(db), Some(journal)) = (self.db.as_ref(), self.journal.as_mut()) else {
            return;
        };
        if journal.len() == 0 {
            return;
        }
        let through = journal.last_number();
        let committed = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(JOURNAL_THROUGH, through)?;
            txn.commit()?;
            Ok(())
        })();
        match committed {
            Ok(()) => {
                if let Err(e) = journal.close_empty() {
                    warn!("store: journal not marked empty at close (its records are held): {e}");
                }
            }
            Err(e) => warn!("store: no checkpoint at close, the journal will be replayed: {e}"),
        }
    }

    /// Whether another command waits already (taken now, it opens the next batch).
    fn more_waiting(&mut self) -> bool {
        if self.early.is_none() {
            self.early = self.commands.try_recv().ok();
        }
        self.early.is_some()
    }

    /// Opens the file again after a failed transaction and replays its journal (the next
    /// batch retries if this fails too): what was committed before, in the file or in the
    /// journal, is intact; the in-memory counts match it.
    fn reopen(&mut self) {
        self.journal = None;
        let opened = super::open_file(&self.dir, self.limits.cache_bytes)
            .map_err(redb::Error::from)
            .and_then(|db| Ok((Journal::recover(&self.dir, &db)?, db)));
        match opened {
            Ok((journal, db)) => {
                info!("store reopened after an error");
                self.db = Some(db);
                self.journal = Some(journal);
                self.last_checkpoint = Instant::now();
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

/// Gives the calling thread (the store's) [`STORE_NICE`]; failing only costs latency.
fn lower_own_priority() {
    // SAFETY: setpriority(2) with PRIO_PROCESS and who 0 sets the calling thread's nice
    // value on Linux; no memory is passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, STORE_NICE) } != 0 {
        tracing::debug!(
            "store: nice {STORE_NICE} not set: {}",
            std::io::Error::last_os_error()
        );
    }
}
