//! The cluster thread's side of the live relay ([`super::relay`]): its own NATS connection,
//! spoken with [`super::wire`], the subscriptions of the users this node holds, and the
//! call signals waiting on an answer.
//!
//! One task owns everything: it wakes on the reactors' doorbell (relays to carry out), on
//! the socket (the server's operations), on the reconnect timer, and once a second (calls
//! that got no answer). While NATS is out of reach it keeps the subscriptions in its maps
//! and drops live events (they are never kept), and a call for a user with no device on
//! this node gets `cluster_unavailable`. On reconnecting it subscribes to every user again.
//!
//! Per user online on this node it keeps two map entries (user → subscription, and back),
//! and the server keeps one subscription.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{mpsc, Arc},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use tokio::{
    io::{unix::AsyncFd, AsyncReadExt, AsyncWriteExt, Interest},
    net::TcpStream,
    time::Instant,
};
use tracing::{debug, error, info, warn};

use super::{
    relay::{self, Inbound, Reactors, Relay},
    totals,
    wire::{self, Op},
    State,
};
use crate::{
    protocol::codes::ErrorCode,
    router::{ConnAddr, Delivery, Durability, Envelope},
    sockets::Doorbell,
};

/// The subscription for the answers to this node's requests: `<inbox><call>` for call
/// signals, `<inbox>s<gather>` for the other nodes' figures.
const INBOX_SID: u64 = 1;
/// The subscription on which every node asks the others for their figures.
const STATS_SID: u64 = 2;
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

/// A `/api/stats?scope=cluster` under way: who asks, the parts so far, and until when.
struct Gather {
    asker: ConnAddr,
    parts: Vec<Vec<u8>>,
    /// Live nodes when it started, this one included.
    expected: u32,
    until: Instant,
}

/// The relay's connection and what it serves.
pub(super) struct Relayer {
    /// `host:port` of each NATS server, tried in turn.
    servers: Vec<String>,
    /// The connection's name on the server.
    name: String,
    reactors: Reactors,
    /// The user each subscription is for, and the user's home reactor here.
    by_sid: HashMap<u64, (Arc<str>, u16)>,
    /// Each watched user's subscription.
    sids: HashMap<Arc<str>, u64>,
    next_sid: u64,
    /// `_INBOX.<random>.`: where the answers to this node's call signals come.
    inbox: String,
    /// Call signals waiting on an answer: the caller, the call id, and until when.
    calls: HashMap<u64, (ConnAddr, Box<str>, Instant)>,
    next_call: u64,
    /// What is to be written to the connection.
    out: BytesMut,
    /// This node's id, in its figures.
    node_id: String,
    /// How many nodes are alive.
    state: Arc<State>,
    /// This node's figures, for the others.
    local_stats: LocalStats,
    gathers: HashMap<u64, Gather>,
    next_gather: u64,
    /// Pings sent and not yet answered, and when the last went.
    pings: (u32, Instant),
}

/// What woke the relayer.
enum Wake {
    Doorbell,
    Read(io::Result<usize>),
    Reconnect,
    Tick,
}

impl Relayer {
    /// A relayer for node `node_id` on `servers` (`nats://host:port` each), delivering
    /// to `reactors`.
    pub(super) fn new(
        servers: &[String],
        node_id: &str,
        reactors: Reactors,
        (state, local_stats): (Arc<State>, LocalStats),
    ) -> Relayer {
        Relayer {
            node_id: node_id.into(),
            state,
            local_stats,
            gathers: HashMap::new(),
            next_gather: 0,
            pings: (0, Instant::now()),
            servers: servers
                .iter()
                .map(|s| s.trim_start_matches("nats://").to_owned())
                .collect(),
            name: format!("engine {node_id} relay"),
            reactors,
            by_sid: HashMap::new(),
            sids: HashMap::new(),
            next_sid: STATS_SID + 1,
            inbox: format!("_INBOX.{}.", super::instance_token_hex()),
            calls: HashMap::new(),
            next_call: 0,
            out: BytesMut::new(),
        }
    }

