//! The simulated world: several shards (one per reactor) wired as the engine wires them,
//! with a simulated driver, network, store and clients, stepped from one seed.
//!
//! The shards are the engine's own code. What is simulated is everything around them,
//! as the driver (`engine/src/reactor/`) does it:
//! - mail between reactors: one FIFO ring per ordered pair, delivered one envelope at a
//!   time in a random order of rings; mail to the same reactor is handled at once;
//! - the store: commands wait until a commit step applies them all ([`SimStore`]);
//!   answers wait in a queue per reactor;
//! - connections: a client's frames are parsed by the engine's JSON parser and handed to
//!   its reactor's shard; frames for it are decoded and judged by the [`Oracle`]; an
//!   offline-queue part is taken whole, removed, and its receipts reported, as the driver
//!   does once the kernel has it;
//! - time: a simulated clock that each step moves on a little;
//! - crashes: the whole process dies (connections, shards, rings, store inbox) and
//!   restarts with what the store committed.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use engine::{
    protocol::{
        inbound::JsonParser,
        outbound::{self, OutJson},
        Priority,
    },
    router::{AckStatus, ConnAddr, Envelope},
    shard::{
        groups_state::{GroupQuota, Groups},
        Clock, Effect, Effects, Event, Shard,
    },
    store::{Command, Outcome, Reply},
};
use serde_json::Value;

use super::{
    oracle::{Acked, Oracle},
    rng::Rng,
    store::SimStore,
};

/// The shape of one simulated run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Reactors (shards).
    pub reactors: usize,
    /// Users (`u0`, `u1`, …).
    pub users: usize,
    /// Groups (`g0`, …).
    pub groups: usize,
    /// Steps before the world is quieted and judged.
    pub steps: usize,
    /// Connections one user may have open at once.
    pub devices_per_user: usize,
}

/// One connection's state in the world.
#[derive(Debug)]
struct Conn {
    addr: ConnAddr,
    user: Arc<str>,
    open: bool,
    online: bool,
    /// Send numbers, for the per-sender order check.
    sends: u64,
    /// Message ids this connection sent, for retries and receipts.
    sent: Vec<(String, String)>,
    /// `(sender, messageId)` it got, for read receipts.
    got: Vec<(String, String)>,
}

/// Everything one seed runs.
pub struct World {
    rng: Rng,
    shape: Shape,
    now_ms: u64,
    shards: Vec<Shard>,
    effects: Effects,
    carrying_out: bool,
    /// `rings[from][to]`.
    rings: Vec<Vec<VecDeque<Envelope>>>,
    /// Store answers on their way to each reactor.
    replies: Vec<VecDeque<Reply>>,
    store: SimStore,
    conns: Vec<Conn>,
    parser: JsonParser,
    json: OutJson,
    next_message: u64,
    /// The oracle: what clients saw, and the invariants.
    pub oracle: Oracle,
    /// Set by the first broken invariant.
    failure: Option<String>,
    /// The last steps, for the failure report.
    trace: VecDeque<String>,
    /// `SIM_TRACE=1`: print every step as it happens (with `SIM_SEED`, to study one).
    print_trace: bool,
}

/// Steps of trace kept for a failure report.
const TRACE_STEPS: usize = 60;

impl World {
    /// A fresh world for `seed`.
    pub fn new(seed: u64, shape: Shape) -> World {
        let mut world = World {
            rng: Rng::new(seed),
            shape,
            now_ms: 1_700_000_000_000,
            shards: Vec::new(),
            effects: Effects::default(),
            carrying_out: false,
            rings: Vec::new(),
            replies: Vec::new(),
            store: SimStore::new(6, 4),
            conns: Vec::new(),
            parser: JsonParser::default(),
            json: OutJson::default(),
            next_message: 0,
            oracle: Oracle::default(),
            failure: None,
            trace: VecDeque::new(),
            print_trace: std::env::var_os("SIM_TRACE").is_some(),
        };
        world.boot();
        world
    }

