//! The store's commit point when it is behind: an append-only redo journal in front of the
//! redb file.
//!
//! When commands wait already once a batch is applied, its transaction is committed to
//! redb without durability (its pages stay in memory, nothing is written to the file), and
//! every change it made, a put or a remove of one key in one table, is appended to
//! `journal.log` as one record. The record is synced (one `pwrite` and one `fdatasync` per
//! batch, about the size of what the batch stores) before anyone is answered. So an ack
//! costs the journal's append, not redb's copy of every B-tree page the batch touches.
//!
//! The next durable redb commit, a checkpoint, holds every record so far: the worker makes
//! one when the store has caught up, or after [`CHECKPOINT_BYTES`] of journal or
//! [`CHECKPOINT_INTERVAL`]; the journal then starts again from the start of the file. At
//! open, the records the last checkpoint does not hold are applied again
//! ([`Journal::recover`]). Redoing puts and removes in order is idempotent, so replaying a
//! record a checkpoint already holds does no harm.
//!
//! The file is never cut, and it grows by [`GROW_BYTES`] of zeros at a time: an append
//! inside it changes no file size and allocates no block, so its `fdatasync` writes the
//! record and no file system metadata (0.7× the time and CPU of an append that grows the
//! file, on the dev VM: `benches/tools/sync_append.py`). After a checkpoint the journal is
//! written over from the start.
//!
//! A record is `[length u32][crc32 u32][number u64][ops]` (little-endian), the checksum
//! covering the number and the ops (`logged` has their format). Numbers follow one
//! another across checkpoints; [`JOURNAL_THROUGH`] in the file holds the last one a
//! checkpoint includes. Replay skips the records a checkpoint holds (the journal is written
//! over from its start, so older records follow the newer ones) and stops at a short
//! record, a bad checksum, a zero length or a number out of turn: a torn last write, or
//! the end of what this checkpoint's records wrote over.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::fs::FileExt,
    path::Path,
    time::Duration,
};

use redb::{Database, Key, ReadableDatabase, Table, TableHandle, Value, WriteTransaction};
use tracing::warn;

use super::{
    history::{HISTORY, RECEIVED},
    inbox::{HEADS, INBOX, POSTS},
    logged::{read_op, Op, Redo},
    state::{MEMBERS, META},
};

/// Journal bytes after which the next commit is a checkpoint, however far behind the
/// store is: bounds the replay at start and the pages redb holds dirty in memory (past
/// half of `--store-cache-mb` it writes them out one by one: benches/RESULTS.md).
pub(super) const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Time after the first record after which the next commit is a checkpoint (measured
/// against 10 s: 4× lower ack p50 at 20,000 msg/s to offline users).
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// The [`META`] key of the number of the last record a checkpoint holds.
pub(super) const JOURNAL_THROUGH: &str = "journal_through";
/// The journal's file name in the data directory.
const FILE_NAME: &str = "journal.log";
/// `[length][crc32][number]`.
const RECORD_HEADER_BYTES: usize = 16;
/// How much the file grows by when a record does not fit: zeros, which end a replay.
const GROW_BYTES: u64 = 1 << 20;
/// The journal file, open for appending.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    /// Bytes of whole, synced records: where the next record goes (a failed append leaves
    /// a zero length here).
    len: u64,
    /// The file's size: [`GROW_BYTES`] steps, or what an earlier run left.
    allocated: u64,
    /// The number of the next record.
    next: u64,
}

