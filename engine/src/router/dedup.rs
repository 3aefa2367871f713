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
    time::{Duration, Instant},
};

/// Pairs remembered per home at most.
pub const WINDOW_PAIRS_MAX: usize = 16_384;
/// How long a pair is remembered at most.
pub const WINDOW_AGE: Duration = Duration::from_secs(300);

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

/// One home's recent messages.
#[derive(Debug, Default)]
pub struct RecentMessages {
    hashers: (RandomState, RandomState),
    /// What happened, and when it was recorded (matched against `order` on eviction).
    seen: HashMap<PairKey, (Seen, Instant)>,
    order: VecDeque<(PairKey, Instant)>,
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

    /// Remembers `key`, evicting what is too old or over the bound.
    pub fn record(&mut self, key: PairKey, seen: Seen) {
        let now = Instant::now();
        while let Some(&(oldest, at)) = self.order.front() {
            if self.order.len() < WINDOW_PAIRS_MAX && now.duration_since(at) < WINDOW_AGE {
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
        recent.record(key, Seen::Queued);
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
            recent.record(key, Seen::Delivered);
        }
        assert!(recent.seen.len() <= WINDOW_PAIRS_MAX);
        assert_eq!(recent.check(recent.key("s", "0")), None);
        let last = (WINDOW_PAIRS_MAX + 9).to_string();
        assert_eq!(recent.check(recent.key("s", &last)), Some(Seen::Delivered));
    }
}