    /// (Re)starts the process: shards with the groups the store holds, empty rings.
    fn boot(&mut self) {
        let n = self.shape.reactors;
        let quota = Arc::new(GroupQuota::new(1000));
        let mut groups: Vec<Groups> = (0..n).map(|_| Groups::default()).collect();
        for (group, user) in self.store.memberships() {
            quota.count_anyway(&user);
            groups[engine::router::home_of(&group, n)].join(&group, user.into());
        }
        self.shards = groups
            .into_iter()
            .enumerate()
            .map(|(id, groups)| Shard::new(id, n, groups, quota.clone()))
            .collect();
        self.rings = (0..n)
            .map(|_| (0..n).map(|_| VecDeque::new()).collect())
            .collect();
        self.replies = (0..n).map(|_| VecDeque::new()).collect();
        self.effects = Effects::default();
        self.carrying_out = false;
    }

    /// Runs the seed: random steps, then quiet, judge, reconnect everyone, judge again.
    pub fn run(&mut self) -> Result<(), String> {
        for step in 0..self.shape.steps {
            self.oracle.step = step as u64;
            self.now_ms += self.rng.below(30) as u64;
            self.step();
            self.fail_fast()?;
        }
        self.quiet();
        self.fail_fast()?;
        self.oracle.check_quiet().map_err(|e| self.report(e))?;
        for user in 0..self.shape.users {
            let user = format!("u{user}");
            let reactor = self.rng.below(self.shape.reactors);
            self.connect(&user, reactor);
        }
        self.quiet();
        self.fail_fast()?;
        self.oracle.check_nothing_lost().map_err(|e| self.report(e))
    }

    fn fail_fast(&mut self) -> Result<(), String> {
        match self.failure.take() {
            Some(failure) => Err(self.report(failure)),
            None => Ok(()),
        }
    }

    fn report(&self, failure: String) -> String {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        format!("{failure}\nlast steps:\n  {}", trace.join("\n  "))
    }

    fn note(&mut self, what: String) {
        if self.print_trace {
            eprintln!("[{}] {what}", self.oracle.step);
        }
        if self.trace.len() == TRACE_STEPS {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{}] {what}", self.oracle.step));
    }

    /// One random step: a delivery, a store commit or answer, a client action, a crash.
    fn step(&mut self) {
        let roll = self.rng.below(100);
        if roll < 40 && self.deliver_one_envelope() {
            return;
        }
        if roll < 55 && self.deliver_one_reply() {
            return;
        }
        if roll < 63 && self.store.has_work() {
            return self.commit();
        }
        if roll == 99 && self.rng.chance(25) {
            return self.crash();
        }
        self.client_action();
    }

    /// Runs deliveries, commits and answers until nothing moves.
    fn quiet(&mut self) {
        for _ in 0..100_000 {
            let moved = self.deliver_one_envelope() || self.deliver_one_reply() || {
                let work = self.store.has_work();
                if work {
                    self.commit();
                }
                work
            };
            if !moved {
                return;
            }
        }
        self.failure = Some("the world never went quiet".into());
    }

    fn deliver_one_envelope(&mut self) -> bool {
        let n = self.shape.reactors;
        let start = self.rng.below(n * n);
        for i in 0..n * n {
            let (from, to) = ((start + i) / n % n, (start + i) % n);
            if let Some(envelope) = self.rings[from][to].pop_front() {
                self.note(format!("mail {from}->{to} {}", brief(&envelope)));
                self.take_mail(to, envelope);
                return true;
            }
        }
        false
    }

    fn deliver_one_reply(&mut self) -> bool {
        let n = self.shape.reactors;
        let start = self.rng.below(n);
        for i in 0..n {
            let reactor = (start + i) % n;
            if let Some(reply) = self.replies[reactor].pop_front() {
                self.note(format!("store answer to {reactor}"));
                self.take_reply(reactor, reply);
                return true;
            }
        }
        false
    }

    fn commit(&mut self) {
        self.note("store commit".into());
        for (reactor, reply) in self.store.commit() {
            self.replies[reactor].push_back(reply);
        }
    }

    fn crash(&mut self) {
        self.note("CRASH".into());
        self.store.crash();
        for conn in &mut self.conns {
            conn.open = false;
        }
        for view in &mut self.oracle.conns {
            view.closed = true;
        }
        self.oracle.epoch += 1;
        self.boot();
    }

    // ---- the driver's part -------------------------------------------------------

    /// Feeds reactor `reactor`'s shard and carries out the effects, as the driver does.
    fn feed(&mut self, reactor: usize, event: Event<'_>) {
        let now = Clock {
            unix_ms: self.now_ms,
            mono_ns: self.now_ms * 1_000_000,
        };
        self.shards[reactor].handle(now, event, &mut self.effects);
        if self.carrying_out {
            return;
        }
        self.carrying_out = true;
        while let Some(effect) = self.effects.pop() {
            self.carry_out(reactor, effect);
        }
        self.carrying_out = false;
    }

