//! A thread-per-core WebSocket chat gateway.
//!
//! ```text
//! main.rs ── config (every setting declared once) ── Engine::start
//!                                                     │ one thread per reactor
//! client ─► reactor (the driver): SO_REUSEPORT listener, slab of connections, sockets
//!            read into the reactor's buffer ─► http::request | ws::frame (unmask in place)
//!            ─► protocol::inbound (simd-json tape) ─► auth checked here, then an Event
//!
//!            shard: the chat protocol as a state machine, no socket, clock or thread
//!              handle(clock, event, effects): client messages, connections opened and
//!              closed, envelopes, store answers ─► effects: envelopes to mail, store
//!              commands, errors for a connection
//!              home side: directory, inbox numbering (seq), presence and its grace,
//!              dedup, groups; connection side: what each message turns into,
//!              subscriptions, huddle rooms
//!
//!            the driver carries out the effects: mailbox rings to the other reactors
//!            (mail to itself goes straight back to its shard), store commands, frames
//!            ─► protocol::outbound + ws::frame::encode (once, shared Bytes) ─► socket
//!            store thread (redb inboxes and history, group commit; every ack after its
//!            commit) ─► answers back to the reactor's shard or driver; a device reads its
//!            inbox after auth (the first page brings auth_success), holding live frames
//! ```
//!
//! Modules:
//! - [`config`]: the command line, its validation, and the settings table.
//! - [`reactor`]: the driver: threads, runtime, connection lifecycle, frames, auth, the
//!   HTTP API, a device's inbox catch-up, limits; the only code that touches sockets,
//!   rings, timers and mailboxes.
//! - [`shard`]: the chat protocol as a state machine, one file per feature; driven by the
//!   reactor, and by the deterministic simulator in `tests/simulator.rs`.
//! - [`sockets`]: where a reactor's sockets live (io_uring direct descriptors, or the fd
//!   table with epoll) and their readiness; the loadgen uses it too.
//! - [`ws`], [`http`], [`protocol`]: pure codecs (bytes in, values out); `protocol::codes`
//!   has the typed message kinds and error codes.
//! - [`conn`]: one connection's state and outbound queue (a reactor's slab holds them; an
//!   authenticated one travels in an envelope to its user's home reactor).
//! - [`router`]: homes, connection addresses and the envelopes reactors mail each other;
//!   [`mailbox`]: rings and doorbells between reactors.
//! - [`store`]: the durable inboxes, history and groups on their own thread;
//!   [`push`]: the push hook's thread.
//! - [`cluster`]: `--cluster`: membership in a JetStream bucket and the live relay over
//!   NATS, on the cluster thread (docs/cluster.md).
//! - [`timer`]: the per-reactor timer wheel; [`stats`]: per-reactor counters.
//! - [`shutdown`]: signals and the drain; [`check`]: the host check (`engine check`);
//!   [`failpoint`]: faults for tests.
#![warn(missing_docs, unreachable_pub)]

// Fault isolation (`Reactor::isolate`) contains a handler's panic with `catch_unwind`,
// which a build with `panic = "abort"` would silently turn into a whole-gateway abort.
#[cfg(panic = "abort")]
compile_error!("the engine needs panic = \"unwind\": its fault isolation catches panics");

pub mod check;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod events;
pub mod failpoint;
pub mod http;
pub mod mailbox;
pub mod protocol;
pub mod push;
pub mod reactor;
pub mod router;
pub mod shard;
pub mod shutdown;
pub use uring_sockets as sockets;
pub mod stats;
pub mod store;
pub mod timer;
pub mod tls;
pub mod ws;

use std::{
    io,
    net::SocketAddr,
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::Duration,
};

use config::Config;
use reactor::{ReactorSeed, Shared};

/// A running engine: its reactors, its store thread, and the address they listen on.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    store: store::Store,
    store_thread: JoinHandle<()>,
    cluster: Option<cluster::Cluster>,
    local_addr: SocketAddr,
}

