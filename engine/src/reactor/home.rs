//! An authenticated connection moves to its user's home reactor (`--connections-at-home`).
//!
//! Why: the home holds the user's devices and numbers its inbox, so a device elsewhere
//! costs a reactor crossing for every frame to it and every ack from it, and on a box where
//! the other core sleeps each crossing is a wake-up. With every device at its home, a
//! direct message crosses once at most (sender's home to receiver's home), and its ack and
//! delivery receipts not at all.
//!
//! How: `auth` checks the token where the connection was accepted, then marks it
//! [`Phase::Moving`]: its input stops there (unread bytes stay in the kernel; bytes read
//! past the `auth` frame stay in the connection). At the end of the turn the moving
//! connections are released from this reactor's socket set, their sockets sent to each
//! home's [`Handoff`](crate::sockets::Handoff) in one message per home, and their state
//! mailed after them ([`Envelope::Moved`]). The home adopts the socket, gives the
//! connection a slot of its own, registers the device as if it had authenticated there, and
//! goes on with its input.
//!
//! A connection that cannot move (its home is at `--max-connections-per-reactor`, the
//! handoff's queue is full, the kernel refuses the release) stays where it is: routing
//! works wherever a device lives, it only costs more.

use std::os::fd::{IntoRawFd, RawFd};

use tracing::{debug, warn};

use super::core::{token, Reactor};
use crate::conn::{Conn, Flags, Phase};
use crate::{
    failpoint::Failpoint,
    router::{home_of, ConnAddr, Envelope},
    shard::Event,
    sockets::{self, HANDOFF_BATCH_MAX},
    stats::ReactorStats,
    ws::close,
};

impl Reactor {
    /// Whether an authenticated connection of `user` should move to the user's home: the
    /// home is another reactor with room, and moves are on.
    pub(super) fn moves_home(&self, user: &str) -> Option<usize> {
        let config = &self.shared.config;
        if !config.connections_at_home || config.reactors == 1 {
            return None;
        }
        let home = home_of(user, config.reactors);
        let cap = config.max_connections_per_reactor;
        let full = cap != 0
            && self.shared.stats[home]
                .connections
                .load(std::sync::atomic::Ordering::Relaxed)
                >= cap as i64;
        (home != self.id && !full).then_some(home)
    }

    /// At the end of a turn: sends every connection marked [`Phase::Moving`] to its home,
    /// one handoff message per home and up to [`HANDOFF_BATCH_MAX`] connections.
    pub(crate) fn send_moving(&mut self) {
        if self.moving.is_empty() {
            return;
        }
        let mut moving = std::mem::take(&mut self.moving);
        moving.sort_unstable_by_key(|(_, home)| *home);
        for batch in moving.chunk_by(|a, b| a.1 == b.1) {
            for chunk in batch.chunks(HANDOFF_BATCH_MAX) {
                self.move_to(chunk[0].1, chunk.iter().map(|(at, _)| *at));
            }
        }
        moving.clear();
        self.moving = moving;
    }

    /// Moves `connections` (at most [`HANDOFF_BATCH_MAX`]) to reactor `home`.
    fn move_to(&mut self, home: usize, connections: impl Iterator<Item = ConnAddr>) {
        let mut released: Vec<(ConnAddr, u64, RawFd)> = Vec::new();
        for at in connections {
            let Some(conn) = self.conn_mut(at) else {
                continue; // closed since it authenticated
            };
            if conn.phase != Phase::Moving {
                continue;
            }
            let socket = conn.socket;
            match self.sockets.release(socket, token(at)) {
                Ok(fd) => {
                    self.next_move_id += 1;
                    let id = (self.id as u64) << 48 | self.next_move_id;
                    released.push((at, id, fd));
                }
                Err(e) => {
                    debug!("a connection stays off its home reactor: {e}");
                    ReactorStats::bump(&self.stats().connections_kept_off_home);
                    self.settle(at, true);
                }
            }
        }
        if released.is_empty() {
            return;
        }
        let handed: Vec<(u64, RawFd)> = released.iter().map(|&(_, id, fd)| (id, fd)).collect();
        let sent = if self.shared.config.failpoint == Some(Failpoint::RefuseHandoffs) {
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            self.shared.handoffs[home].send(&handed)
        };
        if let Err(e) = sent {
            debug!(
                "{} connections stay off their home reactor: {e}",
                handed.len()
            );
            let kept = &self.stats().connections_kept_off_home;
            ReactorStats::bump_by(kept, handed.len() as u64);
            for (at, _, fd) in released {
                self.readopt(at, fd);
            }
            return;
        }
        for (at, id, fd) in released {
            sockets::epoll::close(fd); // the handoff holds its own reference
            let conn = self.conns.remove(at.slot as usize);
            ReactorStats::add(&self.stats().connections, -1);
            ReactorStats::bump(&self.stats().connections_moved);
            let conn = Box::new(conn);
            self.route(home, Envelope::Moved { id, conn });
        }
    }

