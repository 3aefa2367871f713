//! What the store thread keeps in memory about its file (queue lengths, the sequence), and
//! the tables it reads once at start.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    history,
    queue::{Counts, QUEUE},
};

/// Group memberships: `(group, user) → ()`.
pub(super) const MEMBERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("members");
/// Small named values: the next sequence number.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The [`META`] key of the next sequence number (queue and history share one sequence).
pub(super) const NEXT_SEQUENCE: &str = "next_sequence";

/// What the thread keeps in memory about the file.
pub(super) struct State {
    /// Queue lengths per user.
    pub(super) counts: Counts,
    /// The sequence number of the next message written.
    pub(super) next_sequence: u64,
}

impl State {
    /// Creates the tables on first start and reads the queue lengths and the sequence.
    pub(super) fn load(db: &Database) -> Result<State, redb::Error> {
        let txn = db.begin_write()?;
        let (counts, highest) = Counts::scan(&txn.open_table(QUEUE)?)?;
        txn.open_table(history::HISTORY)?;
        txn.open_table(history::RECEIVED)?;
        txn.open_table(MEMBERS)?;
        let stored = txn.open_table(META)?.get(NEXT_SEQUENCE)?.map(|v| v.value());
        txn.commit()?;
        let next_sequence = stored.unwrap_or(1).max(highest + 1);
        Ok(State {
            counts,
            next_sequence,
        })
    }

    /// Messages queued in all.
    pub(super) fn queued(&self) -> u64 {
        self.counts.total()
    }

    /// Users with a queue.
    pub(super) fn users_with_queue(&self) -> usize {
        self.counts.users()
    }
}

/// Every group membership in the file (read once at start).
pub(super) fn memberships(db: &Database) -> Result<super::Memberships, redb::Error> {
    let read = db.begin_read()?;
    let table = read.open_table(MEMBERS)?;
    let mut pairs = Vec::new();
    for entry in table.iter()? {
        let (key, _) = entry?;
        let (group, user) = key.value();
        pairs.push((group.into(), user.into()));
    }
    Ok(pairs)
}

impl State {
    /// The sequence number of the next message written.
    pub(super) fn take_sequence(&mut self) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        sequence
    }
}
