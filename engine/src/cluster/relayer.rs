//! The cluster thread's side of the live relay ([`super::relay`]): its own NATS connection,
//! spoken with [`super::wire`], the subscriptions of the users this node holds, the call
//! signals waiting on an answer, and what it gathers from every node: `/api/stats`
//! figures, the counts of an `all:true` broadcast, and the parts of an operator's call
//! about users (`chat.admin`). With the events webhook it also decides which node reports
//! a user online or offline ([`super::presence_events`]).
//!
//! One task owns everything: it wakes on the reactors' doorbell (relays to carry out), on
//! the socket (the server's operations), on the reconnect timer, and once a second (calls
//! that got no answer). While NATS is out of reach it keeps the subscriptions in its maps
//! and drops live events (they are never kept), and a call for a user with no device on
//! this node gets `cluster_unavailable`. On reconnecting it subscribes to every user again.
//!
//! Only the start of a connection (TCP, TLS, `CONNECT`, the `PONG`) is I/O of its own,
//! the [`Dialer`]'s. The rest is a state machine over the connection's bytes, and the
//! live relay simulator (`cluster::sim::live`) drives it with no socket.
//!
//! Per user online on this node it keeps two map entries (user → subscription, and back),
//! and the server keeps one subscription. Per user watched here (presence), the same, and
//! the other nodes that hold the user ([`super::presence`]).

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{mpsc, Arc},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use tokio::{
    io::{unix::AsyncFd, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest},
    net::TcpStream,
    time::Instant,
};
use tracing::{debug, error, info, warn};

use super::{
    history::History,
    holdings::{self, Holdings},
    inboxes::{self, Caught, Inboxes, Ready, Replies, StreamSettings},
    presence::{Holders, Report},
    presence_events::{self, Change, Heard, Settled},
    relay::{self, Inbound, Reactors, Relay},
    totals,
    wire::{self, Op},
    State,
};
use crate::{
    protocol::{
        codes::{ErrorCode, OutKind},
        outbound::Outgoing,
        Priority,
    },
    router::{ConnAddr, Delivery, Durability, Envelope, HuddleRelayed},
    sockets::Doorbell,
    store::{Reply, StoreStats},
};

/// The subscription for the answers to this node's requests: `<inbox><call>` for call
/// signals, `<inbox>s<gather>` for the other nodes' figures.
const INBOX_SID: u64 = 1;
/// The subscription on which every node asks the others for their figures.
const STATS_SID: u64 = 2;
/// The subscription on which every node hears the others' broadcasts to every user.
const BROADCAST_SID: u64 = 3;
/// The subscription on which every node hears the others' operator calls about users.
const ADMIN_SID: u64 = 4;
/// The subscription on which every node hears that another came back on NATS.
const BACK_SID: u64 = 5;
/// The subscription on which JetStream says this process's stream of holdings was
/// deleted ([`holdings::Holdings::deleted_subject`]).
const HOLDINGS_DELETED_SID: u64 = 6;
/// The subscription on which this process answers a reaper that it lives
/// ([`holdings::process_subject`]).
const PROCESS_SID: u64 = 7;
/// Where a node says, with its instance, that it came back on NATS: what it announced
/// just before it was cut off may never have reached the others.
const BACK_SUBJECT: &str = "chat.back";
/// Where a node sends an operator's call about users to the others.
const ADMIN_SUBJECT: &str = "chat.admin";
/// Where a node sends an API broadcast to every user online (`all:true`).
const BROADCAST_SUBJECT: &str = "chat.broadcast";
/// Where a node asks for every node's `/api/stats` figures.
const STATS_SUBJECT: &str = "chat.stats";
/// How long a gather of the nodes' figures waits for the nodes that have not answered.
const STATS_WAIT: Duration = Duration::from_millis(500);
/// A call signal that got neither an answer nor "no responders" in this long: NATS is
/// not answering, and the caller hears `cluster_unavailable`.
const CALL_WAIT: Duration = Duration::from_secs(5);
/// How long a connection attempt, and the handshake after it, may take.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// The relay pings the server this often, and drops a connection that leaves two pings
/// unanswered (a server gone without closing the socket).
const PING_EVERY: Duration = Duration::from_secs(10);
/// Bytes read from the socket at once, at most.
const READ_CHUNK: usize = 64 * 1024;

/// This node's `/api/stats` body, rendered when another node asks.
pub(super) type LocalStats = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// How long a call waits for a node with a device after a node that holds the receiver
/// in its grace answered [`relay::CALL_AWAY`].
const AWAY_WAIT: Duration = Duration::from_millis(200);
/// Users with presence-event checks at most while this node checks its users again
/// after a reconnect ([`Relayer::recheck_more`]).
const RECHECKS_AT_ONCE: usize = 1_024;
/// Events waiting for the webhook at most while this node reports a burst it can pace
/// (its users checked again after a reconnect, a gone node's users reaped): a tenth of
/// what the events thread queues ([`crate::events::QUEUE_MAX`]).
const PACED_EVENTS_WAITING: usize = crate::events::QUEUE_MAX / 10;

/// What a subscription is for.
enum Sub {
    /// `chat.live.<user>`: a user this node holds, its home here, whether a device
    /// of the user is online here (not only in its grace), and since when it is held
    /// (Unix ms).
    Live {
        user: Arc<str>,
        home: u16,
        devices: bool,
        since_ms: u64,
    },
    /// `chat.presence.<user>`: a user watched here.
    Presence(Arc<str>),
    /// `chat.huddle.<group>.<room>`: a huddle room with a device here, and the group's
    /// home here.
    Huddle {
        group: Box<str>,
        room: Box<str>,
        home: u16,
    },
}

/// A huddle signal's kind on the wire: `[kind][the signal frame]`.
const HUDDLE_JOIN: u8 = 1;
/// See [`HUDDLE_JOIN`]: any other huddle signal.
const HUDDLE_OTHER: u8 = 2;

/// A call signal waiting on an answer.
struct Call {
    caller: ConnAddr,
    reference: Box<str>,
    until: Instant,
    /// A node holding the receiver in its grace answered: no answer by `until` means
    /// `peer_offline`, not `cluster_unavailable`.
    away: bool,
}

/// An `all:true` broadcast under way on the other nodes: where its requester waits, the
/// users they reached so far, and until when.
struct BroadcastGather {
    reactor: usize,
    request: u32,
    delivered: u64,
    answered: u32,
    /// Other nodes alive when it started.
    expected: u32,
    until: Instant,
}

/// An operator's call about users under way on the other nodes: where it waits, their
/// parts so far, and until when.
struct AdminGather {
    reactor: u16,
    request: u32,
    parts: Vec<(Box<str>, crate::router::AdminPart)>,
    /// Other nodes whose part is awaited.
    expected: u32,
    /// Nodes alive when it started, this one included.
    known: u32,
    until: Instant,
}

/// A `/api/stats?scope=cluster` under way: who asks, the parts so far, and until when.
struct Gather {
    asker: ConnAddr,
    parts: Vec<Vec<u8>>,
    /// Live nodes when it started, this one included.
    expected: u32,
    until: Instant,
}

/// A question about presence events that waits for this node's holding of its user to
/// be kept: answered `held` then, if its asker still waits.
struct HeldUnkept {
    reply: Bytes,
    /// The process letting the user go, for a letting go (vouched for once answered).
    asker: Option<Box<str>>,
    until: Instant,
}

/// The relay's connection to NATS: plain TCP, or TLS over it.
trait NatsStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> NatsStream for T {}

/// The connection, whichever it is.
type Conn = Box<dyn NatsStream>;

/// One NATS server the relay may connect to.
struct Server {
    /// `host:port`.
    address: String,
    /// The host, which its TLS certificate must name.
    host: String,
    /// A `tls://` URL: TLS even if the server does not ask for it.
    tls: bool,
    /// What the relay proves itself with there.
    credentials: wire::Credentials,
}

/// How the relay reaches NATS: the servers, tried in turn, and TLS to them. The I/O of
/// a connection's start lives here; the [`Relayer`] only reads and writes its bytes.
pub(super) struct Dialer {
    /// The NATS servers, tried in turn.
    servers: Vec<Server>,
    /// The server the next connection tries: the first is random per process, so that
    /// the nodes' relays (and the streams' work they bring) spread over a NATS cluster's
    /// servers, as NATS clients randomise their server pools.
    next_server: usize,
    /// TLS to them, when one asks for it or its URL says `tls://`.
    tls: tokio_rustls::TlsConnector,
    /// The connection's name on the server.
    name: String,
}

