//! Where one thread's sockets live, and how it learns they are ready.
//!
//! Two homes, one interface:
//! - **fd table** ([`epoll`]): each socket is a file descriptor in the thread's private fd
//!   table, watched by an edge-triggered epoll set. A thread then holds at most
//!   RLIMIT_NOFILE sockets, so a box with a low hard limit needs many threads.
//! - **direct** ([`direct`]): each socket is an io_uring direct descriptor, a slot in the
//!   file table of one of the thread's rings, and in no fd table at all. Every ring's table
//!   holds up to RLIMIT_NOFILE, and a thread has as many rings as it needs, so two threads
//!   hold a million sockets under a 20,000-fd limit.
//!
//! Both report readiness as `(bits, token)` pairs with epoll's bits ([`READABLE`],
//! [`WRITABLE`], [`BROKEN`], [`PEER_CLOSED`]), edge-triggered, and both read and write with
//! non-blocking calls that answer at once (`WouldBlock` when the socket has nothing or is
//! full). So the code above does not know which home its sockets have.
//!
//! Non-socket fds a thread waits on (a [`Doorbell`], a timerfd) are always in the epoll
//! set: [`Sockets::watch`]. The epoll fd is what the thread's runtime awaits
//! ([`Sockets::fd`]).
//!
//! A crate of its own, so that the engine and its load generator share it without the
//! load generator depending on the engine.
#![warn(missing_docs, unreachable_pub)]

pub mod direct;
mod doorbell;
pub mod epoll;
mod handoff;

pub use doorbell::Doorbell;
pub use handoff::{Handoff, HANDOFF_BATCH_MAX};

use std::{io, os::fd::RawFd};

pub use epoll::{BROKEN, PEER_CLOSED, READABLE, WRITABLE};

use epoll::Epoll;

/// The kernel stopped watching this socket (a full completion queue ends a multishot poll):
/// call [`Sockets::rearm`]. Only direct sockets report it; it comes with the ready bits.
pub const REARM: u32 = 1 << 31;

/// The largest token a socket may be adopted under: the values above it are the socket
/// layer's own (tags on its io_uring operations).
pub const SOCKET_TOKEN_MAX: u64 = (1 << 63) - 1;

/// The epoll token of the rings' completion eventfd (not to be used with [`Sockets::watch`]).
const RINGS_TOKEN: u64 = u64::MAX - 1;

/// A socket owned by one thread's [`Sockets`]: an fd, or a ring and a slot in its file
/// table. Four bytes, so a connection pays no more for it than for an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket(u32);

/// Where a thread's sockets should live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Direct descriptors where io_uring allows them, else the fd table (logged).
    Auto,
    /// io_uring direct descriptors; start-up fails where they are not available.
    Direct,
    /// The thread's fd table with epoll (at most RLIMIT_NOFILE sockets per thread).
    FdTable,
}

/// One thread's sockets and readiness set. Not `Send`: it belongs to the thread that
/// made it (its rings' completions run in that thread's context).
pub struct Sockets {
    /// The readiness set: watched fds, fd-table sockets, the rings' eventfd.
    epoll: Epoll,
    /// The rings, when sockets are direct descriptors.
    direct: Option<direct::Direct>,
}

impl Sockets {
    /// Makes the socket set. `Auto` falls back to the fd table (and says why in the
    /// returned note) where io_uring direct descriptors cannot be had.
    pub fn new(placement: Placement) -> io::Result<(Sockets, Option<String>)> {
        let epoll = Epoll::new()?;
        let (direct, note) = match placement {
            Placement::FdTable => (None, None),
            Placement::Direct => (Some(direct::Direct::new()?), None),
            Placement::Auto => match direct::Direct::new() {
                Ok(direct) => (Some(direct), None),
                Err(e) => (
                    None,
                    Some(format!("io_uring direct descriptors unavailable: {e}")),
                ),
            },
        };
        if let Some(direct) = &direct {
            epoll.add(direct.notify_fd(), RINGS_TOKEN)?;
        }
        Ok((Sockets { epoll, direct }, note))
    }

