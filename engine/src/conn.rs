//! One connection's state and its outbound queue (written through [`crate::sockets`]).
//!
//! Sized for the idle case: an idle authenticated connection is this struct in the slab
//! plus its user id (shared with the directory) and nothing else. Buffers exist only
//! while a frame is partial or output is waiting.

use std::{collections::VecDeque, io, os::fd::RawFd, sync::Arc};

use bytes::Bytes;

use crate::{
    protocol::{outbound::Outgoing, Priority},
    sockets::Socket,
};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading HTTP requests (health checks, or the upgrade).
    Http,
    /// WebSocket open, waiting for `auth`.
    Open,
    /// Authenticated, and going to its user's home reactor at the end of the turn: its
    /// input waits (see `reactor::home`).
    Moving,
    /// WebSocket open and authenticated.
    Authenticated,
    /// Our close frame is queued or sent; waiting for the peer's close or EOF.
    Closing,
}

/// One connection in a reactor's slab.
#[derive(Debug)]
pub struct Conn {
    /// The socket (an fd or a direct descriptor: see [`crate::sockets`]).
    pub socket: Socket,
    /// Distinguishes this connection from earlier ones in the same slot.
    pub generation: u32,
    /// Where it is in its life.
    pub phase: Phase,
    /// Small state bits: see [`Flags`].
    pub flags: Flags,
    /// Client messages in the current rate window (saturating).
    pub rate_count: u8,
    /// Before auth, and while closing: the timer-wheel tick of the connection's live
    /// deadline (0: none). Once authenticated: when its session's token expires, in Unix
    /// seconds (0: never), which the session sweep enforces (`reactor::limits`). One field
    /// for both, since an idle connection's 64 bytes have no room for a second.
    pub deadline: u32,
    /// The authenticated user; shared with the user's directory entry when homed here.
    pub user: Option<Arc<str>>,
    /// The highest inbox `seq` written to it, or that it had when it resumed: a live
    /// event at or below it came while the device read its inbox, and the read (or the
    /// device's earlier connection) gave it already.
    pub inbox_seq: u64,
    /// Input not yet consumed (partial frame, partial request, fragmented message).
    pub inbound: Option<Box<Inbound>>,
    /// Output the socket has not taken yet.
    pub outbound: Option<Box<OutQueue>>,
    /// Rarely used state: the upgrade URL's token, a pending API answer, a queue part in
    /// flight.
    pub aux: Option<Box<Aux>>,
}

/// A connection's state bits, in one byte (the idle connection's size is the budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u8);

impl Flags {
    /// Cleared by a short write, set when the kernel says the socket is writable.
    pub const WRITABLE: u8 = 1;
    /// Close the socket as soon as the outbound queue is flushed.
    pub const CLOSE_WHEN_FLUSHED: u8 = 2;
    /// Input arrived since the idle sweep last looked.
    pub const ACTIVE: u8 = 4;
    /// The idle sweep sent a ping that no input has answered yet.
    pub const PINGED: u8 = 8;
    /// Input is left unread until the mailbox backlogs drain (backpressure).
    pub const PAUSED: u8 = 16;
    /// The device acknowledges inbox events itself (its `auth` had `resume`); without
    /// it, an inbox page handed to the kernel is taken as delivered (v1).
    pub const ACKS: u8 = 32;
    /// Authenticated, and reading its inbox: frames for it wait in [`CatchUp::held`].
    pub const CATCHING_UP: u8 = 64;
    /// The client sent a close frame: a logout, so its user's presence has no grace.
    pub const SAID_GOODBYE: u8 = 128;

    /// Whether `bit` is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Sets or clears `bit`.
    pub fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// Input kept between reads.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Bytes of an incomplete frame or request.
    pub partial: Vec<u8>,
    /// A fragmented text message being reassembled.
    pub fragments: Option<Vec<u8>>,
}

/// What a frame is to a connection's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxFrame {
    /// Not an inbox event.
    Other,
    /// An inbox event the device has already (the inbox read gave it).
    Had,
    /// An inbox event new to the device, numbered `seq`.
    New(u64),
}

impl Conn {
    /// What `frame` is to this device's inbox (see [`Conn::inbox_seq`]).
    ///
    /// Hot path: reads a few bytes of inbox events only.
    pub fn inbox_frame(&self, frame: &Outgoing) -> InboxFrame {
        if !frame.kind.is_inbox_event() {
            return InboxFrame::Other;
        }
        match frame.seq() {
            Some(seq) if seq <= self.inbox_seq => InboxFrame::Had,
            Some(seq) => InboxFrame::New(seq),
            None => InboxFrame::Other,
        }
    }
}