impl Journal {
    /// Opens the journal in `dir` and applies to `db` what the last checkpoint does not
    /// hold (in one durable transaction). The next record goes at the start of the file:
    /// what is left of older records after it has lower numbers than the checkpoint names,
    /// or does not parse.
    pub(super) fn recover(dir: &Path, db: &Database) -> Result<Journal, redb::Error> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(FILE_NAME))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let through = checkpointed_through(db)?;
        let records = Records::after(&bytes, through);
        let mut last = through;
        let mut replayed = 0u64;
        if records.clone().next().is_some() {
            let txn = db.begin_write()?;
            {
                let mut tables = Replay::open(&txn)?;
                for (number, ops) in records {
                    tables.apply(ops)?;
                    last = number;
                    replayed += 1;
                }
                tables.meta.insert(JOURNAL_THROUGH, last)?;
            }
            txn.commit()?;
            warn!(
                records = replayed,
                through = last,
                "store: journal replayed (what the last checkpoint did not hold: the last run stopped without one)"
            );
        }
        Ok(Journal {
            file,
            len: 0,
            allocated: bytes.len() as u64,
            next: last + 1,
        })
    }

    /// Bytes journaled since the last checkpoint.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The number of the last record appended (what a checkpoint now holds).
    pub(super) fn last_number(&self) -> u64 {
        self.next - 1
    }

    /// Appends `redo` as one record and syncs it: when this returns `Ok`, the batch is
    /// durable. On an error, the file is cut back to its last whole record.
    pub(super) fn append(&mut self, redo: &Redo, scratch: &mut Vec<u8>) -> io::Result<()> {
        scratch.clear();
        scratch.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
        scratch[8..16].copy_from_slice(&self.next.to_le_bytes());
        scratch.extend_from_slice(redo.ops());
        let length = u32::try_from(scratch.len() - 8).map_err(io::Error::other)?;
        let crc = crc32fast::hash(&scratch[8..]);
        scratch[0..4].copy_from_slice(&length.to_le_bytes());
        scratch[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self
            .make_room(scratch.len() as u64)
            .and_then(|()| self.file.write_all_at(scratch, self.len))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Best effort: a record left whole would be replayed although its senders
            // are told it failed (a retry is then recognised by its messageId). A zero
            // length ends the replay here.
            let _ = self.file.write_all_at(&[0; RECORD_HEADER_BYTES], self.len);
            return Err(e);
        }
        self.len += scratch.len() as u64;
        self.next += 1;
        Ok(())
    }

    /// After a durable commit that holds every record: the next record goes at the start
    /// of the file. The records there are skipped at replay by their numbers until
    /// written over.
    pub(super) fn checkpointed(&mut self) {
        self.len = 0;
    }

    /// After the last checkpoint of a clean stop: a zero length at the start of the file,
    /// synced, so that the next open has nothing to read and a journal that does not start
    /// with one always means the last run stopped without a checkpoint.
    pub(super) fn close_empty(&mut self) -> io::Result<()> {
        self.len = 0;
        self.file.write_all_at(&[0; RECORD_HEADER_BYTES], 0)?;
        self.file.sync_data()
    }

    /// Grows the file with zeros, in [`GROW_BYTES`] steps, until `record` more bytes fit
    /// after the last record. The record's `fdatasync` then also makes the new size
    /// durable; the appends after it, up to the new end, change no metadata.
    fn make_room(&mut self, record: u64) -> io::Result<()> {
        let needed = self.len + record;
        if needed <= self.allocated {
            return Ok(());
        }
        let new_end = needed.div_ceil(GROW_BYTES) * GROW_BYTES;
        let zeros = vec![0u8; (new_end - self.allocated) as usize];
        self.file.write_all_at(&zeros, self.allocated)?;
        self.allocated = new_end;
        Ok(())
    }
}

/// The number of the last record the file's last checkpoint holds.
fn checkpointed_through(db: &Database) -> Result<u64, redb::Error> {
    let read = db.begin_read()?;
    let meta = match read.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    Ok(meta.get(JOURNAL_THROUGH)?.map_or(0, |v| v.value()))
}

/// The whole records of a journal after a checkpoint, in order: `(number, ops)`.
#[derive(Clone)]
struct Records<'a> {
    rest: &'a [u8],
    /// The number the next record must have once past the checkpoint.
    expected: u64,
}

impl<'a> Records<'a> {
    fn after(bytes: &'a [u8], through: u64) -> Records<'a> {
        Records {
            rest: bytes,
            expected: through + 1,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let header = self.rest.get(..RECORD_HEADER_BYTES)?;
            let length = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
            let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
            let body = self.rest.get(8..8 + length)?;
            if length < 8 || crc32fast::hash(body) != crc {
                return None;
            }
            let number = u64::from_le_bytes(body[0..8].try_into().ok()?);
            self.rest = &self.rest[8 + length..];
            if number < self.expected {
                continue; // held by the checkpoint: an older record not yet written over
            }
            if number != self.expected {
                return None;
            }
            self.expected += 1;
            return Some((number, &body[8..]));
        }
    }
}

/// Every journaled table, open in the replay's transaction.
struct Replay<'txn> {
    inbox: Table<'txn, (&'static str, u64), &'static [u8]>,
    posts: Table<'txn, u64, &'static [u8]>,
    heads: Table<'txn, &'static str, (u64, u64, u64)>,
    history: Table<'txn, (&'static str, &'static str, u64, u64), &'static [u8]>,
    received: Table<'txn, (&'static str, &'static str, &'static str), (u64, u64)>,
    members: Table<'txn, (&'static str, &'static str), ()>,
    meta: Table<'txn, &'static str, u64>,
}

