//! io_uring direct descriptors hold more sockets than the fd table allows, keep reporting
//! readiness when a completion queue overflows, and refuse cleanly when every ring is full.
//!
//! Its own test binary: it lowers this process's RLIMIT_NOFILE to 256, so that the fd
//! table, and each ring's file table, holds 256.

use std::{os::fd::RawFd, sync::Mutex, time::Instant};

use engine::sockets::{direct::RINGS_MAX, Placement, Socket, Sockets, READABLE, REARM};

const NOFILE: u64 = 256;
/// The tests change process-wide state (the limit) and count open fds: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn lower_fd_limit() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, NOFILE, hard)
        .unwrap();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn socket_pair() -> [RawFd; 2] {
    let mut fds = [0; 2];
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` has room for the two fds socketpair writes.
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, flags, 0, fds.as_mut_ptr()) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );
    fds
}

/// Adopts both ends of `pairs` socket pairs: pair `i` is tokens `2i` (sends) and `2i + 1`.
fn adopt_pairs(sockets: &mut Sockets, pairs: usize) -> Vec<(Socket, Socket)> {
    (0..pairs)
        .map(|i| {
            let [a, b] = socket_pair();
            let a = sockets.adopt(a, 2 * i as u64).unwrap();
            let b = sockets.adopt(b, 2 * i as u64 + 1).unwrap();
            (a, b)
        })
        .collect()
}

/// Reaps events until the receiving ends (odd tokens: `receivers[token / 2]`) have all
/// been seen readable, re-arming any socket that asks. Returns how many asked.
fn await_all_readable(
    sockets: &mut Sockets,
    receivers: &[Socket],
    sender_of: impl Fn(usize) -> Option<Socket>,
) -> usize {
    let mut seen = vec![false; receivers.len()];
    let mut left = receivers.len();
    let mut rearmed = 0;
    let mut events = Vec::new();
    let started = Instant::now();
    while left > 0 {
        assert!(
            started.elapsed().as_secs() < 20,
            "{left} sockets never reported readable"
        );
        events.clear();
        sockets.poll_now(&mut events);
        for &(bits, token) in &events {
            let pair = (token / 2) as usize;
            let receiving = token % 2 == 1;
            if bits & REARM != 0 {
                rearmed += 1;
                let socket = if receiving {
                    Some(receivers[pair])
                } else {
                    sender_of(pair)
                };
                sockets.rearm(socket.expect("only adopted sockets report"), token);
            }
            if receiving && bits & READABLE != 0 && !seen[pair] {
                seen[pair] = true;
                left -= 1;
            }
        }
        if events.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    rearmed
}

#[test]
fn one_thread_holds_many_times_its_fd_table_in_direct_sockets() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    lower_fd_limit();
    let fds_before = open_fds();
    let (mut sockets, fallback) = Sockets::new(Placement::Direct).unwrap();
    assert!(fallback.is_none() && sockets.is_direct());
    assert_eq!(sockets.capacity(), RINGS_MAX as u64 * NOFILE);

    // 6,000 sockets under a 256-fd limit: 24 rings.
    let pairs = adopt_pairs(&mut sockets, 3_000);
    let rings = open_fds() - fds_before - 2; // less the epoll fd and the eventfd
    assert!(
        (24..=25).contains(&rings),
        "{rings} fds beyond the sockets' set"
    );

    for &(a, _) in &pairs {
        assert_eq!(sockets.write(a, b"x").unwrap(), 1);
    }
    let receivers: Vec<Socket> = pairs.iter().map(|&(_, b)| b).collect();
    await_all_readable(&mut sockets, &receivers, |i| Some(pairs[i].0));
    let mut byte = [0u8; 4];
    for &(_, b) in &pairs {
        assert_eq!(sockets.read(b, &mut byte).unwrap(), 1);
        assert_eq!(&byte[..1], b"x");
    }

    // Closing one end really closes it: the other reads end of stream.
    for (i, &(a, b)) in pairs.iter().enumerate() {
        sockets.close(a, 2 * i as u64);
        let mut read = sockets.read(b, &mut byte);
        while matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            read = sockets.read(b, &mut byte);
        }
        assert_eq!(read.unwrap(), 0);
        sockets.close(b, 2 * i as u64 + 1);
    }
    drop(sockets);
    assert_eq!(open_fds(), fds_before, "every ring and fd is gone");
}

#[test]
fn a_full_completion_queue_asks_for_rearm_and_readiness_goes_on() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    lower_fd_limit();
    let (mut sockets, _) = Sockets::new(Placement::Direct).unwrap();
    // 200 receiving ends in one ring; the sending ends stay plain fds, so their writes post
    // completions that nothing reaps: 25 wake-ups each (5,000) overflow the ring's 4,096.
    let (senders, receivers): (Vec<RawFd>, Vec<Socket>) = (0..200)
        .map(|i| {
            let [a, b] = socket_pair();
            (a, sockets.adopt(b, 2 * i as u64 + 1).unwrap())
        })
        .unzip();
    let write = |fd: RawFd| {
        // SAFETY: one byte from a static buffer to a socket we own.
        assert_eq!(unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) }, 1);
    };
    for _ in 0..25 {
        senders.iter().copied().for_each(write);
    }
    let rearmed = await_all_readable(&mut sockets, &receivers, |_| None);
    assert!(rearmed > 0, "the overflow should have ended some polls");
    // Drain, then one more byte each: every socket still reports readiness.
    let mut buf = [0u8; 64];
    for &b in &receivers {
        assert_eq!(sockets.read(b, &mut buf).unwrap(), 25);
    }
    let mut events = Vec::new();
    sockets.poll_now(&mut events);
    senders.iter().copied().for_each(write);
    await_all_readable(&mut sockets, &receivers, |_| None);
    for fd in senders {
        // SAFETY: the sending ends are ours.
        unsafe { libc::close(fd) };
    }
}

#[test]
fn past_every_ring_an_adoption_is_refused_and_its_fd_closed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    lower_fd_limit();
    let (mut sockets, _) = Sockets::new(Placement::Direct).unwrap();
    let capacity = sockets.capacity() as usize;
    let mut held = Vec::with_capacity(capacity);
    while held.len() < capacity {
        let [a, b] = socket_pair();
        held.push(sockets.adopt(a, held.len() as u64).unwrap());
        held.push(sockets.adopt(b, held.len() as u64).unwrap());
    }
    let fds_full = open_fds();
    let [a, b] = socket_pair();
    let refused = sockets.adopt(a, 0).unwrap_err();
    assert!(refused.to_string().contains("are full"), "{refused}");
    // SAFETY: `b` is ours; `a` was consumed (closed) by the refused adoption.
    unsafe { libc::close(b) };
    assert_eq!(open_fds(), fds_full, "the refused socket's fd was closed");
    // A slot freed by a close is taken again.
    let last = held.len() - 1;
    sockets.close(held.pop().unwrap(), last as u64);
    let [a, b] = socket_pair();
    held.push(sockets.adopt(a, 1).unwrap());
    // SAFETY: as above.
    unsafe { libc::close(b) };
}

#[test]
fn a_closed_sockets_slot_waits_for_its_shutdown_so_the_next_socket_is_not_shut() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    lower_fd_limit();
    let (mut sockets, _) = Sockets::new(Placement::Direct).unwrap();
    let mut buf = [0u8; 8];
    for round in 0..300u64 {
        // A close handshake's end: half-close (run by a kernel worker), then close at once.
        let [a, a_peer] = socket_pair();
        let a = sockets.adopt(a, 2 * round).unwrap();
        sockets.shutdown_write(a);
        sockets.close(a, 2 * round);
        // The next socket, quite possibly in the same slot, must still send.
        let [b, b_peer] = socket_pair();
        let b = sockets.adopt(b, 2 * round + 1).unwrap();
        std::thread::yield_now();
        assert_eq!(sockets.write(b, b"ok").unwrap(), 2, "round {round}");
        // SAFETY: reading into a local buffer from a socket we own.
        let n = unsafe { libc::read(b_peer, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, 2, "round {round}: the new socket's bytes arrive");
        sockets.close(b, 2 * round + 1);
        let mut events = Vec::new();
        sockets.poll_now(&mut events);
        for fd in [a_peer, b_peer] {
            // SAFETY: the peers are ours.
            unsafe { libc::close(fd) };
        }
    }
}
