//! Every setting, declared once: its field (which is its TOML key, and as a flag with
//! dashes its `--name`), type, `ENGINE_*` variable, value name, default, range and help.
//! From the one declaration come the command line ([`Args`]), the `--config` file's
//! shape, the merge of the two (a flag or variable beats the file), the defaults and
//! ranges applied ([`Settled`]), and the table [`SETTINGS`] that the README's flag table
//! is checked against. [`super::Config::resolve`] only converts the settled values into
//! what the engine runs with (and checks what a range cannot say).
//!
//! A default is written once, as documented: `"65536"` is parsed into the setting's
//! type, `"0 (none)"` by its first word; `"none"` leaves the setting optional; and a
//! default that is not a constant (`"cores"`) gives the expression that computes it.

use std::{path::PathBuf, str::FromStr};

use clap::Parser;
use serde::Deserialize;

use super::{in_range, ConfigError, PresenceVisibility, REACTORS_MAX};
use crate::sockets::Placement;

/// One setting as documented (the README's flag table is checked against these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The flag, without dashes (`max-message-bytes`); the TOML key is the same with
    /// underscores.
    pub flag: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The value's name in the help (`BYTES`).
    pub value: &'static str,
    /// The default, as documented (`65536`, `cores`, `none`).
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
}

/// Declares the settings: see the module doc.
macro_rules! settings {
    (
        $(
            #[doc = $help:literal]
            $field:ident: $ty:ty, $env:literal, $value:literal,
                default $default:tt $(= $computed:expr)?
                $(, range $range:expr)?
                $(, clap($($extra:tt)*))?;
        )+
    ) => {
        /// The command line. Every flag can also come from its `ENGINE_*` variable or the
        /// TOML file given with `--config`.
        #[derive(Debug, Parser, Default)]
        #[command(
            name = "engine",
            version,
            about = "Thread-per-core io_uring WebSocket chat gateway"
        )]
        pub struct Args {
            $(
                #[doc = $help]
                #[arg(
                    long,
                    env = $env,
                    value_name = $value,
                    help = concat!($help, " [default: ", $default, "]")
                    $(, $($extra)*)?
                )]
                pub $field: Option<$ty>,
            )+
            /// TOML file with any of the settings above (snake_case keys); flags and
            /// environment variables override it
            #[arg(long, env = "ENGINE_CONFIG", value_name = "FILE")]
            pub config: Option<PathBuf>,
            /// Instead of serving: a tool to run
            #[command(subcommand)]
            pub command: Option<Command>,
        }

        /// The `--config` file's shape: the same settings, snake_case.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct FileConfig {
            $( $field: Option<$ty>, )+
        }

        /// Every setting with its default applied and its range checked.
        #[derive(Debug)]
        pub(super) struct Settled {
            $(
                #[doc = $help]
                pub $field: settled_type!($ty, $default),
            )+
        }

        impl Args {
            /// Each setting from the flags or environment, else from the file.
            pub(super) fn or_file(self, file: FileConfig) -> Args {
                Args {
                    $( $field: self.$field.or(file.$field), )+
                    config: self.config,
                    command: self.command,
                }
            }

            /// Applies the defaults and checks the ranges.
            pub(super) fn settle(self) -> Result<Settled, ConfigError> {
                Ok(Settled {
                    $(
                        $field: settle!(
                            self.$field, kebab!($field), $default, [$($computed)?], [$($range)?]
                        )?,
                    )+
                })
            }
        }

        /// Every setting, in the order of the declaration (and of the README's table).
        pub const SETTINGS: &[Setting] = &[
            $(
                Setting {
                    flag: kebab!($field),
                    env: $env,
                    value: $value,
                    default: $default,
                    help: $help,
                },
            )+
        ];
    };
}

/// A setting's type once settled: optional when its default is `"none"`.
macro_rules! settled_type {
    ($ty:ty, "none") => { Option<$ty> };
    ($ty:ty, $default:tt) => { $ty };
}