/// The relay's connection and what it serves.
pub(super) struct Relayer {
    reactors: Reactors,
    /// What each subscription is for.
    by_sid: HashMap<u64, Sub>,
    /// Each held user's live subscription.
    sids: HashMap<Arc<str>, u64>,
    /// Each watched user's presence subscription.
    presence_sids: HashMap<Arc<str>, u64>,
    /// Each huddle room's subscription, by `(group, room)`.
    huddle_sids: HashMap<(Box<str>, Box<str>), u64>,
    /// Joins waiting for the other nodes' introductions: the joining device, and until
    /// when (numbered from `next_call`).
    joins: HashMap<u64, (ConnAddr, Instant)>,
    /// What other nodes hold of the users watched here.
    holders: Holders,
    /// The events webhook, if the node posts events: the cluster's presence events go
    /// there from here ([`presence_events`]).
    events: Option<crate::events::Events>,
    /// Presence events waiting for the other holders' word.
    event_checks: presence_events::Checks,
    /// Questions about users held here whose holding is not kept yet: answered `held`
    /// once it is, if the asker still waits ([`presence_events::CHECK_WAIT`]); if not,
    /// the user is checked again.
    held_unkept: HashMap<Arc<str>, Vec<HeldUnkept>>,
    /// The users answered `held` about to a process letting them go: checked again if
    /// it is gone soon after.
    vouched: presence_events::Vouched,
    /// The users held here when NATS came back, to check again, a few at a time
    /// ([`Relayer::recheck_more`]).
    rechecks: VecDeque<Arc<str>>,
    /// With the events webhook: the users held here, kept in JetStream, and the gone
    /// nodes' holdings this node reaps ([`super::holdings`]).
    holdings: Option<Holdings>,
    /// `--cluster-replicas`, for the holdings' stream.
    replicas: u8,
    /// The users' inboxes in JetStream.
    inboxes: Inboxes,
    /// Conversation history in JetStream, on the same connection.
    history: History,
    /// Users let go while NATS was out of reach, and when: announced on reconnecting.
    let_go: HashMap<Arc<str>, u64>,
    next_sid: u64,
    /// `_INBOX.<random>.`: where the answers to this node's call signals come.
    inbox: String,
    /// Call signals waiting on an answer.
    calls: HashMap<u64, Call>,
    next_call: u64,
    /// What is to be written to the connection.
    out: BytesMut,
    /// This node's id, in its figures.
    node_id: String,
    /// This process's token, in its presence announcements and answers.
    instance: String,
    /// How many nodes are alive.
    state: Arc<State>,
    /// This node's figures, for the others.
    local_stats: LocalStats,
    gathers: HashMap<u64, Gather>,
    /// Broadcasts to every user online, waiting for the other nodes' counts (numbered
    /// from `next_gather` too).
    broadcasts: HashMap<u64, BroadcastGather>,
    /// Operators' calls about users, waiting for the other nodes' parts (numbered from
    /// `next_gather` too).
    admin_calls: HashMap<u64, AdminGather>,
    next_gather: u64,
    /// Pings sent and not yet answered, and when the last went.
    pings: (u32, Instant),
    /// The wall clock (Unix ms) that dates presence: the system's, or the simulator's.
    wall_ms: fn() -> u64,
}

/// What the membership watch tells the relay about another node's process.
#[derive(Debug)]
pub(super) enum Membership {
    /// The instance died, left, or had its node id taken over.
    Gone(Box<str>),
    /// The instance beats in the node bucket: a node that joined, or one back after it
    /// was counted dead.
    Joined(Box<str>),
}

/// What woke the relayer.
enum Wake {
    Doorbell,
    Read(io::Result<usize>),
    Reconnect,
    Tick,
    Membership(Membership),
}

impl Dialer {
    /// A dialer of `servers` (`nats://host:port` each) for node `node_id`'s relay, with
    /// `tls` for the servers that ask for it.
    pub(super) fn new(servers: &[String], tls: Arc<rustls::ClientConfig>, node_id: &str) -> Dialer {
        let token = super::instance_token_hex();
        Dialer {
            next_server: usize::from_str_radix(&token[..8], 16).unwrap_or(0),
            servers: servers
                .iter()
                .filter_map(|url| url.parse::<async_nats::ServerAddr>().ok())
                .map(|server| Server {
                    address: format!("{}:{}", server.host(), server.port()),
                    host: server.host().to_owned(),
                    tls: server.tls_required(),
                    credentials: wire::Credentials::of(&server),
                })
                .collect(),
            tls: tokio_rustls::TlsConnector::from(tls),
            name: format!("engine {node_id} relay"),
        }
    }

    /// Connects to the next server, reads its `INFO` (and starts TLS if it asks, or the
    /// URL did), says who it is, sends `subscriptions` ([`Relayer::subscriptions`]) and
    /// waits for its `PONG`.
    async fn open(&mut self, subscriptions: &[u8]) -> io::Result<Conn> {
        let server = self.next_server % self.servers.len();
        // After this one, whether it answers or not (a reconnect tries another).
        self.next_server = server + 1;
        let server = &self.servers[server];
        let timeout = |e| io::Error::new(io::ErrorKind::TimedOut, e);
        let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut stream = tokio::time::timeout(CONNECT_WAIT, self.start(server, &mut inbuf))
            .await
            .map_err(timeout)??;
        let (server, credentials) = (&server.address, &server.credentials);
        let mut hello = BytesMut::new();
        wire::connect(&mut hello, &self.name, credentials);
        hello.extend_from_slice(subscriptions);
        stream.write_all(&hello).await?;
        let handshake = async {
            loop {
                if stream.read_buf(&mut inbuf).await? == 0 {
                    return Err(io::Error::other("closed during the handshake"));
                }
                while let Some(op) = wire::next_op(&mut inbuf).map_err(io::Error::other)? {
                    match op {
                        Op::Pong => return Ok(()),
                        Op::Err(e) => {
                            // Refused (a wrong user, password or token): said at each try.
                            warn!(%server, "cluster: NATS refused the relay: {e}");
                            return Err(io::Error::other(e));
                        }
                        _ => {}
                    }
                }
            }
        };
        tokio::time::timeout(CONNECT_WAIT, handshake)
            .await
            .map_err(timeout)??;
        info!(server, "cluster: relay connected");
        Ok(stream)
    }

    /// A connection to `server` whose `INFO` has come: the server speaks first, in the
    /// clear, and TLS starts after it when either side wants it. What came after the
    /// `INFO` stays in `inbuf`.
    async fn start(&self, server: &Server, inbuf: &mut BytesMut) -> io::Result<Conn> {
        let mut tcp = TcpStream::connect(&server.address).await?;
        tcp.set_nodelay(true)?;
        let tls_required = loop {
            if tcp.read_buf(inbuf).await? == 0 {
                return Err(io::Error::other("closed before its INFO"));
            }
            match wire::next_op(inbuf).map_err(io::Error::other)? {
                Some(Op::Info { tls_required }) => break tls_required,
                Some(_) => return Err(io::Error::other("no INFO first")),
                None => {}
            }
        };
        if !(server.tls || tls_required) {
            return Ok(Box::new(tcp));
        }
        let name = rustls_pki_types::ServerName::try_from(server.host.clone())
            .map_err(|e| io::Error::other(format!("{}: {e}", server.host)))?;
        let tls = self.tls.connect(name, tcp).await.inspect_err(|e| {
            // A certificate this node does not trust, or one it was refused for: said at
            // each try, as a refused password is.
            warn!(server = %server.address, "cluster: TLS to NATS failed: {e}");
        })?;
        Ok(Box::new(tls))
    }
}

impl Relayer {
    /// A relayer for node `node_id`, run by process `instance`, whose answers come to
    /// subjects under `inbox` (`_INBOX.<token>.`), delivering to `reactors`.
    pub(super) fn new(
        (node_id, instance, inbox): (&str, &str, String),
        (reactors, (limits, store_stats)): (Reactors, (StreamSettings, Arc<StoreStats>)),
        (state, local_stats): (Arc<State>, LocalStats),
    ) -> Relayer {
        Relayer {
            inboxes: Inboxes::new(&inbox, limits),
            history: History::new(&inbox, limits, store_stats),
            node_id: node_id.into(),
            instance: instance.into(),
            presence_sids: HashMap::new(),
            huddle_sids: HashMap::new(),
            joins: HashMap::new(),
            holders: Holders::default(),
            events: None,
            event_checks: presence_events::Checks::default(),
            held_unkept: HashMap::new(),
            vouched: presence_events::Vouched::default(),
            rechecks: VecDeque::new(),
            holdings: None,
            replicas: limits.replicas,
            let_go: HashMap::new(),
            state,
            local_stats,
            gathers: HashMap::new(),
            broadcasts: HashMap::new(),
            admin_calls: HashMap::new(),
            next_gather: 0,
            pings: (0, Instant::now()),
            wall_ms: crate::protocol::now_ms,
            reactors,
            by_sid: HashMap::new(),
            sids: HashMap::new(),
            next_sid: PROCESS_SID + 1,
            inbox,
            calls: HashMap::new(),
            next_call: 0,
            out: BytesMut::new(),
        }
    }

    /// A relayer that reports users online and offline to the events webhook for the
    /// cluster ([`presence_events`]).
    pub(super) fn with_events(mut self, events: Option<crate::events::Events>) -> Relayer {
        let process = (&*self.node_id, &*self.instance);
        self.holdings =
            (events.is_some()).then(|| Holdings::new(&self.inbox, process, self.replicas));
        self.events = events;
        self
    }