    /// The epoll fd, for the runtime to await.
    pub fn fd(&self) -> RawFd {
        self.epoll.fd()
    }

    /// Whether the sockets are io_uring direct descriptors (else fds in the fd table).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Where the sockets live, for logs and reports.
    pub fn placement_name(&self) -> &'static str {
        if self.direct.is_some() {
            "io_uring direct descriptors"
        } else {
            "fd table"
        }
    }

    /// The most sockets this set can hold at once (the fd table's: RLIMIT_NOFILE).
    pub fn capacity(&self) -> u64 {
        match &self.direct {
            Some(direct) => direct.capacity(),
            None => direct::nofile_soft(),
        }
    }

    /// Adds a non-socket fd (doorbell, timerfd) to the readiness set under `token`, which
    /// may be any value but the set's own `RINGS_TOKEN`.
    pub fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        assert_ne!(token, RINGS_TOKEN, "the socket set's own token");
        self.epoll.add(fd, token)
    }

    /// Takes ownership of a connected socket and watches it under `token` (at most
    /// [`SOCKET_TOKEN_MAX`]).
    ///
    /// A direct set moves the socket into a ring's file table and closes `fd`, so the
    /// socket no longer counts against the fd table. On error `fd` is closed.
    pub fn adopt(&mut self, fd: RawFd, token: u64) -> io::Result<Socket> {
        assert!(
            token <= SOCKET_TOKEN_MAX,
            "token {token:#x} is the socket layer's"
        );
        match &mut self.direct {
            Some(direct) => direct.adopt(fd, token),
            None => match self.epoll.add(fd, token) {
                Ok(()) => Ok(Socket(fd as u32)),
                Err(e) => {
                    epoll::close(fd);
                    Err(e)
                }
            },
        }
    }

    /// Takes the ready events without blocking, appending `(bits, token)` pairs to `out`.
    ///
    /// Hot path: no allocation once `out` has grown to a batch.
    pub fn poll_now(&mut self, out: &mut Vec<(u32, u64)>) {
        let mut rings_ready = false;
        for (bits, token) in self.epoll.poll_now() {
            if token == RINGS_TOKEN {
                rings_ready = true;
            } else {
                out.push((bits, token));
            }
        }
        if let Some(direct) = &mut self.direct {
            direct.reap(out, rings_ready);
        }
    }

    /// Gives back the capacity of the batch buffers beyond `keep` entries each: a batch of
    /// every socket (a ping sweep of a million, a broadcast) would otherwise leave its
    /// high-water mark allocated for good. Cheap when nothing grew past `keep`.
    pub fn trim_scratch(&mut self, keep: usize) {
        if let Some(direct) = &mut self.direct {
            direct.trim_scratch(keep);
        }
    }

    /// Watches `socket` again under `token` after a [`REARM`] event.
    pub fn rearm(&mut self, socket: Socket, token: u64) {
        if let Some(direct) = &mut self.direct {
            direct.rearm(socket, token);
        }
    }

    /// Reads into `buf`: `Ok(0)` is end of stream; `WouldBlock` means nothing is there.
    pub fn read(&mut self, socket: Socket, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.direct {
            Some(direct) => direct.read(socket, buf),
            None => epoll::read(socket.0 as RawFd, buf),
        }
    }

    /// Writes what the socket takes of `data` now; `Ok(0)` when it takes nothing.
    pub fn write(&mut self, socket: Socket, data: &[u8]) -> io::Result<usize> {
        let result = match &mut self.direct {
            Some(direct) => direct.write(socket, data),
            None => epoll::write(socket.0 as RawFd, data),
        };
        would_block_is_zero(result)
    }

    /// Writes what the socket takes of `bufs`, in order; `Ok(0)` when it takes nothing.
    pub fn write_vectored(&mut self, socket: Socket, bufs: &[libc::iovec]) -> io::Result<usize> {
        let result = match &mut self.direct {
            Some(direct) => direct.write_vectored(socket, bufs),
            None => epoll::write_vectored(socket.0 as RawFd, bufs),
        };
        would_block_is_zero(result)
    }

    /// Writes what each socket takes of its iovecs (`sends[i]`: a socket, at most once,
    /// and its range of `iovecs`); `results[i]` is the i-th outcome, `Ok(0)` when the
    /// socket takes nothing. With direct descriptors the sends go in one `io_uring_enter`
    /// per ring (up to its queue's 64); in the fd table, one `writev` each.
    pub fn write_vectored_batch(
        &mut self,
        sends: &[(Socket, std::ops::Range<usize>)],
        iovecs: &[libc::iovec],
        results: &mut Vec<io::Result<usize>>,
    ) {
        match &mut self.direct {
            Some(direct) => direct.write_vectored_batch(sends, iovecs, results),
            None => {
                results.clear();
                results.extend(sends.iter().map(|(socket, range)| {
                    epoll::write_vectored(socket.0 as RawFd, &iovecs[range.clone()])
                }));
            }
        }
        for result in results.iter_mut() {
            let taken = std::mem::replace(result, Ok(0));
            *result = would_block_is_zero(taken);
        }
    }

    /// Stops sending, so the peer sees end of stream (after a close frame).
    pub fn shutdown_write(&mut self, socket: Socket) {
        match &mut self.direct {
            Some(direct) => direct.shutdown_write(socket),
            None => epoll::shutdown_write(socket.0 as RawFd),
        }
    }

    /// Gives the socket, adopted under `token`, up as an fd in this thread's fd table and
    /// stops watching it, so that another thread's set can adopt it (see [`Handoff`]).
    /// On error the socket is as it was.
    pub fn release(&mut self, socket: Socket, token: u64) -> io::Result<RawFd> {
        match &mut self.direct {
            Some(direct) => direct.release(socket, token),
            None => {
                let fd = socket.0 as RawFd;
                self.epoll.remove(fd)?;
                Ok(fd)
            }
        }
    }

    /// Closes the socket, adopted under `token`, and stops watching it. Its slot or fd may
    /// be reused at once; a late event for it still carries its old token.
    pub fn close(&mut self, socket: Socket, token: u64) {
        match &mut self.direct {
            Some(direct) => direct.close(socket, token),
            None => epoll::close(socket.0 as RawFd),
        }
    }
}

