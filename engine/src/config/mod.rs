//! Start-up configuration: command line, `ENGINE_*` environment variables, an optional TOML
//! file, and defaults, in that order of precedence. Validated once; the reactors never parse.
//!
//! - `settings`: every setting declared once (flag, variable, file key, default, range,
//!   help), and the command line, file shape and defaults made from it.
//! - here: [`Config`], what the engine runs with, and [`Config::resolve`], which reads
//!   the file and converts the settled values (and checks what a range cannot say).

mod settings;

use std::{net::SocketAddr, path::PathBuf};

use crate::sockets::Placement;
pub use settings::{Args, Command, Setting, SETTINGS};
use settings::{FileConfig, Settled};

/// Whose presence a watcher may see (`--presence-visibility`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PresenceVisibility {
    /// Only users who share a group with the watcher (and the watcher itself).
    Shared,
    /// Every user (v1).
    All,
}

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
    /// TLS on the listen port (`--tls-cert`, `--tls-key`); `None`: plain TCP.
    pub tls: Option<std::sync::Arc<crate::tls::Certificates>>,
    /// The auth token checker; `None` is open mode.
    pub jwt: Option<std::sync::Arc<crate::protocol::jwt::Verifier>>,
    /// Bearer token for `/api/*`; `None` leaves the API open.
    pub api_token: Option<String>,
    /// `--allow-open`: open mode or an open API is meant for any host that reaches it
    /// (off loopback, and by any host name).
    pub allow_open: bool,
    /// The web pages whose upgrades and API calls are taken; `None`: every page.
    pub allowed_origins: Option<crate::http::origin::AllowedOrigins>,
    /// Where the durable store keeps its file.
    pub data_dir: PathBuf,
    /// Bound on one user's offline queue.
    pub queue_max_per_user: u64,
    /// Messages one sender may queue for one offline user (0: no bound).
    pub queue_max_per_sender: u32,
    /// How long queued messages and history are kept.
    pub retention: std::time::Duration,
    /// Bytes of the store's page cache.
    pub store_cache_bytes: usize,
    /// Least time between the starts of two store commits.
    pub store_commit_spacing: std::time::Duration,
    /// Where push notifications for offline users go, if anywhere.
    pub push_webhook: Option<crate::push::Webhook>,
    /// Whether they carry the start of the text.
    pub push_preview: bool,
    /// Where batches of events go (`--events-webhook`), if anywhere.
    pub events_webhook: Option<crate::push::Webhook>,
    /// The cluster to join (`--cluster`, `--node-id`), if any.
    pub cluster: Option<crate::cluster::Settings>,
    /// Unsent bytes one connection may have before it is closed as a slow consumer.
    pub outbound_bytes_max: usize,
    /// Seconds over which a drain spreads its closes (0: all at once).
    pub drain_secs: u64,
    /// Open connections in all before upgrades are refused (0: no cap).
    pub max_connections: u64,
    /// Open connections per reactor before its upgrades are refused (0: no cap).
    pub max_connections_per_reactor: u64,
    /// Unauthenticated connections one address may hold (0: no cap).
    pub max_pending_per_ip: u32,
    /// Connections one address may open a second (0: no cap).
    pub connects_per_ip_per_sec: u32,
    /// Client messages per second per connection (0: no limit).
    pub rate_limit: u8,
    /// Client messages per second a connection's input is read at (0: no pace).
    pub message_pace: u8,
    /// Silence after which a connection is pinged, then closed (0: never).
    pub idle_timeout_ms: u64,
    /// How long a user whose last device dropped stays shown online (0: not at all).
    pub presence_grace_ms: u64,
    /// Whose presence a watcher may see.
    pub presence_visibility: PresenceVisibility,
    /// Whether authenticated WebSockets move to their user's home reactor.
    pub connections_at_home: bool,
    /// `--dedup-window-pairs`: recent message pairs each home remembers.
    pub dedup_window_pairs: usize,
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

    /// Converts merged settings, their defaults applied and ranges checked (and reads no
    /// environment, so `Config::default` is the defaults alone).
    fn resolve_merged(args: Args) -> Result<Config, ConfigError> {
        let settled: Settled = args.settle()?;
        let listen = settled.listen.parse().map_err(|_| {
            let problem = format!("'{}' is not an IP:port address", settled.listen);
            invalid("listen", problem)
        })?;
        let jwt = jwt_verifier(
            jwt_secret(settled.jwt_secret)?,
            (settled.jwt_public_key, settled.jwt_jwks),
            !settled.jwt_exp_optional,
        )?;
        let api_token = api_token(settled.api_token)?;
        refuse_open_off_loopback(
            listen,
            (jwt.is_some(), api_token.is_some()),
            settled.allow_open,
        )?;
        Ok(Config {
            listen,
            reactors: settled.reactors,
            socket_placement: settled.sockets,
            max_message_bytes: settled.max_message_bytes,
            auth_timeout_ms: settled.auth_timeout_ms,
            handshake_timeout_ms: settled.handshake_timeout_ms,
            handshake_bytes_max: settled.handshake_bytes_max,
            tls: tls_certificates(settled.tls_cert, settled.tls_key)?,
            jwt,
            api_token,
            allow_open: settled.allow_open,
            allowed_origins: match settled.allowed_origins {
                Some(list) => Some(
                    crate::http::origin::AllowedOrigins::parse(&list)
                        .map_err(|e| invalid("allowed-origins", e))?,
                ),
                None => None,
            },
            data_dir: settled.data_dir,
            queue_max_per_user: settled.queue_max_per_user,
            queue_max_per_sender: settled.queue_max_per_sender,
            retention: retention(settled.retention_days)?,
            store_cache_bytes: (settled.store_cache_mb << 20) as usize,
            store_commit_spacing: std::time::Duration::from_micros(settled.store_commit_spacing_us),
            push_webhook: webhook(
                (settled.push_webhook, settled.push_secret, settled.push_ca),
                crate::push::PUSH_FLAGS,
            )
            .map_err(|(flag, problem)| invalid(flag, problem))?,
            events_webhook: webhook(
                (
                    settled.events_webhook,
                    settled.events_secret,
                    settled.events_ca,
                ),
                crate::push::EVENTS_FLAGS,
            )
            .map_err(|(flag, problem)| invalid(flag, problem))?,
            push_preview: settled.push_preview,
            cluster: cluster_settings(
                (settled.cluster, settled.node_id),
                (settled.cluster_replicas, settled.cluster_shards),
                (
                    settled.cluster_ca,
                    settled.cluster_cert,
                    settled.cluster_key,
                ),
            )
            .map_err(|(flag, problem)| invalid(flag, problem))?,
            outbound_bytes_max: settled.outbound_bytes_max,
            drain_secs: settled.drain_secs,
            max_connections: settled.max_connections,
            max_connections_per_reactor: settled.max_connections_per_reactor,
            max_pending_per_ip: settled.max_pending_per_ip,
            connects_per_ip_per_sec: settled.connects_per_ip_per_sec,
            rate_limit: settled.rate_limit,
            message_pace: settled.message_pace,
            idle_timeout_ms: idle_timeout_ms(settled.idle_timeout_ms)?,
            presence_grace_ms: settled.presence_grace_ms,
            presence_visibility: settled.presence_visibility,
            connections_at_home: settled.connections_at_home,
            dedup_window_pairs: settled.dedup_window_pairs,
            groups_per_user_max: settled.groups_per_user_max,
            failpoint: None,
            shutdown_timeout_ms: settled.shutdown_timeout_ms,
            log_level: log_level(settled.log_level)?,
        })
    }
}

