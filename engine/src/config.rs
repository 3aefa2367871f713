//! Start-up configuration: command line, `ENGINE_*` environment variables, an optional TOML
//! file, and defaults, in that order of precedence. Validated once; the reactors never parse.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::sockets::Placement;

/// Default listen address: every interface, port 8080.
pub const LISTEN_DEFAULT: &str = "0.0.0.0:8080";
/// Default largest frame or message: 64 KiB (PROTOCOL.md `max_message_size`), small enough
/// that a malicious client cannot make one connection hold much memory.
pub const MAX_MESSAGE_BYTES_DEFAULT: usize = 64 * 1024;
/// Bounds for `--max-message-bytes`: a control frame's 125 bytes up to 16 MiB.
pub const MAX_MESSAGE_BYTES_RANGE: (usize, usize) = (125, 16 * 1024 * 1024);
/// Default time a connection has to send `auth` after connecting: 10 s (PROTOCOL.md).
pub const AUTH_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Bounds for `--auth-timeout-ms`: at least one timer tick, at most 10 minutes.
pub const AUTH_TIMEOUT_MS_RANGE: (u64, u64) = (100, 600_000);
/// Default time from accepting a connection to having its whole HTTP request head (the
/// WebSocket upgrade, or any other request; and between kept-alive requests): 5 s.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Bounds for `--handshake-timeout-ms`.
pub const HANDSHAKE_TIMEOUT_MS_RANGE: (u64, u64) = (100, 600_000);
/// Default largest HTTP request head (request line and headers, the upgrade included):
/// 8 KiB, as common servers do.
pub const HANDSHAKE_BYTES_MAX_DEFAULT: usize = 8 * 1024;
/// Bounds for `--handshake-bytes-max`: a minimal upgrade needs about 200 bytes; the read
/// buffer holds 64 KiB.
pub const HANDSHAKE_BYTES_MAX_RANGE: (usize, usize) = (512, 64 * 1024);
/// Default bound on a graceful shutdown: 5 s to send close frames and drain.
pub const SHUTDOWN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default data directory (the durable store's file lives in it).
pub const DATA_DIR_DEFAULT: &str = "./data";
/// Default bound on one user's offline queue (PROTOCOL.md `message_queue_max_size`).
pub const QUEUE_MAX_PER_USER_DEFAULT: u64 = 10_000;
/// Bounds for `--queue-max-per-user`.
pub const QUEUE_MAX_PER_USER_RANGE: (u64, u64) = (1, 10_000_000);
/// Default time a queued message is kept before it expires: 30 days.
pub const RETENTION_DAYS_DEFAULT: f64 = 30.0;
/// Bounds for `--retention-days` (fractions allowed: 0.5 is twelve hours).
pub const RETENTION_DAYS_RANGE: (f64, f64) = (0.000_01, 3650.0);
/// Default bound on one connection's unsent output: past it the client is a slow consumer.
pub const OUTBOUND_BYTES_MAX_DEFAULT: usize = 4 << 20;
/// Bounds for `--outbound-bytes-max`: at least 1 MiB, so that a 256 KiB part of an offline
/// queue always fits.
pub const OUTBOUND_BYTES_MAX_RANGE: (usize, usize) = (1 << 20, 1 << 30);
/// Default bound on client messages per second per connection: none. A client flushing
/// its outbox after a reconnect sends hundreds at once; operators who want a bound set one.
pub const RATE_LIMIT_DEFAULT: u8 = 0;
/// The highest `--rate-limit` (a connection's count is one byte and closes at twice it).
pub const RATE_LIMIT_MAX: u8 = 127;
/// Default idle timeout: a silent connection is pinged, then closed (0: never).
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default memory for the store's page cache, in MiB (redb's own default is 1 GiB).
pub const STORE_CACHE_MB_DEFAULT: u64 = 128;
/// Bounds for `--store-cache-mb`.
pub const STORE_CACHE_MB_RANGE: (u64, u64) = (4, 1 << 20);
/// Default bound on the groups one user may be in: group creation is open (a join
/// creates), so without a bound one client could grow the groups and the store forever.
pub const GROUPS_PER_USER_MAX_DEFAULT: u32 = 1_000;
/// Bounds for `--groups-per-user-max`.
pub const GROUPS_PER_USER_MAX_RANGE: (u32, u32) = (1, 1_000_000);
/// The most reactors accepted; each is a thread with its own fd table and mailboxes.
pub const REACTORS_MAX: usize = 256;

