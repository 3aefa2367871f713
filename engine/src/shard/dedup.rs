//! The dedup window of one home reactor: which `(senderId, messageId)` pairs it has
//! recently delivered or queued, so a client's retry is acknowledged again without being
//! delivered twice (PROTOCOL.md: "a repeat of the same (senderId, messageId) is
//! acknowledged again but not delivered twice").
//!
//! A pair is kept as two 64-bit hashes under independent random keys (no allocation per
//! message; a false match needs both to collide, about 2^-128 per pair). The window is
//! bounded by count and by age.

use std::{
    collections::{hash_map::RandomState, HashMap, VecDeque},
    hash::BuildHasher,
};

/// Pairs remembered per home at most.
pub const WINDOW_PAIRS_MAX: usize = 16_384;
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
    /// The key as the store carries it, opaque to the store.
    pub fn ticket(self) -> crate::store::Ticket {
        crate::store::Ticket(u128::from(self.0) << 64 | u128::from(self.1))
    }

    /// The key a store ticket carries back.
    pub fn from_ticket(ticket: crate::store::Ticket) -> PairKey {
        PairKey((ticket.0 >> 64) as u64, ticket.0 as u64)
    }
}

/// One home's recent messages.
#[derive(Debug, Default)]
pub struct RecentMessages {
    hashers: (RandomState, RandomState),
    /// What happened, and when it was recorded (ms; matched against `order` on eviction).
    seen: HashMap<PairKey, (Seen, u64)>,
    order: VecDeque<(PairKey, u64)>,
}

impl RecentMessages {
    /// The key of `(sender, message_id)`.
    pub fn key(&self, sender: &str, message_id: &str) -> PairKey {
        let pair = (sender, message_id);
        PairKey(self.hashers.0.hash_one(pair), self.hashers.1.hash_one(pair))
    }

    /// What happened to this pair before, if it is in the window.
    pub fn check(&self, key: PairKey) -> Option<Seen> {
        self.seen.get(&key).map(|&(seen, _)| seen)
    }

    /// Remembers `key` at `now_ms`, evicting what is too old or over the bound. The clock
    /// is the caller's: the shard is handed the time with each event.
    pub fn record(&mut self, key: PairKey, seen: Seen, now_ms: u64) {
        let now = now_ms;
        while let Some(&(oldest, at)) = self.order.front() {
            if self.order.len() < WINDOW_PAIRS_MAX && now.saturating_sub(at) < WINDOW_AGE_MS {
                break;
            }
            self.order.pop_front();
            // Only if it was not forgotten and recorded again since.
            if self
                .seen
                .get(&oldest)
                .is_some_and(|&(_, recorded)| recorded == at)
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(key, (seen, now));
        self.order.push_back((key, now));
    }

    /// Forgets `key` (the store did not keep the message: a retry must be tried again).
    pub fn forget(&mut self, key: PairKey) {
        self.seen.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_seen_until_forgotten_and_others_are_not() {
        let mut recent = RecentMessages::default();
        let key = recent.key("alice", "m1");
        assert_eq!(recent.check(key), None);
        recent.record(key, Seen::Queued, 0);
        assert_eq!(recent.check(recent.key("alice", "m1")), Some(Seen::Queued));
        assert_eq!(recent.check(recent.key("alice", "m2")), None);
        assert_eq!(recent.check(recent.key("bob", "m1")), None);
        // The pair is not confused with a shifted split of the same text.
        assert_ne!(recent.key("al", "icem1"), key);
        recent.forget(key);
        assert_eq!(recent.check(key), None);
    }

    #[test]
    fn the_window_is_bounded() {
        let mut recent = RecentMessages::default();
        for i in 0..WINDOW_PAIRS_MAX + 10 {
            let key = recent.key("s", &i.to_string());
            recent.record(key, Seen::Delivered, 0);
        }
        assert!(recent.seen.len() <= WINDOW_PAIRS_MAX);
        assert_eq!(recent.check(recent.key("s", "0")), None);
        let last = (WINDOW_PAIRS_MAX + 9).to_string();
        assert_eq!(recent.check(recent.key("s", &last)), Some(Seen::Delivered));
    }

    #[test]
    fn pairs_age_out_of_the_window() {
        let mut recent = RecentMessages::default();
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
