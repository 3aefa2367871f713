//! The presence grace period (`--presence-grace-ms`): a user whose last device dropped
//! without a close frame is shown offline only once the grace has passed with no device
//! back, so reconnect churn does not flap presence.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

/// Users homed here whose last device dropped, until their grace ends.
#[derive(Debug, Default)]
pub struct Away {
    /// User → when the grace ends (Unix ms).
    until: HashMap<Arc<str>, u64>,
    /// The same, in the order they end (the grace is one length, so this is FIFO).
    order: VecDeque<(u64, Arc<str>)>,
}

impl Away {
    /// `user`'s last device dropped at `now_ms`: offline at `now_ms + grace_ms`.
    pub fn start(&mut self, user: Arc<str>, now_ms: u64, grace_ms: u64) {
        let until = now_ms + grace_ms;
        self.until.insert(user.clone(), until);
        self.order.push_back((until, user));
    }

    /// A device of `user` is back: true if the user was in its grace (and so was never
    /// shown offline).
    pub fn back(&mut self, user: &str) -> bool {
        self.until.remove(user).is_some()
    }

    /// Whether `user` is in its grace (shown online).
    pub fn contains(&self, user: &str) -> bool {
        self.until.contains_key(user)
    }

    /// The users whose grace has ended by `now_ms`.
    pub fn ended(&mut self, now_ms: u64) -> Vec<Arc<str>> {
        let mut ended = Vec::new();
        while let Some((until, _)) = self.order.front() {
            if *until > now_ms {
                break;
            }
            let (until, user) = self.order.pop_front().expect("a front");
            // A user back (or gone again since) has another entry, or none.
            if self.until.get(&user) == Some(&until) {
                self.until.remove(&user);
                ended.push(user);
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_back_in_time_never_goes_offline() {
        let mut away = Away::default();
        away.start("ann".into(), 1_000, 30);
        away.start("bob".into(), 1_010, 30);
        assert!(away.contains("ann"));
        assert!(away.back("ann"));
        assert!(away.ended(1_029).is_empty());
        assert_eq!(away.ended(1_040), vec![Arc::<str>::from("bob")]);
        assert!(!away.contains("bob") && !away.back("bob"));
        // Gone, back, gone again: only the last grace counts.
        away.start("cy".into(), 2_000, 30);
        away.back("cy");
        away.start("cy".into(), 2_020, 30);
        assert!(away.ended(2_030).is_empty());
        assert_eq!(away.ended(2_050).len(), 1);
    }
}
