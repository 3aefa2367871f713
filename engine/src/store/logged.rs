//! What a batch changes, as the journal records it: every put and remove of one key in
//! one table, encoded as an op. [`Logged`] tables write them as the batch goes ([`Redo`])
//! into the active memtable, and read through the memtables to the file; [`read_op`]
//! reads the ops back for the replay.
//!
//! An op is `[table name length u8][table name][kind u8][key length u32][key]` and, for a
//! put, `[value length u32][value]` (little-endian), the key and value as redb encodes
//! them.

use std::{cell::RefCell, cmp::Ordering, iter::Peekable, ops::RangeBounds};

use redb::{AccessGuard, Key, ReadOnlyTable, ReadTransaction, TableDefinition, TableHandle, Value};

use super::memtable::{Mem, MemBounds, MemEntry, MemKey};

/// An op's kind byte: a put.
pub(super) const PUT: u8 = 1;
/// An op's kind byte: a remove.
const REMOVE: u8 = 2;

/// The changes one batch makes, encoded as journal ops. The batch's tables share it
/// ([`Logged`]); the worker appends it to the journal as the batch's record.
///
/// Hot path (every store write): one buffer for the store thread's life, cleared and not
/// freed, so encoding an op allocates nothing once it has grown.
#[derive(Debug, Default)]
pub(super) struct Redo {
    ops: Vec<u8>,
}

impl Redo {
    /// Whether the transaction changed nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Forgets the ops (after they were journaled, or their transaction was abandoned);
    /// keeps the buffer.
    pub(super) fn clear(&mut self) {
        self.ops.clear();
    }

    /// The encoded ops.
    pub(super) fn ops(&self) -> &[u8] {
        &self.ops
    }

    fn op(&mut self, table: &str, kind: u8, key: &[u8], value: Option<&[u8]>) {
        let ops = &mut self.ops;
        ops.push(table.len() as u8);
        ops.extend_from_slice(table.as_bytes());
        ops.push(kind);
        ops.extend_from_slice(&(key.len() as u32).to_le_bytes());
        ops.extend_from_slice(key);
        if let Some(value) = value {
            ops.extend_from_slice(&(value.len() as u32).to_le_bytes());
            ops.extend_from_slice(value);
        }
    }
}

/// One table as a batch sees it: the batch's own changes, over the active memtable (what
/// the journal holds since the last freeze), over the frozen one a checkpoint is writing
/// (if any), over the file as the last checkpoint left it. Every change goes into the
/// batch's memtable, which joins the active one once its journal record is synced, and
/// into the batch's [`Redo`]; writes go only through [`Logged::insert`] and
/// [`Logged::remove`], so none can miss the journal.
pub(super) struct Logged<'a, K: Key + 'static, V: Value + 'static> {
    base: ReadOnlyTable<K, V>,
    batch: &'a mut Mem<K>,
    /// The active memtable, then the frozen one.
    below: [Option<&'a Mem<K>>; 2],
    name: &'static str,
    redo: &'a RefCell<Redo>,
}

/// The memtable layers of one table, newest first: the batch's, the active one, the
/// frozen one (if a checkpoint is under way).
pub(super) type Layers<'a, K> = (&'a mut Mem<K>, &'a Mem<K>, Option<&'a Mem<K>>);

impl<'a, K: Key + 'static, V: Value + 'static> Logged<'a, K, V> {
    /// Opens `definition` over `read` (the file) and the memtable `layers`, journaling
    /// its changes into `redo`.
    pub(super) fn open(
        read: &ReadTransaction,
        definition: &'static TableDefinition<'static, K, V>,
        (batch, active, frozen): Layers<'a, K>,
        redo: &'a RefCell<Redo>,
    ) -> Result<Self, redb::TableError> {
        debug_assert!(definition.name().len() <= usize::from(u8::MAX));
        Ok(Logged {
            base: read.open_table(*definition)?,
            batch,
            below: [Some(active), frozen],
            name: definition.name(),
            redo,
        })
    }

