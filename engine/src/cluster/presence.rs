//! Presence across nodes, as the relay keeps it (docs/cluster.md, "Presence"): for each
//! user that a connection on this node watches, which other nodes hold the user, each
//! known by its instance (the process that beats for the node id). A node holds a user
//! from the user's first device there until the user is offline there: the last device
//! gone and its grace over. The user's home here hears only when that set turns empty or
//! not ([`Report`]), and combines it with its own devices.
//!
//! How the set is learnt:
//! - A node announces on `chat.presence.<user>` when it starts and stops holding a user.
//! - When this node starts watching a user, and after each reconnect, it asks who holds
//!   the user: a request on `chat.live.<user>`, which exactly the holding nodes subscribe
//!   to, each answering with its instance. The first answer, "no responders", or the end
//!   of [`ASK_WAIT`] settles the question. Holders known before a question is asked again
//!   that do not answer it within the wait are dropped: they let the user go while this
//!   node was cut off. An answer that comes after the wait still counts (a holder that
//!   answers late holds the user all the same, and its letting go comes after its
//!   answer): the user's last question is kept until the next one, or the unwatch.
//! - A node that dies, leaves or is taken over takes its holdings with it, and what it
//!   said that comes after the news (a node that leaves is known gone at once, maybe
//!   before its last announcements arrive) is ignored for [`GONE_KEPT`].
//!
//! No I/O and no clock of its own: the relayer says what it heard and when.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use hashbrown::HashMap;
use smallvec::SmallVec;
use tokio::time::Instant;

/// How long a question waits for the holders' answers.
pub(super) const ASK_WAIT: Duration = Duration::from_millis(500);

/// How long an instance known gone is remembered, so that what it said before going and
/// that arrives after the news does not bring it back: far longer than a message takes.
const GONE_KEPT: Duration = Duration::from_secs(600);

/// A change for a user's home here: whether any other node holds the user, as of `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Report {
    /// The user's home reactor here.
    pub home: u16,
    /// The user.
    pub user: Arc<str>,
    /// Whether another node holds the user.
    pub online: bool,
    /// When (Unix ms): the announcement's time for a user let go, else the report's.
    pub at_ms: u64,
}

/// One watched user.
#[derive(Debug)]
struct Watched {
    home: u16,
    /// The instances holding the user, and whether each answered the question under way
    /// (or announced itself since it was asked).
    holders: SmallVec<[(Box<str>, bool); 2]>,
    /// The home has heard the first state.
    settled: bool,
    /// The last question asked about the user (its answers count even when late).
    question: u64,
    /// Until when that question is waited for, while it is.
    waiting_until: Option<Instant>,
}

/// What other nodes hold of the users watched here.
#[derive(Debug, Default)]
pub(super) struct Holders {
    watched: HashMap<Arc<str>, Watched>,
    /// Question → the user it asks about.
    questions: HashMap<u64, Arc<str>>,
    next_question: u64,
    /// The instances known gone, oldest first, and when the news came: the deaths and
    /// departures of the last [`GONE_KEPT`], a short list each announcement scans.
    gone: VecDeque<(Box<str>, Instant)>,
}

impl Holders {
    /// Starts watching `user` for its home `home` here: the question to ask now, or
    /// `None` if the user is watched already (the home is noted).
    pub(super) fn watch(&mut self, user: Arc<str>, home: u16, now: Instant) -> Option<u64> {
        if let Some(watched) = self.watched.get_mut(&user) {
            watched.home = home;
            return None;
        }
        let question = self.next_question;
        self.next_question += 1;
        let watched = Watched {
            home,
            holders: SmallVec::new(),
            settled: false,
            question,
            waiting_until: Some(now + ASK_WAIT),
        };
        self.questions.insert(question, user.clone());
        self.watched.insert(user, watched);
        Some(question)
    }

    /// Stops watching `user`; true if it was watched.
    pub(super) fn unwatch(&mut self, user: &str) -> bool {
        let Some(watched) = self.watched.remove(user) else {
            return false;
        };
        self.questions.remove(&watched.question);
        true
    }

