//! Sockets as io_uring direct descriptors: each lives in a slot of one ring's file table
//! and in no fd table, watched by one multishot poll; reads and writes are `MSG_DONTWAIT`
//! ops that complete inside the `io_uring_enter` that submits them.
//!
//! Why: an fd table holds RLIMIT_NOFILE sockets (20,000 on the dev box, and the hard limit
//! cannot be raised there), so a million sockets took 51 threads on each side. A ring's
//! file table is bounded by the same limit, but a thread may have many rings: one thread
//! holds up to [`RINGS_MAX`] × RLIMIT_NOFILE sockets.
//!
//! What a socket costs: in user space its 4-byte [`Socket`] and, once closed, a 4-byte entry
//! in its ring's free list; in the kernel one armed poll request. A ring costs its
//! submission and completion queues (about 70 KiB) and its file table.
//!
//! Waiting: every ring signals one eventfd when it posts completions, and that eventfd sits
//! in the thread's epoll set, so the thread sleeps in one place. The completions themselves
//! come from task work that runs in this thread when it enters the kernel (io_uring's
//! default notification wakes the thread for it, wherever it sleeps).
//!
//! Syscalls per operation match the fd table's: one `io_uring_enter` per read or write,
//! one per close (cancel and close submitted together); a batch of sends to many sockets
//! ([`Direct::write_vectored_batch`]) takes one per ring for up to 64 of them (its submission queue).

use std::{collections::HashMap, io, os::fd::RawFd};

use io_uring::{
    cqueue, opcode, squeue,
    types::{CancelBuilder, Fixed},
    IoUring,
};

use super::{epoll, Socket, BROKEN, REARM, SOCKET_TOKEN_MAX};

/// Rings per thread at most. With a 20,000-fd limit that is 1.28 million sockets.
pub const RINGS_MAX: usize = 64;
/// Submission queue entries per ring: operations are submitted one or two at a time.
const SQ_ENTRIES: u32 = 64;
/// Completion queue entries per ring. A full queue ends a socket's multishot poll (the
/// kernel keeps the overflow), which [`REARM`] then restores; bigger costs memory per ring.
const CQ_ENTRIES: u32 = 4096;
/// Kernel worker threads this thread's rings may use for socket work (`[bounded,
/// unbounded]`). Only shutdowns go to workers, and they do not block, so a few suffice; the
/// kernel's own bound for socket work is RLIMIT_NPROC, which a mass drain could approach.
const IO_WORKERS_MAX: [u32; 2] = [2, 4];
/// The most slots in one ring's file table (the kernel's IORING_MAX_FIXED_FILES).
const SLOTS_PER_RING_MAX: u32 = 1 << 20;
/// Bits of a [`Socket`] that hold the slot; the ring index sits above them.
const SLOT_BITS: u32 = 20;
/// The user data of an operation whose result [`Direct::run`] waits for.
const OP_TOKEN: u64 = u64::MAX - 2;
/// The user data of a shutdown is this tag with the socket in the low 32 bits.
const SHUTDOWN_TAG: u64 = 0xC000_0000_0000_0000;
/// The user data of a send of [`Direct::write_vectored_batch`] is this tag with its index
/// in the batch in the low 32 bits.
const BATCH_TAG: u64 = 0xA000_0000_0000_0000;
/// The bits of a user data that say it is a shutdown's.
const TAG_MASK: u64 = 0xFFFF_FFFF_0000_0000;
/// What a socket's poll watches; errors and hang-ups are always reported.
const POLL_MASK: u32 = (libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP) as u32;
/// Flags of every send: never block, never raise SIGPIPE.
const SEND_FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

const _: () = assert!(SLOTS_PER_RING_MAX <= 1 << SLOT_BITS);
const _: () = assert!((RINGS_MAX as u64) << SLOT_BITS <= u32::MAX as u64 + 1);
const _: () = assert!(OP_TOKEN > SOCKET_TOKEN_MAX && SHUTDOWN_TAG > SOCKET_TOKEN_MAX);
const _: () = assert!(BATCH_TAG > SOCKET_TOKEN_MAX && BATCH_TAG & TAG_MASK == BATCH_TAG);
const _: () = assert!(OP_TOKEN & TAG_MASK != SHUTDOWN_TAG);

