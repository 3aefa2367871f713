//! The events webhook's `user_online` and `user_offline` in a cluster
//! ([`crate::events`]): the cluster's, not each node's. A node that starts holding a
//! user asks the other holders, on `chat.live.<user>`, whether one held the user first;
//! a node that lets the user go asks whether any still holds the user. Silence ("no
//! responders", or no answer within [`CHECK_WAIT`]) means this node reports it.
//!
//! So a user with devices on two nodes is reported online once, by the node that held
//! the user first (two nodes gaining the user at once agree by hold time, then process
//! token), and offline once the last node lets go. Two nodes letting go at the same
//! instant may both report it.
//!
//! A check is asked only while NATS is reachable and the node's holding of the user is
//! kept ([`super::holdings`]): a user is never reported online by a node whose holding of
//! the user could be lost with it. Until then checks wait, each user's in order, and the
//! checks a cut interrupted are asked again. A user who comes and goes is reported online
//! and offline, in that order: each check is asked after the one before it.
//!
//! A holder that could not answer a letting go has the user reported offline though it
//! holds the user. So it checks the user again, as if gained then: every user it holds
//! once it is back on NATS after a cut; a user whose question waited past the asker's
//! wait; a user that a node which reported the user offline on silence, or reaped a gone
//! process's holding of the user, asks the holders about ([`recheck`]); and a user it
//! answered about to an asker that is gone soon after ([`Vouched`]).
//!
//! No I/O: the relayer asks, and hands the answers in.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use hashbrown::HashMap;
use tokio::time::Instant;

use crate::events::Hook;

/// The first byte of a question on `chat.live.<user>` (after the live kinds and the
/// presence question, `relay::QUESTION`).
const KIND: u8 = 5;
/// How long a check waits for a holder's answer before this node reports the change.
pub(super) const CHECK_WAIT: Duration = Duration::from_millis(500);
/// How long an offline reported on silence is remembered: an asker cut off from NATS
/// within it asks the holders to check the user again once back ([`recheck`]), and a
/// holder that answered an asker gone within it checks the user again ([`Vouched`]).
pub(super) const LATE_WAIT: Duration = Duration::from_secs(30);
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

/// What the node that reported `user` offline at `at_ms` on silence says right after: a
/// subscriber that did not answer may hold the user (its `held` late, its holding being
/// written, or it gained the user again meanwhile), so each holder checks the user
/// again. A reaper says it too on finding a gone process's user still held. Published,
/// not asked; `at_ms` and the instance are for the logs.
pub(super) fn recheck(at_ms: u64, instance: &str) -> Vec<u8> {
    let mut said = vec![KIND];
    said.extend_from_slice(format!("r {at_ms} {instance}").as_bytes());
    said
}

/// What a holder of the user hears on `chat.live.<user>` about its presence events.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard<'a> {
    /// Process `asker` let the user go; the holder answers `held`.
    LetGo { asker: &'a str },
    /// Another process gained the user; the holder answers `held` if `true`.
    Gained(bool),
    /// The user was reported offline although a holder was there ([`recheck`]).
    Recheck,
}

/// What a node holding the user since `held_since_ms` (process `instance`) makes of
/// `payload`: `None` when it is not about presence events. A question about a user let
/// go elsewhere is answered (it still holds the user); one about a user gained elsewhere,
/// if it held the user first.
pub(super) fn heard<'a>(
    payload: &'a [u8],
    held_since_ms: u64,
    instance: &str,
) -> Option<Heard<'a>> {
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
        "f" => Some(Heard::LetGo { asker }),
        "o" => Some(Heard::Gained((held_since_ms, instance) < (at_ms, asker))),
        "r" => Some(Heard::Recheck),
        _ => None,
    }
}

/// The users this node answered `held` about to a process letting them go, by that
/// process, for [`LATE_WAIT`]: an answer that came after the asker's wait has it report
/// the user offline and ask the holders to check the user again ([`recheck`]), which an
/// asker that dies or leaves meanwhile never does. So when it is gone, its users here
/// are checked again. Allocation-aware: an asker's entry lives while it has answers.
#[derive(Debug, Default)]
pub(super) struct Vouched {
    by_asker: HashMap<Box<str>, Vec<(Arc<str>, Instant)>>,
}

impl Vouched {
    /// This node answered `held` about `user` to `asker`, letting the user go, at `now`.
    pub(super) fn answered(&mut self, asker: &str, user: Arc<str>, now: Instant) {
        let until = now + LATE_WAIT;
        match self.by_asker.get_mut(asker) {
            Some(users) => users.push((user, until)),
            None => {
                self.by_asker.insert(asker.into(), vec![(user, until)]);
            }
        }
    }

