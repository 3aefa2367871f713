//! The store's per-message write pattern, group-committed, on one layout: what a durable
//! ack costs and how that cost moves as the tables grow.
//!
//! Each message to a user online costs what the engine's store writes for it (protocol
//! v2): its inbox row `(user, seq)`, the user's head, its history row `(conversation,
//! time, sequence)` and its message-index row `(receiver, messageId, sender)`; the device's
//! ack, in the next batch, writes the head again and prunes the inbox row that falls out of
//! the newest `--queue-max`. A batch of `--batch` messages (and the previous batch's acks)
//! is one durable commit: redb's durable transaction, or fjall's write batch with its
//! journal synced (`fdatasync`). Users and senders are drawn at random, as in the loadgen.
//!
//! Prints, for every tenth of the run: messages per second, commit latency p50 / p99 /
//! max, and the bytes the process wrote to the disk per message (`/proc/self/io`,
//! background compaction included); then the totals and the disk space used.
//!
//! With `--rate R` the batches are paced to R messages a second (open loop: batch k starts
//! at k × B / R s, or at once when behind), so the commit latencies are those at that load
//! rather than at saturation.
//!
//! usage: store-layouts redb|fjall DIR [--messages N] [--users U] [--batch B] [--queue-max Q]
//!        [--rate R]

use std::{
    path::Path,
    time::{Duration, Instant},
};

/// One message's writes, as the engine's store makes them.
struct Message {
    receiver: String,
    sender: String,
    id: String,
    /// The receiver's inbox `seq`.
    seq: u64,
    /// The store's history sequence.
    sequence: u64,
    at_ms: u64,
    json: Vec<u8>,
}

/// A device's ack of `seq`, with the inbox row it prunes (if the inbox is past its bound).
struct Ack {
    user: String,
    seq: u64,
    prune: Option<u64>,
}

/// A store layout under test: one durable commit per call.
trait Layout {
    fn commit(&mut self, messages: &[Message], acks: &[Ack]) -> Result<(), String>;
}

mod redb_layout {
    //! The engine's tables (`engine/src/store`), in one redb file.
    use redb::{Database, TableDefinition};

    use super::{Ack, Layout, Message};

    const INBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("inbox");
    const HEADS: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("heads");
    const HISTORY: TableDefinition<(&str, &str, u64, u64), &[u8]> = TableDefinition::new("history");
    const RECEIVED: TableDefinition<(&str, &str, &str), (u64, u64)> =
        TableDefinition::new("received");

    pub struct Redb(Database);

    impl Redb {
        pub fn open(dir: &std::path::Path) -> Result<Redb, String> {
            let db = Database::builder()
                .set_cache_size(64 << 20)
                .create(dir.join("engine.redb"))
                .map_err(|e| e.to_string())?;
            Ok(Redb(db))
        }
    }

    impl Layout for Redb {
        fn commit(&mut self, messages: &[Message], acks: &[Ack]) -> Result<(), String> {
            let run = || -> Result<(), redb::Error> {
                let txn = self.0.begin_write()?;
                {
                    let mut inbox = txn.open_table(INBOX)?;
                    let mut heads = txn.open_table(HEADS)?;
                    let mut history = txn.open_table(HISTORY)?;
                    let mut received = txn.open_table(RECEIVED)?;
                    for m in messages {
                        inbox.insert((m.receiver.as_str(), m.seq), m.json.as_slice())?;
                        heads.insert(m.receiver.as_str(), (m.seq, 0, 0))?;
                        let (lo, hi) = super::conversation(&m.sender, &m.receiver);
                        history.insert((lo, hi, m.at_ms, m.sequence), m.json.as_slice())?;
                        let index = (m.receiver.as_str(), m.id.as_str(), m.sender.as_str());
                        received.insert(index, (m.at_ms, m.sequence))?;
                    }
                    for a in acks {
                        heads.insert(a.user.as_str(), (a.seq, a.seq, 0))?;
                        if let Some(old) = a.prune {
                            inbox.remove((a.user.as_str(), old))?;
                        }
                    }
                }
                txn.commit()?;
                Ok(())
            };
            run().map_err(|e| e.to_string())
        }
    }
}