fn would_block_is_zero(result: io::Result<usize>) -> io::Result<usize> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair of non-blocking stream sockets: `(ours, theirs)`.
    fn pair() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: `fds` has room for the two fds socketpair writes.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, flags, 0, fds.as_mut_ptr()) },
            0
        );
        (fds[0], fds[1])
    }

    fn iovec(bytes: &[u8]) -> libc::iovec {
        libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        }
    }

    /// One batch to three sockets: two take everything, in order across their iovecs; the
    /// third's buffer is full, so it takes nothing and says so with `Ok(0)`.
    fn a_batch_writes_each_socket_its_own_bytes(placement: Placement) {
        let (mut sockets, _) = Sockets::new(placement).unwrap();
        let (a, a_peer) = pair();
        let (b, b_peer) = pair();
        let (full, full_peer) = pair();
        let a = sockets.adopt(a, 1).unwrap();
        let b = sockets.adopt(b, 2).unwrap();
        let full = sockets.adopt(full, 3).unwrap();
        let filler = [0u8; 4096];
        while sockets.write(full, &filler).unwrap() > 0 {}
        let (first, second, third) = (b"hello, ".as_slice(), b"a".as_slice(), b"b".as_slice());
        let iovecs = [iovec(first), iovec(second), iovec(third), iovec(b"x")];
        let sends = [(a, 0..2), (b, 2..3), (full, 3..4)];
        let mut results = Vec::new();
        sockets.write_vectored_batch(&sends, &iovecs, &mut results);
        assert_eq!(results.len(), 3);
        assert_eq!(*results[0].as_ref().unwrap(), 8);
        assert_eq!(*results[1].as_ref().unwrap(), 1);
        assert_eq!(
            *results[2].as_ref().unwrap(),
            0,
            "a full socket takes nothing"
        );
        let mut got = [0u8; 16];
        let n = epoll::read(a_peer, &mut got).unwrap();
        assert_eq!(&got[..n], b"hello, a");
        let n = epoll::read(b_peer, &mut got).unwrap();
        assert_eq!(&got[..n], b"b");
        // A second batch reuses the scratch buffers and sees a closed peer as an error.
        epoll::close(b_peer);
        sockets.write_vectored_batch(&[(b, 0..1)], &iovecs, &mut results);
        assert!(results[0].is_err(), "{:?}", results[0]);
        for (socket, token) in [(a, 1), (b, 2), (full, 3)] {
            sockets.close(socket, token);
        }
        epoll::close(a_peer);
        epoll::close(full_peer);
    }

    /// A socket released by one thread's set, handed off, and adopted by a set in a thread
    /// with its own fd table keeps its connection: what the peer sent before and after the
    /// move is read there, and its writes reach the peer.
    fn a_socket_moves_between_threads_with_their_own_fd_tables(placement: Placement) {
        let handoff = std::sync::Arc::new(Handoff::new().unwrap());
        let (ours, peer) = pair();
        let (mut sockets, _) = Sockets::new(placement).unwrap();
        let socket = sockets.adopt(ours, 5).unwrap();
        epoll::write(peer, b"before ").unwrap();
        let fd = sockets.release(socket, 5).unwrap();
        handoff.send(&[(42, fd)]).unwrap();
        epoll::close(fd);
        epoll::write(peer, b"after").unwrap();
        let receiving = handoff.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).unwrap();
            let mut arrived = Vec::new();
            receiving.receive(&mut arrived).unwrap();
            assert_eq!(arrived.len(), 1);
            let (id, fd) = arrived.pop().unwrap();
            assert_eq!(id, 42);
            let (mut sockets, _) = Sockets::new(placement).unwrap();
            let socket = sockets
                .adopt(std::os::fd::IntoRawFd::into_raw_fd(fd), 6)
                .unwrap();
            let mut got = [0u8; 32];
            let n = sockets.read(socket, &mut got).unwrap();
            assert_eq!(&got[..n], b"before after");
            assert_eq!(sockets.write(socket, b"moved").unwrap(), 5);
            sockets.close(socket, 6);
        })
        .join()
        .unwrap();
        let mut got = [0u8; 8];
        let n = epoll::read(peer, &mut got).unwrap();
        assert_eq!(&got[..n], b"moved");
        // Closed by the new owner. A test running beside this one may have copied the fd
        // table while the socket was in it (its thread's `unshare`), which keeps the socket
        // open until that thread ends: wait a little for the end of stream.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match epoll::read(peer, &mut got) {
                Ok(0) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "never closed");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => panic!("after the close: {other:?}"),
            }
        }
        epoll::close(peer);
    }

    #[test]
    fn a_socket_moves_between_threads_in_the_fd_table() {
        a_socket_moves_between_threads_with_their_own_fd_tables(Placement::FdTable);
    }

    #[test]
    fn a_socket_moves_between_threads_as_a_direct_descriptor() {
        a_socket_moves_between_threads_with_their_own_fd_tables(Placement::Direct);
    }

    /// How many full messages (64 sockets each) one end takes before `WouldBlock`: what
    /// may wait for a busy receiver.
    fn messages_until_full(send: impl Fn(&[RawFd]) -> io::Result<()>) -> usize {
        let (one, other) = pair();
        let fds = [one; HANDOFF_BATCH_MAX];
        let mut sent = 0;
        while send(&fds).is_ok() {
            sent += 1;
            assert!(sent < 1_000_000, "never full");
        }
        epoll::close(one);
        epoll::close(other);
        sent
    }

    /// The handoff's send buffer holds a connect storm's worth of messages, far more than a
    /// socket pair with the kernel's default buffer (a receiver's turn can last seconds).
    #[test]
    fn a_handoff_holds_many_more_messages_than_a_default_buffer() {
        let handoff = Handoff::new().unwrap();
        let ids: Vec<u64> = (0..HANDOFF_BATCH_MAX as u64).collect();
        let handoff_holds = messages_until_full(|fds| {
            let batch: Vec<(u64, RawFd)> = ids.iter().copied().zip(fds.iter().copied()).collect();
            handoff.send(&batch)
        });
        let (sender, _receiver) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let default_holds = messages_until_full(|fds| {
            let payload = [std::io::IoSlice::new(&[0u8; 8 * HANDOFF_BATCH_MAX])];
            let rights = [nix::sys::socket::ControlMessage::ScmRights(fds)];
            nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
                std::os::fd::AsRawFd::as_raw_fd(&sender),
                &payload,
                &rights,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map(drop)
            .map_err(io::Error::from)
        });
        eprintln!("messages of {HANDOFF_BATCH_MAX} sockets held: handoff {handoff_holds}, default buffer {default_holds}");
        assert!(
            handoff_holds >= 10 * default_holds,
            "{handoff_holds} against {default_holds}"
        );
    }

    /// Nothing waiting: `receive` returns at once with nothing.
    #[test]
    fn an_empty_handoff_gives_nothing() {
        let handoff = Handoff::new().unwrap();
        let mut arrived = Vec::new();
        handoff.receive(&mut arrived).unwrap();
        assert!(arrived.is_empty());
    }

    #[test]
    fn a_batch_writes_each_socket_its_own_bytes_in_the_fd_table() {
        a_batch_writes_each_socket_its_own_bytes(Placement::FdTable);
    }

    #[test]
    fn a_batch_writes_each_socket_its_own_bytes_as_direct_descriptors() {
        a_batch_writes_each_socket_its_own_bytes(Placement::Direct);
    }

    /// A batch grows the scratch buffers to its size; trimming gives back what is past
    /// `keep`, and the next batch still writes.
    #[test]
    fn trimming_gives_back_what_a_large_batch_grew() {
        let (mut sockets, _) = Sockets::new(Placement::Direct).unwrap();
        let pairs: Vec<(RawFd, RawFd)> = (0..40).map(|_| pair()).collect();
        let adopted: Vec<Socket> = pairs
            .iter()
            .enumerate()
            .map(|(i, &(ours, _))| sockets.adopt(ours, i as u64).unwrap())
            .collect();
        let iovecs = [iovec(b"x")];
        let sends: Vec<_> = adopted.iter().map(|&s| (s, 0..1)).collect();
        let mut results = Vec::new();
        sockets.write_vectored_batch(&sends, &iovecs, &mut results);
        let grown = sockets.direct.as_ref().unwrap().scratch_capacity();
        assert!(grown >= 40, "{grown}");
        // The sockets' readiness events, staged meanwhile, are taken first: what a buffer
        // holds is never trimmed.
        let mut events = Vec::new();
        sockets.poll_now(&mut events);
        sockets.trim_scratch(4);
        let kept = sockets.direct.as_ref().unwrap().scratch_capacity();
        assert!(kept <= 4, "{kept}");
        sockets.write_vectored_batch(&sends[..1], &iovecs, &mut results);
        assert_eq!(*results[0].as_ref().unwrap(), 1);
        for (i, (socket, (_, peer))) in adopted.into_iter().zip(pairs).enumerate() {
            sockets.close(socket, i as u64);
            epoll::close(peer);
        }
    }
}