/// The command line. Every flag can also come from an `ENGINE_*` variable or the TOML file.
#[derive(Debug, Parser, Default)]
#[command(
    name = "engine",
    version,
    about = "Thread-per-core io_uring WebSocket chat gateway"
)]
pub struct Args {
    /// Address to listen on for WebSocket and HTTP [default: 0.0.0.0:8080]
    #[arg(long, env = "ENGINE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Reactor threads, each pinned with its own listener and fd table [default: one per core]
    #[arg(long, env = "ENGINE_REACTORS", value_name = "N")]
    pub reactors: Option<usize>,
    /// Where sockets live: io_uring direct descriptors (in no fd table, so one reactor holds far more than RLIMIT_NOFILE), the fd table with epoll, or auto (direct where the kernel allows) [default: auto]
    #[arg(long, env = "ENGINE_SOCKETS", value_name = "PLACEMENT", value_enum)]
    pub sockets: Option<Placement>,
    /// Largest WebSocket frame or message accepted; larger ones close with 1009 [default: 65536]
    #[arg(long, env = "ENGINE_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Time to send `auth` after the WebSocket upgrade before the close with 4001 [default: 10000]
    #[arg(long, env = "ENGINE_AUTH_TIMEOUT_MS", value_name = "MS")]
    pub auth_timeout_ms: Option<u64>,
    /// Time from connecting to a complete HTTP request head (the upgrade, or between kept-alive requests) before the socket is closed [default: 5000]
    #[arg(long, env = "ENGINE_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Largest HTTP request head (request line and headers, the upgrade included); larger ones get 431 [default: 8192]
    #[arg(long, env = "ENGINE_HANDSHAKE_BYTES_MAX", value_name = "BYTES")]
    pub handshake_bytes_max: Option<usize>,
    /// HS256 secret for auth tokens; without one the gateway runs in open mode (trusts userId)
    #[arg(
        long,
        env = "ENGINE_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Bearer token the HTTP API (`/api/*`) requires; without one the API is open
    #[arg(
        long,
        env = "ENGINE_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// Directory of the durable store (offline queues) [default: ./data]
    #[arg(long, env = "ENGINE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Messages one offline user may have queued; more are rejected with queue_full [default: 10000]
    #[arg(long, env = "ENGINE_QUEUE_MAX_PER_USER", value_name = "N")]
    pub queue_max_per_user: Option<u64>,
    /// Days a queued message is kept before it expires unread (fractions allowed) [default: 30]
    #[arg(long, env = "ENGINE_RETENTION_DAYS", value_name = "DAYS")]
    pub retention_days: Option<f64>,
    /// Unsent bytes one connection may have queued before it is closed as a slow consumer (4002) [default: 4194304]
    #[arg(long, env = "ENGINE_OUTBOUND_BYTES_MAX", value_name = "BYTES")]
    pub outbound_bytes_max: Option<usize>,
    /// Open connections the engine takes in all; past it an upgrade is answered 503 (0: no cap) [default: 0]
    #[arg(long, env = "ENGINE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u64>,
    /// Open connections one reactor takes; past it an upgrade is answered 503 (0: no cap) [default: 0]
    #[arg(long, env = "ENGINE_MAX_CONNECTIONS_PER_REACTOR", value_name = "N")]
    pub max_connections_per_reactor: Option<u64>,
    /// On SIGTERM, spread the 1001 closes over this many seconds, in random order, so clients do not all reconnect at once (0: close all at once) [default: 0]
    #[arg(long, env = "ENGINE_DRAIN_SECS", value_name = "S")]
    pub drain_secs: Option<u64>,
    /// Client messages per second one connection may send (1-127; 0: no limit); more get rate_limited, twice as many close it with 1008 [default: 0]
    #[arg(long, env = "ENGINE_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<u8>,
    /// A connection silent this long is pinged, and closed (1001) if still silent half as long again (0: never) [default: 60000]
    #[arg(long, env = "ENGINE_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Groups one user may be in; a join past it gets `too_many_groups` [default: 1000]
    #[arg(long, env = "ENGINE_GROUPS_PER_USER_MAX", value_name = "N")]
    pub groups_per_user_max: Option<u32>,
    /// http:// URL to POST a small JSON to when a message is queued for a user with no device online
    #[arg(long, env = "ENGINE_PUSH_WEBHOOK", value_name = "URL")]
    pub push_webhook: Option<String>,
    /// Include the start of the message text in push notifications [default: false]
    #[arg(long, env = "ENGINE_PUSH_PREVIEW", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub push_preview: Option<bool>,
    /// Memory for the store's page cache, in MiB [default: 128]
    #[arg(long, env = "ENGINE_STORE_CACHE_MB", value_name = "MIB")]
    pub store_cache_mb: Option<u64>,
    /// Bound on a graceful shutdown (SIGTERM/SIGINT) before remaining sockets are dropped [default: 5000]
    #[arg(long, env = "ENGINE_SHUTDOWN_TIMEOUT_MS", value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive [default: info]
    #[arg(long, env = "ENGINE_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// TOML file with any of the settings above (snake_case keys); flags and env override it
    #[arg(long, env = "ENGINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Instead of serving: a tool to run
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools the binary runs instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Read this host's limits and predict how many connections it can hold
    Check {
        /// Connections the engine should hold
        #[arg(long, value_name = "N")]
        connections: u64,
        /// Reactors it would run [default: one per core]
        #[arg(long, value_name = "R")]
        reactors: Option<u64>,
        /// Where their sockets would live (as the engine's --sockets) [default: auto]
        #[arg(long, value_enum, default_value = "auto", value_name = "PLACEMENT")]
        sockets: Placement,
    },
}

