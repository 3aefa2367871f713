//! Per-reactor counters: written only by their reactor (no contended atomics on the hot
//! path), summed on request so `/health` is live, not sampled.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
}

impl ReactorStats {
    /// Adds `delta` to a gauge. Only the owning reactor writes, so load+store suffices.
    pub fn add(counter: &AtomicI64, delta: i64) {
        counter.store(counter.load(Ordering::Relaxed) + delta, Ordering::Relaxed);
    }

    /// Counts one more event.
    pub fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// The sum over all reactors of one gauge.
pub fn total(stats: &[ReactorStats], gauge: impl Fn(&ReactorStats) -> &AtomicI64) -> i64 {
    stats.iter().map(|s| gauge(s).load(Ordering::Relaxed)).sum()
}