mod fjall_layout {
    //! The same tables as fjall keyspaces, keys encoded so that byte order is the tables'
    //! order: a string, a 0 byte, then big-endian integers.
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    use super::{Ack, Layout, Message};

    pub struct Fjall {
        db: Database,
        inbox: Keyspace,
        heads: Keyspace,
        history: Keyspace,
        received: Keyspace,
    }

    impl Fjall {
        pub fn open(dir: &std::path::Path) -> Result<Fjall, String> {
            let open = || -> fjall::Result<Fjall> {
                let db = Database::builder(dir.join("fjall")).open()?;
                // FJALL_MEMTABLE_MB: each keyspace's memtable size (fjall's default 64).
                let memtable_mb: u64 = std::env::var("FJALL_MEMTABLE_MB")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(64);
                let options =
                    || KeyspaceCreateOptions::default().max_memtable_size(memtable_mb << 20);
                let keyspace = |name| db.keyspace(name, options);
                Ok(Fjall {
                    inbox: keyspace("inbox")?,
                    heads: keyspace("heads")?,
                    history: keyspace("history")?,
                    received: keyspace("received")?,
                    db,
                })
            };
            open().map_err(|e| e.to_string())
        }
    }

    /// `parts` joined with 0 bytes, then `numbers` big-endian.
    fn key(parts: &[&str], numbers: &[u64]) -> Vec<u8> {
        let mut key = Vec::with_capacity(64);
        for part in parts {
            key.extend_from_slice(part.as_bytes());
            key.push(0);
        }
        for n in numbers {
            key.extend_from_slice(&n.to_be_bytes());
        }
        key
    }

    impl Layout for Fjall {
        fn commit(&mut self, messages: &[Message], acks: &[Ack]) -> Result<(), String> {
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
            for m in messages {
                let (lo, hi) = super::conversation(&m.sender, &m.receiver);
                let head = [m.seq.to_be_bytes(), [0; 8]].concat();
                let place = [m.at_ms.to_be_bytes(), m.sequence.to_be_bytes()].concat();
                batch.insert(
                    &self.inbox,
                    key(&[&m.receiver], &[m.seq]),
                    m.json.as_slice(),
                );
                batch.insert(&self.heads, key(&[&m.receiver], &[]), head);
                let row = key(&[lo, hi], &[m.at_ms, m.sequence]);
                batch.insert(&self.history, row, m.json.as_slice());
                let index = key(&[&m.receiver, &m.id, &m.sender], &[]);
                batch.insert(&self.received, index, place);
            }
            for a in acks {
                let head = [a.seq.to_be_bytes(), a.seq.to_be_bytes()].concat();
                batch.insert(&self.heads, key(&[&a.user], &[]), head);
                if let Some(old) = a.prune {
                    batch.remove(&self.inbox, key(&[&a.user], &[old]));
                }
            }
            batch.commit().map_err(|e| e.to_string())
        }
    }
}

/// A conversation's key: its two users in order.
fn conversation<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// What the run is asked for.
struct Args {
    layout: String,
    dir: String,
    messages: u64,
    users: u64,
    batch: usize,
    queue_max: u64,
    /// Messages a second to pace the batches to (0: as fast as commits go).
    rate: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: store-layouts redb|fjall DIR [--messages N] [--users U] [--batch B] \
                 [--queue-max Q] [--rate R]";
    let layout = it.next().ok_or(usage)?;
    let dir = it.next().ok_or(usage)?;
    let mut args = Args {
        layout,
        dir,
        messages: 1_000_000,
        users: 10_000,
        batch: 64,
        queue_max: 1000,
        rate: 0,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--messages" => args.messages = number,
            "--users" => args.users = number.max(2),
            "--batch" => args.batch = number.max(1) as usize,
            "--queue-max" => args.queue_max = number,
            "--rate" => args.rate = number,
            _ => return Err(format!("unknown flag {flag}\n{usage}")),
        }
    }
    Ok(args)
}

