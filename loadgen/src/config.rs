//! The loadgen's command line, validated once before any socket opens.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

/// The most connections one run may attempt.
pub const CONNECTIONS_MAX: usize = 10_000_000;

/// What the connections do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The engine's chat protocol: auth, ping, send_message between random users.
    Chat,
    /// Plain text frames timed by their echo: for servers that only echo (the peers).
    Echo,
    /// The chat protocol as v2 devices: each resumes from the last inbox seq it processed
    /// and acks; `--churn-per-min` of the connections drop (reset) and reconnect each
    /// minute of the load. Counts lost and duplicated messages; either fails the run.
    Churn,
}

impl Scenario {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Chat => "chat",
            Scenario::Echo => "echo",
            Scenario::Churn => "churn",
        }
    }
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Holds many WebSocket connections to the engine and reports what it held"
)]
pub struct Args {
    /// Address of the server to load; a comma-separated list spreads the connections
    /// over several (a cluster's nodes): user i connects to the i-th, modulo their count
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        value_delimiter = ',',
        value_name = "ADDR,ADDR,..."
    )]
    pub target: Vec<SocketAddr>,
    /// Connections to open and hold
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub connections: usize,
    /// Connections opened (and authenticated) per second during the ramp
    #[arg(long, default_value_t = 5000, value_name = "R")]
    pub ramp_per_sec: u64,
    /// Seconds to hold every connection after the ramp; a ping sweep checks each answers
    #[arg(long, default_value_t = 5, value_name = "H")]
    pub hold_secs: u64,
    /// chat: the engine's protocol; echo: text frames timed by their echo (any echo server)
    #[arg(long, value_enum, default_value_t = Scenario::Chat)]
    pub scenario: Scenario,
    /// Address every load message to a user no connection holds, so each is stored in the
    /// server's offline queue and acknowledged `queued` (measures the store)
    #[arg(long)]
    pub offline_receivers: bool,
    /// Write the id of every message acknowledged `queued` to queued-ids.txt in --out, one
    /// per line (what a crash test checks against the queues after a restart)
    #[arg(long)]
    pub queued_ids: bool,
    /// Messages per second in the load phase, all senders together (0: no load phase)
    #[arg(long, default_value_t = 0, value_name = "M")]
    pub rate: u64,
    /// Seconds of open-loop load after the hold
    #[arg(long, default_value_t = 10, value_name = "D")]
    pub duration_secs: u64,
    /// Worker threads, each pinned with its own fd table [default: one per core]
    #[arg(long, value_name = "W")]
    pub workers: Option<usize>,
    /// Where sockets live: io_uring direct descriptors (a worker then holds far more than RLIMIT_NOFILE), the fd table, or auto (the fd table when each worker's share fits in it, as it costs less per message; else direct where the kernel allows)
    #[arg(long, value_enum, default_value = "auto", value_name = "PLACEMENT")]
    pub sockets: uring_sockets::Placement,
    /// Source addresses to rotate over (comma-separated); default 127.0.0.2… for a loopback target
    #[arg(long, value_delimiter = ',', value_name = "IP,IP,...")]
    pub source_addrs: Vec<std::net::IpAddr>,
    /// Exit non-zero when fewer connections than this were held [default: N]
    #[arg(long, value_name = "N")]
    pub min_held: Option<usize>,
    /// Seconds a connection may take to connect, upgrade and authenticate
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub connect_timeout_secs: u64,
    /// The server's pid, to report its RSS per held connection and its CPU time under load
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// churn: percent of the connections that drop (reset) and reconnect each minute
    #[arg(long, default_value_t = 10.0, value_name = "PCT")]
    pub churn_per_min: f64,
    /// churn: `kill -9` the server (--server-pid) this many seconds into the load; the
    /// connections reconnect, resuming, once it is back (the bench script restarts it)
    #[arg(long, value_name = "SECS", requires = "server_pid")]
    pub kill_server_at: Option<u64>,
    /// Speak TLS (wss://) to the server: rustls' handshake, then each connection keeps only
    /// its keys, as the engine does
    #[arg(long)]
    pub tls: bool,
    /// PEM certificates of the authorities the server's certificate must chain to (--tls)
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// Take any server certificate (--tls; for tests and benches against a self-signed one)
    #[arg(long, requires = "tls", conflicts_with = "tls_ca")]
    pub tls_insecure: bool,
    /// The name the server's certificate must have (and the SNI sent)
    #[arg(
        long,
        default_value = "localhost",
        value_name = "NAME",
        requires = "tls"
    )]
    pub tls_name: String,
    /// Directory for the JSON report
    #[arg(long, default_value = "loadgen-report", value_name = "DIR")]
    pub out: PathBuf,
}

/// Why the command line cannot run.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct ConfigError {
    /// The flag at fault.
    pub flag: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl Args {
    /// Checks ranges that clap's types do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |flag, problem: String| Err(ConfigError { flag, problem });
        if self.target.is_empty() {
            return fail("target", "names no address".into());
        }
        let mut targets = self.target.clone();
        targets.sort_unstable();
        targets.dedup();
        if targets.len() != self.target.len() {
            return fail("target", "names an address twice".into());
        }
        if self.connections == 0 || self.connections > CONNECTIONS_MAX {
            return fail("connections", format!("must be 1 to {CONNECTIONS_MAX}"));
        }
        if self.ramp_per_sec == 0 {
            return fail("ramp-per-sec", "must be at least 1".into());
        }
        if self.workers == Some(0) {
            return fail("workers", "must be at least 1".into());
        }
        if !(0.0..=6000.0).contains(&self.churn_per_min) {
            return fail(
                "churn-per-min",
                "must be 0 to 6000 (percent per minute)".into(),
            );
        }
        if self.kill_server_at.is_some() && self.scenario != Scenario::Churn {
            return fail(
                "kill-server-at",
                "needs --scenario churn (it reconnects)".into(),
            );
        }
        if self.connect_timeout_secs == 0 {
            return fail("connect-timeout-secs", "must be at least 1".into());
        }
        Ok(())
    }

    /// Worker count: the flag, or one per core.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .min(self.connections)
    }
}