    /// `asker` is gone: the users answered to it within [`LATE_WAIT`], to check again.
    pub(super) fn gone(&mut self, asker: &str) -> Vec<Arc<str>> {
        let users = self.by_asker.remove(asker).unwrap_or_default();
        users.into_iter().map(|(user, _)| user).collect()
    }

    /// Forgets the answers older than [`LATE_WAIT`] at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        self.by_asker.retain(|_, users| {
            users.retain(|(_, until)| *until > now);
            !users.is_empty()
        });
    }
}

/// A change of this node's to check: `user` came online here (`online`) or went
/// offline, at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    pub user: Arc<str>,
    pub online: bool,
    pub at_ms: u64,
    /// The offline of a user a gone process held, found by this reap
    /// ([`Change::reaped`]).
    pub reaped: Option<u64>,
}

impl Change {
    /// The change of `user` online here (`online`) or offline, at `at_ms`.
    pub(super) fn new(user: Arc<str>, online: bool, at_ms: u64) -> Change {
        Change {
            user,
            online,
            at_ms,
            reaped: None,
        }
    }

    /// The offline, at `at_ms`, of `user`, whom a gone process held (found by reap number
    /// `reap`, told when this is settled): that process may have died owing the user's
    /// online too, so if a holder answers, the holders check the user again.
    pub(super) fn reaped(user: Arc<str>, at_ms: u64, reap: u64) -> Change {
        let reaped = Some(reap);
        let online = false;
        Change {
            user,
            online,
            at_ms,
            reaped,
        }
    }

    fn settled(self, reported: bool) -> Settled {
        Settled {
            user: self.user,
            online: self.online,
            at_ms: self.at_ms,
            reaped: self.reaped,
            reported,
        }
    }
}

/// A change asked about, waiting for the holders' answers until `until`.
#[derive(Debug)]
struct Waiting {
    change: Change,
    until: Instant,
}

/// One user's checks: those asked (by number) and those waiting to be asked, in order.
#[derive(Debug, Default)]
struct OfUser {
    asked: Vec<u64>,
    deferred: VecDeque<Change>,
}

/// The checks under way, by the number their answers come back with, and those waiting
/// to be asked, by user (each user's in order); and the offlines reported on silence,
/// for [`LATE_WAIT`]. Allocation-aware: a user's entry lives only while it has checks.
#[derive(Debug, Default)]
pub(super) struct Checks {
    waiting: HashMap<u64, Waiting>,
    next: u64,
    users: HashMap<Arc<str>, OfUser>,
    /// Offlines that no holder answered within the wait, in the order reported, for
    /// [`LATE_WAIT`]: the user, the report's time and when it is forgotten.
    unanswered: VecDeque<(Arc<str>, u64, Instant)>,
}

impl Checks {
    /// Starts a check of `change`; returns its number, for the reply subject.
    pub(super) fn start(&mut self, change: Change, now: Instant) -> u64 {
        let id = self.next;
        self.next += 1;
        let of_user = self.users.entry(change.user.clone()).or_default();
        of_user.asked.push(id);
        let until = now + CHECK_WAIT;
        self.waiting.insert(id, Waiting { change, until });
        id
    }

    /// An answer to check `id`: a holder said it held (`held`), and another node
    /// reports the change; or none holds ("no responders"), and this node reports it.
    pub(super) fn answered(&mut self, id: u64, held: bool) -> Option<Settled> {
        let change = self.finish(id)?;
        Some(change.settled(!held))
    }

    /// The offlines reported on silence within [`LATE_WAIT`], in the order reported, and
    /// forgotten: the holders were asked to check each user again right after, which a
    /// cut may have lost, so they are asked again once NATS is back.
    pub(super) fn take_unanswered(&mut self) -> Vec<(Arc<str>, u64)> {
        (self.unanswered.drain(..))
            .map(|(user, reported_ms, _)| (user, reported_ms))
            .collect()
    }

    fn finish(&mut self, id: u64) -> Option<Change> {
        let Waiting { change, .. } = self.waiting.remove(&id)?;
        if let Some(of_user) = self.users.get_mut(&change.user) {
            of_user.asked.retain(|&asked| asked != id);
            if of_user.asked.is_empty() && of_user.deferred.is_empty() {
                self.users.remove(&change.user);
            }
        }
        Some(change)
    }

    /// A change to check once it can be asked, after the user's others.
    pub(super) fn defer(&mut self, change: Change) {
        let of_user = self.users.entry(change.user.clone()).or_default();
        of_user.deferred.push_back(change);
    }

    /// The users with a check under way or waiting to be asked.
    pub(super) fn users(&self) -> usize {
        self.users.len()
    }