    /// Carries out what the shards ask, woken by `doorbell`, until every reactor is gone
    /// (the engine stops) or the doorbell cannot be waited on.
    pub(super) async fn run(mut self, relays: mpsc::Receiver<Relay>, doorbell: Arc<Doorbell>) {
        // SAFETY: `BellFd` holds the doorbell, which owns the eventfd and closes it only
        // when dropped: the fd stays open, and is not replaced, while tokio watches it.
        let registered = unsafe {
            AsyncFd::register_with_interest(BellFd(doorbell.clone()), Interest::READABLE)
        };
        let bell = match registered {
            Ok(bell) => bell,
            Err(e) => return error!("cluster: the relay's doorbell cannot be waited on: {e}"),
        };
        let mut conn: Option<TcpStream> = None;
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
                Wake::Reconnect => match self.open(attempts).await {
                    Ok(stream) => {
                        attempts = 0;
                        inbuf.clear();
                        self.pings = (0, Instant::now());
                        conn = Some(stream);
                    }
                    Err(e) => {
                        attempts += 1;
                        debug!(attempts, "cluster: relay connection: {e}");
                    }
                },
                Wake::Tick => {
                    self.expire_waits();
                    if conn.is_some() && !self.ping_due() {
                        warn!("cluster: NATS did not answer two pings; reconnecting");
                        conn = None;
                    }
                }
            }
            self.state
                .relay_connected
                .store(conn.is_some(), std::sync::atomic::Ordering::Release);
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

