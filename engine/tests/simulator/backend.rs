//! What the shards' store commands go to: one node's store ([`SimStore`], a model of
//! what the redb store promises), or the nodes of a cluster, each with the real relayer
//! (its inboxes, history and presence) on one simulated nats-server with JetStream
//! ([`SimCluster`]).
//!
//! A cluster seed runs one to three nodes, each as `--cluster` runs it: every store command
//! and every relay a node's shard asks for goes to that node's relayer in the order
//! asked, as the one channel to the cluster thread carries them; what the relayer hands
//! the reactors (store answers, live deliveries, the group bucket's changes) comes back
//! through their channels. The server reads and delivers at the steps the world picks, a
//! node is cut off from NATS and comes back, and a crash is a `kill -9` of one node's
//! process: JetStream keeps everything, the process that starts again begins with nothing
//! but what it reads there, and the other nodes hear it is gone when membership would
//! count it dead, 10 s later.

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

/// How long membership takes to count a silent node dead (`cluster::node`).
const DEAD_AFTER_MS: u64 = 10_000;

thread_local! {
    /// The world's clock (Unix ms), which the relayers date presence and events by.
    static NOW_MS: Cell<u64> = const { Cell::new(0) };
}

fn wall_ms() -> u64 {
    NOW_MS.with(Cell::get)
}

/// Groups' members `(group, user)` and settings, as a process starts with them.
pub type GroupsAtStart = (Vec<(String, String)>, Vec<(String, Settings)>);

/// What a node's reactor was handed: `(node, reactor, what)`.
pub type Handed = Vec<(usize, usize, Inbound)>;

/// What membership tells a node's process at `at_ms`: another node's instance is gone,
/// or beats.
struct News {
    at_ms: u64,
    to: usize,
    /// The process that is to hear it (a later one never knew the instance).
    to_instance: String,
    instance: String,
    joined: bool,
}

/// The cluster seeds' nodes: the simulated server, the nodes' processes, and the
/// virtual clock their relayers' deadlines run on.
pub struct ClusterNodes {
    cluster: SimCluster,
    /// A paused clock: it moves only when the world moves its own.
    runtime: tokio::runtime::Runtime,
    streams: StreamSettings,
    reactors: usize,
    /// Per node, what its relayer reports to the events webhook.
    hooks: Vec<Option<mpsc::Receiver<(u64, Hook)>>>,
    /// Per node, the instance of its process that died last, which its next one takes
    /// the node id over from.
    dead: Vec<Option<String>>,
    news: Vec<News>,
}

/// Where the shards' store commands go.
pub enum Backend {
    /// One node's store.
    Alone(Box<SimStore>),
    /// A cluster's nodes, their inboxes and history in JetStream.
    Cluster(Box<ClusterNodes>),
}