/// `--cluster` and the flags that only mean something with it; an error names the flag.
fn cluster_settings(
    (cluster, node_id): (Option<String>, Option<String>),
    (replicas, shards): (u8, u16),
    (ca, cert, key): (Option<String>, Option<String>, Option<String>),
) -> Result<Option<crate::cluster::Settings>, (&'static str, String)> {
    let Some(settings) = crate::cluster::Settings::parse(cluster, node_id)? else {
        let tls_flag = [
            ("cluster-ca", &ca),
            ("cluster-cert", &cert),
            ("cluster-key", &key),
        ]
        .into_iter()
        .find(|(_, value)| value.is_some());
        return match tls_flag {
            Some((flag, _)) => Err((flag, "needs --cluster".into())),
            None => Ok(None),
        };
    };
    let tls = crate::cluster::TlsFiles::parse(ca, cert, key)?;
    Ok(Some(crate::cluster::Settings {
        replicas,
        shards: crate::cluster::Shards::new(shards),
        tls,
        ..settings
    }))
}

/// A hook's webhook with its secret and authorities (which need it), as `flags` name
/// them (`--push-webhook`, `--events-webhook`); an error names the flag.
fn webhook(
    (url, secret, ca): (Option<String>, Option<String>, Option<String>),
    flags: crate::push::HookFlags,
) -> Result<Option<crate::push::Webhook>, (&'static str, String)> {
    let needs = || format!("needs --{}", flags[0]);
    match url {
        Some(url) => crate::push::Webhook::parse(&url, secret, ca.as_deref(), flags).map(Some),
        None if secret.is_some() => Err((flags[1], needs())),
        None if ca.is_some() => Err((flags[2], needs())),
        None => Ok(None),
    }
}

