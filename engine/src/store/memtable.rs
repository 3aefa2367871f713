//! What the journal holds and the file does not yet: every put and remove since the last
//! checkpoint, per table, in memory and in key order.
//!
//! A batch writes into a memtable of its own (and its redo into the journal), which joins
//! the active [`Memtable`] once the record is synced (a batch that fails leaves nothing);
//! reads see them above the frozen one being checkpointed, above the file as the last
//! checkpoint left it ([`super::logged::Logged`]). A checkpoint writes a frozen memtable into the file in
//! one durable transaction, in key order, on its own thread ([`super::checkpoint`]): the
//! acks never wait for B-tree pages. A key put and removed between two checkpoints (an
//! inbox event a device acknowledged within the interval, a head moved many times) never
//! reaches the file at all.
//!
//! Keys and values are kept as redb encodes them, ordered by the table's own key order
//! ([`Key::compare`]), so a range over a memtable and a range over the file merge.

use std::{cmp::Ordering, collections::BTreeMap, marker::PhantomData, ops::Bound};

use redb::{Key, TableDefinition, Value, WriteTransaction};

use super::schema::{GROUP_SETTINGS, HEADS, HISTORY, INBOX, MEMBERS, META, POSTS, RECEIVED};

/// A key as redb encodes it, ordered as `K` orders its encodings.
pub(super) struct MemKey<K> {
    bytes: Box<[u8]>,
    key: PhantomData<fn() -> K>,
}

impl<K: Key> MemKey<K> {
    /// The encoding of `key`.
    pub(super) fn of(key: &K::SelfType<'_>) -> Self {
        MemKey {
            bytes: K::as_bytes(key).as_ref().into(),
            key: PhantomData,
        }
    }

    /// The encoded bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<K: Key> Ord for MemKey<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        K::compare(&self.bytes, &other.bytes)
    }
}

impl<K: Key> PartialOrd for MemKey<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Key> PartialEq for MemKey<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<K: Key> Eq for MemKey<K> {}

/// One table's changes since the last checkpoint: a value for a put, `None` for a remove
/// (which hides what the layers below hold).
///
/// Hot path (every store write): one map insert, the key and value copied once.
pub(super) struct Mem<K> {
    changes: BTreeMap<MemKey<K>, Option<Box<[u8]>>>,
}

impl<K> Default for Mem<K> {
    fn default() -> Self {
        Mem {
            changes: BTreeMap::new(),
        }
    }
}

/// A memtable range's bounds, as encoded keys.
pub(super) type MemBounds<K> = (Bound<MemKey<K>>, Bound<MemKey<K>>);

/// An entry of a memtable range: the encoded key, and the value (`None`: removed).
pub(super) type MemEntry<'a> = (&'a [u8], Option<&'a [u8]>);

impl<K: Key> Mem<K> {
    /// Notes a put of `value` (encoded) under `key`.
    pub(super) fn put(&mut self, key: &K::SelfType<'_>, value: &[u8]) {
        self.changes.insert(MemKey::of(key), Some(value.into()));
    }

    /// Notes a remove of `key`.
    pub(super) fn remove(&mut self, key: &K::SelfType<'_>) {
        self.changes.insert(MemKey::of(key), None);
    }

    /// Whether it changes nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// What this memtable says of `key` (encoded): `None` if nothing, `Some(None)` if
    /// removed.
    pub(super) fn get(&self, key: &MemKey<K>) -> Option<Option<&[u8]>> {
        self.changes.get(key).map(|v| v.as_deref())
    }

    /// The changes within `bounds` (encoded keys), ascending or descending.
    pub(super) fn range<'a>(
        &'a self,
        (start, end): MemBounds<K>,
        descending: bool,
    ) -> Box<dyn Iterator<Item = MemEntry<'a>> + 'a> {
        let empty = self.changes.is_empty()
            || match (&start, &end) {
                (
                    Bound::Included(s) | Bound::Excluded(s),
                    Bound::Included(e) | Bound::Excluded(e),
                ) => {
                    let both_included =
                        matches!((&start, &end), (Bound::Included(_), Bound::Included(_)));
                    // BTreeMap::range panics on these; redb answers nothing.
                    s > e || (s == e && !both_included)
                }
                _ => false,
            };
        if empty {
            return Box::new(std::iter::empty());
        }
        let entries = self
            .changes
            .range((start, end))
            .map(|(k, v)| (k.bytes(), v.as_deref()));
        if descending {
            Box::new(entries.rev())
        } else {
            Box::new(entries)
        }
    }

    /// Writes every change into `definition` in `txn`, in key order.
    fn flush<V: Value + 'static>(
        &self,
        txn: &WriteTransaction,
        definition: TableDefinition<'static, K, V>,
    ) -> Result<(), redb::Error>
    where
        K: 'static,
    {
        let mut table = txn.open_table(definition)?;
        for (key, value) in &self.changes {
            let key = K::from_bytes(key.bytes());
            match value {
                Some(value) => {
                    table.insert(&key, V::from_bytes(value))?;
                }
                None => {
                    table.remove(&key)?;
                }
            }
        }
        Ok(())
    }

    /// How many keys it changes.
    fn len(&self) -> usize {
        self.changes.len()
    }

    /// Takes in `newer`'s changes (which win), leaving it empty. Moves the entries, no copy.
    pub(super) fn absorb(&mut self, newer: &mut Mem<K>) {
        for (key, value) in std::mem::take(&mut newer.changes) {
            self.changes.insert(key, value);
        }
    }
}

