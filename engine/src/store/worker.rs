//! The store thread: group commit of every command waiting (applied to a memtable of its
//! own, journaled and synced once, then joined to the active memtable), answers after the
//! commit, checkpoints handed to their own thread, and the retention sweep in small
//! batches between the others.

use std::{
    cell::RefCell,
    path::PathBuf,
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use redb::{Database, ReadableDatabase};
use tracing::{error, info, warn};

use super::{
    answers::{append_outcome, fan_out_counts, membership_answer, unread_answer},
    apply::{Apply, Tally},
    checkpoint::{self, Checkpointer},
    history, inbox,
    journal::{Journal, CHECKPOINT_BYTES, CHECKPOINT_INTERVAL},
    logged::Redo,
    memtable::Memtable,
    state::{State, NEXT_POST, NEXT_SEQUENCE},
    view::View,
    Command, Failure, Limits, Outcome, Reply, ReplyRoutes, StoreStats, BATCH_MAX,
};
use crate::protocol::now_ms;

/// How often expired messages are swept at most (less often when retention is long).
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// Entries one sweep batch looks at, so a sweep of a large file never holds the thread
/// (and every sender waiting for a commit) for long.
const SWEEP_VISIT_MAX: usize = 20_000;
/// A commit slower than this is logged: every ack in it waited that long (a disk stalled
/// by other writers, say). At most one line per such commit, so at most one a second.
const SLOW_COMMIT: Duration = Duration::from_secs(1);
/// Journal bytes past a freeze at which the store waits for the checkpoint under way
/// before it goes on: bounds the memory of a store whose file cannot keep up.
const JOURNAL_BYTES_MAX: u64 = 4 * CHECKPOINT_BYTES;
/// How long the thread waits for a command at most while a checkpoint is under way, due,
/// or to be tried again, so that it notices in time.
const CHECKPOINT_POLL: Duration = Duration::from_millis(100);

/// Where a retention sweep has got to.
enum Sweep {
    /// Going through inboxes, from this key on.
    Inbox(Option<inbox::Cursor>),
    /// Going through the message index, from this key on.
    History(Option<history::Cursor>),
}

/// The store thread's state.
pub(super) struct Worker {
    /// `None` after a failure until the file could be opened again. Shared with the
    /// checkpoint thread while it writes.
    db: Option<Arc<Database>>,
    /// The data directory, for reopening.
    dir: PathBuf,
    /// The commit point.
    journal: Journal,
    /// What the journal holds since the last freeze, for reads and the next checkpoint.
    active: Memtable,
    /// What a checkpoint writes into the file, read until it is there.
    frozen: Option<Frozen>,
    checkpointer: Checkpointer,
    /// When the first record after the last freeze was appended.
    first_record_at: Option<Instant>,
    /// When the last commit started.
    last_commit: Instant,
    /// The batch's changes.
    redo: RefCell<Redo>,
    /// Where a journal record is built (kept between batches).
    record: Vec<u8>,
    /// Where commands come in.
    commands: mpsc::Receiver<Command>,
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

/// A memtable frozen for a checkpoint.
struct Frozen {
    memtable: Arc<Memtable>,
    /// The number of the last journal record it holds.
    through: u64,
    /// After a failed checkpoint (a full disk, say), when to try again.
    retry_at: Option<Instant>,
}

/// How long after a failed checkpoint the next try waits.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

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
    pub(super) fn new(parts: Parts) -> std::io::Result<Worker> {
        Ok(Worker {
            db: Some(Arc::new(parts.db)),
            dir: parts.dir,
            journal: parts.journal,
            active: Memtable::default(),
            frozen: None,
            checkpointer: Checkpointer::start(parts.limits.failed_checkpoints)?,
            first_record_at: None,
            last_commit: Instant::now(),
            redo: RefCell::default(),
            record: Vec::new(),
            commands: parts.commands,
            state: parts.state,
            limits: parts.limits,
            last_sweep: Instant::now(),
            sweep: None,
            routes: parts.routes,
            stats: parts.stats,
            push: parts.push,
        })
    }

    /// Runs until `Shutdown`, or until every `Store` handle is gone: each turn takes
    /// every command waiting (up to [`BATCH_MAX`]), commits them together and answers;
    /// a retention sweep, when one is under way, takes a small step between turns.
    pub(super) fn run(mut self) {
        super::lower_own_priority();
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let sweep_every = (self.limits.retention / 10).min(SWEEP_INTERVAL_MAX);
        loop {
            if self.sweep.is_none() && self.last_sweep.elapsed() >= sweep_every {
                self.start_sweep();
            }
            // While a sweep is under way, commands go first and a sweep step follows.
            let wait = if self.sweep.is_some() {
                Duration::ZERO
            } else if self.frozen.is_some() || self.first_record_at.is_some() {
                // A checkpoint under way or to try again, or one due.
                CHECKPOINT_POLL
            } else {
                sweep_every
            };
            let mut stopping = false;
            match self.commands.recv_timeout(wait) {
                Ok(Command::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    stopping = true
                }
                Ok(command) => batch.push(command),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !batch.is_empty() {
                // At most one commit per `commit_spacing`: what comes meanwhile shares the
                // next one's `fdatasync` (at 5,000 msg/s, one per message cost the engine
                // 29% more CPU a message: benches/RESULTS.md).
                let since = self.last_commit.elapsed();
                if let Some(rest) = self.limits.commit_spacing.checked_sub(since) {
                    std::thread::sleep(rest);
                }
                self.last_commit = Instant::now();
            }
            while !stopping && batch.len() < BATCH_MAX {
                match self.commands.try_recv() {
                    Ok(Command::Shutdown) => stopping = true,
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.tend_checkpoints();
            if !batch.is_empty() {
                let replies = self.apply(&mut batch);
                self.answer(replies);
                self.tend_checkpoints();
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

    /// Applies a batch; returns each reactor's answers.
    fn apply(&mut self, batch: &mut Vec<Command>) -> Vec<(usize, Reply)> {
        let sequences_before = (self.state.next_sequence, self.state.next_post);
        self.state.heads.begin();
        let mut replies = Vec::new();
        if self.db.is_none() {
            self.reopen();
        }
        let result = if self.db.is_some() {
            self.transact(batch, &mut replies).map_err(Failure::from)
        } else {
            Err(Failure::Closed)
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

    /// Applies `batch`, journals it and syncs: one group commit.
    fn transact(
        &mut self,
        batch: &[Command],
        replies: &mut Vec<(usize, Reply)>,
    ) -> Result<(), redb::Error> {
        let started = Instant::now();
        let (queue_max_per_user, pushing) = (self.limits.queue_max_per_user, self.push.is_some());
        let tally = self.write(|view, state| {
            let sequences_before = (state.next_sequence, state.next_post);
            let View {
                inboxes,
                tables,
                groups,
                mut meta,
            } = view;
            let mut apply = Apply {
                inboxes,
                tables,
                groups,
                state,
                queue_max_per_user,
                pushing,
                now_ms: now_ms(),
                tally: Tally::default(),
                replies,
            };
            // By reference: on an error the whole batch is still here to be answered.
            for command in batch {
                apply.command(command)?;
            }
            apply.inboxes.write_heads(&apply.state.heads)?;
            if (apply.state.next_sequence, apply.state.next_post) != sequences_before {
                meta.insert(NEXT_SEQUENCE, apply.state.next_sequence)?;
                meta.insert(NEXT_POST, apply.state.next_post)?;
            }
            Ok(apply.tally)
        })?;
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

    /// Runs `work` over every table as this batch sees them, its changes going into a
    /// memtable of its own; then journals what it changed and syncs, and only then adds
    /// the changes to the active memtable: when this returns `Ok` they are durable, and
    /// on an error nothing of them is kept. An error of the file's (not the journal's)
    /// reopens it.
    fn write<T>(
        &mut self,
        work: impl FnOnce(View<'_>, &mut State) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        self.redo.get_mut().clear();
        let mut changes = Memtable::default();
        let done = match self.view(&mut changes, work) {
            Ok(done) => done,
            Err(e) => {
                self.reopen();
                return Err(e);
            }
        };
        if !self.limits.commit_delay.is_zero() {
            std::thread::sleep(self.limits.commit_delay); // the slow_commit_ms failpoint
        }
        let redo = self.redo.get_mut();
        if !redo.is_empty() {
            self.journal
                .append(redo, &mut self.record)
                .map_err(redb::Error::Io)?;
            self.first_record_at.get_or_insert_with(Instant::now);
        }
        self.active.absorb(&mut changes);
        Ok(done)
    }

    /// Runs `work` over the tables: `changes` over the memtables over the file.
    fn view<T>(
        &mut self,
        changes: &mut Memtable,
        work: impl FnOnce(View<'_>, &mut State) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        let db = self.db.clone().ok_or(redb::Error::PreviousIo)?;
        let read = db.begin_read()?;
        let frozen = self.frozen.as_ref().map(|f| &*f.memtable);
        let view = View::new(&read, changes, (&self.active, frozen), &self.redo)?;
        work(view, &mut self.state)
    }

    /// Takes the outcome of a checkpoint that is over (or tries a failed one again), and
    /// freezes the active memtable for the next when one is due: after
    /// [`CHECKPOINT_BYTES`] of journal or [`CHECKPOINT_INTERVAL`] after its first record.
    /// Past [`JOURNAL_BYTES_MAX`] it waits for the checkpoint under way (the file cannot
    /// keep up).
    fn tend_checkpoints(&mut self) {
        if let Some(done) = self.checkpointer.poll() {
            self.checkpoint_done(done);
        }
        let retry_at = self.frozen.as_ref().and_then(|f| f.retry_at);
        if retry_at.is_some_and(|at| at <= Instant::now()) {
            self.retry_checkpoint();
        }
        let len = self.journal.len();
        let due = len >= CHECKPOINT_BYTES
            || self
                .first_record_at
                .is_some_and(|at| at.elapsed() >= CHECKPOINT_INTERVAL);
        if !due {
            return;
        }
        if self.checkpointer.busy() && len >= JOURNAL_BYTES_MAX {
            if let Some(done) = self.checkpointer.wait() {
                self.checkpoint_done(done);
            }
        }
        self.freeze();
    }

    /// Starts the failed checkpoint again, on a file reopened first if the last reopen
    /// failed; if the file is still closed, the next try is a second later.
    fn retry_checkpoint(&mut self) {
        if self.db.is_none() {
            self.reopen();
        }
        let Some(frozen) = &mut self.frozen else {
            return;
        };
        match &self.db {
            Some(db) => {
                frozen.retry_at = None;
                let (memtable, through) = (frozen.memtable.clone(), frozen.through);
                self.checkpointer.begin(db.clone(), memtable, through);
            }
            None => frozen.retry_at = Some(Instant::now() + CHECKPOINT_RETRY),
        }
    }

    /// Hands the active memtable to the checkpoint thread; the journal goes on in its
    /// other file. Only when the last frozen memtable is in the file: the other file
    /// holds its records until then.
    fn freeze(&mut self) {
        let Some(db) = &self.db else {
            return;
        };
        if self.frozen.is_some() || self.journal.len() == 0 {
            return;
        }
        let memtable = Arc::new(std::mem::take(&mut self.active));
        let through = self.journal.last_number();
        self.journal.switch();
        self.first_record_at = None;
        self.checkpointer
            .begin(db.clone(), memtable.clone(), through);
        self.frozen = Some(Frozen {
            memtable,
            through,
            retry_at: None,
        });
    }

    /// The frozen memtable is in the file (the reads now find it there), or the
    /// checkpoint failed: the journal holds all of it, reads go on through the
    /// memtables, and the checkpoint is tried again on a reopened file.
    fn checkpoint_done(&mut self, done: checkpoint::Done) {
        if !self.settle(done) {
            self.reopen();
        }
    }

    /// Notes how a checkpoint went; whether it holds.
    fn settle(&mut self, done: checkpoint::Done) -> bool {
        match done {
            Ok(took) => {
                self.frozen = None;
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .checkpoint_latency
                    .observe_us(took.as_micros() as u64);
                true
            }
            Err(e) => {
                self.stats
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                error!("store: checkpoint failed (tried again in a second): {e}");
                if let Some(frozen) = &mut self.frozen {
                    frozen.retry_at = Some(Instant::now() + CHECKPOINT_RETRY);
                }
                false
            }
        }
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
                    replies.extend(membership_answer(command, Some(why)));
                }
                // An ack that did not hold is asked again by the device's next ack; a
                // message history did not keep is in its inbox all the same.
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

    /// One sweep batch: up to [`SWEEP_VISIT_MAX`] entries of the queues, then of the
    /// message index (with their conversation entries).
    fn sweep_step(&mut self) {
        let Some((position, cutoff)) = self.sweep.take() else {
            return;
        };
        if self.db.is_none() {
            return; // closed: the next sweep starts over
        }
        let stats = self.stats.clone();
        let counter = match position {
            Sweep::Inbox(_) => &stats.expired,
            Sweep::History(_) => &stats.expired_history,
        };
        self.state.heads.begin();
        let result = self.write(|view, state| {
            let heads = &mut state.heads;
            Ok(match position {
                Sweep::Inbox(cursor) => {
                    let mut tables = view.inboxes;
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
                    let mut tables = view.tables;
                    let (removed, next) = tables.sweep(cursor, cutoff, SWEEP_VISIT_MAX)?;
                    (removed, next.map(|key| Sweep::History(Some(key))))
                }
            })
        });
        match result {
            Ok((removed, next)) => {
                counter.fetch_add(removed, Ordering::Relaxed);
                if removed > 0 {
                    info!(removed, "store: expired messages removed");
                }
                self.sweep = next.map(|n| (n, cutoff));
            }
            Err(e) => {
                self.state.heads.roll_back();
                error!("store: retention sweep failed: {e}");
            }
        }
    }

    /// A last checkpoint of everything journaled, so that a clean stop leaves no journal
    /// to replay (a replay at start then always means a crash).
    fn checkpoint_at_close(&mut self) {
        if let Some(done) = self.checkpointer.wait() {
            self.checkpoint_done(done);
        }
        if self.frozen.is_some() {
            // A failed one: one more try (the disk may have room now).
            self.retry_checkpoint();
            if let Some(done) = self.checkpointer.wait() {
                self.settle(done);
            }
        }
        self.freeze();
        if let Some(done) = self.checkpointer.wait() {
            self.settle(done);
        }
        let closed = if self.frozen.is_some() || self.journal.len() > 0 {
            Err(redb::Error::PreviousIo) // a checkpoint failed: the journal holds it all
        } else {
            self.journal.close_empty().map_err(redb::Error::Io)
        };
        if let Err(e) = closed {
            warn!("store: no checkpoint at close, the journal will be replayed: {e}");
        }
    }

    /// Opens the file again after an error (the next batch retries if this fails too):
    /// what checkpoints wrote is intact, and the memtables hold what the journal holds
    /// past them, so nothing is replayed. A checkpoint under way ends first.
    fn reopen(&mut self) {
        if let Some(done) = self.checkpointer.wait() {
            self.settle(done);
        }
        self.db = None; // the last hold on the file: it closes
        match super::open_file(&self.dir, self.limits.cache_bytes) {
            Ok(db) => {
                info!("store reopened after an error");
                self.db = Some(Arc::new(db));
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
