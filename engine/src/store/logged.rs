//! What a write transaction changes, as the journal records it: every put and remove of
//! one key in one table, encoded as an op. [`Logged`] tables write them as the
//! transaction goes ([`Redo`]); [`read_op`] reads them back for the replay.
//!
//! An op is `[table name length u8][table name][kind u8][key length u32][key]` and, for a
//! put, `[value length u32][value]` (little-endian), the key and value as redb encodes
//! them.

use std::{cell::RefCell, ops::Deref};

use redb::{Key, Table, TableDefinition, TableHandle, Value, WriteTransaction};

/// An op's kind byte: a put.
pub(super) const PUT: u8 = 1;
/// An op's kind byte: a remove.
const REMOVE: u8 = 2;

/// The changes one write transaction makes, encoded as journal ops. The transaction's
/// tables share it ([`Logged`]); the worker appends it to the journal at commit.
///
/// Hot path (every store write): one buffer for the store thread's life, cleared and not
/// freed, so encoding an op allocates nothing once it has grown. It is filled for every
/// transaction, journaled or not: the worker decides how to commit only after applying.
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

/// A table of a write transaction whose every change also goes into the transaction's
/// [`Redo`]. Reads go to the table (it derefs to it); writes only through
/// [`Logged::insert`] and [`Logged::remove`], so none can miss the journal.
pub(super) struct Logged<'txn, K: Key + 'static, V: Value + 'static> {
    table: Table<'txn, K, V>,
    name: &'static str,
    redo: &'txn RefCell<Redo>,
}

impl<'txn, K: Key + 'static, V: Value + 'static> Logged<'txn, K, V> {
    /// Opens `definition` in `txn`, journaling its changes into `redo`.
    pub(super) fn open(
        txn: &'txn WriteTransaction,
        definition: &'static TableDefinition<'static, K, V>,
        redo: &'txn RefCell<Redo>,
    ) -> Result<Self, redb::TableError> {
        debug_assert!(definition.name().len() <= usize::from(u8::MAX));
        Ok(Logged {
            table: txn.open_table(*definition)?,
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
        self.table.insert(&key, &value)?;
        let key = K::as_bytes(&key);
        let value = V::as_bytes(&value);
        let op = (key.as_ref(), Some(value.as_ref()));
        self.redo.borrow_mut().op(self.name, PUT, op.0, op.1);
        Ok(())
    }

    /// Removes `key` (nothing if it is not there).
    pub(super) fn remove<'k>(&mut self, key: K::SelfType<'k>) -> Result<(), redb::StorageError> {
        if self.table.remove(&key)?.is_some() {
            let key = K::as_bytes(&key);
            self.redo
                .borrow_mut()
                .op(self.name, REMOVE, key.as_ref(), None);
        }
        Ok(())
    }
}

impl<'txn, K: Key + 'static, V: Value + 'static> Deref for Logged<'txn, K, V> {
    type Target = Table<'txn, K, V>;

    fn deref(&self) -> &Self::Target {
        &self.table
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