impl<'txn> Replay<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(Replay {
            inbox: txn.open_table(INBOX)?,
            posts: txn.open_table(POSTS)?,
            heads: txn.open_table(HEADS)?,
            history: txn.open_table(HISTORY)?,
            received: txn.open_table(RECEIVED)?,
            members: txn.open_table(MEMBERS)?,
            meta: txn.open_table(META)?,
        })
    }

    /// Applies one record's ops, in order.
    fn apply(&mut self, mut ops: &[u8]) -> Result<(), redb::Error> {
        while !ops.is_empty() {
            let op = read_op(&mut ops).ok_or_else(damaged)?;
            let table = op.table;
            match table {
                _ if table == INBOX.name() => redo(&mut self.inbox, &op),
                _ if table == POSTS.name() => redo(&mut self.posts, &op),
                _ if table == HEADS.name() => redo(&mut self.heads, &op),
                _ if table == HISTORY.name() => redo(&mut self.history, &op),
                _ if table == RECEIVED.name() => redo(&mut self.received, &op),
                _ if table == MEMBERS.name() => redo(&mut self.members, &op),
                _ if table == META.name() => redo(&mut self.meta, &op),
                _ => return Err(damaged()),
            }?;
        }
        Ok(())
    }
}

/// The error of a record whose checksum holds but whose ops do not parse: written by
/// another version, or a bug.
fn damaged() -> redb::Error {
    redb::Error::Corrupted("a journal record does not parse".into())
}

