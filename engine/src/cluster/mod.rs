//! Clusters on NATS (PROTOCOL.md "Clusters"; the design and its failure modes are in
//! docs/cluster.md). With `--cluster`, a node joins its peers through NATS: it claims its
//! `--node-id` in a JetStream key-value bucket (a second node with the same id is refused),
//! beats there every [`HEARTBEAT`], and watches the bucket to know which nodes are alive.
//!
//! All of it runs on one `cluster` thread with its own tokio runtime (the NATS client,
//! async-nats, needs one); no reactor ever waits on it. The reactors and the HTTP
//! endpoints read what it knows from [`State`], a few atomics.
//!
//! - `members`: which nodes are alive, as a rule without I/O;
//! - `node`: the thread's work: connecting with backoff, the claim, the heartbeat, the
//!   watch, and leaving on shutdown;
//! - `relay`, `relayer`, `wire`: live events and presence between nodes over the relay's
//!   own NATS connection; `presence`: which other nodes hold the users watched here;
//!   `presence_events`: which node reports a user online or offline to the events
//!   webhook; `holdings`: the users each node holds, kept for when it dies;
//! - `inboxes`: the users' inboxes in JetStream, behind the store's interface;
//!   `history`: the conversations and the message index there, likewise; `acks`:
//!   how far each user's devices acknowledged, and which acknowledged events stay;
//!   `seen`: the inbox events seen live, which an ack takes without reading the stream;
//!   `requests`: their requests to JetStream and what waits on each answer;
//!   `received`: the message index's names and formats, which both use; `shards`: which
//!   stream of each kind holds a user's or a conversation's state;
//! - `totals`: every node's `/api/stats` figures summed;
//! - `tls`: TLS to NATS; `sim` (tests, and feature `simulation`): a simulated
//!   nats-server with JetStream, the real relayers of nodes on it, and the simulators
//!   that drive them.

mod acks;
mod history;
mod holdings;
mod inboxes;
mod members;
mod node;
mod not_kept;
mod pairs;
mod presence;
mod presence_events;
mod received;
pub mod relay;
mod relayer;
mod requests;
mod seen;
mod shards;
#[cfg(any(test, feature = "simulation"))]
pub mod sim;
mod tls;
mod totals;
mod unread;
mod wire;

use std::{
    io,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc, OnceLock,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracing::warn;

pub use inboxes::StreamSettings;
pub use shards::{Shards, SHARDS_MAX};
pub use tls::TlsFiles;

/// How often a node beats in the node bucket.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// The longest a node id may be.
pub const NODE_ID_MAX: usize = 64;
/// Backoff between attempts at what needs NATS: doubles from the first, up to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How long [`start`] waits for the claim before the engine goes on, not ready, while the
/// thread keeps trying.
const CLAIM_WAIT: Duration = Duration::from_secs(3);

/// `--cluster` and `--node-id`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The NATS servers, as given (`nats://host:port`).
    pub servers: Vec<String>,
    /// This node's id; `None`: the host name and the listen port, fixed at start.
    pub node_id: Option<String>,
    /// `--cluster-replicas`: the copies JetStream keeps of each stream the node makes.
    pub replicas: u8,
    /// `--cluster-shards`: the streams of each kind the users are split over.
    pub shards: Shards,
    /// `--cluster-ca`, `--cluster-cert`, `--cluster-key`: TLS to NATS.
    pub tls: TlsFiles,
}

impl Settings {
    /// Checks the two flags: `Ok(None)` when the gateway runs alone. An error names the
    /// flag and the problem.
    pub fn parse(
        cluster: Option<String>,
        node_id: Option<String>,
    ) -> Result<Option<Settings>, (&'static str, String)> {
        let Some(cluster) = cluster else {
            return match node_id {
                Some(_) => Err(("node-id", "needs --cluster".into())),
                None => Ok(None),
            };
        };
        let servers: Vec<String> = cluster
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if servers.is_empty() {
            return Err(("cluster", "names no NATS server".into()));
        }
        for server in &servers {
            if !server.starts_with("nats://") && !server.starts_with("tls://") {
                return Err((
                    "cluster",
                    format!("'{server}' is not a nats://HOST:PORT or tls://HOST:PORT URL"),
                ));
            }
            async_nats::ServerAddr::from_str(server)
                .map_err(|e| ("cluster", format!("'{server}' is not a NATS URL: {e}")))?;
        }
        if let Some(id) = &node_id {
            check_node_id(id).map_err(|problem| ("node-id", problem))?;
        }
        Ok(Some(Settings {
            servers,
            node_id,
            replicas: 1,
            shards: Shards::new(1),
            tls: TlsFiles::default(),
        }))
    }

    /// The node id: the one given, else the host name (dots made dashes) and `port`.
    pub fn node_id_for(&self, port: u16) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "node".into());
        let host: String = host
            .chars()
            .map(|c| if node_id_char(c) { c } else { '-' })
            .take(NODE_ID_MAX - 6)
            .collect();
        format!("{host}-{port}")
    }
}

/// A node id is one NATS subject token and one key-value key: letters, digits, `-`, `_`.
fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > NODE_ID_MAX || !id.chars().all(node_id_char) {
        return Err(format!(
            "'{id}' is not a node id: 1 to {NODE_ID_MAX} letters, digits, - or _"
        ));
    }
    Ok(())
}

fn node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// What the rest of the engine reads about the cluster (written by the cluster thread).
#[derive(Debug, Default)]
pub struct State {
    node_id: OnceLock<Box<str>>,
    /// The membership client is connected to a NATS server now.
    connected: AtomicBool,
    /// The live relay's own connection is up now.
    relay_connected: AtomicBool,
    /// This node holds its id in the node bucket.
    claimed: AtomicBool,
    /// Another running node holds this node's id: it must not serve.
    refused: AtomicBool,
    /// Live nodes, this one included.
    nodes: AtomicU32,
}