/// One thread's rings and the eventfd they signal.
pub struct Direct {
    /// The rings, made as the sockets need them (the first at start-up).
    rings: Vec<Ring>,
    /// File-table slots per ring: RLIMIT_NOFILE, as the kernel allows no more.
    slots_per_ring: u32,
    /// Signalled by every ring when it posts completions; in the thread's epoll set.
    notify: RawFd,
    /// Completions reaped while an operation waited for its own.
    staged: Reaped,
    /// Sockets with a shutdown in flight, and whether they were closed meanwhile. A kernel
    /// worker runs a shutdown and looks its slot up only then, so a closed socket's slot is
    /// reused only once its shutdown has completed (else the shutdown would hit the slot's
    /// next socket).
    shutting_down: HashMap<u32, bool>,
    /// A ring that had a free slot at the last adoption: where the next one looks first.
    with_room: usize,
    /// The message headers of a batch of sends (kept between batches: no allocation once
    /// grown). Their pointers are the caller's iovecs, valid only during the batch.
    headers: Vec<libc::msghdr>,
}

/// Completions taken from a ring that the caller has not been given yet.
#[derive(Default)]
struct Reaped {
    /// Poll events, `(bits, token)`.
    events: Vec<(u32, u64)>,
    /// Sockets whose shutdown completed.
    shutdowns: Vec<u32>,
    /// Completions of the operations [`Direct::run`] waits for, and the last one's result:
    /// counted here so that any path that reaps the queue (an EBUSY submit too) keeps them.
    ops_done: usize,
    /// The result of the last operation completed.
    op_result: i32,
    /// The results of a batch's sends, by index in the batch, and how many have come.
    batch: Vec<i32>,
    batch_done: usize,
}

/// One ring and its file table's free slots.
struct Ring {
    uring: IoUring,
    /// Slots from here up have never been used.
    unused_from: u32,
    /// Slots freed by closes, reused first.
    free: Vec<u32>,
}

impl Ring {
    fn new(slots: u32, notify: RawFd) -> io::Result<Ring> {
        let uring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_submit_all()
            .build(SQ_ENTRIES)?;
        if !uring.params().is_feature_nodrop() {
            return Err(io::Error::other("this kernel's io_uring drops completions"));
        }
        uring.submitter().register_files_sparse(slots)?;
        uring.submitter().register_eventfd(notify)?;
        let mut workers = IO_WORKERS_MAX;
        uring.submitter().register_iowq_max_workers(&mut workers)?;
        Ok(Ring {
            uring,
            unused_from: 0,
            free: Vec::new(),
        })
    }

    fn take_slot(&mut self, slots: u32) -> Option<u32> {
        self.free.pop().or_else(|| {
            (self.unused_from < slots).then(|| {
                self.unused_from += 1;
                self.unused_from - 1
            })
        })
    }
}

impl Direct {
    /// Makes the first ring and checks, on a socket pair, that this kernel does everything
    /// the sockets need (sparse file tables, multishot poll, cancel by fixed file, ...).
    pub fn new() -> io::Result<Direct> {
        let slots_per_ring = nofile_soft().min(u64::from(SLOTS_PER_RING_MAX)) as u32;
        // SAFETY: eventfd(2) with constant flags; the result is checked.
        let notify = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if notify < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut direct = Direct {
            rings: Vec::new(),
            slots_per_ring,
            notify,
            staged: Reaped::default(),
            shutting_down: HashMap::new(),
            with_room: 0,
            headers: Vec::new(),
        };
        direct.rings.push(Ring::new(slots_per_ring, notify)?);
        direct.self_test()?;
        Ok(direct)
    }

    /// The eventfd the rings signal.
    pub fn notify_fd(&self) -> RawFd {
        self.notify
    }

    /// The most sockets this thread can hold.
    pub fn capacity(&self) -> u64 {
        RINGS_MAX as u64 * u64::from(self.slots_per_ring)
    }