/// Rarely used per-connection state, allocated only when needed.
#[derive(Debug, Default)]
pub struct Aux {
    /// `?token=` from the upgrade URL, used when `auth` carries none.
    pub url_token: Option<Box<str>>,
    /// The session token's `groups` claim: invite-only groups it may join.
    pub token_groups: Option<Box<[Box<str>]>>,
    /// An HTTP API request whose answer waits on other reactors; later pipelined
    /// requests wait behind it so answers keep their order.
    pub pending_api: Option<PendingApi>,
    /// From `auth` until the device has read its inbox.
    pub catch_up: Option<Box<CatchUp>>,
    /// An inbox page (or an HTTP drain's answer) handed to this connection and not yet
    /// all taken by the kernel; what follows it waits until it is.
    pub page_in_flight: Option<Box<PageInFlight>>,
    /// TLS (`--tls-cert`): the handshake, then the session's keys. Its output queue's
    /// head is then always ciphertext, its lanes plaintext sealed as they are written.
    pub tls: Option<crate::tls::ConnTls>,
}

/// A device between `auth` and having read its inbox.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// The device id, for `auth_success`.
    pub device_id: Box<str>,
    /// Where it left off, from `auth {resume}`: `(epoch, seq)`.
    pub resume: Option<(Box<str>, u64)>,
    /// Frames that came for it meanwhile, in order, with their lanes: written once it
    /// has read its inbox, but inbox events the read already gave.
    pub held: Vec<(Outgoing, Priority)>,
    /// Their bytes (bounded by `--outbound-bytes-max`, as a queue).
    pub held_bytes: usize,
}

/// What happens once the kernel has taken every frame of an inbox page: a device that
/// does not acknowledge is taken to have it, and the next page is read, or the device
/// tells its home it is caught up. A connection that dies first has acknowledged nothing.
#[derive(Debug)]
pub struct PageInFlight {
    /// The user.
    pub user: Box<str>,
    /// Every event up to this `seq` was in this page or an earlier one.
    pub covered: u64,
    /// Where the next page starts (`None`: this was the last).
    pub next: Option<crate::store::ReadFrom>,
    /// An HTTP drain: acknowledge `covered` for the user, and that is all.
    pub drain: bool,
    /// Whether the page held any event (an empty one has nothing to acknowledge).
    pub any: bool,
}

/// An API request in flight on an HTTP connection.
#[derive(Debug)]
pub struct PendingApi {
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// The message id `send` answers with (empty for a broadcast).
    pub message_id: Box<str>,
    /// A queue read with `?drain=true`: what it returns is acknowledged once the answer
    /// is all with the kernel.
    pub drain: bool,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(socket: Socket, generation: u32) -> Conn {
        Conn {
            socket,
            generation,
            phase: Phase::Http,
            flags: Flags(Flags::WRITABLE),
            rate_count: 0,
            deadline: 0,
            user: None,
            inbox_seq: 0,
            inbound: None,
            outbound: None,
            aux: None,
        }
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.outbound.as_ref().map_or(0, |q| q.bytes)
    }

    /// The aux state, allocated on first use.
    pub fn aux_mut(&mut self) -> &mut Aux {
        self.aux.get_or_insert_with(Box::default)
    }

    /// Frees the aux state once it holds nothing.
    pub fn trim_aux(&mut self) {
        if self.aux.as_ref().is_some_and(|a| {
            a.url_token.is_none()
                && a.token_groups.is_none()
                && a.pending_api.is_none()
                && a.catch_up.is_none()
                && a.page_in_flight.is_none()
                && a.tls.is_none()
        }) {
            self.aux = None;
        }
    }
}

/// Output waiting for the socket: a partly written frame first, then frames by priority.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// A frame the socket has taken part of, and how much; nothing overtakes it.
    head: Option<(Bytes, usize)>,
    /// Frames not started yet, one lane per priority (high first).
    lanes: [VecDeque<Bytes>; 3],
    /// Total bytes waiting.
    bytes: usize,
}

/// The most buffers handed to one `writev`.
pub const IOVECS_MAX: usize = 64;

impl OutQueue {
    /// Queues `frame` behind others of its priority.
    pub fn push(&mut self, frame: Bytes, priority: Priority) {
        self.bytes += frame.len();
        self.lanes[priority as usize].push_back(frame);
    }

    /// Whether a frame has been partly written (so nothing else may be written first).
    pub fn has_partial_frame(&self) -> bool {
        self.head.is_some()
    }

    /// Drops every frame not started yet, keeping the rest of a partly written one (its
    /// bytes are owed to the client before any other frame can be read).
    pub fn drop_unstarted(&mut self) {
        for lane in &mut self.lanes {
            lane.clear();
        }
        self.bytes = self.head.as_ref().map_or(0, |(f, off)| f.len() - off);
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// What waits, in the order it must go: the rest of a started frame, then the lanes.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let head = self.head.as_ref().map(|(f, off)| &f[*off..]);
        head.into_iter()
            .chain(self.lanes.iter().flatten().map(|f| &f[..]))
    }

    /// TLS: appends bytes already sealed (handshake records, a sealed batch the socket did
    /// not take) behind the head; they go before any frame of the lanes.
    pub fn push_sealed(&mut self, sealed: &[u8]) {
        self.bytes += sealed.len();
        let head = match self.head.take() {
            Some((frame, offset)) => [&frame[offset..], sealed].concat(),
            None => sealed.to_vec(),
        };
        self.head = Some((Bytes::from(head), 0));
    }

