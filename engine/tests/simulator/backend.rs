//! What the shards' store commands go to: one node's store ([`SimStore`], a model of
//! what the redb store promises), or a cluster node's inboxes and history, the real
//! relayer's, on a simulated nats-server with JetStream ([`SimCluster`]).
//!
//! A cluster seed runs one node of a cluster, as `--cluster` runs it: every store command
//! and every relay a shard asks for goes to the node's relayer in the order asked, as the
//! one channel to the cluster thread carries them; what the relayer hands the reactors
//! (store answers, live deliveries, the group bucket's changes) comes back through their
//! channels. The server reads and delivers at the steps the world picks, the node is cut
//! off from NATS and comes back, and a crash is a `kill -9` of its process: JetStream
//! keeps everything, and the process that starts again begins with nothing but what it
//! reads there.

use std::{
    cell::Cell,
    sync::{mpsc, Arc},
    time::Duration,
};

use engine::{
    cluster::{
        relay::{Inbound, Relay},
        sim::{self, NodeSetup, SimCluster},
        Shards, StreamSettings,
    },
    events::{Events, Hook},
    protocol::access::Settings,
    store::{Command, RecentPair},
};

use super::{rng::Rng, store::SimStore};

/// Groups' members `(group, user)` and settings, as a process starts with them.
pub type GroupsAtStart = (Vec<(String, String)>, Vec<(String, Settings)>);

/// The one node a cluster seed runs.
const NODE: usize = 0;

thread_local! {
    /// The world's clock (Unix ms), which the relayer dates presence and events by.
    static NOW_MS: Cell<u64> = const { Cell::new(0) };
}

fn wall_ms() -> u64 {
    NOW_MS.with(Cell::get)
}

/// The cluster seeds' node: the simulated server, the node's process, and the virtual
/// clock its relayer's deadlines run on.
pub struct ClusterNode {
    cluster: SimCluster,
    /// A paused clock: it moves only when the world moves its own.
    runtime: tokio::runtime::Runtime,
    streams: StreamSettings,
    reactors: usize,
    /// What the relayer reports to the events webhook: users online and offline.
    hooks: Option<mpsc::Receiver<(u64, Hook)>>,
}

/// Where the shards' store commands go.
pub enum Backend {
    /// One node's store.
    Alone(Box<SimStore>),
    /// A cluster node's inboxes and history in JetStream.
    Cluster(Box<ClusterNode>),
}

impl Backend {
    /// A cluster node of `reactors` reactors, its users' inboxes split over `shards`
    /// streams, holding at most `queue_max` unacknowledged events per user and
    /// `sender_quota` unread per sender.
    pub fn cluster(reactors: usize, shards: u16, (queue_max, sender_quota): (u64, u32)) -> Backend {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let shards = Shards::new(shards);
        let streams = sim::streams(queue_max, sender_quota, shards);
        let node = ClusterNode {
            cluster: SimCluster::new(1, shards),
            runtime,
            streams,
            reactors,
            hooks: None,
        };
        Backend::Cluster(Box::new(node))
    }

    /// Whether this is a cluster node.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// Hands the store `command`.
    pub fn send(&mut self, command: Command) {
        match self {
            Backend::Alone(store) => store.send(command),
            Backend::Cluster(node) => node.carry_out(Relay::Inbox(command)),
        }
    }

    /// Hands the cluster what a shard asked of it.
    pub fn relay(&mut self, relay: Relay) {
        match self {
            Backend::Alone(_) => panic!("a single node's shard relayed {relay:?}"),
            Backend::Cluster(node) => node.carry_out(relay),
        }
    }

    /// Whether something waits to move: commands to commit, or operations the server
    /// has not read or delivered.
    pub fn has_work(&self) -> bool {
        match self {
            Backend::Alone(store) => store.has_work(),
            Backend::Cluster(node) => {
                let server = &node.cluster;
                !server.with_unread().is_empty() || !server.with_routed().is_empty()
            }
        }
    }

    /// One step of the store at `now_ms`: a commit, or the server reading or delivering
    /// a few operations (`rng` picks). What the reactors got: `(reactor, what)`.
    /// `Err` if the relayer could not read what the server sent it.
    pub fn step(&mut self, now_ms: u64, rng: &mut Rng) -> Result<Vec<(usize, Inbound)>, String> {
        match self {
            Backend::Alone(store) => Ok(store
                .commit(now_ms)
                .into_iter()
                .map(|(reactor, reply)| (reactor, Inbound::Store(reply)))
                .collect()),
            Backend::Cluster(node) => node.step(rng),
        }
    }

    /// Everything the cluster's reactors were handed: what its relayer gave them and the
    /// group bucket's changes (nothing for one node's store, which answers at commits).
    pub fn take_inbound(&mut self) -> Vec<(usize, Inbound)> {
        match self {
            Backend::Alone(_) => Vec::new(),
            Backend::Cluster(node) => node.take_inbound(),
        }
    }

    /// The world's clock moved `by_ms` to `now_ms`: the relayer's waits that are over
    /// end.
    pub fn clock_moved(&mut self, by_ms: u64, now_ms: u64) {
        if let Backend::Cluster(node) = self {
            NOW_MS.with(|now| now.set(now_ms));
            node.cluster.set_jetstream_clock(now_ms);
            let _entered = node.runtime.enter();
            node.runtime
                .block_on(tokio::time::advance(Duration::from_millis(by_ms)));
            node.cluster.expire_waits(NODE);
        }
    }