/// Every journaled table's changes since a checkpoint.
#[derive(Default)]
pub(super) struct Memtable {
    /// [`INBOX`].
    pub inbox: Mem<(&'static str, u64)>,
    /// [`POSTS`].
    pub posts: Mem<u64>,
    /// [`HEADS`].
    pub heads: Mem<&'static str>,
    /// [`HISTORY`].
    pub history: Mem<(&'static str, &'static str, u64, u64)>,
    /// [`RECEIVED`].
    pub received: Mem<(&'static str, &'static str, &'static str)>,
    /// [`MEMBERS`].
    pub members: Mem<(&'static str, &'static str)>,
    /// [`GROUP_SETTINGS`].
    pub group_settings: Mem<&'static str>,
    /// [`META`].
    pub meta: Mem<&'static str>,
}

impl Memtable {
    /// Writes every change into the file's tables in `txn` (a checkpoint's transaction).
    pub(super) fn flush(&self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        self.inbox.flush(txn, INBOX)?;
        self.posts.flush(txn, POSTS)?;
        self.heads.flush(txn, HEADS)?;
        self.history.flush(txn, HISTORY)?;
        self.received.flush(txn, RECEIVED)?;
        self.members.flush(txn, MEMBERS)?;
        self.group_settings.flush(txn, GROUP_SETTINGS)?;
        self.meta.flush(txn, META)
    }

    /// Takes in a batch's changes once its journal record is synced, leaving it empty.
    pub(super) fn absorb(&mut self, batch: &mut Memtable) {
        self.inbox.absorb(&mut batch.inbox);
        self.posts.absorb(&mut batch.posts);
        self.heads.absorb(&mut batch.heads);
        self.history.absorb(&mut batch.history);
        self.received.absorb(&mut batch.received);
        self.members.absorb(&mut batch.members);
        self.group_settings.absorb(&mut batch.group_settings);
        self.meta.absorb(&mut batch.meta);
    }

    /// How many keys it changes in all.
    pub(super) fn len(&self) -> usize {
        self.inbox.len()
            + self.posts.len()
            + self.heads.len()
            + self.history.len()
            + self.received.len()
            + self.members.len()
            + self.group_settings.len()
            + self.meta.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(
        start: Bound<(&str, u64)>,
        end: Bound<(&str, u64)>,
    ) -> MemBounds<(&'static str, u64)> {
        (start.map(|k| MemKey::of(&k)), end.map(|k| MemKey::of(&k)))
    }

    #[test]
    fn keys_follow_the_tables_order_not_their_bytes() {
        let mut mem: Mem<(&'static str, u64)> = Mem::default();
        // Little-endian seqs: byte order would put 256 before 1.
        for seq in [256, 1, 2] {
            mem.put(&("ann", seq), b"x");
        }
        mem.put(&("al", 9), b"y");
        mem.remove(&("ann", 2));
        let all = bounds(Bound::Unbounded, Bound::Unbounded);
        let keys: Vec<(String, u64, bool)> = mem
            .range(all, false)
            .map(|(k, v)| {
                let (user, seq) = <(&str, u64)>::from_bytes(k);
                (user.to_owned(), seq, v.is_some())
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("al".into(), 9, true),
                ("ann".into(), 1, true),
                ("ann".into(), 2, false),
                ("ann".into(), 256, true)
            ]
        );
        let within = bounds(Bound::Included(("ann", 2)), Bound::Included(("ann", 300)));
        assert_eq!(mem.range(within, true).count(), 2, "descending, bounded");
        assert_eq!(mem.get(&MemKey::of(&("ann", 2))), Some(None), "removed");
        assert_eq!(mem.get(&MemKey::of(&("ann", 3))), None, "never written");
    }

    #[test]
    fn an_empty_or_inverted_range_is_empty_not_a_panic() {
        let mut mem: Mem<(&'static str, u64)> = Mem::default();
        mem.put(&("ann", 1), b"x");
        let inverted = bounds(Bound::Included(("ann", 5)), Bound::Included(("ann", 4)));
        assert_eq!(mem.range(inverted, false).count(), 0);
        let point = bounds(Bound::Excluded(("ann", 1)), Bound::Excluded(("ann", 1)));
        assert_eq!(mem.range(point, false).count(), 0);
    }
}
