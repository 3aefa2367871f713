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
//!   device made live by its home reads its inbox, holding what comes live meanwhile; a
//!   page is taken whole (the kernel has it), acknowledged for a device that does not
//!   acknowledge, and followed by the next page, or by the held frames (but what the
//!   read already gave), as the driver does;
//! - devices: each user has a few, each a v1 device (no `resume`, no acks) or a v2 one
//!   (reconnects with `resume` from the last `seq` it processed, and acks now and then);
//! - time: a simulated clock that each step moves on a little;
//! - crashes: the whole process dies (connections, shards, rings, store inbox) and
//!   restarts with what the store committed;
//! - the operator: calls to the operator's API from HTTP connections at random moments,
//!   and the events webhook's hooks, judged by [`Operator`];
//! - a cluster (one seed in three): the shards of one to three nodes, each node's store
//!   the real relayer on a simulated nats-server ([`Backend`]); a reactor's place is
//!   `node * reactors + reactor`, and a crash kills one node.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::Arc,
};

use bytes::Bytes;
use engine::{
    cluster::relay::Inbound,
    http::admin::AdminRequest,
    protocol::{
        inbound::JsonParser,
        outbound::{self, OutJson},
        Priority,
    },
    router::{AckStatus, ConnAddr, Envelope},
    shard::{
        groups_state::{Groups, UserGroups},
        Clock, Effect, Effects, Event, Shard,
    },
    store::{Command, Greeting, InboxEvent, Outcome, ReadFrom, Reply},
};
use serde_json::Value;

use super::{
    backend::{Backend, Handed},
    operator::{device_ids, Operator},
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
    /// `--presence-visibility shared`: presence only between users who share a group.
    pub presence_shared: bool,
    /// A cluster whose users' inboxes are split over this many streams; `None`: one
    /// node alone.
    pub cluster: Option<u16>,
    /// The cluster's nodes (1 alone), each of `reactors` reactors.
    pub nodes: usize,
}

/// One device of a user, as its client keeps it across connections (and server crashes).
#[derive(Debug, Clone)]
struct Device {
    user: String,
    /// It sends `resume` and acks (v2); else it does neither (v1).
    v2: bool,
    /// The epoch its last `auth_success` gave.
    epoch: String,
    /// The highest `seq` it processed.
    seq: u64,
    /// Its open connection.
    conn: Option<usize>,
}

/// One connection's state in the world.
#[derive(Debug)]
struct Conn {
    /// The node it is connected to.
    node: usize,
    /// Its address on that node.
    addr: ConnAddr,
    user: Arc<str>,
    /// The device (index in [`World::devices`]).
    device: usize,
    open: bool,
    online: bool,
    /// Reading its inbox: frames for it wait in `held`.
    catching_up: bool,
    held: Vec<engine::protocol::outbound::Outgoing>,
    /// Where it left off, from `auth {resume}`.
    resume: Option<(String, u64)>,
    /// The highest inbox `seq` written to it (a live event at or below it came while
    /// the device read its inbox, which gave it already).
    inbox_seq: u64,
    /// Send numbers, for the per-sender order check.
    sends: u64,
    /// Message ids this connection sent, for retries and receipts.
    sent: Vec<(String, String)>,
    /// `(sender, messageId)` it got, for read receipts.
    got: Vec<(String, String)>,
    /// The highest `seq` it acknowledged.
    acked: u64,
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
    /// What the store (or the cluster thread) handed each reactor, on its way there in
    /// one channel each.
    inbound: Vec<VecDeque<Inbound>>,
    store: Backend,
    devices: Vec<Device>,
    conns: Vec<Conn>,
    /// The first connection of the final round (everyone reconnects).
    final_conns: usize,
    /// Acks of what v1 devices were written this step, with their node.
    v1_acks: Vec<(usize, Command)>,
    parser: JsonParser,
    json: OutJson,
    next_message: u64,
    /// The oracle: what clients saw, and the invariants.
    pub oracle: Oracle,
    /// Times a cluster node was cut off from NATS.
    pub cuts: usize,
    /// The operator's calls and the hooks, and their invariants.
    pub operator: Operator,
    /// Answers to the calls the at-rest check asks, kept for it.
    rest_answers: Option<Vec<(AdminRequest, Value)>>,
    /// Set by the first broken invariant.
    failure: Option<String>,
    /// The last steps, for the failure report.
    trace: VecDeque<String>,
    /// `SIM_TRACE=1`: print every step as it happens (with `SIM_SEED`, to study one).
    print_trace: bool,
}

