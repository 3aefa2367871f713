//! Per-reactor counters: written only by their reactor (no contended atomics on the hot
//! path), summed on request so `/health`, `/api/stats` and `/metrics` are live, not
//! sampled.

use crate::protocol::codes::{ErrorCode, MessageKind, OutKind};
use std::{
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        OnceLock,
    },
    time::Instant,
};

/// Upper bounds of the routing-latency buckets, in µs (powers of 2 from 8 µs to ~4 s);
/// the last bucket is unbounded.
pub const LATENCY_BUCKETS_US: [u64; 20] = [
    8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536, 131_072,
    262_144, 524_288, 1_048_576, 2_097_152, 4_194_304,
];

/// One reactor's counters, on their own cache lines so reactors never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ReactorStats {
    /// Open connections (HTTP and WebSocket) on this reactor.
    pub connections: AtomicI64,
    /// Users whose home is this reactor and who have at least one device online.
    pub online_users: AtomicI64,
    /// Client messages handled (parsed and acted on) by this reactor.
    pub messages_processed: AtomicU64,
    /// Panics caught while handling a message, request or envelope (see `isolate`).
    pub panics: AtomicU64,
    /// Authenticated connections this reactor moved to their user's home reactor.
    pub connections_moved: AtomicU64,
    /// Authenticated connections that could not move to their home reactor and stayed
    /// (a refused release, a full handoff queue).
    pub connections_kept_off_home: AtomicU64,
    /// Connections closed because their request head or `auth` did not come in time.
    pub deadline_closes: AtomicU64,
    /// Sessions closed (4005) because their token expired without `auth_refresh`.
    pub sessions_expired: AtomicU64,
    /// Deadlines met only by input this reactor read late (after a long turn).
    pub deadlines_met_late: AtomicU64,
    /// Connections paused because their input met a full mailbox ring (backpressure).
    pub backpressure_pauses: AtomicU64,
    /// Batches of envelopes left in this reactor's inbound rings after its last drain
    /// (each holds up to [`crate::mailbox::BATCH_ENVELOPES_MAX`]): more than none means
    /// it falls behind its peers.
    pub mailbox_waiting: AtomicI64,
    /// Connections closed as they were accepted: their address was over
    /// `--max-pending-per-ip` or `--connects-per-ip-per-sec`.
    pub refused_per_address: AtomicU64,
    /// TLS handshakes completed (`--tls-cert`).
    pub tls_handshakes: AtomicU64,
    /// TLS connections closed for a failed handshake or a record that did not open.
    pub tls_failures: AtomicU64,
    /// Connections whose input paused until the next second (`--message-pace`).
    pub pace_pauses: AtomicU64,
    /// Recent messages this home's dedup window let go of before their 5 minutes, to stay
    /// within `--dedup-window-pairs`: a retry of one could reach a device twice.
    pub dedup_evicted_young: AtomicU64,
    /// Client messages by kind, indexed by [`MessageKind::index`].
    pub messages_in: [AtomicU64; MessageKind::COUNT],
    /// Frames queued to this reactor's connections.
    pub frames_out: AtomicU64,
    /// Frames queued by kind, indexed by [`OutKind::index`].
    pub messages_out: [AtomicU64; OutKind::COUNT],
    /// Bytes read from sockets.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Completed WebSocket upgrades.
    pub handshakes: AtomicU64,
    /// Refused upgrades.
    pub handshake_failures: AtomicU64,
    /// Plain HTTP requests answered.
    pub http_requests: AtomicU64,
    /// `error` replies by code, indexed by [`ErrorCode::index`].
    pub errors: [AtomicU64; ErrorCode::COUNT],
    /// Closing handshakes the gateway began (not a client's close echoed), by close code,
    /// indexed as [`ws_frame::close::SENT`].
    pub closes: [AtomicU64; ws_frame::close::SENT.len()],
    /// Envelopes mailed to other reactors.
    pub envelopes_sent: AtomicU64,
    /// Envelopes received from other reactors.
    pub envelopes_received: AtomicU64,
    /// Routing latency: message accepted → frame queued on the receiver's socket.
    pub routing_latency: LatencyHistogram,
}

