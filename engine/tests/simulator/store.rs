//! The simulated store: what the redb store promises, in memory, with a crash that loses
//! exactly what was not committed.
//!
//! Commands wait in an inbox until a commit step applies all of them as one transaction
//! (the real store's group commit) and answers; a crash empties the inbox. What a commit
//! applied survives every crash: the users' inboxes and their heads, the message index
//! that recognises a retry, history and group memberships. As the real store does, each
//! start raises the floor of every `seq` given out, so a `seq` a device saw before a
//! crash lost its event is never given to another.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use engine::{
    protocol::{access::Settings, codes::OutKind, Priority},
    store::{
        AckTo, Append, Command, Greeting, InboxEvent, Outcome, ReadFrom, RecentPair, Reply, Share,
        Ticket,
    },
};

/// One inbox event as stored.
#[derive(Debug, Clone)]
struct Stored {
    kind: OutKind,
    priority: Priority,
    json: Bytes,
    /// `(sender, message id)` when its sender wants a `delivery_receipt`.
    receipt: Option<(String, String)>,
    /// When its commit was (Unix ms).
    at_ms: u64,
}

/// One user's inbox.
#[derive(Debug, Default, Clone)]
struct Inbox {
    events: BTreeMap<u64, Stored>,
    last: u64,
    acked: u64,
    /// Every event up to here may be pruned: a resume from below is refused.
    gone: u64,
    /// `last` when the home last took over numbering.
    opened: u64,
}

impl Inbox {
    /// Events kept above `acked`: they wait for an ack.
    fn unacked(&self) -> usize {
        self.events.range(self.acked + 1..).count()
    }
}

/// One conversation's history: `(timestamp, sequence)` → the message's id, sender and
/// `new_message` JSON.
type Conversation = BTreeMap<(u64, u64), (String, String, Bytes)>;

/// The store as the simulator runs it.
#[derive(Debug)]
pub struct SimStore {
    /// Sent, not yet committed.
    pending: Vec<Command>,
    /// Per user, the inbox.
    inboxes: BTreeMap<String, Inbox>,
    /// `(receiver, messageId)` → sender, for every chat message held (history's index).
    held: HashMap<(String, String), String>,
    /// `(group, user)`.
    members: BTreeSet<(String, String)>,
    /// Each group's settings other than a v1 group's.
    settings: BTreeMap<String, Settings>,
    /// Per conversation `(lower user, higher user)`, `(timestamp, sequence)` → the chat
    /// message: its id, sender, and `new_message` JSON.
    history: BTreeMap<(String, String), Conversation>,
    next_sequence: u64,
    /// Starts of the store: the floor of every `seq` given out now.
    starts: u64,
    /// Users whose inbox a device read, and when (nothing pruned for a while after).
    reading: HashMap<String, u64>,
    /// The time of the commit being applied.
    now_ms: u64,
    /// Unacknowledged events one user's inbox holds at most (small, so `queue_full`
    /// happens).
    queue_max: usize,
    /// Events one inbox page carries at most (small, so inboxes come in pages).
    page_max: usize,
}

/// The epoch of every simulated inbox (the file is never lost).
const EPOCH: &str = "sim";
/// As the real store's: nothing of an inbox being read is pruned for this long.
const READ_GRACE_MS: u64 = 10_000;

impl SimStore {
    /// An empty store.
    pub fn new(queue_max: usize, page_max: usize) -> SimStore {
        SimStore {
            pending: Vec::new(),
            inboxes: BTreeMap::new(),
            held: HashMap::new(),
            members: BTreeSet::new(),
            settings: BTreeMap::new(),
            history: BTreeMap::new(),
            next_sequence: 0,
            starts: 1,
            reading: HashMap::new(),
            now_ms: 0,
            queue_max,
            page_max,
        }
    }

    /// Hands the store a command (it is applied at the next commit, or lost in a crash).
    pub fn send(&mut self, command: Command) {
        self.pending.push(command);
    }

