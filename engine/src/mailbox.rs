//! Cross-reactor mailboxes: one bounded SPSC ring of envelope batches per ordered reactor
//! pair, and one eventfd doorbell per reactor rung only when it may be asleep.
//!
//! A reactor collects what it mails each peer during one batch of work into a `Vec` and
//! pushes that whole batch through the ring when the batch ends (or when it reaches
//! [`BATCH_ENVELOPES_MAX`]): one ring slot, one doorbell and one consumer wake-up carry
//! many envelopes. A ring slot is a `Vec` header (24 bytes), so the rings of even a few
//! thousand reactor pairs reserve little memory; envelopes live only while in flight.
//!
//! A full ring is backpressure, never growth without bound: the producer keeps sealed
//! batches that did not fit in a per-target backlog, and pauses each connection whose input
//! adds to a backlog until the backlogs drain. Past [`BACKLOG_BATCHES_MAX`] it stops
//! reading every socket (see `reactor::core::Reactor::read_from`).

use std::{collections::VecDeque, mem};

use rtrb::{Consumer, Producer, RingBuffer};

/// A batch of envelopes for one peer, as it travels through a ring.
pub type Batch<T> = Vec<T>;
/// The sending end of one ring.
pub type BatchProducer<T> = Producer<Batch<T>>;
/// The receiving end of one ring.
pub type BatchConsumer<T> = Consumer<Batch<T>>;

/// Envelopes in one batch before it is sealed and sent, even mid-batch.
pub const BATCH_ENVELOPES_MAX: usize = 256;
/// Capacity a new batch starts with: most batches are small, a few grow by doubling.
const BATCH_ENVELOPES_INITIAL: usize = 16;
/// Batches a reactor can have waiting from all its peers together: with full batches,
/// 256 × 256 envelopes × 64 B = 4 MiB per reactor at most; each pair's ring gets this
/// divided by the peer count.
pub const INBOUND_BATCHES_PER_REACTOR: usize = 256;
/// Sealed batches a reactor may hold back for all its peers together before it stops reading
/// every socket, not only the ones that produced them: with full batches, 64 × 256
/// envelopes, about 1 MiB.
pub const BACKLOG_BATCHES_MAX: usize = 64;
/// Bounds on one ring's capacity in batches, whatever the reactor count.
pub const RING_CAPACITY_RANGE: (usize, usize) = (4, 64);
/// Envelopes drained from one ring per loop iteration before the next ring gets a turn
/// (whole batches, so up to one batch more), so one busy peer cannot starve the others
/// or the reactor's own sockets.
pub const DRAIN_ENVELOPES_MAX: usize = 1024;

/// The capacity in batches of each ring for `reactors` reactors.
pub fn ring_capacity(reactors: usize) -> usize {
    let peers = reactors.saturating_sub(1).max(1);
    (INBOUND_BATCHES_PER_REACTOR / peers).clamp(RING_CAPACITY_RANGE.0, RING_CAPACITY_RANGE.1)
}

pub use uring_sockets::Doorbell;