    /// Carries out what the shards ask, woken by `doorbell`, on connections `dialer`
    /// opens, and follows what `membership` says of the other nodes' processes, until
    /// every reactor is gone (the engine stops) or the doorbell cannot be waited on.
    pub(super) async fn run(
        mut self,
        mut dialer: Dialer,
        relays: mpsc::Receiver<Relay>,
        doorbell: Arc<Doorbell>,
        mut membership: tokio::sync::mpsc::UnboundedReceiver<Membership>,
    ) {
        // SAFETY: `BellFd` holds the doorbell, which owns the eventfd and closes it only
        // when dropped: the fd stays open, and is not replaced, while tokio watches it.
        let registered = unsafe {
            AsyncFd::register_with_interest(BellFd(doorbell.clone()), Interest::READABLE)
        };
        let bell = match registered {
            Ok(bell) => bell,
            Err(e) => return error!("cluster: the relay's doorbell cannot be waited on: {e}"),
        };
        let mut conn: Option<Conn> = None;
        let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
        let (mut attempts, mut retry_at) = (0u32, Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let wake = tokio::select! {
                ready = bell.readable() => match ready {
                    Ok(mut ready) => {
                        ready.clear_ready();
                        Wake::Doorbell
                    }
                    Err(e) => return error!("cluster: the relay's doorbell failed: {e}"),
                },
                read = read_some(conn.as_mut(), &mut inbuf), if conn.is_some() => Wake::Read(read),
                () = tokio::time::sleep_until(retry_at), if conn.is_none() => Wake::Reconnect,
                _ = tick.tick() => Wake::Tick,
                Some(news) = membership.recv() => Wake::Membership(news),
            };
            match wake {
                Wake::Doorbell => {
                    // Cleared before the channel is drained: a relay sent after rings again.
                    doorbell.clear();
                    loop {
                        match relays.try_recv() {
                            Ok(relay) => self.carry_out(relay, conn.is_some()),
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => return,
                        }
                    }
                }
                Wake::Read(Ok(n)) if n > 0 => {
                    if let Err(e) = self.take_ops(&mut inbuf) {
                        warn!("cluster: relay connection dropped: {e}");
                        conn = None;
                    }
                }
                Wake::Read(read) => {
                    let why = read.map_or_else(|e| e.to_string(), |_| "closed".into());
                    warn!("cluster: relay connection lost ({why}); reconnecting");
                    conn = None;
                }
                Wake::Reconnect => match dialer.open(&self.subscriptions()).await {
                    Ok(stream) => {
                        attempts = 0;
                        inbuf.clear();
                        conn = Some(stream);
                        self.reconnected();
                    }
                    Err(e) => {
                        attempts += 1;
                        debug!(attempts, "cluster: relay connection: {e}");
                    }
                },
                Wake::Membership(Membership::Gone(instance)) => self.gone(&instance),
                Wake::Membership(Membership::Joined(instance)) => self.joined(&instance),
                Wake::Tick => {
                    self.expire_waits();
                    if conn.is_some() && !self.ping_due() {
                        warn!("cluster: NATS did not answer two pings; reconnecting");
                        conn = None;
                    }
                }
            }
            let was = self
                .state
                .relay_connected
                .swap(conn.is_some(), std::sync::atomic::Ordering::AcqRel);
            if was && conn.is_none() {
                self.disconnected();
            }
            if conn.is_none() {
                self.out.clear();
                if retry_at <= Instant::now() {
                    retry_at = Instant::now() + super::backoff(attempts);
                }
                continue;
            }
            if let Some(stream) = conn.as_mut() {
                if let Err(e) = flush(stream, &mut self.out).await {
                    warn!("cluster: relay connection lost ({e}); reconnecting");
                    conn = None;
                    retry_at = Instant::now();
                }
            }
        }
    }

    /// One relay from a shard; written to the connection if there is one.
    pub(super) fn carry_out(&mut self, relay: Relay, connected: bool) {
        match relay {
            Relay::Watch { user, home } => self.hold(user, home, connected),
            Relay::Away { user } => {
                let sid = self.sids.get(&user);
                if let Some(Sub::Live { devices, .. }) = sid.and_then(|s| self.by_sid.get_mut(s)) {
                    *devices = false;
                }
            }
            Relay::Unwatch { user, at_ms } => {
                self.inboxes.forget(&user);
                if let Some(sid) = self.sids.remove(&user) {
                    self.by_sid.remove(&sid);
                    if connected {
                        wire::unsubscribe(&mut self.out, sid);
                        self.announce(&user, false, at_ms);
                    } else {
                        self.let_go.insert(user.clone(), at_ms);
                    }
                    self.check_presence_event(user, false, at_ms, connected);
                }
            }
            Relay::WatchPresence { user, home } => self.watch_presence(user, home, connected),
            Relay::UnwatchPresence { user } => {
                self.holders.unwatch(&user);
                if let Some(sid) = self.presence_sids.remove(&user) {
                    self.by_sid.remove(&sid);
                    if connected {
                        wire::unsubscribe(&mut self.out, sid);
                    }
                }
            }
            Relay::Stats { asker, local } => self.gather_stats(asker, &local, connected),
            Relay::HuddleWatch { group, room, home } => {
                let key = (group.clone(), room.clone());
                if self.huddle_sids.contains_key(&key) {
                    return;
                }
                let sid = self.next_sid;
                self.next_sid += 1;
                if connected {
                    wire::subscribe(&mut self.out, &relay::huddle_subject(&group, &room), sid);
                }
                self.huddle_sids.insert(key, sid);
                self.by_sid.insert(sid, Sub::Huddle { group, room, home });
            }
            Relay::HuddleUnwatch { group, room } => {
                if let Some(sid) = self.huddle_sids.remove(&(group, room)) {
                    self.by_sid.remove(&sid);
                    if connected {
                        wire::unsubscribe(&mut self.out, sid);
                    }
                }
            }
            Relay::Huddle {
                group,
                room,
                frame,
                joiner,
            } if connected => {
                let subject = relay::huddle_subject(&group, &room);
                let mut payload = Vec::with_capacity(1 + frame.bytes.len());
                payload.push(if joiner.is_some() {
                    HUDDLE_JOIN
                } else {
                    HUDDLE_OTHER
                });
                payload.extend_from_slice(&frame.bytes);
                let reply = joiner.map(|joiner| {
                    let join = self.next_call;
                    self.next_call += 1;
                    self.joins
                        .insert(join, (joiner, Instant::now() + STATS_WAIT));
                    format!("{}h{join}", self.inbox)
                });
                wire::publish(
                    &mut self.out,
                    subject.as_bytes(),
                    reply.as_deref(),
                    &payload,
                );
            }
            Relay::Huddle { .. } => {} // a live signal is never kept
            Relay::HuddleIntroduce { reply, frames } => {
                for frame in frames {
                    wire::publish(&mut self.out, reply.as_bytes(), None, &frame.bytes);
                }
            }
            Relay::Broadcast {
                requester,
                request,
                message,
            } => self.broadcast(requester, request, &message, connected),
            Relay::Admin {
                reactor,
                request,
                said,
            } => self.admin_call(reactor, request, &said, connected),
            Relay::AdminPart { reply, part } => {
                let said = relay::encode_admin_part(&self.node_id, &part);
                wire::publish(&mut self.out, reply.as_bytes(), None, &said);
            }
            Relay::BroadcastCounted { reply, delivered } => {
                let count = delivered.to_string();
                wire::publish(&mut self.out, reply.as_bytes(), None, count.as_bytes());
            }
            Relay::Inbox(command) if History::takes(&command) => {
                let replies = self.history.command(command, connected, &mut self.out);
                self.send_replies(replies);
            }
            Relay::Inbox(command) => {
                self.inboxes.set_index_ready(self.history.indexed());
                let replies = self.inboxes.command(command, connected, &mut self.out);
                self.send_replies(replies);
            }
            Relay::Live {
                user,
                frame,
                priority,
                call,
            } => {
                let Some(payload) = relay::encode(&frame, priority) else {
                    return debug_assert!(false, "not a live event: {:?}", frame.kind);
                };
                let subject = relay::live_subject(&user);
                match call {
                    None if connected => {
                        wire::publish(&mut self.out, subject.as_bytes(), None, &payload)
                    }
                    None => {} // a live event is never kept
                    Some((caller, reference)) if !connected => {
                        self.call_not_taken(caller, reference, ErrorCode::ClusterUnavailable)
                    }
                    Some((caller, reference)) => {
                        let call = self.next_call;
                        self.next_call += 1;
                        let reply = format!("{}{call}", self.inbox);
                        wire::publish(&mut self.out, subject.as_bytes(), Some(&reply), &payload);
                        let waiting = Call {
                            caller,
                            reference,
                            until: Instant::now() + CALL_WAIT,
                            away: false,
                        };
                        self.calls.insert(call, waiting);
                    }
                }
            }
        }
    }

