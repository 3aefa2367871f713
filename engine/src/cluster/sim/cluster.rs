//! A simulated cluster: one simulated nats-server with JetStream ([`Nats`]) and the real
//! [`Relayer`] of each node's process, connected to it. Nothing here moves by itself: the
//! simulator that owns it decides each step (which connection the server reads, or
//! delivers to, and how much), when a node is cut off, killed or started again, when
//! the clock moves, and when membership hears of a death. What the relayers hand the
//! reactors waits in their channels until the simulator takes it.
//!
//! What the membership thread (`cluster::node`) does on its own connection is the
//! simulator's to say as well: [`SimCluster::watch_groups`] hands over what the group
//! bucket's watch would, and [`SimCluster::gone`] and [`SimCluster::joined`] what the
//! node bucket's watch would tell the relay.

use std::sync::{atomic::Ordering, mpsc, Arc};

use super::{jetstream::Publish, nats::Nats};
use crate::{
    cluster::{
        inboxes::{self, inbox_subject, StreamSettings, GROUP_BUCKET},
        node::kv_stream,
        relay::{Inbound, Reactors, Relay},
        relayer::Relayer,
        shards::Shards,
        State,
    },
    store::{DoorbellSet, StoreStats},
};

/// Doorbells nobody waits on: the simulator reads the reactors' channels itself.
struct Unrung;

impl DoorbellSet for Unrung {
    fn ring(&self, _: usize) {}
}

/// One process running a node.
struct Process {
    relayer: Relayer,
    /// Its reactors' channels.
    inbound: Vec<mpsc::Receiver<Inbound>>,
    instance: String,
    /// Its connection to the server, while it has one.
    conn: Option<usize>,
    /// What the relayer says of its connection, and the nodes membership counts.
    state: Arc<State>,
    /// The last sequence of the group bucket's stream its watch handed over.
    groups_seen: u64,
}

/// What a node's process starts with.
pub struct NodeSetup {
    /// Its reactors (a user's home is one of them).
    pub reactors: usize,
    /// What its inboxes and history are created with.
    pub streams: StreamSettings,
    /// Its wall clock (Unix ms): presence and inbox events are dated by it.
    pub wall_ms: fn() -> u64,
    /// Its `/api/stats` body, for the other nodes.
    pub local_stats: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
    /// Where it reports users online and offline for the cluster (`--events-webhook`).
    pub events: Option<crate::events::Events>,
}

/// What a simulated node's streams are made with: inboxes of at most
/// `queue_max_per_user` events and `queue_max_per_sender` unread per sender (0: no
/// bound), over `shards` streams, kept 30 days, one copy.
pub fn streams(
    queue_max_per_user: u64,
    queue_max_per_sender: u32,
    shards: Shards,
) -> StreamSettings {
    StreamSettings {
        queue_max_per_user,
        queue_max_per_sender,
        retention: std::time::Duration::from_secs(30 * 86_400),
        replicas: 1,
        shards,
    }
}

/// The simulated server and the nodes' processes on it.
pub struct SimCluster {
    server: Nats,
    /// Per node, its process while it runs.
    processes: Vec<Option<Process>>,
    /// Per node, the processes started for it so far.
    started: Vec<u32>,
    /// How the users' inboxes are split over streams.
    shards: Shards,
}

impl SimCluster {
    /// A server with `nodes` nodes, none running yet, whose inboxes are split over
    /// `shards` streams. The group bucket exists, as the first node's membership makes
    /// it.
    pub fn new(nodes: usize, shards: Shards) -> SimCluster {
        let mut server = Nats::default();
        let config = kv_stream(GROUP_BUCKET, std::time::Duration::ZERO, 1);
        let create = Publish {
            subject: format!("$JS.API.STREAM.CREATE.{}", config.name),
            reply: None,
            headers: Vec::new(),
            payload: serde_json::to_vec(&config)
                .expect("a stream configuration serialises")
                .into(),
        };
        server.jetstream.handle(create);
        SimCluster {
            server,
            processes: (0..nodes).map(|_| None).collect(),
            started: vec![0; nodes],
            shards,
        }
    }