    /// What the cluster node reported to the events webhook since last asked (one
    /// node's hooks are the shards' effects).
    pub fn take_hooks(&mut self) -> Vec<Hook> {
        match self {
            Backend::Cluster(node) => node.hooks.as_ref().map_or_else(Vec::new, |hooks| {
                hooks.try_iter().map(|(_, hook)| hook).collect()
            }),
            Backend::Alone(_) => Vec::new(),
        }
    }

    /// The process died: one node's store loses what it had not committed; a cluster
    /// node's connection closes, with what was on its way both ways.
    pub fn crash(&mut self) {
        match self {
            Backend::Alone(store) => store.crash(),
            Backend::Cluster(node) => {
                node.cluster.stop(NODE);
            }
        }
    }

    /// The process starts (again): a cluster node connects and begins its watch of the
    /// group bucket.
    pub fn start(&mut self) {
        if let Backend::Cluster(node) = self {
            let (events, hooks) = Events::to_channel();
            node.hooks = Some(hooks);
            let setup = NodeSetup {
                reactors: node.reactors,
                streams: node.streams,
                wall_ms,
                local_stats: Arc::new(|| b"{}".to_vec()),
                events: Some(events),
            };
            let _entered = node.runtime.enter();
            node.cluster.start(NODE, setup);
            node.cluster.count_alive(1);
        }
    }

    /// The node is cut off from NATS, or comes back; whether it is connected now.
    pub fn cut_or_reconnect(&mut self) -> bool {
        let Backend::Cluster(node) = self else {
            return true;
        };
        let _entered = node.runtime.enter();
        if node.cluster.connected(NODE) {
            node.cluster.cut(NODE);
            false
        } else {
            node.cluster.connect(NODE);
            true
        }
    }

    /// Whether the cluster node is cut off from NATS.
    pub fn cut_off(&self) -> bool {
        matches!(self, Backend::Cluster(node) if !node.cluster.connected(NODE))
    }

    /// The `seq` of every event `user`'s inbox holds after `seq`.
    pub fn kept_after(&self, user: &str, seq: u64) -> Vec<u64> {
        match self {
            Backend::Alone(store) => store.kept_after(user, seq),
            Backend::Cluster(node) => {
                let mut seqs = node.cluster.inbox_seqs(user);
                seqs.retain(|&s| s > seq);
                seqs
            }
        }
    }

    /// The start of the store whose `seq`s are given out now (their high 32 bits) and
    /// every inbox event `(user, seq)` it began with. A cluster's `seq`s are its streams'
    /// sequences, never given twice: one start, whose dedup needs no window to begin
    /// with (the message index recognises a retry).
    pub fn start_and_held(&self) -> (u64, std::collections::HashSet<(String, u64)>) {
        match self {
            Backend::Alone(store) => (store.start(), store.held()),
            Backend::Cluster(_) => (0, Default::default()),
        }
    }

    /// The direct messages the inboxes received since `since_ms`, which the homes'
    /// dedup windows begin with (one node's only: a cluster looks retries up).
    pub fn recent(&self, since_ms: u64) -> Vec<RecentPair> {
        match self {
            Backend::Alone(store) => store.recent(since_ms),
            Backend::Cluster(_) => Vec::new(),
        }
    }

    /// Groups' members and settings the shards begin with (one node's; a cluster
    /// node's come from its watch of the group bucket).
    pub fn groups(&self) -> GroupsAtStart {
        match self {
            Backend::Alone(store) => (store.memberships(), store.group_settings()),
            Backend::Cluster(_) => (Vec::new(), Vec::new()),
        }
    }
}

impl ClusterNode {
    fn carry_out(&mut self, relay: Relay) {
        let _entered = self.runtime.enter();
        self.cluster.carry_out(NODE, relay);
    }

    /// The server reads what the node wrote and delivers what is routed to it: until
    /// nothing is left (as a commit applies everything), all of it once, or a few
    /// operations either way.
    fn step(&mut self, rng: &mut Rng) -> Result<Vec<(usize, Inbound)>, String> {
        let _entered = self.runtime.enter();
        let (rounds, reads, deliveries) = match rng.below(10) {
            0..=3 => (usize::MAX, usize::MAX, usize::MAX),
            4..=6 => (1, usize::MAX, usize::MAX),
            _ => (1, rng.below(4), rng.below(5)),
        };
        for _ in 0..rounds {
            let (unread, routed) = (self.cluster.with_unread(), self.cluster.with_routed());
            if unread.is_empty() && routed.is_empty() {
                break;
            }
            for conn in unread {
                for _ in 0..reads {
                    if !self.cluster.with_unread().contains(&conn) {
                        break;
                    }
                    self.cluster.read_one(conn);
                }
            }
            for conn in routed {
                self.cluster.deliver(conn, deliveries)?;
            }
        }
        Ok(self.take_inbound())
    }

    fn take_inbound(&mut self) -> Vec<(usize, Inbound)> {
        let mut got = self.cluster.take_inbound(NODE);
        got.extend(self.cluster.watch_groups(NODE));
        got
    }
}