    /// `user` has a device on this node: subscribed to the user's live events, and, if
    /// the user was not held here yet, announced.
    fn hold(&mut self, user: Arc<str>, home: u16, connected: bool) {
        if let Some(sid) = self.sids.get(&user) {
            if let Some(Sub::Live {
                home: held_at,
                devices,
                ..
            }) = self.by_sid.get_mut(sid)
            {
                (*held_at, *devices) = (home, true);
            }
            return;
        }
        let sid = self.next_sid;
        self.next_sid += 1;
        let since_ms = (self.wall_ms)();
        // Back while NATS is away: its letting go is not announced on reconnecting.
        self.let_go.remove(&user);
        if connected {
            wire::subscribe(&mut self.out, &relay::live_subject(&user), sid);
            self.announce(&user, true, since_ms);
        }
        self.sids.insert(user.clone(), sid);
        let live = Sub::Live {
            user: user.clone(),
            home,
            devices: true,
            since_ms,
        };
        self.by_sid.insert(sid, live);
        if let Some(holdings) = &mut self.holdings {
            holdings.changed(user.clone(), true, since_ms, &mut self.out);
        }
        self.check_presence_event(user, true, since_ms, connected);
    }

    /// With the events webhook: asks the other holders of `user` whether this node is
    /// the one to report the user online (gained here at `at_ms`) or offline (let go);
    /// with NATS out of reach, or this node's holdings not known to be kept yet, once
    /// they are (`presence_events`).
    fn check_presence_event(&mut self, user: Arc<str>, online: bool, at_ms: u64, connected: bool) {
        self.check_change(Change::new(user, online, at_ms), connected);
    }

    /// Asks about `change` now if it can be (`connected`, this node's holding of the user
    /// kept, no check of the user's under way), or once it can.
    fn check_change(&mut self, change: Change, connected: bool) {
        let Some(holdings) = &self.holdings else {
            return; // no events webhook
        };
        let user = &change.user;
        // One check of a user's at a time: each is settled, and reported, in order.
        if connected && holdings.kept(user) && !self.event_checks.pending(user) {
            self.ask_presence_event(change);
        } else {
            self.event_checks.defer(change);
        }
    }

    /// `user`, held here since `since_ms`, may have been reported offline while this node
    /// could not answer (cut off from NATS, its holding being written, or its `held`
    /// late): checked again as gained then, so that the first holder reports the user
    /// online, unless a check of the user's is under way or waiting, which settles after
    /// that offline anyway.
    fn recheck_presence_event(&mut self, user: Arc<str>, since_ms: u64) {
        if self.event_checks.pending(&user) {
            return;
        }
        let connected = (self.state.relay_connected).load(std::sync::atomic::Ordering::Acquire);
        self.check_presence_event(user, true, since_ms, connected);
    }

    /// `user`, if still held here, checked again ([`Relayer::recheck_presence_event`]):
    /// a question about the user waited past its asker's wait for the holding to be
    /// kept, an asker this node answered is gone, or NATS came back.
    fn recheck_if_held(&mut self, user: Arc<str>) {
        let sub = self.sids.get(&user).and_then(|sid| self.by_sid.get(sid));
        if let Some(&Sub::Live { since_ms, .. }) = sub {
            self.recheck_presence_event(user, since_ms);
        }
    }

    /// Checks again the next users held when NATS came back, while fewer than
    /// [`RECHECKS_AT_ONCE`] users have checks and the events thread has fewer than
    /// [`PACED_EVENTS_WAITING`] events waiting: a node of a million users would
    /// otherwise report them faster than a webhook takes them, and the events queue
    /// would drop some (it did at 200,000: benches/RESULTS.md).
    fn recheck_more(&mut self) {
        while self.event_checks.users() < RECHECKS_AT_ONCE && !self.events_behind() {
            let Some(user) = self.rechecks.pop_front() else {
                return;
            };
            self.recheck_if_held(user);
        }
    }

    /// Whether [`PACED_EVENTS_WAITING`] events or more wait for the events thread: what
    /// can wait (checks after a reconnect, a reap's walk) waits.
    fn events_behind(&self) -> bool {
        let waiting = (self.events.as_ref()).map_or(0, crate::events::Events::waiting);
        waiting >= PACED_EVENTS_WAITING
    }

    /// The next change of `user` that waited (for the user's holding to be kept, or for
    /// the check before it), asked.
    fn ask_deferred_presence_event(&mut self, user: &str) {
        if !self.holdings.as_ref().is_some_and(|h| h.kept(user)) {
            return;
        }
        if let Some(change) = self.event_checks.next_deferred(user) {
            self.ask_presence_event(change);
        }
    }

    /// What the holdings' answers and ticks bring: users a gone node held, to check;
    /// holdings kept, whose changes can be asked about now.
    fn holdings_moved(&mut self, outcomes: Vec<holdings::Outcome>) {
        for outcome in outcomes {
            match outcome {
                holdings::Outcome::Reaped { user, reap } => self.reaped(user, reap),
                holdings::Outcome::Kept(user) => {
                    self.answer_held_unkept(&user);
                    self.ask_deferred_presence_event(&user);
                }
                holdings::Outcome::Lost => self.write_holdings_again(),
                holdings::Outcome::Ready => {
                    let waiting: Vec<Arc<str>> = self.held_unkept.keys().cloned().collect();
                    for user in waiting {
                        self.answer_held_unkept(&user);
                    }
                    for user in self.event_checks.users_deferred() {
                        self.ask_deferred_presence_event(&user);
                    }
                }
            }
        }
    }

    /// This process's holdings were deleted (it was taken for dead and reaped): every
    /// user it holds is written held again, and so is every user whose offline it owes,
    /// in name order. Rare, and a pass over every user held.
    fn write_holdings_again(&mut self) {
        let Some(holdings) = &mut self.holdings else {
            return;
        };
        let mut held: Vec<(Arc<str>, u64)> = (self.by_sid.values())
            .filter_map(|sub| match sub {
                Sub::Live { user, since_ms, .. } => Some((user.clone(), *since_ms)),
                _ => None,
            })
            .collect();
        let now_ms = (self.wall_ms)();
        let owed = self.event_checks.owing().into_iter();
        held.extend(
            owed.filter(|user| !self.sids.contains_key(user))
                .map(|user| (user, now_ms)),
        );
        held.sort_unstable();
        for (user, since_ms) in held {
            holdings.changed(user, true, since_ms, &mut self.out);
        }
    }

    /// `user`'s holding may be kept now: the questions about the user that waited for
    /// it are answered `held`, while this node still holds the user.
    fn answer_held_unkept(&mut self, user: &Arc<str>) {
        let kept = self.holdings.as_ref().is_some_and(|h| h.kept(user));
        if !kept || !self.sids.contains_key(user) {
            return;
        }
        for waiting in self.held_unkept.remove(user).unwrap_or_default() {
            self.answer_held(user, &waiting.reply, waiting.asker.as_deref());
        }
    }

    /// Answers `held` about `user`, on `reply`; to a process letting the user go
    /// (`asker`), vouched for until its report is known to stand.
    fn answer_held(&mut self, user: &Arc<str>, reply: &[u8], asker: Option<&str>) {
        wire::publish(&mut self.out, reply, None, presence_events::HELD);
        if let Some(asker) = asker {
            self.vouched.answered(asker, user.clone(), Instant::now());
        }
    }

    /// Asks the holders of the user whether this node is the one to report `change`.
    fn ask_presence_event(&mut self, change: Change) {
        let subject = relay::live_subject(&change.user);
        let question = presence_events::question(change.online, change.at_ms, &self.instance);
        let check = self.event_checks.start(change, Instant::now());
        let reply = format!("{}e{check}", self.inbox);
        wire::publish(&mut self.out, subject.as_bytes(), Some(&reply), &question);
    }

    /// A user a gone node still held, found by reap number `reap`: offline unless this
    /// node or another holds the user (asked as when a node lets a user go), dated now.
    /// Nothing is written for it: the gone node's holdings stay until every check of the
    /// reap is settled, so a reaper that dies first leaves the reap to the node that
    /// reaps it ([`super::holdings`]). Held here, the user is online, but the gone node
    /// may have died owing the user's online: the holders, this node too, check the user
    /// again.
    fn reaped(&mut self, user: Arc<str>, reap: u64) {
        if self.sids.contains_key(&user) {
            self.recheck_holders(&user, (self.wall_ms)());
            self.recheck_if_held(user);
            if let Some(holdings) = &mut self.holdings {
                holdings.reap_checked(reap, &mut self.out);
            }
            return;
        }
        let connected = (self.state.relay_connected).load(std::sync::atomic::Ordering::Acquire);
        let change = Change::reaped(user, (self.wall_ms)(), reap);
        self.check_change(change, connected);
    }

    /// This node reported `user` offline on silence at `at_ms`, or found a user a gone
    /// process held still held: the holders check the user again, and the first reports
    /// the user online.
    fn recheck_holders(&mut self, user: &str, at_ms: u64) {
        let subject = relay::live_subject(user);
        let said = presence_events::recheck(at_ms, &self.instance);
        wire::publish(&mut self.out, subject.as_bytes(), None, &said);
    }