impl Engine {
    /// Starts every reactor and returns once all of them listen.
    ///
    /// Reactor 0 binds first, so that port 0 resolves to one port the others then share.
    pub fn start(config: Config) -> io::Result<Engine> {
        let reactors = config.reactors;
        let mut listen = config.listen;
        let shared = Arc::new(Shared::new(config)?);
        let (reply_senders, mut reply_receivers): (Vec<_>, Vec<_>) =
            (0..reactors).map(|_| mpsc::channel()).unzip();
        // The push hook's thread is the engine's; the store hands it what it queues.
        let push = match shared.config.push_webhook.clone() {
            Some(webhook) => {
                let stats = Default::default();
                Some(push::start(webhook, shared.config.push_preview, stats)?)
            }
            None => None,
        };
        let routes = store::ReplyRoutes {
            senders: reply_senders,
            doorbells: shared.clone(),
        };
        // Each home's window is seeded with the newest of its share; more than all of
        // them hold is not read (and at most 2^20 in all, to bound start-up).
        let recent_max = (reactors * shared.config.dedup_window_pairs).min(1 << 20);
        let opened = store::open(
            &shared.config.data_dir,
            store::Limits {
                queue_max_per_user: shared.config.queue_max_per_user,
                retention: shared.config.retention,
                cache_bytes: shared.config.store_cache_bytes,
                commit_spacing: shared.config.store_commit_spacing,
                commit_delay: failpoint::Failpoint::commit_delay(shared.config.failpoint.as_ref()),
                failed_checkpoints: failpoint::Failpoint::failed_checkpoints(
                    shared.config.failpoint.as_ref(),
                ),
                recent: (
                    Duration::from_millis(shard::dedup::WINDOW_AGE_MS),
                    recent_max,
                ),
            },
            routes,
            push,
        )
        .map_err(|e| {
            io::Error::other(format!(
                "cannot open the store in {}: {e}",
                shared.config.data_dir.display()
            ))
        })?;
        let store::Opened {
            store,
            thread: store_thread,
            groups: stored_groups,
            recent,
        } = opened;
        let mut groups: Vec<shard::groups_state::Groups> =
            (0..reactors).map(|_| Default::default()).collect();
        for (group, user) in stored_groups.members {
            shared.user_groups.count_anyway(&user, &group);
            groups[router::home_of(&group, reactors)].join(&group, user.into());
        }
        for (group, settings) in stored_groups.settings {
            groups[router::home_of(&group, reactors)].set_settings(&group, settings);
        }
        let mut groups = groups.into_iter();
        let mut recent_by_home: Vec<Vec<store::RecentPair>> = vec![Vec::new(); reactors];
        for pair in recent {
            recent_by_home[router::home_of(&pair.user, reactors)].push(pair);
        }
        let mut recent_by_home = recent_by_home.into_iter();
        let (links, relayed, shared_store) = cluster_channels(&shared, &store.stats)?;
        // A cluster node keeps its users' inboxes in JetStream; the rest stays in the file.
        let store = match shared_store {
            Some(host) => store.with_shared_store(host),
            None => store,
        };
        let mut links = links.into_iter();
        let (producers, consumers) = mailbox::rings(reactors);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(reactors);
        for (id, (producers, consumers)) in producers.into_iter().zip(consumers).enumerate() {
            let seed = ReactorSeed {
                id,
                shared: shared.clone(),
                producers,
                consumers,
                listen,
                store: store.clone(),
                store_replies: reply_receivers.remove(0),
                cluster: links.next().flatten(),
                groups: groups.next().unwrap_or_default(),
                recent: recent_by_home.next().unwrap_or_default(),
            };
            threads.push(reactor::spawn(seed, ready_tx.clone())?);
            match ready_rx.recv() {
                Ok(Ok(addr)) => listen = addr,
                Ok(Err(e)) => return Err(Self::abort(shared, threads, e)),
                Err(_) => {
                    return Err(Self::abort(
                        shared,
                        threads,
                        io::Error::other("a reactor died at start"),
                    ))
                }
            }
        }
        // The node joins its cluster once its port is known (the default node id has it).
        let cluster = match (&shared.config.cluster, &shared.cluster, relayed) {
            (Some(settings), Some(state), Some(relayed)) => {
                let node_id = settings.node_id_for(listen.port());
                match cluster::start(settings, node_id, state.clone(), relayed) {
                    Ok(cluster) => Some(cluster),
                    Err(e) => return Err(Self::abort(shared, threads, e)),
                }
            }
            _ => None,
        };
        Ok(Engine {
            shared,
            threads,
            store,
            store_thread,
            cluster,
            local_addr: listen,
        })
    }

