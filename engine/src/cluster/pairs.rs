//! One chat message in flight per (receiver, sender) pair on a node's relay
//! (docs/cluster.md, "Inboxes"): a message's lookups (the message index, the sender's
//! quota) and its publish go one message of a pair at a time, and the pair's later
//! messages, and retries to confirm, wait in order behind it.
//!
//! Without it, lookups answered out of order reorder a conversation: a direct get may be
//! served by any copy of a stream, and only a message at its sender's quota waits for a
//! read of the receiver's record. And a retry confirmed while its first copy was still
//! being looked up would be acknowledged before that copy was stored.
//!
//! A pair is kept under a keyed 64-bit hash of its two names, so entering one allocates
//! nothing; the keys are random per process, so no one can pick names that share another
//! pair's lane (or its count in [`super::unread`]).

use std::{
    collections::VecDeque,
    hash::{BuildHasher, Hasher},
};

use hashbrown::HashMap;

/// The pairs with a message in flight, each with what waits behind it.
pub(super) struct Pairs<T> {
    keys: std::collections::hash_map::RandomState,
    busy: HashMap<u64, VecDeque<T>>,
    /// Items waiting, over every pair.
    queued: usize,
}

impl<T> Pairs<T> {
    /// No pair busy.
    pub(super) fn new() -> Pairs<T> {
        Pairs {
            keys: std::collections::hash_map::RandomState::new(),
            busy: HashMap::new(),
            queued: 0,
        }
    }

    /// The key of the pair (`receiver`, `sender`).
    pub(super) fn key(&self, receiver: &str, sender: &str) -> u64 {
        let mut hasher = self.keys.build_hasher();
        hasher.write(receiver.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(sender.as_bytes());
        hasher.finish()
    }

    /// `item` of pair `pair` arrives: back to go now if the pair was idle (it is busy
    /// from now on), else it waits behind what is in flight.
    pub(super) fn enter(&mut self, pair: u64, item: T) -> Option<T> {
        match self.busy.get_mut(&pair) {
            Some(waiting) => {
                waiting.push_back(item);
                self.queued += 1;
                None
            }
            None => {
                self.busy.insert(pair, VecDeque::new());
                Some(item)
            }
        }
    }

    /// The pair's item in flight is done: the next to go, if one waits (the pair stays
    /// busy), else the pair is idle.
    pub(super) fn done(&mut self, pair: u64) -> Option<T> {
        let waiting = self.busy.get_mut(&pair)?;
        match waiting.pop_front() {
            Some(next) => {
                self.queued -= 1;
                Some(next)
            }
            None => {
                self.busy.remove(&pair);
                None
            }
        }
    }

    /// Every waiting item, the pairs all idle (the connection dropped: what was in
    /// flight fails with it).
    pub(super) fn drain(&mut self) -> Vec<T> {
        self.queued = 0;
        self.busy.drain().flat_map(|(_, waiting)| waiting).collect()
    }

    /// Items waiting, over every pair.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pairs_items_go_one_at_a_time_in_order_and_other_pairs_do_not_wait() {
        let mut pairs = Pairs::new();
        let (ann_to_bob, cid_to_bob) = (pairs.key("bob", "ann"), pairs.key("bob", "cid"));
        assert_ne!(ann_to_bob, cid_to_bob);
        assert_ne!(pairs.key("ab", "c"), pairs.key("a", "bc"));
        assert_eq!(pairs.enter(ann_to_bob, 1), Some(1));
        assert_eq!(pairs.enter(ann_to_bob, 2), None);
        assert_eq!(pairs.enter(ann_to_bob, 3), None);
        assert_eq!(pairs.enter(cid_to_bob, 10), Some(10));
        assert_eq!(pairs.queued(), 2);
        assert_eq!(pairs.done(ann_to_bob), Some(2));
        assert_eq!(pairs.done(ann_to_bob), Some(3));
        assert_eq!(pairs.done(ann_to_bob), None, "idle now");
        assert_eq!(
            pairs.enter(ann_to_bob, 4),
            Some(4),
            "an idle pair goes at once"
        );
        assert_eq!(pairs.done(12345), None, "not busy: nothing");
    }

    #[test]
    fn a_dropped_connection_hands_back_everything_waiting() {
        let mut pairs = Pairs::new();
        let pair = pairs.key("bob", "ann");
        pairs.enter(pair, 1);
        pairs.enter(pair, 2);
        pairs.enter(pair, 3);
        let mut waiting = pairs.drain();
        waiting.sort_unstable();
        assert_eq!(waiting, [2, 3]);
        assert_eq!(pairs.queued(), 0);
        assert_eq!(pairs.enter(pair, 4), Some(4));
    }
}
