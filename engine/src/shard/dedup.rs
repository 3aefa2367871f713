//! The dedup window of one home reactor: which `(senderId, messageId)` pairs it has
//! recently delivered or queued, so a client's retry is acknowledged again without being
//! delivered twice (PROTOCOL.md: "a repeat of the same (senderId, messageId) is
//! acknowledged again but not delivered twice").
//!
//! A pair is kept as two 64-bit hashes under independent random keys (no allocation per
//! message; a false match needs both to collide, about 2^-128 per pair). The window is
//! bounded by age and by count (`--dedup-window-pairs`); a pair pushed out by the count
//! while still young is counted, since a retry of it could reach a device twice.

use std::{
    collections::{hash_map::RandomState, HashMap, VecDeque},
    hash::BuildHasher,
};

/// How long a pair is remembered at most (ms).
pub const WINDOW_AGE_MS: u64 = 300_000;

/// What happened to a message the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A device got it.
    Delivered,
    /// It went to the store for an offline receiver.
    Queued,
}

/// A `(senderId, messageId)` pair, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PairKey(u64, u64);

impl PairKey {
    /// The record `serial` of this key as the store carries it, opaque to the store.
    pub fn ticket(self, serial: u64) -> crate::store::Ticket {
        crate::store::Ticket {
            key: u128::from(self.0) << 64 | u128::from(self.1),
            serial,
        }
    }

    /// The key and record serial a store ticket carries back.
    pub fn from_ticket(ticket: crate::store::Ticket) -> (PairKey, u64) {
        let key = PairKey((ticket.key >> 64) as u64, ticket.key as u64);
        (key, ticket.serial)
    }
}

/// One remembered pair: what happened, and the record's serial.
#[derive(Debug, Clone, Copy)]
struct Record {
    seen: Seen,
    serial: u64,
}

/// One home's recent messages.
#[derive(Debug)]
pub struct RecentMessages {
    /// Pairs remembered at most.
    pairs_max: usize,
    /// Pairs the count bound pushed out before [`WINDOW_AGE_MS`].
    evicted_young: u64,
    hashers: (RandomState, RandomState),
    /// The latest record of each pair.
    seen: HashMap<PairKey, Record>,
    /// Records oldest first, `(key, serial, recorded at ms)`: an entry evicts its pair
    /// only if the pair was not recorded again since.
    order: VecDeque<(PairKey, u64, u64)>,
    /// The serial of the next record.
    next_serial: u64,
}

