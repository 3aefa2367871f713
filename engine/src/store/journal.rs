//! The store's commit point: an append-only redo journal in front of the redb file.
//!
//! Every batch's changes, a put or a remove of one key in one table each, are applied to
//! the active memtable and appended to the journal as one record, synced (one `pwrite` and
//! one `fdatasync` per batch, about the size of what the batch stores) before anyone is
//! answered. So an ack costs the journal's append, never redb's copy of the B-tree pages.
//!
//! The file catches up in checkpoints ([`super::checkpoint`]): the active memtable is
//! frozen and written into the file in one durable redb commit on the checkpoint thread,
//! which also records the number of the last record it holds ([`JOURNAL_THROUGH`]). The
//! journal is two files used in turn: at each freeze the records go on in the other file,
//! from its start, while the frozen memtable's records stay whole in the first until the
//! checkpoint holds them. A freeze waits for the last checkpoint, so the file written
//! over only ever holds records a checkpoint holds. At open, the records no checkpoint
//! holds are applied again ([`Journal::recover`]), in number order across both files.
//! Redoing puts and removes in order is idempotent, so replaying a record a checkpoint
//! already holds does no harm.
//!
//! A file is never cut, and it grows by [`GROW_BYTES`] of zeros at a time: an append
//! inside it changes no file size and allocates no block, so its `fdatasync` writes the
//! record and no file system metadata (0.7× the time and CPU of an append that grows the
//! file, on the dev VM: `benches/tools/sync_append.py`).
//!
//! A record is `[length u32][crc32 u32][number u64][ops]` (little-endian), the checksum
//! covering the number and the ops (`logged` has their format). Numbers follow one
//! another across files and checkpoints. Replay reads, in each file, the run of records
//! past the checkpoint from its start, and stops at a short record, a bad checksum, a zero
//! length or a number out of turn: a torn last write, or the end of what this use of the
//! file wrote over.

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
    logged::{read_op, Op, Redo},
    schema::{GROUP_SETTINGS, HEADS, HISTORY, INBOX, MEMBERS, META, POSTS, RECEIVED},
};

/// Journal bytes after which the active memtable is frozen for a checkpoint: bounds the
/// memory the memtables hold, the replay at start, and one checkpoint's transaction.
pub(super) const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Time after the first record after which the active memtable is frozen for a
/// checkpoint: keeps each checkpoint small and the file close behind.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// The [`META`] key of the number of the last record a checkpoint holds.
pub(super) const JOURNAL_THROUGH: &str = "journal_through";
/// The journal's two files in the data directory (the first is the single journal file
/// of earlier versions, which a replay reads the same way).
const FILE_NAMES: [&str; 2] = ["journal.log", "journal-2.log"];
/// `[length][crc32][number]`.
const RECORD_HEADER_BYTES: usize = 16;
/// How much the file grows by when a record does not fit: zeros, which end a replay.
const GROW_BYTES: u64 = 1 << 20;
/// The journal's files, one open for appending.
#[derive(Debug)]
pub(super) struct Journal {
    files: [File; 2],
    /// The file records go to now.
    current: usize,
    /// Bytes of whole, synced records in the current file: where the next record goes (a
    /// failed append leaves a zero length here).
    len: u64,
    /// Each file's size: [`GROW_BYTES`] steps, or what an earlier run left.
    allocated: [u64; 2],
    /// The number of the next record.
    next: u64,
}

