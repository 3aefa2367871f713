//! The live figures `/health`, `/api/stats` and `/metrics` report, gathered by the
//! reactor that answers.

/// The live figures the read-only endpoints report.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// Users with at least one device online.
    pub online_users: i64,
    /// Open connections of any kind.
    pub connections: i64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Accepting and not draining.
    pub ready: bool,
    /// Now, in Unix ms.
    pub now_ms: u64,
}
