//! The checkpoint thread: writes a frozen memtable into the redb file in one durable
//! transaction, in key order, with the number of the last journal record it holds, while
//! the store thread goes on journaling and answering. One checkpoint at a time.

use std::{
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use redb::Database;
use tracing::warn;

use super::{journal::JOURNAL_THROUGH, memtable::Memtable, schema::META};

/// A checkpoint slower than this is logged (the memtables hold more meanwhile).
const SLOW_CHECKPOINT: Duration = Duration::from_secs(2);

/// One checkpoint to make.
struct Job {
    db: Arc<Database>,
    frozen: Arc<Memtable>,
    /// The number of the last journal record the frozen memtable holds.
    through: u64,
}

/// How a checkpoint went: its time, or why it failed.
pub(super) type Done = Result<Duration, redb::Error>;

/// The store thread's handle on the checkpoint thread.
pub(super) struct Checkpointer {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// Whether a checkpoint is under way (sent, its answer not yet taken).
    busy: bool,
}

impl Checkpointer {
    /// Starts the thread; its first `failing` checkpoints fail before they write (the
    /// `failed_checkpoints` failpoint).
    pub(super) fn start(mut failing: u32) -> std::io::Result<Checkpointer> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (report, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                super::lower_own_priority();
                for job in inbox {
                    let outcome = if failing > 0 {
                        failing -= 1;
                        Err(redb::Error::Io(std::io::Error::other(
                            "failpoint: failed_checkpoints",
                        )))
                    } else {
                        write(&job)
                    };
                    drop(job); // its hold on the file and the memtable ends before the answer
                    if report.send(outcome).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Checkpointer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            busy: false,
        })
    }

    /// Whether a checkpoint is under way.
    pub(super) fn busy(&self) -> bool {
        self.busy
    }

    /// Starts a checkpoint of `frozen` (records up to `through`) into `db`. The caller
    /// waited for the last one.
    pub(super) fn begin(&mut self, db: Arc<Database>, frozen: Arc<Memtable>, through: u64) {
        debug_assert!(!self.busy);
        let job = Job {
            db,
            frozen,
            through,
        };
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        self.busy = sent;
        if !sent {
            warn!("store: the checkpoint thread is gone; the journal keeps everything");
        }
    }

    /// The checkpoint's outcome if it is over (`None` if none is under way or it goes on).
    pub(super) fn poll(&mut self) -> Option<Done> {
        if !self.busy {
            return None;
        }
        let done = self.done.try_recv().ok()?;
        self.busy = false;
        Some(done)
    }

    /// Waits for the checkpoint under way, if any, and returns its outcome.
    pub(super) fn wait(&mut self) -> Option<Done> {
        if !self.busy {
            return None;
        }
        self.busy = false;
        Some(self.done.recv().unwrap_or(Err(redb::Error::Corrupted(
            "the checkpoint thread died".into(),
        ))))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes `job.frozen` into the file and makes it durable.
fn write(job: &Job) -> Done {
    let started = Instant::now();
    let txn = job.db.begin_write()?;
    job.frozen.flush(&txn)?;
    txn.open_table(META)?.insert(JOURNAL_THROUGH, job.through)?;
    txn.commit()?;
    let took = started.elapsed();
    if took >= SLOW_CHECKPOINT {
        warn!(
            keys = job.frozen.len(),
            "store: a checkpoint took {} ms (is the disk busy?)",
            took.as_millis()
        );
    }
    Ok(took)
}