    fn carry_out(&mut self, reactor: usize, effect: Effect) {
        match effect {
            Effect::Mail { to, envelope } => self.route(reactor, to, envelope),
            Effect::Store(command) => self.store.send(command),
            Effect::Error {
                to,
                code,
                text,
                reference,
            } => {
                outbound::error(&mut self.json, code, &text, reference.as_deref());
                let envelope = Envelope::ToConn {
                    addr: to,
                    frame: self.json.frame(),
                    priority: Priority::High,
                    accepted_ns: 0,
                };
                self.route(reactor, to.reactor as usize, envelope);
            }
        }
    }

    fn route(&mut self, from: usize, to: usize, envelope: Envelope) {
        if from == to {
            self.take_mail(to, envelope);
        } else {
            self.rings[from][to].push_back(envelope);
        }
    }

    fn take_mail(&mut self, reactor: usize, envelope: Envelope) {
        if envelope.is_for_shard() {
            return self.feed(reactor, Event::Mail(envelope));
        }
        match envelope {
            Envelope::ToConn { addr, frame, .. } => {
                if let Some(conn) = self.live(addr) {
                    let payload = frame.json();
                    self.receive(conn, &payload, false);
                }
            }
            Envelope::Ack {
                sender,
                message_id,
                status,
            } => {
                let acked = match status {
                    AckStatus::Sent => Acked::Sent,
                    AckStatus::Queued => Acked::Queued,
                    AckStatus::Offline => Acked::Refused,
                };
                self.ack(sender, &message_id, acked);
            }
            Envelope::Close { addr, code } => {
                if let Some(conn) = self.live(addr) {
                    self.note(format!("server closes conn {conn} with {code}"));
                    self.close(conn);
                }
            }
            other => self.failure = Some(format!("unexpected mail {other:?}")),
        }
    }

    fn take_reply(&mut self, reactor: usize, reply: Reply) {
        if reply.is_for_shard() {
            return self.feed(reactor, Event::StoreReply(reply));
        }
        match reply {
            Reply::Enqueued {
                sender,
                message_id,
                outcome,
            } => {
                let acked = match outcome {
                    Outcome::Queued => Acked::Queued,
                    Outcome::QueueFull | Outcome::Failed(_) => Acked::Refused,
                };
                self.ack(sender.into(), &message_id, acked);
            }
            Reply::Pending {
                device,
                user,
                messages,
                more,
            } => {
                let Some(conn) = self.live(device.into()) else {
                    return; // still queued: the next device to authenticate gets it
                };
                let mut keys = Vec::with_capacity(messages.len());
                let mut receipts = Vec::new();
                for message in messages {
                    self.receive(conn, &message.payload, true);
                    keys.push(message.key);
                    if message.receipt {
                        receipts.push(message.payload);
                    }
                }
                // The kernel took it all: removed, receipts sent, the next part asked for.
                self.store.send(Command::Remove {
                    user: user.clone(),
                    keys,
                });
                if !receipts.is_empty() {
                    let receiver = user.clone();
                    self.feed(reactor, Event::QueueTaken { receiver, receipts });
                }
                if more {
                    self.store.send(Command::Drain { user, device });
                }
            }
            other => self.failure = Some(format!("unexpected store answer {other:?}")),
        }
    }

    /// The connection at `addr` if it is still open.
    fn live(&self, addr: ConnAddr) -> Option<usize> {
        let index = addr.slot as usize;
        self.conns
            .get(index)
            .filter(|c| c.open && c.addr == addr)
            .map(|_| index)
    }

    fn ack(&mut self, sender: ConnAddr, message_id: &str, acked: Acked) {
        let Some(conn) = self.live(sender) else {
            return;
        };
        if let Err(e) = self.oracle.acked(conn, message_id, acked) {
            self.failure.get_or_insert(e);
        }
    }