    /// Starts a process for node `node` (a dead one's, or the first), connected; its
    /// instance.
    pub fn start(&mut self, node: usize, setup: NodeSetup) -> String {
        self.stop(node);
        self.started[node] += 1;
        let instance = format!("n{node}-{}", self.started[node]);
        let (senders, inbound): (Vec<_>, Vec<_>) =
            (0..setup.reactors).map(|_| mpsc::channel()).unzip();
        let reactors = Reactors {
            senders,
            doorbells: Arc::new(Unrung),
        };
        let stores = (setup.streams, Arc::new(StoreStats::default()));
        let me = (
            &*format!("n{node}"),
            &*instance,
            format!("_INBOX.{instance}."),
        );
        let state = Arc::new(State::default());
        // Membership's claim of the node id, which the simulators do not run.
        state.claimed.store(true, Ordering::Release);
        let relayer = Relayer::new(me, (reactors, stores), (state.clone(), setup.local_stats))
            .with_wall_clock(setup.wall_ms)
            .with_events(setup.events);
        self.processes[node] = Some(Process {
            relayer,
            inbound,
            instance: instance.clone(),
            conn: None,
            state,
            groups_seen: 0,
        });
        self.connect(node);
        instance
    }

    /// Node `node`'s process dies (killed, or gone on SIGTERM): its connection closes
    /// with what it had written unread and what was on its way to it. Its instance, if
    /// it ran.
    pub fn stop(&mut self, node: usize) -> Option<String> {
        let process = self.processes[node].take()?;
        if let Some(conn) = process.conn {
            self.server.close(conn);
        }
        Some(process.instance)
    }

    /// Node `node`'s process connects to the server: its subscriptions, then what it
    /// says again after a reconnect.
    pub fn connect(&mut self, node: usize) {
        let conn = self.server.connect();
        let Some(process) = self.processes[node].as_mut() else {
            return;
        };
        process.conn = Some(conn);
        process.state.relay_connected.store(true, Ordering::Release);
        let subscriptions = process.relayer.subscriptions();
        self.server.write(conn, &subscriptions);
        process.relayer.reconnected();
        self.flush(node);
    }

    /// Node `node`'s process is cut off from the server: what it had written unread and
    /// what was on its way to it are lost, and its relayer hears the connection closed.
    pub fn cut(&mut self, node: usize) {
        let Some(process) = self.processes[node].as_mut() else {
            return;
        };
        let Some(conn) = process.conn.take() else {
            return;
        };
        self.server.close(conn);
        process
            .state
            .relay_connected
            .store(false, Ordering::Release);
        process.relayer.disconnected();
        process.relayer.take_written();
    }

    /// Whether node `node` has a process running.
    pub fn running(&self, node: usize) -> bool {
        self.processes[node].is_some()
    }

    /// Whether node `node`'s process is connected to the server.
    pub fn connected(&self, node: usize) -> bool {
        self.process(node).is_some_and(|p| p.conn.is_some())
    }

    /// Node `node`'s connection to the server, while it has one.
    pub fn conn(&self, node: usize) -> Option<usize> {
        self.process(node).and_then(|p| p.conn)
    }

    /// The instance running node `node`, if one does.
    pub fn instance(&self, node: usize) -> Option<&str> {
        self.process(node).map(|p| p.instance.as_str())
    }

    /// Hands node `node`'s relayer what a shard (or the store's interface) asked.
    pub fn carry_out(&mut self, node: usize, relay: Relay) {
        let Some(process) = self.processes[node].as_mut() else {
            return;
        };
        let connected = process.conn.is_some();
        process.relayer.carry_out(relay, connected);
        self.flush(node);
    }

    /// What node `node`'s relayer handed its reactors since last asked: `(reactor,
    /// what)`, reactor by reactor.
    pub fn take_inbound(&mut self, node: usize) -> Vec<(usize, Inbound)> {
        let Some(process) = self.process(node) else {
            return Vec::new();
        };
        let mut got = Vec::new();
        for (reactor, channel) in process.inbound.iter().enumerate() {
            got.extend(channel.try_iter().map(|inbound| (reactor, inbound)));
        }
        got
    }

    /// The open connections with operations the server has not read yet.
    pub fn with_unread(&self) -> Vec<usize> {
        self.server.with_unread()
    }

    /// The server reads connection `conn`'s next operation and carries it out.
    pub fn read_one(&mut self, conn: usize) {
        self.server.read_one(conn);
    }