impl Backend {
    /// A cluster of `nodes` nodes of `reactors` reactors each, its users' inboxes split
    /// over `shards` streams, holding at most `queue_max` unacknowledged events per user
    /// and `sender_quota` unread per sender.
    pub fn cluster(
        (nodes, reactors): (usize, usize),
        shards: u16,
        (queue_max, sender_quota): (u64, u32),
    ) -> Backend {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let shards = Shards::new(shards);
        let cluster = ClusterNodes {
            cluster: SimCluster::new(nodes, shards),
            runtime,
            streams: sim::streams(queue_max, sender_quota, shards),
            reactors,
            hooks: (0..nodes).map(|_| None).collect(),
            dead: vec![None; nodes],
            news: Vec::new(),
        };
        Backend::Cluster(Box::new(cluster))
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// Hands node `node`'s store `command`.
    pub fn send(&mut self, node: usize, command: Command) {
        match self {
            Backend::Alone(store) => store.send(command),
            Backend::Cluster(nodes) => nodes.carry_out(node, Relay::Inbox(command)),
        }
    }

    /// Hands node `node`'s cluster thread what a shard asked of it.
    pub fn relay(&mut self, node: usize, relay: Relay) {
        match self {
            Backend::Alone(_) => panic!("a single node's shard relayed {relay:?}"),
            Backend::Cluster(nodes) => nodes.carry_out(node, relay),
        }
    }

    /// Whether something waits to move: commands to commit, or operations the server
    /// has not read or delivered.
    pub fn has_work(&self) -> bool {
        match self {
            Backend::Alone(store) => store.has_work(),
            Backend::Cluster(nodes) => {
                let server = &nodes.cluster;
                !server.with_unread().is_empty() || !server.with_routed().is_empty()
            }
        }
    }

    /// One step of the store at `now_ms`: a commit, or the server reading or delivering
    /// (`rng` picks how much); what the reactors were handed. `Err` if a relayer could
    /// not read what the server sent it.
    pub fn step(&mut self, now_ms: u64, rng: &mut Rng) -> Result<Handed, String> {
        match self {
            Backend::Alone(store) => Ok(store
                .commit(now_ms)
                .into_iter()
                .map(|(reactor, reply)| (0, reactor, Inbound::Store(reply)))
                .collect()),
            Backend::Cluster(nodes) => nodes.step(rng),
        }
    }

    /// Everything the cluster's reactors were handed: what the relayers gave them and the
    /// group bucket's changes (nothing for one node's store, which answers at commits).
    pub fn take_inbound(&mut self) -> Handed {
        match self {
            Backend::Alone(_) => Vec::new(),
            Backend::Cluster(nodes) => nodes.take_inbound(),
        }
    }

    /// What the cluster's nodes' relayers reported to the events webhook since last
    /// asked, by node, with when each was dated (one node's hooks are the shards' effects).
    pub fn take_hooks(&mut self) -> Vec<(usize, Hook, u64)> {
        let Backend::Cluster(nodes) = self else {
            return Vec::new();
        };
        let mut hooks = Vec::new();
        for (node, posted) in nodes.hooks.iter().enumerate() {
            let posted = posted.iter().flat_map(|posted| posted.try_iter());
            hooks.extend(posted.map(|(at_ms, hook)| (node, hook, at_ms)));
        }
        hooks
    }

    /// The world's clock moved `by_ms` to `now_ms`: membership's news that are due reach
    /// the nodes, and the relayers' waits that are over end.
    pub fn clock_moved(&mut self, by_ms: u64, now_ms: u64) {
        if let Backend::Cluster(nodes) = self {
            NOW_MS.with(|now| now.set(now_ms));
            nodes.cluster.set_jetstream_clock(now_ms);
            let _entered = nodes.runtime.enter();
            nodes
                .runtime
                .block_on(tokio::time::advance(Duration::from_millis(by_ms)));
            nodes.tell_news(now_ms);
            for node in 0..nodes.hooks.len() {
                nodes.cluster.expire_waits(node);
            }
        }
    }

    /// Node `node`'s process died: one node's store loses what it had not committed; a
    /// cluster node's connection closes, with what was on its way both ways, and the
    /// other nodes hear it is gone 10 s later.
    pub fn crash(&mut self, node: usize, now_ms: u64) {
        match self {
            Backend::Alone(store) => store.crash(),
            Backend::Cluster(nodes) => {
                if let Some(instance) = nodes.cluster.stop(node) {
                    nodes.tell_others(node, &instance, (false, now_ms + DEAD_AFTER_MS));
                    nodes.dead[node] = Some(instance);
                }
                nodes.hooks[node] = None;
            }
        }
    }

    /// Node `node`'s process starts (again): a cluster node connects and begins its watch
    /// of the group bucket, the other nodes hear it beats, and it hears that the process
    /// it took the node id over from is gone.
    pub fn start(&mut self, node: usize, now_ms: u64) {
        if let Backend::Cluster(nodes) = self {
            let (events, hooks) = Events::to_channel();
            nodes.hooks[node] = Some(hooks);
            let setup = NodeSetup {
                reactors: nodes.reactors,
                streams: nodes.streams,
                wall_ms,
                local_stats: Arc::new(|| b"{}".to_vec()),
                events: Some(events),
            };
            let _entered = nodes.runtime.enter();
            let instance = nodes.cluster.start(node, setup);
            nodes.tell_others(node, &instance, (true, now_ms));
            // Taking the node id over, membership says the dead instance is gone.
            if let Some(dead) = nodes.dead[node].take() {
                nodes.cluster.gone(node, &dead);
            }
            let alive = (0..nodes.hooks.len())
                .filter(|&n| nodes.cluster.running(n))
                .count();
            nodes.cluster.count_alive(alive as u32);
        }
    }

    /// Node `node` is cut off from NATS, or comes back; whether it is connected now.
    pub fn cut_or_reconnect(&mut self, node: usize) -> bool {
        let Backend::Cluster(nodes) = self else {
            return true;
        };
        let _entered = nodes.runtime.enter();
        if nodes.cluster.connected(node) {
            nodes.cluster.cut(node);
            false
        } else {
            nodes.cluster.connect(node);
            true
        }
    }

    /// The cluster's nodes cut off from NATS.
    pub fn cut_off(&self) -> Vec<usize> {
        match self {
            Backend::Cluster(nodes) => (0..nodes.hooks.len())
                .filter(|&n| !nodes.cluster.connected(n))
                .collect(),
            Backend::Alone(_) => Vec::new(),
        }
    }

    /// The `seq` of every event `user`'s inbox holds after `seq`.
    pub fn kept_after(&self, user: &str, seq: u64) -> Vec<u64> {
        match self {
            Backend::Alone(store) => store.kept_after(user, seq),
            Backend::Cluster(nodes) => {
                let mut seqs = nodes.cluster.inbox_seqs(user);
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

impl ClusterNodes {
    fn carry_out(&mut self, node: usize, relay: Relay) {
        let _entered = self.runtime.enter();
        self.cluster.carry_out(node, relay);
    }

    /// The server reads what the nodes wrote and delivers what is routed to them: until
    /// nothing is left (as a commit applies everything), all of it once, or a few
    /// operations either way.
    fn step(&mut self, rng: &mut Rng) -> Result<Handed, String> {
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

    fn take_inbound(&mut self) -> Handed {
        let mut handed = Vec::new();
        for node in 0..self.hooks.len() {
            let got = self.cluster.take_inbound(node).into_iter();
            let watched = self.cluster.watch_groups(node).into_iter();
            handed.extend(
                got.chain(watched)
                    .map(|(reactor, what)| (node, reactor, what)),
            );
        }
        handed
    }

    /// Every other running node hears at `at_ms` that `instance` (node `node`'s) beats
    /// (`joined`) or is gone.
    fn tell_others(&mut self, node: usize, instance: &str, (joined, at_ms): (bool, u64)) {
        for other in (0..self.hooks.len()).filter(|&n| n != node) {
            if let Some(to_instance) = self.cluster.instance(other) {
                self.news.push(News {
                    at_ms,
                    to: other,
                    to_instance: to_instance.to_owned(),
                    instance: instance.to_owned(),
                    joined,
                });
            }
        }
    }

    /// Hands the nodes what membership says by `now_ms`, in the order it happened.
    fn tell_news(&mut self, now_ms: u64) {
        let (mut due, later): (Vec<News>, Vec<News>) = std::mem::take(&mut self.news)
            .into_iter()
            .partition(|news| news.at_ms <= now_ms);
        self.news = later;
        due.sort_by_key(|news| news.at_ms);
        for news in due {
            if self.cluster.instance(news.to) != Some(&*news.to_instance) {
                continue;
            }
            match news.joined {
                true => self.cluster.joined(news.to, &news.instance),
                false => self.cluster.gone(news.to, &news.instance),
            }
        }
    }
}