/// Redoes one op on `table`.
fn redo<K: Key + 'static, V: Value + 'static>(
    table: &mut Table<'_, K, V>,
    op: &Op<'_>,
) -> Result<(), redb::Error> {
    let key = K::from_bytes(op.key);
    match op.value {
        Some(value) => {
            table.insert(&key, V::from_bytes(value))?;
        }
        None => {
            table.remove(&key)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::logged::{Logged, PUT};
    use redb::ReadableTable;
    use std::cell::RefCell;

    /// A fresh directory with an empty database and its journal.
    fn fresh(name: &str) -> (std::path::PathBuf, Database, Journal) {
        let dir = std::env::temp_dir().join(format!("journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = Database::create(dir.join("engine.redb")).unwrap();
        let journal = Journal::recover(&dir, &db).unwrap();
        (dir, db, journal)
    }

    /// Puts `(user, seq) → body` in a non-durable transaction and journals it.
    fn put(db: &Database, journal: &mut Journal, user: &str, seq: u64, body: &[u8]) {
        let redo = RefCell::default();
        let mut txn = db.begin_write().unwrap();
        {
            let mut inbox = Logged::open(&txn, &INBOX, &redo).unwrap();
            inbox.insert((user, seq), body).unwrap();
        }
        txn.set_durability(redb::Durability::None).unwrap();
        txn.commit().unwrap();
        journal.append(&redo.borrow(), &mut Vec::new()).unwrap();
    }

    /// Removes `(user, seq)` the same way.
    fn remove(db: &Database, journal: &mut Journal, user: &str, seq: u64) {
        let redo = RefCell::default();
        let mut txn = db.begin_write().unwrap();
        {
            let mut inbox = Logged::open(&txn, &INBOX, &redo).unwrap();
            inbox.remove((user, seq)).unwrap();
        }
        txn.set_durability(redb::Durability::None).unwrap();
        txn.commit().unwrap();
        journal.append(&redo.borrow(), &mut Vec::new()).unwrap();
    }

    /// The files as a crash would leave them now: redb writes nothing of a non-durable
    /// commit to the file (its pages stay in memory; a clean close would write them), so
    /// a copy taken with the database open holds only what a checkpoint made durable.
    fn crash_image(dir: &Path) -> std::path::PathBuf {
        let image = dir.with_extension("crashed");
        let _ = std::fs::remove_dir_all(&image);
        std::fs::create_dir_all(&image).unwrap();
        for name in ["engine.redb", FILE_NAME] {
            std::fs::copy(dir.join(name), image.join(name)).unwrap();
        }
        image
    }

    /// An inbox row: `((user, seq), value)`.
    type Row = ((String, u64), Vec<u8>);

    /// The inbox rows after the file is reopened and its journal replayed.
    fn reopened(dir: &Path) -> (Database, Vec<Row>) {
        let db = Database::create(dir.join("engine.redb")).unwrap();
        Journal::recover(dir, &db).unwrap();
        let read = db.begin_read().unwrap();
        let rows = match read.open_table(INBOX) {
            Ok(table) => table
                .iter()
                .unwrap()
                .map(|row| {
                    let (k, v) = row.unwrap();
                    let (user, seq) = k.value();
                    ((user.to_owned(), seq), v.value().to_vec())
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        drop(read);
        (db, rows)
    }

    #[test]
    fn what_was_journaled_survives_losing_the_non_durable_commits() {
        let (dir, db, mut journal) = fresh("survives");
        put(&db, &mut journal, "ann", 1, b"one");
        put(&db, &mut journal, "ann", 2, b"two");
        remove(&db, &mut journal, "ann", 1);
        let image = crash_image(&dir);
        let unreplayed = Database::create(image.join("engine.redb")).unwrap();
        let read = unreplayed.begin_read().unwrap();
        assert!(
            read.open_table(INBOX).is_err(),
            "the file alone holds none of it"
        );
        drop((read, unreplayed));
        let (reopened_db, rows) = reopened(&image);
        assert_eq!(rows, vec![(("ann".to_owned(), 2), b"two".to_vec())]);
        // The replay emptied the journal and checkpointed: a second open finds the same.
        drop(reopened_db);
        let (_, again) = reopened(&image);
        assert_eq!(again, rows);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(image);
    }

    #[test]
    fn a_torn_last_record_is_not_replayed() {
        let (dir, db, mut journal) = fresh("torn");
        put(&db, &mut journal, "ann", 1, b"kept");
        put(&db, &mut journal, "ann", 2, b"torn");
        let (original, dir) = (dir.clone(), crash_image(&dir));
        // The last record's last 3 bytes never reached the disk.
        let file = OpenOptions::new()
            .write(true)
            .open(dir.join(FILE_NAME))
            .unwrap();
        file.write_all_at(&[0; 3], journal.len() - 3).unwrap();
        let (_, rows) = reopened(&dir);
        assert_eq!(rows, vec![(("ann".to_owned(), 1), b"kept".to_vec())]);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(original);
    }

    #[test]
    fn a_flipped_bit_stops_the_replay_at_that_record() {
        let (dir, db, mut journal) = fresh("flipped");
        put(&db, &mut journal, "ann", 1, b"kept");
        let first = journal.len();
        put(&db, &mut journal, "ann", 2, b"flipped");
        put(&db, &mut journal, "ann", 3, b"after it");
        let (original, dir) = (dir.clone(), crash_image(&dir));
        let path = dir.join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[first as usize + RECORD_HEADER_BYTES + 2] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let (_, rows) = reopened(&dir);
        assert_eq!(rows, vec![(("ann".to_owned(), 1), b"kept".to_vec())]);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(original);
    }

    #[test]
    fn records_a_checkpoint_holds_are_skipped_and_a_stale_tail_ignored() {
        let (dir, db, mut journal) = fresh("stale");
        put(&db, &mut journal, "ann", 1, b"one");
        let first = journal.len();
        put(&db, &mut journal, "ann", 2, b"two");
        // A checkpoint: a durable commit naming the last record; the next record goes at
        // the start of the file.
        let redo = RefCell::default();
        let txn = db.begin_write().unwrap();
        Logged::open(&txn, &META, &redo)
            .unwrap()
            .insert(JOURNAL_THROUGH, journal.last_number())
            .unwrap();
        txn.commit().unwrap();
        journal.checkpointed();
        // As long as the first old record: the second old one stays whole after it.
        put(&db, &mut journal, "bob", 1, b"new");
        assert_eq!(journal.len(), first);
        let (original, dir) = (dir.clone(), crash_image(&dir));
        let (_, rows) = reopened(&dir);
        assert_eq!(
            rows,
            vec![
                (("ann".to_owned(), 1), b"one".to_vec()),
                (("ann".to_owned(), 2), b"two".to_vec()),
                (("bob".to_owned(), 1), b"new".to_vec()),
            ]
        );
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(original);
    }

    #[test]
    fn the_file_grows_in_steps_and_is_written_over_after_a_checkpoint() {
        let (dir, db, mut journal) = fresh("size");
        let size = || std::fs::metadata(dir.join(FILE_NAME)).unwrap().len();
        assert_eq!(size(), 0);
        put(&db, &mut journal, "ann", 1, b"one");
        assert_eq!(
            size(),
            GROW_BYTES,
            "one step of zeros, then the record in it"
        );
        let big = vec![7u8; GROW_BYTES as usize];
        put(&db, &mut journal, "ann", 2, &big);
        assert_eq!(size(), 2 * GROW_BYTES);
        journal.checkpointed();
        put(&db, &mut journal, "ann", 3, b"three");
        assert_eq!(size(), 2 * GROW_BYTES, "written over, not grown");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_that_does_not_parse_is_an_error_not_a_silent_loss() {
        // A put of "k" → "v" in a table this version does not have.
        let mut unknown_table = vec![13];
        unknown_table.extend_from_slice(b"no such table");
        unknown_table.push(PUT);
        unknown_table.extend_from_slice(&[1, 0, 0, 0, b'k', 1, 0, 0, 0, b'v']);
        let (dir, db, _) = fresh("unknown");
        let txn = db.begin_write().unwrap();
        let mut tables = Replay::open(&txn).unwrap();
        assert!(tables.apply(&unknown_table).is_err());
        assert!(tables.apply(&[3, b'a']).is_err(), "cut short");
        drop(tables);
        drop(txn);
        let _ = std::fs::remove_dir_all(dir);
    }
}
