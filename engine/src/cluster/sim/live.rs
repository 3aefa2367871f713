//! The live relay's simulator: several nodes' real [`Relayer`]s, each speaking the NATS
//! protocol to one simulated nats-server ([`super::nats`]), on a virtual clock, one seed
//! at a time. Nodes hold users (a device there, or the user in its grace) and let them go,
//! their connections watch users' presence, callers ring users and type to them, devices
//! enter and leave a huddle room, and operators broadcast to every user online, ask for
//! the cluster's stats and make calls about users; the
//! server reads each connection's operations and hands each its messages at random
//! moments, so that they interleave as on a real server. Faults come at random: a node is
//! cut off from NATS (what it had written and what was on its way to it lost) and comes
//! back; a node is killed, and the others hear it is gone 10 s later, when membership
//! counts it dead (everything it had sent before then delivered); a node leaves on
//! SIGTERM, and the others hear it at once, possibly before its last messages; a node
//! cut off for longer than 10 s is counted dead by the others too, and so, sometimes, is
//! one whose relay came back just before that (its membership had not beaten again yet).
//! Membership itself is not simulated, only what it tells the relay: an instance gone.
//!
//! The invariants, checked once everything settled:
//! - every watched user's home has heard, as its last word, whether another node that is
//!   alive holds the user, and it never heard the same word twice running;
//! - no user that no process holds was reported online last to the events webhook (a
//!   dead or departed node's users are reported offline by another, `cluster::holdings`),
//!   and a backend taking each user's latest event by `at_ms` has every user right: a
//!   holder that could not answer an offline's check has the user reported online again
//!   (`cluster::presence_events`);
//! - a call rang on every other node holding a device of the user, each once, and said
//!   nothing to the caller; with none, the caller heard `peer_offline` once;
//! - typing reached every other node holding a device of the user, each once;
//! - a huddle join reached every other node with a device in the room, once, and each of
//!   those devices introduced itself to the joiner once;
//! - a broadcast's requester heard, once, the sum of what the other nodes reached, a
//!   stats asker every node's figures and their sum, and an operator's call every other
//!   node's part;
//! - during the faults, nothing asked of every node was answered twice, no signal
//!   reached a node twice, and every call and request whose asker lived rang somewhere
//!   or was answered.
//!
//! `cargo test -p engine --lib cluster::sim::live` runs `LIVE_SIM_SEEDS` seeds (default
//! 2,000, about 8 s) from `LIVE_SIM_SEED_BASE`; `LIVE_SIM_SEED=N` replays one, and with
//! `CLUSTER_SIM_LOG` set a failure prints every step, not the last 40.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;

use super::{failure, run_seeds, NodeSetup, Rng, SimCluster};
use crate::{
    cluster::{
        relay::{Inbound, Relay},
        shards::Shards,
    },
    events::Hook,
    protocol::{
        codes::{ErrorCode, OutKind},
        outbound::Outgoing,
        Priority,
    },
    router::{ConnAddr, Envelope},
};

/// The group and room of the huddle the simulator's devices enter.
const GROUP: &str = "g";
/// See [`GROUP`].
const ROOM: &str = "r";
/// Reactors per node: a user's home is one of them.
const REACTORS: usize = 2;
/// Steps a seed runs before everything settles.
const STEPS: usize = 400;
/// Seeds the default run covers.
const SEEDS_DEFAULT: u64 = 2_000;
/// How long membership takes to count a silent node dead (`cluster::node`).
const DEAD_AFTER: Duration = Duration::from_secs(10);
/// How often a node beats in the node bucket (`cluster::node`).
const BEAT: Duration = Duration::from_secs(2);
/// The simulated wall clock at a seed's start (Unix ms).
const WALL_AT_START_MS: u64 = 1_800_000_000_000;

thread_local! {
    /// When the seed started, on the virtual clock.
    static STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The relayers' wall clock: the virtual clock's time since the seed started, and a
/// millisecond later than the last reading at least. Everything within one step happens
/// at one instant of the virtual clock; a real clock moves between two decisions, and
/// a backend ordering the events by `at_ms` should not see ties that real time would
/// not give.
fn wall_ms() -> u64 {
    let since = STARTED
        .with(Cell::get)
        .map_or(0, |at| at.elapsed().as_millis());
    let now = WALL_AT_START_MS + since as u64;
    LAST_WALL.with(|last| {
        let now = now.max(last.get() + 1);
        last.set(now);
        now
    })
}

thread_local! {
    /// The wall clock's last reading.
    static LAST_WALL: Cell<u64> = const { Cell::new(0) };
}

/// Whether a node holds a user with a device there, or only in the user's grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Devices,
    Grace,
}

/// One node: what its homes did and heard (its process is the [`SimCluster`]'s).
struct Node {
    /// Its process is cut off from NATS since.
    cut_at: Option<Instant>,
    /// Counted dead while it lives, its process beats in the node bucket again then: a
    /// process starting meanwhile hears of it only then.
    beats_at: Option<Instant>,
    holds: BTreeMap<String, Hold>,
    watches: BTreeSet<String>,
    /// Per watched user, the last word its home heard: whether another node holds it.
    heard: BTreeMap<String, bool>,
    /// Its devices in the huddle room.
    in_room: usize,
    /// What its process reports to the events webhook.
    events: Option<std::sync::mpsc::Receiver<(u64, Hook)>>,
}

/// A call signal placed, or a typing sent: where it went and what the caller heard.
#[derive(Default)]
struct Signal {
    /// The calling node, and the instance that placed it.
    from: (usize, String),
    /// Where it rang: the nodes whose home got it.
    rang: Vec<usize>,
    /// What the caller heard.
    said: Vec<ErrorCode>,
    /// Whether the caller waits for an outcome (a call no device on its node took).
    call: bool,
    /// For a huddle join: the nodes whose devices in the room introduced themselves.
    introduced: Vec<usize>,
}