    /// Posts the presence events that checks left to this node. A user let go here is
    /// written let go in the holdings only now: a node that dies before its offline is
    /// settled leaves the user to the node that reaps it.
    fn settle_presence_events(&mut self, settled: impl IntoIterator<Item = Settled>) {
        for check in settled {
            if let (Some(events), Some(hook)) = (&self.events, check.report()) {
                events.emit((self.wall_ms)(), hook);
            }
            if let Some(reap) = check.reaped {
                if !check.reported {
                    // Held elsewhere: the gone process may have died owing the online.
                    self.recheck_holders(&check.user, (self.wall_ms)());
                }
                if let Some(holdings) = &mut self.holdings {
                    holdings.reap_checked(reap, &mut self.out);
                }
            }
            // This node's own letting go, and no other change of its own of the user's
            // waits (a reaped user's check writes nothing).
            let let_go = !check.online
                && check.reaped.is_none()
                && !self.sids.contains_key(&check.user)
                && !self.event_checks.owes(&check.user);
            if let Some(holdings) = self.holdings.as_mut().filter(|_| let_go) {
                holdings.changed(check.user.clone(), false, check.at_ms, &mut self.out);
            }
            self.ask_deferred_presence_event(&check.user);
        }
        self.recheck_more();
    }

    /// Announces that this node holds `user` (`online`) or let the user go at `at_ms`.
    fn announce(&mut self, user: &str, online: bool, at_ms: u64) {
        let subject = relay::presence_subject(user);
        let said = relay::announcement(online, at_ms, &self.instance);
        wire::publish(&mut self.out, subject.as_bytes(), None, &said);
    }

    /// A first watcher of `user` on this node: subscribed to the user's announcements,
    /// and the holders asked (with NATS out of reach, the home hears "nobody else" now,
    /// and the question is asked on reconnecting).
    fn watch_presence(&mut self, user: Arc<str>, home: u16, connected: bool) {
        let now = Instant::now();
        let Some(question) = self.holders.watch(user.clone(), home, now) else {
            return;
        };
        let sid = self.next_sid;
        self.next_sid += 1;
        self.presence_sids.insert(user.clone(), sid);
        if connected {
            wire::subscribe(&mut self.out, &relay::presence_subject(&user), sid);
            self.ask(&user, question);
        } else {
            let report = self.holders.unanswered(question, (self.wall_ms)());
            self.report(report);
        }
        self.by_sid.insert(sid, Sub::Presence(user));
    }

    /// Asks who holds `user`; the answers come to `<inbox>p<question>`.
    fn ask(&mut self, user: &str, question: u64) {
        let reply = format!("{}p{question}", self.inbox);
        let subject = relay::live_subject(user);
        wire::publish(
            &mut self.out,
            subject.as_bytes(),
            Some(&reply),
            relay::QUESTION,
        );
    }

    /// What a new connection subscribes to, after its `CONNECT`: the answers to this
    /// node's requests, the subjects every node hears, and each user held or watched and
    /// each huddle room here (in the order they were first subscribed).
    pub(super) fn subscriptions(&self) -> BytesMut {
        let mut out = BytesMut::new();
        wire::subscribe(&mut out, &format!("{}*", self.inbox), INBOX_SID);
        wire::subscribe(&mut out, STATS_SUBJECT, STATS_SID);
        wire::subscribe(&mut out, BROADCAST_SUBJECT, BROADCAST_SID);
        wire::subscribe(&mut out, ADMIN_SUBJECT, ADMIN_SID);
        wire::subscribe(&mut out, BACK_SUBJECT, BACK_SID);
        if self.holdings.is_some() {
            let process = holdings::process_subject(&self.instance);
            wire::subscribe(&mut out, &process, PROCESS_SID);
        }
        let mut subs: Vec<(&u64, &Sub)> = self.by_sid.iter().collect();
        subs.sort_unstable_by_key(|(sid, _)| **sid);
        for (sid, sub) in subs {
            let subject = match sub {
                Sub::Live { user, .. } => relay::live_subject(user),
                Sub::Presence(user) => relay::presence_subject(user),
                Sub::Huddle { group, room, .. } => relay::huddle_subject(group, room),
            };
            wire::subscribe(&mut out, &subject, *sid);
        }
        out
    }

    /// Back on NATS, on a connection that has [`Relayer::subscriptions`]: what the others
    /// missed is said again (every user held here, and those let go meanwhile, each in
    /// name order), and every watched user's holders are asked again.
    pub(super) fn reconnected(&mut self) {
        self.pings = (0, Instant::now());
        let now_ms = (self.wall_ms)();
        let mut held: Vec<Arc<str>> = self.sids.keys().cloned().collect();
        held.sort_unstable();
        for user in held {
            self.announce(&user, true, now_ms);
        }
        let mut let_go: Vec<(Arc<str>, u64)> = self.let_go.drain().collect();
        let_go.sort_unstable();
        for (user, at_ms) in let_go {
            self.announce(&user, false, at_ms);
        }
        for (user, question) in self.holders.ask_again(Instant::now()) {
            self.ask(&user, question);
        }
        wire::publish(
            &mut self.out,
            BACK_SUBJECT.as_bytes(),
            None,
            self.instance.as_bytes(),
        );
        self.inboxes.connected(&mut self.out);
        self.history.connected(&mut self.out);
        if let Some(holdings) = &mut self.holdings {
            // After the handshake: a server that does not let this node hear JetStream's
            // advisories says so (logged) and leaves the connection up; the node then
            // learns of a deletion at its next sweep.
            let deleted = holdings.deleted_subject();
            wire::subscribe(&mut self.out, &deleted, HOLDINGS_DELETED_SID);
            holdings.connected(&mut self.out);
            // The holders' checks asked after an offline reported on silence may have
            // been lost in the cut.
            for (user, at_ms) in self.event_checks.take_unanswered() {
                self.recheck_holders(&user, at_ms);
            }
            // Cut off, this node could not answer for its users: any may have been
            // reported offline meanwhile.
            let mut held: Vec<Arc<str>> = self.sids.keys().cloned().collect();
            held.sort_unstable();
            self.rechecks = held.into();
            self.recheck_more();
        }
    }

    /// Cut off from NATS: what waits on an answer from it fails (the live subscriptions
    /// stay, to be made again on reconnecting). The presence events waiting for the other
    /// holders' answers are asked again once NATS is back, before any that comes
    /// meanwhile.
    pub(super) fn disconnected(&mut self) {
        self.event_checks.interrupt();
        self.held_unkept.clear(); // the askers hear nothing from this connection now
        let failed = self.inboxes.disconnected();
        self.send_replies(failed);
        self.gaps_filled();
        let failed = self.history.disconnected();
        self.send_replies(failed);
        if let Some(holdings) = &mut self.holdings {
            holdings.disconnected();
        }
    }

    /// Instance `instance` died, left, or had its node id taken over: the users only it
    /// held are offline as far as this node knows, what it said before that still
    /// comes is ignored, and its holdings are reaped (with the events webhook).
    pub(super) fn gone(&mut self, instance: &str) {
        let reports = self
            .holders
            .gone(instance, (Instant::now(), (self.wall_ms)()));
        self.report(reports);
        for user in self.vouched.gone(instance) {
            self.recheck_if_held(user);
        }
        if let Some(holdings) = &mut self.holdings {
            holdings.gone(instance, &mut self.out);
        }
    }

    /// Instance `instance` beats in the node bucket. If it had been counted dead (silent
    /// too long, maybe while its relay was back already), it is heard again, and every
    /// watched user is asked about again, since this node dropped what it held.
    pub(super) fn joined(&mut self, instance: &str) {
        if let Some(holdings) = &mut self.holdings {
            holdings.joined(instance, &mut self.out);
        }
        if !self.holders.back_from_the_dead(instance) {
            return;
        }
        let connected = self
            .state
            .relay_connected
            .load(std::sync::atomic::Ordering::Acquire);
        if connected {
            for (user, question) in self.holders.ask_again(Instant::now()) {
                self.ask(&user, question);
            }
        } // else asked on reconnecting
    }

    /// Instance `instance` came back on NATS: the users it holds are asked about again,
    /// in case what it announced before was lost.
    fn back(&mut self, instance: &[u8]) {
        let Ok(instance) = std::str::from_utf8(instance) else {
            return debug!("cluster: a return that does not parse");
        };
        for (user, question) in self.holders.ask_again_held_by(instance, Instant::now()) {
            self.ask(&user, question);
        }
    }

    /// Hands the inboxes' answers to their reactors.
    fn send_replies(&self, replies: Replies) {
        for (reactor, reply) in replies {
            self.reactors.send(reactor, Inbound::Store(reply));
        }
    }

    /// Tells each report's home what the other nodes hold of its user.
    fn report(&self, reports: impl IntoIterator<Item = Report>) {
        for report in reports {
            let change = Envelope::RemotePresence {
                user: (*report.user).into(),
                online: report.online,
                at_ms: report.at_ms,
            };
            self.reactors
                .send(usize::from(report.home), Inbound::Mail(change));
        }
    }