    /// Moves `fd` into a free slot (making a ring if every table is full), closes `fd`, and
    /// arms the socket's poll under `token`. On error `fd` is closed too.
    pub fn adopt(&mut self, fd: RawFd, token: u64) -> io::Result<Socket> {
        let placed = self.take_slot().and_then(|(ring, slot)| {
            let table = &mut self.rings[ring];
            match table.uring.submitter().register_files_update(slot, &[fd]) {
                Ok(1) => Ok((ring, slot)),
                outcome => {
                    table.free.push(slot);
                    Err(outcome.err().unwrap_or_else(|| {
                        io::Error::other("the ring's file table took no socket")
                    }))
                }
            }
        });
        // The table holds its own reference now (or the socket is being dropped).
        epoll::close(fd);
        let (ring, slot) = placed?;
        let socket = Socket((ring as u32) << SLOT_BITS | slot);
        self.rearm(socket, token);
        Ok(socket)
    }

    fn take_slot(&mut self) -> io::Result<(usize, u32)> {
        let count = self.rings.len();
        for i in (self.with_room..count).chain(0..self.with_room) {
            if let Some(slot) = self.rings[i].take_slot(self.slots_per_ring) {
                self.with_room = i;
                return Ok((i, slot));
            }
        }
        if count == RINGS_MAX {
            return Err(io::Error::other(format!(
                "all {RINGS_MAX} io_uring file tables of this thread are full"
            )));
        }
        let mut ring = Ring::new(self.slots_per_ring, self.notify)?;
        let slot = ring
            .take_slot(self.slots_per_ring)
            .expect("a new ring has room");
        self.rings.push(ring);
        self.with_room = count;
        Ok((count, slot))
    }

    /// Arms (again) the multishot poll of `socket` under `token`.
    pub fn rearm(&mut self, socket: Socket, token: u64) {
        let (ring, slot) = unpack(socket);
        let poll = opcode::PollAdd::new(Fixed(slot), POLL_MASK)
            .multi(true)
            .build()
            .user_data(token);
        self.submit_detached(ring, poll);
    }

    /// Moves the completions the rings hold into `out`: poll events as `(bits, token)`, with
    /// [`REARM`] where the poll ended. `notified`: the eventfd fired, so the rings are read.
    ///
    /// Hot path: reads the completion queues in place, no allocation once `out` has grown.
    pub fn reap(&mut self, out: &mut Vec<(u32, u64)>, notified: bool) {
        out.append(&mut self.staged.events);
        self.settle_shutdowns();
        if !notified {
            return;
        }
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into `count` from the eventfd we own (clears its counter);
        // EAGAIN (already clear) needs no handling.
        unsafe { libc::read(self.notify, (&mut count as *mut u64).cast(), 8) };
        for ring in &mut self.rings {
            loop {
                for cqe in ring.uring.completion() {
                    classify(&cqe, &mut self.staged);
                }
                out.append(&mut self.staged.events);
                // The kernel keeps what did not fit; an enter moves it into the queue.
                if !ring.uring.submission().cq_overflow() {
                    break;
                }
                let _ = ring.uring.submit();
            }
        }
        self.settle_shutdowns();
    }

    /// Frees the slots of closed sockets whose shutdown has now completed.
    fn settle_shutdowns(&mut self) {
        for socket in std::mem::take(&mut self.staged.shutdowns) {
            if self.shutting_down.remove(&socket) == Some(true) {
                let (ring, slot) = unpack(Socket(socket));
                self.rings[ring].free.push(slot);
            }
        }
    }

    /// Reads into `buf` now: `WouldBlock` when the socket holds nothing.
    pub fn read(&mut self, socket: Socket, buf: &mut [u8]) -> io::Result<usize> {
        let (ring, slot) = unpack(socket);
        let len = buf.len().min(u32::MAX as usize) as u32;
        let recv = opcode::Recv::new(Fixed(slot), buf.as_mut_ptr(), len)
            .flags(libc::MSG_DONTWAIT)
            .build();
        // SAFETY: `buf` outlives `run`, which returns only once the receive completed.
        outcome(unsafe { self.run(ring, &[recv]) })
    }

