//! The events webhook's `user_online` and `user_offline` in a cluster
//! ([`crate::events`]): the cluster's, not each node's. A node that starts holding a
//! user asks the other holders, on `chat.live.<user>`, whether one held the user first;
//! a node that lets the user go asks whether any still holds the user. Silence ("no
//! responders", or no answer within [`CHECK_WAIT`]) means this node reports it.
//!
//! So a user with devices on two nodes is reported online once, by the node that held
//! the user first (two nodes gaining the user at once agree by hold time, then process
//! token), and offline once the last node lets go. Two nodes letting go at the same
//! instant may both report it, and with NATS out of reach a node reports what it sees:
//! at least once, never missed while NATS carries the questions.
//!
//! No I/O: the relayer asks, and hands the answers in.

use std::{sync::Arc, time::Duration};

use hashbrown::HashMap;
use tokio::time::Instant;

use crate::events::Hook;

/// The first byte of a question on `chat.live.<user>` (after the live kinds and the
/// presence question, `relay::QUESTION`).
const KIND: u8 = 5;
/// How long a check waits for a holder's answer before this node reports the change.
pub(super) const CHECK_WAIT: Duration = Duration::from_millis(500);
/// A holder's answer: "not yours to report".
pub(super) const HELD: &[u8] = b"held";

/// The question for a user this node started holding at `since_ms` (`online`) or let go
/// at `at_ms`: `[5]` then `o` or `f`, the time and this process's token.
pub(super) fn question(online: bool, at_ms: u64, instance: &str) -> Vec<u8> {
    let mut said = vec![KIND];
    said.extend_from_slice(
        format!("{} {at_ms} {instance}", if online { 'o' } else { 'f' }).as_bytes(),
    );
    said
}

/// Whether a node holding the user since `held_since_ms` (process `instance`) answers
/// `payload`: `None` when it is no such question; for a user let go elsewhere, yes
/// (it still holds the user); for a user gained elsewhere, if it held the user first.
pub(super) fn answers(payload: &[u8], held_since_ms: u64, instance: &str) -> Option<bool> {
    let (&KIND, said) = payload.split_first()? else {
        return None;
    };
    let said = std::str::from_utf8(said).ok()?;
    let mut parts = said.splitn(3, ' ');
    let (kind, at_ms, asker) = (
        parts.next()?,
        parts.next()?.parse::<u64>().ok()?,
        parts.next()?,
    );
    match kind {
        "f" => Some(true),
        "o" => Some((held_since_ms, instance) < (at_ms, asker)),
        _ => None,
    }
}

/// A check waiting for the holders' answers.
#[derive(Debug)]
struct Waiting {
    user: Arc<str>,
    online: bool,
    at_ms: u64,
    until: Instant,
}

/// The checks under way, by the number their answers come back with.
#[derive(Debug, Default)]
pub(super) struct Checks {
    waiting: HashMap<u64, Waiting>,
    next: u64,
}

impl Checks {
    /// Starts a check that `user` came online (`online`) or went offline at `at_ms`;
    /// returns its number, for the reply subject.
    pub(super) fn start(&mut self, user: Arc<str>, online: bool, at_ms: u64, now: Instant) -> u64 {
        let id = self.next;
        self.next += 1;
        let until = now + CHECK_WAIT;
        let check = Waiting {
            user,
            online,
            at_ms,
            until,
        };
        self.waiting.insert(id, check);
        id
    }

    /// An answer to check `id`: a holder said it held (`held`), and the check is
    /// dropped; or none holds ("no responders"), and the change is this node's to report.
    pub(super) fn answered(&mut self, id: u64, held: bool) -> Option<(u64, Hook)> {
        let check = self.waiting.remove(&id)?;
        (!held).then(|| report(check))
    }

    /// `user` went offline here while the check that the user came online still waits:
    /// both are dropped (true), the user came and went with nobody told.
    pub(super) fn cancel_online(&mut self, user: &str) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|_, c| !(c.online && *c.user == *user));
        self.waiting.len() < before
    }

    /// The checks that no holder answered by `now`, in the order they started: this
    /// node reports them.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(u64, Hook)> {
        self.take(|check| check.until <= now)
    }

    /// Every check under way, in the order they started, to be reported now: no answer
    /// can come (NATS is out of reach).
    pub(super) fn take_all(&mut self) -> Vec<(u64, Hook)> {
        self.take(|_| true)
    }

    fn take(&mut self, which: impl Fn(&Waiting) -> bool) -> Vec<(u64, Hook)> {
        let mut taken: Vec<(u64, Waiting)> =
            self.waiting.extract_if(|_, check| which(check)).collect();
        taken.sort_unstable_by_key(|(id, _)| *id);
        taken.into_iter().map(|(_, check)| report(check)).collect()
    }
}

/// The event a check that nobody answered reports, and when it happened.
fn report(check: Waiting) -> (u64, Hook) {
    let user = check.user;
    let hook = if check.online {
        Hook::UserOnline { user }
    } else {
        Hook::UserOffline { user }
    };
    (check.at_ms, hook)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_holder_answers_a_newcomer_and_any_holder_a_departure() {
        let gained = question(true, 100, "b");
        assert_eq!(answers(&gained, 50, "a"), Some(true), "held first");
        assert_eq!(answers(&gained, 150, "a"), Some(false), "held later");
        assert_eq!(
            answers(&gained, 100, "a"),
            Some(true),
            "a tie: the smaller token"
        );
        assert_eq!(answers(&gained, 100, "c"), Some(false));
        let gone = question(false, 100, "b");
        assert_eq!(answers(&gone, 900, "a"), Some(true));
        assert_eq!(answers(&[3], 1, "a"), None, "the presence question");
        assert_eq!(answers(&[KIND, b'x'], 1, "a"), None);
    }

    #[test]
    fn silence_reports_an_answer_does_not_and_leaving_first_cancels_both() {
        let now = Instant::now();
        let mut checks = Checks::default();
        let user: Arc<str> = "u".into();
        let held = checks.start(user.clone(), true, 10, now);
        assert_eq!(checks.answered(held, true), None);
        let alone = checks.start(user.clone(), true, 20, now);
        let reported = checks.answered(alone, false);
        assert_eq!(
            reported,
            Some((20, Hook::UserOnline { user: user.clone() }))
        );
        let unanswered = checks.start(user.clone(), false, 30, now);
        assert!(checks.expire(now).is_empty());
        let late = checks.expire(now + CHECK_WAIT);
        assert_eq!(late, [(30, Hook::UserOffline { user: user.clone() })]);
        assert_eq!(checks.answered(unanswered, false), None, "answered once");
        checks.start(user.clone(), true, 40, now);
        assert!(checks.cancel_online("u"));
        assert!(!checks.cancel_online("u"));
        assert!(checks.expire(now + CHECK_WAIT).is_empty());
    }

    #[test]
    fn cut_off_every_check_is_reported_at_once_in_the_order_it_started() {
        let now = Instant::now();
        let mut checks = Checks::default();
        let user: Arc<str> = "u".into();
        checks.start(user.clone(), false, 10, now);
        checks.start(user.clone(), true, 20, now);
        let reported = checks.take_all();
        assert_eq!(
            reported,
            [
                (10, Hook::UserOffline { user: user.clone() }),
                (20, Hook::UserOnline { user })
            ]
        );
        assert!(checks.expire(now + CHECK_WAIT).is_empty(), "once");
    }
}