/// The TOML file's shape: the same settings, snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    reactors: Option<usize>,
    sockets: Option<Placement>,
    max_message_bytes: Option<usize>,
    auth_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    handshake_bytes_max: Option<usize>,
    jwt_secret: Option<String>,
    api_token: Option<String>,
    data_dir: Option<PathBuf>,
    queue_max_per_user: Option<u64>,
    retention_days: Option<f64>,
    store_cache_mb: Option<u64>,
    outbound_bytes_max: Option<usize>,
    drain_secs: Option<u64>,
    max_connections: Option<u64>,
    max_connections_per_reactor: Option<u64>,
    rate_limit: Option<u8>,
    idle_timeout_ms: Option<u64>,
    groups_per_user_max: Option<u32>,
    push_webhook: Option<String>,
    push_preview: Option<bool>,
    shutdown_timeout_ms: Option<u64>,
    log_level: Option<String>,
}

/// The validated configuration the engine runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where every reactor's SO_REUSEPORT listener binds.
    pub listen: SocketAddr,
    /// How many reactor threads.
    pub reactors: usize,
    /// Where each reactor keeps its sockets.
    pub socket_placement: Placement,
    /// Largest frame payload and largest reassembled message.
    pub max_message_bytes: usize,
    /// Deadline for `auth` after the upgrade.
    pub auth_timeout_ms: u64,
    /// Deadline for a whole HTTP request head after connecting (or after the last answer
    /// on a kept-alive connection).
    pub handshake_timeout_ms: u64,
    /// Largest HTTP request head.
    pub handshake_bytes_max: usize,
    /// HS256 secret; `None` is open mode.
    pub jwt_secret: Option<Vec<u8>>,
    /// Bearer token for `/api/*`; `None` leaves the API open.
    pub api_token: Option<String>,
    /// Where the durable store keeps its file.
    pub data_dir: PathBuf,
    /// Bound on one user's offline queue.
    pub queue_max_per_user: u64,
    /// How long queued messages and history are kept.
    pub retention: std::time::Duration,
    /// Bytes of the store's page cache.
    pub store_cache_bytes: usize,
    /// Where push notifications for offline users go, if anywhere.
    pub push_webhook: Option<crate::push::Webhook>,
    /// Whether they carry the start of the text.
    pub push_preview: bool,
    /// Unsent bytes one connection may have before it is closed as a slow consumer.
    pub outbound_bytes_max: usize,
    /// Seconds over which a drain spreads its closes (0: all at once).
    pub drain_secs: u64,
    /// Open connections in all before upgrades are refused (0: no cap).
    pub max_connections: u64,
    /// Open connections per reactor before its upgrades are refused (0: no cap).
    pub max_connections_per_reactor: u64,
    /// Client messages per second per connection (0: no limit).
    pub rate_limit: u8,
    /// Silence after which a connection is pinged, then closed (0: never).
    pub idle_timeout_ms: u64,
    /// Groups one user may be in.
    pub groups_per_user_max: u32,
    /// A fault to inject, from `ENGINE_FAILPOINT` (tests only).
    pub failpoint: Option<crate::failpoint::Failpoint>,
    /// Bound on graceful shutdown.
    pub shutdown_timeout_ms: u64,
    /// The tracing filter.
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: LISTEN_DEFAULT.parse().expect("the default address parses"),
            reactors: default_reactors(),
            socket_placement: Placement::Auto,
            max_message_bytes: MAX_MESSAGE_BYTES_DEFAULT,
            auth_timeout_ms: AUTH_TIMEOUT_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            handshake_bytes_max: HANDSHAKE_BYTES_MAX_DEFAULT,
            jwt_secret: None,
            api_token: None,
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            queue_max_per_user: QUEUE_MAX_PER_USER_DEFAULT,
            retention: std::time::Duration::from_secs_f64(RETENTION_DAYS_DEFAULT * 86_400.0),
            store_cache_bytes: (STORE_CACHE_MB_DEFAULT << 20) as usize,
            push_webhook: None,
            push_preview: false,
            outbound_bytes_max: OUTBOUND_BYTES_MAX_DEFAULT,
            drain_secs: 0,
            max_connections: 0,
            max_connections_per_reactor: 0,
            rate_limit: RATE_LIMIT_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            groups_per_user_max: GROUPS_PER_USER_MAX_DEFAULT,
            failpoint: None,
            shutdown_timeout_ms: SHUTDOWN_TIMEOUT_MS_DEFAULT,
            log_level: "info".to_owned(),
        }
    }
}

