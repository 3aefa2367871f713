//! The cluster simulator: several nodes' inboxes and history (the real
//! [`Inboxes`](super::inboxes::Inboxes) and [`History`](super::history::History), the
//! cluster's side of the store interface) against one simulated nats-server with
//! JetStream ([`jetstream`]), on a virtual clock, one seed at a time. Senders send and
//! retry messages through any node (two seeds in three with a small
//! `--queue-max-per-sender`, so that its reads of the receiver's record meet the faults
//! too), posts fan out to several users, devices resume and
//! acknowledge on any node (or read without resume, taken as read page by page), nodes
//! hold and let go of users, and faults come at random: the server takes a node's
//! requests late, a node is cut off (what it sent and what came for it lost, answers
//! included) and comes back, time jumps past JetStream's duplicate window and requests'
//! deadlines.
//!
//! The invariants, checked as it goes:
//! - an acknowledged message (`Kept`) is stored, and no message is stored twice once its
//!   index entry was found (a retry after the duplicate window included);
//! - a resume that says `resumed:true` gets every event after its `seq` that was ever
//!   stored, in order, up to where it read (nothing removed under it); a read without
//!   resume comes in delivery order (priority, then `seq`);
//! - a post's counts cover its rows, and what they count kept is stored;
//! - each node hands a user's live events to its devices in `seq` order, each once;
//! - a user's acknowledgement record never goes back, and a receipt goes out once;
//! - every sender hears its message's outcome once everything settled, its ack having
//!   waited for the receiver's holders on the other nodes (answered as their relays
//!   would: a device there, the user held in the grace only, or nobody).
//!
//! `cargo test -p engine --lib cluster::sim` runs `CLUSTER_SIM_SEEDS` seeds (default
//! 1,000) from `CLUSTER_SIM_SEED_BASE`; `CLUSTER_SIM_SEED=N` replays one, and with
//! `CLUSTER_SIM_LOG` set a failure prints every step, not the last 40.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::jetstream::{next_publish, Delivery, JetStream};
use super::{failure, run_seeds, Rng};
use crate::cluster::{
    acks::{self, AckRecord},
    history::History,
    inboxes::{decode_event, inbox_subject, Caught, Inboxes, Ready},
    received,
    shards::Shards,
};
use crate::{
    protocol::{codes::OutKind, Priority},
    store::{
        AckTo, Append, Chat, Command, Event, FanOut, Outcome, ReadFrom, Reply, Share, ShareRow,
        StoreStats, Waiter,
    },
};
/// One node: its inboxes and history, its connection's bytes both ways.
struct Node {
    inboxes: Inboxes,
    history: History,
    /// `_INBOX.n<i>.`: where its answers come.
    inbox: String,
    out: BytesMut,
    inbound: VecDeque<Delivery>,
    connected: bool,
    /// Users it holds: their live events come to it.
    holds: BTreeSet<String>,
    /// Per user held, the `seq`s it handed to its devices, in order.
    handed: BTreeMap<String, Vec<u64>>,
}

/// A device of a user, on a node.
struct Device {
    user: String,
    node: usize,
    /// The epoch and the last `seq` it processed, once it read.
    position: Option<(Box<str>, u64)>,
    /// A read under way: where it resumed from, and what it got so far.
    reading: Option<Reading>,
}

/// A device's read under way.
struct Reading {
    /// Where it resumed from; `None`: no resume (what no device acknowledged, in
    /// delivery order, taken as read page by page, as a v1 device's).
    from: Option<(Box<str>, u64)>,
    resumed: Option<bool>,
    last_at_start: u64,
    seqs: Vec<u64>,
    /// Each event's priority (its rank) and `seq`, in the order they came.
    order: Vec<(u8, u64)>,
}

/// A message sent: its sender, receiver and id.
#[derive(Clone)]
struct Sent {
    sender: String,
    receiver: String,
    id: String,
}

/// What the seeds exercised.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    kept: usize,
    /// Of those, said `sent` because a device of the receiver was on another node.
    sent_elsewhere: usize,
    failed: usize,
    full: usize,
    /// Refused at `--queue-max-per-sender` (a third of the seeds have no bound).
    over_quota: usize,
    retries: usize,
    resumed: usize,
    refused: usize,
    /// Reads that failed (cut off, late).
    unread: usize,
    /// Reads without resume, in delivery order.
    unacked_reads: usize,
    /// Posts whose counts came.
    posts: usize,
    /// Receipts due and never sent (an unanswered ack's write hidden by later ones).
    receipts_lost: usize,
    handed: usize,
    /// Gaps a node could not fill (events removed first): its devices resumed.
    missed: usize,
    receipts: usize,
    cuts: usize,
}

