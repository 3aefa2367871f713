//! Cross-reactor mailboxes: one bounded SPSC ring per ordered reactor pair, and one
//! eventfd doorbell per reactor rung only when it may be asleep.
//!
//! A full ring is backpressure, never growth without bound: the producer keeps what did
//! not fit in a small per-target backlog and stops reading client sockets until the
//! backlog drains (see `reactor::event_loop`).

use std::{
    collections::VecDeque,
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicBool, Ordering},
};

use rtrb::{Consumer, Producer, RingBuffer};

/// Envelopes a reactor can have waiting from all its peers together (≈ 4 MiB of
/// envelopes): each pair's ring gets this divided by the reactor count.
pub const INBOUND_PER_REACTOR: usize = 64 * 1024;
/// Bounds on one ring's capacity, whatever the reactor count.
pub const RING_CAPACITY_RANGE: (usize, usize) = (256, 8192);
/// The most envelopes drained from one ring per loop iteration, so one busy peer
/// cannot starve the others or the reactor's own sockets.
pub const DRAIN_BATCH_MAX: usize = 1024;

/// The capacity of each ring for `reactors` reactors.
pub fn ring_capacity(reactors: usize) -> usize {
    (INBOUND_PER_REACTOR / reactors.max(1)).clamp(RING_CAPACITY_RANGE.0, RING_CAPACITY_RANGE.1)
}

/// A reactor's wake-up: an eventfd, created before any reactor unshares its fd table so the
/// same number is valid in every table, plus a flag so a batch rings it at most once.
#[derive(Debug)]
pub struct Doorbell {
    fd: RawFd,
    notified: AtomicBool,
}

impl Doorbell {
    /// Creates a non-blocking eventfd.
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            fd,
            notified: AtomicBool::new(false),
        })
    }

    /// The eventfd, for the owner's readiness set.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Wakes the owner unless a wake-up is already pending.
    pub fn ring(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd. A failure can only be
            // EAGAIN at counter overflow, which still leaves the owner woken.
            unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
        }
    }

    /// Called by the owner when woken, before it drains its rings: later pushes ring again.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe { libc::read(self.fd, (&mut count as *mut u64).cast(), 8) };
        // Acquire pairs with the producer's release in `ring`, so its pushes are visible.
        self.notified.swap(false, Ordering::AcqRel);
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        // SAFETY: we own this fd; reactors hold their own copies in their own tables.
        unsafe { libc::close(self.fd) };
    }
}

/// Builds every ring: `producers[from][to]` and `consumers[to][from]` (`None` on the diagonal).
#[allow(clippy::type_complexity)]
pub fn rings<T>(reactors: usize) -> (Vec<Vec<Option<Producer<T>>>>, Vec<Vec<Option<Consumer<T>>>>) {
    let capacity = ring_capacity(reactors);
    let mut producers: Vec<Vec<Option<Producer<T>>>> = (0..reactors).map(|_| Vec::new()).collect();
    let mut consumers: Vec<Vec<Option<Consumer<T>>>> = (0..reactors)
        .map(|_| (0..reactors).map(|_| None).collect())
        .collect();
    for (from, row) in producers.iter_mut().enumerate() {
        for (to, column) in consumers.iter_mut().enumerate() {
            if from == to {
                row.push(None);
            } else {
                let (producer, consumer) = RingBuffer::new(capacity);
                row.push(Some(producer));
                column[from] = Some(consumer);
            }
        }
    }
    (producers, consumers)
}

/// One reactor's sending side: a ring to each peer, a backlog for what did not fit, and
/// which peers need their doorbell rung at the end of this batch.
pub struct Outbox<T> {
    producers: Vec<Option<Producer<T>>>,
    backlog: Vec<VecDeque<T>>,
    to_ring: Vec<bool>,
}

impl<T> Outbox<T> {
    /// Wraps this reactor's row of producers.
    pub fn new(producers: Vec<Option<Producer<T>>>) -> Self {
        let n = producers.len();
        Outbox {
            producers,
            backlog: (0..n).map(|_| VecDeque::new()).collect(),
            to_ring: vec![false; n],
        }
    }

    /// Sends `item` to reactor `to`; when its ring is full the item waits in the backlog.
    pub fn push(&mut self, to: usize, item: T) {
        self.to_ring[to] = true;
        if !self.backlog[to].is_empty() {
            self.backlog[to].push_back(item);
            return;
        }
        let Some(producer) = self.producers[to].as_mut() else {
            debug_assert!(false, "a reactor never mails itself");
            return;
        };
        if let Err(rtrb::PushError::Full(item)) = producer.push(item) {
            self.backlog[to].push_back(item);
        }
    }

    /// Moves backlog into rings as room allows; true when some backlog remains.
    pub fn retry_backlog(&mut self) -> bool {
        let mut remaining = false;
        for (to, backlog) in self.backlog.iter_mut().enumerate() {
            if backlog.is_empty() {
                continue;
            }
            if let Some(producer) = self.producers[to].as_mut() {
                while let Some(item) = backlog.pop_front() {
                    if let Err(rtrb::PushError::Full(item)) = producer.push(item) {
                        backlog.push_front(item);
                        break;
                    }
                    self.to_ring[to] = true;
                }
            }
            remaining |= !backlog.is_empty();
        }
        remaining
    }

    /// Whether any backlog is waiting (the reactor then pauses reading its sockets).
    pub fn is_backlogged(&self) -> bool {
        self.backlog.iter().any(|b| !b.is_empty())
    }

    /// Rings the doorbell of every peer sent to since the last call: one wake per batch.
    pub fn ring_doorbells(&mut self, doorbells: &[Doorbell]) {
        for (to, flag) in self.to_ring.iter_mut().enumerate() {
            if std::mem::take(flag) {
                doorbells[to].ring();
            }
        }
    }
}

/// Drains up to [`DRAIN_BATCH_MAX`] items from each ring into `handle`; returns how many.
pub fn drain<T>(consumers: &mut [Option<Consumer<T>>], mut handle: impl FnMut(T)) -> usize {
    let mut handled = 0;
    for consumer in consumers.iter_mut().flatten() {
        for _ in 0..DRAIN_BATCH_MAX {
            match consumer.pop() {
                Ok(item) => {
                    handle(item);
                    handled += 1;
                }
                Err(_) => break,
            }
        }
    }
    handled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_rings_backlog_and_deliver_in_order() {
        let (mut producers, mut consumers) = rings::<u32>(2);
        let mut outbox = Outbox::new(std::mem::take(&mut producers[0]));
        let capacity = ring_capacity(2) as u32;
        for i in 0..capacity + 10 {
            outbox.push(1, i);
        }
        assert!(outbox.is_backlogged());
        let mut got = Vec::new();
        while got.len() < (capacity + 10) as usize {
            drain(&mut consumers[1], |i| got.push(i));
            outbox.retry_backlog();
        }
        assert!(!outbox.is_backlogged());
        assert_eq!(got, (0..capacity + 10).collect::<Vec<_>>());
    }

    #[test]
    fn doorbell_rings_once_per_batch() {
        let bell = Doorbell::new().unwrap();
        bell.ring();
        bell.ring();
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64.
        let n = unsafe { libc::read(bell.fd(), (&mut count as *mut u64).cast(), 8) };
        assert_eq!((n, count), (8, 1));
        bell.clear();
        bell.ring();
        bell.clear();
    }

    #[test]
    fn capacity_shrinks_with_reactor_count_within_bounds() {
        assert_eq!(ring_capacity(2), 8192);
        assert_eq!(ring_capacity(64), 1024);
        assert_eq!(ring_capacity(1000), 256);
    }
}