    /// Takes back a released socket that could not be handed off; the connection stays.
    fn readopt(&mut self, at: ConnAddr, fd: RawFd) {
        match self.sockets.adopt(fd, token(at)) {
            Ok(socket) => {
                if let Some(conn) = self.conn_mut(at) {
                    conn.socket = socket;
                }
                // Adopted afresh: its new poll reports what waits.
                self.settle(at, false);
            }
            Err(e) => {
                // The socket is gone (adopt closed it); so is the connection, which no
                // home knows of yet.
                warn!("dropping a connection whose socket could not be taken back: {e}");
                self.conns.remove(at.slot as usize);
                ReactorStats::add(&self.stats().connections, -1);
            }
        }
    }

    /// A connection moved here from another reactor: adopts its socket, gives it a slot,
    /// and carries on as if it had authenticated here.
    pub(super) fn arrive(&mut self, id: u64, mut conn: Conn) {
        if !self.arrived.contains_key(&id) {
            let mut came = Vec::new();
            if let Err(e) = self.shared.handoffs[self.id].receive(&mut came) {
                warn!("reading the connection handoff failed: {e}");
            }
            self.arrived.extend(came);
        }
        let Some(fd) = self.arrived.remove(&id) else {
            warn!("a moved connection came without its socket; dropping it");
            return;
        };
        let generation = self.take_generation();
        let at = self.addr(self.conns.vacant_key(), generation);
        let socket = match self.sockets.adopt(fd.into_raw_fd(), token(at)) {
            Ok(socket) => socket,
            Err(e) => {
                warn!("dropping a moved connection: {e}");
                return;
            }
        };
        conn.socket = socket;
        conn.generation = generation;
        // The reactor it left kept its rate window and pace: it starts afresh here.
        conn.rate_count = 0;
        conn.flags.set(Flags::PAUSED, false);
        // The new poll reports the socket writable; output that waits goes out then.
        let waiting = conn.outbound.is_some();
        conn.flags.set(Flags::WRITABLE, !waiting);
        self.conns.insert(conn);
        ReactorStats::add(&self.stats().connections, 1);
        self.settle(at, false);
        if self.is_draining() {
            self.begin_close(at, close::GOING_AWAY, "server shutting down");
        }
    }

    /// The connection is where it stays: the device registers with its home, then what it
    /// sent after `auth` is processed. `read_again`: its socket may hold more, unread
    /// since it stopped reading to move (a socket adopted afresh is polled afresh instead,
    /// which reports what waits).
    pub(super) fn settle(&mut self, at: ConnAddr, read_again: bool) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.phase = Phase::Authenticated;
        let (Some(user), Some(catch_up)) = (
            conn.user.clone(),
            conn.aux.as_ref().and_then(|a| a.catch_up.as_ref()),
        ) else {
            debug_assert!(false, "an authenticated connection without its user");
            return;
        };
        let device = catch_up.device_id.clone();
        let acks = conn.flags.has(Flags::ACKS);
        self.feed_shard(Event::Authenticated {
            conn: at,
            user,
            device: &device,
            acks,
        });
        self.process_input(at, &mut [], 0);
        if read_again {
            self.unread.push(at);
        }
    }
}