/// One setting's value: given, else its default; then its range, if it has one.
macro_rules! settle {
    ($given:expr, $flag:expr, "none", [], []) => {
        Ok::<_, ConfigError>($given)
    };
    ($given:expr, $flag:expr, $default:tt, [$computed:expr], [$($range:expr)?]) => {{
        let value = $given.unwrap_or_else(|| $computed);
        settle!(@range $flag, value $(, $range)?)
    }};
    ($given:expr, $flag:expr, $default:tt, [], [$($range:expr)?]) => {{
        let value = $given.unwrap_or_else(|| documented_default($flag, $default));
        settle!(@range $flag, value $(, $range)?)
    }};
    (@range $flag:expr, $value:ident) => {
        Ok::<_, ConfigError>($value)
    };
    (@range $flag:expr, $value:ident, $range:expr) => {
        in_range($flag, $value, $range)
    };
}

/// A default as documented, parsed: its first word (`"0 (none)"` is 0). The declaration
/// is checked by the tests, which resolve every default.
fn documented_default<T: FromStr>(flag: &str, text: &str) -> T {
    let word = text.split(' ').next().unwrap_or(text);
    word.parse()
        .unwrap_or_else(|_| panic!("--{flag}: the documented default '{text}' does not parse"))
}

/// A field's name as its flag: `max_message_bytes` → `max-message-bytes`.
macro_rules! kebab {
    ($field:ident) => {{
        const NAME: &str = stringify!($field);
        const BYTES: [u8; NAME.len()] = {
            let mut bytes = [0u8; NAME.len()];
            let mut i = 0;
            while i < NAME.len() {
                let b = NAME.as_bytes()[i];
                bytes[i] = if b == b'_' { b'-' } else { b };
                i += 1;
            }
            bytes
        };
        match std::str::from_utf8(&BYTES) {
            Ok(flag) => flag,
            Err(_) => panic!("a field name is ASCII"),
        }
    }};
}