/// `--tls-cert` and `--tls-key`, loaded (both or neither).
fn tls_certificates(
    cert: Option<String>,
    key: Option<String>,
) -> Result<Option<std::sync::Arc<crate::tls::Certificates>>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => crate::tls::Certificates::load(cert.as_ref(), key.as_ref())
            .map(|c| Some(std::sync::Arc::new(c)))
            .map_err(|e| invalid("tls-cert", e)),
        (Some(_), None) => Err(invalid("tls-key", "--tls-cert needs it")),
        (None, Some(_)) => Err(invalid("tls-cert", "--tls-key needs it")),
        (None, None) => Ok(None),
    }
}

/// `--retention-days`, as a duration.
fn retention(days: f64) -> Result<std::time::Duration, ConfigError> {
    if !days.is_finite() {
        return Err(invalid("retention-days", "must be a number of days"));
    }
    Ok(std::time::Duration::from_secs_f64(days * 86_400.0))
}

/// Open mode or an open API on an address other hosts can reach stops start-up unless
/// `--allow-open` says it is meant (PROTOCOL.md v2): on loopback only this host's
/// programs can reach them, which is the quick start.
fn refuse_open_off_loopback(
    listen: SocketAddr,
    (tokens_checked, api_guarded): (bool, bool),
    allow_open: bool,
) -> Result<(), ConfigError> {
    if allow_open || listen.ip().is_loopback() {
        return Ok(());
    }
    let open: Vec<&str> = [
        (
            !tokens_checked,
            "--jwt-secret, --jwt-public-key or --jwt-jwks (without them any client may claim \
             any userId)",
        ),
        (
            !api_guarded,
            "--api-token (without it anyone may use /api/*)",
        ),
    ]
    .into_iter()
    .filter_map(|(missing, flag)| missing.then_some(flag))
    .collect();
    if open.is_empty() {
        return Ok(());
    }
    Err(invalid(
        "listen",
        format!(
            "{listen} is not a loopback address, so other hosts can reach it; set {}, or give \
             --allow-open to serve it open",
            open.join(" and ")
        ),
    ))
}

/// `--jwt-secret`: at least [`SECRET_BYTES_MIN`](crate::protocol::jwt::SECRET_BYTES_MIN)
/// bytes when given (a short HS256 secret falls to an offline guess from any one token).
fn jwt_secret(secret: Option<String>) -> Result<Option<Vec<u8>>, ConfigError> {
    use crate::protocol::jwt::SECRET_BYTES_MIN;
    match secret {
        Some(secret) if secret.len() < SECRET_BYTES_MIN => Err(invalid(
            "jwt-secret",
            format!(
                "must be at least {SECRET_BYTES_MIN} bytes (got {}); `openssl rand -base64 32` \
                 makes one",
                secret.len()
            ),
        )),
        secret => Ok(secret.map(String::into_bytes)),
    }
}