    /// Asks about every watched user again (after a reconnect: what was announced
    /// meanwhile was missed): the questions to ask, each with its user, in name order.
    pub(super) fn ask_again(&mut self, now: Instant) -> Vec<(Arc<str>, u64)> {
        self.ask_again_where(now, |_| true)
    }

    /// Asks again about the watched users that instance `instance` holds: it came back
    /// on NATS (what it announced before may have been lost on the way), or it was
    /// counted dead (it answers if it was not). The questions to ask, in name order.
    pub(super) fn ask_again_held_by(
        &mut self,
        instance: &str,
        now: Instant,
    ) -> Vec<(Arc<str>, u64)> {
        self.ask_again_where(now, |w| w.holders.iter().any(|(i, _)| **i == *instance))
    }

    /// Asks again about the watched users `which` picks: each one's holders must answer
    /// the new question within its wait, or they are dropped.
    fn ask_again_where(
        &mut self,
        now: Instant,
        which: impl Fn(&Watched) -> bool,
    ) -> Vec<(Arc<str>, u64)> {
        let mut asked = Vec::new();
        let mut watched: Vec<(&Arc<str>, &mut Watched)> =
            self.watched.iter_mut().filter(|(_, w)| which(w)).collect();
        watched.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (user, watched) in watched {
            self.questions.remove(&watched.question);
            let question = self.next_question;
            self.next_question += 1;
            for (_, answered) in &mut watched.holders {
                *answered = false;
            }
            (watched.question, watched.waiting_until) = (question, Some(now + ASK_WAIT));
            self.questions.insert(question, user.clone());
            asked.push((user.clone(), question));
        }
        asked
    }

    /// Instance `instance` announced that it holds `user` (`online`) or let the user go.
    pub(super) fn announced(
        &mut self,
        user: &str,
        instance: &str,
        online: bool,
        at_ms: u64,
    ) -> Option<Report> {
        if self.is_gone(instance) {
            return None;
        }
        let (user, watched) = self.watched.get_key_value_mut(user)?;
        change(user, watched, at_ms, |watched| {
            if online {
                hold(watched, instance);
                // Whatever the question still brings, the user is online.
                watched.settled = true;
            } else {
                watched.holders.retain(|(i, _)| **i != *instance);
            }
        })
    }

    /// Instance `instance` answered `question`, within its wait or after: it holds the
    /// user.
    pub(super) fn answered(
        &mut self,
        question: u64,
        instance: &str,
        now_ms: u64,
    ) -> Option<Report> {
        if self.is_gone(instance) {
            return None;
        }
        let user = self.questions.get(&question)?.clone();
        let watched = self.watched.get_mut(&user)?;
        change(&user, watched, now_ms, |watched| {
            hold(watched, instance);
            watched.settled = true;
        })
    }

    /// Nobody holds the user `question` asks about ("no responders"): it is settled.
    pub(super) fn unanswered(&mut self, question: u64, now_ms: u64) -> Option<Report> {
        let user = self.questions.remove(&question)?;
        let watched = self.watched.get_mut(&user)?;
        change(&user, watched, now_ms, settle)
    }

    /// Settles the questions whose wait ended by `now` with the answers they got, in
    /// the order they were asked. Their later answers still count.
    pub(super) fn expire(&mut self, now: Instant, now_ms: u64) -> Vec<Report> {
        let mut late: Vec<(u64, Arc<str>)> = self
            .watched
            .iter()
            .filter(|(_, w)| w.waiting_until.is_some_and(|until| until <= now))
            .map(|(user, w)| (w.question, user.clone()))
            .collect();
        late.sort_unstable();
        late.into_iter()
            .filter_map(|(_, user)| {
                let watched = self.watched.get_mut(&user)?;
                change(&user, watched, now_ms, settle)
            })
            .collect()
    }