settings! {
    // Loopback, so that a gateway started without secrets serves only this host
    // (PROTOCOL.md v2, "Transport security and safe defaults").
    /// Address to listen on for WebSocket and HTTP; off loopback it needs --jwt-secret and --api-token, or --allow-open
    listen: String, "ENGINE_LISTEN", "ADDR", default "127.0.0.1:8080";
    /// Reactor threads, each pinned with its own listener and fd table
    reactors: usize, "ENGINE_REACTORS", "N", default "cores" = default_reactors(),
        range (1, REACTORS_MAX);
    /// Where sockets live: io_uring direct descriptors (in no fd table, so one reactor holds far more than RLIMIT_NOFILE), the fd table with epoll, or auto (direct where the kernel allows)
    sockets: Placement, "ENGINE_SOCKETS", "PLACEMENT", default "auto" = Placement::Auto,
        clap(value_enum);
    // 64 KiB (PROTOCOL.md `max_message_size`): small enough that a malicious client cannot
    // make one connection hold much memory; a control frame's 125 bytes up to 16 MiB.
    /// Largest WebSocket frame or message accepted; larger ones close with 1009
    max_message_bytes: usize, "ENGINE_MAX_MESSAGE_BYTES", "BYTES", default "65536",
        range (125, 16 << 20);
    // 10 s (PROTOCOL.md); at least one timer tick, at most 10 minutes.
    /// Time to send `auth` after the WebSocket upgrade before the close with 4001
    auth_timeout_ms: u64, "ENGINE_AUTH_TIMEOUT_MS", "MS", default "10000",
        range (100, 600_000);
    /// Time from connecting to a complete HTTP request head (the upgrade, or between kept-alive requests) before the socket is closed
    handshake_timeout_ms: u64, "ENGINE_HANDSHAKE_TIMEOUT_MS", "MS", default "5000",
        range (100, 600_000);
    // 8 KiB, as common servers do. A minimal upgrade needs about 200 bytes; the read
    // buffer holds 64 KiB.
    /// Largest HTTP request head (request line and headers, the upgrade included); larger ones get 431
    handshake_bytes_max: usize, "ENGINE_HANDSHAKE_BYTES_MAX", "BYTES", default "8192",
        range (512, 64 << 10);
    // RFC 7518 §3.2: an HS256 key at least as long as the hash (32 bytes).
    /// HS256 secret for auth tokens, at least 32 bytes; without it, --jwt-public-key and --jwt-jwks the gateway runs in open mode (trusts userId)
    jwt_secret: String, "ENGINE_JWT_SECRET", "SECRET", default "none", clap(hide_env_values = true);
    /// PEM file of public keys auth tokens may be signed with: RSA of 2048 bits or more (RS256), EC P-256 (ES256)
    jwt_public_key: PathBuf, "ENGINE_JWT_PUBLIC_KEY", "FILE", default "none";
    /// JSON Web Key Set file (RFC 7517) of the RS256 and ES256 keys auth tokens may be signed with, chosen by the token's kid
    jwt_jwks: PathBuf, "ENGINE_JWT_JWKS", "FILE", default "none";
    /// Take auth tokens without exp (sessions that never expire); without it such tokens fail auth
    jwt_exp_optional: bool, "ENGINE_JWT_EXP_OPTIONAL", "BOOL", default "false",
        clap(num_args = 0..=1, default_missing_value = "true");
    /// Bearer token the HTTP API (`/api/*`) requires; without one the API is open
    api_token: String, "ENGINE_API_TOKEN", "TOKEN", default "none", clap(hide_env_values = true);
    /// Serve open mode (no --jwt-secret) or an open API (no --api-token) on an address that is not loopback
    allow_open: bool, "ENGINE_ALLOW_OPEN", "BOOL", default "false",
        clap(num_args = 0..=1, default_missing_value = "true");
    /// Web page origins (`https://host:port`, comma-separated) whose WebSocket upgrades and API calls are taken; others get 403; none: every origin
    allowed_origins: String, "ENGINE_ALLOWED_ORIGINS", "ORIGINS", default "none";
    /// PEM certificate chain (ECDSA, RSA or Ed25519 key) to serve TLS 1.3 on the listen port with, with --tls-key; reread on SIGHUP
    tls_cert: String, "ENGINE_TLS_CERT", "FILE", default "none";
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1); reread on SIGHUP
    tls_key: String, "ENGINE_TLS_KEY", "FILE", default "none";
    /// Directory of the durable store (offline queues, history, groups)
    data_dir: PathBuf, "ENGINE_DATA_DIR", "DIR", default "./data";
    // PROTOCOL.md `message_queue_max_size`.
    /// Unacknowledged inbox events one user may have (queue_full past it; devices that leave this many unacked are closed, 4002)
    queue_max_per_user: u64, "ENGINE_QUEUE_MAX_PER_USER", "N", default "10000",
        range (1, 10_000_000);
    // A tenth of the default inbox bound: one sender cannot fill another user's queue.
    /// Messages one sender may leave waiting for a user with no device online, counted until the user connects (in a cluster, by each node, until the user reads one; 0: no bound); more are rejected with sender_quota
    queue_max_per_sender: u32, "ENGINE_QUEUE_MAX_PER_SENDER", "N", default "1000";
    // Fractions allowed: 0.5 is twelve hours.
    /// Days a queued message and history are kept before they expire (fractions allowed)
    retention_days: f64, "ENGINE_RETENTION_DAYS", "DAYS", default "30",
        range (0.000_01, 3650.0);
    // At least 1 MiB, so that a 256 KiB part of an offline queue always fits.
    /// Unsent bytes one connection may have queued before it is closed as a slow consumer (4002)
    outbound_bytes_max: usize, "ENGINE_OUTBOUND_BYTES_MAX", "BYTES", default "4194304",
        range (1 << 20, 1 << 30);
    /// Open connections the engine takes in all; past it an upgrade is answered 503 (0: no cap)
    max_connections: u64, "ENGINE_MAX_CONNECTIONS", "N", default "0 (none)";
    /// Open connections one reactor takes; past it an upgrade is answered 503 (0: no cap)
    max_connections_per_reactor: u64, "ENGINE_MAX_CONNECTIONS_PER_REACTOR", "N", default "0 (none)";
    // Issue 22: what one address may hold without a token. Generous, for NATs.
    /// Connections one address may hold that have not authenticated (HTTP requests, WebSockets before auth); past it a new one is closed as it is accepted (0: no cap; loopback never counts)
    max_pending_per_ip: u32, "ENGINE_MAX_PENDING_PER_IP", "N", default "256";
    /// Connections one address may open a second; past it a new one is closed as it is accepted (0: no cap; loopback never counts)
    connects_per_ip_per_sec: u32, "ENGINE_CONNECTS_PER_IP_PER_SEC", "N", default "200";
    // None by default: a client flushing its outbox after a reconnect sends hundreds at
    // once; operators who want a bound set one. A connection's count is one byte and
    // closes at twice the limit, so 127 at most.
    /// Client messages per second one connection may send (1-127; 0: no limit); more get rate_limited, twice as many close it with 1008
    rate_limit: u8, "ENGINE_RATE_LIMIT", "N", default "0 (none)", range (0, 127);
    // Paced, not refused: a client flushing its outbox after a reconnect is read at this
    // rate and loses nothing, while a flood waits in its own socket (issue 22).
    /// Client messages per second one connection's input is read at (1-255; 0: as fast as it comes); past it, reading pauses until the next second, nothing dropped
    message_pace: u8, "ENGINE_MESSAGE_PACE", "N", default "100";
    // Group creation is open (a join creates), so without a bound one client could grow
    // the groups and the store forever.
    /// Groups one user may be in; a join past it gets `too_many_groups`
    groups_per_user_max: u32, "ENGINE_GROUPS_PER_USER_MAX", "N", default "1000",
        range (1, 1_000_000);
    // 16,384 pairs cover about 3 s of 5,000 msg/s per home; at most 130 B a pair.
    /// Recent (senderId, messageId) pairs each home reactor remembers (for at most 5 min), so a client's retry is acknowledged again but not delivered twice; at most 130 B a pair
    dedup_window_pairs: usize, "ENGINE_DEDUP_WINDOW_PAIRS", "N", default "16384",
        range (1024, 16_777_216);
    /// A connection silent this long is pinged, and closed (1001) if still silent half as long again (0: never)
    idle_timeout_ms: u64, "ENGINE_IDLE_TIMEOUT_MS", "MS", default "60000";
    // PROTOCOL.md v2: reconnect churn must not flap presence; a close frame is immediate.
    /// A user whose last device drops without a close frame is shown offline only after this long (0: at once); a close frame makes it immediate
    presence_grace_ms: u64, "ENGINE_PRESENCE_GRACE_MS", "MS", default "30000",
        range (0, 3_600_000);
    // Shared by default: who is online is personal, and a gateway whose only relation
    // between users is a group shows it to those who share one (issue 22). `all` is v1.
    /// Whose presence a watcher may see: users who share a group with it (others are shown offline and never updated), or all
    presence_visibility: PresenceVisibility, "ENGINE_PRESENCE_VISIBILITY", "WHO",
        default "shared" = PresenceVisibility::Shared, clap(value_enum);
    // Issue 20: a message between two online devices then crosses one reactor at most,
    // and its ack none.
    /// Move each authenticated WebSocket to its user's home reactor, so that the user's deliveries and acks stay on one thread
    connections_at_home: bool, "ENGINE_CONNECTIONS_AT_HOME", "BOOL", default "true",
        clap(num_args = 0..=1, default_missing_value = "true");
    /// http:// or https:// URL to POST a small JSON to when a message is queued for a user with no device online
    push_webhook: String, "ENGINE_PUSH_WEBHOOK", "URL", default "none";
    /// Secret (at least 32 bytes) that signs each push body with HMAC-SHA256 in the X-Engine-Signature header
    push_secret: String, "ENGINE_PUSH_SECRET", "SECRET", default "none", clap(hide_env_values = true);
    /// PEM certificates of the authorities an https:// push webhook's certificate may chain to; none: the Mozilla roots built in
    push_ca: String, "ENGINE_PUSH_CA", "FILE", default "none";
    /// Include the start of the message text in push notifications
    push_preview: bool, "ENGINE_PUSH_PREVIEW", "BOOL", default "false",
        clap(num_args = 0..=1, default_missing_value = "true");
    /// http:// or https:// URL to POST batches of events to: users online and offline, group members, connections closed
    events_webhook: String, "ENGINE_EVENTS_WEBHOOK", "URL", default "none";
    /// Secret (at least 32 bytes) that signs each events body as --push-secret signs pushes
    events_secret: String, "ENGINE_EVENTS_SECRET", "SECRET", default "none", clap(hide_env_values = true);
    /// PEM certificates of the authorities an https:// events webhook's certificate may chain to; none: the Mozilla roots built in
    events_ca: String, "ENGINE_EVENTS_CA", "FILE", default "none";
    // redb's own default is 1 GiB.
    /// Memory for the store's page cache, in MiB
    store_cache_mb: u64, "ENGINE_STORE_CACHE_MB", "MIB", default "128", range (4, 1 << 20);
    // Issue 20: a commit per few messages cost a fdatasync each (benches/RESULTS.md).
    /// Least time between the starts of two store commits, so that what comes meanwhile shares one fdatasync (0: commit as soon as a command comes)
    store_commit_spacing_us: u64, "ENGINE_STORE_COMMIT_SPACING_US", "US", default "1000",
        range (0, 100_000);
    // PROTOCOL.md "Clusters"; docs/cluster.md.
    /// NATS servers (JetStream enabled) to join a cluster through, comma-separated nats://HOST:PORT URLs; without them the gateway runs alone
    cluster: String, "ENGINE_CLUSTER", "URLS", default "none";
    /// This node's name in the cluster (letters, digits, - and _; at most 64); none: the host name and the listen port
    node_id: String, "ENGINE_NODE_ID", "ID", default "none";
    /// Copies JetStream keeps of each stream the cluster makes (inboxes, history, buckets); more than 1 needs a NATS cluster of as many servers
    cluster_replicas: u8, "ENGINE_CLUSTER_REPLICAS", "N", default "1", range (1, 5);
    // docs/cluster.md "Shards": fixed for the life of the cluster's JetStream data.
    /// Streams of each kind (inboxes, their records, the message index, history) the cluster splits its users over, so their leaders spread over a NATS cluster's servers; every node must say the same
    cluster_shards: u16, "ENGINE_CLUSTER_SHARDS", "N", default "6", range (1, crate::cluster::SHARDS_MAX);
    /// PEM certificates of the authorities that sign the NATS servers' (TLS to NATS: tls:// URLs, or servers that require it); none: the system's
    cluster_ca: String, "ENGINE_CLUSTER_CA", "FILE", default "none";
    /// PEM certificate chain this node proves itself with to NATS servers that verify clients (with --cluster-key)
    cluster_cert: String, "ENGINE_CLUSTER_CERT", "FILE", default "none";
    /// PEM private key of --cluster-cert
    cluster_key: String, "ENGINE_CLUSTER_KEY", "FILE", default "none";
    /// On SIGTERM, spread the 1001 closes over this many seconds, in random order, so clients do not all reconnect at once (0: close all at once)
    drain_secs: u64, "ENGINE_DRAIN_SECS", "S", default "0", range (0, 3600);
    /// Bound on a graceful shutdown (SIGTERM/SIGINT) before remaining sockets are dropped
    shutdown_timeout_ms: u64, "ENGINE_SHUTDOWN_TIMEOUT_MS", "MS", default "5000",
        range (0, 600_000);
    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    log_level: String, "ENGINE_LOG_LEVEL", "LEVEL", default "info";
}