    /// Writes what the socket takes of `data` now: `WouldBlock` when it takes nothing.
    pub fn write(&mut self, socket: Socket, data: &[u8]) -> io::Result<usize> {
        let (ring, slot) = unpack(socket);
        let len = data.len().min(u32::MAX as usize) as u32;
        let send = opcode::Send::new(Fixed(slot), data.as_ptr(), len)
            .flags(SEND_FLAGS)
            .build();
        // SAFETY: `data` outlives `run`, which returns only once the send completed.
        outcome(unsafe { self.run(ring, &[send]) })
    }

    /// Writes what the socket takes of `bufs`, in order: `WouldBlock` when it takes nothing.
    pub fn write_vectored(&mut self, socket: Socket, bufs: &[libc::iovec]) -> io::Result<usize> {
        let (ring, slot) = unpack(socket);
        // SAFETY: a zeroed msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr().cast_mut();
        msg.msg_iovlen = bufs.len() as _;
        let send = opcode::SendMsg::new(Fixed(slot), &msg)
            .flags(SEND_FLAGS as u32)
            .build();
        // SAFETY: `msg` and the buffers it points to outlive `run`, which returns only once
        // the send completed.
        outcome(unsafe { self.run(ring, &[send]) })
    }

    /// Shrinks the batch buffers to `keep` entries' capacity (or what they hold). The
    /// headers and results of the last batch mean nothing once it returned: they go.
    pub fn trim_scratch(&mut self, keep: usize) {
        self.headers.clear();
        self.headers.shrink_to(keep);
        self.staged.batch.clear();
        self.staged.batch.shrink_to(keep);
        self.staged.events.shrink_to(keep);
    }

    /// The largest capacity among the batch buffers (entries), for tests.
    #[cfg(test)]
    pub(crate) fn scratch_capacity(&self) -> usize {
        let staged = self
            .staged
            .batch
            .capacity()
            .max(self.staged.events.capacity());
        self.headers.capacity().max(staged)
    }

    /// Writes what each socket takes of its iovecs (`sends[i]`: a socket and its range of
    /// `iovecs`), all submitted together: one `io_uring_enter` per ring for up to 64 sends
    /// (its submission queue), where [`Direct::write_vectored`] takes one each.
    /// `results[i]` is the i-th send's outcome. A socket appears at most once, since the
    /// kernel runs the sends of one submission in turn and a short first write must not be
    /// followed by the next. Hot path: allocates nothing once the scratch buffers have
    /// grown.
    pub fn write_vectored_batch(
        &mut self,
        sends: &[(Socket, std::ops::Range<usize>)],
        iovecs: &[libc::iovec],
        results: &mut Vec<io::Result<usize>>,
    ) {
        self.headers.clear();
        self.headers.extend(sends.iter().map(|(_, range)| {
            // SAFETY: a zeroed msghdr is valid (no name, no control data).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            let bufs = &iovecs[range.clone()];
            header.msg_iov = bufs.as_ptr().cast_mut();
            header.msg_iovlen = bufs.len() as _;
            header
        }));
        self.staged.batch.clear();
        self.staged.batch.resize(sends.len(), 0);
        for (ring, Ring { uring, .. }) in self.rings.iter_mut().enumerate() {
            let mut pushed = 0;
            for (i, (socket, _)) in sends.iter().enumerate() {
                let (on, slot) = unpack(*socket);
                if on != ring {
                    continue;
                }
                let send = opcode::SendMsg::new(Fixed(slot), &self.headers[i])
                    .flags(SEND_FLAGS as u32)
                    .build()
                    .user_data(BATCH_TAG | i as u64);
                // SAFETY: the header and the iovecs it points to outlive this call, which
                // returns only once every send of the batch completed.
                while unsafe { uring.submission().push(&send) }.is_err() {
                    submit_or_reap(uring, &mut self.staged, 0);
                }
                pushed += 1;
            }
            if pushed == 0 {
                continue;
            }
            let mut want = 0;
            loop {
                submit_or_reap(uring, &mut self.staged, want);
                for cqe in uring.completion() {
                    classify(&cqe, &mut self.staged);
                }
                if self.staged.batch_done == pushed {
                    self.staged.batch_done = 0;
                    break;
                }
                // Not all done inline (one went to a kernel worker): wait for it.
                want = 1;
            }
        }
        results.clear();
        results.extend(self.staged.batch.iter().map(|&result| outcome(result)));
    }