    /// Acts on every whole operation read so far.
    pub(super) fn take_ops(&mut self, inbuf: &mut BytesMut) -> Result<(), wire::WireError> {
        while let Some(op) = wire::next_op(inbuf)? {
            match op {
                Op::Ping => wire::pong(&mut self.out),
                Op::Msg {
                    sid: INBOX_SID,
                    subject,
                    reply: Some(ack),
                    payload,
                    ..
                } if ack.starts_with(b"$JS.ACK.") => self.walked(&subject, &ack, &payload),
                Op::Msg {
                    sid: INBOX_SID,
                    subject,
                    status,
                    headers,
                    payload,
                    ..
                } => self.answered(&subject, status, &headers, payload),
                Op::Msg {
                    sid: BROADCAST_SID,
                    reply: Some(reply),
                    payload,
                    ..
                } => match relay::decode_broadcast(&payload) {
                    // Reactor 0 writes it to every home here and counts.
                    Some(message) => {
                        let reply = String::from_utf8_lossy(&reply).into();
                        let message = Arc::new(message);
                        self.reactors.send(0, Inbound::Broadcast { message, reply });
                    }
                    None => debug!("cluster: a broadcast that does not parse, dropped"),
                },
                Op::Msg {
                    sid: ADMIN_SID,
                    reply: Some(reply),
                    payload,
                    ..
                } => {
                    // Reactor 0 reads it, asks the homes here and sends the part back.
                    let reply = String::from_utf8_lossy(&reply).into();
                    let said = payload;
                    self.reactors.send(0, Inbound::Admin { said, reply });
                }
                Op::Msg {
                    sid: BACK_SID,
                    payload,
                    ..
                } => self.back(&payload),
                Op::Msg {
                    sid: PROCESS_SID,
                    reply: Some(reply),
                    ..
                } => wire::publish(&mut self.out, &reply, None, b"alive"),
                Op::Msg {
                    sid: HOLDINGS_DELETED_SID,
                    ..
                } => {
                    if let Some(holdings) = &mut self.holdings {
                        holdings.deleted(Instant::now());
                    }
                }
                Op::Msg {
                    sid: STATS_SID,
                    reply: Some(reply),
                    ..
                } => {
                    let part = totals::node_part(&self.node_id, &(self.local_stats)());
                    wire::publish(&mut self.out, &reply, None, &part);
                }
                Op::Msg {
                    sid,
                    subject,
                    reply,
                    headers,
                    payload,
                    ..
                } => match self.by_sid.get(&sid) {
                    Some(Sub::Huddle { .. }) => self.huddle_event(sid, reply, &payload),
                    Some(Sub::Live { .. }) => match inboxes::sequence_of(&headers) {
                        Some(seq) => self.inbox_event(sid, seq, headers, payload),
                        None => self.live_event(sid, reply, &payload),
                    },
                    Some(Sub::Presence(user)) => {
                        let Some((online, at_ms, instance)) = relay::parse_announcement(&payload)
                        else {
                            debug!("cluster: a presence announcement that does not parse");
                            continue;
                        };
                        let report = self.holders.announced(user, instance, online, at_ms);
                        self.report(report);
                    }
                    None => self.unsubscribed_meanwhile(&subject, reply, &payload),
                },
                Op::Err(e) => warn!("cluster: NATS said: {e}"),
                Op::Pong => self.pings.0 = 0,
                Op::Info { .. } | Op::Ok => {}
            }
        }
        Ok(())
    }

    /// A message on a subscription dropped since (the user let go here), which the
    /// server sent before it heard: dropped, unless it is a question about presence
    /// events for a user held here again, on a new subscription that the server may not
    /// have had when it routed the question. Silence would have the asker report the
    /// user offline; the answer is the holding's, whichever subscription brought it.
    fn unsubscribed_meanwhile(&mut self, subject: &[u8], reply: Option<Bytes>, payload: &Bytes) {
        let held_again = std::str::from_utf8(subject)
            .ok()
            .and_then(|subject| subject.strip_prefix("chat.live."))
            .and_then(relay::from_subject_token)
            .and_then(|user| self.sids.get(&*user).copied());
        let Some(sid) = held_again else {
            return;
        };
        if presence_events::heard(payload, 0, &self.instance).is_some() {
            self.live_event(sid, reply, payload);
        }
    }

    /// A live event for a user this node holds: to the user's home reactor here, if a
    /// device of the user is online here. A call signal's request is answered: a node
    /// took it, or holds the user with no device to ring. A question is answered with
    /// this instance (it holds the user), or with whether a device is online here.
    fn live_event(&mut self, sid: u64, reply: Option<Bytes>, payload: &Bytes) {
        let Some(Sub::Live {
            user,
            home,
            devices,
            since_ms,
        }) = self.by_sid.get(&sid)
        else {
            return;
        };
        match presence_events::heard(payload, *since_ms, &self.instance) {
            Some(heard @ (Heard::LetGo { .. } | Heard::Gained(_))) => {
                let (held, asker) = match heard {
                    Heard::LetGo { asker } => (true, Some(Box::<str>::from(asker))),
                    _ => (heard == Heard::Gained(true), None),
                };
                // Only a holding that is kept answers: a node that dies with one not
                // written yet must not have taken the report over. One being written
                // answers once it is kept, or past the asker's wait checks the user
                // again: the asker reported the change on silence.
                let kept = self.holdings.as_ref().is_some_and(|h| h.kept(user));
                match reply.filter(|_| held) {
                    Some(reply) if kept => {
                        let user = user.clone();
                        self.answer_held(&user, &reply, asker.as_deref());
                    }
                    Some(reply) => {
                        let until = Instant::now() + presence_events::CHECK_WAIT;
                        let waiting = self.held_unkept.entry(user.clone()).or_default();
                        waiting.push(HeldUnkept {
                            reply,
                            asker,
                            until,
                        });
                    }
                    None => {}
                }
                return;
            }
            Some(Heard::Recheck) => {
                let (user, since_ms) = (user.clone(), *since_ms);
                return self.recheck_presence_event(user, since_ms);
            }
            None => {}
        }
        if payload[..] == *relay::QUESTION {
            if let Some(reply) = reply {
                wire::publish(&mut self.out, &reply, None, self.instance.as_bytes());
            }
            return;
        }
        if payload[..] == *relay::DEVICES_QUESTION {
            if let Some(reply) = reply {
                let answer = match *devices {
                    true => relay::DEVICES_HERE,
                    false => relay::DEVICES_AWAY,
                };
                wire::publish(&mut self.out, &reply, None, answer);
            }
            return;
        }
        let Some((frame, priority)) = relay::decode(payload) else {
            return debug!("cluster: a live event that does not parse, dropped");
        };
        if let Some(reply) = reply {
            let answer = if *devices {
                relay::CALL_TAKEN
            } else {
                relay::CALL_AWAY
            };
            wire::publish(&mut self.out, &reply, None, answer);
        }
        if !*devices {
            return;
        }
        self.to_devices_here(user, *home, (frame, priority), None);
    }

    /// An inbox event JetStream stored and republished, with its `seq`: to the user's
    /// home reactor here, for the devices online here, in its turn ([`Inboxes::live`]).
    fn inbox_event(&mut self, sid: u64, seq: u64, headers: Bytes, payload: Bytes) {
        let Some(Sub::Live { user, .. }) = self.by_sid.get(&sid) else {
            return;
        };
        let user = user.clone();
        let event = (seq, headers, payload);
        if let Some(ready) = self.inboxes.live(&user, event, &mut self.out) {
            self.hand_over(&user, ready);
        }
    }

    /// Hands the gaps read from the stream to the devices here, each followed by the
    /// events that waited for it; devices that cannot have them all are closed.
    fn gaps_filled(&mut self) {
        for (user, caught) in self.inboxes.take_ready() {
            match caught {
                Caught::Up(events) => {
                    for ready in events {
                        self.hand_over(&user, ready);
                    }
                }
                Caught::Missed => self.events_missed(&user),
            }
        }
    }

    /// `user`'s devices here missed events: their home closes them.
    fn events_missed(&self, user: &str) {
        warn!(%user, "cluster: inbox events removed before this node could read them; the user's devices here resume");
        let sub = self.sids.get(user).and_then(|sid| self.by_sid.get(sid));
        if let Some(Sub::Live { home, .. }) = sub {
            let reply = Reply::EventsMissed { user: user.into() };
            self.reactors
                .send(usize::from(*home), Inbound::Store(reply));
        }
    }

    /// An inbox event of `user`'s, in its turn, for the devices here.
    fn hand_over(&self, user: &str, ready: Ready) {
        match ready {
            Ready::Read(event) => {
                let frame = Outgoing::with_seq(event.kind, &event.json, event.seq);
                self.to_user_here(user, frame, event.priority, None);
            }
            Ready::Live {
                seq,
                headers,
                payload,
            } => self.deliver_stored(user, seq, &headers, &payload),
        }
    }

    /// A stored event of `user`, numbered `seq`, for the devices here (but a group post's
    /// sending device, which its `headers` may name).
    fn deliver_stored(&self, user: &str, seq: u64, headers: &[u8], payload: &Bytes) {
        let Some((kind, priority, json)) = inboxes::decode_event(payload) else {
            return debug!("cluster: a stored inbox event that does not parse, dropped");
        };
        let frame = Outgoing::with_seq(kind, &json, seq);
        let except = self.inboxes.except_here(headers).map(ConnAddr::from);
        self.to_user_here(user, frame, priority, except);
    }