/// One reactor per core, up to [`REACTORS_MAX`] (a bigger box runs that many).
fn default_reactors() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(REACTORS_MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_the_fields_with_dashes_and_each_is_declared_once() {
        let flags: Vec<&str> = SETTINGS.iter().map(|s| s.flag).collect();
        assert!(flags.contains(&"max-message-bytes"), "{flags:?}");
        let mut unique = flags.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), flags.len());
        for setting in SETTINGS {
            let env = format!("ENGINE_{}", setting.flag.replace('-', "_").to_uppercase());
            assert_eq!(setting.env, env, "{setting:?}");
        }
    }

    #[test]
    fn the_command_line_takes_every_declared_flag() {
        use clap::CommandFactory;
        let command = Args::command();
        for setting in SETTINGS {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(setting.flag))
                .unwrap_or_else(|| panic!("no --{}", setting.flag));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(setting.env));
        }
    }

    #[test]
    fn the_readme_flag_table_is_the_declaration() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let documented: Vec<(String, String, String)> = readme
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split(" | ").collect();
                let env = cells.get(1)?.trim_matches('`');
                if !line.starts_with("| `--") || !env.starts_with("ENGINE_") || cells.len() < 4 {
                    return None;
                }
                let flag = cells[0].trim_start_matches("| `--");
                let flag = flag.split([' ', '`']).next()?;
                Some((flag.into(), env.into(), cells[2].replace('`', "")))
            })
            .filter(|(flag, _, _)| flag != "config")
            .collect();
        let declared: Vec<(String, String, String)> = SETTINGS
            .iter()
            .map(|s| (s.flag.into(), s.env.into(), s.default.into()))
            .collect();
        assert_eq!(
            documented, declared,
            "README.md's flag table and SETTINGS differ"
        );
    }
}
