//! The inbox events this node saw live, per user held here, and the user's
//! acknowledgement record as this node last wrote it: so that an ack of them needs no read
//! of the stream and, unless another node wrote the record since, no read of the record
//! (docs/cluster.md, "Inboxes").
//!
//! The stream republishes each event with `Nats-Sequence` and `Nats-Last-Sequence` (the
//! user's event before it), and with its `Chat-Receipt` header if its sender waits for a
//! `delivery_receipt`. Linked by those, the events seen make a chain: every event of the
//! user after `since`, with no gap. An ack from `acked` up to `upto` that the chain covers
//! takes exactly the chain's events in between. nats-server 2.9 finds a user's next event
//! after a `seq` by reading every event of the stream from there once a block holds
//! older events of the user, which acknowledged events kept for other devices make the
//! rule (benches/RESULTS.md): a chain spares it that.

use std::collections::VecDeque;

use hashbrown::HashMap;

use super::acks::Stored;

/// `(sender, message id)` of an event whose sender waits for a `delivery_receipt`.
pub(super) type Receipt = (Box<str>, Box<str>);

/// Events a chain keeps at most: past it the oldest go, and `since` rises past them.
const CHAIN_MAX: usize = 4096;

/// One user's events seen live, without a gap, after `since`, and the user's record at
/// its revision, once written here.
struct Chain {
    since: u64,
    events: VecDeque<(u64, Option<Receipt>)>,
    record: Option<Stored>,
}

impl Chain {
    /// The newest `seq` the chain knows about.
    fn newest(&self) -> u64 {
        self.events.back().map_or(self.since, |(seq, _)| *seq)
    }
}

/// How a live event stands to what was seen of its user's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Continuity {
    /// It follows the newest event seen (or nothing of the user was seen yet).
    Next,
    /// It was seen already.
    Again,
    /// Events after `after` up to the one before it were missed (the relay was cut off
    /// from NATS meanwhile): they are read from the stream before it goes on.
    Gap {
        /// The newest event seen.
        after: u64,
    },
}

/// Every held user's chain.
#[derive(Default)]
pub(super) struct Seen {
    chains: HashMap<Box<str>, Chain>,
}

impl Seen {
    /// Where `user`'s live event `seq`, which follows the user's event `last`, stands.
    pub(super) fn continuity(&self, user: &str, seq: u64, last: u64) -> Continuity {
        let Some(chain) = self.chains.get(user) else {
            return Continuity::Next;
        };
        let newest = chain.newest();
        if seq <= newest {
            Continuity::Again
        } else if last > newest {
            Continuity::Gap { after: newest }
        } else {
            Continuity::Next
        }
    }

    /// A device read every event of `user` up to `covered`, and the user's live events
    /// come from now on: the chain starts there, unless live events started it already.
    pub(super) fn start(&mut self, user: &str, covered: u64) {
        if !self.chains.contains_key(user) {
            let chain = Chain {
                since: covered,
                events: VecDeque::new(),
                record: None,
            };
            self.chains.insert(user.into(), chain);
        }
    }

    /// `user`'s event `seq` came live, after the user's event `last` (0: none). A gap
    /// (an event the chain does not have) starts the chain again from `last`.
    pub(super) fn event(&mut self, user: &str, seq: u64, last: u64, receipt: Option<Receipt>) {
        let chain = match self.chains.get_mut(user) {
            Some(chain) => chain,
            None => self.chains.entry(user.into()).or_insert(Chain {
                since: last,
                events: VecDeque::new(),
                record: None,
            }),
        };
        let newest = chain.newest();
        if seq <= newest {
            return; // seen already
        }
        if last != newest {
            chain.since = last;
            chain.events.clear();
        }
        chain.events.push_back((seq, receipt));
        if chain.events.len() > CHAIN_MAX {
            if let Some((oldest, _)) = chain.events.pop_front() {
                chain.since = oldest;
            }
        }
    }

    /// The events an ack of `user` from `acked` up to `upto` takes, with their receipts,
    /// if the chain knows all of them; `None` if the stream must be read.
    pub(super) fn between(
        &self,
        user: &str,
        acked: u64,
        upto: u64,
    ) -> Option<Vec<(u64, Option<Receipt>)>> {
        let chain = self.chains.get(user)?;
        if chain.since > acked || chain.newest() < upto {
            return None;
        }
        let taken = chain
            .events
            .iter()
            .filter(|(seq, _)| *seq > acked && *seq <= upto)
            .cloned()
            .collect();
        Some(taken)
    }

    /// `user`'s record as last written here, with its revision: a compare-and-set on it
    /// fails if another node wrote since.
    pub(super) fn record(&self, user: &str) -> Option<Stored> {
        self.chains.get(user)?.record
    }

