//! Which nodes are alive: each node's heartbeat, as the node bucket's watch reports it, and
//! the silence after which a node counts as dead. No I/O and no clock of its own: the
//! caller says what was heard and when, so the rule is tested without NATS.
//!
//! A node is known by its id and by the instance (process token) that beats for it: a
//! process that takes over a dead node's id is a new instance, and what the old one held
//! (its users' presence, [`super::presence`]) goes with it.

use std::time::{Duration, Instant};

use hashbrown::HashMap;

/// A node not heard from for this long is dead: its users are offline and its claim on
/// its id may be taken over (PROTOCOL.md: offline within 15 s; heartbeats come every
/// [`super::HEARTBEAT`]).
pub(crate) const DEAD_AFTER: Duration = Duration::from_secs(10);

/// The other nodes this node has heard, and when each last beat.
#[derive(Debug, Default)]
pub(crate) struct Members {
    /// Node id → its instance and its last beat.
    others: HashMap<Box<str>, (Box<str>, Instant)>,
}

/// What one report changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A node not known before (or known dead) is alive.
    Joined,
    /// A known node beat again.
    Beat,
    /// Another instance beat for a known node's id (it took over a dead node's id): the
    /// old instance is gone.
    Replaced(Box<str>),
    /// The report was about this node itself, or about a beat already too old to count.
    Ignored,
}

impl Members {
    /// Notes that instance `instance` beat for node `id` at `at` (`me` is this node's own
    /// id, never counted here).
    pub(crate) fn heard(
        &mut self,
        me: &str,
        (id, instance): (&str, &str),
        at: Instant,
        now: Instant,
    ) -> Change {
        if id == me || now.saturating_duration_since(at) >= DEAD_AFTER {
            return Change::Ignored;
        }
        match self.others.get_mut(id) {
            Some((known, last)) if **known == *instance => {
                *last = (*last).max(at);
                Change::Beat
            }
            Some((known, last)) => {
                *last = at;
                Change::Replaced(std::mem::replace(known, instance.into()))
            }
            None => {
                self.others.insert(id.into(), (instance.into(), at));
                Change::Joined
            }
        }
    }

    /// Notes that node `id` left (its key deleted on a graceful stop): its instance, if
    /// it was counted.
    pub(crate) fn left(&mut self, id: &str) -> Option<Box<str>> {
        self.others.remove(id).map(|(instance, _)| instance)
    }

    /// Removes and returns the nodes silent for [`DEAD_AFTER`] at `now`: id and instance.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(Box<str>, Box<str>)> {
        let dead: Vec<Box<str>> = self
            .others
            .iter()
            .filter(|(_, (_, last))| now.saturating_duration_since(*last) >= DEAD_AFTER)
            .map(|(id, _)| id.clone())
            .collect();
        dead.into_iter()
            .filter_map(|id| self.others.remove(&id).map(|(instance, _)| (id, instance)))
            .collect()
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
        assert_eq!(members.heard("a", ("b", "1"), start, start), Change::Joined);
        assert_eq!(members.count(), 2);
        let later = start + Duration::from_secs(4);
        assert_eq!(members.heard("a", ("b", "1"), later, later), Change::Beat);
        assert!(members
            .expire(later + DEAD_AFTER - Duration::from_millis(1))
            .is_empty());
        assert_eq!(
            members.expire(later + DEAD_AFTER),
            vec![("b".into(), "1".into())]
        );
        assert_eq!(members.count(), 1);
    }

    #[test]
    fn its_own_beats_and_stale_ones_are_not_counted() {
        let now = Instant::now() + DEAD_AFTER * 2;
        let mut members = Members::default();
        assert_eq!(members.heard("a", ("a", "1"), now, now), Change::Ignored);
        let stale = now - DEAD_AFTER;
        assert_eq!(members.heard("a", ("b", "1"), stale, now), Change::Ignored);
        assert_eq!(members.count(), 1);
    }

    #[test]
    fn a_node_that_leaves_stops_counting_at_once() {
        let now = Instant::now();
        let mut members = Members::default();
        members.heard("a", ("b", "1"), now, now);
        assert_eq!(members.left("b"), Some("1".into()));
        assert_eq!(members.left("b"), None);
        assert_eq!(members.count(), 1);
    }

    #[test]
    fn an_older_beat_reported_late_does_not_move_the_last_one_back() {
        let now = Instant::now();
        let mut members = Members::default();
        members.heard("a", ("b", "1"), now, now);
        members.heard("a", ("b", "1"), now - Duration::from_secs(5), now);
        assert!(members
            .expire(now + DEAD_AFTER - Duration::from_secs(1))
            .is_empty());
    }

    #[test]
    fn a_new_instance_on_a_known_id_replaces_the_old_one() {
        let now = Instant::now();
        let mut members = Members::default();
        members.heard("a", ("b", "1"), now, now);
        let change = members.heard("a", ("b", "2"), now, now);
        assert_eq!(change, Change::Replaced("1".into()));
        assert_eq!(members.count(), 2);
        assert_eq!(members.heard("a", ("b", "2"), now, now), Change::Beat);
        assert_eq!(members.left("b"), Some("2".into()));
    }
}