    /// Connects to the next server, says who it is, waits for its `PONG`, and subscribes
    /// to the call answers and every watched user.
    async fn open(&mut self, attempts: u32) -> io::Result<TcpStream> {
        let server = &self.servers[attempts as usize % self.servers.len()];
        let timeout = |e| io::Error::new(io::ErrorKind::TimedOut, e);
        let mut stream = tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(server))
            .await
            .map_err(timeout)??;
        stream.set_nodelay(true)?;
        let mut hello = BytesMut::new();
        wire::connect(&mut hello, &self.name);
        wire::subscribe(&mut hello, &format!("{}*", self.inbox), INBOX_SID);
        wire::subscribe(&mut hello, STATS_SUBJECT, STATS_SID);
        for (sid, (user, _)) in &self.by_sid {
            wire::subscribe(&mut hello, &relay::live_subject(user), *sid);
        }
        stream.write_all(&hello).await?;
        let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
        let handshake = async {
            loop {
                if stream.read_buf(&mut inbuf).await? == 0 {
                    return Err(io::Error::other("closed during the handshake"));
                }
                while let Some(op) = wire::next_op(&mut inbuf).map_err(io::Error::other)? {
                    match op {
                        Op::Pong => return Ok(()),
                        Op::Err(e) => return Err(io::Error::other(e)),
                        _ => {}
                    }
                }
            }
        };
        tokio::time::timeout(CONNECT_WAIT, handshake)
            .await
            .map_err(timeout)??;
        info!(server, users = self.sids.len(), "cluster: relay connected");
        Ok(stream)
    }

    /// One relay from a shard; written to the connection if there is one.
    fn carry_out(&mut self, relay: Relay, connected: bool) {
        match relay {
            Relay::Watch { user, home } => {
                if let Some(sid) = self.sids.get(&user) {
                    self.by_sid.insert(*sid, (user, home));
                    return;
                }
                let sid = self.next_sid;
                self.next_sid += 1;
                if connected {
                    wire::subscribe(&mut self.out, &relay::live_subject(&user), sid);
                }
                self.sids.insert(user.clone(), sid);
                self.by_sid.insert(sid, (user, home));
            }
            Relay::Stats { asker, local } => self.gather_stats(asker, &local, connected),
            Relay::Unwatch { user } => {
                if let Some(sid) = self.sids.remove(&user) {
                    self.by_sid.remove(&sid);
                    if connected {
                        wire::unsubscribe(&mut self.out, sid);
                    }
                }
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
                        let until = Instant::now() + CALL_WAIT;
                        self.calls.insert(call, (caller, reference, until));
                    }
                }
            }
        }
    }

    /// Acts on every whole operation read so far.
    fn take_ops(&mut self, inbuf: &mut BytesMut) -> Result<(), wire::WireError> {
        while let Some(op) = wire::next_op(inbuf)? {
            match op {
                Op::Ping => wire::pong(&mut self.out),
                Op::Msg {
                    sid: INBOX_SID,
                    subject,
                    status,
                    payload,
                    ..
                } => self.answered(&subject, status, payload),
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
                    reply,
                    payload,
                    ..
                } => self.live_event(sid, reply, &payload),
                Op::Err(e) => warn!("cluster: NATS said: {e}"),
                Op::Pong => self.pings.0 = 0,
                Op::Info | Op::Ok => {}
            }
        }
        Ok(())
    }

    /// A live event for a user this node holds: to the user's home reactor here. A call
    /// signal's request is answered: a node took it.
    fn live_event(&mut self, sid: u64, reply: Option<Bytes>, payload: &Bytes) {
        let Some((user, home)) = self.by_sid.get(&sid) else {
            return; // unsubscribed meanwhile
        };
        let Some((frame, priority)) = relay::decode(payload) else {
            return debug!("cluster: a live event that does not parse, dropped");
        };
        let delivery = Delivery {
            user: (**user).into(),
            frame,
            priority,
            except: None,
            ack: None,
            copy_of: None,
            accepted_ns: 0,
            durability: Durability::Relayed,
        };
        let mail = Inbound::Mail(Envelope::Deliver(Box::new(delivery)));
        self.reactors.send(usize::from(*home), mail);
        if let Some(reply) = reply {
            wire::publish(&mut self.out, &reply, None, b"");
        }
    }

    /// An answer on the inbox: another node's figures (`s<gather>`), or a call's.
    fn answered(&mut self, subject: &[u8], status: Option<u16>, payload: Bytes) {
        let Some(rest) = subject.strip_prefix(self.inbox.as_bytes()) else {
            return;
        };
        match rest.strip_prefix(b"s") {
            Some(gather) => self.stats_answered(gather, status, payload),
            None => self.call_answered(rest, status),
        }
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

    /// The answer to call signal `<inbox><call>`: a node took it, or (503) none holds
    /// the receiver, and the caller hears `peer_offline`.
    fn call_answered(&mut self, call: &[u8], status: Option<u16>) {
        let call = std::str::from_utf8(call)
            .ok()
            .and_then(|n| n.parse::<u64>().ok());
        let Some((caller, reference, _)) = call.and_then(|call| self.calls.remove(&call)) else {
            return;
        };
        if status == Some(503) {
            self.call_not_taken(caller, reference, ErrorCode::PeerOffline);
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
    /// is out of reach, and answers the gathers that waited [`STATS_WAIT`] with the
    /// figures that came.
    fn expire_waits(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, (_, _, until))| *until <= now)
            .map(|(call, _)| *call)
            .collect();
        for call in late {
            if let Some((caller, reference, _)) = self.calls.remove(&call) {
                self.call_not_taken(caller, reference, ErrorCode::ClusterUnavailable);
            }
        }
        let late: Vec<u64> = self
            .gathers
            .iter()
            .filter(|(_, g)| g.until <= now)
            .map(|(id, _)| *id)
            .collect();
        for gather in late {
            if let Some(done) = self.gathers.remove(&gather) {
                self.answer_gather(done);
            }
        }
    }
}

/// Reads what the socket has into `inbuf` (0: closed).
async fn read_some(conn: Option<&mut TcpStream>, inbuf: &mut BytesMut) -> io::Result<usize> {
    match conn {
        Some(stream) => {
            inbuf.reserve(READ_CHUNK);
            stream.read_buf(inbuf).await
        }
        None => std::future::pending().await,
    }
}

/// Writes everything in `out`.
async fn flush(stream: &mut TcpStream, out: &mut BytesMut) -> io::Result<()> {
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
