//! The readiness set: one edge-triggered epoll holding a thread's watched fds (and, in the
//! fd-table placement, its sockets), itself awaited by the monoio runtime (one io_uring
//! PollAdd per wait); and the plain non-blocking socket syscalls of that placement.
//!
//! Connections are bare slab entries registered here, so an idle connection costs no
//! task, no buffer and no in-flight operation in user space.

use std::{io, os::fd::RawFd};

/// Readable, or the peer half-closed.
pub const READABLE: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
/// Writable again after a short write.
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
/// The socket failed or both halves closed.
pub const BROKEN: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
/// The peer shut down its side: read on to the end of the stream.
pub const PEER_CLOSED: u32 = libc::EPOLLRDHUP as u32;

/// The most events taken from the kernel per wait.
pub const EVENTS_PER_WAIT_MAX: usize = 1024;

/// An owned epoll instance.
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// Creates the instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; result checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT_MAX],
        })
    }

    /// The epoll fd, to be awaited for readiness.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Adds `fd` edge-triggered for input, output and hang-up, tagged with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `event` is a live epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (it stays open).
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: no event is needed for a delete (a null pointer is allowed since 2.6.9).
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes the ready events without blocking; returns `(events, token)` pairs.
    ///
    /// Hot path: fills the preallocated event array, no allocation.
    pub fn poll_now(&mut self) -> impl Iterator<Item = (u32, u64)> + '_ {
        // SAFETY: the array is valid for EVENTS_PER_WAIT_MAX entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                EVENTS_PER_WAIT_MAX as i32,
                0,
            )
        };
        let n = n.max(0) as usize;
        self.events[..n].iter().map(|e| (e.events, e.u64))
    }
}

/// Reads into `buf`: `Ok(0)` is end of stream; `WouldBlock` means drained.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes what the socket takes of `data` now (`WouldBlock` when it takes nothing).
pub(crate) fn write(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes what the socket takes of `bufs`, in order (`WouldBlock` when it takes nothing).
pub(crate) fn write_vectored(fd: RawFd, bufs: &[libc::iovec]) -> io::Result<usize> {
    loop {
        // SAFETY: the caller's iovecs point into buffers alive for the call.
        let n = unsafe { libc::writev(fd, bufs.as_ptr(), bufs.len() as i32) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Stops sending, so the peer sees EOF.
pub(crate) fn shutdown_write(fd: RawFd) {
    // SAFETY: no pointers; an error (already closed) needs no handling.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Closes the fd; the kernel also drops it from the epoll set.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and forgets it after this call.
    unsafe { libc::close(fd) };
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { libc::close(self.fd) };
    }
}
