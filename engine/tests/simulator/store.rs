//! The simulated store: what the redb store promises, in memory, with a crash that loses
//! exactly what was not committed.
//!
//! Commands wait in an inbox until a commit step applies all of them as one transaction
//! (the real store's group commit) and answers; a crash empties the inbox. What a commit
//! applied survives every crash: the offline queues, the message index that recognises a
//! retry, and group memberships.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use engine::{
    protocol::{codes::OutKind, Priority},
    store::{Command, FanOut, Outcome, Queued, Reply},
};

/// One message in a user's queue.
#[derive(Debug, Clone)]
struct Stored {
    payload: Bytes,
    priority: Priority,
    receipt: bool,
    kind: OutKind,
}

/// One conversation's history: `(timestamp, sequence)` → the message's id, sender and
/// `new_message` JSON.
type Conversation = BTreeMap<(u64, u64), (String, String, Bytes)>;

/// The store as the simulator runs it.
#[derive(Debug)]
pub struct SimStore {
    /// Sent, not yet committed.
    inbox: Vec<Command>,
    /// Per user, `(priority, sequence)` → message: delivery order.
    queues: BTreeMap<String, BTreeMap<(u8, u64), Stored>>,
    /// `(receiver, messageId)` → sender, for every chat message held (history's index).
    held: HashMap<(String, String), String>,
    /// `(group, user)`.
    members: BTreeSet<(String, String)>,
    /// Per conversation `(lower user, higher user)`, `(timestamp, sequence)` → the chat
    /// message: its id, sender, and `new_message` JSON.
    history: BTreeMap<(String, String), Conversation>,
    next_sequence: u64,
    /// Messages one user's queue holds at most (small, so `queue_full` happens).
    queue_max: usize,
    /// Messages one `Drain` answer carries at most (small, so queues come in parts).
    drain_max: usize,
}

impl SimStore {
    /// An empty store.
    pub fn new(queue_max: usize, drain_max: usize) -> SimStore {
        SimStore {
            inbox: Vec::new(),
            queues: BTreeMap::new(),
            held: HashMap::new(),
            members: BTreeSet::new(),
            history: BTreeMap::new(),
            next_sequence: 0,
            queue_max,
            drain_max,
        }
    }

    /// Hands the store a command (it is applied at the next commit, or lost in a crash).
    pub fn send(&mut self, command: Command) {
        self.inbox.push(command);
    }