/// The simulated cluster of one seed.
struct World {
    rng: Rng,
    server: JetStream,
    nodes: Vec<Node>,
    devices: Vec<Device>,
    users: Vec<String>,
    /// The shards the nodes split the users over.
    shards: Shards,
    /// By the sender's ticket: the messages waiting for their outcome.
    waiting: HashMap<u64, Sent>,
    sent: Vec<Sent>,
    next_ticket: u64,
    next_message: u64,
    /// Per user, the highest `acked` of its record seen stored.
    acked: HashMap<String, u64>,
    /// Posts waiting for their counts: how many rows each has.
    posts: HashMap<u32, usize>,
    /// Receipts sent, by `(sender, id)`.
    receipts: HashMap<(String, String), usize>,
    /// Per node and index key, the publishes of the message the node may make: one per
    /// retry check that found the key free, and one per append made before the index
    /// existed (unchecked). A publish beyond them stored a message its check found held.
    may_publish: HashMap<(usize, String), usize>,
    tally: Tally,
    /// The steps so far, for a failure's report.
    log: Vec<String>,
    /// Every user has acknowledged everything: no sender may be refused at its quota.
    everything_read: bool,
    /// Each message's first send, in order: the node, the sender's ticket, the message.
    first_sends: Vec<(usize, u64, Sent)>,
    /// The tickets whose message was acknowledged `Kept`.
    kept_tickets: BTreeSet<u64>,
    /// The ids of messages sent more than once.
    retried: BTreeSet<String>,
}

/// Seeds the default run covers (about 5 s).
const SEEDS_DEFAULT: u64 = 1_000;
/// Steps a seed runs before everything settles.
const STEPS: usize = 600;
/// Unacknowledged events a user may have: small, so `queue_full` and generations happen.
const QUEUE_MAX: u64 = 12;