/// xorshift64*: plenty for picking users.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Bytes this process has written to the disk (`/proc/self/io`, `write_bytes`).
fn disk_bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// This process's CPU time so far (`/proc/self/stat`, user + system, in clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are the 14th and 15th fields; fields here start at the 3rd.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn disk_space(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_space(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let dir = Path::new(&args.dir);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("cannot create DIR");
    let mut layout: Box<dyn Layout> = match args.layout.as_str() {
        "redb" => Box::new(redb_layout::Redb::open(dir).expect("redb")),
        "fjall" => Box::new(fjall_layout::Fjall::open(dir).expect("fjall")),
        other => {
            eprintln!("unknown layout {other:?}: redb or fjall");
            std::process::exit(2);
        }
    };
    let pace = match args.rate {
        0 => "as fast as commits go".to_owned(),
        rate => format!("paced to {rate} msg/s"),
    };
    println!(
        "{}: {} messages, {} users, {} a commit, inbox bound {}, {pace}, in {}",
        args.layout, args.messages, args.users, args.batch, args.queue_max, args.dir
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut last_seq = vec![0u64; args.users as usize];
    let mut acks: Vec<Ack> = Vec::new();
    let mut sequence = 0u64;
    let tenth = (args.messages / 10).max(1);
    let mut next_report = tenth;
    let (started, cpu_started, bytes_started) = (Instant::now(), cpu_time(), disk_bytes_written());
    let (mut window_start, mut window_bytes) = (Instant::now(), disk_bytes_written());
    let mut commits: Vec<Duration> = Vec::new();
    let mut all_commits: Vec<Duration> = Vec::new();
    while sequence < args.messages {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(sequence as f64 / args.rate as f64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let n = (args.batch as u64).min(args.messages - sequence);
        let at_ms = 1_700_000_000_000 + started.elapsed().as_millis() as u64;
        let messages: Vec<Message> = (0..n)
            .map(|_| {
                sequence += 1;
                let receiver = rng.below(args.users);
                let sender = (receiver + 1 + rng.below(args.users - 1)) % args.users;
                last_seq[receiver as usize] += 1;
                let seq = last_seq[receiver as usize];
                let (receiver, sender) = (format!("lg{receiver}"), format!("lg{sender}"));
                let id = format!("{at_ms}-0-{sequence}");
                let json = format!(
                    r#"{{"type":"new_message","messageId":"{id}","senderId":"{sender}","receiverId":"{receiver}","content":"{at_ms}","timestamp":{at_ms},"seq":{seq}}}"#
                )
                .into_bytes();
                Message { receiver, sender, id, seq, sequence, at_ms, json }
            })
            .collect();
        let t = Instant::now();
        if let Err(e) = layout.commit(&messages, &acks) {
            eprintln!("commit failed: {e}");
            std::process::exit(1);
        }
        commits.push(t.elapsed());
        acks = messages
            .iter()
            .map(|m| Ack {
                user: m.receiver.clone(),
                seq: m.seq,
                prune: m.seq.checked_sub(args.queue_max).filter(|&s| s > 0),
            })
            .collect();
        if sequence >= next_report || sequence == args.messages {
            next_report += tenth;
            let took = window_start.elapsed().as_secs_f64();
            let bytes = disk_bytes_written() - window_bytes;
            let in_window = commits.len() as f64 * args.batch as f64;
            commits.sort_unstable();
            println!(
                "  to {:>9}: {:>8.0} msg/s  commit p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  {:>7.0} B written a message",
                sequence,
                in_window / took,
                percentile(&commits, 0.5).as_secs_f64() * 1e3,
                percentile(&commits, 0.99).as_secs_f64() * 1e3,
                commits.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
                bytes as f64 / in_window,
            );
            all_commits.append(&mut commits);
            (window_start, window_bytes) = (Instant::now(), disk_bytes_written());
        }
    }
    let wall = started.elapsed();
    let cpu = cpu_time() - cpu_started;
    drop(layout);
    all_commits.sort_unstable();
    let messages = args.messages as f64;
    println!(
        "total: {:.0} msg/s, {:.1} µs of CPU a message, commit p50 {:.2} ms p99 {:.2} ms, {:.0} B written a message, {:.0} MB on disk at the end",
        messages / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / messages,
        percentile(&all_commits, 0.5).as_secs_f64() * 1e3,
        percentile(&all_commits, 0.99).as_secs_f64() * 1e3,
        (disk_bytes_written() - bytes_started) as f64 / messages,
        disk_space(dir) as f64 / 1e6,
    );
}