/// Something asked of every node (an `all:true` broadcast, `/api/stats?scope=cluster`):
/// what its asker heard, each answer summed up in words.
struct Asked {
    /// The asking node, and its instance then.
    from: (usize, String),
    heard: Vec<String>,
}

/// What membership tells another node's process at `at`: a node's instance is gone, or
/// beats again.
struct News {
    to: usize,
    /// The process that is to hear it (a later one never knew the instance).
    to_instance: String,
    instance: String,
    /// It beats (again); else it is gone.
    joined: bool,
    at: Instant,
    /// Everything on its way to `to` arrives first (a kill, heard after 10 s).
    after_the_rest: bool,
}

/// What the seeds exercised.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    reports: usize,
    /// `user_online` and `user_offline` posted to the events webhook.
    events: usize,
    calls_rung: usize,
    calls_offline: usize,
    calls_unavailable: usize,
    /// Broadcasts and stats asked.
    gathers: usize,
    huddle_joins: usize,
    cuts: usize,
    kills: usize,
    leaves: usize,
    /// Processes taken for dead while they lived on.
    taken_for_dead: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        let Tally {
            reports,
            events,
            calls_rung,
            calls_offline,
            calls_unavailable,
            gathers,
            huddle_joins,
            cuts,
            kills,
            leaves,
            taken_for_dead,
        } = other;
        self.reports += reports;
        self.events += events;
        self.calls_rung += calls_rung;
        self.calls_offline += calls_offline;
        self.calls_unavailable += calls_unavailable;
        self.gathers += gathers;
        self.huddle_joins += huddle_joins;
        self.cuts += cuts;
        self.kills += kills;
        self.leaves += leaves;
        self.taken_for_dead += taken_for_dead;
    }
}