    /// The open connections with operations routed to them and not delivered yet.
    pub fn with_routed(&self) -> Vec<usize> {
        self.server.with_routed()
    }

    /// The server hands connection `conn` up to `count` of the operations routed to it,
    /// and its node's relayer reads them. `Err` if the relayer could not.
    pub fn deliver(&mut self, conn: usize, count: usize) -> Result<(), String> {
        let Some(node) = self.node_of(conn) else {
            return Ok(());
        };
        let mut bytes = self.server.deliver(conn, count);

        let Some(process) = self.processes[node].as_mut() else {
            return Ok(());
        };
        process
            .relayer
            .take_ops(&mut bytes)
            .map_err(|e| format!("n{node} could not read the server: {e}"))?;
        self.flush(node);
        Ok(())
    }

    /// The node whose process has connection `conn`.
    pub fn node_of(&self, conn: usize) -> Option<usize> {
        (0..self.processes.len()).find(|&n| self.process(n).is_some_and(|p| p.conn == Some(conn)))
    }

    /// Node `node`'s relayer ends its waits that are over (questions, calls, requests
    /// to JetStream), by the virtual clock the simulator moved.
    pub fn expire_waits(&mut self, node: usize) {
        if let Some(process) = self.processes[node].as_mut() {
            process.relayer.expire_waits();
            self.flush(node);
        }
    }

    /// The simulated JetStream's clock (Unix ms): what it keeps is dated by it.
    pub fn set_jetstream_clock(&mut self, now_ms: u64) {
        self.server.jetstream.now_ms = now_ms;
    }

    /// Node `node` hears from membership that `instance` is gone.
    pub fn gone(&mut self, node: usize, instance: &str) {
        if let Some(process) = self.processes[node].as_mut() {
            process.relayer.gone(instance);
            self.flush(node);
        }
    }

    /// Node `node` hears from membership that `instance` beats.
    pub fn joined(&mut self, node: usize, instance: &str) {
        if let Some(process) = self.processes[node].as_mut() {
            process.relayer.joined(instance);
            self.flush(node);
        }
    }

    /// Every running process hears from membership that `alive` nodes are alive.
    pub fn count_alive(&mut self, alive: u32) {
        for process in self.processes.iter().flatten() {
            process.state.nodes.store(alive, Ordering::Release);
        }
    }

    /// What node `node`'s watch of the group bucket hands its reactors now: each change
    /// stored since it last looked (from the bucket's start for a process just started,
    /// which is each key's last value, the bucket keeping one).
    pub fn watch_groups(&mut self, node: usize) -> Vec<(usize, Inbound)> {
        let Some(process) = self.processes[node].as_mut() else {
            return Vec::new();
        };
        let stream = format!("KV_{GROUP_BUCKET}");
        let prefix = format!("$KV.{GROUP_BUCKET}.");
        let reactors = process.inbound.len();
        let mut changes = Vec::new();
        for (seq, stored) in self
            .server
            .jetstream
            .stored_after(&stream, process.groups_seen)
        {
            process.groups_seen = seq;
            let Some(key) = stored.subject.strip_prefix(&prefix) else {
                continue;
            };
            let put = stored.header("KV-Operation").is_none();
            if let Some((home, change)) = inboxes::group_change(key, put, &stored.payload, reactors)
            {
                changes.push((home, Inbound::Mail(change)));
            }
        }
        changes
    }

    /// The `seq` of every event `user`'s inbox stream holds now.
    pub fn inbox_seqs(&self, user: &str) -> Vec<u64> {
        let stream = Shards::stream("CHAT_INBOX", self.shards.of(user));
        let subject = inbox_subject(self.shards, user);
        let held = self.server.jetstream.held(&stream, &subject);
        held.into_iter().map(|(seq, _)| seq).collect()
    }

    fn process(&self, node: usize) -> Option<&Process> {
        self.processes[node].as_ref()
    }

    /// Hands what node `node`'s relayer wrote to the server (nothing, while it is cut
    /// off).
    fn flush(&mut self, node: usize) {
        let Some(process) = self.processes[node].as_mut() else {
            return;
        };
        let written = process.relayer.take_written();

        if let Some(conn) = process.conn {
            self.server.write(conn, &written);
        }
    }
}