    /// Whether a check of `user`'s is under way or waits to be asked.
    pub(super) fn pending(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Whether a check of a change of this node's own of `user` (not a reaped one) is
    /// under way or waits: until it settles, this node's holding must not be written
    /// let go.
    pub(super) fn owes(&self, user: &str) -> bool {
        let Some(of_user) = self.users.get(user) else {
            return false;
        };
        let own = |change: &Change| change.reaped.is_none();
        let asked = (of_user.asked.iter()).filter_map(|id| self.waiting.get(id));
        asked.map(|waiting| &waiting.change).any(own) || of_user.deferred.iter().any(own)
    }

    /// The users this node [`Checks::owes`] a check of its own change, in name order.
    pub(super) fn owing(&self) -> Vec<Arc<str>> {
        let mut users: Vec<Arc<str>> = (self.users.keys())
            .filter(|user| self.owes(user))
            .cloned()
            .collect();
        users.sort_unstable();
        users
    }

    /// The next change of `user` waiting to be asked, if none of the user's is asked:
    /// a user's changes are checked one at a time, so that they settle in order.
    pub(super) fn next_deferred(&mut self, user: &str) -> Option<Change> {
        let of_user = self.users.get_mut(user)?;
        if !of_user.asked.is_empty() {
            return None;
        }
        let next = of_user.deferred.pop_front();
        if of_user.deferred.is_empty() {
            self.users.remove(user);
        }
        next
    }

    /// The users with changes waiting to be asked, in name order.
    pub(super) fn users_deferred(&self) -> Vec<Arc<str>> {
        let mut users: Vec<Arc<str>> = (self.users.iter())
            .filter(|(_, of_user)| !of_user.deferred.is_empty())
            .map(|(user, _)| user.clone())
            .collect();
        users.sort_unstable();
        users
    }

    /// Cut off from NATS: the checks under way can get no answer, and are asked again,
    /// each before the same user's changes deferred meanwhile.
    pub(super) fn interrupt(&mut self) {
        let mut asked: Vec<(u64, Waiting)> = self.waiting.drain().collect();
        asked.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, waiting) in asked {
            let of_user = self.users.entry(waiting.change.user.clone()).or_default();
            of_user.asked.clear();
            of_user.deferred.push_front(waiting.change);
        }
    }

    /// The checks that no holder answered by `now`, in the order they started: this
    /// node reports them, at `now_ms`. An offline among them is kept for [`LATE_WAIT`]
    /// ([`Checks::take_unanswered`]).
    pub(super) fn expire(&mut self, now: Instant, now_ms: u64) -> Vec<Settled> {
        while self
            .unanswered
            .front()
            .is_some_and(|(_, _, until)| *until <= now)
        {
            self.unanswered.pop_front();
        }
        let mut late: Vec<u64> = (self.waiting.iter())
            .filter(|(_, waiting)| waiting.until <= now)
            .map(|(id, _)| *id)
            .collect();
        late.sort_unstable();
        let mut settled = Vec::with_capacity(late.len());
        for id in late {
            let Some(change) = self.finish(id) else {
                continue;
            };
            if !change.online {
                let forget = now + LATE_WAIT;
                (self.unanswered).push_back((change.user.clone(), now_ms, forget));
            }
            settled.push(change.settled(true));
        }
        settled
    }
}

/// A check that is over.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Settled {
    /// The user who came online here (`online`) or went offline, at `at_ms`.
    pub user: Arc<str>,
    pub online: bool,
    pub at_ms: u64,
    /// The offline of a user a gone process held, found by this reap.
    pub reaped: Option<u64>,
    /// No other holder answered: this node reports it.
    pub reported: bool,
}