impl State {
    /// This node's id (empty until the cluster thread started).
    pub fn node_id(&self) -> &str {
        self.node_id.get().map_or("", |id| id)
    }

    /// Whether the node is connected to NATS: both its connections, membership's and
    /// the live relay's, are up.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) && self.relay_connected.load(Ordering::Acquire)
    }

    /// Whether the node may serve: connected, and its id is its own.
    pub fn ready(&self) -> bool {
        self.connected() && self.claimed.load(Ordering::Acquire)
    }

    /// Whether another running node holds this node's id.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }

    /// Live nodes, this one included (0 until the node has joined).
    pub fn nodes(&self) -> u32 {
        self.nodes.load(Ordering::Acquire)
    }
}

/// How the claim on the node id went, as [`start`] first hears it.
enum Claim {
    /// The id is this node's.
    Held,
    /// A running node holds it.
    Refused(String),
}

/// The running cluster thread.
pub struct Cluster {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The cluster thread's side of the reactors' links.
pub struct Link {
    /// Where it delivers to each reactor.
    pub reactors: relay::Reactors,
    /// What their shards (and their stores' inbox commands) ask of it...
    pub relays: mpsc::Receiver<relay::Relay>,
    /// ...and the doorbell they ring after asking.
    pub doorbell: Arc<crate::sockets::Doorbell>,
    /// This node's `/api/stats` figures, for the other nodes.
    pub local_stats: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
    /// What the streams are created with.
    pub streams: StreamSettings,
    /// The store's counters, which count what history keeps in JetStream too.
    pub store_stats: Arc<crate::store::StoreStats>,
    /// The events webhook (`--events-webhook`), for the users online and offline the
    /// cluster, not one node, reports.
    pub events: Option<crate::events::Events>,
}

/// Starts the cluster thread for node `node_id` and waits up to 3 s for its
/// claim on the id. A running node with the same id fails the start; NATS unreachable
/// does not (the thread retries with backoff, and the node is not ready meanwhile).
pub fn start(
    settings: &Settings,
    node_id: String,
    state: Arc<State>,
    link: Link,
) -> io::Result<Cluster> {
    // The id is fixed once per process: a second start keeps the first.
    let _ = state.node_id.set(node_id.clone().into_boxed_str());
    let (claimed, claim) = mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let tls = tls::client_config(&settings.tls)
        .map_err(|(flag, problem)| io::Error::other(format!("--{flag}: {problem}")))?;
    let streams = (settings.replicas, settings.shards);
    let servers = (settings.servers.clone(), streams, tls);
    let thread = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = claimed.send(Claim::Refused(format!("no runtime: {e}")));
                    return;
                }
            };
            let node = node::Node::new(servers, node_id, state, claimed);
            runtime.block_on(node.run(link, stopped));
        })?;
    let cluster = Cluster {
        stop: Some(stop),
        thread: Some(thread),
    };
    match claim.recv_timeout(CLAIM_WAIT) {
        Ok(Claim::Held) => Ok(cluster),
        Ok(Claim::Refused(why)) => Err(io::Error::other(why)),
        Err(_) => {
            warn!("cluster: not joined yet (is NATS reachable?); retrying, not ready meanwhile");
            Ok(cluster)
        }
    }
}

impl Cluster {
    /// Leaves the cluster: the node's key is deleted, so the others count it gone at once
    /// rather than after 10 s of silence.
    pub fn stop(mut self) {
        self.leave();
    }

    fn leave(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The wait before attempt `attempts + 1`.
fn backoff(attempts: u32) -> Duration {
    let (first, last) = BACKOFF;
    first.saturating_mul(1 << attempts.min(16)).min(last)
}

/// 16 random hex digits (std's random hash keys, and the time).
fn instance_token_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        assert_eq!(backoff(0), BACKOFF.0);
        assert_eq!(backoff(1), BACKOFF.0 * 2);
        assert_eq!(backoff(40), BACKOFF.1);
    }

    #[test]
    fn no_cluster_means_alone_and_a_node_id_alone_is_an_error() {
        assert_eq!(Settings::parse(None, None), Ok(None));
        assert_eq!(
            Settings::parse(None, Some("a".into())).unwrap_err().0,
            "node-id"
        );
    }

    #[test]
    fn servers_are_split_and_checked() {
        let settings = Settings::parse(
            Some("nats://127.0.0.1:4222, nats://10.0.0.2:4222".into()),
            Some("gw-1".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(settings.servers.len(), 2);
        assert_eq!(settings.node_id_for(8080), "gw-1");
        for bad in ["", " , ", "http://x:1", "127.0.0.1:4222", "wss://x:4222"] {
            let (flag, problem) = Settings::parse(Some(bad.into()), None).unwrap_err();
            assert_eq!(flag, "cluster", "{bad}: {problem}");
        }
    }

    #[test]
    fn node_ids_are_one_subject_token() {
        for bad in ["", "a.b", "a b", "a*", ">", &"x".repeat(NODE_ID_MAX + 1)] {
            let parsed = Settings::parse(Some("nats://h:1".into()), Some(bad.into()));
            assert_eq!(parsed.unwrap_err().0, "node-id", "{bad}");
        }
        let settings = Settings::parse(Some("nats://h:1".into()), None)
            .unwrap()
            .unwrap();
        let id = settings.node_id_for(9000);
        assert!(id.ends_with("-9000"), "{id}");
        assert!(check_node_id(&id).is_ok(), "{id}");
    }
}