impl Tally {
    /// Adds another seed's counts.
    fn add(&mut self, other: Tally) {
        let Tally {
            kept,
            sent_elsewhere,
            failed,
            full,
            over_quota,
            retries,
            resumed,
            refused,
            unread,
            unacked_reads,
            posts,
            receipts_lost,
            handed,
            missed,
            receipts,
            cuts,
        } = other;
        self.kept += kept;
        self.sent_elsewhere += sent_elsewhere;
        self.failed += failed;
        self.full += full;
        self.over_quota += over_quota;
        self.retries += retries;
        self.resumed += resumed;
        self.refused += refused;
        self.unread += unread;
        self.unacked_reads += unacked_reads;
        self.posts += posts;
        self.receipts_lost += receipts_lost;
        self.handed += handed;
        self.missed += missed;
        self.receipts += receipts;
        self.cuts += cuts;
    }
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let node_count = 2 + rng.below(2);
        let user_count = 2 + rng.below(3);
        let users: Vec<String> = (0..user_count).map(|u| format!("u{u}")).collect();
        let shards = Shards::new(1 + rng.below(3) as u16);
        let per_sender = [0, 2, 4][rng.below(3)];
        let streams = super::streams(QUEUE_MAX, per_sender, shards);
        let nodes = (0..node_count)
            .map(|n| {
                let inbox = format!("_INBOX.n{n}.");
                let mut node = Node {
                    inboxes: Inboxes::new(&inbox, streams),
                    history: History::new(&inbox, streams, Arc::new(StoreStats::default())),
                    inbox,
                    out: BytesMut::new(),
                    inbound: VecDeque::new(),
                    connected: true,
                    holds: BTreeSet::new(),
                    handed: BTreeMap::new(),
                };
                node.inboxes.connected(&mut node.out);
                node.history.connected(&mut node.out);
                node
            })
            .collect();
        let mut devices = Vec::new();
        for user in &users {
            for _ in 0..2 {
                let node = rng.below(node_count);
                devices.push(Device {
                    user: user.clone(),
                    node,
                    position: None,
                    reading: None,
                });
            }
        }
        World {
            rng,
            server: JetStream::default(),
            nodes,
            devices,
            users,
            shards,
            waiting: HashMap::new(),
            sent: Vec::new(),
            next_ticket: 1_000,
            next_message: 0,
            acked: HashMap::new(),
            receipts: HashMap::new(),
            posts: HashMap::new(),
            may_publish: HashMap::new(),
            tally: Tally::default(),
            log: Vec::new(),
            everything_read: false,
            first_sends: Vec::new(),
            kept_tickets: BTreeSet::new(),
            retried: BTreeSet::new(),
        }
    }

    /// Runs `steps` random steps, then lets everything settle.
    async fn run(&mut self, steps: usize) -> Result<Tally, String> {
        for _ in 0..steps {
            self.step().await?;
        }
        for n in 0..self.nodes.len() {
            if !self.nodes[n].connected {
                self.reconnect(n);
            }
        }
        self.quiet().await?;
        self.read_all_then_send().await?;
        self.check_order()?;
        // Everything is acknowledged now: every receipt asked for is due.
        self.tally.receipts_lost = self.receipts_lost();
        Ok(self.tally)
    }

    /// Lets everything settle, and whatever still waits on an answer that never comes
    /// fail by its deadline: every sender must have heard its outcome.
    async fn quiet(&mut self) -> Result<(), String> {
        self.settle()?;
        self.advance(crate::cluster::requests::REQUEST_WAIT).await?;
        self.settle()?;
        if let Some(sent) = self.waiting.values().next() {
            return Err(format!(
                "{} of {} to {} never had its outcome said",
                sent.id, sent.sender, sent.receiver
            ));
        }
        Ok(())
    }

    /// Once quiet: every user acknowledges everything, and then no node may refuse any
    /// sender at `--queue-max-per-sender` (no count is left behind by the faults).
    async fn read_all_then_send(&mut self) -> Result<(), String> {
        for user in self.users.clone() {
            let (stream, subject) = self.inbox_of(&user);
            let Some(upto) = self
                .server
                .held(&stream, &subject)
                .last()
                .map(|(seq, _)| *seq)
            else {
                continue;
            };
            self.log
                .push(format!("node 0: {user} acks everything, {upto}"));
            let ack = Command::Ack {
                user: user.as_str().into(),
                upto,
                device: None,
                home: 0,
            };
            self.command(0, ack)?;
        }
        self.settle()?;
        self.everything_read = true;
        for n in 0..self.nodes.len() {
            for sender in self.users.clone() {
                for receiver in self.users.clone() {
                    if receiver == sender {
                        continue;
                    }
                    self.next_message += 1;
                    let id = format!("m{}", self.next_message);
                    let sent = Sent {
                        sender: sender.clone(),
                        receiver,
                        id,
                    };
                    self.send_first(n, sent, true)?;
                }
            }
        }
        self.quiet().await
    }

    /// Serves and delivers until nothing moves.
    fn settle(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            let busy = (0..self.nodes.len())
                .any(|n| !self.nodes[n].out.is_empty() || !self.nodes[n].inbound.is_empty());
            if !busy {
                break;
            }
            for n in 0..self.nodes.len() {
                self.serve(n, usize::MAX)?;
                self.receive(n, usize::MAX)?;
            }
        }
        Ok(())
    }

    /// `user`'s inbox stream and subject.
    fn inbox_of(&self, user: &str) -> (String, String) {
        let stream = Shards::stream("CHAT_INBOX", self.shards.of(user));
        (stream, inbox_subject(self.shards, user))
    }

    /// Once quiet: a sender's messages through one node, each acknowledged `Kept` at its
    /// first send and never sent again, are stored in the order they were sent, whatever
    /// order their lookups were answered in.
    fn check_order(&self) -> Result<(), String> {
        let mut last: HashMap<(usize, &str, &str), (u64, &str)> = HashMap::new();
        for (n, ticket, sent) in &self.first_sends {
            if !self.kept_tickets.contains(ticket) || self.retried.contains(&sent.id) {
                continue;
            }
            let (inbox, subject) = self.inbox_of(&sent.receiver);
            let msg_id = format!("{}.{}", sent.sender, sent.id);
            let Some(seq) = self.server.ever.iter().find_map(|((stream, seq), m)| {
                let this = *stream == inbox
                    && m.subject == subject
                    && m.header("Nats-Msg-Id") == Some(msg_id.as_str());
                this.then_some(*seq)
            }) else {
                continue;
            };
            let pair = (*n, sent.sender.as_str(), sent.receiver.as_str());
            if let Some((before, earlier)) = last.get(&pair) {
                if *before >= seq {
                    return Err(format!(
                        "node {n}: {} of {} to {} stored at {seq}, before {earlier} sent \
                         ahead of it (stored at {before})",
                        sent.id, sent.sender, sent.receiver
                    ));
                }
            }
            last.insert(pair, (seq, &sent.id));
        }
        Ok(())
    }

    /// Once quiet: the acknowledged events whose sender waits for a receipt and got
    /// none. Counted, not an invariant: an ack whose record write got no answer sends its
    /// receipts once the record shows the write landed, which two or more later writes
    /// hide (docs/cluster.md, "Inboxes").
    fn receipts_lost(&self) -> usize {
        let mut lost = 0;
        for user in &self.users {
            let acked = self.acked.get(user).copied().unwrap_or(0);
            let (inbox, subject) = self.inbox_of(user);
            for ((stream, seq), m) in &self.server.ever {
                let due = *stream == inbox && m.subject == subject && *seq <= acked;
                let Some(receipt) = m.header("Chat-Receipt").filter(|_| due) else {
                    continue;
                };
                let (sender, id) = receipt.split_once(' ').unwrap_or_default();
                lost += usize::from(
                    !self
                        .receipts
                        .contains_key(&(sender.to_owned(), id.to_owned())),
                );
            }
        }
        lost
    }

    async fn step(&mut self) -> Result<(), String> {
        // A node cut off comes back soon.
        for n in 0..self.nodes.len() {
            if !self.nodes[n].connected && self.rng.chance(10) {
                self.reconnect(n);
            }
        }
        let n = self.rng.below(self.nodes.len());
        match self.rng.below(100) {
            0..=11 => self.send_new(n)?,
            12..=14 => self.post(n)?,
            15..=19 => self.retry(n)?,
            20..=27 => self.ack()?,
            28..=33 => self.start_read()?,
            34..=63 => {
                let count = 1 + self.rng.below(32);
                self.serve(n, count)?;
            }
            64..=93 => {
                let count = 1 + self.rng.below(32);
                self.receive(n, count)?;
            }
            94 => self.toggle_connection(n)?,
            95..=96 => self.toggle_hold(n)?,
            _ => {
                // Mostly short; now and then past the requests' deadline (5 s) or JetStream's
                // duplicate window (2 minutes).
                let jump_ms = match self.rng.below(20) {
                    0 => 130_000,
                    1 => 6_000,
                    i => 100 * i as u64,
                };
                self.log.push(format!("time +{jump_ms} ms"));
                self.advance(Duration::from_millis(jump_ms)).await?;
            }
        }
        Ok(())
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    fn send_new(&mut self, n: usize) -> Result<(), String> {
        let sender = self.users[self.rng.below(self.users.len())].clone();
        let receiver = self.users[self.rng.below(self.users.len())].clone();
        self.next_message += 1;
        let sent = Sent {
            sender,
            receiver,
            id: format!("m{}", self.next_message),
        };
        self.sent.push(sent.clone());
        let receipt = self.rng.chance(50);
        self.send_first(n, sent, receipt)
    }

    fn retry(&mut self, n: usize) -> Result<(), String> {
        if self.sent.is_empty() {
            return Ok(());
        }
        let sent = self.sent[self.rng.below(self.sent.len())].clone();
        self.tally.retries += 1;
        self.retried.insert(sent.id.clone());
        let receipt = self.rng.chance(50);
        self.send(n, sent, receipt).map(|_| ())
    }

    /// Hands node `n` an append of message `sent` for its sender's device (`receipt`: the
    /// sender waits for a `delivery_receipt`, as a device's message, not an API send).
    fn send(&mut self, n: usize, sent: Sent, receipt: bool) -> Result<u64, String> {
        let ticket = self.ticket();
        self.log.push(format!(
            "node {n}: {} sends {} to {} (ticket {ticket})",
            sent.sender, sent.id, sent.receiver
        ));
        let waiter = Waiter { reactor: 0, ticket };
        let priority = [Priority::High, Priority::Normal, Priority::Low][self.rng.below(3)];
        let json = format!(
            r#"{{"messageId":"{}","senderId":"{}"}}"#,
            sent.id, sent.sender
        );
        let append = Append {
            user: sent.receiver.as_str().into(),
            seq: None,
            home: 0,
            event: Event {
                kind: OutKind::NewMessage,
                priority,
                json: Bytes::from(json),
            },
            receipt,
            chat: Some(Chat {
                sender: sent.sender.as_str().into(),
                message_id: sent.id.as_str().into(),
                timestamp_ms: self.server.now_ms,
            }),
            ack: Some(AckTo {
                waiter,
                message_id: sent.id.as_str().into(),
                delivered: false,
            }),
            dedup: None,
            copy: None,
        };
        if !self.nodes[n].history.indexed() {
            let key = index_key(self.shards, &sent);
            *self.may_publish.entry((n, key)).or_default() += 1;
        }
        self.waiting.insert(ticket, sent);
        self.command(n, Command::Append(Box::new(append)))?;
        Ok(ticket)
    }

    /// Sends a message for the first time.
    fn send_first(&mut self, n: usize, sent: Sent, receipt: bool) -> Result<(), String> {
        let ticket = self.send(n, sent.clone(), receipt)?;
        self.first_sends.push((n, ticket, sent));
        Ok(())
    }

    /// A post to some users (a group's fan-out): one row each, without dedup.
    fn post(&mut self, n: usize) -> Result<(), String> {
        let rows: Vec<ShareRow> = self
            .users
            .iter()
            .filter(|_| self.rng.chance(60))
            .map(|user| ShareRow {
                user: user.as_str().into(),
                seq: None,
                json: None,
                except: None,
            })
            .collect();
        self.next_message += 1;
        let request = self.next_message as u32;
        self.log
            .push(format!("node {n}: post {request} to {} users", rows.len()));
        self.posts.insert(request, rows.len());
        let share = Share {
            kind: OutKind::NewMessage,
            priority: Priority::Normal,
            json: Bytes::from(format!(r#"{{"post":{request}}}"#)),
            rows,
            home: 0,
            purpose: FanOut::GroupPost,
            reply_to: 0,
            request,
            delivered: 0,
        };
        self.command(n, Command::AppendShare(Box::new(share)))
    }

    /// A device that has read acknowledges what it has.
    fn ack(&mut self) -> Result<(), String> {
        let d = self.rng.below(self.devices.len());
        let device = &self.devices[d];
        let (Some((_, seq)), None) = (&device.position, &device.reading) else {
            return Ok(());
        };
        let (user, node, upto) = (device.user.clone(), device.node, *seq);
        if upto == 0 {
            return Ok(());
        }
        self.log
            .push(format!("node {node}: {user}'s device {d} acks {upto}"));
        let ack = Command::Ack {
            user: user.into(),
            upto,
            device: Some(Waiter {
                reactor: 0,
                ticket: d as u64,
            }),
            home: 0,
        };
        self.command(node, ack)
    }

    /// A device reads its inbox: resuming from where it is, or from nothing.
    fn start_read(&mut self) -> Result<(), String> {
        let d = self.rng.below(self.devices.len());
        let device = &mut self.devices[d];
        if device.reading.is_some() {
            return Ok(());
        }
        let from = match self.rng.chance(25) {
            true => None,
            false => Some(device.position.clone().unwrap_or(("".into(), 0))),
        };
        device.reading = Some(Reading {
            from: from.clone(),
            resumed: None,
            last_at_start: 0,
            seqs: Vec::new(),
            order: Vec::new(),
        });
        let (user, node) = (device.user.clone(), device.node);
        self.log.push(format!(
            "node {node}: {user}'s device {d} reads from {from:?}"
        ));
        let from = match from {
            Some((epoch, seq)) => ReadFrom::Resume { epoch, seq },
            None => ReadFrom::Unacked {
                upto: 0,
                cursor: None,
            },
        };
        let read = Command::ReadInbox {
            user: user.into(),
            device: Waiter {
                reactor: 0,
                ticket: d as u64,
            },
            from,
        };
        self.command(node, read)
    }

    /// Node `n` carries out a command, as its relay would.
    fn command(&mut self, n: usize, command: Command) -> Result<(), String> {
        let node = &mut self.nodes[n];
        node.inboxes.set_index_ready(node.history.indexed());
        let replies = if History::takes(&command) {
            node.history.command(command, node.connected, &mut node.out)
        } else {
            node.inboxes.command(command, node.connected, &mut node.out)
        };
        self.replies(n, replies)
    }

    /// The server takes up to `count` of node `n`'s requests, in order.
    fn serve(&mut self, n: usize, count: usize) -> Result<(), String> {
        if !self.nodes[n].connected {
            return Ok(());
        }
        let mut answers_after = Vec::new();
        for _ in 0..count {
            let Some(publish) = next_publish(&mut self.nodes[n].out) else {
                break;
            };
            if publish.subject.starts_with("chat.live.") {
                // The holders answer before JetStream, after it, or (a holder cut off
                // whose subscription lingers) never: the ack then waits its 200 ms.
                let Some(answer) = self.holders_answer(n, &publish) else {
                    continue;
                };
                match self.rng.below(10) {
                    0 => self.log.push(format!("node {n}: the holders never answer")),
                    1..=4 => answers_after.push(answer),
                    _ => self.nodes[n].inbound.push_back(answer),
                }
                continue;
            }
            let index_get = publish
                .subject
                .starts_with("$JS.API.DIRECT.GET.KV_chat_received_");
            let checked = index_get
                .then(|| serde_json::from_slice::<serde_json::Value>(&publish.payload).ok())
                .flatten()
                .and_then(|asked| asked["last_by_subj"].as_str().map(str::to_owned));
            let stored = publish
                .subject
                .strip_prefix("chat.inbox.")
                .and_then(|sharded| Some(sharded.split_once('.')?.1))
                .zip(publish.headers.iter().find(|(k, _)| k == "Nats-Msg-Id"))
                .map(|(receiver, (_, id))| (receiver.to_owned(), id.clone()));
            let copies_before = stored.as_ref().map_or(0, |s| self.copies(s));
            for delivery in self.server.handle(publish) {
                if let (Some(key), Some(404)) = (&checked, delivery.status) {
                    *self.may_publish.entry((n, key.clone())).or_default() += 1;
                }
                self.route(n, delivery);
            }
            if let Some(stored) = stored {
                self.check_copies(n, &stored, copies_before)?;
            }
            self.check_records()?;
        }
        self.nodes[n].inbound.extend(answers_after);
        Ok(())
    }

    /// Node `n` asked the other nodes holding a user whether a device of the user is
    /// online there (for a sender's `sent`): the answer, as their relays would give it,
    /// or with none, the server's "no responders".
    fn holders_answer(&self, n: usize, question: &super::jetstream::Publish) -> Option<Delivery> {
        let user = question.subject.strip_prefix("chat.live.")?;
        let reply = question.reply.clone()?;
        let holders: Vec<usize> = (0..self.nodes.len())
            .filter(|&m| m != n && self.nodes[m].connected && self.nodes[m].holds.contains(user))
            .collect();
        let here = self
            .devices
            .iter()
            .any(|d| d.user == user && holders.contains(&d.node));
        let (status, payload): (_, &'static [u8]) = match (holders.is_empty(), here) {
            (true, _) => (Some(503), b""),
            (false, true) => (None, b"here"),
            (false, false) => (None, b"away"),
        };
        Some(Delivery {
            subject: reply,
            status,
            headers: Bytes::new(),
            payload: Bytes::from_static(payload),
            stored: None,
        })
    }

    /// Where a delivery goes: an answer to its node, a live event to every node holding
    /// the user (and connected).
    fn route(&mut self, from: usize, delivery: Delivery) {
        if let Some(user) = delivery.subject.strip_prefix("chat.live.") {
            for node in &mut self.nodes {
                if node.connected && node.holds.contains(user) {
                    node.inbound.push_back(Delivery {
                        subject: delivery.subject.clone(),
                        status: None,
                        headers: delivery.headers.clone(),
                        payload: delivery.payload.clone(),
                        stored: None,
                    });
                }
            }
        } else {
            self.nodes[from].inbound.push_back(delivery);
        }
    }

    /// Node `n` takes up to `count` of what came for it, in order.
    fn receive(&mut self, n: usize, count: usize) -> Result<(), String> {
        for _ in 0..count {
            let Some(delivery) = self.nodes[n].inbound.pop_front() else {
                break;
            };
            let node = &mut self.nodes[n];
            if let Some(user) = delivery.subject.strip_prefix("chat.live.") {
                let seq = crate::cluster::inboxes::sequence_of(&delivery.headers).unwrap_or(0);
                let event = (seq, delivery.headers.clone(), delivery.payload.clone());
                if let Some(ready) = node.inboxes.live(user, event, &mut node.out) {
                    let user = user.to_owned();
                    self.hand_over(n, &user, ready)?;
                }
                continue;
            }
            let Some(tail) = delivery.subject.strip_prefix(node.inbox.as_str()) else {
                continue;
            };
            let (letter, id) = tail.split_at(1);
            node.inboxes.set_index_ready(node.history.indexed());
            let (status, headers, payload) =
                (delivery.status, &delivery.headers, &delivery.payload);
            let replies = match letter {
                "j" => {
                    let replies = node.inboxes.answered(
                        id.as_bytes(),
                        status,
                        headers,
                        payload,
                        &mut node.out,
                    );
                    for kept in node.inboxes.take_kept() {
                        node.history.record(kept, &mut node.out);
                    }
                    replies
                }
                "k" => {
                    node.history
                        .answered(id.as_bytes(), status, headers, payload, &mut node.out)
                }
                _ => Vec::new(),
            };
            self.replies(n, replies)?;
            self.gaps_filled(n)?;
        }
        Ok(())
    }

    /// The gaps node `n` read, handed over; or, where the node could not have them all,
    /// its devices of the user closed (they resume: the node hands over afresh).
    fn gaps_filled(&mut self, n: usize) -> Result<(), String> {
        for (user, caught) in self.nodes[n].inboxes.take_ready() {
            match caught {
                Caught::Up(events) => {
                    for ready in events {
                        self.hand_over(n, &user, ready)?;
                    }
                }
                Caught::Missed => {
                    self.log.push(format!("node {n} missed events of {user}"));
                    self.tally.missed += 1;
                    self.nodes[n].handed.remove(&*user);
                }
            }
        }
        Ok(())
    }

    /// Node `n` hands one of `user`'s events to its devices: the user's next event after
    /// the last it handed, whatever was removed since.
    fn hand_over(&mut self, n: usize, user: &str, ready: Ready) -> Result<(), String> {
        let seq = match ready {
            Ready::Read(event) => event.seq,
            Ready::Live { seq, payload, .. } => {
                if decode_event(&payload).is_none() {
                    return Err(format!("node {n}: {user}'s event {seq} does not parse"));
                }
                seq
            }
        };
        self.tally.handed += 1;
        self.log.push(format!("node {n} hands {user}'s {seq}"));
        let (stream, subject) = self.inbox_of(user);
        let handed = self.nodes[n].handed.entry(user.to_owned()).or_default();
        if let Some(&last) = handed.last() {
            if last >= seq {
                return Err(format!(
                    "node {n} handed {user}'s event {seq} after {handed:?}"
                ));
            }
            let skipped = (self
                .server
                .ever
                .range((stream.clone(), last + 1)..(stream, seq)))
            .find(|(_, stored)| stored.subject == subject);
            if let Some(((_, skipped), _)) = skipped {
                return Err(format!(
                    "node {n} handed {user}'s event {seq} after {last}, skipping {skipped}"
                ));
            }
        }
        handed.push(seq);
        Ok(())
    }

    /// What a node's inboxes and history answered.
    fn replies(&mut self, n: usize, replies: Vec<(usize, Reply)>) -> Result<(), String> {
        for (_, reply) in replies {
            match reply {
                Reply::Appended {
                    sender, outcome, ..
                } => {
                    let Some(sent) = self.waiting.remove(&sender.ticket) else {
                        return Err(format!("an outcome for no sender: {sender:?}"));
                    };
                    self.log.push(format!(
                        "node {n}: {} of {} to {}: {outcome:?}",
                        sent.id, sent.sender, sent.receiver
                    ));
                    match outcome {
                        Outcome::Kept { delivered } => {
                            self.tally.kept += 1;
                            self.kept_tickets.insert(sender.ticket);
                            self.tally.sent_elsewhere += usize::from(delivered);
                            if self.copies_of(&sent) == 0 {
                                return Err(format!(
                                    "{} of {} to {} acknowledged, never stored",
                                    sent.id, sent.sender, sent.receiver
                                ));
                            }
                        }
                        Outcome::QueueFull => self.tally.full += 1,
                        Outcome::SenderQuota if self.everything_read => {
                            return Err(format!(
                                "{} of {} to {} refused at the sender's quota though {} \
                                 read everything",
                                sent.id, sent.sender, sent.receiver, sent.receiver
                            ));
                        }
                        Outcome::SenderQuota => self.tally.over_quota += 1,
                        _ => self.tally.failed += 1,
                    }
                }
                Reply::InboxPage {
                    device,
                    greeting,
                    events,
                    next,
                    covered,
                    error,
                    ..
                } => self.page(n, device, (greeting, events, next, error), covered)?,
                Reply::FanOutQueued {
                    request,
                    queued,
                    not_kept,
                    ..
                } => {
                    let Some(rows) = self.posts.remove(&request) else {
                        return Err(format!("counts for no post: {request}"));
                    };
                    let counted = (queued + not_kept) as usize;
                    if counted != rows {
                        return Err(format!("post {request}: {counted} counted of {rows} rows"));
                    }
                    let json = format!(r#"{{"post":{request}}}"#);
                    let stored = self
                        .server
                        .ever
                        .values()
                        .filter(|m| {
                            decode_event(&m.payload).is_some_and(|(_, _, j)| j == json.as_bytes())
                        })
                        .count();
                    if stored < queued as usize {
                        return Err(format!("post {request}: {queued} kept, {stored} stored"));
                    }
                    self.tally.posts += 1;
                }
                Reply::Receipts { user, receipts } => {
                    self.log
                        .push(format!("node {n}: receipts of {user}: {receipts:?}"));
                    for (sender, id) in receipts {
                        self.tally.receipts += 1;
                        let sent = Sent {
                            sender: sender.to_string(),
                            receiver: user.to_string(),
                            id: id.to_string(),
                        };
                        // One a stored copy (a retry stored again, before the first
                        // was indexed, has its own).
                        let count = self
                            .receipts
                            .entry((sender.to_string(), id.to_string()))
                            .or_default();
                        *count += 1;
                        let (count, copies) = (*count, self.copies_of(&sent));
                        if count > copies {
                            return Err(format!(
                                "receipt {count} for {id} of {sender}, stored {copies} times"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A page of a device's read.
    fn page(
        &mut self,
        n: usize,
        device: Waiter,
        (greeting, events, next, error): (
            Option<crate::store::Greeting>,
            Vec<crate::store::InboxEvent>,
            Option<ReadFrom>,
            Option<crate::store::Failure>,
        ),
        covered: u64,
    ) -> Result<(), String> {
        let d = device.ticket as usize;
        let Some(reading) = self.devices[d].reading.as_mut() else {
            return Err(format!("a page for device {d}, which does not read"));
        };
        if let Some(error) = error {
            self.log
                .push(format!("device {d}'s read failed: {error:?}"));
            self.tally.unread += 1;
            self.devices[d].reading = None;
            return Ok(());
        }
        if let Some(greeting) = &greeting {
            reading.resumed = greeting.resumed;
            reading.last_at_start = greeting.seq;
            self.devices[d].position = Some((greeting.epoch.clone(), 0));
        }
        let reading = self.devices[d].reading.as_mut().expect("reading");
        reading.seqs.extend(events.iter().map(|e| e.seq));
        reading
            .order
            .extend(events.iter().map(|e| (e.priority as u8, e.seq)));
        if reading.from.is_none() && !events.is_empty() {
            // Written to a device that does not acknowledge: taken as read, as its
            // driver acknowledges a page it wrote.
            let ack = Command::Ack {
                user: self.devices[d].user.as_str().into(),
                upto: covered,
                device: None,
                home: 0,
            };
            self.command(n, ack)?;
        }
        if let Some(next) = next {
            let user = self.devices[d].user.clone();
            let read = Command::ReadInbox {
                user: user.into(),
                device,
                from: next,
            };
            return self.command(n, read);
        }
        let reading = self.devices[d].reading.take().expect("reading");
        let user = self.devices[d].user.clone();
        let highest = reading.seqs.iter().copied().max().unwrap_or(0);
        let upto = highest.max(reading.last_at_start);
        if reading.from.is_none() {
            self.tally.unacked_reads += 1;
            if reading.order.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!(
                    "device {d} of {user} read out of delivery order: {:?}",
                    reading.order
                ));
            }
        }
        if reading.resumed == Some(true) {
            self.tally.resumed += 1;
            let from = reading.from.as_ref().map_or(0, |(_, seq)| *seq);
            let (inbox, subject) = self.inbox_of(&user);
            let expected: Vec<u64> = self
                .server
                .ever
                .iter()
                .filter(|((stream, seq), m)| {
                    *stream == inbox && m.subject == subject && *seq > from && *seq <= upto
                })
                .map(|((_, seq), _)| *seq)
                .collect();
            if reading.seqs != expected {
                return Err(format!(
                    "device {d} of {user} resumed from {from} and got {:?}, not {expected:?}",
                    reading.seqs
                ));
            }
            let epoch = self.devices[d]
                .position
                .clone()
                .map(|p| p.0)
                .unwrap_or_default();
            self.devices[d].position = Some((epoch, upto.max(from)));
        } else {
            if reading.resumed == Some(false) {
                self.tally.refused += 1;
            }
            let epoch = self.devices[d]
                .position
                .clone()
                .map(|p| p.0)
                .unwrap_or_default();
            self.devices[d].position = Some((epoch, upto));
        }
        self.log.push(format!(
            "device {d} of {user} read {:?} (resumed {:?})",
            reading.seqs, reading.resumed
        ));
        Ok(())
    }

    /// How many copies of `sent` its receiver's inbox ever stored.
    fn copies_of(&self, sent: &Sent) -> usize {
        self.copies(&(
            sent.receiver.clone(),
            format!("{}.{}", sent.sender, sent.id),
        ))
    }

    /// Copies of message `(receiver, Nats-Msg-Id)` ever stored.
    fn copies(&self, (receiver, id): &(String, String)) -> usize {
        let (inbox, subject) = self.inbox_of(receiver);
        self.server
            .ever
            .iter()
            .filter(|((stream, _), m)| {
                *stream == inbox && m.subject == subject && m.header("Nats-Msg-Id") == Some(id)
            })
            .count()
    }

    /// A publish of a message by node `n`: it must have had leave to (a free key, or no
    /// index yet); a second copy stored without leave is one whose check found the
    /// first indexed.
    fn check_copies(
        &mut self,
        n: usize,
        stored: &(String, String),
        before: usize,
    ) -> Result<(), String> {
        let (receiver, id) = stored;
        let message = id.split_once('.').map_or("", |(_, m)| m).to_owned();
        let key = index_key(
            self.shards,
            &Sent {
                sender: String::new(),
                receiver: receiver.clone(),
                id: message,
            },
        );
        if let Some(leave) = self.may_publish.get_mut(&(n, key)).filter(|l| **l > 0) {
            *leave -= 1;
        } else if before > 0 && self.copies(stored) > before {
            return Err(format!(
                "node {n} stored {id} for {receiver} again, though indexed"
            ));
        }
        Ok(())
    }

    /// No acknowledgement record went back.
    fn check_records(&mut self) -> Result<(), String> {
        for user in &self.users {
            let subject = acks::record_subject(self.shards, user);
            let stream = acks::ack_stream(self.shards.of(user));
            let Some((_, record)) = self.server.held(&stream, &subject).pop() else {
                continue;
            };
            let Some(record) = AckRecord::parse(&record.payload) else {
                return Err(format!("{user}'s record does not parse"));
            };
            let before = self.acked.insert(user.clone(), record.acked).unwrap_or(0);
            if record.acked < before {
                return Err(format!(
                    "{user}'s record went back from {before} to {}",
                    record.acked
                ));
            }
        }
        Ok(())
    }

    /// Cuts node `n` off, or brings it back.
    fn toggle_connection(&mut self, n: usize) -> Result<(), String> {
        if self.nodes[n].connected {
            self.tally.cuts += 1;
            self.log.push(format!("node {n} cut off"));
            // What it had leave to publish is lost with what it sent.
            self.may_publish.retain(|(node, _), _| *node != n);
            let node = &mut self.nodes[n];
            node.connected = false;
            node.out.clear();
            node.inbound.clear();
            let mut replies = node.inboxes.disconnected();
            replies.extend(node.history.disconnected());
            self.replies(n, replies)?;
            self.gaps_filled(n)
        } else {
            self.reconnect(n);
            Ok(())
        }
    }

    fn reconnect(&mut self, n: usize) {
        self.log.push(format!("node {n} back"));
        let node = &mut self.nodes[n];
        node.connected = true;
        node.inboxes.connected(&mut node.out);
        node.history.connected(&mut node.out);
    }

    /// Node `n` starts or stops holding a user.
    fn toggle_hold(&mut self, n: usize) -> Result<(), String> {
        let user = self.users[self.rng.below(self.users.len())].clone();
        let node = &mut self.nodes[n];
        if node.holds.remove(&user) {
            self.log.push(format!("node {n} lets go of {user}"));
            node.inboxes.forget(&user);
            node.handed.remove(&user);
        } else {
            self.log.push(format!("node {n} holds {user}"));
            node.holds.insert(user);
        }
        Ok(())
    }

    /// Time passes: on the server's clock and the nodes' (requests past their deadline
    /// fail).
    async fn advance(&mut self, by: Duration) -> Result<(), String> {
        self.server.now_ms += by.as_millis() as u64;
        tokio::time::advance(by).await;
        let now = Instant::now();
        for n in 0..self.nodes.len() {
            let node = &mut self.nodes[n];
            let mut replies = node.inboxes.expire(now, &mut node.out);
            replies.extend(node.history.expire(now, node.connected, &mut node.out));
            self.replies(n, replies)?;
            self.gaps_filled(n)?;
        }
        Ok(())
    }
}

/// The message index's key of `sent`, as a retry check asks for it.
fn index_key(shards: Shards, sent: &Sent) -> String {
    received::index_key(shards, &sent.receiver, &sent.id).subject()
}

/// Runs seed `seed`; a failure says which invariant broke, after which steps.
fn run_seed(seed: u64, steps: usize) -> Result<Tally, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let mut world = World::new(seed);
    let outcome = runtime.block_on(world.run(steps));
    outcome.map_err(|why| failure(seed, &why, &world.log))
}

#[test]
fn every_seed_keeps_the_cluster_inbox_invariants() {
    let run = |seed| run_seed(seed, STEPS);
    if let Some(total) = run_seeds("CLUSTER_SIM", SEEDS_DEFAULT, run, Tally::add) {
        assert!(
            total.kept > 0 && total.resumed > 0 && total.handed > 0,
            "{total:?}"
        );
    }
}