    /// `user`'s record is written (at its revision): the chain lets the acknowledged
    /// events go.
    pub(super) fn written(&mut self, user: &str, stored: Stored) {
        let Some(chain) = self.chains.get_mut(user) else {
            return;
        };
        chain.record = Some(stored);
        // Every event after `since` stays known: up to the newest, whatever goes.
        let (acked, newest) = (stored.record.acked, chain.newest());
        while chain.events.front().is_some_and(|(seq, _)| *seq <= acked) {
            chain.events.pop_front();
        }
        chain.since = chain.since.max(acked.min(newest));
    }

    /// Another node wrote `user`'s record: it is read again.
    pub(super) fn moved(&mut self, user: &str) {
        if let Some(chain) = self.chains.get_mut(user) {
            chain.record = None;
        }
    }

    /// This node no longer holds `user`.
    pub(super) fn forget(&mut self, user: &str) {
        self.chains.remove(user);
    }

    /// Whether `user` has a chain (is held here, and seen).
    pub(super) fn has(&self, user: &str) -> bool {
        self.chains.contains_key(user)
    }

    /// Every user with a chain, and the newest `seq` it knows, in name order.
    pub(super) fn newest_of_each(&self) -> Vec<(Box<str>, u64)> {
        let mut newest: Vec<(Box<str>, u64)> = (self.chains.iter())
            .map(|(user, chain)| (user.clone(), chain.newest()))
            .collect();
        newest.sort_unstable();
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::acks::AckRecord;

    fn receipt(id: &str) -> Option<Receipt> {
        Some(("ann".into(), id.into()))
    }

    #[test]
    fn a_chain_without_gaps_answers_an_ack_and_a_gap_or_an_older_ack_does_not() {
        let mut seen = Seen::default();
        seen.event("bob", 10, 4, None);
        seen.event("bob", 12, 10, receipt("m-1"));
        seen.event("bob", 12, 10, receipt("m-1")); // twice
        seen.event("bob", 15, 12, None);
        let seqs = |taken: Option<Vec<(u64, Option<Receipt>)>>| {
            taken.map(|t| t.into_iter().map(|(seq, _)| seq).collect::<Vec<_>>())
        };
        assert_eq!(seqs(seen.between("bob", 4, 12)), Some(vec![10, 12]));
        assert_eq!(seen.between("bob", 10, 15).unwrap()[0].1, receipt("m-1"));
        assert_eq!(seqs(seen.between("bob", 3, 12)), None, "before the chain");
        assert_eq!(seqs(seen.between("bob", 4, 16)), None, "beyond it");
        assert_eq!(seqs(seen.between("ann", 0, 1)), None, "no chain");
        let record = AckRecord {
            acked: 12,
            ..AckRecord::default()
        };
        let stored = Stored {
            record,
            revision: 3,
            writer: 7,
        };
        seen.written("bob", stored);
        assert_eq!(seen.record("bob"), Some(stored));
        assert_eq!(seqs(seen.between("bob", 12, 15)), Some(vec![15]));
        // Everything acknowledged: the chain still knows where it is.
        let all = AckRecord {
            acked: 15,
            ..AckRecord::default()
        };
        let stored = Stored {
            record: all,
            revision: 4,
            writer: 8,
        };
        seen.written("bob", stored);
        assert_eq!(seen.continuity("bob", 16, 15), Continuity::Next);
        assert_eq!(
            seen.continuity("bob", 17, 16),
            Continuity::Gap { after: 15 }
        );
        seen.moved("bob");
        assert_eq!(seen.record("bob"), None);
        // 20 comes after 18, which this node never saw: the chain starts again.
        seen.event("bob", 20, 18, None);
        assert_eq!(seqs(seen.between("bob", 15, 20)), None);
        assert_eq!(seqs(seen.between("bob", 18, 20)), Some(vec![20]));
        seen.forget("bob");
        assert_eq!(seqs(seen.between("bob", 18, 20)), None);
    }

    #[test]
    fn a_live_event_follows_what_was_read_or_seen_or_reveals_a_gap() {
        let mut seen = Seen::default();
        assert_eq!(
            seen.continuity("bob", 9, 7),
            Continuity::Next,
            "nothing known"
        );
        // A device read up to 7; then 9 comes, after 7.
        seen.start("bob", 7);
        assert_eq!(seen.continuity("bob", 9, 7), Continuity::Next);
        seen.event("bob", 9, 7, None);
        seen.start("bob", 3); // a second device's read changes nothing
        assert_eq!(seen.continuity("bob", 9, 7), Continuity::Again);
        assert_eq!(seen.continuity("bob", 14, 12), Continuity::Gap { after: 9 });
        assert_eq!(seen.continuity("bob", 14, 9), Continuity::Next);
    }

    #[test]
    fn a_long_chain_keeps_its_newest_events() {
        let mut seen = Seen::default();
        for seq in 1..=(CHAIN_MAX as u64 + 10) {
            seen.event("bob", seq, seq - 1, None);
        }
        assert!(seen.between("bob", 5, 20).is_none());
        let newest = CHAIN_MAX as u64 + 10;
        assert_eq!(
            seen.between("bob", 20, newest).unwrap().len(),
            newest as usize - 20
        );
    }
}
