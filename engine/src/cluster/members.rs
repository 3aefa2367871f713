//! Which nodes are alive: each node's heartbeat, as the node bucket's watch reports it, and
//! the silence after which a node counts as dead. No I/O and no clock of its own: the
//! caller says what was heard and when, so the rule is tested without NATS.

use std::time::{Duration, Instant};

use hashbrown::HashMap;

/// A node not heard from for this long is dead: its users are offline and its claim on
/// its id may be taken over (PROTOCOL.md: offline within 15 s; heartbeats come every
/// [`super::HEARTBEAT`]).
pub(crate) const DEAD_AFTER: Duration = Duration::from_secs(10);

/// The other nodes this node has heard, and when each last beat.
#[derive(Debug, Default)]
pub(crate) struct Members {
    others: HashMap<Box<str>, Instant>,
}

/// What one report changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A node not known before (or known dead) is alive.
    Joined,
    /// A known node beat again.
    Beat,
    /// The report was about this node itself, or about a beat already too old to count.
    Ignored,
}

impl Members {
    /// Notes that node `id` beat at `at` (`me` is this node's own id, never counted here).
    pub(crate) fn heard(&mut self, me: &str, id: &str, at: Instant, now: Instant) -> Change {
        if id == me || now.saturating_duration_since(at) >= DEAD_AFTER {
            return Change::Ignored;
        }
        match self.others.get_mut(id) {
            Some(last) => {
                *last = (*last).max(at);
                Change::Beat
            }
            None => {
                self.others.insert(id.into(), at);
                Change::Joined
            }
        }
    }

    /// Notes that node `id` left (its key deleted on a graceful stop); true if it was
    /// counted.
    pub(crate) fn left(&mut self, id: &str) -> bool {
        self.others.remove(id).is_some()
    }

    /// Removes and returns the nodes silent for [`DEAD_AFTER`] at `now`.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Box<str>> {
        let dead: Vec<Box<str>> = self
            .others
            .iter()
            .filter(|(_, last)| now.saturating_duration_since(**last) >= DEAD_AFTER)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.others.remove(id);
        }
        dead
    }

    /// Live nodes, this one included.
    pub(crate) fn count(&self) -> usize {
        self.others.len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_counts_from_its_first_beat_until_it_falls_silent() {
        let start = Instant::now();
        let mut members = Members::default();
        assert_eq!(members.count(), 1);
        assert_eq!(members.heard("a", "b", start, start), Change::Joined);
        assert_eq!(members.count(), 2);
        let later = start + Duration::from_secs(4);
        assert_eq!(members.heard("a", "b", later, later), Change::Beat);
        assert!(members
            .expire(later + DEAD_AFTER - Duration::from_millis(1))
            .is_empty());
        assert_eq!(members.expire(later + DEAD_AFTER), vec!["b".into()]);
        assert_eq!(members.count(), 1);
    }

    #[test]
    fn its_own_beats_and_stale_ones_are_not_counted() {
        let now = Instant::now() + DEAD_AFTER * 2;
        let mut members = Members::default();
        assert_eq!(members.heard("a", "a", now, now), Change::Ignored);
        let stale = now - DEAD_AFTER;
        assert_eq!(members.heard("a", "b", stale, now), Change::Ignored);
        assert_eq!(members.count(), 1);
    }

    #[test]
    fn a_node_that_leaves_stops_counting_at_once() {
        let now = Instant::now();
        let mut members = Members::default();
        members.heard("a", "b", now, now);
        assert!(members.left("b"));
        assert!(!members.left("b"));
        assert_eq!(members.count(), 1);
    }

    #[test]
    fn an_older_beat_reported_late_does_not_move_the_last_one_back() {
        let now = Instant::now();
        let mut members = Members::default();
        members.heard("a", "b", now, now);
        members.heard("a", "b", now - Duration::from_secs(5), now);
        assert!(members
            .expire(now + DEAD_AFTER - Duration::from_secs(1))
            .is_empty());
    }
}