impl RecentMessages {
    /// An empty window of at most `pairs_max` pairs.
    pub fn new(pairs_max: usize) -> RecentMessages {
        RecentMessages {
            pairs_max,
            evicted_young: 0,
            hashers: Default::default(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            next_serial: 0,
        }
    }

    /// Pairs the count bound pushed out while younger than [`WINDOW_AGE_MS`]: a retry of
    /// one is taken for a new message.
    pub fn evicted_young(&self) -> u64 {
        self.evicted_young
    }

    /// The key of `(sender, message_id)`.
    pub fn key(&self, sender: &str, message_id: &str) -> PairKey {
        let pair = (sender, message_id);
        PairKey(self.hashers.0.hash_one(pair), self.hashers.1.hash_one(pair))
    }

    /// The key of the copy of `(sender, message_id)` for the sender's own devices: a
    /// pair of its own, apart from the message's.
    pub fn copy_key(&self, sender: &str, message_id: &str) -> PairKey {
        let copy = (sender, message_id, b'c');
        PairKey(self.hashers.0.hash_one(copy), self.hashers.1.hash_one(copy))
    }

    /// What happened to this pair before, if it is in the window.
    pub fn check(&self, key: PairKey) -> Option<Seen> {
        self.seen.get(&key).map(|record| record.seen)
    }

    /// Remembers `key` at `now_ms`, evicting what is too old or over the bound; returns
    /// the record's serial. The clock is the caller's: the shard is handed the time with
    /// each event.
    pub fn record(&mut self, key: PairKey, seen: Seen, now_ms: u64) -> u64 {
        // Hot path: one record per chat message; the oldest's age is in the queue, so no
        // lookup unless something is evicted.
        while let Some(&(oldest, serial, at_ms)) = self.order.front() {
            let young = now_ms.saturating_sub(at_ms) < WINDOW_AGE_MS;
            if self.order.len() < self.pairs_max && young {
                break;
            }
            self.order.pop_front();
            if self.forget(oldest, serial) && young {
                self.evicted_young += 1;
            }
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.seen.insert(key, Record { seen, serial });
        self.order.push_back((key, serial, now_ms));
        serial
    }

    /// Forgets record `serial` of `key` (the store did not keep that copy: a retry must
    /// be tried again), unless the pair was recorded again since: a later copy may be
    /// the one kept. Returns whether it was forgotten.
    pub fn forget(&mut self, key: PairKey, serial: u64) -> bool {
        let current = self.seen.get(&key).is_some_and(|r| r.serial == serial);
        if current {
            self.seen.remove(&key);
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAIRS: usize = 1024;

    #[test]
    fn a_pair_is_seen_until_forgotten_and_others_are_not() {
        let mut recent = RecentMessages::new(PAIRS);
        let key = recent.key("alice", "m1");
        assert_eq!(recent.check(key), None);
        let first = recent.record(key, Seen::Queued, 0);
        assert_eq!(recent.check(recent.key("alice", "m1")), Some(Seen::Queued));
        assert_eq!(recent.check(recent.key("alice", "m2")), None);
        assert_eq!(recent.check(recent.key("bob", "m1")), None);
        // The pair is not confused with a shifted split of the same text.
        assert_ne!(recent.key("al", "icem1"), key);
        let second = recent.record(key, Seen::Queued, 0);
        // The first copy's refusal does not forget the second.
        recent.forget(key, first);
        assert_eq!(recent.check(key), Some(Seen::Queued));
        recent.forget(key, second);
        assert_eq!(recent.check(key), None);
        // The copy for the sender's devices is a pair of its own.
        assert_ne!(recent.copy_key("alice", "m1"), key);
    }

    #[test]
    fn the_window_is_bounded_and_counts_the_young_pairs_it_pushes_out() {
        let mut recent = RecentMessages::new(PAIRS);
        let forgotten = recent.key("s", "forgotten");
        let serial = recent.record(forgotten, Seen::Queued, 0);
        assert!(recent.forget(forgotten, serial));
        assert!(!recent.forget(forgotten, serial), "already forgotten");
        for i in 0..PAIRS + 10 {
            let key = recent.key("s", &i.to_string());
            recent.record(key, Seen::Delivered, 0);
        }
        assert!(recent.seen.len() <= PAIRS);
        assert_eq!(recent.check(recent.key("s", "0")), None);
        let last = (PAIRS + 9).to_string();
        assert_eq!(recent.check(recent.key("s", &last)), Some(Seen::Delivered));
        // Ten young pairs went, and the forgotten one's entry, which counts for nothing.
        assert_eq!(recent.evicted_young(), 10);
        // Pairs that age out are not counted.
        let late = recent.key("s", "late");
        recent.record(late, Seen::Delivered, WINDOW_AGE_MS);
        assert_eq!(recent.evicted_young(), 10);
        assert_eq!(recent.check(recent.key("s", &last)), None);
    }

    /// The documented bound of `--dedup-window-pairs`: a full window costs at most 130 B
    /// a pair (the hash table's buckets and control bytes, and the queue, at the
    /// capacities they reach), across window sizes either side of the tables' doublings.
    #[test]
    fn a_full_window_costs_at_most_130_bytes_a_pair() {
        for pairs in [1024, 1025, 7169, 8192, 8193, 14337, 16384] {
            let mut recent = RecentMessages::new(pairs);
            for i in 0..pairs + 100 {
                let key = recent.key("s", &i.to_string());
                recent.record(key, Seen::Delivered, 0);
            }
            let buckets = (recent.seen.capacity() * 8 / 7).next_power_of_two();
            let table = buckets * (std::mem::size_of::<(PairKey, Record)>() + 1);
            let queue = recent.order.capacity() * std::mem::size_of::<(PairKey, u64, u64)>();
            let per_pair = (table + queue) as f64 / pairs as f64;
            assert!(per_pair <= 130.0, "{pairs} pairs: {per_pair:.1} B a pair");
        }
    }

    #[test]
    fn pairs_age_out_of_the_window() {
        let mut recent = RecentMessages::new(PAIRS);
        let old = recent.key("s", "old");
        recent.record(old, Seen::Delivered, 1_000);
        let young = recent.key("s", "young");
        recent.record(young, Seen::Delivered, 1_000 + WINDOW_AGE_MS - 1);
        assert_eq!(recent.check(old), Some(Seen::Delivered));
        let new = recent.key("s", "new");
        recent.record(new, Seen::Queued, 1_000 + WINDOW_AGE_MS);
        assert_eq!(recent.check(old), None);
        assert_eq!(recent.check(young), Some(Seen::Delivered));
    }
}