    /// Inserts (or replaces) `key`'s value.
    pub(super) fn insert<'k, 'v>(
        &mut self,
        key: K::SelfType<'k>,
        value: V::SelfType<'v>,
    ) -> Result<(), redb::StorageError> {
        let value = V::as_bytes(&value);
        self.batch.put(&key, value.as_ref());
        let key = K::as_bytes(&key);
        self.redo
            .borrow_mut()
            .op(self.name, PUT, key.as_ref(), Some(value.as_ref()));
        Ok(())
    }

    /// Removes `key` (nothing if it is not there; the remove is journaled either way).
    pub(super) fn remove<'k>(&mut self, key: K::SelfType<'k>) -> Result<(), redb::StorageError> {
        self.batch.remove(&key);
        let key = K::as_bytes(&key);
        self.redo
            .borrow_mut()
            .op(self.name, REMOVE, key.as_ref(), None);
        Ok(())
    }

    /// `key`'s value, from the newest layer that has it.
    ///
    /// Hot path (the dedup lookup of every message): the key is encoded once, and only if
    /// a memtable holds anything.
    pub(super) fn get<'k>(
        &self,
        key: K::SelfType<'k>,
    ) -> Result<Option<Found<'_, V>>, redb::StorageError> {
        let mut encoded = None;
        let layers = std::iter::once(&*self.batch).chain(self.below.into_iter().flatten());
        for mem in layers.filter(|mem| !mem.is_empty()) {
            let encoded = encoded.get_or_insert_with(|| MemKey::of(&key));
            if let Some(change) = mem.get(encoded) {
                return Ok(change.map(Found::Mem));
            }
        }
        Ok(self.base.get(&key)?.map(Found::Base))
    }

    /// The entries within `range`, in key order.
    pub(super) fn range<'k>(
        &self,
        range: impl RangeBounds<K::SelfType<'k>>,
    ) -> Result<Merged<'_, K, V>, redb::StorageError> {
        self.merged(range, false)
    }

    /// The entries within `range`, newest key first.
    pub(super) fn range_rev<'k>(
        &self,
        range: impl RangeBounds<K::SelfType<'k>>,
    ) -> Result<Merged<'_, K, V>, redb::StorageError> {
        self.merged(range, true)
    }

    /// Every entry, in key order.
    pub(super) fn iter(&self) -> Result<Merged<'_, K, V>, redb::StorageError> {
        self.merged(.., false)
    }

    fn merged<'k>(
        &self,
        range: impl RangeBounds<K::SelfType<'k>>,
        descending: bool,
    ) -> Result<Merged<'_, K, V>, redb::StorageError> {
        let (start, end) = (range.start_bound(), range.end_bound());
        let encoded = || (start.map(MemKey::of), end.map(MemKey::of));
        let base = self.base.range::<K::SelfType<'k>>((start, end))?;
        fn below<'s, K: Key>(
            mem: Option<&'s Mem<K>>,
            bounds: MemBounds<K>,
            descending: bool,
        ) -> Box<dyn Iterator<Item = MemEntry<'s>> + 's> {
            match mem {
                Some(mem) => mem.range(bounds, descending),
                None => Box::new(std::iter::empty()),
            }
        }
        Ok(Merged {
            mems: [
                self.batch.range(encoded(), descending).peekable(),
                below(self.below[0], encoded(), descending).peekable(),
                below(self.below[1], encoded(), descending).peekable(),
            ],
            base: if descending {
                Box::new(base.rev())
            } else {
                Box::new(base)
            },
            base_head: None,
            descending,
        })
    }
}