/// Latencies by power-of-two bucket ([`LATENCY_BUCKETS_US`] plus one unbounded), with
/// their sum: what a Prometheus histogram needs. One writer per histogram.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Counts per bucket (not cumulative).
    pub buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of the observations, in µs.
    pub sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one latency of `us` microseconds.
    pub fn observe_us(&self, us: u64) {
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        ReactorStats::bump(&self.buckets[bucket]);
        ReactorStats::bump_by(&self.sum_us, us);
    }
}

impl ReactorStats {
    /// Adds `delta` to a gauge. Only the owning reactor writes, so load+store suffices.
    pub fn add(counter: &AtomicI64, delta: i64) {
        counter.store(counter.load(Ordering::Relaxed) + delta, Ordering::Relaxed);
    }

    /// Counts one more event.
    pub fn bump(counter: &AtomicU64) {
        Self::bump_by(counter, 1);
    }

    /// Counts `n` more (bytes, say).
    pub fn bump_by(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// Counts one client message of `kind`.
    pub fn count_message(&self, kind: MessageKind) {
        Self::bump(&self.messages_in[kind.index()]);
    }

    /// Counts one outbound frame or response of `kind`.
    pub fn count_out(&self, kind: OutKind) {
        Self::bump(&self.frames_out);
        Self::bump(&self.messages_out[kind.index()]);
    }

    /// Counts one `error` reply with `code`.
    pub fn count_error(&self, code: ErrorCode) {
        Self::bump(&self.errors[code.index()]);
    }

    /// Records one routing latency measured from `accepted_ns` ([`clock_ns`]) to now.
    pub fn observe_routing(&self, accepted_ns: u64) {
        let us = clock_ns().saturating_sub(accepted_ns) / 1_000;
        self.routing_latency.observe_us(us);
    }
}

/// Nanoseconds since the first call in this process: a cheap monotonic stamp that fits in
/// a `u64` inside an envelope.
pub fn clock_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The sum over all reactors of one gauge.
pub fn total(stats: &[ReactorStats], gauge: impl Fn(&ReactorStats) -> &AtomicI64) -> i64 {
    stats.iter().map(|s| gauge(s).load(Ordering::Relaxed)).sum()
}

/// The sum over all reactors of one counter.
pub fn sum(stats: &[ReactorStats], counter: impl Fn(&ReactorStats) -> &AtomicU64) -> u64 {
    stats
        .iter()
        .map(|s| counter(s).load(Ordering::Relaxed))
        .sum()
}

/// Reads a gauge.
pub fn load_gauge(gauge: &AtomicI64) -> i64 {
    gauge.load(Ordering::Relaxed)
}

/// Reads a counter.
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The process's resident set size in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_power_of_two_bucket() {
        let stats = ReactorStats::default();
        let latency = &stats.routing_latency;
        latency.observe_us(0); // first bucket
        latency.observe_us(9); // just over 8 µs: second bucket
        latency.observe_us(100_000_000); // 100 s: unbounded
        assert_eq!(read(&latency.buckets[0]), 1);
        assert_eq!(read(&latency.buckets[1]), 1);
        assert_eq!(read(&latency.buckets[LATENCY_BUCKETS_US.len()]), 1);
        assert_eq!(read(&latency.sum_us), 100_000_009);
    }

    #[test]
    fn outbound_frames_are_counted_by_kind() {
        let stats = ReactorStats::default();
        for kind in [
            OutKind::Pong,
            OutKind::Http,
            OutKind::Control,
            OutKind::NewMessage,
        ] {
            stats.count_out(kind);
        }
        let count = |kind: OutKind| read(&stats.messages_out[kind.index()]);
        assert_eq!(
            (
                count(OutKind::Pong),
                count(OutKind::Http),
                count(OutKind::Control),
                count(OutKind::NewMessage)
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(read(&stats.frames_out), 4);
    }

    #[test]
    fn messages_and_errors_count_by_index() {
        let stats = ReactorStats::default();
        stats.count_error(ErrorCode::NotMember);
        stats.count_message(MessageKind::Ping);
        assert_eq!(read(&stats.errors[ErrorCode::NotMember.index()]), 1);
        assert_eq!(read(&stats.messages_in[MessageKind::Ping.index()]), 1);
        assert_eq!(stats.errors.iter().map(read).sum::<u64>(), 1);
    }
}