impl Journal {
    /// Opens the journal's files in `dir` and applies to `db` what the last checkpoint
    /// does not hold (in one durable transaction). The next record goes at the start of
    /// the first file: what either holds now is then held by the checkpoint.
    pub(super) fn recover(dir: &Path, db: &Database) -> Result<Journal, redb::Error> {
        let mut files = Vec::with_capacity(2);
        let mut contents = Vec::with_capacity(2);
        for name in FILE_NAMES {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(name))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            files.push(file);
            contents.push(bytes);
        }
        let through = checkpointed_through(db)?;
        let mut runs: Vec<Vec<(u64, &[u8])>> = contents
            .iter()
            .map(|bytes| Records::after(bytes, through).collect())
            .collect();
        runs.retain(|run| !run.is_empty());
        runs.sort_by_key(|run| run[0].0);
        let mut last = through;
        let mut replayed = 0u64;
        if !runs.is_empty() {
            let txn = db.begin_write()?;
            {
                let mut tables = Replay::open(&txn)?;
                for run in &runs {
                    if run[0].0 != last + 1 {
                        warn!(
                            after = last,
                            next = run[0].0,
                            "store: journal records missing; the replay stops at the gap"
                        );
                        break;
                    }
                    for &(number, ops) in run {
                        tables.apply(ops)?;
                        last = number;
                        replayed += 1;
                    }
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
        let allocated = [contents[0].len() as u64, contents[1].len() as u64];
        let files: [File; 2] = files.try_into().map_err(|_| damaged())?;
        Ok(Journal {
            files,
            current: 0,
            len: 0,
            allocated,
            next: last + 1,
        })
    }

    /// Bytes journaled in the current file (since the last freeze).
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The number of the last record appended (what a checkpoint of everything so far
    /// holds).
    pub(super) fn last_number(&self) -> u64 {
        self.next - 1
    }

    /// Appends `redo` as one record and syncs it: when this returns `Ok`, the batch is
    /// durable. On an error, a zero length marks the end of the file's records.
    pub(super) fn append(&mut self, redo: &Redo, scratch: &mut Vec<u8>) -> io::Result<()> {
        scratch.clear();
        scratch.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
        scratch[8..16].copy_from_slice(&self.next.to_le_bytes());
        scratch.extend_from_slice(redo.ops());
        let length = u32::try_from(scratch.len() - 8).map_err(io::Error::other)?;
        let crc = crc32fast::hash(&scratch[8..]);
        scratch[0..4].copy_from_slice(&length.to_le_bytes());
        scratch[4..8].copy_from_slice(&crc.to_le_bytes());
        let room = self.make_room(scratch.len() as u64);
        let file = &self.files[self.current];
        let written = room
            .and_then(|()| file.write_all_at(scratch, self.len))
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Best effort: a record left whole would be replayed although its senders
            // are told it failed (a retry is then recognised by its messageId). A zero
            // length ends the replay here.
            let _ = file.write_all_at(&[0; RECORD_HEADER_BYTES], self.len);
            return Err(e);
        }
        self.len += scratch.len() as u64;
        self.next += 1;
        Ok(())
    }

    /// At a freeze: the records from now on go to the other file, from its start. Its
    /// records must all be held by a checkpoint (the caller waited for the last one).
    pub(super) fn switch(&mut self) {
        self.current ^= 1;
        self.len = 0;
    }

    /// After the last checkpoint of a clean stop: a zero length at the start of each file,
    /// synced, so that the next open has nothing to read and a journal that does not start
    /// with one always means the last run stopped without a checkpoint.
    pub(super) fn close_empty(&mut self) -> io::Result<()> {
        self.len = 0;
        for (file, allocated) in self.files.iter().zip(self.allocated) {
            if allocated > 0 {
                file.write_all_at(&[0; RECORD_HEADER_BYTES], 0)?;
                file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Grows the current file with zeros, in [`GROW_BYTES`] steps, until `record` more
    /// bytes fit after the last record. The record's `fdatasync` then also makes the new
    /// size durable; the appends after it, up to the new end, change no metadata.
    fn make_room(&mut self, record: u64) -> io::Result<()> {
        let needed = self.len + record;
        let allocated = &mut self.allocated[self.current];
        if needed <= *allocated {
            return Ok(());
        }
        let new_end = needed.div_ceil(GROW_BYTES) * GROW_BYTES;
        let zeros = vec![0u8; (new_end - *allocated) as usize];
        self.files[self.current].write_all_at(&zeros, *allocated)?;
        *allocated = new_end;
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

/// The whole records of one journal file after a checkpoint, in order: `(number, ops)`,
/// the run of numbers that starts with the first record past the checkpoint.
#[derive(Clone)]
struct Records<'a> {
    rest: &'a [u8],
    /// The number the next record must have once past the checkpoint (0: none read yet).
    expected: u64,
    /// The last record the checkpoint holds.
    through: u64,
}

impl<'a> Records<'a> {
    fn after(bytes: &'a [u8], through: u64) -> Records<'a> {
        Records {
            rest: bytes,
            expected: 0,
            through,
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
            if self.expected == 0 && number <= self.through {
                continue; // held by the checkpoint: an older record not yet written over
            }
            if self.expected != 0 && number != self.expected {
                return None;
            }
            self.expected = number + 1;
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
    group_settings: Table<'txn, &'static str, &'static [u8]>,
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
            group_settings: txn.open_table(GROUP_SETTINGS)?,
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
                _ if table == GROUP_SETTINGS.name() => redo(&mut self.group_settings, &op),
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
    use crate::store::{
        logged::{Logged, PUT},
        memtable::Mem,
    };
    use redb::ReadableTable;
    use std::cell::RefCell;

    /// A fresh directory with an empty database (its inbox table made) and its journal.
    fn fresh(name: &str) -> (std::path::PathBuf, Database, Journal) {
        let dir = std::env::temp_dir().join(format!("journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = Database::create(dir.join("engine.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(INBOX).unwrap();
        txn.commit().unwrap();
        let journal = Journal::recover(&dir, &db).unwrap();
        (dir, db, journal)
    }

    /// Journals one batch of changes to the inbox, as the store thread does (the file
    /// itself is written only by checkpoints).
    fn journal_batch(
        db: &Database,
        journal: &mut Journal,
        change: impl FnOnce(&mut Logged<'_, (&'static str, u64), &'static [u8]>),
    ) {
        let redo = RefCell::default();
        let (mut batch, active) = (Mem::default(), Mem::default());
        let read = db.begin_read().unwrap();
        let mut inbox = Logged::open(&read, &INBOX, (&mut batch, &active, None), &redo).unwrap();
        change(&mut inbox);
        drop(inbox);
        journal.append(&redo.borrow(), &mut Vec::new()).unwrap();
    }

    fn put(db: &Database, journal: &mut Journal, user: &'static str, seq: u64, body: &[u8]) {
        journal_batch(db, journal, |inbox| {
            inbox.insert((user, seq), body).unwrap()
        });
    }

    fn remove(db: &Database, journal: &mut Journal, user: &'static str, seq: u64) {
        journal_batch(db, journal, |inbox| inbox.remove((user, seq)).unwrap());
    }

    /// A checkpoint of everything journaled so far: the rows given written into the file
    /// with the number of the last record, durably; then the journal goes on in its other
    /// file.
    fn checkpoint(db: &Database, journal: &mut Journal, rows: &[(&str, u64, &[u8])]) {
        let txn = db.begin_write().unwrap();
        {
            let mut inbox = txn.open_table(INBOX).unwrap();
            for &(user, seq, body) in rows {
                inbox.insert((user, seq), body).unwrap();
            }
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(JOURNAL_THROUGH, journal.last_number()).unwrap();
        }
        txn.commit().unwrap();
        journal.switch();
    }

    /// The files as a crash would leave them now.
    fn crash_image(dir: &Path) -> std::path::PathBuf {
        let image = dir.with_extension("crashed");
        let _ = std::fs::remove_dir_all(&image);
        std::fs::create_dir_all(&image).unwrap();
        for name in ["engine.redb", FILE_NAMES[0], FILE_NAMES[1]] {
            std::fs::copy(dir.join(name), image.join(name)).unwrap();
        }
        image
    }

    /// An inbox row: `((user, seq), value)`.
    type Row = ((String, u64), Vec<u8>);

    fn row(user: &str, seq: u64, body: &[u8]) -> Row {
        ((user.to_owned(), seq), body.to_vec())
    }

    /// The inbox rows after the file is reopened and its journal replayed.
    fn reopened(dir: &Path) -> (Database, Vec<Row>) {
        let db = Database::create(dir.join("engine.redb")).unwrap();
        Journal::recover(dir, &db).unwrap();
        let read = db.begin_read().unwrap();
        let rows = read
            .open_table(INBOX)
            .unwrap()
            .iter()
            .unwrap()
            .map(|row| {
                let (k, v) = row.unwrap();
                let (user, seq) = k.value();
                ((user.to_owned(), seq), v.value().to_vec())
            })
            .collect();
        drop(read);
        (db, rows)
    }

    fn clean(dirs: &[&Path]) {
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn what_was_journaled_survives_a_crash_before_any_checkpoint() {
        let (dir, db, mut journal) = fresh("survives");
        put(&db, &mut journal, "ann", 1, b"one");
        put(&db, &mut journal, "ann", 2, b"two");
        remove(&db, &mut journal, "ann", 1);
        let image = crash_image(&dir);
        let (reopened_db, rows) = reopened(&image);
        assert_eq!(rows, vec![row("ann", 2, b"two")]);
        // The replay checkpointed: a second open finds the same.
        drop(reopened_db);
        let (_, again) = reopened(&image);
        assert_eq!(again, rows);
        clean(&[&dir, &image]);
    }

    #[test]
    fn a_torn_last_record_is_not_replayed() {
        let (dir, db, mut journal) = fresh("torn");
        put(&db, &mut journal, "ann", 1, b"kept");
        put(&db, &mut journal, "ann", 2, b"torn");
        let image = crash_image(&dir);
        // The last record's last 3 bytes never reached the disk.
        let file = OpenOptions::new()
            .write(true)
            .open(image.join(FILE_NAMES[0]))
            .unwrap();
        file.write_all_at(&[0; 3], journal.len() - 3).unwrap();
        let (_, rows) = reopened(&image);
        assert_eq!(rows, vec![row("ann", 1, b"kept")]);
        clean(&[&dir, &image]);
    }

    #[test]
    fn a_flipped_bit_stops_the_replay_at_that_record() {
        let (dir, db, mut journal) = fresh("flipped");
        put(&db, &mut journal, "ann", 1, b"kept");
        let first = journal.len();
        put(&db, &mut journal, "ann", 2, b"flipped");
        put(&db, &mut journal, "ann", 3, b"after it");
        let image = crash_image(&dir);
        let path = image.join(FILE_NAMES[0]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[first as usize + RECORD_HEADER_BYTES + 2] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let (_, rows) = reopened(&image);
        assert_eq!(rows, vec![row("ann", 1, b"kept")]);
        clean(&[&dir, &image]);
    }

    #[test]
    fn both_files_replay_in_order_while_a_checkpoint_is_under_way() {
        let (dir, db, mut journal) = fresh("both");
        put(&db, &mut journal, "ann", 1, b"one");
        remove(&db, &mut journal, "ann", 1);
        // A freeze: the records go on in the second file; the checkpoint never lands.
        journal.switch();
        put(&db, &mut journal, "ann", 1, b"again");
        put(&db, &mut journal, "bob", 1, b"bob");
        let image = crash_image(&dir);
        let (_, rows) = reopened(&image);
        assert_eq!(rows, vec![row("ann", 1, b"again"), row("bob", 1, b"bob")]);
        clean(&[&dir, &image]);
    }

    #[test]
    fn records_a_checkpoint_holds_are_skipped_and_a_stale_tail_ignored() {
        let (dir, db, mut journal) = fresh("stale");
        put(&db, &mut journal, "ann", 1, b"one");
        let first = journal.len();
        put(&db, &mut journal, "ann", 2, b"two");
        checkpoint(&db, &mut journal, &[("ann", 1, b"one"), ("ann", 2, b"two")]);
        put(&db, &mut journal, "bob", 1, b"bob");
        checkpoint(&db, &mut journal, &[("bob", 1, b"bob")]);
        // Back in the first file, from its start: as long as the first old record, so
        // the second old one stays whole after it.
        put(&db, &mut journal, "cal", 1, b"new");
        assert_eq!(journal.len(), first);
        let image = crash_image(&dir);
        let (_, rows) = reopened(&image);
        assert_eq!(
            rows,
            vec![
                row("ann", 1, b"one"),
                row("ann", 2, b"two"),
                row("bob", 1, b"bob"),
                row("cal", 1, b"new"),
            ]
        );
        clean(&[&dir, &image]);
    }

    #[test]
    fn each_file_grows_in_steps_and_is_written_over_after_its_checkpoint() {
        let (dir, db, mut journal) = fresh("size");
        let size = |i: usize| std::fs::metadata(dir.join(FILE_NAMES[i])).unwrap().len();
        assert_eq!(size(0), 0);
        put(&db, &mut journal, "ann", 1, b"one");
        assert_eq!(
            size(0),
            GROW_BYTES,
            "one step of zeros, then the record in it"
        );
        let big = vec![7u8; GROW_BYTES as usize];
        put(&db, &mut journal, "ann", 2, &big);
        assert_eq!(size(0), 2 * GROW_BYTES);
        checkpoint(&db, &mut journal, &[]);
        put(&db, &mut journal, "ann", 3, b"three");
        assert_eq!((size(0), size(1)), (2 * GROW_BYTES, GROW_BYTES));
        checkpoint(&db, &mut journal, &[]);
        put(&db, &mut journal, "ann", 4, b"four");
        assert_eq!(size(0), 2 * GROW_BYTES, "written over, not grown");
        clean(&[&dir]);
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
        clean(&[&dir]);
    }
}
