//! `--queue-max-per-sender` in a cluster: how many messages one sender's devices on this
//! node may leave unread for one user (docs/cluster.md, "Inboxes").
//!
//! One node's home counts while the receiver has no device online and starts again when
//! one connects (`shard::quota`). A cluster node can know neither: the receiver's devices
//! may be on any node. So it counts every message of the sender that no device on this
//! node got, and once `max` are counted it reads the receiver's acknowledgement record.
//! If a device of the receiver has acknowledged one of the counted messages since, the
//! receiver is reading and the count starts again; if none has, the message is refused
//! (`sender_quota`). Between `max` and twice `max` of one sender's messages thus wait
//! unread at most, and a conversation across nodes costs one read of a record per `max`
//! messages.
//!
//! A pair is kept under its key in [`super::pairs`] (a keyed hash of its two names), so
//! that counting a message allocates nothing, and a pair has one message in flight at a
//! time. A pair not counted for the retention period is forgotten: its messages have
//! expired.

use std::time::Duration;

use hashbrown::HashMap;
use tokio::time::Instant;

/// How often pairs are looked over for ones to forget.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// What one sender left for one receiver since the receiver last read.
#[derive(Debug)]
struct Pair {
    /// Messages counted in this round.
    counted: u32,
    /// Starts at 0 and rises each time the count starts again: answers for messages of an
    /// earlier round change nothing.
    round: u32,
    /// The lowest `seq` JetStream gave a message of this round (0: none stored yet).
    first: u64,
    /// When a message was last counted.
    at: Instant,
}

/// A message counted, as its append carries it to JetStream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counted {
    key: u64,
    round: u32,
}

/// Whether a sender's message may go to JetStream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Take {
    /// Yes, and it is counted.
    Counted(Counted),
    /// The bound is reached: the receiver's record says whether any of the round was read
    /// ([`Unread::reading`]).
    AskRecord,
}

/// Every pair's count on this node.
pub(super) struct Unread {
    /// Messages one sender may leave unread for one user (0: no bound).
    max: u32,
    /// How long a pair is kept after its last message (`--retention-days`).
    retention: Duration,
    pairs: HashMap<u64, Pair>,
    next_sweep: Instant,
}

impl Unread {
    /// Counts of at most `max` messages a pair (0: no bound), forgotten `retention` after
    /// their last message.
    pub(super) fn new(max: u32, retention: Duration) -> Unread {
        Unread {
            max,
            retention,
            pairs: HashMap::new(),
            next_sweep: Instant::now() + SWEEP_EVERY,
        }
    }

    /// Whether there is a bound to count for.
    pub(super) fn bounded(&self) -> bool {
        self.max > 0
    }

    /// One more message of the pair `key`, sent at `now`.
    pub(super) fn take(&mut self, key: u64, now: Instant) -> Take {
        let pair = self.pairs.entry(key).or_insert(Pair {
            counted: 0,
            round: 0,
            first: 0,
            at: now,
        });
        if pair.counted < self.max {
            pair.counted += 1;
            pair.at = now;
            return Take::Counted(Counted {
                key,
                round: pair.round,
            });
        }
        Take::AskRecord
    }

    /// JetStream stored a counted message as `seq`.
    pub(super) fn stored(&mut self, counted: Counted, seq: u64) {
        if let Some(pair) = self.round_of(counted) {
            pair.first = match pair.first {
                0 => seq,
                first => first.min(seq),
            };
        }
    }

    /// A counted message stored nothing new (refused, failed, or a retry JetStream
    /// recognised): it counts no more.
    pub(super) fn give_back(&mut self, counted: Counted) {
        if let Some(pair) = self.round_of(counted) {
            pair.counted = pair.counted.saturating_sub(1);
        }
    }

    /// The receiver's devices have acknowledged up to `acked`: whether the pair has room
    /// now, its count starting again if one of the round's messages was read (none
    /// stored yet: none read).
    pub(super) fn reading(&mut self, key: u64, acked: u64) -> bool {
        let Some(pair) = self.pairs.get_mut(&key) else {
            return true;
        };
        if pair.counted < self.max {
            return true;
        }
        if pair.first == 0 || acked < pair.first {
            return false;
        }
        pair.counted = 0;
        pair.first = 0;
        pair.round = pair.round.wrapping_add(1);
        true
    }

    /// Forgets, about once an hour, the pairs with no message for the retention period.
    pub(super) fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let retention = self.retention;
        self.pairs
            .retain(|_, pair| now.saturating_duration_since(pair.at) < retention);
    }

    /// The pair of a counted message, if its round is still the pair's.
    fn round_of(&mut self, counted: Counted) -> Option<&mut Pair> {
        self.pairs
            .get_mut(&counted.key)
            .filter(|pair| pair.round == counted.round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(take: Take) -> Counted {
        match take {
            Take::Counted(counted) => counted,
            other => panic!("not counted: {other:?}"),
        }
    }

    #[test]
    fn nothing_is_counted_without_a_bound() {
        assert!(!Unread::new(0, Duration::from_secs(60)).bounded());
        assert!(Unread::new(1, Duration::from_secs(60)).bounded());
    }

    #[test]
    fn at_the_bound_the_record_says_whether_the_receiver_read_any() {
        let now = Instant::now();
        let mut unread = Unread::new(2, Duration::from_secs(60));
        let (key, other) = (1, 2);
        let one = counted(unread.take(key, now));
        // Each pair counts its own.
        counted(unread.take(other, now));
        let two = counted(unread.take(key, now));
        assert_eq!(unread.take(key, now), Take::AskRecord);
        // None stored yet: none can have been read.
        assert!(!unread.reading(key, 100));
        unread.stored(one, 10);
        unread.stored(two, 11);
        // Acknowledged up to a message before the round: none read.
        assert!(!unread.reading(key, 9));
        // One of the round read: the count starts again.
        assert!(unread.reading(key, 10));
        let three = counted(unread.take(key, now));
        // A late answer for the old round changes nothing.
        unread.give_back(one);
        counted(unread.take(key, now));
        assert_eq!(unread.take(key, now), Take::AskRecord);
        unread.give_back(three);
        counted(unread.take(key, now));
    }

    #[test]
    fn a_message_that_stored_nothing_gives_its_place_back() {
        let now = Instant::now();
        let mut unread = Unread::new(1, Duration::from_secs(60));
        let one = counted(unread.take(7, now));
        unread.give_back(one);
        counted(unread.take(7, now));
    }

    #[test]
    fn a_pair_idle_for_the_retention_period_is_forgotten() {
        let start = Instant::now();
        let mut unread = Unread::new(1, Duration::from_secs(60));
        let (old, new) = (1, 2);
        counted(unread.take(old, start));
        let later = start + 2 * SWEEP_EVERY;
        counted(unread.take(new, later));
        unread.sweep(start + Duration::from_secs(1));
        assert_eq!(unread.pairs.len(), 2, "not yet time to sweep");
        unread.sweep(later);
        assert_eq!(unread.pairs.len(), 1);
        assert!(unread.pairs.contains_key(&new));
    }
}