    /// Whether commands wait for a commit.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The process died: what was not committed is gone; the next start raises the floor.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.starts += 1;
    }

    /// The `seq` of every committed event of `user` after `seq`.
    pub fn kept_after(&self, user: &str, seq: u64) -> Vec<u64> {
        self.inboxes
            .get(user)
            .map(|inbox| inbox.events.range(seq + 1..).map(|(s, _)| *s).collect())
            .unwrap_or_default()
    }

    /// This start of the store: the high 32 bits of every `seq` it gives out.
    pub fn start(&self) -> u64 {
        self.starts
    }

    /// Every inbox event held: `(user, seq)`.
    pub fn held(&self) -> HashSet<(String, u64)> {
        self.inboxes
            .iter()
            .flat_map(|(user, inbox)| inbox.events.keys().map(|&seq| (user.clone(), seq)))
            .collect()
    }

    /// The direct messages the inboxes received at `since_ms` or later, oldest first: what
    /// the real store reads at start for the homes' dedup windows (`store::recent`; the
    /// simulation is too short for its count bound to matter).
    pub fn recent(&self, since_ms: u64) -> Vec<RecentPair> {
        let mut pairs: Vec<RecentPair> = self
            .inboxes
            .iter()
            .flat_map(|(user, inbox)| {
                inbox
                    .events
                    .iter()
                    .filter(|(_, e)| e.kind == OutKind::NewMessage && e.at_ms >= since_ms)
                    .filter_map(|(&seq, e)| {
                        RecentPair::of_row(user, seq <= inbox.acked, e.at_ms, &e.json)
                    })
            })
            .collect();
        pairs.sort_by_key(|pair| pair.at_ms);
        pairs
    }

    /// The memberships held, as the engine loads them at start.
    pub fn memberships(&self) -> Vec<(String, String)> {
        self.members.iter().cloned().collect()
    }

    /// Every group's settings it holds (other than a v1 group's).
    pub fn group_settings(&self) -> Vec<(String, Settings)> {
        self.settings
            .iter()
            .map(|(group, settings)| (group.clone(), settings.clone()))
            .collect()
    }

    /// Applies every waiting command as one committed transaction; returns the answers
    /// with the reactor each goes to.
    pub fn commit(&mut self, now_ms: u64) -> Vec<(usize, Reply)> {
        self.now_ms = now_ms;
        let mut replies = Vec::new();
        for command in std::mem::take(&mut self.pending) {
            self.apply(command, &mut replies);
        }
        replies
    }

    /// `user`'s inbox, its `last` raised to this run's floor.
    fn inbox(&mut self, user: &str) -> &mut Inbox {
        let floor = self.starts << 32;
        let inbox = self.inboxes.entry(user.into()).or_default();
        inbox.last = inbox.last.max(floor);
        inbox
    }

    /// Keeps one event under its `seq` (the next when none is given), unless the inbox
    /// is at its bound; the `seq` is given out either way. As the real store does, tells
    /// `home` when the inbox is at its bound and the devices online were given a step
    /// (64, or the bound if smaller) more without acking, and every step after.
    fn put(
        &mut self,
        (user, seq, home): (&str, Option<u64>, usize),
        stored: Stored,
        replies: &mut Vec<(usize, Reply)>,
    ) -> bool {
        let queue_max = self.queue_max;
        let inbox = self.inbox(user);
        let seq_given = seq;
        let seq = match seq {
            Some(seq) => {
                assert!(
                    seq > inbox.last,
                    "{user}: a home gave out {seq} after {}",
                    inbox.last
                );
                seq
            }
            None => inbox.last + 1,
        };
        inbox.last = seq;
        // A device online got what its home numbered: kept whatever the bound.
        if seq_given.is_none() && inbox.unacked() >= queue_max {
            return false;
        }
        inbox.events.insert(seq, stored);
        let given = inbox.last.saturating_sub(inbox.acked.max(inbox.opened));
        let step = 64.min(queue_max as u64).max(1);
        let at_bound = inbox.unacked() >= queue_max;
        if seq_given.is_some() && at_bound && given >= step && given.is_multiple_of(step) {
            let user = user.into();
            replies.push((home, Reply::AcksOverdue { user }));
        }
        true
    }

    fn apply(&mut self, command: Command, replies: &mut Vec<(usize, Reply)>) {
        match command {
            Command::Append(append) => self.append(*append, replies),
            Command::AppendShare(share) => self.append_share(*share, replies),
            Command::Confirm(confirm) => {
                let id = (
                    confirm.receiver.to_string(),
                    confirm.chat.message_id.to_string(),
                );
                let outcome = if self.held.contains_key(&id) {
                    Outcome::Kept {
                        delivered: confirm.ack.delivered,
                    }
                } else {
                    Outcome::NotHeld
                };
                answer(replies, Some(&confirm.ack), None, outcome);
            }
            Command::OpenInbox { user, home, ticket } => {
                let inbox = self.inbox(&user);
                inbox.opened = inbox.last;
                let last = inbox.last;
                replies.push((home, Reply::InboxOpened { user, ticket, last }));
            }
            Command::ReadInbox { user, device, from } => {
                let reply = self.read(&user, device, from);
                if matches!(&reply, Reply::InboxPage { events, .. } if !events.is_empty()) {
                    self.reading.insert(user.to_string(), self.now_ms);
                }
                replies.push((device.reactor, reply));
            }
            Command::Ack {
                user,
                upto,
                device,
                home,
            } => {
                let inbox = self.inbox(&user).clone();
                if upto > inbox.last {
                    let device = device.expect("the simulated driver acks only what it read");
                    let reply = Reply::AckRefused {
                        device,
                        seq: upto,
                        last: inbox.last,
                    };
                    replies.push((device.reactor, reply));
                    return;
                }
                if upto <= inbox.acked {
                    return;
                }
                let receipts: Vec<(Box<str>, Box<str>)> = inbox
                    .events
                    .range(inbox.acked + 1..=upto)
                    .filter_map(|(_, e)| e.receipt.clone())
                    .map(|(s, id)| (s.into(), id.into()))
                    .collect();
                let queue_max = self.queue_max as u64;
                let read_at = self.reading.get(&*user).copied();
                let prune = read_at.is_none_or(|at| self.now_ms - at > READ_GRACE_MS);
                let inbox = self.inbox(&user);
                inbox.acked = upto;
                if prune {
                    inbox
                        .events
                        .retain(|&seq, _| seq > upto.saturating_sub(queue_max));
                }
                if !receipts.is_empty() {
                    replies.push((home, Reply::Receipts { user, receipts }));
                }
            }
            Command::History {
                user,
                peer,
                before,
                limit,
                requester,
            } => {
                // Simulated messages are small: only the count bounds a page.
                let mut messages: Vec<_> = self
                    .history
                    .get(&conversation(&user, &peer))
                    .into_iter()
                    .flat_map(|log| log.iter().rev())
                    .filter(|((at, _), _)| before.is_none_or(|before| *at < before))
                    .take(limit + 1)
                    .map(|(_, (_, _, payload))| payload.clone())
                    .collect();
                let more = messages.len() > limit;
                messages.truncate(limit);
                let reply = Reply::History {
                    requester,
                    peer,
                    messages,
                    more,
                    error: None,
                };
                replies.push((requester.reactor, reply));
            }
            Command::Amend(amend) => {
                // Only edits are simulated: by the message's sender, in its conversation.
                let found = self
                    .history
                    .get(&conversation(&amend.actor, &amend.peer))
                    .is_some_and(|log| {
                        log.values().any(|(id, sender, _)| {
                            **id == *amend.message_id && **sender == *amend.actor
                        })
                    });
                let requester = amend.requester;
                let reply = Reply::Amended {
                    amend,
                    found,
                    error: None,
                };
                replies.push((requester.reactor, reply));
            }
            Command::Membership {
                group,
                user,
                joined,
                device,
                home,
                settings,
            } => {
                let pair = (group.to_string(), user.to_string());
                if joined {
                    self.members.insert(pair);
                } else {
                    self.members.remove(&pair);
                }
                if let Some(change) = &settings {
                    if change.after.is_default() {
                        self.settings.remove(&*group);
                    } else {
                        self.settings
                            .insert(group.to_string(), change.after.clone());
                    }
                }
                let reply = Reply::Membership {
                    group,
                    user,
                    joined,
                    device,
                    settings,
                    failed: None,
                };
                replies.push((home, reply));
            }
            Command::FindSender {
                reader,
                message_id,
                named,
                requester,
            } => {
                let id = (reader.to_string(), message_id.to_string());
                let sender = self
                    .held
                    .get(&id)
                    .filter(|held| named.as_deref().is_none_or(|named| named == held.as_str()))
                    .map(|s| s.as_str().into());
                let reply = Reply::SenderFound {
                    requester,
                    reader,
                    message_id,
                    sender,
                    error: None,
                };
                replies.push((requester.reactor, reply));
            }
            other => panic!("the simulator does not model {other:?}"),
        }
    }

    fn append(&mut self, append: Append, replies: &mut Vec<(usize, Reply)>) {
        let user = append.user.to_string();
        let held = append.chat.as_ref().is_some_and(|chat| {
            self.held
                .contains_key(&(user.clone(), chat.message_id.to_string()))
        });
        let delivered = append.ack.as_ref().is_some_and(|a| a.delivered);
        let outcome = if held {
            if let Some(seq) = append.seq {
                let inbox = self.inbox(&user);
                inbox.last = inbox.last.max(seq);
            }
            Outcome::Kept { delivered }
        } else {
            let receipt = append
                .chat
                .as_ref()
                .filter(|_| append.receipt)
                .map(|chat| (chat.sender.to_string(), chat.message_id.to_string()));
            let stored = Stored {
                kind: append.event.kind,
                priority: append.event.priority,
                json: append.event.json.clone(),
                receipt,
                at_ms: self.now_ms,
            };
            if self.put((&user, append.seq, append.home), stored, replies) {
                if let Some(chat) = &append.chat {
                    let id = (user.clone(), chat.message_id.to_string());
                    self.held.insert(id, chat.sender.to_string());
                    let message = (&*chat.message_id, &*chat.sender, chat.timestamp_ms);
                    self.record(&user, message, append.event.json.clone());
                }
                Outcome::Kept { delivered }
            } else {
                Outcome::QueueFull
            }
        };
        answer(replies, append.ack.as_ref(), append.dedup, outcome);
    }

    fn append_share(&mut self, share: Share, replies: &mut Vec<(usize, Reply)>) {
        let (mut queued, mut not_kept) = (0, 0);
        for row in share.rows {
            let stored = Stored {
                kind: share.kind,
                priority: share.priority,
                json: row.json.unwrap_or_else(|| share.json.clone()),
                receipt: None,
                at_ms: self.now_ms,
            };
            if !self.put((&row.user, row.seq, share.home), stored, replies) {
                not_kept += 1;
            } else if row.seq.is_none() {
                queued += 1;
            }
        }
        let reply = Reply::FanOutQueued {
            purpose: share.purpose,
            request: share.request,
            delivered: share.delivered,
            queued,
            not_kept,
            failed: false,
        };
        replies.push((share.reply_to, reply));
    }

    /// One page of `user`'s inbox for a device, as the real store reads it.
    fn read(&mut self, user: &str, device: engine::store::Waiter, from: ReadFrom) -> Reply {
        let inbox = self.inbox(user).clone();
        let (greeting, from) = match from {
            ReadFrom::Resume { epoch, seq } => {
                let resumed = &*epoch == EPOCH && seq <= inbox.last && seq >= inbox.gone;
                let greeting = Greeting {
                    epoch: EPOCH.into(),
                    seq: inbox.last,
                    resumed: Some(resumed),
                };
                let after = if resumed { seq } else { inbox.acked };
                (Some(greeting), ReadFrom::After { seq: after })
            }
            ReadFrom::Unacked { upto: 0, cursor } => {
                let greeting = Greeting {
                    epoch: EPOCH.into(),
                    seq: inbox.last,
                    resumed: None,
                };
                let from = ReadFrom::Unacked {
                    upto: inbox.last,
                    cursor,
                };
                (Some(greeting), from)
            }
            other => (None, other),
        };
        let event = |(seq, e): (&u64, &Stored)| InboxEvent {
            seq: *seq,
            kind: e.kind,
            priority: e.priority,
            json: e.json.clone(),
        };
        let (events, next, covered) = match from {
            ReadFrom::After { seq } => {
                let all: Vec<InboxEvent> = inbox.events.range(seq + 1..).map(event).collect();
                let more = all.len() > self.page_max;
                let events: Vec<InboxEvent> = all.into_iter().take(self.page_max).collect();
                let last_read = events.last().map_or(seq, |e| e.seq);
                let next = more.then_some(ReadFrom::After { seq: last_read });
                let covered = if more { last_read } else { inbox.last };
                (events, next, covered)
            }
            ReadFrom::Unacked { upto, cursor } => {
                let mut order: Vec<(Priority, u64)> = inbox
                    .events
                    .range(inbox.acked + 1..)
                    .take_while(|(seq, _)| **seq <= upto)
                    .map(|(seq, e)| (e.priority, *seq))
                    .collect();
                order.sort_unstable();
                let start = cursor.map_or(0, |c| order.partition_point(|k| *k <= c));
                let page: Vec<(Priority, u64)> =
                    order[start..].iter().take(self.page_max).copied().collect();
                let rest = &order[start + page.len()..];
                let next = (!rest.is_empty()).then(|| ReadFrom::Unacked {
                    upto,
                    cursor: page.last().copied(),
                });
                let covered = rest
                    .iter()
                    .map(|&(_, seq)| seq)
                    .min()
                    .map_or(upto, |seq| seq - 1);
                let events = page
                    .iter()
                    .map(|(_, seq)| event((seq, &inbox.events[seq])))
                    .collect();
                (events, next, covered)
            }
            ReadFrom::Resume { .. } => unreachable!("read as After"),
        };
        Reply::InboxPage {
            device,
            user: user.into(),
            greeting,
            events,
            next,
            covered,
            error: None,
        }
    }

    /// Keeps a chat message to `receiver` in its conversation's history.
    fn record(&mut self, receiver: &str, (id, sender, at): (&str, &str, u64), payload: Bytes) {
        self.next_sequence += 1;
        let key = (at, self.next_sequence);
        let entry = (id.to_owned(), sender.to_owned(), payload);
        let log = self.history.entry(conversation(receiver, sender));
        log.or_default().insert(key, entry);
    }
}

/// The answer to one append: its sender hears the outcome, and a home whose message was
/// not kept forgets it.
fn answer(
    replies: &mut Vec<(usize, Reply)>,
    ack: Option<&AckTo>,
    dedup: Option<(usize, Ticket)>,
    outcome: Outcome,
) {
    let delivered = ack.is_some_and(|a| a.delivered);
    if !matches!(outcome, Outcome::Kept { .. }) && !delivered {
        if let Some((home, ticket)) = dedup {
            replies.push((home, Reply::NotKept { ticket }));
        }
    }
    if let Some(ack) = ack {
        let reply = Reply::Appended {
            sender: ack.waiter,
            message_id: ack.message_id.clone(),
            outcome,
        };
        replies.push((ack.waiter.reactor, reply));
    }
}

/// A conversation's key: its two users in order.
fn conversation(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
    }
}