/// Builds every ring: `producers[from][to]` and `consumers[to][from]` (`None` on the diagonal).
#[allow(clippy::type_complexity)]
pub fn rings<T>(
    reactors: usize,
) -> (
    Vec<Vec<Option<BatchProducer<T>>>>,
    Vec<Vec<Option<BatchConsumer<T>>>>,
) {
    let capacity = ring_capacity(reactors);
    let mut producers: Vec<Vec<Option<BatchProducer<T>>>> =
        (0..reactors).map(|_| Vec::new()).collect();
    let mut consumers: Vec<Vec<Option<BatchConsumer<T>>>> = (0..reactors)
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

/// One reactor's sending side: per peer, the batch being filled, the ring, a backlog of
/// sealed batches that did not fit, and whether the peer's doorbell needs ringing.
pub struct Outbox<T> {
    producers: Vec<Option<BatchProducer<T>>>,
    filling: Vec<Batch<T>>,
    backlog: Vec<VecDeque<Batch<T>>>,
    backlog_batches: usize,
    to_ring: Vec<bool>,
    pressed: u64,
}

impl<T> Outbox<T> {
    /// Wraps this reactor's row of producers.
    pub fn new(producers: Vec<Option<BatchProducer<T>>>) -> Self {
        let n = producers.len();
        Outbox {
            producers,
            filling: (0..n).map(|_| Vec::new()).collect(),
            backlog: (0..n).map(|_| VecDeque::new()).collect(),
            backlog_batches: 0,
            to_ring: vec![false; n],
            pressed: 0,
        }
    }

    /// Adds `item` to the batch for reactor `to`; a batch that reaches
    /// [`BATCH_ENVELOPES_MAX`] is sent at once.
    ///
    /// Hot path: one allocation per peer per batch (the batch's `Vec`, freed by the
    /// consumer), amortised over every envelope it carries.
    pub fn push(&mut self, to: usize, item: T) {
        debug_assert!(self.producers[to].is_some(), "a reactor never mails itself");
        let batch = &mut self.filling[to];
        if batch.capacity() == 0 {
            batch.reserve_exact(BATCH_ENVELOPES_INITIAL);
        }
        batch.push(item);
        if !self.backlog[to].is_empty() {
            self.pressed += 1;
        }
        if batch.len() >= BATCH_ENVELOPES_MAX {
            self.seal(to);
        }
    }

    /// Sends the batch being filled for `to`, or backlogs it behind earlier ones.
    fn seal(&mut self, to: usize) {
        let batch = mem::take(&mut self.filling[to]);
        if batch.is_empty() {
            return;
        }
        self.to_ring[to] = true;
        let backlog = &mut self.backlog[to];
        let Some(producer) = self.producers[to].as_mut() else {
            return;
        };
        if !backlog.is_empty() {
            backlog.push_back(batch);
        } else if let Err(rtrb::PushError::Full(batch)) = producer.push(batch) {
            backlog.push_back(batch);
        } else {
            return;
        }
        self.backlog_batches += 1;
        self.pressed += 1;
    }

    /// Ends a batch of work: sends every partly filled batch and rings the doorbell of every
    /// peer sent to since the last call, so each peer is woken at most once per batch.
    pub fn flush(&mut self, doorbells: &[Doorbell]) {
        for to in 0..self.filling.len() {
            self.seal(to);
        }
        for (to, flag) in self.to_ring.iter_mut().enumerate() {
            if mem::take(flag) {
                doorbells[to].ring();
            }
        }
    }

    /// Moves backlog into rings as room allows; true when some backlog remains.
    /// Call [`Outbox::flush`] afterwards to wake the peers.
    pub fn retry_backlog(&mut self) -> bool {
        let mut remaining = false;
        for (to, backlog) in self.backlog.iter_mut().enumerate() {
            if backlog.is_empty() {
                continue;
            }
            if let Some(producer) = self.producers[to].as_mut() {
                while let Some(batch) = backlog.pop_front() {
                    if let Err(rtrb::PushError::Full(batch)) = producer.push(batch) {
                        backlog.push_front(batch);
                        break;
                    }
                    self.backlog_batches -= 1;
                    self.to_ring[to] = true;
                }
            }
            remaining |= !backlog.is_empty();
        }
        remaining
    }

    /// Whether sealed batches wait for ring room (the reactor then pauses reading its
    /// sockets).
    pub fn is_backlogged(&self) -> bool {
        self.backlog_batches > 0
    }

    /// Whether the backlogs reached [`BACKLOG_BATCHES_MAX`]: then no socket is read at all.
    pub fn is_backlog_full(&self) -> bool {
        self.backlog_batches >= BACKLOG_BATCHES_MAX
    }

    /// A count that grows whenever an envelope goes to a peer with a backlog (or starts
    /// one): compare it before and after handling a connection's input to learn whether
    /// that input met backpressure.
    pub fn pressure(&self) -> u64 {
        self.pressed
    }
}

/// Drains each ring, whole batches at a time, until about [`DRAIN_ENVELOPES_MAX`]
/// envelopes from it were handled.
///
/// Returns the batches the rings still hold: while there are any, the caller must drain
/// again before it sleeps, because the producers rang its doorbell only once for all of
/// them (and a producer whose ring is full waits on this reactor to make room).
pub fn drain<T>(consumers: &mut [Option<BatchConsumer<T>>], mut handle: impl FnMut(T)) -> usize {
    let mut left = 0;
    for consumer in consumers.iter_mut().flatten() {
        let mut from_this_ring = 0;
        while from_this_ring < DRAIN_ENVELOPES_MAX {
            let Ok(batch) = consumer.pop() else {
                break;
            };
            from_this_ring += batch.len();
            batch.into_iter().for_each(&mut handle);
        }
        left += consumer.slots();
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doorbells for a two-reactor test.
    fn bells() -> Vec<Doorbell> {
        vec![Doorbell::new().unwrap(), Doorbell::new().unwrap()]
    }

    #[test]
    fn full_rings_backlog_and_deliver_in_order() {
        let (mut producers, mut consumers) = rings::<u32>(2);
        let mut outbox = Outbox::new(std::mem::take(&mut producers[0]));
        let doorbells = bells();
        let total = ((ring_capacity(2) + 3) * BATCH_ENVELOPES_MAX + 10) as u32;
        for i in 0..total {
            outbox.push(1, i);
        }
        outbox.flush(&doorbells);
        assert!(outbox.is_backlogged());
        let mut got = Vec::new();
        while got.len() < total as usize {
            drain(&mut consumers[1], |i| got.push(i));
            outbox.retry_backlog();
        }
        assert!(!outbox.is_backlogged());
        assert_eq!(drain(&mut consumers[1], |_| {}), 0);
        assert_eq!(got, (0..total).collect::<Vec<_>>());
    }

    #[test]
    fn pressure_counts_envelopes_that_meet_a_backlog_and_the_cap_is_reached() {
        let (mut producers, mut consumers) = rings::<u32>(2);
        let mut outbox = Outbox::new(std::mem::take(&mut producers[0]));
        let doorbells = bells();
        let fits = (ring_capacity(2) * BATCH_ENVELOPES_MAX) as u32;
        for i in 0..fits {
            outbox.push(1, i);
        }
        outbox.flush(&doorbells);
        assert_eq!(outbox.pressure(), 0, "what fits in the ring is no pressure");
        outbox.push(1, fits);
        outbox.flush(&doorbells);
        assert!(outbox.is_backlogged());
        assert_eq!(
            outbox.pressure(),
            1,
            "the batch that starts a backlog counts"
        );
        outbox.push(1, fits + 1);
        assert_eq!(outbox.pressure(), 2, "an envelope behind a backlog counts");
        assert!(!outbox.is_backlog_full());
        for i in 0..(BACKLOG_BATCHES_MAX * BATCH_ENVELOPES_MAX) as u32 {
            outbox.push(1, i);
        }
        assert!(outbox.is_backlog_full());
        drain(&mut consumers[1], |_| {});
        outbox.retry_backlog();
        assert!(
            !outbox.is_backlog_full(),
            "room in the ring lowers the backlog"
        );
    }

    #[test]
    fn a_drain_past_its_cap_says_mail_is_left() {
        let (mut producers, mut consumers) = rings::<usize>(2);
        let mut outbox = Outbox::new(std::mem::take(&mut producers[0]));
        for i in 0..2 * DRAIN_ENVELOPES_MAX {
            outbox.push(1, i);
        }
        outbox.flush(&bells());
        let mut got = 0;
        let left = (2 * DRAIN_ENVELOPES_MAX - DRAIN_ENVELOPES_MAX) / BATCH_ENVELOPES_MAX;
        assert_eq!(drain(&mut consumers[1], |_| got += 1), left, "batches left");
        assert_eq!(got, DRAIN_ENVELOPES_MAX);
        assert_eq!(drain(&mut consumers[1], |_| got += 1), 0);
        assert_eq!(got, 2 * DRAIN_ENVELOPES_MAX);
    }

    #[test]
    fn nothing_travels_until_the_batch_ends() {
        let (mut producers, mut consumers) = rings::<u32>(2);
        let mut outbox = Outbox::new(std::mem::take(&mut producers[0]));
        let doorbells = bells();
        outbox.push(1, 7);
        outbox.push(1, 8);
        let mut got = Vec::new();
        drain(&mut consumers[1], |i| got.push(i));
        assert!(got.is_empty());
        outbox.flush(&doorbells);
        assert_eq!(drain(&mut consumers[1], |i| got.push(i)), 0);
        assert_eq!(got, [7, 8]);
        // The peer was rung once for the batch; nothing for an empty flush.
        doorbells[1].clear();
        outbox.flush(&doorbells);
        assert!(!doorbells[1].is_rung());
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
        assert_eq!(ring_capacity(2), 64);
        assert_eq!(ring_capacity(9), 32);
        assert_eq!(ring_capacity(51), 5);
        assert_eq!(ring_capacity(1000), 4);
    }
}