    fn receive(&mut self, conn: usize, payload: &Bytes, via_queue: bool) {
        let frame: Value = match serde_json::from_slice(payload) {
            Ok(frame) => frame,
            Err(e) => {
                self.failure = Some(format!("conn {conn} got bad JSON: {e}"));
                return;
            }
        };
        if frame["type"] == "auth_success" {
            self.conns[conn].online = true;
        }
        if frame["type"] == "new_message" {
            let sender = frame["senderId"].as_str().unwrap_or_default().to_owned();
            let id = frame["messageId"].as_str().unwrap_or_default().to_owned();
            let how = if via_queue {
                "from its queue"
            } else {
                "online"
            };
            self.note(format!("conn {conn} gets {sender}/{id} {how}"));
            self.conns[conn].got.push((sender, id));
        }
        if let Err(e) = self.oracle.received(conn, &frame, via_queue) {
            self.failure.get_or_insert(e);
        }
    }

    fn close(&mut self, conn: usize) {
        self.conns[conn].open = false;
        self.oracle.conns[conn].closed = true;
        let (addr, user) = (self.conns[conn].addr, self.conns[conn].user.clone());
        self.feed(addr.reactor as usize, Event::Closed { conn: addr, user });
    }

    // ---- the clients' part -------------------------------------------------------

    fn connect(&mut self, user: &str, reactor: usize) {
        let index = self.conns.len();
        let addr = ConnAddr {
            reactor: reactor as u16,
            generation: 1,
            slot: index as u32,
        };
        let user: Arc<str> = user.into();
        self.note(format!(
            "conn {index}: {user} connects on reactor {reactor}"
        ));
        self.conns.push(Conn {
            addr,
            user: user.clone(),
            open: true,
            online: false,
            sends: 0,
            sent: Vec::new(),
            got: Vec::new(),
        });
        self.oracle.connected(index, &user);
        let device = format!("d{index}");
        self.feed(
            reactor,
            Event::Authenticated {
                conn: addr,
                user,
                device: &device,
            },
        );
    }

    /// A client message from connection `conn`, parsed as the reactor parses it.
    fn client_says(&mut self, conn: usize, message: Value) {
        self.note(format!("conn {conn} says {message}"));
        let mut bytes = message.to_string().into_bytes();
        let mut parser = std::mem::take(&mut self.parser);
        let parsed = parser.parse(&mut bytes);
        let (addr, user) = (self.conns[conn].addr, self.conns[conn].user.clone());
        match parsed {
            Ok(message) => self.feed(
                addr.reactor as usize,
                Event::Message {
                    conn: addr,
                    user: &user,
                    message,
                },
            ),
            Err(e) => self.failure = Some(format!("the simulator wrote a bad message: {e:?}")),
        }
        self.parser = parser;
    }