/// The token checker from `--jwt-secret`, `--jwt-public-key` and `--jwt-jwks` (any of
/// them; none is open mode).
fn jwt_verifier(
    secret: Option<Vec<u8>>,
    (pem, jwks): (Option<PathBuf>, Option<PathBuf>),
    exp_required: bool,
) -> Result<Option<std::sync::Arc<crate::protocol::jwt::Verifier>>, ConfigError> {
    use crate::protocol::jwt::{keys, Verifier};
    let mut public = Vec::new();
    if let Some(path) = pem {
        public.extend(keys::from_pem_file(&path).map_err(|e| invalid("jwt-public-key", e))?);
    }
    if let Some(path) = jwks {
        public.extend(keys::from_jwks_file(&path).map_err(|e| invalid("jwt-jwks", e))?);
    }
    if secret.is_none() && public.is_empty() {
        if !exp_required {
            let problem =
                "needs --jwt-secret, --jwt-public-key or --jwt-jwks (open mode has no tokens)";
            return Err(invalid("jwt-exp-optional", problem));
        }
        return Ok(None);
    }
    let verifier = Verifier::new(secret, public, exp_required);
    Ok(Some(std::sync::Arc::new(verifier)))
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
fn idle_timeout_ms(value: u64) -> Result<u64, ConfigError> {
    if value != 0 && value < 1000 {
        return Err(invalid(
            "idle-timeout-ms",
            "must be 0 (never) or at least 1000",
        ));
    }
    Ok(value)
}

/// `--log-level`: a tracing filter.
fn log_level(level: String) -> Result<String, ConfigError> {
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
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.max_message_bytes, 65536);
        assert_eq!(
            config.retention,
            std::time::Duration::from_secs(30 * 86_400)
        );
        assert_eq!(config.store_cache_bytes, 128 << 20);
        assert_eq!(config.max_connections, 0);
        assert_eq!(config.log_level, "info");
        assert!(config.jwt.is_none());
        assert_eq!(config.presence_visibility, PresenceVisibility::Shared);
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
        for weak in ["", "secret", &"x".repeat(31)] {
            let err = Config::resolve(Args {
                jwt_secret: Some(weak.into()),
                ..Args::default()
            })
            .unwrap_err();
            assert!(err.to_string().starts_with("--jwt-secret:"), "{err}");
            assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        }
        let err = Config::resolve(Args {
            jwt_jwks: Some("/nonexistent/jwks.json".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--jwt-jwks:"), "{err}");
        let err = Config::resolve(Args {
            jwt_public_key: Some("/nonexistent/key.pem".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--jwt-public-key:"), "{err}");
        let err = Config::resolve(Args {
            jwt_exp_optional: Some(true),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--jwt-exp-optional:"), "{err}");
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
            push_webhook: Some("ftp://push.example/".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--push-webhook:"), "{err}");
        let err = Config::resolve(Args {
            push_secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--push-secret:"), "{err}");
        let err = Config::resolve(Args {
            log_level: Some("[[".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--log-level:"), "{err}");
    }

    const SECRET_OF_32: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn an_open_gateway_off_loopback_needs_allow_open() {
        let open_on = |listen: &str, secret: Option<&str>, token: Option<&str>, allow: bool| {
            Config::resolve(Args {
                listen: Some(listen.into()),
                jwt_secret: secret.map(Into::into),
                api_token: token.map(Into::into),
                allow_open: Some(allow),
                ..Args::default()
            })
        };
        for listen in ["127.0.0.1:0", "127.9.9.9:80", "[::1]:8080"] {
            assert!(open_on(listen, None, None, false).is_ok(), "{listen}");
        }
        let err = open_on("0.0.0.0:8080", None, None, false).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("--listen:"), "{text}");
        assert!(
            text.contains("--jwt-secret") && text.contains("--api-token"),
            "{text}"
        );
        assert!(text.contains("--allow-open"), "{text}");
        let err = open_on("[::]:8080", Some(SECRET_OF_32), None, false).unwrap_err();
        assert!(!err.to_string().contains("--jwt-secret"), "{err}");
        assert!(err.to_string().contains("--api-token"), "{err}");
        let err = open_on("10.0.0.5:8080", None, Some("t"), false).unwrap_err();
        assert!(err.to_string().contains("--jwt-secret"), "{err}");
        assert!(open_on("0.0.0.0:8080", Some(SECRET_OF_32), Some("t"), false).is_ok());
        assert!(open_on("0.0.0.0:8080", None, None, true).is_ok());
    }

    #[test]
    fn allowed_origins_are_parsed_and_bad_ones_name_the_flag() {
        let config = Config::resolve(Args {
            allowed_origins: Some("https://a.example,http://localhost:3000".into()),
            ..Args::default()
        })
        .unwrap();
        let origins = config.allowed_origins.unwrap();
        assert!(origins.permits(Some("https://a.example")));
        assert!(!origins.permits(Some("https://b.example")));
        let err = Config::resolve(Args {
            allowed_origins: Some("a.example".into()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("--allowed-origins:"), "{err}");
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