/// A key or value read through [`Logged`]: from a memtable, or from the file.
pub(super) enum Found<'a, T: Value + 'static> {
    /// Encoded bytes in a memtable.
    Mem(&'a [u8]),
    /// The file's.
    Base(AccessGuard<'static, T>),
}

impl<T: Value + 'static> Found<'_, T> {
    /// The decoded value.
    pub(super) fn value(&self) -> T::SelfType<'_> {
        match self {
            Found::Mem(bytes) => T::from_bytes(bytes),
            Found::Base(guard) => guard.value(),
        }
    }
}

/// A file entry and its key's encoding (made only when a memtable entry is compared).
type BaseEntry<K, V> = (
    AccessGuard<'static, K>,
    AccessGuard<'static, V>,
    Option<Vec<u8>>,
);

/// A range over the layers of one table, merged: where layers hold the same key the
/// newest wins, and a remove hides the key.
pub(super) struct Merged<'a, K: Key + 'static, V: Value + 'static> {
    /// The memtables' entries, newest first.
    mems: [Peekable<Box<dyn Iterator<Item = MemEntry<'a>> + 'a>>; 3],
    base: Box<dyn Iterator<Item = BaseItem<K, V>>>,
    base_head: Option<BaseEntry<K, V>>,
    descending: bool,
}

/// What redb's range yields.
type BaseItem<K, V> =
    Result<(AccessGuard<'static, K>, AccessGuard<'static, V>), redb::StorageError>;

impl<'a, K: Key + 'static, V: Value + 'static> Iterator for Merged<'a, K, V> {
    type Item = Result<(Found<'a, K>, Found<'a, V>), redb::StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.base_head.is_none() {
                match self.base.next() {
                    Some(Ok((k, v))) => self.base_head = Some((k, v, None)),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
                }
            }
            // The first key in the walk's order among the memtables' heads; on a tie the
            // newest memtable's.
            let order = |a: &[u8], b: &[u8]| {
                let o = K::compare(a, b);
                if self.descending {
                    o.reverse()
                } else {
                    o
                }
            };
            let mut first: Option<(usize, &[u8])> = None;
            for (i, mem) in self.mems.iter_mut().enumerate() {
                if let Some(&(key, _)) = mem.peek() {
                    if first.is_none_or(|(_, best)| order(key, best) == Ordering::Less) {
                        first = Some((i, key));
                    }
                }
            }
            let Some((i, key)) = first else {
                // Only the file is left.
                let (k, v, _) = self.base_head.take()?;
                return Some(Ok((Found::Base(k), Found::Base(v))));
            };
            if let Some((k, _, encoded)) = &mut self.base_head {
                let encoded =
                    encoded.get_or_insert_with(|| K::as_bytes(&k.value()).as_ref().to_vec());
                match order(encoded, key) {
                    Ordering::Less => {
                        let (k, v, _) = self.base_head.take()?;
                        return Some(Ok((Found::Base(k), Found::Base(v))));
                    }
                    Ordering::Equal => self.base_head = None, // hidden by the memtable's
                    Ordering::Greater => {}
                }
            }
            let (key, value) = self.mems[i].next()?;
            for other in &mut self.mems[i + 1..] {
                if other
                    .peek()
                    .is_some_and(|&(k, _)| K::compare(k, key) == Ordering::Equal)
                {
                    other.next(); // older
                }
            }
            if let Some(value) = value {
                return Some(Ok((Found::Mem(key), Found::Mem(value))));
            }
        }
    }
}

/// One op as read back.
pub(super) struct Op<'a> {
    /// The table's name.
    pub table: &'a str,
    /// The key, as redb encodes it.
    pub key: &'a [u8],
    /// The value of a put; `None` for a remove.
    pub value: Option<&'a [u8]>,
}