    fn client_action(&mut self) {
        let users = self.shape.users;
        let online: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].open && self.conns[i].online)
            .collect();
        let roll = self.rng.below(100);
        let Some(&conn) = self.rng.pick(&online).filter(|_| roll >= 12) else {
            let user = format!("u{}", self.rng.below(users));
            let open = self
                .conns
                .iter()
                .filter(|c| c.open && *c.user == *user)
                .count();
            if open < self.shape.devices_per_user {
                let reactor = self.rng.below(self.shape.reactors);
                self.connect(&user, reactor);
            }
            return;
        };
        match roll {
            12..=45 => self.send_message(conn),
            46..=47 => self.history(conn),
            48..=49 => self.edit(conn),
            50..=56 => self.retry(conn),
            57..=61 => {
                let receiver = format!("u{}", self.rng.below(users));
                let typing =
                    serde_json::json!({"type": "typing", "receiverId": receiver, "isTyping": true});
                self.client_says(conn, typing);
            }
            62..=66 => self.read_receipt(conn),
            67..=73 => self.presence(conn),
            74..=79 => self.group_join(conn),
            80..=85 => self.group_post(conn),
            86..=89 => self.huddle(conn),
            _ => {
                self.note(format!("conn {conn} drops"));
                self.close(conn);
            }
        }
    }

    fn send_message(&mut self, conn: usize) {
        let receiver = format!("u{}", self.rng.below(self.shape.users));
        self.next_message += 1;
        let id = format!("m{}", self.next_message);
        self.conns[conn].sent.push((id.clone(), receiver.clone()));
        self.send_attempt(conn, &id, &receiver);
    }

    /// The same message id again, as a client does when it saw no ack (here: at random,
    /// from any connection of the same user since the last crash). Not across a crash:
    /// the dedup window is memory, and the engine does not ask the store before it
    /// delivers online, so a retry after a restart can reach a device twice (README,
    /// "Dedup"; per-user inboxes with sequence numbers, issue 19, are what close it).
    fn retry(&mut self, conn: usize) {
        let user = self.conns[conn].user.clone();
        let epoch = self.oracle.epoch;
        let earlier: Vec<(String, String)> = self
            .conns
            .iter()
            .zip(&self.oracle.conns)
            .filter(|(c, view)| c.user == user && view.epoch == epoch)
            .flat_map(|(c, _)| c.sent.iter().cloned())
            .collect();
        if let Some((id, receiver)) = self.rng.pick(&earlier).cloned() {
            self.send_attempt(conn, &id, &receiver);
        }
    }

    fn send_attempt(&mut self, conn: usize, id: &str, receiver: &str) {
        self.conns[conn].sends += 1;
        let content = format!("{conn}:{}", self.conns[conn].sends);
        self.oracle.sending(conn, id, receiver);
        let message = serde_json::json!({
            "type": "send_message", "messageId": id, "receiverId": receiver, "content": content,
        });
        self.client_says(conn, message);
    }

    fn read_receipt(&mut self, conn: usize) {
        let Some((sender, id)) = self.rng.pick(&self.conns[conn].got).cloned() else {
            return;
        };
        let receipt = if self.rng.chance(50) {
            serde_json::json!({"type": "read_receipt", "messageId": id, "senderId": sender})
        } else {
            serde_json::json!({"type": "read_receipt", "messageId": id})
        };
        self.client_says(conn, receipt);
    }

    fn presence(&mut self, conn: usize) {
        let users: Vec<String> = (0..1 + self.rng.below(3))
            .map(|_| format!("u{}", self.rng.below(self.shape.users)))
            .collect();
        let subscribe = self.rng.chance(70);
        for user in &users {
            self.oracle.watch(conn, user, subscribe);
        }
        let kind = if subscribe {
            "presence_subscribe"
        } else {
            "presence_unsubscribe"
        };
        self.client_says(conn, serde_json::json!({"type": kind, "userIds": users}));
    }

    fn group_join(&mut self, conn: usize) {
        let group = format!("g{}", self.rng.below(self.shape.groups));
        let join = self.rng.chance(75);
        if join {
            let user = self.conns[conn].user.clone();
            self.oracle.joining(&user, &group);
        }
        let kind = if join { "group_join" } else { "group_leave" };
        self.client_says(conn, serde_json::json!({"type": kind, "groupId": group}));
    }

    /// A page of history with a random peer.
    fn history(&mut self, conn: usize) {
        let peer = format!("u{}", self.rng.below(self.shape.users));
        self.client_says(conn, serde_json::json!({"type": "history", "peerId": peer}));
    }

    /// An edit of a message this connection sent (or of one it did not, now and then).
    fn edit(&mut self, conn: usize) {
        let Some((id, receiver)) = self.rng.pick(&self.conns[conn].sent).cloned() else {
            return;
        };
        let edit = serde_json::json!({
            "type": "message_edit", "messageId": id, "receiverId": receiver, "content": "edited",
        });
        self.client_says(conn, edit);
    }

    /// A `huddle:*` signal to a group's room: enter it, leave it, or signal the others.
    fn huddle(&mut self, conn: usize) {
        let group = format!("g{}", self.rng.below(self.shape.groups));
        let room = format!("{group}-room{}", self.rng.below(2));
        let kind = match self.rng.below(10) {
            0..=4 => "huddle:join",
            5..=6 => "huddle:leave",
            _ => "huddle:mute",
        };
        if kind == "huddle:join" {
            self.oracle.entering(conn, &room);
        }
        let signal = serde_json::json!({
            "type": "signal", "receiverId": group, "callId": room, "kind": kind,
        });
        self.client_says(conn, signal);
    }

    fn group_post(&mut self, conn: usize) {
        let group = format!("g{}", self.rng.below(self.shape.groups));
        self.next_message += 1;
        self.conns[conn].sends += 1;
        let content = format!("{conn}:{}", self.conns[conn].sends);
        let id = format!("p{}", self.next_message);
        self.oracle.conns[conn].sent.insert(id.clone());
        let post = serde_json::json!({
            "type": "group_message", "messageId": id, "groupId": group, "content": content,
        });
        self.client_says(conn, post);
    }
}

/// An envelope in a few words, for the trace.
fn brief(envelope: &Envelope) -> String {
    let text = format!("{envelope:?}");
    let end = text.char_indices().nth(90).map_or(text.len(), |(i, _)| i);
    text[..end].to_owned()
}