    /// Half-closes the socket. The kernel runs a shutdown on a worker thread, so this
    /// submits it and does not wait (the socket's slot is held until it completes).
    pub fn shutdown_write(&mut self, socket: Socket) {
        let (ring, slot) = unpack(socket);
        if self.shutting_down.insert(socket.0, false).is_some() {
            return;
        }
        let shutdown = opcode::Shutdown::new(Fixed(slot), libc::SHUT_WR)
            .build()
            .user_data(SHUTDOWN_TAG | u64::from(socket.0));
        self.submit_detached(ring, shutdown);
    }

    /// Cancels the socket's poll (which holds the socket open), found by its `token`, and
    /// empties its slot, in one submission. The slot is free at once, or once a shutdown in
    /// flight has completed.
    ///
    /// By token, not by file: the kernel finds a poll by its user data in a hash table, but
    /// by file only by walking every poll of the ring. Measured at 100,000 connections (two
    /// loadgen workers closing 50,000 each): 43 s by file, about 0.9 ms a close; 3 s by token.
    pub fn close(&mut self, socket: Socket, token: u64) {
        let (ring, slot) = unpack(socket);
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::user_data(token)).build();
        let close = opcode::Close::new(Fixed(slot)).build();
        // SAFETY: neither entry points to memory.
        let result = unsafe { self.run(ring, &[cancel, close]) };
        if result < 0 {
            tracing::warn!(
                "closing a direct socket failed: {}",
                io::Error::from_raw_os_error(-result)
            );
        }
        match self.shutting_down.get_mut(&socket.0) {
            Some(closed) => *closed = true,
            None => self.rings[ring].free.push(slot),
        }
        self.settle_shutdowns();
    }

    /// Gives `socket` up as an fd in this thread's fd table (close-on-exec), and stops
    /// watching it: its poll (found by `token`) is cancelled and its slot emptied, in the
    /// same submission. On error the socket is as it was.
    pub fn release(&mut self, socket: Socket, token: u64) -> io::Result<RawFd> {
        let (ring, slot) = unpack(socket);
        let install = opcode::FixedFdInstall::new(Fixed(slot), 0).build();
        // SAFETY: the entry points to no memory.
        let fd = unsafe { self.run(ring, &[install]) };
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(-fd));
        }
        self.close(socket, token);
        Ok(fd)
    }

    /// Submits `entries` on `ring` and waits for all of them; returns the last one's result.
    /// Other completions met meanwhile are staged for the next [`Direct::reap`].
    ///
    /// # Safety
    /// Every buffer an entry points to must stay valid until this returns.
    unsafe fn run(&mut self, ring: usize, entries: &[squeue::Entry]) -> i32 {
        let uring = &mut self.rings[ring].uring;
        // Every earlier `run` returned only with all its operations counted.
        debug_assert_eq!(self.staged.ops_done, 0);
        for entry in entries {
            let entry = entry.clone().user_data(OP_TOKEN);
            // SAFETY: the caller keeps the entry's buffers alive until we return, and we
            // return only after its completion.
            while unsafe { uring.submission().push(&entry) }.is_err() {
                submit_or_reap(uring, &mut self.staged, 0);
            }
        }
        let mut want = 0;
        loop {
            submit_or_reap(uring, &mut self.staged, want);
            for cqe in uring.completion() {
                classify(&cqe, &mut self.staged);
            }
            if self.staged.ops_done == entries.len() {
                self.staged.ops_done = 0;
                return self.staged.op_result;
            }
            // Not done inline (it went to a kernel worker): wait for it.
            want = 1;
        }
    }

    /// Submits one entry whose completion is not waited for (a poll, a shutdown).
    fn submit_detached(&mut self, ring: usize, entry: squeue::Entry) {
        let uring = &mut self.rings[ring].uring;
        // SAFETY: polls and shutdowns point to no memory.
        while unsafe { uring.submission().push(&entry) }.is_err() {
            submit_or_reap(uring, &mut self.staged, 0);
        }
        submit_or_reap(uring, &mut self.staged, 0);
    }

    /// On a socket pair: adopt, see it readable, read, write, half-close, close.
    fn self_test(&mut self) -> io::Result<()> {
        let mut fds = [0; 2];
        let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: `fds` has room for the two fds socketpair writes.
        if unsafe { libc::socketpair(libc::AF_UNIX, flags, 0, fds.as_mut_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let [ours, theirs] = fds;
        let result = self.exercise(ours, theirs);
        epoll::close(theirs);
        result.map_err(|e| io::Error::new(e.kind(), format!("io_uring self-test: {e}")))
    }

    fn exercise(&mut self, ours: RawFd, theirs: RawFd) -> io::Result<()> {
        const TOKEN: u64 = 7;
        let socket = self.adopt(ours, TOKEN)?;
        epoll::write(theirs, b"ping")?;
        let mut events = Vec::new();
        for _ in 0..1000 {
            self.reap(&mut events, true);
            if events
                .iter()
                .any(|&(bits, t)| t == TOKEN && bits & super::READABLE != 0)
            {
                break;
            }
            let _ = self.rings[0].uring.submit_and_wait(1);
        }
        if !events.iter().any(|&(_, t)| t == TOKEN) {
            return Err(io::Error::other("no readiness event from a multishot poll"));
        }
        let mut buf = [0u8; 8];
        let n = self.read(socket, &mut buf)?;
        if &buf[..n] != b"ping" {
            return Err(io::Error::other("a receive returned the wrong bytes"));
        }
        if self.write(socket, b"pong")? != 4 {
            return Err(io::Error::other("a send was short"));
        }
        let iov = [libc::iovec {
            iov_base: b"!".as_ptr().cast_mut().cast(),
            iov_len: 1,
        }];
        self.write_vectored(socket, &iov)?;
        self.close(socket, TOKEN);
        // The peer sees both writes, then end of stream: the socket really closed.
        let mut got = [0u8; 8];
        let n = epoll::read(theirs, &mut got)?;
        if &got[..n] != b"pong!" || epoll::read(theirs, &mut got)? != 0 {
            return Err(io::Error::other("closing a direct socket did not close it"));
        }
        Ok(())
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // The rings close their file tables as they drop.
        self.rings.clear();
        epoll::close(self.notify);
    }
}

/// Submits what is queued on `uring`, waiting for `want` completions. A completion queue too
/// full to submit into (EBUSY) is reaped into `staged` first.
fn submit_or_reap(uring: &mut IoUring, staged: &mut Reaped, want: usize) {
    loop {
        match uring.submit_and_wait(want) {
            Ok(_) => return,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                for cqe in uring.completion() {
                    classify(&cqe, staged);
                }
            }
            Err(e) => {
                tracing::error!("io_uring submit failed: {e}");
                return;
            }
        }
    }
}