    /// TLS: the head's bytes (sealed) the socket has not taken.
    pub fn sealed(&self) -> &[u8] {
        self.head
            .as_ref()
            .map_or(&[], |(frame, offset)| &frame[*offset..])
    }

    /// TLS: the lanes' frames, whole and in the order they go, while they total at most
    /// `budget` bytes (and at least one).
    pub fn unsealed(&self, budget: usize) -> impl Iterator<Item = &[u8]> {
        let mut total = 0;
        self.lanes
            .iter()
            .flatten()
            .take_while(move |frame| {
                let first = total == 0;
                total += frame.len();
                first || total <= budget
            })
            .map(|f| &f[..])
    }

    /// TLS: forgets the lanes' first `n` bytes (whole frames), now sealed.
    pub fn forget_unsealed(&mut self, mut n: usize) {
        self.bytes -= n;
        for lane in self.lanes.iter_mut() {
            while n > 0 {
                let Some(frame) = lane.pop_front() else {
                    break;
                };
                debug_assert!(frame.len() <= n, "a frame sealed in part");
                n -= frame.len();
            }
        }
    }

    /// Forgets the first `n` bytes waiting: the socket took them.
    pub fn taken(&mut self, mut n: usize) {
        self.bytes -= n;
        if let Some((frame, offset)) = self.head.take() {
            let left = frame.len() - offset;
            if n < left {
                self.head = Some((frame, offset + n));
                return;
            }
            n -= left;
        }
        for lane in self.lanes.iter_mut() {
            while let Some(frame) = lane.pop_front() {
                if n < frame.len() {
                    if n > 0 {
                        self.head = Some((frame, n));
                    } else {
                        lane.push_front(frame);
                    }
                    return;
                }
                n -= frame.len();
            }
        }
    }
}

/// An iovec over `chunk` (for a write that reads it while `chunk` is alive).
pub fn iovec(chunk: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: chunk.as_ptr() as *mut _,
        iov_len: chunk.len(),
    }
}

/// Makes an accepted socket non-blocking and disables Nagle (chat frames are small).
pub fn prepare_accepted(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl/setsockopt on an fd we own; `one` lives across the call.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::{Placement, Sockets};
    use std::{io::Read, os::fd::IntoRawFd, os::unix::net::UnixStream};

    /// Writes what the socket takes of `queue`, as the reactor does; whether all went.
    fn write_to(queue: &mut OutQueue, sockets: &mut Sockets, socket: Socket) -> bool {
        while !queue.is_empty() {
            let iovecs: Vec<libc::iovec> = queue.chunks().take(IOVECS_MAX).map(iovec).collect();
            match sockets.write_vectored(socket, &iovecs).unwrap() {
                0 => return false,
                n => queue.taken(n),
            }
        }
        true
    }

    /// Runs `check` with our end of a socket pair in each placement the host offers.
    fn in_each_placement(check: impl Fn(&mut Sockets, Socket, &mut UnixStream)) {
        for placement in [Placement::FdTable, Placement::Auto] {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            theirs.set_nonblocking(true).unwrap();
            let (mut sockets, _) = Sockets::new(placement).unwrap();
            let socket = sockets.adopt(ours.into_raw_fd(), 1).unwrap();
            check(&mut sockets, socket, &mut theirs);
            sockets.close(socket, 1);
        }
    }

    #[test]
    fn an_idle_connection_stays_small() {
        // The slab slot is most of an idle connection's cost (DESIGN.md: 256 B in all);
        // the inbox `seq` took it from 56 to 64 bytes.
        assert!(
            std::mem::size_of::<Conn>() <= 64,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }

    #[test]
    fn high_priority_overtakes_but_not_a_started_frame() {
        in_each_placement(|sockets, socket, theirs| {
            let mut queue = OutQueue::default();
            queue.push(Bytes::from_static(b"HEAD"), Priority::Low);
            queue.taken(2); // the socket took "HE"
            queue.push(Bytes::from_static(b"low"), Priority::Low);
            queue.push(Bytes::from_static(b"norm"), Priority::Normal);
            queue.push(Bytes::from_static(b"high"), Priority::High);
            assert!(write_to(&mut queue, sockets, socket));
            let mut got = [0u8; 64];
            let n = theirs.read(&mut got).unwrap();
            assert_eq!(&got[..n], b"ADhighnormlow");
        });
    }

    #[test]
    fn a_full_socket_keeps_the_rest_in_order() {
        in_each_placement(|sockets, socket, theirs| {
            let mut queue = OutQueue::default();
            let frames: Vec<Bytes> = (0..200u8).map(|i| Bytes::from(vec![i; 10_000])).collect();
            for frame in &frames {
                queue.push(frame.clone(), Priority::Normal);
            }
            let mut received = Vec::new();
            let mut buf = vec![0u8; 65536];
            let mut blocked = 0;
            loop {
                let all = write_to(&mut queue, sockets, socket);
                blocked += usize::from(!all);
                loop {
                    match theirs.read(&mut buf) {
                        Ok(n) => received.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                if all {
                    break;
                }
            }
            assert!(blocked > 0, "2 MB should not fit a socket pair's buffer");
            assert_eq!(received, frames.concat());
            assert!(queue.is_empty());
        });
    }
}