/// The simulated cluster of one seed.
struct World {
    rng: Rng,
    cluster: SimCluster,
    nodes: Vec<Node>,
    users: Vec<String>,
    /// By reference: the signals sent.
    signals: BTreeMap<String, Signal>,
    next_signal: u64,
    /// By request number (the asking connection's slot): broadcasts and stats asked.
    asked: BTreeMap<u32, Asked>,
    news: Vec<News>,
    /// Per user, the presence events reported for it, in the order they were posted:
    /// `user_online` (true) or `user_offline`, and the process that posted it.
    reported: BTreeMap<String, Vec<(bool, String)>>,
    /// Per user, the same events with their `at_ms`, as a backend sees them.
    dated: BTreeMap<String, Vec<(u64, bool)>>,
    tally: Tally,
    log: Vec<String>,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let node_count = 2 + rng.below(3);
        let user_count = 2 + rng.below(3);
        let mut world = World {
            rng,
            cluster: SimCluster::new(node_count, Shards::new(1)),
            nodes: Vec::new(),
            users: (0..user_count).map(|u| format!("u{u}")).collect(),
            signals: BTreeMap::new(),
            next_signal: 0,
            asked: BTreeMap::new(),
            news: Vec::new(),
            reported: BTreeMap::new(),
            dated: BTreeMap::new(),
            tally: Tally::default(),
            log: Vec::new(),
        };
        for n in 0..node_count {
            world.nodes.push(Node {
                cut_at: None,
                beats_at: None,
                holds: BTreeMap::new(),
                watches: BTreeSet::new(),
                heard: BTreeMap::new(),
                in_room: 0,
                events: None,
            });
            world.start(n);
        }
        world
    }

    /// Starts a process for node `n`, connected.
    fn start(&mut self, n: usize) {
        self.flush(n);
        let (events, hooks) = crate::events::Events::to_channel();
        let setup = NodeSetup {
            reactors: REACTORS,
            streams: super::streams(100, 0, Shards::new(1)),
            wall_ms,
            local_stats: Arc::new(move || stats_of(n).into_bytes()),
            events: Some(events),
        };
        self.nodes[n].events = Some(hooks);
        let instance = self.cluster.start(n, setup);
        self.meet(n, &instance);
        let node = &mut self.nodes[n];
        (node.cut_at, node.beats_at) = (None, None);
        node.holds.clear();
        node.watches.clear();
        node.heard.clear();
        node.in_room = 0;
        self.flush(n);
    }

    /// What membership's watch says once node `n` started process `instance`: the new
    /// process hears, within moments, of every other process whose record is fresh
    /// (one cut off for less than [`DEAD_AFTER`], or counted dead and beating again,
    /// once it beats); the others hear of it, and that node `n`'s earlier processes,
    /// those not heard gone yet, are gone ("node id taken over").
    fn meet(&mut self, n: usize, instance: &str) {
        let now = Instant::now();
        let earlier = format!("n{n}-");
        let heard_at = now + Duration::from_millis(self.rng.below(200) as u64);
        for m in (0..self.nodes.len()).filter(|&m| m != n) {
            let Some(other) = self.cluster.instance(m).map(str::to_owned) else {
                continue;
            };
            let node = &self.nodes[m];
            let fresh_at = match node.cut_at {
                Some(cut_at) => (now < cut_at + DEAD_AFTER).then_some(heard_at),
                None if !self.cluster.connected(m) => None, // counted dead, cut off
                None => Some(node.beats_at.map_or(heard_at, |at| at.max(heard_at))),
            };
            if let Some(at) = fresh_at {
                self.news.push(News {
                    to: n,
                    to_instance: instance.to_owned(),
                    instance: other.clone(),
                    joined: true,
                    at,
                    after_the_rest: false,
                });
            }
            for news in &mut self.news {
                let replaced = news.instance.starts_with(&earlier) && !news.joined;
                if replaced && news.to == m {
                    news.at = news.at.min(heard_at);
                }
            }
            self.news.push(News {
                to: m,
                to_instance: other,
                instance: instance.to_owned(),
                joined: true,
                at: heard_at,
                after_the_rest: false,
            });
        }
    }

    /// What node `n`'s reactors got from its relayer, read, and what it reported to the
    /// events webhook.
    fn flush(&mut self, n: usize) {
        for (_, inbound) in self.cluster.take_inbound(n) {
            self.reactor_got(n, inbound);
        }
        let Some(hooks) = &self.nodes[n].events else {
            return;
        };
        let instance = self.cluster.instance(n).unwrap_or("?").to_owned();
        for (at_ms, hook) in hooks.try_iter() {
            let (user, online) = match hook {
                Hook::UserOnline { user } => (user, true),
                Hook::UserOffline { user } => (user, false),
                _ => continue,
            };
            self.log
                .push(format!("{instance} reports {user} {}", word(online)));
            let reports = self.reported.entry(user.to_string()).or_default();
            reports.push((online, instance.clone()));
            self.dated
                .entry(user.to_string())
                .or_default()
                .push((at_ms, online));
            self.tally.events += 1;
        }
    }

    /// What node `n`'s reactors got from its relayer.
    fn reactor_got(&mut self, n: usize, inbound: Inbound) {
        match inbound {
            Inbound::Mail(Envelope::RemotePresence { user, online, .. }) => {
                let node = &mut self.nodes[n];
                if !node.watches.contains(&*user) {
                    return self.fail(format!("n{n} heard of {user}, whom it does not watch"));
                }
                if node.heard.insert(user.to_string(), online) == Some(online) {
                    return self.fail(format!(
                        "n{n} heard twice running that {user} is {}",
                        word(online)
                    ));
                }
                self.tally.reports += 1;
                self.log.push(format!("n{n} hears {user} {}", word(online)));
            }
            Inbound::Mail(Envelope::Deliver(delivery)) => {
                let Some(reference) = reference_in(&delivery.frame) else {
                    return self.fail(format!("n{n} got a live event it cannot name"));
                };
                if let Some(signal) = self.signals.get_mut(&reference) {
                    signal.rang.push(n);
                }
                self.log.push(format!("n{n} rings {reference}"));
            }
            Inbound::Mail(Envelope::HuddleRelayed(relayed)) => {
                let Some(reference) = reference_in(&relayed.frame) else {
                    return self.fail(format!("n{n} got a huddle signal it cannot name"));
                };
                if let Some(signal) = self.signals.get_mut(&reference) {
                    signal.rang.push(n);
                }
                self.log.push(format!("n{n} relays huddle {reference}"));
                let here = self.nodes[n].in_room;
                if let Some(reply) = relayed.introduce_to.filter(|_| here > 0) {
                    let json = format!(r#"{{"type":"signal","from":"n{n}"}}"#);
                    let frames = vec![Outgoing::text(OutKind::Signal, json.as_bytes()); here];
                    self.carry_out(n, Relay::HuddleIntroduce { reply, frames });
                }
            }
            Inbound::Mail(Envelope::ToConn { addr, frame, .. }) => {
                let reference = format!("#{}", addr.slot);
                let json = frame.json();
                let text = String::from_utf8_lossy(&json);
                let from = text
                    .split('"')
                    .find_map(|t| t.strip_prefix('n')?.parse().ok());
                match (self.signals.get_mut(&reference), from) {
                    (Some(signal), Some(m)) => signal.introduced.push(m),
                    _ => {
                        return self
                            .fail(format!("n{n} got an introduction it cannot place: {text}"))
                    }
                }
                self.log.push(format!(
                    "n{n} hears n{} introduced to {reference}",
                    from.unwrap_or(0)
                ));
            }
            Inbound::Broadcast { reply, .. } => {
                let reached = self.nodes[n]
                    .holds
                    .values()
                    .filter(|h| **h == Hold::Devices)
                    .count();
                let relay = Relay::BroadcastCounted {
                    reply,
                    delivered: reached as u64,
                };
                self.carry_out(n, relay);
            }
            Inbound::Mail(Envelope::BroadcastReply {
                request, delivered, ..
            }) => {
                if let Some(asked) = self.asked.get_mut(&request) {
                    asked.heard.push(format!("reached {delivered}"));
                }
                self.log.push(format!(
                    "n{n} hears broadcast {request} reached {delivered}"
                ));
            }
            Inbound::Admin { reply, .. } => {
                let part = crate::router::AdminPart::Disconnected {
                    count: n as u32 + 1,
                };
                let part = Box::new(part);
                self.carry_out(n, Relay::AdminPart { reply, part });
            }
            Inbound::Mail(Envelope::AdminNodes(answer)) => {
                let mut parts: Vec<String> = (answer.parts.iter())
                    .map(|(node, part)| match part {
                        crate::router::AdminPart::Disconnected { count } => {
                            format!("{node}:{count}")
                        }
                        other => format!("{node}:{other:?}"),
                    })
                    .collect();
                parts.sort_unstable();
                let heard = format!("parts {parts:?} of {} nodes", answer.known);
                self.log
                    .push(format!("n{n} hears call {}: {heard}", answer.request));
                if let Some(asked) = self.asked.get_mut(&answer.request) {
                    asked.heard.push(heard);
                }
            }
            Inbound::Stats { asker, body } => {
                let heard = match body.map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
                    Some(Ok(body)) => format!(
                        "{} of {} nodes, {} connections",
                        body["nodes_answered"], body["nodes_known"], body["total"]["connections"]
                    ),
                    Some(Err(e)) => format!("a body that does not parse: {e}"),
                    None => "unavailable".into(),
                };
                self.log
                    .push(format!("n{n} hears stats {}: {heard}", asker.slot));
                if let Some(asked) = self.asked.get_mut(&asker.slot) {
                    asked.heard.push(heard);
                }
            }
            Inbound::CallNotTaken {
                reference, code, ..
            } => {
                if let Some(signal) = self.signals.get_mut(&*reference) {
                    signal.said.push(code);
                }
                self.log
                    .push(format!("n{n} caller hears {reference} {code:?}"));
            }
            _ => {}
        }
    }

    /// Records a broken invariant, reported at the next check.
    fn fail(&mut self, why: String) {
        self.log.push(format!("FAILED: {why}"));
    }

    /// The first broken invariant recorded, if any.
    fn failed(&self) -> Result<(), String> {
        match self.log.iter().find(|l| l.starts_with("FAILED: ")) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Runs `steps` random steps, then lets everything settle and checks.
    async fn run(&mut self, steps: usize) -> Result<Tally, String> {
        for _ in 0..steps {
            self.step().await;
            self.failed()?;
        }
        for n in 0..self.nodes.len() {
            if !self.cluster.running(n) {
                self.log.push(format!("n{n} starts again"));
                self.start(n);
            } else if !self.cluster.connected(n) {
                self.reconnect(n);
            }
        }
        self.settle().await;
        self.failed()?;
        self.check_presence()?;
        self.check_no_ghosts()?;
        self.check_latest_events()?;
        self.check_signals_in_faults()?;
        self.ring_everyone().await?;
        self.count_nodes();
        self.join_the_room_one_by_one().await?;
        self.ask_everyone_from_each_node().await?;
        self.kill_at_rest().await?;
        Ok(self.tally)
    }

    /// At rest, one running node of several is killed and the rest settle: another
    /// reports its users offline, those held still since it was taken for dead too
    /// (its holdings, deleted by their reaper, written again).
    async fn kill_at_rest(&mut self) -> Result<(), String> {
        let live = self.live_nodes();
        if live.len() < 2 {
            return Ok(());
        }
        let n = live[self.rng.below(live.len())];
        self.kill(n);
        self.settle().await;
        self.failed()?;
        self.check_no_ghosts()?;
        self.check_latest_events()
    }

    /// One random step.
    async fn step(&mut self) {
        self.count_nodes();
        let n = self.rng.below(self.nodes.len());
        let u = self.rng.below(self.users.len());
        let user = self.users[u].clone();
        let alive = self.cluster.running(n);
        match self.rng.below(100) {
            0..=14 if alive => self.hold_or_let_go(n, &user),
            15..=24 if alive => self.watch_or_not(n, &user),
            25..=31 if alive => {
                self.signal(n, &user, true);
            }
            32..=34 if alive => {
                self.signal(n, &user, false);
            }
            35..=59 => {
                let count = 1 + self.rng.below(4);
                self.server_reads(count);
            }
            60..=84 => {
                let count = 1 + self.rng.below(4);
                self.server_delivers(count);
            }
            85..=90 => {
                let by = Duration::from_millis(self.rng.below(700) as u64);
                self.advance(by).await;
            }
            91 if alive && self.cluster.connected(n) => self.take_for_dead(n),
            92..=94 if alive => self.cut_or_reconnect(n),
            95..=96 if alive => self.kill(n),
            97 if alive => self.leave(n),
            95..=97 => {
                self.log.push(format!("n{n} starts again"));
                self.start(n);
            }
            98 if alive => {
                self.enter_or_leave_room(n);
            }
            99 if alive => match self.rng.below(3) {
                0 => self.broadcast(n),
                1 => self.ask_stats(n),
                _ => self.ask_admin(n),
            },
            _ => {}
        }
    }

    /// A device on node `n` enters the huddle room (a join, asking who is there), or one
    /// leaves it; the first to enter and the last to leave are the node's.
    fn enter_or_leave_room(&mut self, n: usize) -> String {
        let (reference, caller) = self.next_reference();
        let enters = self.nodes[n].in_room == 0 || self.rng.chance(50);
        let (group, room): (Box<str>, Box<str>) = (GROUP.into(), ROOM.into());
        if enters && self.nodes[n].in_room == 0 {
            let home = home_of(GROUP);
            self.carry_out(
                n,
                Relay::HuddleWatch {
                    group: group.clone(),
                    room: room.clone(),
                    home,
                },
            );
        }
        let node = &mut self.nodes[n];
        node.in_room = if enters {
            node.in_room + 1
        } else {
            node.in_room - 1
        };
        let what = if enters { "join" } else { "leave" };
        let json = format!(r#"{{"type":"signal","kind":"huddle:{what}","ref":"{reference}"}}"#);
        let instance = self.instance_of(n);
        self.signals.insert(
            reference.clone(),
            Signal {
                from: (n, instance),
                ..Signal::default()
            },
        );
        self.log.push(format!("n{n} huddle {what} {reference}"));
        let huddle = Relay::Huddle {
            group: group.clone(),
            room: room.clone(),
            frame: Outgoing::text(OutKind::Signal, json.as_bytes()),
            joiner: enters.then_some(caller),
        };
        self.carry_out(n, huddle);
        if self.nodes[n].in_room == 0 {
            self.carry_out(n, Relay::HuddleUnwatch { group, room });
        }
        reference
    }

    /// An `all:true` broadcast asked on node `n`.
    fn broadcast(&mut self, n: usize) {
        let requester = self.ask(n, "a broadcast");
        let message = crate::router::BroadcastMessage {
            message_id: format!("b{}", requester.slot).into(),
            sender_id: "ops".into(),
            text: "hello, everyone".into(),
            message_type: "text".into(),
            priority: Priority::Normal,
            accepted_ns: 0,
        };
        let relay = Relay::Broadcast {
            requester,
            request: requester.slot,
            message: Arc::new(message),
        };
        self.carry_out(n, relay);
    }

    /// Every live process knows how many nodes are alive, as membership tells it (the
    /// gathers of `all:true` broadcasts wait for that many answers).
    fn count_nodes(&mut self) {
        let alive = self.live_nodes().len() as u32;
        self.cluster.count_alive(alive);
    }

    /// `/api/stats?scope=cluster` asked on node `n`.
    fn ask_stats(&mut self, n: usize) {
        let asker = self.ask(n, "stats");
        let local = stats_of(n).into_bytes();
        self.carry_out(n, Relay::Stats { asker, local });
    }

    /// An operator's call about users asked on node `n` (`/api/admin/*`): every other
    /// node answers its part.
    fn ask_admin(&mut self, n: usize) {
        let asker = self.ask(n, "an operator's call");
        let relay = Relay::Admin {
            reactor: asker.reactor,
            request: asker.slot,
            said: b"{}".to_vec(),
        };
        self.carry_out(n, relay);
    }

    /// Something asked of every node from node `n`: the asking connection, numbered
    /// after a new reference, whose answers are recorded.
    fn ask(&mut self, n: usize, what: &str) -> ConnAddr {
        let (_, asker) = self.next_reference();
        let from = (n, self.instance_of(n));
        let heard = Vec::new();
        self.asked.insert(asker.slot, Asked { from, heard });
        self.log.push(format!("n{n} asks {what} {}", asker.slot));
        asker
    }

    /// A new reference (`#<number>`), and a connection numbered after it (its slot).
    fn next_reference(&mut self) -> (String, ConnAddr) {
        let number = self.next_signal;
        self.next_signal += 1;
        let addr = ConnAddr {
            reactor: 0,
            generation: 1,
            slot: number as u32,
        };
        (format!("#{number}"), addr)
    }

    /// The instance running node `n` (empty while it is dead).
    fn instance_of(&self, n: usize) -> String {
        self.cluster.instance(n).unwrap_or_default().to_owned()
    }

    /// Node `n` gains `user` (a first device, or one back in the grace), loses its last
    /// device (the grace), or lets the user go.
    fn hold_or_let_go(&mut self, n: usize, user: &str) {
        let held = self.nodes[n].holds.get(user).copied();
        let next = match held {
            None => Some(Hold::Devices),
            Some(Hold::Grace) if self.rng.chance(50) => Some(Hold::Devices),
            Some(Hold::Devices) if self.rng.chance(50) => Some(Hold::Grace),
            Some(_) => None,
        };
        let user: Arc<str> = user.into();
        let relay = match next {
            Some(Hold::Devices) => Relay::Watch {
                home: home_of(&user),
                user,
            },
            Some(Hold::Grace) => Relay::Away { user },
            None => Relay::Unwatch {
                user,
                at_ms: wall_ms(),
            },
        };
        self.log.push(format!("n{n} {relay:?}"));
        let holds = &mut self.nodes[n].holds;
        match next {
            Some(hold) => holds.insert(relay_user(&relay).into(), hold),
            None => holds.remove(relay_user(&relay)),
        };
        self.carry_out(n, relay);
    }

    /// A first connection on node `n` watches `user`, or the last stops.
    fn watch_or_not(&mut self, n: usize, user: &str) {
        let relay = if self.nodes[n].watches.remove(user) {
            self.nodes[n].heard.remove(user);
            Relay::UnwatchPresence { user: user.into() }
        } else {
            self.nodes[n].watches.insert(user.to_owned());
            Relay::WatchPresence {
                user: user.into(),
                home: home_of(user),
            }
        };
        self.log.push(format!("n{n} {relay:?}"));
        self.carry_out(n, relay);
    }

    /// A call signal (`call`), or typing, from node `n` to `user`: a request for an
    /// outcome when no device of the user on `n` took it, as the shard sends it.
    fn signal(&mut self, n: usize, user: &str, call: bool) -> String {
        let (reference, caller) = self.next_reference();
        let (kind, json) = match call {
            true => (
                OutKind::Signal,
                format!(r#"{{"type":"signal","callId":"{reference}"}}"#),
            ),
            false => (
                OutKind::Typing,
                format!(r#"{{"type":"typing","ref":"{reference}"}}"#),
            ),
        };
        let waits = call && self.nodes[n].holds.get(user) != Some(&Hold::Devices);
        let instance = self.instance_of(n);
        self.signals.insert(
            reference.clone(),
            Signal {
                from: (n, instance),
                call: waits,
                ..Signal::default()
            },
        );
        let relay = Relay::Live {
            user: user.into(),
            frame: Outgoing::text(kind, json.as_bytes()),
            priority: Priority::High,
            call: waits.then(|| (caller, reference.clone().into())),
        };
        self.log
            .push(format!("n{n} sends {reference} to {user} (waits: {waits})"));
        self.carry_out(n, relay);
        reference
    }

    /// Hands node `n`'s relayer `relay`.
    fn carry_out(&mut self, n: usize, relay: Relay) {
        self.cluster.carry_out(n, relay);
        self.flush(n);
    }

    /// The server reads up to `count` operations, each from a random connection.
    fn server_reads(&mut self, count: usize) {
        for _ in 0..count {
            let ready = self.cluster.with_unread();
            if ready.is_empty() {
                return;
            }
            let conn = ready[self.rng.below(ready.len())];
            self.cluster.read_one(conn);
        }
    }

    /// The server hands a random connection up to `count` of the operations routed to it.
    fn server_delivers(&mut self, count: usize) {
        let ready = self.cluster.with_routed();
        if ready.is_empty() {
            return;
        }
        let conn = ready[self.rng.below(ready.len())];
        self.deliver(conn, count);
    }

    /// Up to `count` operations routed to connection `conn`, read by its node.
    fn deliver(&mut self, conn: usize, count: usize) {
        let Some(n) = self.cluster.node_of(conn) else {
            return;
        };
        if let Err(e) = self.cluster.deliver(conn, count) {
            return self.fail(e);
        }
        self.flush(n);
    }

    /// Node `n` is cut off from NATS, or comes back.
    fn cut_or_reconnect(&mut self, n: usize) {
        if !self.cluster.connected(n) {
            return self.reconnect(n);
        }
        self.log.push(format!("n{n} is cut off"));
        self.tally.cuts += 1;
        self.cluster.cut(n);
        self.nodes[n].cut_at = Some(Instant::now());
        self.flush(n);
    }

    /// Node `n` is back on NATS. Cut off for nearly [`DEAD_AFTER`], it may be counted
    /// dead all the same: its relay came back before its membership beat again.
    fn reconnect(&mut self, n: usize) {
        self.log.push(format!("n{n} reconnects"));
        let Some(instance) = self.cluster.instance(n).map(str::to_owned) else {
            return;
        };
        let beats_at = Instant::now() + Duration::from_millis(self.rng.below(2_000) as u64);
        match self.nodes[n].cut_at.take() {
            // Counted dead while cut off: it is heard of again when its membership beats.
            None => {
                self.tell(n, &instance, (true, beats_at), false);
                self.nodes[n].beats_at = Some(beats_at);
            }
            Some(cut_at) if cut_at.elapsed() + BEAT >= DEAD_AFTER && self.rng.chance(50) => {
                self.log.push(format!("n{n} is counted dead all the same"));
                let dead_at = cut_at + DEAD_AFTER;
                self.tell(n, &instance, (false, dead_at), true);
                self.tell(n, &instance, (true, dead_at.max(beats_at)), false);
                self.nodes[n].beats_at = Some(dead_at.max(beats_at));
            }
            Some(_) => {}
        }
        self.cluster.connect(n);
        self.flush(n);
    }

    /// Node `n`'s process is taken for dead while it lives and stays on NATS (frozen
    /// past [`DEAD_AFTER`], its beats late): the others hear it is gone, after what it
    /// sent, and reap it; it beats again within 3 s.
    fn take_for_dead(&mut self, n: usize) {
        let Some(instance) = self.cluster.instance(n).map(str::to_owned) else {
            return;
        };
        self.log.push(format!("n{n} is taken for dead"));
        self.tally.taken_for_dead += 1;
        let now = Instant::now();
        let beats_at = now + Duration::from_millis(self.rng.below(3_000) as u64);
        self.tell(n, &instance, (false, now), true);
        self.tell(n, &instance, (true, beats_at), false);
        self.nodes[n].beats_at = Some(beats_at);
    }

    /// Node `n`'s process is killed: the others hear it is gone once membership has
    /// counted it dead, after everything it sent.
    fn kill(&mut self, n: usize) {
        self.log.push(format!("n{n} is killed"));
        self.tally.kills += 1;
        let at = Instant::now() + DEAD_AFTER;
        self.stop(n, at, true);
    }

    /// Node `n` leaves on SIGTERM: what it wrote may reach the server or not, and the
    /// others hear at once that it is gone, maybe before its last messages.
    fn leave(&mut self, n: usize) {
        self.log.push(format!("n{n} leaves"));
        self.tally.leaves += 1;
        if let Some(conn) = self.cluster.conn(n) {
            while self.rng.chance(70) && self.cluster.with_unread().contains(&conn) {
                self.cluster.read_one(conn);
            }
        }
        let at = Instant::now() + Duration::from_millis(self.rng.below(20) as u64);
        self.stop(n, at, false);
    }

    /// Node `n`'s process stops; each other live process hears it at `at`.
    fn stop(&mut self, n: usize, at: Instant, after_the_rest: bool) {
        let Some(instance) = self.cluster.stop(n) else {
            return;
        };
        // A stopped process beats no more.
        self.news
            .retain(|news| !news.joined || news.instance != instance);
        self.tell(n, &instance, (false, at), after_the_rest);
        let node = &mut self.nodes[n];
        node.cut_at = None;
        node.holds.clear();
        node.watches.clear();
        node.heard.clear();
        node.in_room = 0;
    }

    /// Every other node's process hears at `at` that `instance` (node `n`'s) beats
    /// (`joined`) or is gone.
    fn tell(
        &mut self,
        n: usize,
        instance: &str,
        (joined, at): (bool, Instant),
        after_the_rest: bool,
    ) {
        for m in (0..self.nodes.len()).filter(|&m| m != n) {
            if let Some(other) = self.cluster.instance(m) {
                self.news.push(News {
                    to: m,
                    to_instance: other.to_owned(),
                    instance: instance.to_owned(),
                    joined,
                    at,
                    after_the_rest,
                });
            }
        }
    }

    /// Moves the virtual clock `by`: processes cut off for [`DEAD_AFTER`] are counted
    /// dead by the others, the gone are heard, and every relayer's waits expire.
    async fn advance(&mut self, by: Duration) {
        tokio::time::advance(by).await;
        let now = Instant::now();
        for n in 0..self.nodes.len() {
            let Some(instance) = self.cluster.instance(n).map(str::to_owned) else {
                continue;
            };
            let node = &mut self.nodes[n];
            if node
                .cut_at
                .is_some_and(|at| now.duration_since(at) >= DEAD_AFTER)
            {
                node.cut_at = None; // counted once
                self.log.push(format!("n{n} counted dead while cut off"));
                self.tell(n, &instance, (false, now), true);
            }
        }
        let (mut due, later): (Vec<News>, Vec<News>) = std::mem::take(&mut self.news)
            .into_iter()
            .partition(|news| news.at <= now);
        self.news = later;
        due.sort_by_key(|news| news.at);
        for news in due {
            if self.cluster.instance(news.to) != Some(&*news.to_instance) {
                continue;
            }
            if news.after_the_rest {
                if let Some(conn) = self.cluster.conn(news.to) {
                    self.deliver(conn, usize::MAX);
                }
            }
            let what = if news.joined { "beats" } else { "is gone" };
            self.log
                .push(format!("n{} hears {} {what}", news.to, news.instance));
            match news.joined {
                true => self.cluster.joined(news.to, &news.instance),
                false => self.cluster.gone(news.to, &news.instance),
            }
            self.flush(news.to);
        }
        for n in 0..self.nodes.len() {
            self.cluster.expire_waits(n);
            self.flush(n);
        }
    }

    /// Lets everything settle: the server reads and delivers all, and the clock passes
    /// every wait (questions, calls, the dead's 10 s).
    async fn settle(&mut self) {
        for _ in 0..30 {
            self.drain();
            self.advance(Duration::from_millis(600)).await;
        }
        self.drain();
    }

    /// The server reads and delivers everything, until nothing is left.
    fn drain(&mut self) {
        loop {
            let (unread, routed) = (self.cluster.with_unread(), self.cluster.with_routed());
            if unread.is_empty() && routed.is_empty() {
                return;
            }
            for conn in unread {
                while self.cluster.with_unread().contains(&conn) {
                    self.cluster.read_one(conn);
                }
            }
            for conn in routed {
                self.deliver(conn, usize::MAX);
            }
        }
    }

    /// Every watched user's home heard, last, whether another node holds the user.
    fn check_presence(&self) -> Result<(), String> {
        for (n, node) in self.nodes.iter().enumerate() {
            for user in &node.watches {
                let held =
                    (0..self.nodes.len()).any(|m| m != n && self.nodes[m].holds.contains_key(user));
                match node.heard.get(user) {
                    Some(&online) if online == held => {}
                    heard => {
                        return Err(format!(
                            "n{n} watches {user}, held elsewhere: {held}, but heard {heard:?}"
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// No user that no process holds was reported online last: the users of a node that
    /// died or left are reported offline by another ([`crate::cluster::holdings`]).
    fn check_no_ghosts(&self) -> Result<(), String> {
        for (user, reports) in &self.reported {
            let held = self.nodes.iter().any(|node| node.holds.contains_key(user));
            if let Some((true, by)) = reports.last().filter(|_| !held) {
                return Err(format!(
                    "{user}, held nowhere, was reported online last (by {by}): {reports:?}"
                ));
            }
        }
        Ok(())
    }

    /// A backend taking each user's latest event by `at_ms` has every user right at
    /// rest: online while a process holds the user, offline (or never reported) while
    /// none does (docs/cluster.md, "Checked again").
    fn check_latest_events(&self) -> Result<(), String> {
        for user in &self.users {
            let held = self.nodes.iter().any(|node| node.holds.contains_key(user));
            let dated = self.dated.get(user).map_or(&[][..], Vec::as_slice);
            // The clock never reads the same twice ([`wall_ms`]): no two events tie.
            let latest = dated.iter().max_by_key(|(at, _)| *at);
            if latest.is_some_and(|(_, online)| *online) != held {
                return Err(format!(
                    "{user}, held: {held}, has the latest events (at_ms, online) {dated:?}"
                ));
            }
        }
        Ok(())
    }

    /// Every call placed among the faults by a process still running was answered at
    /// most once, and rang somewhere or was answered.
    fn check_signals_in_faults(&mut self) -> Result<(), String> {
        let mut tally = self.tally;
        for (reference, signal) in &self.signals {
            let (n, instance) = &signal.from;
            let lives = self.cluster.instance(*n) == Some(instance.as_str());
            if signal.said.len() > 1 {
                return Err(format!("{reference} answered {:?}", signal.said));
            }
            let mut rang = signal.rang.clone();
            rang.dedup();
            if rang.len() < signal.rang.len() {
                return Err(format!(
                    "{reference} rang twice on a node: {:?}",
                    signal.rang
                ));
            }
            if signal.call && lives && signal.rang.is_empty() && signal.said.is_empty() {
                return Err(format!("{reference} neither rang nor was answered"));
            }
            if signal.call {
                match signal.said.first() {
                    None => tally.calls_rung += 1,
                    Some(ErrorCode::PeerOffline) => tally.calls_offline += 1,
                    Some(_) => tally.calls_unavailable += 1,
                }
            }
        }
        for (request, asked) in &self.asked {
            let (n, instance) = &asked.from;
            let lives = self.cluster.instance(*n) == Some(instance.as_str());
            if asked.heard.len() > 1 || (lives && asked.heard.is_empty()) {
                return Err(format!("request {request} heard {:?}", asked.heard));
            }
            tally.gathers += 1;
        }
        self.tally = tally;
        Ok(())
    }

    /// At rest, each node calls and types to each user: each rings on exactly the other
    /// nodes holding a device of the user, and a call that rings nowhere hears
    /// `peer_offline`.
    async fn ring_everyone(&mut self) -> Result<(), String> {
        let mut sent = Vec::new();
        for n in 0..self.nodes.len() {
            for user in self.users.clone() {
                sent.push((self.signal(n, &user, true), n, user.clone()));
                sent.push((self.signal(n, &user, false), n, user));
            }
        }
        self.settle().await;
        self.failed()?;
        for (reference, n, user) in sent {
            let signal = &self.signals[&reference];
            let devices: Vec<usize> = (0..self.nodes.len())
                .filter(|&m| m != n && self.nodes[m].holds.get(&user) == Some(&Hold::Devices))
                .collect();
            let mut rang = signal.rang.clone();
            rang.sort_unstable();
            let said = match (signal.call, devices.is_empty()) {
                (true, true) => vec![ErrorCode::PeerOffline],
                _ => Vec::new(),
            };
            if rang != devices || signal.said != said {
                return Err(format!(
                    "at rest {reference} from n{n} to {user} rang {rang:?} and said {:?}; \
                     devices are on {devices:?}",
                    signal.said
                ));
            }
        }
        Ok(())
    }
}

/// Node `n`'s `/api/stats` figures: `n + 1` connections.
fn stats_of(n: usize) -> String {
    format!(r#"{{"connections":{}}}"#, n + 1)
}

/// The reference (`#<number>`) a signal's frame carries.
fn reference_in(frame: &Outgoing) -> Option<String> {
    let json = frame.json();
    let text = String::from_utf8_lossy(&json);
    text.split('"')
        .find(|t| t.starts_with('#'))
        .map(str::to_owned)
}

/// The user's home reactor on every node.
fn home_of(user: &str) -> u16 {
    (usize::from(user.bytes().last().unwrap_or(0)) % REACTORS) as u16
}

/// The user a hold, an away or a let-go is about.
fn relay_user(relay: &Relay) -> &str {
    match relay {
        Relay::Watch { user, .. } | Relay::Away { user } | Relay::Unwatch { user, .. } => user,
        _ => unreachable!("not about holding a user"),
    }
}

impl World {
    /// At rest, each live node's device joins the huddle room in turn: the join reaches
    /// exactly the other nodes with devices in the room, and each of those devices
    /// introduces itself once.
    async fn join_the_room_one_by_one(&mut self) -> Result<(), String> {
        for n in self.live_nodes() {
            let mut expected: Vec<usize> = Vec::new();
            for m in self.live_nodes().into_iter().filter(|&m| m != n) {
                expected.extend(std::iter::repeat_n(m, self.nodes[m].in_room));
            }
            let mut rooms: Vec<usize> = expected.clone();
            rooms.dedup();
            let reference = loop {
                let reference = self.enter_or_leave_room(n);
                if self.log.last().is_some_and(|l| l.contains("huddle join")) {
                    break reference;
                }
            };
            self.settle().await;
            self.failed()?;
            let signal = &self.signals[&reference];
            let (mut rang, mut introduced) = (signal.rang.clone(), signal.introduced.clone());
            rang.sort_unstable();
            introduced.sort_unstable();
            if rang != rooms || introduced != expected {
                return Err(format!(
                    "at rest n{n}'s join {reference} reached {rang:?} (devices in the room on \
                     {rooms:?}) and was introduced to {introduced:?}, not {expected:?}"
                ));
            }
            self.tally.huddle_joins += 1;
        }
        Ok(())
    }

    /// At rest, each live node asks an `all:true` broadcast, the cluster's stats and an
    /// operator's call: its requester hears, once, the sum of what the other nodes
    /// reached, every node's figures and their sum, and every other node's part.
    async fn ask_everyone_from_each_node(&mut self) -> Result<(), String> {
        let live = self.live_nodes();
        let connections: usize = live.iter().map(|&m| m + 1).sum();
        for &n in &live {
            let request = self.next_signal as u32;
            self.broadcast(n);
            let stats = self.next_signal as u32;
            self.ask_stats(n);
            let call = self.next_signal as u32;
            self.ask_admin(n);
            self.settle().await;
            self.failed()?;
            let reached: usize = (live.iter().filter(|&&m| m != n))
                .map(|&m| {
                    self.nodes[m]
                        .holds
                        .values()
                        .filter(|h| **h == Hold::Devices)
                        .count()
                })
                .sum();
            let nodes = live.len();
            let parts: Vec<String> = (live.iter().filter(|&&m| m != n))
                .map(|&m| format!("n{m}:{}", m + 1))
                .collect();
            let expected = [
                (call, format!("parts {parts:?} of {nodes} nodes")),
                (request, format!("reached {reached}")),
                (
                    stats,
                    format!("{nodes} of {nodes} nodes, {connections} connections"),
                ),
            ];
            for (request, answer) in expected {
                let heard = &self.asked[&request].heard;
                if *heard != [answer.clone()] {
                    return Err(format!(
                        "at rest n{n}'s request {request} heard {heard:?}, not {answer}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The nodes with a process running.
    fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| self.cluster.running(n))
            .collect()
    }
}

/// "online" or "offline".
fn word(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

/// Runs seed `seed` on a virtual clock of its own: the world as it ended, and its tally
/// or what broke.
fn run_world(seed: u64, steps: usize) -> (World, Result<Tally, String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    STARTED.with(|at| at.set(Some(Instant::now())));
    LAST_WALL.with(|last| last.set(0));
    let mut world = World::new(seed);
    let outcome = runtime.block_on(world.run(steps));
    (world, outcome)
}

/// Runs seed `seed`: its tally, or what broke with the steps before it.
fn run_seed(seed: u64, steps: usize) -> Result<Tally, String> {
    let (world, outcome) = run_world(seed, steps);
    outcome.map_err(|why| failure(seed, &why, &world.log))
}

#[test]
fn a_seed_replays_step_for_step() {
    for seed in 0..20 {
        let (first, _) = run_world(seed, STEPS);
        let (second, _) = run_world(seed, STEPS);
        assert!(first.log.len() > STEPS / 10, "seed {seed} did little");
        assert_eq!(first.log, second.log, "seed {seed}");
    }
}

#[test]
fn every_seed_keeps_the_live_relay_invariants() {
    let run = |seed| run_seed(seed, STEPS);
    if let Some(total) = run_seeds("LIVE_SIM", SEEDS_DEFAULT, run, Tally::add) {
        assert!(
            total.reports > 0 && total.calls_rung > 0 && total.calls_offline > 0 && total.kills > 0,
            "{total:?}"
        );
    }
}