    /// Whether commands wait for a commit.
    pub fn has_work(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// The process died: what was not committed is gone.
    pub fn crash(&mut self) {
        self.inbox.clear();
    }

    /// The memberships held, as the engine loads them at start.
    pub fn memberships(&self) -> Vec<(String, String)> {
        self.members.iter().cloned().collect()
    }

    /// Messages queued for `user`.
    pub fn queued(&self, user: &str) -> usize {
        self.queues.get(user).map_or(0, BTreeMap::len)
    }

    /// Applies every waiting command as one committed transaction; returns the answers
    /// with the reactor each goes to.
    pub fn commit(&mut self) -> Vec<(usize, Reply)> {
        let mut replies = Vec::new();
        for command in std::mem::take(&mut self.inbox) {
            self.apply(command, &mut replies);
        }
        replies
    }

    fn apply(&mut self, command: Command, replies: &mut Vec<(usize, Reply)>) {
        match command {
            Command::Enqueue(enqueue) => {
                let user = enqueue.user.to_string();
                let id = (user.clone(), enqueue.message_id.to_string());
                let held = enqueue.chat.is_some() && self.held.contains_key(&id);
                let outcome = if held {
                    Outcome::Queued
                } else if self.queued(&user) >= self.queue_max {
                    Outcome::QueueFull
                } else {
                    let stored = Stored {
                        payload: enqueue.payload.clone(),
                        priority: enqueue.priority,
                        receipt: enqueue.receipt,
                        kind: enqueue.kind,
                    };
                    self.push(&user, stored);
                    if let Some(chat) = &enqueue.chat {
                        self.held.insert(id, chat.sender.to_string());
                        let message = (&*enqueue.message_id, &*chat.sender, chat.timestamp_ms);
                        self.record(&user, message, enqueue.payload.clone());
                    }
                    Outcome::Queued
                };
                if outcome != Outcome::Queued {
                    if let Some((home, ticket)) = enqueue.dedup {
                        replies.push((home, Reply::NotKept { ticket }));
                    }
                }
                if let Some(sender) = enqueue.sender {
                    let message_id = enqueue.message_id.clone();
                    let reply = Reply::Enqueued {
                        sender,
                        message_id,
                        outcome,
                    };
                    replies.push((sender.reactor, reply));
                }
            }
            Command::Record {
                receiver,
                message_id,
                chat,
                payload,
            } => {
                let id = (receiver.to_string(), message_id.to_string());
                if let std::collections::hash_map::Entry::Vacant(new) = self.held.entry(id) {
                    new.insert(chat.sender.to_string());
                    let message = (&*message_id, &*chat.sender, chat.timestamp_ms);
                    self.record(&receiver, message, payload);
                }
            }
            Command::History {
                user,
                peer,
                before,
                limit,
                requester,
            } => {
                let messages = self
                    .history
                    .get(&conversation(&user, &peer))
                    .into_iter()
                    .flat_map(|log| log.iter().rev())
                    .filter(|((at, _), _)| before.is_none_or(|before| *at < before))
                    .take(limit)
                    .map(|(_, (_, _, payload))| payload.clone())
                    .collect();
                let reply = Reply::History {
                    requester,
                    peer,
                    messages,
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
            Command::Drain { user, device } => {
                let (messages, more) = self.read_queue(&user);
                let reply = Reply::Pending {
                    device,
                    user,
                    messages,
                    more,
                };
                replies.push((device.reactor, reply));
            }
            Command::Remove { user, keys } => {
                if let Some(queue) = self.queues.get_mut(&*user) {
                    for key in keys {
                        queue.remove(&key);
                    }
                }
            }
            Command::EnqueueFanOut(batch) => {
                let (mut queued, mut not_kept) = (0, 0);
                for (user, payload) in batch.messages {
                    if self.queued(&user) >= self.queue_max {
                        not_kept += 1;
                    } else {
                        let stored = Stored {
                            payload,
                            priority: batch.priority,
                            receipt: false,
                            kind: OutKind::NewMessage,
                        };
                        self.push(&user, stored);
                        queued += 1;
                    }
                }
                let reply = Reply::FanOutQueued {
                    purpose: batch.purpose,
                    request: batch.request,
                    delivered: batch.delivered,
                    queued,
                    not_kept,
                    failed: false,
                };
                assert_eq!(
                    batch.purpose,
                    FanOut::GroupPost,
                    "the simulator sends no broadcast"
                );
                replies.push((batch.reply_to, reply));
            }
            Command::Membership {
                group,
                user,
                joined,
                device,
                home,
            } => {
                let pair = (group.to_string(), user.to_string());
                if joined {
                    self.members.insert(pair);
                } else {
                    self.members.remove(&pair);
                }
                let reply = Reply::Membership {
                    group,
                    user,
                    joined,
                    device,
                    committed: true,
                };
                replies.push((home, reply));
            }
            Command::FindSender {
                reader,
                message_id,
                requester,
            } => {
                let id = (reader.to_string(), message_id.to_string());
                let sender = self.held.get(&id).map(|s| s.as_str().into());
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

    /// Keeps a chat message to `receiver` in its conversation's history.
    fn record(&mut self, receiver: &str, (id, sender, at): (&str, &str, u64), payload: Bytes) {
        self.next_sequence += 1;
        let key = (at, self.next_sequence);
        let entry = (id.to_owned(), sender.to_owned(), payload);
        let log = self.history.entry(conversation(receiver, sender));
        log.or_default().insert(key, entry);
    }

    fn push(&mut self, user: &str, stored: Stored) {
        self.next_sequence += 1;
        let key = (stored.priority as u8, self.next_sequence);
        self.queues
            .entry(user.into())
            .or_default()
            .insert(key, stored);
    }

    /// The first part of `user`'s queue, in delivery order, and whether more remain.
    fn read_queue(&self, user: &str) -> (Vec<Queued>, bool) {
        let Some(queue) = self.queues.get(user) else {
            return (Vec::new(), false);
        };
        let messages = queue
            .iter()
            .take(self.drain_max)
            .map(|(key, stored)| Queued {
                key: *key,
                payload: stored.payload.clone(),
                priority: stored.priority,
                receipt: stored.receipt,
                kind: stored.kind,
            })
            .collect();
        (messages, queue.len() > self.drain_max)
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