impl Settled {
    /// The event this node posts, if it reports the change. It is dated when it was
    /// decided, not when the change happened: a check that waited (NATS away) was
    /// decided on what the cluster knew then, and another node's report decided earlier
    /// on what it knew must come before it.
    pub(super) fn report(&self) -> Option<Hook> {
        if !self.reported {
            return None;
        }
        let user = self.user.clone();
        Some(match self.online {
            true => Hook::UserOnline { user },
            false => Hook::UserOffline { user },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_holder_answers_a_newcomer_and_any_holder_a_departure() {
        let answers = |payload: &[u8], since_ms, instance| match heard(payload, since_ms, instance)
        {
            Some(Heard::Gained(held)) => Some(held),
            Some(Heard::LetGo { asker }) => Some(asker == "b"),
            Some(Heard::Recheck) => panic!("a question, not a recheck"),
            None => None,
        };
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
        let recheck = recheck(100, "b");
        assert_eq!(heard(&recheck, 900, "a"), Some(Heard::Recheck));
    }

    #[test]
    fn silence_reports_and_an_answer_leaves_it_to_the_holder() {
        let now = Instant::now();
        let mut checks = Checks::default();
        let user: Arc<str> = "u".into();
        let change = |online, at_ms| Change::new(user.clone(), online, at_ms);
        let held = checks.start(change(true, 10), now);
        let settled = checks.answered(held, true).expect("waiting");
        assert_eq!(settled.report(), None, "another node reports it");
        let alone = checks.start(change(true, 20), now);
        let reported = checks.answered(alone, false).and_then(|s| s.report());
        assert_eq!(reported, Some(Hook::UserOnline { user: user.clone() }));
        let unanswered = checks.start(change(false, 30), now);
        assert!(checks.expire(now, 40).is_empty());
        let late: Vec<_> = (checks.expire(now + CHECK_WAIT, 530).iter())
            .filter_map(Settled::report)
            .collect();
        assert_eq!(late, [Hook::UserOffline { user: user.clone() }]);
        assert_eq!(checks.answered(unanswered, false), None, "answered once");
        assert!(!checks.pending("u"), "nothing left of the user");
    }

    #[test]
    fn the_users_answered_to_an_asker_that_is_gone_are_checked_again_for_a_while() {
        let now = Instant::now();
        let mut vouched = Vouched::default();
        let (u, v): (Arc<str>, Arc<str>) = ("u".into(), "v".into());
        vouched.answered("a", u.clone(), now);
        vouched.answered("b", v.clone(), now);
        vouched.answered("a", v.clone(), now + CHECK_WAIT);
        vouched.expire(now + LATE_WAIT);
        assert_eq!(vouched.gone("a"), [v], "u's answer is forgotten");
        assert!(vouched.gone("a").is_empty(), "once");
        assert!(vouched.gone("b").is_empty(), "forgotten");
    }

    #[test]
    fn offlines_reported_on_silence_are_remembered_for_a_while() {
        let now = Instant::now();
        let mut checks = Checks::default();
        let user: Arc<str> = "u".into();
        checks.start(Change::new(user.clone(), true, 10), now);
        checks.start(Change::new(user.clone(), false, 20), now);
        assert_eq!(checks.expire(now + CHECK_WAIT, 600).len(), 2);
        let later = now + LATE_WAIT / 2;
        checks.start(Change::new(user.clone(), false, 30), later);
        checks.expire(later + CHECK_WAIT, 16_000);
        checks.expire(now + CHECK_WAIT + LATE_WAIT, 30_600);
        assert_eq!(
            checks.take_unanswered(),
            [(user.clone(), 16_000)],
            "the first forgotten, and an online not kept"
        );
        assert!(checks.take_unanswered().is_empty(), "taken once");
    }

    #[test]
    fn a_users_checks_go_one_at_a_time_in_order_and_a_cut_asks_again() {
        let now = Instant::now();
        let mut checks = Checks::default();
        let (u, v): (Arc<str>, Arc<str>) = ("u".into(), "v".into());
        let first = checks.start(Change::new(u.clone(), false, 10), now);
        checks.start(Change::new(u.clone(), true, 20), now);
        checks.interrupt();
        checks.defer(Change::new(u.clone(), false, 25));
        checks.defer(Change::new(v.clone(), true, 30));
        assert_eq!(
            checks.answered(first, false),
            None,
            "no answer after the cut"
        );
        assert!(checks.expire(now + CHECK_WAIT, 600).is_empty());
        assert_eq!(checks.users_deferred(), [u.clone(), v.clone()]);
        let mut again = Vec::new();
        while let Some(change) = checks.next_deferred("u") {
            again.push((change.online, change.at_ms));
            let asked = checks.start(change, now);
            assert_eq!(checks.next_deferred("u"), None, "one at a time");
            assert!(checks.answered(asked, true).is_some());
        }
        assert_eq!(again, [(false, 10), (true, 20), (false, 25)]);
        assert!(!checks.pending("u") && checks.pending("v"));
    }

    #[test]
    fn only_a_nodes_own_changes_hold_back_its_letting_go() {
        let now = Instant::now();
        let mut checks = Checks::default();
        let user: Arc<str> = "u".into();
        let reaped = checks.start(Change::reaped(user.clone(), 10, 7), now);
        assert!(
            checks.pending("u") && !checks.owes("u"),
            "a reap owes nothing"
        );
        checks.defer(Change::new(user.clone(), true, 20));
        assert!(checks.owes("u"), "a change of its own waits");
        let settled = checks.answered(reaped, true).expect("waiting");
        assert_eq!((settled.reaped, settled.reported), (Some(7), false));
        let own = checks.next_deferred("u").expect("deferred");
        let own = checks.start(own, now);
        assert!(checks.owes("u"), "a change of its own asked");
        checks.answered(own, false);
        assert!(!checks.owes("u") && !checks.pending("u"));
    }
}