    /// Hands `frame` to `user`'s home reactor here, if a device of the user is online
    /// here (in the grace it waits in the inbox), for every device but `except`.
    fn to_user_here(
        &self,
        user: &str,
        frame: Outgoing,
        priority: Priority,
        except: Option<ConnAddr>,
    ) {
        let sub = self.sids.get(user).and_then(|sid| self.by_sid.get(sid));
        if let Some(Sub::Live {
            home,
            devices: true,
            ..
        }) = sub
        {
            self.to_devices_here(user, *home, (frame, priority), except);
        }
    }

    /// Hands a frame that came from another node to `user`'s home reactor `home` here,
    /// as a delivery for the devices here but `except` ([`Durability::Relayed`]: never
    /// published again, never a `peer_offline`).
    fn to_devices_here(
        &self,
        user: &str,
        home: u16,
        (frame, priority): (Outgoing, Priority),
        except: Option<ConnAddr>,
    ) {
        let mut delivery = Delivery::new(user, (frame, priority), 0, Durability::Relayed);
        delivery.except = except;
        let mail = Inbound::Mail(Envelope::Deliver(Box::new(delivery)));
        self.reactors.send(usize::from(home), mail);
    }

    /// A huddle signal from a device on another node: to the group's home here, for the
    /// devices in the room here (which, for a join, introduce themselves to the joiner).
    fn huddle_event(&mut self, sid: u64, reply: Option<Bytes>, payload: &Bytes) {
        let Some(Sub::Huddle { group, room, home }) = self.by_sid.get(&sid) else {
            return;
        };
        let Some((&kind, _)) = payload.split_first() else {
            return debug!("cluster: an empty huddle signal, dropped");
        };
        let frame = Outgoing {
            kind: OutKind::Signal,
            bytes: payload.slice(1..),
        };
        let introduce_to = reply
            .filter(|_| kind == HUDDLE_JOIN)
            .map(|r| String::from_utf8_lossy(&r).into());
        let relayed = HuddleRelayed {
            group: group.clone(),
            room: room.clone(),
            frame,
            introduce_to,
        };
        let mail = Inbound::Mail(Envelope::HuddleRelayed(Box::new(relayed)));
        self.reactors.send(usize::from(*home), mail);
    }

    /// Another node's introduction for a device here that joined a huddle: one
    /// `huddle:join` frame, written to the device.
    fn introduced(&mut self, join: Option<u64>, payload: Bytes) {
        let Some((joiner, _)) = join.and_then(|join| self.joins.get(&join)) else {
            return; // answered after its wait
        };
        let frame = Envelope::ToConn {
            addr: *joiner,
            frame: Outgoing {
                kind: OutKind::Signal,
                bytes: payload,
            },
            priority: Priority::High,
            accepted_ns: 0,
        };
        self.reactors
            .send(usize::from(joiner.reactor), Inbound::Mail(frame));
    }

    /// A holding a reap's walk pulled (its consumer's delivery comes to the pull's reply
    /// subject, on its own subject, with the consumer's acknowledgement subject).
    fn walked(&mut self, subject: &[u8], ack: &[u8], payload: &[u8]) {
        let behind = self.events_behind();
        let Some(holdings) = &mut self.holdings else {
            return;
        };
        holdings.pace(behind);
        let moved = holdings.delivered(subject, ack, payload, &mut self.out);
        self.holdings_moved(moved);
    }

    /// An answer on the inbox: another node's figures (`s<gather>`), a presence
    /// question's (`p<question>`), JetStream's (`j<request>`), or a call's.
    fn answered(&mut self, subject: &[u8], status: Option<u16>, headers: &[u8], payload: Bytes) {
        let Some(rest) = subject.strip_prefix(self.inbox.as_bytes()) else {
            return;
        };
        let number = |digits: &[u8]| std::str::from_utf8(digits).ok()?.parse::<u64>().ok();
        match rest.split_first() {
            Some((b's', gather)) => self.stats_answered(gather, status, payload),
            Some((b'b', gather)) => {
                let Some(gather) = number(gather) else {
                    return;
                };
                let Some(under_way) = self.broadcasts.get_mut(&gather) else {
                    return; // answered after its wait
                };
                match status {
                    Some(_) => under_way.expected = 0, // no other node
                    None => {
                        let count = std::str::from_utf8(&payload).ok();
                        under_way.delivered += count.and_then(|c| c.parse().ok()).unwrap_or(0);
                        under_way.answered += 1;
                    }
                }
                if under_way.answered >= under_way.expected {
                    self.finish_broadcast(gather);
                }
            }
            Some((b'a', gather)) => {
                let Some(gather) = number(gather) else {
                    return;
                };
                let Some(under_way) = self.admin_calls.get_mut(&gather) else {
                    return; // answered after its wait
                };
                match (status, relay::decode_admin_part(&payload)) {
                    (Some(_), _) => under_way.expected = 0, // no other node
                    (None, Some(part)) => under_way.parts.push(part),
                    (None, None) => {
                        warn!("cluster: a node's part of an operator's call does not parse");
                        under_way.expected = under_way.expected.saturating_sub(1);
                    }
                }
                if under_way.parts.len() >= under_way.expected as usize {
                    self.finish_admin_call(gather);
                }
            }
            Some((b'e', check)) => {
                let Some(check) = number(check) else {
                    return;
                };
                // An answer: a holder reports it; "no responders": nobody holds the user.
                let settled = self.event_checks.answered(check, status.is_none());
                self.settle_presence_events(settled);
            }
            Some((b'r', request)) => {
                let behind = self.events_behind();
                let Some(holdings) = &mut self.holdings else {
                    return;
                };
                holdings.pace(behind);
                let moved = holdings.answered(request, status, headers, &payload, &mut self.out);
                self.holdings_moved(moved);
            }
            Some((b'h', join)) if status.is_none() => self.introduced(number(join), payload),
            Some((b'h', _)) => {} // no other node has a device in the room
            Some((b'j', request)) => {
                self.inboxes.set_index_ready(self.history.indexed());
                let replies =
                    self.inboxes
                        .answered(request, status, headers, &payload, &mut self.out);
                self.send_replies(replies);
                self.gaps_filled();
                for kept in self.inboxes.take_kept() {
                    self.history.record(kept, &mut self.out);
                }
            }
            Some((b'k', request)) => {
                let replies =
                    self.history
                        .answered(request, status, headers, &payload, &mut self.out);
                self.send_replies(replies);
            }
            Some((b'p', question)) => {
                let Some(question) = number(question) else {
                    return;
                };
                let now_ms = (self.wall_ms)();
                let report = match (status, std::str::from_utf8(&payload)) {
                    (Some(503), _) => self.holders.unanswered(question, now_ms),
                    (None, Ok(instance)) if !instance.is_empty() => {
                        self.holders.answered(question, instance, now_ms)
                    }
                    _ => None,
                };
                self.report(report);
            }
            _ => self.call_answered(number(rest), status, &payload),
        }
    }

    /// Sends an `all:true` broadcast to the other nodes; their count goes to the
    /// requester's reactor once they all answered, or after [`STATS_WAIT`] (none if NATS
    /// is out of reach).
    fn broadcast(
        &mut self,
        requester: ConnAddr,
        request: u32,
        message: &crate::router::BroadcastMessage,
        connected: bool,
    ) {
        let gather = self.next_gather;
        self.next_gather += 1;
        let expected = self.state.nodes().saturating_sub(1);
        let under_way = BroadcastGather {
            reactor: usize::from(requester.reactor),
            request,
            delivered: 0,
            answered: 0,
            expected: if connected { expected } else { 0 },
            until: Instant::now() + STATS_WAIT,
        };
        self.broadcasts.insert(gather, under_way);
        if !connected || expected == 0 {
            return self.finish_broadcast(gather);
        }
        let reply = format!("{}b{gather}", self.inbox);
        let payload = relay::encode_broadcast(message);
        wire::publish(
            &mut self.out,
            BROADCAST_SUBJECT.as_bytes(),
            Some(&reply),
            &payload,
        );
    }

    /// The other nodes' count for broadcast `gather`, to its requester's reactor.
    fn finish_broadcast(&mut self, gather: u64) {
        let Some(done) = self.broadcasts.remove(&gather) else {
            return;
        };
        let counts = Envelope::BroadcastReply {
            request: done.request,
            delivered: u32::try_from(done.delivered).unwrap_or(u32::MAX),
            offline: 0,
        };
        self.reactors.send(done.reactor, Inbound::Mail(counts));
    }

    /// Sends an operator's call about users to the other nodes; their parts go to
    /// `reactor` once they all answered, or after [`STATS_WAIT`] (none if NATS is out of
    /// reach: the answer then says how many nodes it speaks for).
    fn admin_call(&mut self, reactor: u16, request: u32, said: &[u8], connected: bool) {
        let gather = self.next_gather;
        self.next_gather += 1;
        let known = self.state.nodes().max(1);
        let expected = known - 1;
        let under_way = AdminGather {
            reactor,
            request,
            parts: Vec::new(),
            expected: if connected { expected } else { 0 },
            known,
            until: Instant::now() + STATS_WAIT,
        };
        self.admin_calls.insert(gather, under_way);
        if !connected || expected == 0 {
            return self.finish_admin_call(gather);
        }
        let reply = format!("{}a{gather}", self.inbox);
        wire::publish(&mut self.out, ADMIN_SUBJECT.as_bytes(), Some(&reply), said);
    }

