//! One reactor's state and the connection lifecycle: adopt, read, write, close, and the
//! batch run on each wake-up (events, mailboxes, backlog, doorbells).

use std::{
    io,
    os::fd::RawFd,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use slab::Slab;
use tracing::{debug, warn};

use super::{ReactorSeed, Shared};
use crate::conn::{self, Conn, Flags, InboxFrame, OutQueue, Phase};
use crate::{
    mailbox::{self, BatchConsumer, Outbox},
    protocol::{
        codes::OutKind,
        inbound::JsonParser,
        outbound::{OutJson, Outgoing},
        Priority,
    },
    router::{gather::Gathers, ConnAddr, Envelope},
    shard::{Effects, Shard},
    sockets::{self, Sockets, BROKEN, PEER_CLOSED, READABLE, REARM, WRITABLE},
    stats::ReactorStats,
    timer::{self, TimerWheel},
    tls::TlsInput,
    ws::{close, frame},
};

/// The per-reactor read buffer: every socket is read into it, then only a partial frame's
/// bytes are copied into the connection.
pub(crate) const READ_BUFFER_BYTES: usize = 64 * 1024;
/// The most bytes read from one connection per batch before others get a turn.
pub(crate) const READ_BYTES_PER_BATCH_MAX: usize = 256 * 1024;
/// How long a closing handshake may take before the socket is dropped.
pub(crate) const CLOSE_TIMEOUT_MS: u64 = 2_000;
/// The readiness token of the doorbell; connections use `slot | generation << 32`.
const DOORBELL_TOKEN: u64 = 1 << 63;
/// Generations stay below 2^31, so a connection's token stays below [`DOORBELL_TOKEN`].
const GENERATION_MAX: u32 = (1 << 31) - 1;
/// Entries of capacity each per-turn scratch buffer keeps between turns (a few hundred
/// KiB a reactor in all); see [`Reactor::trim_scratch`].
const SCRATCH_KEPT: usize = 4096;

/// What an API broadcast gathers from the homes it was sent to.
#[derive(Debug, Default)]
pub(crate) struct BroadcastCounts {
    /// Users reached.
    pub(crate) delivered: u64,
    /// Users with no device online whose queue now holds it.
    pub(crate) queued: u64,
    /// Users it could be neither delivered to nor queued for (full queue, store error).
    pub(crate) offline: u64,
    /// For another node's broadcast: where that node waits for the count (no connection
    /// here waits).
    pub(crate) answer_to: Option<Box<str>>,
}

/// One reactor's state; lives in its thread only.
pub(crate) struct Reactor {
    /// This reactor's index.
    pub(crate) id: usize,
    /// Shared configuration and counters.
    pub(crate) shared: Arc<Shared>,
    /// The connections.
    pub(crate) conns: Slab<Conn>,
    /// Generation for the next connection.
    next_generation: u32,
    /// The sockets and the readiness set (the doorbell is in it too).
    pub(super) sockets: Sockets,
    /// The chat state this reactor is home for.
    pub(crate) shard: Shard,
    /// The shard's effects not yet carried out.
    pub(crate) effects: Effects,
    /// Set while effects are being carried out, so that an effect that feeds the shard
    /// again adds to the same queue instead of starting a nested loop.
    pub(crate) carrying_out: bool,
    /// Inbox events written this batch to devices that do not acknowledge (v1): they are
    /// taken to have them, one store ack per user at the end of the batch.
    v1_acks: Vec<(Arc<str>, u64)>,
    /// Rings to the peers.
    outbox: Outbox<Envelope>,
    /// Rings from the peers.
    inboxes: Vec<Option<BatchConsumer<Envelope>>>,
    /// The shared read buffer (taken out while a connection's input is processed).
    pub(crate) read_buffer: Vec<u8>,
    /// Reusable buffer for outbound JSON.
    pub(crate) json: OutJson,
    /// Reusable simd-json state.
    pub(crate) parser: JsonParser,
    /// Reusable list of the batch's readiness events.
    events: Vec<(u32, u64)>,
    /// Connections that are writable and were given output this turn: written together at
    /// its end ([`Reactor::write_queued`]).
    pub(super) to_write: Vec<ConnAddr>,
    /// Scratch for [`Reactor::write_queued`], kept so that it allocates nothing once grown:
    /// the connections of one submission, their sends and iovecs, and the outcomes.
    writing: Vec<ConnAddr>,
    sends: Vec<(sockets::Socket, std::ops::Range<usize>)>,
    iovecs: Vec<libc::iovec>,
    sent: Vec<io::Result<usize>>,
    /// TLS: this write round's sealed output, every connection's in one buffer, and where
    /// each connection's is (empty for plaintext ones), by its place in `writing`.
    sealed: Vec<u8>,
    sealed_ranges: Vec<std::ops::Range<usize>>,
    /// TLS: scratch for what the handshake or a key update sends.
    pub(super) tls_out: Vec<u8>,
    /// Deadlines.
    pub(crate) timers: TimerWheel,
    /// Reusable list for due timer entries.
    due: Vec<timer::Entry>,
    /// API broadcasts waiting for homes.
    pub(crate) broadcasts: Gathers<BroadcastCounts>,
    /// Set by the `kill_reactor_on_message_from` failpoint: the loop panics after the turn.
    pub(crate) failpoint_kill: bool,
    /// Connections that sent messages in the current rate window (their counts reset).
    pub(crate) rate_counted: Vec<ConnAddr>,
    /// Connections whose input paused at `--message-pace` until the next window.
    pub(crate) paced: Vec<ConnAddr>,
    /// The address of each connection from another host that has not authenticated, by
    /// slot with its generation: counted against its address's caps until it
    /// authenticates or closes ([`super::admission`]).
    pending_peers: std::collections::HashMap<u32, (u32, std::net::IpAddr)>,
    /// A spread drain's connections still to close, in the (random) order they go.
    drain_queue: Vec<ConnAddr>,
    /// How many a spread drain has closed so far.
    drain_closed: usize,
    /// The idle sweep's walk over the slab.
    pub(crate) idle_sweep: crate::timer::Sweep,
    /// The session sweep's walk (tokens that expire).
    pub(crate) session_sweep: crate::timer::Sweep,
    /// The durable store.
    pub(crate) store: crate::store::Store,
    /// The store's answers to this reactor.
    store_replies: std::sync::mpsc::Receiver<crate::store::Reply>,
    /// Its link to the cluster thread (`--cluster`).
    pub(super) cluster: Option<super::ClusterLink>,
    /// Connections with input left unread because the batch cap was reached (or input
    /// that waited while a connection moved).
    pub(super) unread: Vec<ConnAddr>,
    /// Connections authenticated this turn that go to their home reactor at its end.
    pub(super) moving: Vec<(ConnAddr, usize)>,
    /// The last id given to a connection sent through a handoff.
    pub(super) next_move_id: u64,
    /// Sockets that came through this reactor's handoff before their envelope.
    pub(super) arrived: std::collections::HashMap<u64, std::os::fd::OwnedFd>,
    /// Connections whose input met a full mailbox ring: not read again until every backlog
    /// has drained (each is flagged [`Flags::PAUSED`]).
    paused: Vec<ConnAddr>,
    /// Whether the last drain left batches in some ring (drain cap reached).
    mail_left: bool,
    /// When the drain started, once it has.
    drain_started: Option<Instant>,
    /// The listening socket, shut down when the drain starts.
    listener_fd: RawFd,
}

impl Reactor {
    /// Builds the reactor's state and registers its doorbell.
    pub(crate) fn new(seed: ReactorSeed, listener_fd: RawFd) -> io::Result<Reactor> {
        let (sockets, fallback) = Sockets::new(seed.shared.config.socket_placement)?;
        if let Some(why) = fallback {
            warn!(reactor = seed.id, "{why}; sockets live in the fd table");
        }
        sockets.watch(seed.shared.doorbells[seed.id].fd(), DOORBELL_TOKEN)?;
        let mut shard = Shard::new(
            (seed.id, seed.shared.config.reactors),
            seed.groups,
            seed.shared.user_groups.clone(),
            seed.shared.config.presence_grace_ms,
            seed.shared.config.dedup_window_pairs,
        );
        shard = shard.with_queue_max_per_sender(seed.shared.config.queue_max_per_sender);
        shard.remember_recent(&seed.recent);
        if seed.cluster.is_some() {
            shard = shard.relaying();
        }
        if seed.shared.events.is_some() {
            shard = shard.with_hooks();
        }
        Ok(Reactor {
            id: seed.id,
            conns: Slab::new(),
            next_generation: 1,
            sockets,
            shard,
            effects: Effects::default(),
            carrying_out: false,
            v1_acks: Vec::new(),
            outbox: Outbox::new(seed.producers),
            inboxes: seed.consumers,
            read_buffer: vec![0; READ_BUFFER_BYTES],
            json: OutJson::default(),
            parser: JsonParser::default(),
            events: Vec::with_capacity(sockets::epoll::EVENTS_PER_WAIT_MAX),
            to_write: Vec::new(),
            writing: Vec::new(),
            sends: Vec::new(),
            iovecs: Vec::new(),
            sent: Vec::new(),
            sealed: Vec::new(),
            sealed_ranges: Vec::new(),
            tls_out: Vec::new(),
            timers: TimerWheel::default(),
            due: Vec::new(),
            broadcasts: Gathers::default(),
            failpoint_kill: false,
            rate_counted: Vec::new(),
            paced: Vec::new(),
            pending_peers: std::collections::HashMap::new(),
            drain_queue: Vec::new(),
            drain_closed: 0,
            idle_sweep: Default::default(),
            session_sweep: Default::default(),
            store: seed.store,
            store_replies: seed.store_replies,
            cluster: seed.cluster,
            unread: Vec::new(),
            moving: Vec::new(),
            next_move_id: 0,
            arrived: Default::default(),
            paused: Vec::new(),
            mail_left: false,
            drain_started: None,
            listener_fd,
            shared: seed.shared,
        })
    }

    /// The readiness set's fd, for the runtime to await.
    pub(crate) fn readiness_fd(&self) -> RawFd {
        self.sockets.fd()
    }

    /// Where this reactor's sockets live, for the start-up log.
    pub(crate) fn socket_placement(&self) -> &'static str {
        self.sockets.placement_name()
    }

    /// Whether the sockets are fds in this thread's table (which is then worth pre-growing).
    pub(crate) fn sockets_use_fd_table(&self) -> bool {
        !self.sockets.is_direct()
    }

    /// This reactor's counters.
    pub(crate) fn stats(&self) -> &ReactorStats {
        &self.shared.stats[self.id]
    }

    /// Whether the drain has begun here.
    pub(crate) fn is_draining(&self) -> bool {
        self.drain_started.is_some() || self.shared.draining.load(Ordering::Acquire)
    }

    /// Whether a full ring holds envelopes back (socket reads pause meanwhile).
    pub(crate) fn is_backlogged(&self) -> bool {
        self.outbox.is_backlogged()
    }

    /// Whether work is left from the last batch: a connection's unread input, or
    /// envelopes left in a ring by the drain cap.
    pub(crate) fn has_unread_input(&self) -> bool {
        !self.unread.is_empty() || self.mail_left
    }

    /// The address of a local connection.
    pub(crate) fn addr(&self, slot: usize, generation: u32) -> ConnAddr {
        ConnAddr {
            reactor: self.id as u16,
            generation,
            slot: slot as u32,
        }
    }

    /// The local connection at `addr` if it is still the same connection.
    pub(crate) fn conn_mut(&mut self, at: ConnAddr) -> Option<&mut Conn> {
        debug_assert_eq!(
            usize::from(at.reactor),
            self.id,
            "not this reactor's: {at:?}"
        );
        self.conns
            .get_mut(at.slot as usize)
            .filter(|c| c.generation == at.generation)
    }

    /// Takes in a freshly accepted socket.
    pub(crate) fn adopt(&mut self, fd: RawFd, peer: std::net::IpAddr) {
        if self.is_draining() {
            sockets::epoll::close(fd);
            return;
        }
        let counted = self.shared.admission.counts(peer);
        if counted {
            if let Err(why) = self
                .shared
                .admission
                .admit(peer, crate::protocol::now_ms() / 1000)
            {
                debug!(%peer, ?why, "refusing a connection over its address's cap");
                ReactorStats::bump(&self.stats().refused_per_address);
                sockets::epoll::close(fd);
                return;
            }
        }
        if let Err(e) = conn::prepare_accepted(fd) {
            warn!("dropping accepted socket: {e}");
            sockets::epoll::close(fd);
            return;
        }
        let generation = self.take_generation();
        let at = self.addr(self.conns.vacant_key(), generation);
        match self.sockets.adopt(fd, token(at)) {
            Ok(socket) => {
                self.conns.insert(Conn::new(socket, generation));
                if counted {
                    self.pending_peers.insert(at.slot, (generation, peer));
                }
            }
            Err(e) => {
                warn!("dropping accepted socket: {e}");
                if counted {
                    self.shared.admission.release(peer);
                }
                return;
            }
        }
        ReactorStats::add(&self.stats().connections, 1);
        // The request head (after the TLS handshake, if any) must come within the
        // handshake deadline; an upgrade then re-arms it for `auth`.
        self.set_deadline(at, self.shared.config.handshake_timeout_ms);
        self.start_tls(at);
    }

    /// A connection authenticated or closed: its address's count of connections that
    /// have not authenticated goes down.
    pub(super) fn no_longer_pending(&mut self, at: ConnAddr) {
        if let Some(&(generation, peer)) = self.pending_peers.get(&at.slot) {
            if generation == at.generation {
                self.pending_peers.remove(&at.slot);
                self.shared.admission.release(peer);
            }
        }
    }

    /// The generation of the next connection given a slot.
    pub(super) fn take_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation.wrapping_add(1) & GENERATION_MAX).max(1);
        generation
    }

    /// (Re)arms the connection's one deadline; earlier entries become stale.
    pub(crate) fn set_deadline(&mut self, at: ConnAddr, after_ms: u64) {
        let due_tick = self.timers.tick_after(after_ms);
        if let Some(conn) = self.conn_mut(at) {
            conn.deadline = due_tick as u32;
            self.timers.insert(timer::Entry {
                slot: at.slot as usize,
                generation: at.generation,
                due_tick,
            });
        }
    }

    /// One batch: readiness events, mailboxes, backlog, paused input, doorbells.
    pub(crate) fn run_batch(&mut self) {
        debug_assert!(self.to_write.is_empty(), "output left from the last turn");
        if self.drain_started.is_none() && self.shared.draining.load(Ordering::Acquire) {
            self.begin_drain();
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.sockets.poll_now(&mut events);
        for &(bits, token) in &events {
            if token == DOORBELL_TOKEN {
                self.shared.doorbells[self.id].clear();
                continue;
            }
            let at = self.addr((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32);
            if bits & REARM != 0 {
                if let Some(socket) = self.conn_mut(at).map(|c| c.socket) {
                    self.sockets.rearm(socket, token);
                }
            }
            if bits & WRITABLE != 0 {
                self.on_writable(at);
            }
            if bits & (READABLE | BROKEN) != 0 {
                let to_the_end = bits & (BROKEN | PEER_CLOSED) != 0;
                self.read_from(at, !to_the_end);
            }
        }
        self.events = events;
        self.drain_mailboxes();
        while let Ok(reply) = self.store_replies.try_recv() {
            self.take_store_reply(reply);
        }
        self.take_cluster_mail();
        self.outbox.retry_backlog();
        if !self.outbox.is_backlogged() {
            for at in std::mem::take(&mut self.paused) {
                if let Some(conn) = self.conn_mut(at) {
                    conn.flags.set(Flags::PAUSED, false);
                    self.unread.push(at);
                }
            }
        }
        for at in std::mem::take(&mut self.unread) {
            self.read_from(at, false);
        }
        self.send_moving();
        self.write_queued();
        self.ack_v1_deliveries();
        self.outbox.flush(&self.shared.doorbells);
        self.trim_scratch();
    }

    /// Gives back what a turn's scratch buffers grew past [`SCRATCH_KEPT`] entries. A
    /// turn in which every connection answers (the loadgen's ping sweep, a broadcast)
    /// grows them to its size, about 150 B per connection in all; kept, that high-water
    /// mark read as idle memory per connection ever after (282 B at a million, 2026-12-06).
    /// Their contents mean nothing once the turn is over, so they are emptied first (a
    /// buffer keeps its length, and `shrink_to` never goes below it). `to_write` is work,
    /// not scratch: it is only shrunk, never emptied, so output left in it (none is, after
    /// `write_queued`) would still go. A no-op for turns of usual size.
    fn trim_scratch(&mut self) {
        debug_assert!(self.to_write.is_empty(), "output left from the turn");
        fn emptied<T>(scratch: &mut Vec<T>) {
            scratch.clear();
            scratch.shrink_to(SCRATCH_KEPT);
        }
        self.to_write.shrink_to(SCRATCH_KEPT);
        emptied(&mut self.writing);
        emptied(&mut self.events);
        emptied(&mut self.sends);
        emptied(&mut self.iovecs);
        emptied(&mut self.sent);
        emptied(&mut self.due);
        emptied(&mut self.sealed_ranges);
        // TLS byte buffers: 4 KiB each stays.
        emptied(&mut self.sealed);
        emptied(&mut self.tls_out);
        self.effects.trim(SCRATCH_KEPT);
        self.sockets.trim_scratch(SCRATCH_KEPT);
    }

    /// Acknowledges, per user, the highest inbox event written this batch to devices
    /// that do not acknowledge themselves.
    fn ack_v1_deliveries(&mut self) {
        if self.v1_acks.is_empty() {
            return;
        }
        let mut acks = std::mem::take(&mut self.v1_acks);
        acks.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        acks.dedup_by(|a, b| a.0 == b.0);
        let homes = self.shared.config.reactors;
        for (user, upto) in acks.drain(..) {
            let home = crate::router::home_of(&user, homes);
            let user = (*user).into();
            let ack = crate::store::Command::Ack {
                user,
                upto,
                device: None,
                home,
            };
            if self.store.send(ack).is_err() {
                break; // shutting down: the events stay unacknowledged, and come again
            }
        }
        self.v1_acks = acks;
    }

    fn drain_mailboxes(&mut self) {
        let mut inboxes = std::mem::take(&mut self.inboxes);
        let waiting = mailbox::drain(&mut inboxes, |envelope| {
            ReactorStats::bump(&self.shared.stats[self.id].envelopes_received);
            self.isolate(None, "an envelope from another reactor", |reactor| {
                reactor.take_mail(envelope);
            });
        });
        self.mail_left = waiting > 0;
        let gauge = &self.shared.stats[self.id].mailbox_waiting;
        gauge.store(waiting as i64, std::sync::atomic::Ordering::Relaxed);
        self.inboxes = inboxes;
    }

    /// Runs `handle`, containing a panic in it: the panic is logged and counted, the
    /// connection it was for (if any) is closed with 1011, and the reactor and every other
    /// connection go on. What the handler had half done is left as it was.
    pub(crate) fn isolate(
        &mut self,
        conn: Option<ConnAddr>,
        what: &str,
        handle: impl FnOnce(&mut Self),
    ) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(self)));
        let Err(panic) = outcome else {
            return;
        };
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        ReactorStats::bump(&self.stats().panics);
        tracing::error!(reactor = self.id, "panic while handling {what}: {why}");
        // The shard's effects made before the panic are carried out with the next event.
        self.carrying_out = false;
        if let Some(at) = conn {
            let reason = "internal error";
            self.begin_close(at, crate::ws::close::INTERNAL_ERROR, reason);
        }
    }

    /// Sends `frame` to one connection, on whichever reactor it lives (handled at once when
    /// that is this one).
    pub(crate) fn send_to(&mut self, addr: ConnAddr, frame: Outgoing, priority: Priority) {
        let envelope = Envelope::ToConn {
            addr,
            frame,
            priority,
            accepted_ns: 0,
        };
        self.route(addr.reactor as usize, envelope);
    }

    /// Sends `envelope` to reactor `to`, handling it at once when that is this reactor.
    pub(crate) fn route(&mut self, to: usize, envelope: Envelope) {
        if to == self.id {
            self.take_mail(envelope);
        } else {
            ReactorStats::bump(&self.stats().envelopes_sent);
            self.outbox.push(to, envelope);
        }
    }

    /// Reads what a connection has, up to the batch cap, and processes it.
    ///
    /// With `short_read_drains`, a read that returns less than the buffer ends the turn
    /// without a last read to see `EAGAIN`: the socket held no more, and data arriving
    /// later raises a new edge. That saves one syscall per message. Not when the peer has
    /// closed (its end of stream must be read) nor for input paused earlier.
    ///
    /// Backpressure: input that sends envelopes into a mailbox backlog pauses its
    /// connection (the bytes stay in the kernel) until the backlogs drain; with the backlogs
    /// at their cap, every connection pauses. Other connections go on meanwhile.
    pub(super) fn read_from(&mut self, at: ConnAddr, short_read_drains: bool) {
        let mut total = 0;
        loop {
            let Some(conn) = self.conn_mut(at) else {
                return;
            };
            if conn.flags.has(Flags::PAUSED) || conn.phase == Phase::Moving {
                return;
            }
            let socket = conn.socket;
            if self.outbox.is_backlog_full() {
                return self.pause(at);
            }
            let pressure = self.outbox.pressure();
            let mut buffer = std::mem::take(&mut self.read_buffer);
            let tls = self.is_tls(at);
            let carried = if tls {
                self.tls_carry_over(at, &mut buffer)
            } else {
                0
            };
            let result = self.sockets.read(socket, &mut buffer[carried..]);
            match result {
                Ok(0) => {
                    self.read_buffer = buffer;
                    self.close_now(at);
                    return;
                }
                Ok(n) => {
                    total += n;
                    ReactorStats::bump_by(&self.stats().bytes_in, n as u64);
                    if let Some(conn) = self.conns.get_mut(at.slot as usize) {
                        conn.flags.set(Flags::ACTIVE, true);
                    }
                    let drained = short_read_drains && n < buffer.len() - carried;
                    let (plaintext, end) = match tls {
                        false => (n, false),
                        true => match self.tls_input(at, &mut buffer, carried + n) {
                            TlsInput::Plaintext(k) => (k, false),
                            TlsInput::PlaintextThenEnd(k) => (k, true),
                            TlsInput::Closed => {
                                self.read_buffer = buffer;
                                return;
                            }
                        },
                    };
                    if plaintext > 0 {
                        self.process_input(at, &mut buffer, plaintext);
                    }
                    self.read_buffer = buffer;
                    if end {
                        self.close_now(at);
                        return;
                    }
                    if self.outbox.pressure() != pressure {
                        return self.pause(at);
                    }
                    if drained {
                        return;
                    }
                }
                Err(e) => {
                    self.read_buffer = buffer;
                    if e.kind() != io::ErrorKind::WouldBlock {
                        debug!("read failed: {e}");
                        self.close_now(at);
                    }
                    return;
                }
            }
            if total >= READ_BYTES_PER_BATCH_MAX {
                self.unread.push(at);
                return;
            }
        }
    }

    /// Stops reading a connection until the mailbox backlogs drain.
    fn pause(&mut self, at: ConnAddr) {
        if let Some(conn) = self.conn_mut(at) {
            conn.flags.set(Flags::PAUSED, true);
            self.paused.push(at);
            ReactorStats::bump(&self.stats().backpressure_pauses);
        }
    }

    /// Queues `frame` on a local connection, writing at once when nothing waits before it.
    ///
    /// Hot path: no allocation when the socket takes the frame whole; the queue is
    /// allocated only while output waits.
    pub(crate) fn send(&mut self, at: ConnAddr, frame: Outgoing, priority: Priority) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        match conn.phase {
            Phase::Closing => return,
            // A WebSocket frame for an HTTP connection: a shard's answer to its API call.
            Phase::Http if frame.kind != OutKind::Http => {
                return self.answer_api_with_frame(at, &frame)
            }
            _ => {}
        }
        if conn.flags.has(Flags::CATCHING_UP) {
            return self.hold(at, frame, priority);
        }
        match conn.inbox_frame(&frame) {
            InboxFrame::Had => {}
            InboxFrame::New(seq) => self.write_new_event(at, frame, priority, seq),
            InboxFrame::Other => self.enqueue(at, frame, priority),
        }
    }

    /// Writes an inbox event new to the device; a device that does not acknowledge is
    /// taken to have it (acknowledged for it at the end of the batch).
    pub(super) fn write_new_event(
        &mut self,
        at: ConnAddr,
        frame: Outgoing,
        priority: Priority,
        seq: u64,
    ) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.inbox_seq = conn.inbox_seq.max(seq);
        if !conn.flags.has(Flags::ACKS) {
            if let Some(user) = conn.user.clone() {
                self.v1_acks.push((user, seq));
            }
        }
        self.enqueue(at, frame, priority);
    }

    /// Keeps a frame for a device still reading its inbox, to be written once it has
    /// (`reactor::inbox`); a device that falls too far behind is a slow consumer.
    fn hold(&mut self, at: ConnAddr, frame: Outgoing, priority: Priority) {
        let bound = self.shared.config.outbound_bytes_max;
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let Some(catch_up) = conn.aux.as_mut().and_then(|a| a.catch_up.as_mut()) else {
            return;
        };
        catch_up.held_bytes += frame.bytes.len();
        catch_up.held.push((frame, priority));
        if catch_up.held_bytes > bound {
            conn.flags.set(Flags::CATCHING_UP, false);
            conn.aux_mut().catch_up = None;
            self.begin_close(at, close::SLOW_CONSUMER, "slow consumer");
        }
    }

    /// Queues a frame whatever the connection is waiting for (a device's own inbox
    /// pages while it catches up).
    pub(super) fn enqueue(
        &mut self,
        at: ConnAddr,
        Outgoing { kind, bytes: frame }: Outgoing,
        priority: Priority,
    ) {
        let stats = &self.shared.stats[self.id];
        stats.count_out(kind);
        ReactorStats::bump_by(&stats.bytes_out, frame.len() as u64);
        let Some(conn) = self
            .conns
            .get_mut(at.slot as usize)
            .filter(|c| c.generation == at.generation)
        else {
            return;
        };
        let first = conn.outbound.is_none();
        conn.outbound
            .get_or_insert_with(Box::<OutQueue>::default)
            .push(frame, priority);
        if conn.flags.has(Flags::WRITABLE) {
            // Written at the end of the turn with every other connection's output, in one
            // submission; what the socket does not take then counts against the bound.
            if first {
                self.to_write.push(at);
            }
            return;
        }
        self.bound_output(at);
    }

    /// Past `--outbound-bytes-max` of output the socket has not taken, the client is a slow
    /// consumer and is closed with 4002 (PROTOCOL.md), so it slows nobody else down. (A
    /// closing connection's last frames are already bounded.)
    fn bound_output(&mut self, at: ConnAddr) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let closing = conn.phase == Phase::Closing;
        if !closing && conn.queued_bytes() > self.shared.config.outbound_bytes_max {
            self.drop_slow_consumer(at);
        }
    }

    /// Writes the output queued this turn on writable connections: one send per
    /// connection (its frames as iovecs), all in one submission (one `io_uring_enter` per
    /// ring of up to 64 sends, where writing each frame as it came took one each). A
    /// connection with more frames than one send carries goes again in the next round.
    /// Hot path: allocates nothing once the scratch lists have grown.
    pub(crate) fn write_queued(&mut self) {
        while !self.to_write.is_empty() {
            std::mem::swap(&mut self.to_write, &mut self.writing);
            self.sends.clear();
            self.iovecs.clear();
            let mut writing = std::mem::take(&mut self.writing);
            debug_assert!(
                listed_once(&writing),
                "a connection listed twice: {writing:?}"
            );
            // TLS connections' frames are sealed first, all into one buffer, which must
            // not move once the iovecs point into it.
            self.sealed.clear();
            self.sealed_ranges.clear();
            writing.retain(|&at| {
                let Some(conn) = self.conns.get_mut(at.slot as usize) else {
                    return false;
                };
                if conn.outbound.is_none()
                    || conn.generation != at.generation
                    || !conn.flags.has(Flags::WRITABLE)
                {
                    return false;
                }
                let sealed = Self::seal_queued(conn, &mut self.sealed);
                self.sealed_ranges.push(sealed);
                true
            });
            for (i, &at) in writing.iter().enumerate() {
                let conn = &self.conns[at.slot as usize];
                let start = self.iovecs.len();
                // (Every connection kept by the retain above has output; one without
                // would get an empty send, which `after_write` ignores.)
                let Some(queue) = conn.outbound.as_ref() else {
                    self.sends.push((conn.socket, start..start));
                    continue;
                };
                let sealed = &self.sealed[self.sealed_ranges[i].clone()];
                if conn.aux.as_ref().is_some_and(|a| a.tls.is_some()) {
                    let head = queue.sealed();
                    let parts = [head, sealed].into_iter().filter(|p| !p.is_empty());
                    self.iovecs.extend(parts.map(crate::conn::iovec));
                } else {
                    let chunks = queue.chunks().take(crate::conn::IOVECS_MAX);
                    self.iovecs.extend(chunks.map(crate::conn::iovec));
                }
                self.sends.push((conn.socket, start..self.iovecs.len()));
            }
            self.sockets
                .write_vectored_batch(&self.sends, &self.iovecs, &mut self.sent);
            for (i, &at) in writing.iter().enumerate() {
                let offered: usize = self.iovecs[self.sends[i].1.clone()]
                    .iter()
                    .map(|iov| iov.iov_len)
                    .sum();
                let outcome = std::mem::replace(&mut self.sent[i], Ok(0));
                let sealed = self.sealed_ranges[i].clone();
                self.after_write(at, outcome, offered, sealed);
            }
            writing.clear();
            self.writing = writing;
        }
    }

    /// Acts on what the socket took of the `offered` bytes written to it: for TLS, the
    /// queue's sealed head, then this round's `sealed` bytes, of which the queue keeps
    /// what the socket did not take.
    fn after_write(
        &mut self,
        at: ConnAddr,
        outcome: io::Result<usize>,
        offered: usize,
        sealed: std::ops::Range<usize>,
    ) {
        let Some(conn) = self.conns.get_mut(at.slot as usize) else {
            return;
        };
        let Some(queue) = conn.outbound.as_mut() else {
            return;
        };
        match outcome {
            Ok(n) => {
                if sealed.is_empty() {
                    queue.taken(n);
                } else {
                    let head = queue.sealed().len();
                    queue.taken(n.min(head));
                    let taken_of_round = n.saturating_sub(head);
                    if taken_of_round < sealed.len() {
                        queue.push_sealed(&self.sealed[sealed.start + taken_of_round..sealed.end]);
                    }
                }
                if queue.is_empty() {
                    conn.outbound = None;
                    let closing = conn.flags.has(Flags::CLOSE_WHEN_FLUSHED);
                    self.pages_written(at);
                    if closing {
                        self.after_final_frame(at);
                    }
                } else if n < offered {
                    conn.flags.set(Flags::WRITABLE, false);
                    self.bound_output(at);
                } else {
                    self.to_write.push(at); // more frames than one send carries
                }
            }
            Err(e) => {
                debug!("write failed: {e}");
                self.close_now(at);
            }
        }
    }

    /// Everything queued for a slow consumer is dropped but the rest of a frame it has
    /// begun to receive; then comes its close frame (4002), and the socket is closed once
    /// that is written and answered, or at the close timeout if the client reads nothing.
    fn drop_slow_consumer(&mut self, at: ConnAddr) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        if let Some(queue) = conn.outbound.as_mut() {
            queue.drop_unstarted();
        }
        debug!(slot = at.slot, "closing slow consumer");
        self.begin_close(at, close::SLOW_CONSUMER, "slow consumer");
    }

    /// The socket takes output again: what waits goes in this turn's submission. A
    /// connection is listed at most once a round, so no socket gets two sends in one
    /// submission: here when it turns writable with output waiting, in `enqueue` when
    /// output comes to a writable connection that had none, and by `after_write` only
    /// when the last round's send carried fewer frames than wait.
    fn on_writable(&mut self, at: ConnAddr) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let was_writable = conn.flags.has(Flags::WRITABLE);
        conn.flags.set(Flags::WRITABLE, true);
        if !was_writable && conn.outbound.is_some() {
            self.to_write.push(at);
        }
    }

    /// Queues a last frame (a close frame, or an HTTP response) and then ends the connection.
    pub(crate) fn send_final(&mut self, at: ConnAddr, frame: Outgoing) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.flags.set(Flags::CLOSE_WHEN_FLUSHED, true);
        self.enqueue(at, frame, Priority::Low);
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        if conn.outbound.is_none() {
            self.pages_written(at);
            self.after_final_frame(at);
        }
    }

    /// If the connection's output is all with the kernel, the page in flight on it (an
    /// inbox page, an HTTP drain's answer) is done: see [`Reactor::page_taken`]. Called
    /// wherever output may have finished; a connection that dies first never gets here.
    pub(crate) fn pages_written(&mut self, at: ConnAddr) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        if conn.outbound.is_some() {
            return;
        }
        let Some(page) = conn.aux.as_mut().and_then(|a| a.page_in_flight.take()) else {
            return;
        };
        conn.trim_aux();
        self.page_taken(at, *page);
    }

    /// The final frame is written: HTTP closes now; a WebSocket half-closes and waits
    /// (bounded by [`CLOSE_TIMEOUT_MS`]) for the peer's close frame or EOF.
    fn after_final_frame(&mut self, at: ConnAddr) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        if conn.phase == Phase::Closing {
            let socket = conn.socket;
            self.sockets.shutdown_write(socket);
            let Some(conn) = self.conn_mut(at) else {
                return;
            };
            conn.flags.set(Flags::CLOSE_WHEN_FLUSHED, false);
        } else {
            self.close_now(at);
        }
    }

    /// Starts the closing handshake with `code`: no more frames go out after the close.
    pub(crate) fn begin_close(&mut self, at: ConnAddr, code: u16, reason: &str) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        match conn.phase {
            Phase::Closing => return,
            Phase::Http => return self.close_now(at),
            // No home knows of it yet: there is nothing to detach.
            Phase::Moving => conn.user = None,
            Phase::Open | Phase::Authenticated => {}
        }
        conn.phase = Phase::Closing;
        // Counted when the gateway begins it; a client's close frame is only echoed.
        let by_client = conn.flags.has(Flags::SAID_GOODBYE);
        if let Some(i) = close::sent_index(code).filter(|_| !by_client) {
            ReactorStats::bump(&self.shared.stats[self.id].closes[i]);
        }
        self.detach(at, code);
        self.set_deadline(at, CLOSE_TIMEOUT_MS);
        self.send_final(at, Outgoing::control(frame::encode_close(code, reason)));
    }

    /// The connection's user leaves the chat, closed with `code`: the shard unregisters
    /// the device from its home and drops its presence watches and huddles.
    fn detach(&mut self, at: ConnAddr, code: u16) {
        let addr = at;
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let clean = conn.flags.has(Flags::SAID_GOODBYE);
        if conn.phase == Phase::Moving {
            conn.user = None; // no home knows of it yet
        }
        if let Some(user) = conn.user.take() {
            self.feed_shard(crate::shard::Event::Closed {
                conn: addr,
                user,
                clean,
                code,
            });
        }
    }

    /// Closes the socket and forgets the connection.
    pub(crate) fn close_now(&mut self, at: ConnAddr) {
        if self.conn_mut(at).is_none() {
            return;
        }
        // Detached already after a closing handshake; else it ended without one.
        self.detach(at, close::ABNORMAL);
        self.no_longer_pending(at);
        let conn = self.conns.remove(at.slot as usize);
        self.sockets.close(conn.socket, token(at));
        ReactorStats::add(&self.stats().connections, -1);
    }

    /// Advances the timer wheel and acts on due deadlines.
    pub(crate) fn on_tick(&mut self) {
        debug_assert!(self.to_write.is_empty(), "output left from the last turn");
        let mut due = std::mem::take(&mut self.due);
        self.timers.advance(&mut due);
        for entry in &due {
            let at = self.addr(entry.slot, entry.generation);
            let Some(conn) = self.conn_mut(at) else {
                continue;
            };
            if u64::from(conn.deadline) != entry.due_tick {
                continue;
            }
            let answering = conn.aux.as_ref().is_some_and(|a| a.pending_api.is_some());
            match conn.phase {
                // The request head came in time and its answer is being gathered (a
                // commit, a broadcast to a million users): the deadline waits for it,
                // and the answer re-arms it for the next request.
                Phase::Http if answering => {
                    self.set_deadline(at, self.shared.config.handshake_timeout_ms)
                }
                Phase::Http | Phase::Open => self.deadline_passed(at, entry.due_tick),
                Phase::Closing => self.close_now(at),
                Phase::Moving | Phase::Authenticated => {}
            }
        }
        self.due = due;
        self.feed_shard(crate::shard::Event::Tick);
        self.limits_tick();
        self.drain_tick();
        // Timer-driven work may have written to connections and mailed peers, and a
        // deadline's read may have authenticated one.
        self.send_moving();
        self.write_queued();
        self.outbox.flush(&self.shared.doorbells);
        self.trim_scratch();
    }

    /// A connection's request head (HTTP) or `auth` (WebSocket) did not come by its
    /// deadline, as far as this reactor has read. The deadline is the client's, not the
    /// reactor's: what came in time and a long turn left unread (seconds, under a connect
    /// storm at a million) is read first and may meet it; only then is the connection
    /// closed (HTTP) or told 4001.
    fn deadline_passed(&mut self, at: ConnAddr, due_tick: u64) {
        let Some(phase) = self.conn_mut(at).map(|c| c.phase) else {
            return;
        };
        self.read_from(at, false);
        let stands = self
            .conn_mut(at)
            .is_some_and(|c| c.phase == phase && u64::from(c.deadline) == due_tick);
        if !stands {
            ReactorStats::bump(&self.stats().deadlines_met_late);
            return;
        }
        ReactorStats::bump(&self.stats().deadline_closes);
        match phase {
            Phase::Http => self.close_now(at),
            _ => self.begin_close(at, close::AUTH_TIMEOUT, "auth timeout"),
        }
    }

    fn begin_drain(&mut self) {
        self.drain_started = Some(Instant::now());
        // Stop listening now (not when the runtime is gone: an in-flight io_uring accept
        // keeps the socket alive past process exit). This also ends the pending accept.
        // SAFETY: shutdown(2) on the listener this reactor owns; no pointers.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        let mut open = self.open_connections();
        if self.shared.config.drain_secs == 0 {
            for at in open {
                self.begin_close(at, close::GOING_AWAY, "server shutting down");
            }
            return;
        }
        // Spread over --drain-secs in random order: the clients reconnect (elsewhere, or to
        // the new process) a few at a time, not all in the same second.
        shuffle(&mut open, self.id as u64 ^ crate::protocol::now_ms());
        self.drain_queue = open;
        self.drain_closed = 0;
    }

    /// During a spread drain, every tick: closes the connections whose turn has come, so
    /// that by `--drain-secs` all have been.
    pub(crate) fn drain_tick(&mut self) {
        let Some(started) = self.drain_started else {
            return;
        };
        if self.drain_queue.is_empty() {
            return;
        }
        let spread = Duration::from_secs(self.shared.config.drain_secs);
        let total = self.drain_queue.len() + self.drain_closed;
        let fraction = (started.elapsed().as_secs_f64() / spread.as_secs_f64()).min(1.0);
        let due = ((total as f64 * fraction).ceil() as usize).saturating_sub(self.drain_closed);
        for _ in 0..due {
            let Some(at) = self.drain_queue.pop() else {
                break;
            };
            self.drain_closed += 1;
            self.begin_close(at, close::GOING_AWAY, "server shutting down");
        }
    }

    /// Every open connection's `(at)`, for sweeps that close connections.
    fn open_connections(&self) -> Vec<ConnAddr> {
        self.conns
            .iter()
            .map(|(slot, c)| self.addr(slot, c.generation))
            .collect()
    }

    /// Whether the drain is over: no connections left, or its time bound passed.
    pub(crate) fn finished(&self) -> bool {
        let Some(started) = self.drain_started else {
            return false;
        };
        let config = &self.shared.config;
        let bound = Duration::from_secs(config.drain_secs)
            + Duration::from_millis(config.shutdown_timeout_ms);
        self.conns.is_empty() || started.elapsed() >= bound
    }

    /// Drops whatever connections remain (end of a drain).
    pub(crate) fn close_all(&mut self) {
        for at in self.open_connections() {
            self.close_now(at);
        }
        self.to_write.clear();
        self.outbox.retry_backlog();
        self.outbox.flush(&self.shared.doorbells);
    }
}

/// Whether no connection appears twice (a debug check: two sends to one socket in one
/// submission could follow a short write with the next bytes).
fn listed_once(list: &[ConnAddr]) -> bool {
    let mut seen = std::collections::HashSet::new();
    list.iter().all(|at| seen.insert(*at))
}

/// A connection's readiness token.
pub(super) fn token(at: ConnAddr) -> u64 {
    u64::from(at.slot) | u64::from(at.generation) << 32
}

/// Puts `items` in a random order (Fisher-Yates over xorshift64*; not cryptographic: it only
/// spreads reconnects).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let random = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        items.swap(i, (random % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle;

    #[test]
    fn a_shuffle_is_a_permutation_and_moves_things() {
        let mut items: Vec<u32> = (0..1000).collect();
        shuffle(&mut items, 42);
        assert_ne!(items, (0..1000).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..1000).collect::<Vec<_>>());
    }
}
