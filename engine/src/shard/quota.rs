//! `--queue-max-per-sender` at a user's home: how many messages one sender may leave
//! waiting for a user who has no device online, so that no one sender fills another
//! user's queue (issue 22: one client filled a victim's queue, and the victim's next real
//! message was refused `queue_full`).
//!
//! Counted in memory, from the user's last device going to the next one coming: a
//! device's connection resets the user's counts (it reads the queue), and so does a
//! restart. The inbox's own bound, `--queue-max-per-user`, stays the durable limit.

use std::{collections::HashMap, sync::Arc};

/// The counts of one home's offline users.
#[derive(Debug, Default)]
pub(super) struct SenderQuota {
    /// Messages one sender may queue for one user (0: no bound).
    max: u32,
    /// Receiver → sender → messages queued since the receiver's last connection.
    queued: HashMap<Box<str>, HashMap<Arc<str>, u32>>,
}

impl SenderQuota {
    /// At most `max` messages from one sender wait for one user (0: no bound).
    pub(super) fn new(max: u32) -> SenderQuota {
        SenderQuota {
            max,
            queued: HashMap::new(),
        }
    }

    /// Counts one more message from `sender` queued for `receiver`; false (and nothing
    /// counted) when `sender` has queued `max` already.
    pub(super) fn take(&mut self, receiver: &str, sender: &Arc<str>) -> bool {
        if self.max == 0 {
            return true;
        }
        if !self.queued.contains_key(receiver) {
            self.queued.insert(receiver.into(), HashMap::new());
        }
        let senders = self.queued.get_mut(receiver).expect("inserted above");
        let count = senders.entry(sender.clone()).or_default();
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// `receiver` has a device online: what waited is being read.
    pub(super) fn reset(&mut self, receiver: &str) {
        self.queued.remove(receiver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sender_queues_up_to_the_bound_until_the_receiver_connects() {
        let mut quota = SenderQuota::new(2);
        let (mallory, friend): (Arc<str>, Arc<str>) = ("mallory".into(), "friend".into());
        assert!(quota.take("victim", &mallory));
        assert!(quota.take("victim", &mallory));
        assert!(!quota.take("victim", &mallory), "at the bound");
        assert!(quota.take("victim", &friend), "each sender has its own");
        assert!(quota.take("friend", &mallory), "and each receiver");
        quota.reset("victim");
        assert!(quota.take("victim", &mallory));
        let mut unbounded = SenderQuota::new(0);
        assert!((0..10).all(|_| unbounded.take("victim", &mallory)));
        assert!(unbounded.queued.is_empty());
    }
}