/// Reads one op off the front of `ops`; `None` if it is cut short or of an unknown kind.
pub(super) fn read_op<'a>(ops: &mut &'a [u8]) -> Option<Op<'a>> {
    fn take<'a>(ops: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = ops.split_at_checked(n)?;
        *ops = rest;
        Some(head)
    }
    fn take_len(ops: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(ops, 4)?.try_into().ok()?) as usize)
    }
    let name_len = usize::from(*take(ops, 1)?.first()?);
    let table = std::str::from_utf8(take(ops, name_len)?).ok()?;
    let kind = *take(ops, 1)?.first()?;
    let key_len = take_len(ops)?;
    let key = take(ops, key_len)?;
    let value = match kind {
        PUT => {
            let value_len = take_len(ops)?;
            Some(take(ops, value_len)?)
        }
        REMOVE => None,
        _ => return None,
    };
    Some(Op { table, key, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::INBOX;
    use redb::{Database, ReadableDatabase};

    type InboxKey = (&'static str, u64);

    /// `(seq, body)` of every row of ann's inbox, in the order the range gives them.
    fn rows<'a>(
        entries: impl Iterator<
            Item = Result<(Found<'a, InboxKey>, Found<'a, &'static [u8]>), redb::StorageError>,
        >,
    ) -> Vec<(u64, String)> {
        entries
            .map(|entry| {
                let (key, value) = entry.unwrap();
                let body = String::from_utf8(value.value().to_vec()).unwrap();
                (key.value().1, body)
            })
            .collect()
    }

    #[test]
    fn reads_merge_the_memtables_over_the_file_newest_first() {
        let path = std::env::temp_dir().join(format!("logged-{}.redb", std::process::id()));
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut inbox = txn.open_table(INBOX).unwrap();
            for seq in [1, 2, 3, 5] {
                inbox.insert(("ann", seq), &b"file"[..]).unwrap();
            }
            inbox.insert(("bob", 1), &b"file"[..]).unwrap();
        }
        txn.commit().unwrap();
        let redo = RefCell::default();
        let mut frozen = Mem::default();
        frozen.put(&("ann", 2), b"frozen");
        frozen.remove(&("ann", 3));
        frozen.put(&("ann", 4), b"frozen");
        let mut active = Mem::default();
        active.put(&("ann", 4), b"active");
        active.put(&("ann", 7), b"active");
        let mut batch = Mem::default();
        let read = db.begin_read().unwrap();
        let layers = (&mut batch, &active, Some(&frozen));
        let mut inbox = Logged::open(&read, &INBOX, layers, &redo).unwrap();
        inbox.insert(("ann", 4), &b"batch"[..]).unwrap();
        inbox.remove(("ann", 5)).unwrap();
        inbox.insert(("ann", 6), &b"batch"[..]).unwrap();

        let expected = vec![
            (1, "file".to_owned()),
            (2, "frozen".to_owned()),
            (4, "batch".to_owned()),
            (6, "batch".to_owned()),
            (7, "active".to_owned()),
        ];
        let ann = ("ann", 0)..=("ann", u64::MAX);
        assert_eq!(rows(inbox.range(ann.clone()).unwrap()), expected);
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(rows(inbox.range_rev(ann).unwrap()), reversed);
        assert_eq!(
            rows(inbox.range(("ann", 2)..("ann", 5)).unwrap()),
            expected[1..3]
        );
        assert_eq!(rows(inbox.iter().unwrap()).len(), 6, "bob's row too");
        let get = |seq| inbox.get(("ann", seq)).unwrap().map(|v| v.value().to_vec());
        assert_eq!(get(1).as_deref(), Some(&b"file"[..]));
        assert_eq!(get(2).as_deref(), Some(&b"frozen"[..]));
        assert_eq!(get(3), None, "removed in the frozen memtable");
        assert_eq!(get(4).as_deref(), Some(&b"batch"[..]));
        assert_eq!(get(5), None, "removed in the batch");
        assert_eq!(get(7).as_deref(), Some(&b"active"[..]));
        drop(inbox);
        let ops = redo.borrow().ops().to_vec();
        let ops = &mut &ops[..];
        let mut journaled = Vec::new();
        while let Some(op) = read_op(ops) {
            let (_, seq) = <InboxKey as Value>::from_bytes(op.key);
            journaled.push((op.table.to_owned(), seq, op.value.is_some()));
        }
        assert_eq!(
            journaled,
            [
                ("inbox".to_owned(), 4, true),
                ("inbox".to_owned(), 5, false),
                ("inbox".to_owned(), 6, true)
            ],
            "every write is journaled, in order"
        );
        drop((read, db));
        let _ = std::fs::remove_file(path);
    }

    /// A small deterministic generator (xorshift), so a failing seed replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn the_layers_read_as_one_table_through_batches_freezes_checkpoints_and_failures() {
        let path = std::env::temp_dir().join(format!("logged-model-{}.redb", std::process::id()));
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(INBOX).unwrap();
        txn.commit().unwrap();
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            // What the table must read as, and the layers the store keeps.
            let mut model: std::collections::BTreeMap<(String, u64), String> = Default::default();
            let (mut active, mut frozen): (Mem<InboxKey>, Option<Mem<InboxKey>>) =
                (Mem::default(), None);
            let users = ["al", "ann", "bo"];
            for step in 0..60 {
                // One batch of writes; one in eight fails and leaves nothing.
                let mut batch = Mem::default();
                let mut changed = model.clone();
                let redo = RefCell::default();
                let read = db.begin_read().unwrap();
                {
                    let layers = (&mut batch, &active, frozen.as_ref());
                    let mut inbox = Logged::open(&read, &INBOX, layers, &redo).unwrap();
                    for _ in 0..rng.below(6) {
                        let user = users[rng.below(3) as usize];
                        let seq = rng.below(100);
                        if rng.below(3) == 0 {
                            inbox.remove((user, seq)).unwrap();
                            changed.remove(&(user.to_owned(), seq));
                        } else {
                            let body = format!("{seed}-{step}-{seq}");
                            inbox.insert((user, seq), body.as_bytes()).unwrap();
                            changed.insert((user.to_owned(), seq), body);
                        }
                    }
                    // The batch reads its own writes.
                    let seen: Vec<_> = inbox
                        .iter()
                        .unwrap()
                        .map(|e| {
                            let (k, v) = e.unwrap();
                            let (user, seq) = k.value();
                            let body = String::from_utf8(v.value().to_vec()).unwrap();
                            ((user.to_owned(), seq), body)
                        })
                        .collect();
                    let expected: Vec<_> = changed.clone().into_iter().collect();
                    assert_eq!(seen, expected, "seed {seed} step {step}: ascending");
                    let user = users[rng.below(3) as usize];
                    let (low, high) = (rng.below(100), rng.below(100));
                    let within: Vec<u64> = inbox
                        .range_rev((user, low)..=(user, high))
                        .unwrap()
                        .map(|e| e.unwrap().0.value().1)
                        .collect();
                    let expected: Vec<u64> = changed
                        .keys()
                        .filter(|(u, s)| u == user && (low..=high).contains(s))
                        .map(|(_, s)| *s)
                        .rev()
                        .collect();
                    assert_eq!(within, expected, "seed {seed} step {step}: descending");
                    for probe in 0..100 {
                        let got = inbox
                            .get((user, probe))
                            .unwrap()
                            .map(|v| v.value().to_vec());
                        let want = changed
                            .get(&(user.to_owned(), probe))
                            .map(|b| b.as_bytes().to_vec());
                        assert_eq!(got, want, "seed {seed} step {step}: get {probe}");
                    }
                }
                drop(read);
                if rng.below(8) != 0 {
                    active.absorb(&mut batch); // its record synced
                    model = changed;
                }
                // Now and then a freeze, and a checkpoint that lands.
                if frozen.is_none() && rng.below(4) == 0 {
                    frozen = Some(std::mem::take(&mut active));
                } else if frozen.is_some() && rng.below(3) == 0 {
                    let all = crate::store::memtable::Memtable {
                        inbox: frozen.take().unwrap(),
                        ..Default::default()
                    };
                    let txn = db.begin_write().unwrap();
                    all.flush(&txn).unwrap();
                    txn.commit().unwrap();
                }
            }
            // Start the next seed from an empty table.
            let txn = db.begin_write().unwrap();
            txn.delete_table(INBOX).unwrap();
            txn.open_table(INBOX).unwrap();
            txn.commit().unwrap();
        }
        drop(db);
        let _ = std::fs::remove_file(path);
    }
}