/// The presence grace in the simulated world: long against a step (0–30 ms), so that
/// reconnects within it are common.
const GRACE_MS: u64 = 400;
/// How long a cluster's world waits, once quiet, for its relayers' waits to end: past
/// the longest (5 s), and past membership counting a killed node dead (10 s), in steps as
/// the relayers' 250 ms tick would end them.
const CLUSTER_WAITS_MS: u64 = 11_000;
/// See [`CLUSTER_WAITS_MS`].
const CLUSTER_WAIT_STEP_MS: u64 = 250;
/// Each home's dedup window, as the engine's default `--dedup-window-pairs`.
const DEDUP_PAIRS: usize = 16_384;
/// Messages one sender may queue for an offline user: small, so refusals happen.
const SENDER_QUOTA: u32 = 4;

/// Times a user the server disconnected in the final round connects again, at most.
const FINAL_RECONNECTS: usize = 5;

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
            inbound: Vec::new(),
            store: match shape.cluster {
                Some(shards) => {
                    let nodes = (shape.nodes, shape.reactors);
                    Backend::cluster(nodes, shards, (6, SENDER_QUOTA))
                }
                None => Backend::Alone(Box::new(SimStore::new(6, 4))),
            },
            devices: Vec::new(),
            conns: Vec::new(),
            final_conns: usize::MAX,
            v1_acks: Vec::new(),
            parser: JsonParser::default(),
            json: OutJson::default(),
            next_message: 0,
            oracle: Oracle::default(),
            cuts: 0,
            operator: Operator::default(),
            rest_answers: None,
            failure: None,
            trace: VecDeque::new(),
            print_trace: std::env::var_os("SIM_TRACE").is_some(),
        };
        let places = world.places();
        world.shards = Vec::with_capacity(places);
        world.rings = (0..places)
            .map(|_| (0..places).map(|_| VecDeque::new()).collect())
            .collect();
        world.inbound = (0..places).map(|_| VecDeque::new()).collect();
        for node in 0..shape.nodes {
            world.boot(node);
        }
        if shape.nodes > 1 {
            world.operator.several_nodes(shape.nodes);
        }
        if world.store.is_cluster() {
            world.operator.in_a_cluster();
        }
        world
    }

    /// Every reactor of every node: a reactor's place is `node * reactors + reactor`.
    fn places(&self) -> usize {
        self.shape.nodes * self.shape.reactors
    }

    /// The node of place `place`.
    fn node_of(&self, place: usize) -> usize {
        place / self.shape.reactors
    }

    /// The place of reactor `reactor` of the node of place `place`.
    fn beside(&self, place: usize, reactor: usize) -> usize {
        self.node_of(place) * self.shape.reactors + reactor
    }

    /// The place of connection `conn`'s reactor.
    fn place_of(&self, conn: usize) -> usize {
        let conn = &self.conns[conn];
        conn.node * self.shape.reactors + conn.addr.reactor as usize
    }

    /// (Re)starts node `node`'s process: shards with the groups the store holds, empty
    /// rings between them.
    fn boot(&mut self, node: usize) {
        let n = self.shape.reactors;
        let quota = Arc::new(UserGroups::new(1000, self.shape.presence_shared));
        let mut groups: Vec<Groups> = (0..n).map(|_| Groups::default()).collect();
        let (memberships, settings) = self.store.groups();
        for (group, user) in memberships {
            quota.count_anyway(&user, &group);
            groups[engine::router::home_of(&group, n)].join(&group, user.into());
        }
        for (group, settings) in settings {
            groups[engine::router::home_of(&group, n)].set_settings(&group, settings);
        }
        let cluster = self.store.is_cluster();
        let shards: Vec<Shard> = groups
            .into_iter()
            .enumerate()
            .map(|(id, groups)| {
                let shard = Shard::new((id, n), groups, quota.clone(), GRACE_MS, DEDUP_PAIRS)
                    .with_queue_max_per_sender(SENDER_QUOTA)
                    .with_hooks();
                if cluster {
                    shard.relaying()
                } else {
                    shard
                }
            })
            .collect();
        let base = node * n;
        for (id, shard) in shards.into_iter().enumerate() {
            match self.shards.get_mut(base + id) {
                Some(old) => *old = shard,
                None => self.shards.push(shard),
            }
        }
        // As the engine starts: each home's dedup window begins with the direct messages
        // its users' inboxes received lately.
        let since = self
            .now_ms
            .saturating_sub(engine::shard::dedup::WINDOW_AGE_MS);
        let recent = self.store.recent(since);
        for (home, shard) in self.shards[base..base + n].iter_mut().enumerate() {
            let mine: Vec<_> = recent
                .iter()
                .filter(|pair| engine::router::home_of(&pair.user, n) == home)
                .cloned()
                .collect();
            shard.remember_recent(&mine);
        }
        let (start, held) = self.store.start_and_held();
        self.oracle.started(start, held);
        for place in base..base + n {
            for ring in &mut self.rings[place] {
                ring.clear();
            }
            self.inbound[place].clear();
        }
        self.effects = Effects::default();
        self.carrying_out = false;
        self.store.start(node, self.now_ms);
        self.take_inbound();
    }

    /// Runs the seed: random steps, then quiet, judge, reconnect everyone, judge again.
    pub fn run(&mut self) -> Result<(), String> {
        for step in 0..self.shape.steps {
            self.oracle.step = step as u64;
            let by = self.rng.below(30) as u64;
            self.clock(by);
            self.step();
            self.fail_fast()?;
        }
        for node in self.store.cut_off() {
            self.cut_or_reconnect(node);
        }
        self.quiet();
        self.fail_fast()?;
        self.oracle.check_quiet().map_err(|e| self.report(e))?;
        self.check_operator_at_rest()?;
        self.final_conns = self.conns.len();
        let everyone: Vec<String> = (0..self.shape.users).map(|u| format!("u{u}")).collect();
        self.reconnect(&everyone);
        // A client whose connection the server closed in the final round (4002: it
        // fell behind on acks while catching up) connects again, as a client does.
        for _ in 0..FINAL_RECONNECTS {
            let offline: Vec<String> = everyone
                .iter()
                .filter(|user| !self.conns.iter().any(|c| c.open && *c.user == ***user))
                .cloned()
                .collect();
            if offline.is_empty() {
                break;
            }
            self.reconnect(&offline);
        }
        self.oracle
            .check_nothing_lost()
            .map_err(|e| self.report(e))?;
        self.check_operator_at_rest()?;
        self.check_resumed_devices_caught_up()
            .map_err(|e| self.report(e))
    }

    /// Each of `users` connects on a random reactor, and the world goes quiet.
    fn reconnect(&mut self, users: &[String]) {
        for user in users {
            let place = self.rng.below(self.places());
            self.connect(user, place);
        }
        self.quiet();
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
        if self.rng.chance(10) {
            self.tick();
        }
        self.one_step();
        for (node, ack) in std::mem::take(&mut self.v1_acks) {
            self.store_command(node, ack);
        }
    }

    fn one_step(&mut self) {
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
        if roll == 98 && self.store.is_cluster() && self.rng.chance(25) {
            let node = self.rng.below(self.shape.nodes);
            return self.cut_or_reconnect(node);
        }
        self.client_action();
    }

    /// Runs deliveries, commits and answers until nothing moves; then lets every
    /// presence grace end, and runs again.
    fn quiet(&mut self) {
        self.settle();
        self.clock(GRACE_MS + 1);
        self.tick();
        self.settle();
        if self.store.is_cluster() {
            // A cluster node's relayer waits on its own clock too: for the other nodes'
            // answers (500 ms), calls (5 s) and requests to JetStream (5 s), and for
            // membership to say a killed node is gone (10 s).
            for _ in 0..CLUSTER_WAITS_MS / CLUSTER_WAIT_STEP_MS {
                self.clock(CLUSTER_WAIT_STEP_MS);
                self.settle();
            }
        }
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            for (node, ack) in std::mem::take(&mut self.v1_acks) {
                self.store_command(node, ack);
            }
            let moved = self.deliver_one_envelope()
                || self.deliver_one_reply()
                || {
                    let work = self.store.has_work();
                    if work {
                        self.commit();
                    }
                    work
                }
                || self.ack_what_was_processed();
            if !moved {
                return;
            }
        }
        self.failure = Some("the world never went quiet".into());
    }

    fn deliver_one_envelope(&mut self) -> bool {
        let n = self.places();
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
        let n = self.places();
        let start = self.rng.below(n);
        for i in 0..n {
            let reactor = (start + i) % n;
            match self.inbound[reactor].pop_front() {
                Some(Inbound::Store(reply)) => {
                    self.note(format!("store answer to {reactor}"));
                    self.take_reply(reactor, reply);
                }
                Some(Inbound::Mail(envelope)) => {
                    self.note(format!("cluster mail to {reactor} {}", brief(&envelope)));
                    self.take_mail(reactor, envelope);
                }
                Some(Inbound::CallNotTaken {
                    caller,
                    reference,
                    code,
                }) => {
                    self.note(format!("call {reference} not taken: {code:?}"));
                    let effect = Effect::Error {
                        to: caller,
                        code,
                        text: "the call was not taken".into(),
                        reference: Some(reference),
                    };
                    self.carry_out(reactor, effect);
                }
                Some(Inbound::Admin { said, reply }) => {
                    self.note(format!("another node's operator call to {reactor}"));
                    match AdminRequest::from_node(&said) {
                        Ok(call) => self.feed(reactor, Event::AdminFromNode { call, reply }),
                        Err(why) => self.failure = Some(format!("a node's call: {why}")),
                    }
                }
                Some(other) => {
                    self.failure = Some(format!("the cluster handed {reactor} {other:?}"));
                }
                None => continue,
            }
            return true;
        }
        false
    }

    /// A store step: a commit, or the server reading or delivering.
    fn commit(&mut self) {
        self.note("store step".into());
        match self.store.step(self.now_ms, &mut self.rng) {
            Ok(got) => self.queue_inbound(got),
            Err(e) => self.failure = Some(e),
        }
    }

    /// Hands node `node`'s store `command` (a cluster node's relayer may answer at
    /// once).
    fn store_command(&mut self, node: usize, command: Command) {
        self.store.send(node, command);
        self.take_inbound();
    }

    /// What the cluster thread handed the reactors since last asked, queued for them.
    fn take_inbound(&mut self) {
        let got = self.store.take_inbound();
        self.queue_inbound(got);
        for (node, hook, at_ms) in self.store.take_hooks() {
            self.hook(node, hook, at_ms);
        }
    }

    fn queue_inbound(&mut self, got: Handed) {
        for (node, reactor, inbound) in got {
            let place = node * self.shape.reactors + reactor;
            self.inbound[place].push_back(inbound);
        }
    }

    /// An event node `node` posts to the events webhook, dated `at_ms`, judged.
    fn hook(&mut self, node: usize, hook: engine::events::Hook, at_ms: u64) {
        self.note(format!("hook {hook:?}"));
        if let Err(e) = self.operator.hook(hook, node, at_ms) {
            self.failure.get_or_insert(e);
        }
    }

    /// The world's clock moves `by_ms`, the cluster's with it.
    fn clock(&mut self, by_ms: u64) {
        self.now_ms += by_ms;
        self.store.clock_moved(by_ms, self.now_ms);
        self.take_inbound();
    }

    /// Cluster node `node` is cut off from NATS, or comes back.
    fn cut_or_reconnect(&mut self, node: usize) {
        let connected = self.store.cut_or_reconnect(node);
        self.cuts += usize::from(!connected);
        if connected {
            self.operator.reconnected();
        }
        let what = if connected {
            "reconnects to"
        } else {
            "is cut off from"
        };
        self.note(format!("node {node} {what} NATS"));
        self.take_inbound();
    }

    /// A node's process dies, with its connections, and starts again. The one node's
    /// world starts a new epoch: what was promised before is judged as such. A node of
    /// several leaves the others running, their connections and promises too.
    fn crash(&mut self) {
        let node = self.rng.below(self.shape.nodes);
        self.note(format!("CRASH of node {node}"));
        self.store.crash(node, self.now_ms);
        self.v1_acks.retain(|(n, _)| *n != node);
        for index in 0..self.conns.len() {
            if self.conns[index].node != node || !self.conns[index].open {
                continue;
            }
            self.conns[index].open = false;
            let device = self.conns[index].device;
            self.devices[device].conn = None;
            self.oracle.conns[index].closed = true;
        }
        if self.shape.nodes == 1 {
            self.oracle.epoch += 1;
            self.operator.crashed();
        } else {
            self.operator.crashed_node(node);
        }
        self.boot(node);
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
        let node = self.node_of(reactor);
        match effect {
            Effect::Mail { to, envelope } => {
                self.route(reactor, self.beside(reactor, to), envelope)
            }
            Effect::Store(command) => self.store_command(node, command),
            Effect::Cluster(relay) => {
                self.note(format!("relay {}", brief(&relay)));
                self.store.relay(node, *relay);
                self.take_inbound();
            }
            Effect::Hook(hook) => self.hook(node, *hook, self.now_ms),
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
                self.route(reactor, self.beside(reactor, to.reactor as usize), envelope);
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
                    if self.conns[conn].catching_up {
                        self.conns[conn].held.push(frame);
                        return;
                    }
                    self.deliver_frame(conn, frame);
                }
            }
            Envelope::Registered { addr } => {
                if let Some(conn) = self.live(addr) {
                    let user = self.conns[conn].user.as_ref().into();
                    let from = match self.conns[conn].resume.clone() {
                        Some((epoch, seq)) => ReadFrom::Resume {
                            epoch: epoch.into(),
                            seq,
                        },
                        None => ReadFrom::Unacked {
                            upto: 0,
                            cursor: None,
                        },
                    };
                    let node = self.node_of(reactor);
                    self.store_command(
                        node,
                        Command::ReadInbox {
                            user,
                            device: addr.into(),
                            from,
                        },
                    );
                }
            }
            Envelope::Ack {
                sender,
                message_id,
                status,
            } => {
                let acked = match status {
                    AckStatus::Sent => Acked::Sent,
                    AckStatus::Offline | AckStatus::OverSenderQuota => Acked::Refused,
                };
                self.ack(sender, &message_id, acked);
            }
            Envelope::Close { addr, code, .. } => {
                if let Some(conn) = self.live(addr) {
                    self.note(format!("server closes conn {conn} with {code}"));
                    if code == engine::ws::close::SLOW_CONSUMER {
                        self.oracle.overdue_closes += 1;
                    }
                    self.close_with(conn, false, code);
                }
            }
            Envelope::AdminAnswer { to, body, .. } if Operator::is_operator(to.slot) => {
                self.note(format!(
                    "operator answered: {}",
                    String::from_utf8_lossy(&body)
                ));
                let devices = &self.devices;
                let devices_of = |user: &str| {
                    (0..devices.len())
                        .filter(|&d| devices[d].user == user)
                        .map(|d| format!("d{d}"))
                        .collect()
                };
                let judged = self.operator.take(to.slot).and_then(|call| {
                    let answer = self.operator.judge(&call, &body, devices_of)?;
                    Ok((call, answer))
                });
                match judged {
                    Ok(answer) => {
                        if let Some(kept) = &mut self.rest_answers {
                            kept.push(answer);
                        }
                    }
                    Err(e) => {
                        self.failure.get_or_insert(e);
                    }
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
            Reply::Appended {
                sender,
                message_id,
                outcome,
            } => {
                let acked = match outcome {
                    Outcome::Kept { delivered: true } => Acked::Sent,
                    Outcome::Kept { delivered: false } => Acked::Queued,
                    Outcome::QueueFull
                    | Outcome::SenderQuota
                    | Outcome::NotHeld
                    | Outcome::Failed(_) => Acked::Refused,
                };
                self.ack(sender.into(), &message_id, acked);
            }
            Reply::InboxPage {
                device,
                user,
                greeting,
                events,
                next,
                covered,
                error,
            } => {
                let Some(conn) = self.live(device.into()) else {
                    return; // closed: nothing was acknowledged, all stays kept
                };
                if let Some(e) = error {
                    if !self.store.is_cluster() {
                        self.failure = Some(format!("the simulated store failed a read: {e}"));
                        return;
                    }
                    // NATS out of reach: the driver closes the connection.
                    self.note(format!("conn {conn}'s inbox could not be read: {e}"));
                    return self.close_with(conn, false, engine::ws::close::INTERNAL_ERROR);
                }
                if let Some(greeting) = greeting {
                    self.greet(conn, &greeting);
                }
                for event in &events {
                    self.receive_event(conn, event, true);
                }
                let highest = events.iter().map(|e| e.seq).max().unwrap_or(0);
                self.conns[conn].inbox_seq = self.conns[conn].inbox_seq.max(highest);
                // The kernel took it all: a v1 device has it; next page, or live.
                let v2 = self.devices[self.conns[conn].device].v2;
                let node = self.conns[conn].node;
                if !v2 && !events.is_empty() {
                    let ack = Command::Ack {
                        user: user.clone(),
                        upto: covered,
                        device: None,
                        home: engine::router::home_of(&user, self.shape.reactors),
                    };
                    self.store_command(node, ack);
                }
                match next {
                    Some(from) => {
                        let read = Command::ReadInbox { user, device, from };
                        self.store_command(node, read);
                    }
                    None => {
                        // Caught up: what came meanwhile, but what the read gave.
                        self.note(format!("conn {conn} caught up to {covered}"));
                        self.conns[conn].catching_up = false;
                        for frame in std::mem::take(&mut self.conns[conn].held) {
                            self.deliver_frame(conn, frame);
                        }
                    }
                }
            }
            Reply::AckRefused { seq, last, .. } => {
                self.failure = Some(format!("ack {seq} refused (last {last})"));
            }
            other => self.failure = Some(format!("unexpected store answer {other:?}")),
        }
    }

    /// After the final round: a device that resumed (`resumed:true`) got every event its
    /// user's inbox holds after the `seq` it resumed from, once.
    fn check_resumed_devices_caught_up(&self) -> Result<(), String> {
        for conn in self.final_conns..self.conns.len() {
            let Some((from, seqs)) = self.oracle.resumed_view(conn) else {
                continue;
            };
            if !self.conns[conn].open {
                continue;
            }
            let user = &self.conns[conn].user;
            for seq in self.store.kept_after(user, from) {
                if !seqs.contains(&seq) {
                    return Err(format!(
                        "conn {conn} of {user} resumed from {from} and never got {seq} \
                         (it got {seqs:?})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// `auth_success`, as the driver writes it from the first inbox page.
    fn greet(&mut self, conn: usize, greeting: &Greeting) {
        if let (Some(true), Some((_, from))) = (greeting.resumed, &self.conns[conn].resume) {
            // As the driver: the device has every event up to where it resumed.
            let from = *from;
            let seen = &mut self.conns[conn].inbox_seq;
            *seen = (*seen).max(from);
        }
        let device = &mut self.devices[self.conns[conn].device];
        if device.v2 {
            device.epoch = greeting.epoch.to_string();
            if greeting.resumed == Some(false) {
                // It re-syncs: what comes is what no device acknowledged, from anywhere.
                self.oracle.resync(conn);
            }
        }
        self.oracle.greeted(conn, greeting.resumed);
        let frame = serde_json::json!({
            "type": "auth_success", "seq": greeting.seq, "resumed": greeting.resumed,
        });
        self.receive(conn, &Bytes::from(frame.to_string()), false);
    }

    /// A frame written to a connection: an inbox event (with its `seq`) or another.
    fn deliver_frame(&mut self, conn: usize, frame: engine::protocol::outbound::Outgoing) {
        let payload = frame.json();
        match frame.seq() {
            Some(seq) if seq <= self.conns[conn].inbox_seq => {
                self.note(format!("conn {conn} had {seq} already"));
            }
            Some(seq) => self.deliver_event(conn, frame, seq),
            None => self.receive(conn, &payload, false),
        }
    }

    /// An inbox event new to the connection, written to it.
    fn deliver_event(
        &mut self,
        conn: usize,
        frame: engine::protocol::outbound::Outgoing,
        seq: u64,
    ) {
        let seen = &mut self.conns[conn].inbox_seq;
        *seen = (*seen).max(seq);
        if !self.devices[self.conns[conn].device].v2 {
            // A device that does not acknowledge is taken to have it (v1): acked at the
            // end of the step, as the driver does at the end of a batch.
            let (node, user) = (self.conns[conn].node, &self.conns[conn].user);
            let ack = Command::Ack {
                user: user.as_ref().into(),
                upto: seq,
                device: None,
                home: engine::router::home_of(user, self.shape.reactors),
            };
            self.v1_acks.push((node, ack));
        }
        let event = InboxEvent {
            seq,
            kind: frame.kind,
            priority: Priority::Normal,
            json: frame.json(),
        };
        self.receive_event(conn, &event, false);
    }

    /// An inbox event with its `seq`, as a client gets it.
    fn receive_event(&mut self, conn: usize, event: &InboxEvent, via_inbox: bool) {
        self.note(format!("conn {conn} event {}", event.seq));
        let device = &mut self.devices[self.conns[conn].device];
        device.seq = device.seq.max(event.seq);
        if let Err(e) = self.oracle.numbered(conn, event.seq) {
            self.failure.get_or_insert(e);
        }
        if event.kind == engine::protocol::codes::OutKind::NewMessage {
            let frame: Value = serde_json::from_slice(&event.json).unwrap_or_default();
            let direct = frame.get("groupId").is_none();
            if direct {
                if let Err(e) = self.oracle.direct_copy(conn, event.seq, &frame) {
                    self.failure.get_or_insert(e);
                }
            }
        }
        self.receive(conn, &event.json, via_inbox);
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
        self.note(format!("conn {conn} hears {message_id} {acked:?}"));
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

    /// The connection closes: with a close frame (`clean`, a logout) or dropped.
    fn close(&mut self, conn: usize, clean: bool) {
        self.close_with(conn, clean, if clean { 1000 } else { 1006 });
    }

    /// The connection closes with `code` (the server's, when it began the close).
    fn close_with(&mut self, conn: usize, clean: bool, code: u16) {
        self.conns[conn].open = false;
        let device = self.conns[conn].device;
        self.devices[device].conn = None;
        self.oracle.conns[conn].closed = true;
        let (addr, user) = (self.conns[conn].addr, self.conns[conn].user.clone());
        let node = self.conns[conn].node;
        self.operator
            .closing(&user, &format!("d{device}"), code, node);
        let closed = Event::Closed {
            conn: addr,
            user,
            clean,
            code,
        };
        let place = self.place_of(conn);
        self.feed(place, closed);
    }

    /// The driver's timer tick, on every reactor.
    fn tick(&mut self) {
        for place in 0..self.places() {
            self.feed(place, Event::Tick);
        }
    }

    // ---- the clients' part -------------------------------------------------------

    /// A device of `user` with no connection open, made when the user has fewer than
    /// its devices per user.
    fn idle_device(&mut self, user: &str) -> Option<usize> {
        let free = (0..self.devices.len())
            .find(|&d| self.devices[d].user == user && self.devices[d].conn.is_none());
        if free.is_some() {
            return free;
        }
        let owned = self.devices.iter().filter(|d| d.user == user).count();
        if owned >= self.shape.devices_per_user {
            return None;
        }
        let v2 = self.rng.chance(50);
        self.devices.push(Device {
            user: user.into(),
            v2,
            epoch: String::new(),
            seq: 0,
            conn: None,
        });
        Some(self.devices.len() - 1)
    }

    /// A device of `user` connects at place `place` (a reactor of a node).
    fn connect(&mut self, user: &str, place: usize) {
        let (node, reactor) = (self.node_of(place), place % self.shape.reactors);
        let Some(device) = self.idle_device(user) else {
            return;
        };
        let index = self.conns.len();
        let addr = ConnAddr {
            reactor: reactor as u16,
            generation: 1,
            slot: index as u32,
        };
        let user: Arc<str> = user.into();
        let (v2, epoch, seq) = {
            let d = &self.devices[device];
            (d.v2, d.epoch.clone(), d.seq)
        };
        self.note(format!(
            "conn {index}: {user} device {device} (v2 {v2}, from {seq}) connects on node {node} reactor {reactor}"
        ));
        self.devices[device].conn = Some(index);
        self.conns.push(Conn {
            node,
            addr,
            user: user.clone(),
            device,
            catching_up: true,
            held: Vec::new(),
            resume: v2.then(|| (epoch.clone(), seq)),
            inbox_seq: 0,
            open: true,
            online: false,
            sends: 0,
            sent: Vec::new(),
            got: Vec::new(),
            acked: 0,
        });
        self.oracle.connected(index, &user, device, (v2, seq));
        let device_id = format!("d{device}");
        self.feed(
            place,
            Event::Authenticated {
                conn: addr,
                user,
                device: &device_id,
                acks: v2,
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
        let place = self.place_of(conn);
        match parsed {
            Ok(message) => self.feed(
                place,
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
            let place = self.rng.below(self.places());
            self.connect(&user, place);
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
            62..=63 => self.read_receipt(conn),
            64..=66 => self.send_ack(conn),
            67..=73 => self.presence(conn),
            74..=79 => self.group_join(conn),
            80..=85 => self.group_post(conn),
            86..=87 => self.huddle(conn),
            88..=89 => self.operator_call(),
            _ => {
                let clean = self.rng.chance(50);
                let how = if clean { "logs out" } else { "drops" };
                self.note(format!("conn {conn} {how}"));
                self.close(conn, clean);
            }
        }
    }

    /// An operator's call at a random moment: a user's devices, presence of a few users,
    /// or a disconnect of a user or one device.
    fn operator_call(&mut self) {
        let users = self.shape.users;
        let user = format!("u{}", self.rng.below(users));
        let call = match self.rng.below(3) {
            0 => AdminRequest::Devices { user },
            1 => {
                let mut asked: Vec<String> = Vec::new();
                for _ in 0..=self.rng.below(users) {
                    let user = format!("u{}", self.rng.below(users));
                    if !asked.contains(&user) {
                        asked.push(user);
                    }
                }
                AdminRequest::Presence { users: asked }
            }
            _ => {
                let owned: Vec<usize> = (0..self.devices.len())
                    .filter(|&d| self.devices[d].user == user)
                    .collect();
                let one = self
                    .rng
                    .pick(&owned)
                    .copied()
                    .filter(|_| self.rng.chance(50));
                let code = *self.rng.pick(&[1000, 1008, 4100]).unwrap_or(&1008);
                AdminRequest::Disconnect {
                    user,
                    device: one.map(|d| format!("d{d}")),
                    code,
                }
            }
        };
        let place = self.rng.below(self.places());
        self.ask_operator(place, call);
    }

    /// Asks `call` from an operator's HTTP connection at place `place`.
    fn ask_operator(&mut self, place: usize, call: AdminRequest) {
        self.note(format!("operator asks {call:?} at place {place}"));
        let slot = self.operator.ask(call.clone(), self.node_of(place));
        let conn = ConnAddr {
            reactor: (place % self.shape.reactors) as u16,
            generation: 1,
            slot,
        };
        self.feed(
            place,
            Event::Admin {
                conn,
                request: &call,
            },
        );
    }

    /// At rest (nothing in flight, every grace over): the hooks and the operator's API
    /// say exactly who is connected and online.
    fn check_operator_at_rest(&mut self) -> Result<(), String> {
        let users: Vec<String> = (0..self.shape.users).map(|u| format!("u{u}")).collect();
        let connected: BTreeSet<(String, String)> = self
            .conns
            .iter()
            .filter(|c| c.open)
            .map(|c| (c.user.to_string(), format!("d{}", c.device)))
            .collect();
        let online: BTreeSet<String> = connected.iter().map(|(u, _)| u.clone()).collect();
        self.operator
            .check_rest(users.len(), &online)
            .map_err(|e| self.report(e))?;
        self.rest_answers = Some(Vec::new());
        for user in &users {
            let place = self.rng.below(self.places());
            self.ask_operator(place, AdminRequest::Devices { user: user.clone() });
        }
        let place = self.rng.below(self.places());
        self.ask_operator(
            place,
            AdminRequest::Presence {
                users: users.clone(),
            },
        );
        self.settle();
        self.fail_fast()?;
        let answers = self.rest_answers.take().unwrap_or_default();
        if answers.len() != users.len() + 1 {
            return Err(self.report(format!(
                "{} of {} calls answered at rest",
                answers.len(),
                users.len() + 1
            )));
        }
        for (call, answer) in answers {
            let right = match &call {
                AdminRequest::Devices { user } => {
                    let mut listed = device_ids(&answer);
                    listed.sort();
                    let truth: Vec<String> = connected
                        .iter()
                        .filter(|(u, _)| u == user)
                        .map(|(_, d)| d.clone())
                        .collect();
                    listed == truth
                }
                _ => answer["users"].as_array().is_some_and(|entries| {
                    entries.iter().all(|e| {
                        let user = e["user_id"].as_str().unwrap_or_default();
                        e["online"].as_bool() == Some(online.contains(user))
                    })
                }),
            };
            if !right {
                let truth = format!("connected {connected:?}");
                return Err(self.report(format!("at rest {call:?} answered {answer}; {truth}")));
            }
        }
        Ok(())
    }

    fn send_message(&mut self, conn: usize) {
        let receiver = format!("u{}", self.rng.below(self.shape.users));
        self.next_message += 1;
        let id = format!("m{}", self.next_message);
        self.conns[conn].sent.push((id.clone(), receiver.clone()));
        self.send_attempt(conn, &id, &receiver);
    }

    /// The same message id again, as a client does when it saw no ack (here: at random,
    /// from any connection of the same user, before a crash or since). The oracle checks
    /// that no device gets it under a second `seq` but as the README's "Dedup" allows.
    fn retry(&mut self, conn: usize) {
        let user = self.conns[conn].user.clone();
        let earlier: Vec<(String, String)> = self
            .conns
            .iter()
            .filter(|c| c.user == user)
            .flat_map(|c| c.sent.iter().cloned())
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

    /// A v2 device acknowledges the highest `seq` it processed.
    fn send_ack(&mut self, conn: usize) {
        let device = &self.devices[self.conns[conn].device];
        if device.v2 && device.seq > 0 {
            let seq = device.seq;
            self.conns[conn].acked = seq;
            self.client_says(conn, serde_json::json!({"type": "ack", "seq": seq}));
        }
    }

    /// While the world settles, every v2 device online acknowledges what it processed,
    /// as a client does in time (in the random steps, acks come at random, so devices
    /// also fall behind); whether any did.
    fn ack_what_was_processed(&mut self) -> bool {
        let behind: Vec<usize> = (0..self.conns.len())
            .filter(|&c| {
                let conn = &self.conns[c];
                let device = &self.devices[conn.device];
                conn.open && conn.online && device.v2 && device.seq > conn.acked
            })
            .collect();
        for &conn in &behind {
            self.send_ack(conn);
        }
        !behind.is_empty()
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

    /// A change of a group's members or settings: a join or a leave, or (group access)
    /// a create, an add (now and then as an admin) or a remove.
    fn group_join(&mut self, conn: usize) {
        let group = format!("g{}", self.rng.below(self.shape.groups));
        let user = self.conns[conn].user.clone();
        let other = format!("u{}", self.rng.below(self.shape.users));
        let request = match self.rng.below(20) {
            0..=8 => {
                self.oracle.joining(&user, &group);
                serde_json::json!({"type": "group_join", "groupId": group})
            }
            9..=11 => serde_json::json!({"type": "group_leave", "groupId": group}),
            12..=14 => {
                self.oracle.joining(&user, &group);
                let access = if self.rng.chance(50) {
                    "invite"
                } else {
                    "open"
                };
                serde_json::json!({"type": "group_create", "groupId": group, "access": access})
            }
            15..=17 => {
                self.oracle.joining(&other, &group);
                let role = if self.rng.chance(25) {
                    "admin"
                } else {
                    "member"
                };
                serde_json::json!({"type": "group_add", "groupId": group, "userId": other,
                                   "role": role})
            }
            _ => serde_json::json!({"type": "group_remove", "groupId": group, "userId": other}),
        };
        self.client_says(conn, request);
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
        self.oracle.posting(conn, &id);
        let post = serde_json::json!({
            "type": "group_message", "messageId": id, "groupId": group, "content": content,
        });
        self.client_says(conn, post);
    }
}

/// An envelope (or a relay) in a few words, for the trace.
fn brief(what: &impl std::fmt::Debug) -> String {
    let text = format!("{what:?}");
    let end = text.char_indices().nth(90).map_or(text.len(), |(i, _)| i);
    text[..end].to_owned()
}
