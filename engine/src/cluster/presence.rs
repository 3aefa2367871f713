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
//!   node was cut off.
//! - A node that dies, leaves or is taken over takes its holdings with it.
//!
//! No I/O and no clock of its own: the relayer says what it heard and when.

use std::{sync::Arc, time::Duration};

use hashbrown::HashMap;
use smallvec::SmallVec;
use tokio::time::Instant;

/// How long a question waits for the holders' answers.
pub(super) const ASK_WAIT: Duration = Duration::from_millis(500);

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
    /// The question under way, and until when it waits.
    asking: Option<(u64, Instant)>,
}

/// What other nodes hold of the users watched here.
#[derive(Debug, Default)]
pub(super) struct Holders {
    watched: HashMap<Arc<str>, Watched>,
    /// Question → the user it asks about.
    questions: HashMap<u64, Arc<str>>,
    next_question: u64,
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
            asking: Some((question, now + ASK_WAIT)),
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
        if let Some((question, _)) = watched.asking {
            self.questions.remove(&question);
        }
        true
    }

    /// Asks about every watched user again (after a reconnect: what was announced
    /// meanwhile was missed): the questions to ask, each with its user.
    pub(super) fn ask_again(&mut self, now: Instant) -> Vec<(Arc<str>, u64)> {
        let mut asked = Vec::with_capacity(self.watched.len());
        for (user, watched) in &mut self.watched {
            if let Some((old, _)) = watched.asking.take() {
                self.questions.remove(&old);
            }
            let question = self.next_question;
            self.next_question += 1;
            for (_, answered) in &mut watched.holders {
                *answered = false;
            }
            watched.asking = Some((question, now + ASK_WAIT));
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

    /// Instance `instance` answered `question`: it holds the user.
    pub(super) fn answered(
        &mut self,
        question: u64,
        instance: &str,
        now_ms: u64,
    ) -> Option<Report> {
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

    /// Settles the questions whose wait ended by `now` with the answers they got.
    pub(super) fn expire(&mut self, now: Instant, now_ms: u64) -> Vec<Report> {
        let late: Vec<u64> = self
            .watched
            .values()
            .filter_map(|w| w.asking.filter(|(_, until)| *until <= now))
            .map(|(question, _)| question)
            .collect();
        late.into_iter()
            .filter_map(|question| self.unanswered(question, now_ms))
            .collect()
    }

    /// Instance `instance` is gone (died, left, or its id was taken over): it holds
    /// nobody any more.
    pub(super) fn gone(&mut self, instance: &str, now_ms: u64) -> Vec<Report> {
        self.watched
            .iter_mut()
            .filter(|(_, w)| w.holders.iter().any(|(i, _)| **i == *instance))
            .filter_map(|(user, watched)| {
                change(user, watched, now_ms, |w| {
                    w.holders.retain(|(i, _)| **i != *instance)
                })
            })
            .collect()
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
    watched.asking = None;
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
        assert_eq!(holders.answered(bob, "b-1", 8), None, "too late");
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
            holders.gone("b-1", 9),
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
}
