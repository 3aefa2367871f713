//! Start-up configuration: command line, `ENGINE_*` environment variables, an optional TOML
//! file, and defaults, in that order of precedence. Validated once; the reactors never parse.
//!
//! - `settings`: every setting declared once (flag, variable, file key, documented
//!   default, help), and the command line made from it.
//! - here: the defaults and ranges as named constants, and [`Config::resolve`], which
//!   applies them and converts the values into what the engine runs with.

mod settings;

use std::{net::SocketAddr, path::PathBuf};

use crate::sockets::Placement;
use settings::FileConfig;
pub use settings::{Args, Command, Setting, SETTINGS};

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
    /// Every default, as [`Config::resolve`] applies them.
    fn default() -> Self {
        Config::resolve_merged(Args::default()).expect("the defaults are valid")
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

/// One reactor per core, up to [`REACTORS_MAX`] (a bigger box runs that many).
fn default_reactors() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(REACTORS_MAX)
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
        Ok(Config {
            failpoint: crate::failpoint::Failpoint::from_env()
                .map_err(|e| invalid("failpoint", e))?,
            ..Config::resolve_merged(args.or_file(file))?
        })
    }

    /// Applies the defaults and ranges to merged settings (and reads no environment, so
    /// `Config::default` is the defaults alone).
    fn resolve_merged(args: Args) -> Result<Config, ConfigError> {
        let text = args.listen.as_deref().unwrap_or(LISTEN_DEFAULT);
        let listen = text
            .parse()
            .map_err(|_| invalid("listen", format!("'{text}' is not an IP:port address")))?;
        let setting = |value: Option<u64>, default: u64| value.unwrap_or(default);
        Ok(Config {
            listen,
            reactors: in_range(
                "reactors",
                args.reactors.unwrap_or_else(default_reactors),
                (1, REACTORS_MAX),
            )?,
            socket_placement: args.sockets.unwrap_or(Placement::Auto),
            max_message_bytes: in_range(
                "max-message-bytes",
                args.max_message_bytes.unwrap_or(MAX_MESSAGE_BYTES_DEFAULT),
                MAX_MESSAGE_BYTES_RANGE,
            )?,
            auth_timeout_ms: in_range(
                "auth-timeout-ms",
                setting(args.auth_timeout_ms, AUTH_TIMEOUT_MS_DEFAULT),
                AUTH_TIMEOUT_MS_RANGE,
            )?,
            handshake_timeout_ms: in_range(
                "handshake-timeout-ms",
                setting(args.handshake_timeout_ms, HANDSHAKE_TIMEOUT_MS_DEFAULT),
                HANDSHAKE_TIMEOUT_MS_RANGE,
            )?,
            handshake_bytes_max: in_range(
                "handshake-bytes-max",
                args.handshake_bytes_max
                    .unwrap_or(HANDSHAKE_BYTES_MAX_DEFAULT),
                HANDSHAKE_BYTES_MAX_RANGE,
            )?,
            jwt_secret: jwt_secret(args.jwt_secret)?,
            api_token: api_token(args.api_token)?,
            data_dir: args
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT)),
            queue_max_per_user: in_range(
                "queue-max-per-user",
                setting(args.queue_max_per_user, QUEUE_MAX_PER_USER_DEFAULT),
                QUEUE_MAX_PER_USER_RANGE,
            )?,
            retention: retention(args.retention_days)?,
            store_cache_bytes: store_cache_bytes(args.store_cache_mb)?,
            push_webhook: match args.push_webhook {
                Some(url) => Some(
                    crate::push::Webhook::parse(&url).map_err(|e| invalid("push-webhook", e))?,
                ),
                None => None,
            },
            push_preview: args.push_preview.unwrap_or(false),
            outbound_bytes_max: in_range(
                "outbound-bytes-max",
                args.outbound_bytes_max
                    .unwrap_or(OUTBOUND_BYTES_MAX_DEFAULT),
                OUTBOUND_BYTES_MAX_RANGE,
            )?,
            drain_secs: in_range("drain-secs", setting(args.drain_secs, 0), (0, 3600))?,
            max_connections: setting(args.max_connections, 0),
            max_connections_per_reactor: setting(args.max_connections_per_reactor, 0),
            rate_limit: in_range(
                "rate-limit",
                args.rate_limit.unwrap_or(RATE_LIMIT_DEFAULT),
                (0, RATE_LIMIT_MAX),
            )?,
            idle_timeout_ms: idle_timeout_ms(args.idle_timeout_ms)?,
            groups_per_user_max: in_range(
                "groups-per-user-max",
                args.groups_per_user_max
                    .unwrap_or(GROUPS_PER_USER_MAX_DEFAULT),
                GROUPS_PER_USER_MAX_RANGE,
            )?,
            failpoint: None,
            shutdown_timeout_ms: in_range(
                "shutdown-timeout-ms",
                setting(args.shutdown_timeout_ms, SHUTDOWN_TIMEOUT_MS_DEFAULT),
                (0, 600_000),
            )?,
            log_level: log_level(args.log_level)?,
        })
    }
}

/// `--retention-days`, as a duration.
fn retention(days: Option<f64>) -> Result<std::time::Duration, ConfigError> {
    let days = in_range(
        "retention-days",
        days.unwrap_or(RETENTION_DAYS_DEFAULT),
        RETENTION_DAYS_RANGE,
    )?;
    if !days.is_finite() {
        return Err(invalid("retention-days", "must be a number of days"));
    }
    Ok(std::time::Duration::from_secs_f64(days * 86_400.0))
}

/// `--store-cache-mb`, in bytes.
fn store_cache_bytes(mb: Option<u64>) -> Result<usize, ConfigError> {
    let mb = mb.unwrap_or(STORE_CACHE_MB_DEFAULT);
    Ok((in_range("store-cache-mb", mb, STORE_CACHE_MB_RANGE)? << 20) as usize)
}

/// `--jwt-secret`: non-empty when given.
fn jwt_secret(secret: Option<String>) -> Result<Option<Vec<u8>>, ConfigError> {
    match secret {
        Some(secret) if secret.is_empty() => Err(invalid("jwt-secret", "must not be empty")),
        secret => Ok(secret.map(String::into_bytes)),
    }
}

/// `--api-token`: non-empty and without whitespace when given.
fn api_token(token: Option<String>) -> Result<Option<String>, ConfigError> {
    match token {
        Some(token) if token.is_empty() || token.chars().any(char::is_whitespace) => Err(invalid(
            "api-token",
            "must be non-empty and contain no whitespace",
        )),
        token => Ok(token),
    }
}

/// `--idle-timeout-ms`: 0 (never) or at least a second.
fn idle_timeout_ms(value: Option<u64>) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(IDLE_TIMEOUT_MS_DEFAULT);
    if value != 0 && value < 1000 {
        return Err(invalid(
            "idle-timeout-ms",
            "must be 0 (never) or at least 1000",
        ));
    }
    Ok(value)
}

/// `--log-level`: a tracing filter.
fn log_level(value: Option<String>) -> Result<String, ConfigError> {
    let level = value.unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::EnvFilter::try_new(&level)
        .map_err(|e| invalid("log-level", format!("'{level}' is not a log filter: {e}")))?;
    Ok(level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