/// A setting that stops start-up; the text names the flag and the accepted values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value out of range or of the wrong form.
    #[error("--{flag}: {problem}")]
    Invalid {
        /// The flag's name, without dashes.
        flag: &'static str,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The `--config` file could not be read or parsed.
    #[error("--config {path}: {problem}")]
    File {
        /// The file named.
        path: PathBuf,
        /// The read or TOML error.
        problem: String,
    },
}

fn default_reactors() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn invalid(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        problem: problem.into(),
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &'static str,
    value: T,
    (low, high): (T, T),
) -> Result<T, ConfigError> {
    if value < low || value > high {
        return Err(invalid(
            flag,
            format!("must be between {low} and {high}, got {value}"),
        ));
    }
    Ok(value)
}

impl Config {
    /// Merges flags/env (`args`) over the TOML file over the defaults, and validates.
    pub fn resolve(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    problem: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let defaults = Config::default();
        let listen = match args.listen.or(file.listen) {
            Some(text) => text
                .parse()
                .map_err(|_| invalid("listen", format!("'{text}' is not an IP:port address")))?,
            None => defaults.listen,
        };
        let reactors = in_range(
            "reactors",
            args.reactors.or(file.reactors).unwrap_or(defaults.reactors),
            (1, REACTORS_MAX),
        )?;
        let max_message_bytes = in_range(
            "max-message-bytes",
            args.max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(defaults.max_message_bytes),
            MAX_MESSAGE_BYTES_RANGE,
        )?;
        let auth_timeout_ms = in_range(
            "auth-timeout-ms",
            args.auth_timeout_ms
                .or(file.auth_timeout_ms)
                .unwrap_or(defaults.auth_timeout_ms),
            AUTH_TIMEOUT_MS_RANGE,
        )?;
        let handshake_timeout_ms = in_range(
            "handshake-timeout-ms",
            args.handshake_timeout_ms
                .or(file.handshake_timeout_ms)
                .unwrap_or(defaults.handshake_timeout_ms),
            HANDSHAKE_TIMEOUT_MS_RANGE,
        )?;
        let handshake_bytes_max = in_range(
            "handshake-bytes-max",
            args.handshake_bytes_max
                .or(file.handshake_bytes_max)
                .unwrap_or(defaults.handshake_bytes_max),
            HANDSHAKE_BYTES_MAX_RANGE,
        )?;
        let shutdown_timeout_ms = in_range(
            "shutdown-timeout-ms",
            args.shutdown_timeout_ms
                .or(file.shutdown_timeout_ms)
                .unwrap_or(defaults.shutdown_timeout_ms),
            (0, 600_000),
        )?;
        let jwt_secret = match args.jwt_secret.or(file.jwt_secret) {
            Some(secret) if secret.is_empty() => {
                return Err(invalid("jwt-secret", "must not be empty"))
            }
            Some(secret) => Some(secret.into_bytes()),
            None => None,
        };
        let api_token = match args.api_token.or(file.api_token) {
            Some(token) if token.is_empty() || token.chars().any(|c| c.is_whitespace()) => {
                return Err(invalid(
                    "api-token",
                    "must be non-empty and contain no whitespace",
                ))
            }
            token => token,
        };
        let data_dir = args.data_dir.or(file.data_dir).unwrap_or(defaults.data_dir);
        let queue_max_per_user = in_range(
            "queue-max-per-user",
            args.queue_max_per_user
                .or(file.queue_max_per_user)
                .unwrap_or(defaults.queue_max_per_user),
            QUEUE_MAX_PER_USER_RANGE,
        )?;
        let retention_days = in_range(
            "retention-days",
            args.retention_days
                .or(file.retention_days)
                .unwrap_or(RETENTION_DAYS_DEFAULT),
            RETENTION_DAYS_RANGE,
        )?;
        if !retention_days.is_finite() {
            return Err(invalid("retention-days", "must be a number of days"));
        }
        let retention = std::time::Duration::from_secs_f64(retention_days * 86_400.0);
        let outbound_bytes_max = in_range(
            "outbound-bytes-max",
            args.outbound_bytes_max
                .or(file.outbound_bytes_max)
                .unwrap_or(OUTBOUND_BYTES_MAX_DEFAULT),
            OUTBOUND_BYTES_MAX_RANGE,
        )?;
        let rate_limit = in_range(
            "rate-limit",
            args.rate_limit
                .or(file.rate_limit)
                .unwrap_or(RATE_LIMIT_DEFAULT),
            (0, RATE_LIMIT_MAX),
        )?;
        let idle_timeout_ms = args
            .idle_timeout_ms
            .or(file.idle_timeout_ms)
            .unwrap_or(IDLE_TIMEOUT_MS_DEFAULT);
        if idle_timeout_ms != 0 && idle_timeout_ms < 1000 {
            return Err(invalid(
                "idle-timeout-ms",
                "must be 0 (never) or at least 1000",
            ));
        }
        let push_webhook = match args.push_webhook.or(file.push_webhook) {
            Some(url) => {
                Some(crate::push::Webhook::parse(&url).map_err(|e| invalid("push-webhook", e))?)
            }
            None => None,
        };
        let store_cache_mb = in_range(
            "store-cache-mb",
            args.store_cache_mb
                .or(file.store_cache_mb)
                .unwrap_or(STORE_CACHE_MB_DEFAULT),
            STORE_CACHE_MB_RANGE,
        )?;
        let log_level = args
            .log_level
            .or(file.log_level)
            .unwrap_or(defaults.log_level);
        tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|e| {
            invalid(
                "log-level",
                format!("'{log_level}' is not a log filter: {e}"),
            )
        })?;
        Ok(Config {
            listen,
            reactors,
            max_message_bytes,
            auth_timeout_ms,
            handshake_timeout_ms,
            handshake_bytes_max,
            jwt_secret,
            api_token,
            data_dir,
            queue_max_per_user,
            retention,
            store_cache_bytes: (store_cache_mb << 20) as usize,
            push_webhook,
            push_preview: args.push_preview.or(file.push_preview).unwrap_or(false),
            outbound_bytes_max,
            drain_secs: in_range(
                "drain-secs",
                args.drain_secs.or(file.drain_secs).unwrap_or(0),
                (0, 3600),
            )?,
            socket_placement: args.sockets.or(file.sockets).unwrap_or(Placement::Auto),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(0),
            max_connections_per_reactor: args
                .max_connections_per_reactor
                .or(file.max_connections_per_reactor)
                .unwrap_or(0),
            rate_limit,
            idle_timeout_ms,
            groups_per_user_max: in_range(
                "groups-per-user-max",
                args.groups_per_user_max
                    .or(file.groups_per_user_max)
                    .unwrap_or(defaults.groups_per_user_max),
                GROUPS_PER_USER_MAX_RANGE,
            )?,
            failpoint: crate::failpoint::Failpoint::from_env()
                .map_err(|e| invalid("failpoint", e))?,
            shutdown_timeout_ms,
            log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let config = Config::resolve(Args::default()).unwrap();
        assert_eq!(config.listen, LISTEN_DEFAULT.parse().unwrap());
        assert_eq!(config.max_message_bytes, MAX_MESSAGE_BYTES_DEFAULT);
        assert!(config.jwt_secret.is_none());
    }

    #[test]
    fn bad_values_name_their_flag() {
        let err = Config::resolve(Args {
            reactors: Some(0),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--reactors:"), "{err}");
        let err = Config::resolve(Args {
            listen: Some("nowhere".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--listen:"), "{err}");
        let err = Config::resolve(Args {
            max_message_bytes: Some(10),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--max-message-bytes:"), "{err}");
        let err = Config::resolve(Args {
            handshake_bytes_max: Some(100),
            ..Args::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with("--handshake-bytes-max:"),
            "{err}"
        );
        let err = Config::resolve(Args {
            handshake_timeout_ms: Some(10),
            ..Args::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with("--handshake-timeout-ms:"),
            "{err}"
        );
        let err = Config::resolve(Args {
            jwt_secret: Some(String::new()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--jwt-secret:"), "{err}");
        let err = Config::resolve(Args {
            api_token: Some("two words".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--api-token:"), "{err}");
        for days in [f64::NAN, 0.0, 5000.0] {
            let err = Config::resolve(Args {
                retention_days: Some(days),
                ..Args::default()
            })
            .unwrap_err();
            assert!(err.to_string().starts_with("--retention-days:"), "{err}");
        }
        let err = Config::resolve(Args {
            store_cache_mb: Some(1),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--store-cache-mb:"), "{err}");
        for (args, flag) in [
            (
                Args {
                    rate_limit: Some(200),
                    ..Args::default()
                },
                "--rate-limit:",
            ),
            (
                Args {
                    idle_timeout_ms: Some(10),
                    ..Args::default()
                },
                "--idle-timeout-ms:",
            ),
            (
                Args {
                    outbound_bytes_max: Some(1000),
                    ..Args::default()
                },
                "--outbound-bytes-max:",
            ),
        ] {
            let err = Config::resolve(args).unwrap_err();
            assert!(err.to_string().starts_with(flag), "{err}");
        }
        let err = Config::resolve(Args {
            push_webhook: Some("https://push.example/".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--push-webhook:"), "{err}");
        let err = Config::resolve(Args {
            log_level: Some("[[".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--log-level:"), "{err}");
    }

    #[test]
    fn file_values_yield_to_flags() {
        let dir = std::env::temp_dir().join(format!("engine-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("engine.toml");
        std::fs::write(&path, "reactors = 3\nauth_timeout_ms = 2000\n").unwrap();
        let args = Args {
            config: Some(path.clone()),
            reactors: Some(5),
            ..Args::default()
        };
        let config = Config::resolve(args).unwrap();
        assert_eq!(config.reactors, 5);
        assert_eq!(config.auth_timeout_ms, 2000);
        std::fs::write(&path, "reactor = 3\n").unwrap();
        let err = Config::resolve(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn socket_placement_comes_from_the_flag_or_the_file_and_bad_names_are_refused() {
        assert_eq!(
            Config::resolve(Args::default()).unwrap().socket_placement,
            Placement::Auto
        );
        let args = Args::try_parse_from(["engine", "--sockets", "fd-table"]).unwrap();
        assert_eq!(
            Config::resolve(args).unwrap().socket_placement,
            Placement::FdTable
        );
        let err = Args::try_parse_from(["engine", "--sockets", "fixed"]).unwrap_err();
        assert!(err.to_string().contains("--sockets"), "{err}");
        let dir = std::env::temp_dir().join(format!("engine-sockets-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("engine.toml");
        std::fs::write(&path, "sockets = \"direct\"\n").unwrap();
        let from_file = Config::resolve(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(from_file.socket_placement, Placement::Direct);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