    /// Instance `instance` is gone (died, left, or its id was taken over) since `now`:
    /// it holds nobody any more, whatever it said before that comes later. The reports
    /// come in user name order.
    pub(super) fn gone(&mut self, instance: &str, (now, now_ms): (Instant, u64)) -> Vec<Report> {
        while self
            .gone
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > GONE_KEPT)
        {
            self.gone.pop_front();
        }
        self.gone.push_back((instance.into(), now));
        let mut reports: Vec<Report> = self
            .watched
            .iter_mut()
            .filter(|(_, w)| w.holders.iter().any(|(i, _)| **i == *instance))
            .filter_map(|(user, watched)| {
                change(user, watched, now_ms, |w| {
                    w.holders.retain(|(i, _)| **i != *instance)
                })
            })
            .collect();
        reports.sort_unstable_by(|a, b| a.user.cmp(&b.user));
        reports
    }

    /// Instance `instance` beats again: if it was counted gone, it is heard again (true).
    pub(super) fn back_from_the_dead(&mut self, instance: &str) -> bool {
        let before = self.gone.len();
        self.gone.retain(|(gone, _)| **gone != *instance);
        self.gone.len() < before
    }

    /// Whether `instance` is known gone.
    fn is_gone(&self, instance: &str) -> bool {
        self.gone.iter().any(|(gone, _)| **gone == *instance)
    }
}

/// `instance` holds the watched user (and has answered).
fn hold(watched: &mut Watched, instance: &str) {
    match watched.holders.iter_mut().find(|(i, _)| **i == *instance) {
        Some((_, answered)) => *answered = true,
        None => watched.holders.push((instance.into(), true)),
    }
}

/// The question is over: holders that did not answer it are dropped.
fn settle(watched: &mut Watched) {
    watched.waiting_until = None;
    watched.holders.retain(|(_, answered)| *answered);
    watched.settled = true;
}

