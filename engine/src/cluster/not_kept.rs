//! The chat messages a node's inboxes did not keep lately (docs/cluster.md, "Inboxes"):
//! their append failed (NATS out of reach, JetStream refusing) or was refused
//! (`queue_full`, `sender_quota`).
//!
//! A client's retry that its receiver's home recognises becomes a confirm, answered
//! `sent` or `queued` once the appends before it are answered: the first copy is taken
//! to be kept. When it was not, the home hears so (`NotKept`) and forgets the message,
//! but a retry it confirmed before hearing it would be acknowledged for a message no
//! stream holds. So the inboxes remember what they did not keep, and such a confirm
//! fails instead: the client retries, and the home takes that retry as a new message.
//!
//! Kept under a keyed 64-bit hash of the receiver, the sender and the message id (the
//! keys random per process, as [`super::pairs`]'s), at most [`REMEMBERED_MAX`] at once,
//! the oldest forgotten first; a message kept later is forgotten at once.

use std::{
    collections::VecDeque,
    hash::{BuildHasher, Hasher},
};

use hashbrown::HashMap;

/// Messages remembered at most: far more than fail between a home's retry and its
/// hearing `NotKept` (one trip through its reactor's channel).
const REMEMBERED_MAX: usize = 4_096;

/// The chat messages not kept lately.
pub(super) struct NotKept {
    keys: std::collections::hash_map::RandomState,
    /// Key → the number of its last record.
    remembered: HashMap<u64, u64>,
    /// `(key, record number)`, oldest first; a key recorded again or kept since is
    /// skipped when its old record goes.
    order: VecDeque<(u64, u64)>,
    next: u64,
}

impl NotKept {
    /// Nothing remembered.
    pub(super) fn new() -> NotKept {
        NotKept {
            keys: std::collections::hash_map::RandomState::new(),
            remembered: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }

    /// Message `id` from `sender` to `receiver` was not kept.
    pub(super) fn record(&mut self, receiver: &str, sender: &str, id: &str) {
        let key = self.key(receiver, sender, id);
        self.next += 1;
        self.remembered.insert(key, self.next);
        self.order.push_back((key, self.next));
        if self.order.len() > REMEMBERED_MAX {
            if let Some((old, number)) = self.order.pop_front() {
                if self.remembered.get(&old) == Some(&number) {
                    self.remembered.remove(&old);
                }
            }
        }
    }

    /// The message was kept after all (a later attempt).
    pub(super) fn kept(&mut self, receiver: &str, sender: &str, id: &str) {
        if !self.remembered.is_empty() {
            let key = self.key(receiver, sender, id);
            self.remembered.remove(&key);
        }
    }

    /// Whether the message was not kept lately.
    pub(super) fn contains(&self, receiver: &str, sender: &str, id: &str) -> bool {
        !self.remembered.is_empty()
            && self
                .remembered
                .contains_key(&self.key(receiver, sender, id))
    }

    fn key(&self, receiver: &str, sender: &str, id: &str) -> u64 {
        let mut hasher = self.keys.build_hasher();
        for name in [receiver, sender, id] {
            hasher.write(name.as_bytes());
            hasher.write_u8(0xff);
        }
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_not_kept_is_remembered_until_kept_or_pushed_out() {
        let mut not_kept = NotKept::new();
        not_kept.record("bob", "ann", "m1");
        assert!(not_kept.contains("bob", "ann", "m1"));
        assert!(!not_kept.contains("ann", "bob", "m1"), "another pair");
        not_kept.kept("bob", "ann", "m1");
        assert!(!not_kept.contains("bob", "ann", "m1"));

        not_kept.record("bob", "ann", "m2");
        for i in 0..REMEMBERED_MAX {
            not_kept.record("bob", "ann", &format!("x{i}"));
        }
        assert!(!not_kept.contains("bob", "ann", "m2"), "the oldest goes");
        assert!(not_kept.contains("bob", "ann", "x5"));
    }

    #[test]
    fn a_message_recorded_again_outlives_its_first_record() {
        let mut not_kept = NotKept::new();
        not_kept.record("bob", "ann", "m1");
        for i in 0..REMEMBERED_MAX - 1 {
            not_kept.record("bob", "ann", &format!("x{i}"));
        }
        not_kept.record("bob", "ann", "m1");
        not_kept.record("bob", "ann", "y");
        assert!(not_kept.contains("bob", "ann", "m1"));
    }
}