/// Sorts a completion: an operation's own (counted for [`Direct::run`]), a finished
/// shutdown, or a poll event (cancelled ones are dropped).
fn classify(cqe: &cqueue::Entry, staged: &mut Reaped) {
    let token = cqe.user_data();
    let result = cqe.result();
    if token == OP_TOKEN {
        staged.ops_done += 1;
        staged.op_result = result;
        return;
    }
    if token & TAG_MASK == SHUTDOWN_TAG {
        staged.shutdowns.push(token as u32);
        return;
    }
    if token & TAG_MASK == BATCH_TAG {
        if let Some(slot) = staged.batch.get_mut(token as u32 as usize) {
            *slot = result;
            staged.batch_done += 1;
        }
        return;
    }
    if token > SOCKET_TOKEN_MAX || result == -libc::ECANCELED {
        return;
    }
    let mut bits = if result >= 0 { result as u32 } else { BROKEN };
    if !cqueue::more(cqe.flags()) {
        bits |= REARM;
    }
    staged.events.push((bits, token));
}

fn unpack(socket: Socket) -> (usize, u32) {
    (
        (socket.0 >> SLOT_BITS) as usize,
        socket.0 & ((1 << SLOT_BITS) - 1),
    )
}

fn outcome(result: i32) -> io::Result<usize> {
    if result >= 0 {
        Ok(result as usize)
    } else {
        Err(io::Error::from_raw_os_error(-result))
    }
}

/// This process's soft RLIMIT_NOFILE: the size of one fd table, and of one ring's table.
pub fn nofile_soft() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}
