//! What the store thread keeps in memory about its file (inbox heads, the epoch, the
//! sequences), and the tables it reads once at start.

use std::{cell::RefCell, collections::HashMap};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    inbox::{Heads, Stamp},
    memtable::Memtable,
    schema::{GROUP_SETTINGS, HEADS, HISTORY, INBOX, MEMBERS, META, POSTS, RECEIVED},
    view::View,
};
use crate::protocol::{codes::OutKind, now_ms, Priority};

/// The [`META`] key of the next history sequence number.
pub(super) const NEXT_SEQUENCE: &str = "next_sequence";
/// The [`META`] key of the next post number.
pub(super) const NEXT_POST: &str = "next_post";
/// The [`META`] key of the epoch: drawn once when the file is created, so it changes only
/// when the inboxes are lost with the file.
const EPOCH: &str = "epoch";
/// The [`META`] key of how many times the store has started (see [`Heads::floor`]).
const STARTS: &str = "starts";
/// The offline queues of the first store layout: `(user, priority, sequence) →
/// [flags][enqueued at][JSON]`. Read once into inboxes, then emptied.
const OLD_QUEUE: TableDefinition<(&str, u8, u64), &[u8]> = TableDefinition::new("queue");

/// What the thread keeps in memory about the file.
pub(super) struct State {
    /// Every user's inbox head.
    pub(super) heads: Heads,
    /// The epoch of every inbox in this file.
    pub(super) epoch: Box<str>,
    /// The history sequence number of the next message kept (orders equal timestamps).
    pub(super) next_sequence: u64,
    /// The number of the next group post.
    pub(super) next_post: u64,
    /// Users whose inbox a device is reading, with when it read the last page (Unix ms):
    /// nothing of those inboxes is pruned for [`READ_GRACE_MS`] after.
    pub(super) reading: HashMap<Box<str>, u64>,
}

/// How long after a page was read an inbox keeps what acks would prune: a device reading
/// it page by page must not find a gap.
pub(super) const READ_GRACE_MS: u64 = 10_000;

impl State {
    /// Creates the tables on first start (and the epoch), moves what the first layout
    /// queued into inboxes, and reads the heads and sequences.
    pub(super) fn load(db: &Database) -> Result<State, redb::Error> {
        let txn = db.begin_write()?;
        // Every journaled table, so that a batch's reads find each one in the file.
        txn.open_table(HISTORY)?;
        txn.open_table(RECEIVED)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(GROUP_SETTINGS)?;
        txn.open_table(POSTS)?;
        let mut meta = txn.open_table(META)?;
        let stored = meta.get(EPOCH)?.map(|v| v.value());
        let epoch = match stored {
            Some(epoch) => epoch,
            None => {
                // Unique per file creation: the clock's nanoseconds.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                let epoch = nanos | 1;
                meta.insert(EPOCH, epoch)?;
                epoch
            }
        };
        let starts = meta.get(STARTS)?.map_or(0, |v| v.value()) + 1;
        meta.insert(STARTS, starts)?;
        let next_sequence = meta.get(NEXT_SEQUENCE)?.map_or(1, |v| v.value());
        let next_post = meta.get(NEXT_POST)?.map_or(1, |v| v.value());
        drop(meta);
        let mut heads = Heads::load(&txn.open_table(HEADS)?, &txn.open_table(INBOX)?)?;
        heads.floor = starts << 32;
        txn.commit()?;
        let moved = move_old_queues(db, &mut heads)?;
        if moved > 0 {
            tracing::info!(
                moved,
                "store: queued messages of the first layout moved to inboxes"
            );
        }
        Ok(State {
            heads,
            epoch: format!("{epoch:016x}").into(),
            next_sequence,
            next_post,
            reading: HashMap::new(),
        })
    }

    /// The history sequence number of the next message kept.
    pub(super) fn take_sequence(&mut self) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        sequence
    }

    /// The number of the next group post.
    pub(super) fn take_post(&mut self) -> u64 {
        let number = self.next_post;
        self.next_post += 1;
        number
    }
}

/// Appends what the first layout's offline queues hold to their users' inboxes (in their
/// delivery order) and empties them, in one durable transaction; returns how many moved.
fn move_old_queues(db: &Database, heads: &mut Heads) -> Result<u64, redb::Error> {
    let read = db.begin_read()?;
    let old = match read.open_table(OLD_QUEUE) {
        Ok(old) => old,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut moved = 0;
    let mut changes = Memtable::default();
    let unjournaled = RefCell::default(); // the transaction below is durable itself
    heads.begin();
    {
        let none = Memtable::default();
        let mut tables = View::new(&read, &mut changes, (&none, None), &unjournaled)?.inboxes;
        for entry in old.iter()? {
            let (key, value) = entry?;
            let (user, priority, _) = key.value();
            let value = value.value();
            let flags = value.first().copied().unwrap_or(0);
            let at_ms = value.get(1..9).map_or_else(now_ms, |b| {
                u64::from_le_bytes(b.try_into().unwrap_or_default())
            });
            let stamp = Stamp {
                kind: OutKind::from_index(usize::from(flags >> 1)).unwrap_or(OutKind::NewMessage),
                priority: match priority {
                    0 => Priority::High,
                    2 => Priority::Low,
                    _ => Priority::Normal,
                },
                receipt: flags & 1 != 0,
                at_ms,
            };
            let head = heads.update(user, |head| {
                head.last += 1;
                head.unacked += 1;
            });
            tables.put(
                (user, head.last),
                stamp,
                value.get(9..).unwrap_or_default(),
                0,
            )?;
            moved += 1;
        }
        if moved > 0 {
            tables.write_heads(heads)?;
        }
    }
    heads.begin();
    drop((old, read));
    if moved > 0 {
        let txn = db.begin_write()?;
        changes.flush(&txn)?;
        txn.open_table(OLD_QUEUE)?.retain(|_, _| false)?;
        txn.commit()?;
    }
    Ok(moved)
}

/// Every group membership and setting in the file (read once at start). A settings
/// record that does not parse closes its group ([`Settings::from_stored`]) rather than
/// stop the gateway.
///
/// [`Settings::from_stored`]: crate::protocol::access::Settings::from_stored
pub(super) fn groups(db: &Database) -> Result<super::StoredGroups, redb::Error> {
    let read = db.begin_read()?;
    let mut groups = super::StoredGroups::default();
    for entry in read.open_table(MEMBERS)?.iter()? {
        let (key, _) = entry?;
        let (group, user) = key.value();
        groups.members.push((group.into(), user.into()));
    }
    for entry in read.open_table(GROUP_SETTINGS)?.iter()? {
        let (group, record) = entry?;
        let settings =
            crate::protocol::access::Settings::from_stored(record.value(), group.value());
        groups.settings.push((group.value().into(), settings));
    }
    Ok(groups)
}
