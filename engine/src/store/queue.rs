//! Offline queues: `(user, priority, sequence) → [flags][enqueued at][message JSON]`.
//! A user's messages read in key order come high priority first and in send order within
//! a priority.

use std::collections::HashMap;

use bytes::Bytes;
use redb::{ReadableTable, Table, TableDefinition};

use super::Queued;
use crate::protocol::{codes::OutKind, Priority};

/// The queue table.
pub(super) const QUEUE: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("queue");

/// Where one queued message sits in its user's queue: `(priority, sequence)`.
pub type QueueKey = (u8, u64);

/// A whole queue table key, where a sweep goes on from.
pub(super) type Cursor = (Box<str>, u8, u64);

/// A stored value is `[flags][enqueued at, Unix ms, u64 LE][message JSON]`.
const VALUE_HEADER_BYTES: usize = 9;
/// Flags bit 0: the sender wants a delivery receipt.
const RECEIPT_FLAG: u8 = 1;
/// Flags bits 1–7: the message's [`OutKind`] index. Records written before kinds were
/// kept read as 0, `new_message`, which is what nearly all of them are.
const KIND_SHIFT: u8 = 1;

/// Per-user queue lengths, kept in memory so that `--queue-max-per-user` costs no read.
/// Changes since [`Counts::begin`] are journaled, so that a transaction that fails can
/// put them back ([`Counts::roll_back`]) without copying the map per batch.
#[derive(Debug, Default)]
pub(super) struct Counts {
    by_user: HashMap<Box<str>, u64>,
    journal: Vec<(Box<str>, i64)>,
}

impl Counts {
    /// Counts every queued message in `table`; also returns the highest sequence seen.
    pub(super) fn scan(
        table: &impl ReadableTable<(&'static str, u8, u64), &'static [u8]>,
    ) -> Result<(Counts, u64), redb::Error> {
        let mut counts = Counts::default();
        let mut highest = 0;
        for entry in table.iter()? {
            let (key, _) = entry?;
            let (user, _, sequence) = key.value();
            *counts.by_user.entry(user.into()).or_default() += 1;
            highest = highest.max(sequence);
        }
        Ok((counts, highest))
    }

    /// Messages queued for `user`.
    pub(super) fn of(&self, user: &str) -> u64 {
        self.by_user.get(user).copied().unwrap_or(0)
    }

    /// Messages queued in all.
    pub(super) fn total(&self) -> u64 {
        self.by_user.values().sum()
    }

    /// Users with at least one message queued.
    pub(super) fn users(&self) -> usize {
        self.by_user.len()
    }

    /// Starts a transaction's journal.
    pub(super) fn begin(&mut self) {
        self.journal.clear();
    }

    /// Undoes every change since [`Counts::begin`] (its transaction did not commit).
    pub(super) fn roll_back(&mut self) {
        while let Some((user, delta)) = self.journal.pop() {
            self.apply(&user, -delta);
        }
    }

    fn add(&mut self, user: &str, n: u64) {
        self.apply(user, n as i64);
        self.journal.push((user.into(), n as i64));
    }

    /// Takes `n` off `user`'s count (never below zero).
    pub(super) fn subtract(&mut self, user: &str, n: u64) {
        let taken = self.of(user).min(n);
        if taken > 0 {
            self.apply(user, -(taken as i64));
            self.journal.push((user.into(), -(taken as i64)));
        }
    }

    fn apply(&mut self, user: &str, delta: i64) {
        let count = self.of(user).saturating_add_signed(delta);
        if count == 0 {
            self.by_user.remove(user);
        } else if let Some(slot) = self.by_user.get_mut(user) {
            *slot = count;
        } else {
            self.by_user.insert(user.into(), count);
        }
    }
}

/// Appends one message to `user`'s queue in lane `priority` under `sequence`, stamped
/// with the time it was queued (for retention).
pub(super) fn push(
    table: &mut Table<(&str, u8, u64), &[u8]>,
    counts: &mut Counts,
    (user, priority, sequence): (&str, Priority, u64),
    (kind, receipt): (OutKind, bool),
    payload: &[u8],
    now_ms: u64,
) -> Result<(), redb::Error> {
    let mut value = Vec::with_capacity(VALUE_HEADER_BYTES + payload.len());
    let receipt_flag = if receipt { RECEIPT_FLAG } else { 0 };
    value.push((kind.index() as u8) << KIND_SHIFT | receipt_flag);
    value.extend_from_slice(&now_ms.to_le_bytes());
    value.extend_from_slice(payload);
    table.insert((user, priority as u8, sequence), &value[..])?;
    counts.add(user, 1);
    Ok(())
}

/// The first of `user`'s queued messages in delivery order, up to `max_messages` or
/// `max_bytes` (at least one); the flag says whether more remain.
pub(super) fn read(
    table: &Table<(&str, u8, u64), &[u8]>,
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
            kind: OutKind::from_index(usize::from(flags >> KIND_SHIFT)).unwrap_or(OutKind::Other),
        });
        bytes += payload.len();
    }
    Ok((messages, false))
}

/// Deletes `keys` of `user`'s queue and keeps the per-user count right.
pub(super) fn remove(
    table: &mut Table<(&str, u8, u64), &[u8]>,
    counts: &mut Counts,
    user: &str,
    keys: impl Iterator<Item = QueueKey>,
) -> Result<(), redb::Error> {
    let mut removed = 0;
    for (priority, sequence) in keys {
        if table.remove((user, priority, sequence))?.is_some() {
            removed += 1;
        }
    }
    counts.subtract(user, removed);
    Ok(())
}

/// Removes up to `visit_max` entries' worth of messages enqueued before `cutoff_ms`,
/// starting after `cursor`; returns how many were removed and where to go on from
/// (`None` once the table is done).
pub(super) fn sweep(
    table: &mut Table<(&str, u8, u64), &[u8]>,
    counts: &mut Counts,
    cursor: Option<Cursor>,
    cutoff_ms: u64,
    visit_max: usize,
) -> Result<(u64, Option<Cursor>), redb::Error> {
    let mut expired = Vec::new();
    let mut next = None;
    {
        let range = match &cursor {
            Some((user, priority, sequence)) => table.range((&**user, *priority, *sequence)..)?,
            None => table.range::<(&str, u8, u64)>(..)?,
        };
        for (visited, entry) in range.enumerate() {
            let (key, value) = entry?;
            let (user, priority, sequence) = key.value();
            if visited == visit_max {
                next = Some((Box::from(user), priority, sequence));
                break;
            }
            let at = value
                .value()
                .get(1..VALUE_HEADER_BYTES)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
            if at < cutoff_ms {
                expired.push((Box::<str>::from(user), priority, sequence));
            }
        }
    }
    for (user, priority, sequence) in &expired {
        table.remove((&**user, *priority, *sequence))?;
        counts.subtract(user, 1);
    }
    Ok((expired.len() as u64, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_transaction_leaves_the_counts_as_they_were() {
        let mut counts = Counts::default();
        counts.add("bob", 2);
        counts.begin();
        counts.add("bob", 3);
        counts.add("carol", 1);
        counts.subtract("bob", 10);
        assert_eq!((counts.of("bob"), counts.of("carol")), (0, 1));
        counts.roll_back();
        assert_eq!(
            (counts.of("bob"), counts.of("carol"), counts.users()),
            (2, 0, 1)
        );
        assert_eq!(counts.total(), 2);
    }
}