    fn abort(shared: Arc<Shared>, threads: Vec<JoinHandle<()>>, error: io::Error) -> io::Error {
        shared.begin_drain();
        for thread in threads {
            let _ = thread.join();
        }
        error
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Rereads `--tls-cert` and `--tls-key` for every later handshake (SIGHUP); false
    /// without TLS. On an error the certificate served stays as it was.
    pub fn reload_tls(&self) -> Result<bool, String> {
        match &self.shared.config.tls {
            None => Ok(false),
            Some(certificates) => certificates.reload().map(|()| true),
        }
    }

    /// Whether the node stopped because another running node holds its `--node-id`.
    pub fn refused_by_cluster(&self) -> bool {
        self.shared.cluster.as_ref().is_some_and(|c| c.refused())
    }

    /// Drains (close frames with 1001) and stops every reactor, waiting at most the
    /// configured shutdown bound plus a second; true when every reactor stopped in time.
    pub fn shutdown(self) -> bool {
        self.shared.begin_drain();
        let bound = Duration::from_secs(self.shared.config.drain_secs)
            + Duration::from_millis(self.shared.config.shutdown_timeout_ms)
            + Duration::from_secs(1);
        let started = std::time::Instant::now();
        let deadline = started + bound;
        let mut reported = started;
        let shared = &self.shared;
        let mut wait = |thread: JoinHandle<()>| {
            while !thread.is_finished() {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return false;
                }
                // Progress once a second, so an operator sees a long drain move.
                if now.duration_since(reported) >= Duration::from_secs(1) {
                    reported = now;
                    let open: i64 = shared
                        .stats
                        .iter()
                        .map(|r| stats::load_gauge(&r.connections))
                        .sum();
                    let secs = now.duration_since(started).as_secs_f64();
                    tracing::info!(open, secs, "draining");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            thread.join().is_ok()
        };
        for thread in self.threads {
            if !wait(thread) {
                return false;
            }
        }
        // No connection is left: the node leaves its cluster.
        if let Some(cluster) = self.cluster {
            cluster.stop();
        }
        // The reactors are done: the store commits what they sent, then stops.
        let _ = self.store.send(store::Command::Shutdown);
        wait(self.store_thread)
    }
}

/// With `--cluster`, each reactor's link to the cluster thread, the cluster thread's side
/// of them all, and the inboxes' host; without, no links.
#[allow(clippy::type_complexity)]
fn cluster_channels(
    shared: &Arc<Shared>,
    store_stats: &Arc<store::StoreStats>,
) -> io::Result<(
    Vec<Option<reactor::ClusterLink>>,
    Option<cluster::Link>,
    Option<Arc<dyn store::SharedStore>>,
)> {
    let reactors = shared.config.reactors;
    if shared.config.cluster.is_none() {
        return Ok(((0..reactors).map(|_| None).collect(), None, None));
    }
    // Made here, before any reactor unshares its fd table, so that every reactor can
    // ring it.
    let doorbell = Arc::new(sockets::Doorbell::new()?);
    let (relays, relayed) = mpsc::channel();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..reactors).map(|_| mpsc::channel()).unzip();
    let shared_store: Arc<dyn store::SharedStore> = Arc::new(cluster::relay::ClusterStore {
        relays: relays.clone(),
        doorbell: doorbell.clone(),
    });
    let links = receivers
        .into_iter()
        .map(|inbound| {
            let (relays, doorbell) = (relays.clone(), doorbell.clone());
            Some(reactor::ClusterLink {
                relays,
                doorbell,
                inbound,
            })
        })
        .collect();
    let reactors = cluster::relay::Reactors {
        senders,
        doorbells: shared.clone(),
    };
    let (figures, counted) = (shared.clone(), store_stats.clone());
    let local_stats = Arc::new(move || {
        let mut body = Vec::with_capacity(1024);
        http::metrics::stats_json(&mut body, &figures.health(), &figures.stats, &counted);
        body
    });
    let link = cluster::Link {
        reactors,
        relays: relayed,
        doorbell,
        local_stats,
        streams: cluster::StreamSettings {
            queue_max_per_user: shared.config.queue_max_per_user,
            queue_max_per_sender: shared.config.queue_max_per_sender,
            retention: shared.config.retention,
            replicas: shared.config.cluster.as_ref().map_or(1, |c| c.replicas),
            shards: shared
                .config
                .cluster
                .as_ref()
                .map_or(cluster::Shards::new(1), |c| c.shards),
        },
        store_stats: store_stats.clone(),
        events: shared.events.clone(),
    };
    Ok((links, Some(link), Some(shared_store)))
}