    /// The other nodes' parts of operator's call `gather`, to the reactor where it waits.
    fn finish_admin_call(&mut self, gather: u64) {
        let Some(done) = self.admin_calls.remove(&gather) else {
            return;
        };
        let nodes = crate::router::NodesAnswer {
            request: done.request,
            this_node: self.node_id.as_str().into(),
            parts: done.parts,
            known: done.known,
        };
        let mail = Inbound::Mail(Envelope::AdminNodes(Box::new(nodes)));
        self.reactors.send(usize::from(done.reactor), mail);
    }

    /// Starts gathering every node's figures for `asker`, with this node's `local`.
    fn gather_stats(&mut self, asker: ConnAddr, local: &[u8], connected: bool) {
        if !connected {
            let unavailable = Inbound::Stats { asker, body: None };
            return self.reactors.send(usize::from(asker.reactor), unavailable);
        }
        let gather = self.next_gather;
        self.next_gather += 1;
        let reply = format!("{}s{gather}", self.inbox);
        wire::publish(&mut self.out, STATS_SUBJECT.as_bytes(), Some(&reply), b"");
        let parts = vec![totals::node_part(&self.node_id, local)];
        let expected = self.state.nodes().max(1);
        let until = Instant::now() + STATS_WAIT;
        let started = Gather {
            asker,
            parts,
            expected,
            until,
        };
        self.gathers.insert(gather, started);
        self.finish_gather_if_whole(gather);
    }

    /// Another node's figures for gather `gather`; "no responders" (503) means this node
    /// is alone.
    fn stats_answered(&mut self, gather: &[u8], status: Option<u16>, payload: Bytes) {
        let Some(gather) = std::str::from_utf8(gather)
            .ok()
            .and_then(|g| g.parse().ok())
        else {
            return;
        };
        let Some(under_way) = self.gathers.get_mut(&gather) else {
            return; // answered after its wait
        };
        match status {
            Some(_) => under_way.expected = 1,
            None => under_way.parts.push(payload.to_vec()),
        }
        self.finish_gather_if_whole(gather);
    }

    /// Answers gather `gather` once every node known alive has answered.
    fn finish_gather_if_whole(&mut self, gather: u64) {
        let whole = self
            .gathers
            .get(&gather)
            .is_some_and(|g| g.parts.len() >= g.expected as usize);
        if whole {
            if let Some(done) = self.gathers.remove(&gather) {
                self.answer_gather(done);
            }
        }
    }

    fn answer_gather(&self, done: Gather) {
        let body = totals::cluster_stats(&done.parts, done.expected);
        let answer = Inbound::Stats {
            asker: done.asker,
            body: Some(body),
        };
        self.reactors.send(usize::from(done.asker.reactor), answer);
    }

    /// An answer to call signal `<inbox><call>`: a node took it; or (503) none holds the
    /// receiver, and the caller hears `peer_offline`; or a node holds the receiver in its
    /// grace, and the call waits [`AWAY_WAIT`] more for a node that takes it.
    fn call_answered(&mut self, call: Option<u64>, status: Option<u16>, answer: &[u8]) {
        let Some(call) = call else {
            return;
        };
        if status.is_none() && answer == relay::CALL_AWAY {
            if let Some(waiting) = self.calls.get_mut(&call) {
                waiting.away = true;
                waiting.until = waiting.until.min(Instant::now() + AWAY_WAIT);
            }
            return;
        }
        let Some(waiting) = self.calls.remove(&call) else {
            return;
        };
        if status == Some(503) {
            self.call_not_taken(waiting.caller, waiting.reference, ErrorCode::PeerOffline);
        }
    }

    /// Tells `caller` (`code`) that its call `reference` reached no device.
    fn call_not_taken(&self, caller: ConnAddr, reference: Box<str>, code: ErrorCode) {
        let not_taken = Inbound::CallNotTaken {
            caller,
            reference,
            code,
        };
        self.reactors.send(usize::from(caller.reactor), not_taken);
    }

    /// Pings the server every [`PING_EVERY`]; false once two pings went unanswered.
    fn ping_due(&mut self) -> bool {
        let (unanswered, last) = self.pings;
        if last.elapsed() < PING_EVERY {
            return true;
        }
        if unanswered >= 2 {
            return false;
        }
        wire::ping(&mut self.out);
        self.pings = (unanswered + 1, Instant::now());
        true
    }

    /// Tells the callers whose calls waited longer than [`CALL_WAIT`] that the cluster
    /// is out of reach (or, if a node holds the receiver in its grace, that the receiver
    /// is offline), answers the gathers that waited [`STATS_WAIT`] with the figures that
    /// came, and settles the presence questions that waited long enough.
    pub(super) fn expire_waits(&mut self) {
        let now = Instant::now();
        let mut late: Vec<(u64, Call)> =
            self.calls.extract_if(|_, call| call.until <= now).collect();
        late.sort_unstable_by_key(|(number, _)| *number);
        for (_, call) in late {
            let code = if call.away {
                ErrorCode::PeerOffline
            } else {
                ErrorCode::ClusterUnavailable
            };
            self.call_not_taken(call.caller, call.reference, code);
        }
        let late: Vec<Gather> = self
            .gathers
            .extract_if(|_, gather| gather.until <= now)
            .map(|(_, gather)| gather)
            .collect();
        for done in late {
            self.answer_gather(done);
        }
        for gather in due(&self.broadcasts, now, |b| b.until) {
            self.finish_broadcast(gather);
        }
        for gather in due(&self.admin_calls, now, |call| call.until) {
            self.finish_admin_call(gather);
        }
        self.joins.retain(|_, (_, until)| *until > now);
        let now_ms = (self.wall_ms)();
        let unanswered = self.event_checks.expire(now, now_ms);
        let silenced: Vec<Arc<str>> = (unanswered.iter())
            .filter(|settled| !settled.online)
            .map(|settled| settled.user.clone())
            .collect();
        self.settle_presence_events(unanswered);
        // A subscriber that did not answer may hold the user.
        for user in silenced {
            self.recheck_holders(&user, now_ms);
        }
        let mut given_up = Vec::new();
        self.held_unkept.retain(|user, waiting| {
            waiting.retain(|question| question.until > now);
            if waiting.is_empty() {
                given_up.push(user.clone());
            }
            !waiting.is_empty()
        });
        for user in given_up {
            self.recheck_if_held(user);
        }
        self.vouched.expire(now);
        self.recheck_more();
        let settled = self.holders.expire(now, (self.wall_ms)());
        self.report(settled);
        let failed = self.inboxes.expire(now, &mut self.out);
        self.send_replies(failed);
        self.gaps_filled();
        let connected = self
            .state
            .relay_connected
            .load(std::sync::atomic::Ordering::Acquire);
        let failed = self.history.expire(now, connected, &mut self.out);
        self.send_replies(failed);
        let behind = self.events_behind();
        if let Some(holdings) = &mut self.holdings {
            let claimed = self
                .state
                .claimed
                .load(std::sync::atomic::Ordering::Acquire);
            holdings.pace(behind);
            let moved = holdings.expire(now, claimed, &mut self.out);
            self.holdings_moved(moved);
        }
    }
}

/// The live relay's simulator drives a relayer through these: its bytes go to a
/// simulated server, and its presence is dated by the simulator's clock.
#[cfg(any(test, feature = "simulation"))]
impl Relayer {
    /// What is to be written to the connection, taken.
    pub(super) fn take_written(&mut self) -> BytesMut {
        self.out.split()
    }

    /// Dates presence and history entries by `wall_ms` instead of the system's clock.
    pub(super) fn with_wall_clock(mut self, wall_ms: fn() -> u64) -> Relayer {
        self.wall_ms = wall_ms;
        self.history = self.history.with_wall_clock(wall_ms);
        self
    }
}

/// The gathers in `waiting` whose wait, `until`, is over at `now`, in the order they
/// started.
fn due<T>(waiting: &HashMap<u64, T>, now: Instant, until: impl Fn(&T) -> Instant) -> Vec<u64> {
    let mut due: Vec<u64> = waiting
        .iter()
        .filter(|(_, gather)| until(gather) <= now)
        .map(|(id, _)| *id)
        .collect();
    due.sort_unstable();
    due
}

/// Reads what the socket has into `inbuf` (0: closed).
async fn read_some(conn: Option<&mut Conn>, inbuf: &mut BytesMut) -> io::Result<usize> {
    match conn {
        Some(stream) => {
            inbuf.reserve(READ_CHUNK);
            stream.read_buf(inbuf).await
        }
        None => std::future::pending().await,
    }
}

/// Writes everything in `out`.
async fn flush(stream: &mut Conn, out: &mut BytesMut) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    stream.write_all(out).await?;
    out.clear();
    Ok(())
}

/// The cluster thread's doorbell, as tokio waits on its eventfd.
struct BellFd(Arc<Doorbell>);

impl AsRawFd for BellFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd()
    }
}