/// Applies `apply` to `watched`: a report for its home if the user's state there changes
/// (the first settled state always is one).
fn change(
    user: &Arc<str>,
    watched: &mut Watched,
    at_ms: u64,
    apply: impl FnOnce(&mut Watched),
) -> Option<Report> {
    let before = watched.settled.then(|| !watched.holders.is_empty());
    apply(watched);
    let online = !watched.holders.is_empty();
    if !watched.settled || before == Some(online) {
        return None;
    }
    Some(Report {
        home: watched.home,
        user: user.clone(),
        online,
        at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(user: &str, online: bool, at_ms: u64) -> Option<Report> {
        Some(Report {
            home: 3,
            user: user.into(),
            online,
            at_ms,
        })
    }

    #[test]
    fn the_first_answer_settles_and_later_ones_only_add() {
        let now = Instant::now();
        let mut holders = Holders::default();
        let question = holders.watch("ann".into(), 3, now).unwrap();
        assert_eq!(holders.watch("ann".into(), 3, now), None, "watched once");
        assert_eq!(
            holders.answered(question, "b-1", 10),
            report("ann", true, 10)
        );
        assert_eq!(holders.answered(question, "c-1", 11), None);
        assert_eq!(holders.announced("ann", "b-1", false, 12), None, "c holds");
        assert_eq!(
            holders.announced("ann", "c-1", false, 13),
            report("ann", false, 13)
        );
        assert_eq!(
            holders.expire(now + ASK_WAIT, 14),
            vec![],
            "settled already"
        );
    }

    #[test]
    fn no_responders_or_the_wait_settle_offline() {
        let now = Instant::now();
        let mut holders = Holders::default();
        let ann = holders.watch("ann".into(), 3, now).unwrap();
        let bob = holders.watch("bob".into(), 3, now).unwrap();
        assert_eq!(holders.unanswered(ann, 5), report("ann", false, 5));
        assert_eq!(holders.unanswered(ann, 6), None, "answered once");
        assert_eq!(holders.expire(now, 6), vec![]);
        assert_eq!(
            holders.expire(now + ASK_WAIT, 7),
            vec![report("bob", false, 7).unwrap()]
        );
        assert_eq!(holders.unanswered(bob, 8), None, "settled once");
    }

    #[test]
    fn an_announcement_settles_online_but_not_offline() {
        let now = Instant::now();
        let mut holders = Holders::default();
        let question = holders.watch("ann".into(), 3, now).unwrap();
        assert_eq!(holders.announced("ann", "b-1", false, 4), None);
        assert_eq!(
            holders.announced("ann", "b-1", true, 5),
            report("ann", true, 5)
        );
        assert_eq!(holders.unanswered(question, 6), None, "still held by b");
        assert_eq!(
            holders.announced("zed", "b-1", true, 5),
            None,
            "not watched"
        );
    }

    #[test]
    fn holders_that_do_not_answer_again_after_a_reconnect_are_dropped() {
        let now = Instant::now();
        let mut holders = Holders::default();
        let question = holders.watch("ann".into(), 3, now).unwrap();
        holders.answered(question, "b-1", 1);
        holders.announced("ann", "c-1", true, 2);
        let asked = holders.ask_again(now);
        assert_eq!(asked.len(), 1);
        let (_, again) = &asked[0];
        assert_eq!(
            holders.answered(question, "b-1", 3),
            None,
            "an old question"
        );
        assert_eq!(holders.answered(*again, "c-1", 3), None);
        assert_eq!(holders.expire(now + ASK_WAIT, 4), vec![], "c answered");
        let again = holders.ask_again(now)[0].1;
        assert_eq!(holders.unanswered(again, 5), report("ann", false, 5));
    }

    #[test]
    fn a_gone_instance_takes_its_holdings_with_it() {
        let now = Instant::now();
        let mut holders = Holders::default();
        for user in ["ann", "bob"] {
            let question = holders.watch(user.into(), 3, now).unwrap();
            holders.answered(question, "b-1", 1);
        }
        holders.announced("bob", "c-1", true, 1);
        assert_eq!(
            holders.gone("b-1", (now, 9)),
            vec![report("ann", false, 9).unwrap()]
        );
        assert!(holders.unwatch("bob"));
        assert!(!holders.unwatch("bob"));
        assert_eq!(
            holders.announced("bob", "c-1", false, 10),
            None,
            "not watched"
        );
    }

    #[test]
    fn an_answer_after_the_wait_still_counts() {
        let now = Instant::now();
        let mut holders = Holders::default();
        let question = holders.watch("ann".into(), 3, now).unwrap();
        assert_eq!(
            holders.expire(now + ASK_WAIT, 1),
            vec![report("ann", false, 1).unwrap()],
            "nobody answered in time"
        );
        assert_eq!(
            holders.answered(question, "b-1", 2),
            report("ann", true, 2),
            "b holds ann all the same"
        );
        let again = holders.ask_again(now)[0].1;
        assert_eq!(
            holders.answered(question, "c-1", 3),
            None,
            "a question asked again"
        );
        assert_eq!(holders.answered(again, "b-1", 3), None, "b still holds ann");
    }

    #[test]
    fn a_gone_instance_is_not_brought_back_by_what_it_said_before_until_it_beats_again() {
        let now = Instant::now();
        let mut holders = Holders::default();
        let question = holders.watch("ann".into(), 3, now).unwrap();
        holders.watch("bob".into(), 4, now);
        holders.unanswered(question, 1);
        assert_eq!(holders.gone("b-1", (now, 2)), vec![], "b held nobody");
        assert_eq!(
            holders.announced("ann", "b-1", true, 3),
            None,
            "said before it left, heard after"
        );
        assert!(holders.back_from_the_dead("b-1"), "counted dead, and beats");
        assert!(!holders.back_from_the_dead("b-1"));
        assert_eq!(
            holders.announced("ann", "b-1", true, 4),
            report("ann", true, 4)
        );
        let asked = holders.ask_again_held_by("b-1", now);
        assert_eq!(asked.len(), 1, "only the users b holds: {asked:?}");
        assert_eq!(&*asked[0].0, "ann");
        let later = now + GONE_KEPT + Duration::from_secs(1);
        holders.gone("b-1", (now, 5));
        holders.gone("c-1", (later, 6));
        assert!(!holders.is_gone("b-1"), "forgotten after {GONE_KEPT:?}");
        assert!(holders.is_gone("c-1"));
    }
}
