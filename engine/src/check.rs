//! `engine check`: reads the host's limits and predicts how many connections it can hold.
//!
//! Pure logic over a [`HostSnapshot`], which is read from `/proc` and the rlimits (or from a
//! recorded directory in tests), so the prediction is unit-tested on hosts we don't have.

use std::{fmt::Write as _, path::Path};

use crate::sockets::{direct::RINGS_MAX, Placement};

/// Kernel memory per idle loopback TCP socket, measured on the dev VM (DESIGN.md): 4.7 KiB.
pub const KERNEL_BYTES_PER_SOCKET: u64 = 4_813;
/// User-space bytes per idle connection: the engine's measured RSS delta at 10,000
/// (benches/idle_memory.py, about 390 B), rounded up.
pub const USER_BYTES_PER_CONNECTION: u64 = 400;
/// fds a reactor keeps for itself (listener, epoll, eventfds, io_uring).
pub const FDS_RESERVED_PER_REACTOR: u64 = 64;
/// Memory left to the rest of the system when predicting (1 GiB).
pub const MEMORY_RESERVE_BYTES: u64 = 1 << 30;

/// The host facts the prediction uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSnapshot {
    /// RLIMIT_NOFILE (soft, hard) of this process.
    pub nofile: (u64, u64),
    /// `fs.nr_open`: the most any process's RLIMIT_NOFILE may be raised to.
    pub nr_open: Option<u64>,
    /// `fs.file-max`: open files system-wide.
    pub file_max: Option<u64>,
    /// `net.core.somaxconn`: listen backlog cap.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<(u64, u64)>,
    /// `net.netfilter.nf_conntrack_max`, when conntrack is loaded.
    pub conntrack_max: Option<u64>,
    /// `MemAvailable` from /proc/meminfo, bytes.
    pub mem_available: Option<u64>,
    /// Online cores.
    pub cores: u64,
    /// `kernel.io_uring_disabled` (0 allowed, 1 root only, 2 off), when the kernel has it.
    pub io_uring_disabled: Option<u64>,
    /// Whether an io_uring could be set up here (probed on the live host only).
    pub io_uring_works: Option<bool>,
    /// Whether sockets can be io_uring direct descriptors here (probed on the live host).
    pub direct_sockets_work: Option<bool>,
}

fn read_u64s(root: &Path, path: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(root.join(path)).ok()?;
    text.split_whitespace().map(|v| v.parse().ok()).collect()
}

fn read_u64(root: &Path, path: &str) -> Option<u64> {
    read_u64s(root, path)?.first().copied()
}

impl HostSnapshot {
    /// Reads `/proc` under `root` (`/` for the live host) and the given rlimit and cores.
    pub fn read(root: &Path, nofile: (u64, u64), cores: u64) -> HostSnapshot {
        let mem_available = std::fs::read_to_string(root.join("proc/meminfo"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .map(|kb| kb * 1024)
            });
        HostSnapshot {
            nofile,
            nr_open: read_u64(root, "proc/sys/fs/nr_open"),
            file_max: read_u64(root, "proc/sys/fs/file-max"),
            somaxconn: read_u64(root, "proc/sys/net/core/somaxconn"),
            syn_backlog: read_u64(root, "proc/sys/net/ipv4/tcp_max_syn_backlog"),
            port_range: read_u64s(root, "proc/sys/net/ipv4/ip_local_port_range")
                .filter(|v| v.len() == 2)
                .map(|v| (v[0], v[1])),
            conntrack_max: read_u64(root, "proc/sys/net/netfilter/nf_conntrack_max"),
            mem_available,
            cores,
            io_uring_disabled: read_u64(root, "proc/sys/kernel/io_uring_disabled"),
            io_uring_works: None,
            direct_sockets_work: None,
        }
    }

    /// The live host.
    pub fn live() -> HostSnapshot {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap_or((0, 0));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let direct = crate::sockets::Sockets::new(Placement::Direct).is_ok();
        HostSnapshot {
            io_uring_works: Some(monoio::utils::detect_uring()),
            direct_sockets_work: Some(direct),
            ..HostSnapshot::read(Path::new("/"), nofile, cores)
        }
    }
}

/// One limit as it stands against the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// What it is.
    pub name: &'static str,
    /// Its current value, as text.
    pub current: String,
    /// Connections it allows (`None`: it does not cap the count, only rate or latency).
    pub ceiling: Option<u64>,
    /// Whether it keeps the target out of reach (or hurts it, for rate limits).
    pub problem: bool,
    /// The command or setting that fixes it.
    pub fix: String,
}

/// The verdict for `connections` on `reactors` reactors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Every limit considered.
    pub limits: Vec<Limit>,
    /// The smallest ceiling: the most connections this host can hold as set up now.
    pub ceiling: u64,
    /// The target.
    pub target: u64,
    /// Whether the sockets were taken to be io_uring direct descriptors (else fds).
    pub direct_sockets: bool,
}

impl Verdict {
    /// Whether the target is within reach.
    pub fn reachable(&self) -> bool {
        self.ceiling >= self.target
    }
}

/// Whether sockets will be direct descriptors on `host` with `placement`.
pub fn uses_direct_sockets(host: &HostSnapshot, placement: Placement) -> bool {
    match placement {
        Placement::Direct => true,
        Placement::FdTable => false,
        Placement::Auto => host.direct_sockets_work == Some(true),
    }
}

/// Evaluates the host for `connections` server-side connections on `reactors` reactors
/// whose sockets are placed as `placement` says.
pub fn evaluate(
    host: &HostSnapshot,
    connections: u64,
    reactors: u64,
    placement: Placement,
) -> Verdict {
    let mut limits = Vec::new();
    let direct_sockets = uses_direct_sockets(host, placement);
    if direct_sockets {
        direct_socket_limit(host, connections, reactors, &mut limits);
    } else {
        fd_table_limits(host, connections, reactors, &mut limits);
    }
    common_limits(host, connections, &mut limits);
    let ceiling = limits.iter().filter_map(|l| l.ceiling).min().unwrap_or(0);
    Verdict {
        limits,
        ceiling,
        target: connections,
        direct_sockets,
    }
}

/// Direct descriptors: each reactor has up to [`RINGS_MAX`] rings, each ring's file table
/// bounded by RLIMIT_NOFILE (the engine raises the soft limit to the hard one at start).
fn direct_socket_limit(
    host: &HostSnapshot,
    connections: u64,
    reactors: u64,
    limits: &mut Vec<Limit>,
) {
    let per_reactor = host.nofile.1 * RINGS_MAX as u64;
    let ceiling = per_reactor * reactors;
    limits.push(Limit {
        name: "RLIMIT_NOFILE (per io_uring table)",
        current: format!("soft {} hard {}", host.nofile.0, host.nofile.1),
        ceiling: Some(ceiling),
        problem: ceiling < connections,
        fix: format!(
            "run --reactors {} ({RINGS_MAX} file tables per reactor), or raise the hard limit",
            connections.div_ceil(per_reactor.max(1))
        ),
    });
}

/// The fd table: each reactor's private table is bounded by RLIMIT_NOFILE, which the engine
/// raises to the hard limit at start, and that by `fs.nr_open`.
fn fd_table_limits(host: &HostSnapshot, connections: u64, reactors: u64, limits: &mut Vec<Limit>) {
    let per_reactor = host.nofile.1.saturating_sub(FDS_RESERVED_PER_REACTOR);
    let fd_ceiling = per_reactor * reactors;
    let reactors_needed = connections.div_ceil(per_reactor.max(1));
    limits.push(Limit {
        name: "RLIMIT_NOFILE (per reactor)",
        current: format!("soft {} hard {}", host.nofile.0, host.nofile.1),
        ceiling: Some(fd_ceiling),
        problem: fd_ceiling < connections,
        fix: format!(
            "raise the hard limit (systemd LimitNOFILE={}, or limits.conf), or run --reactors {reactors_needed}",
            connections.div_ceil(reactors.max(1)) + FDS_RESERVED_PER_REACTOR
        ),
    });
    if let Some(nr_open) = host.nr_open {
        let needed = connections.div_ceil(reactors.max(1)) + FDS_RESERVED_PER_REACTOR;
        limits.push(Limit {
            name: "fs.nr_open",
            current: nr_open.to_string(),
            ceiling: Some(nr_open.saturating_sub(FDS_RESERVED_PER_REACTOR) * reactors),
            problem: nr_open < needed,
            fix: format!("sysctl -w fs.nr_open={}", needed.max(1_048_576)),
        });
    }
}

/// What caps the count, or the connect rate, whatever the sockets' placement.
fn common_limits(host: &HostSnapshot, connections: u64, limits: &mut Vec<Limit>) {
    if let Some(file_max) = host.file_max {
        limits.push(Limit {
            name: "fs.file-max",
            current: file_max.to_string(),
            ceiling: Some(file_max.saturating_sub(10_000)),
            problem: file_max.saturating_sub(10_000) < connections,
            fix: format!("sysctl -w fs.file-max={}", (connections * 2).max(2_097_152)),
        });
    }
    if let Some(conntrack) = host.conntrack_max {
        limits.push(Limit {
            name: "net.netfilter.nf_conntrack_max",
            current: conntrack.to_string(),
            ceiling: Some(conntrack),
            problem: conntrack < connections,
            fix: format!(
                "sysctl -w net.netfilter.nf_conntrack_max={}, or exempt the port: iptables -t raw -A PREROUTING -p tcp --dport PORT -j NOTRACK",
                connections * 2
            ),
        });
    }
    memory_limit(host, connections, limits);
    rate_limits(host, limits);
    io_uring_limits(host, limits);
}

/// Free memory against the kernel's and the engine's bytes per connection.
fn memory_limit(host: &HostSnapshot, connections: u64, limits: &mut Vec<Limit>) {
    if let Some(available) = host.mem_available {
        let per_connection = KERNEL_BYTES_PER_SOCKET + USER_BYTES_PER_CONNECTION;
        let ceiling = available.saturating_sub(MEMORY_RESERVE_BYTES) / per_connection;
        limits.push(Limit {
            name: "memory (MemAvailable)",
            current: format!("{} MiB available", available >> 20),
            ceiling: Some(ceiling),
            problem: ceiling < connections,
            fix: format!(
                "{} B per connection ({} kernel + {} user): {} GiB for the target, plus the same kernel share again if the load generator runs on this host",
                per_connection,
                KERNEL_BYTES_PER_SOCKET,
                USER_BYTES_PER_CONNECTION,
                (connections * per_connection + MEMORY_RESERVE_BYTES).div_ceil(1 << 30)
            ),
        });
    }
}

/// Backlogs and the local port range: they cap how fast connections arrive, not how many
/// are held.
fn rate_limits(host: &HostSnapshot, limits: &mut Vec<Limit>) {
    for (name, value, wanted, key) in [
        (
            "net.core.somaxconn",
            host.somaxconn,
            65_535,
            "net.core.somaxconn",
        ),
        (
            "net.ipv4.tcp_max_syn_backlog",
            host.syn_backlog,
            65_535,
            "net.ipv4.tcp_max_syn_backlog",
        ),
    ] {
        if let Some(value) = value {
            limits.push(Limit {
                name,
                current: value.to_string(),
                ceiling: None,
                problem: value < wanted,
                fix: format!("sysctl -w {key}={wanted} (a short backlog drops SYNs during a reconnect storm)"),
            });
        }
    }
    if let Some((low, high)) = host.port_range {
        limits.push(Limit {
            name: "net.ipv4.ip_local_port_range",
            current: format!("{low} {high}"),
            ceiling: None,
            problem: false,
            fix: format!(
                "only for clients on this host: {} ports per source address; a local loadgen rotates 127.0.0.x",
                high.saturating_sub(low) + 1
            ),
        });
    }
}

/// Whether io_uring works here (else the engine runs on its epoll fallback).
fn io_uring_limits(host: &HostSnapshot, limits: &mut Vec<Limit>) {
    if host.io_uring_works == Some(false) {
        limits.push(Limit {
            name: "io_uring",
            current: "unavailable".into(),
            ceiling: None,
            problem: true,
            fix: "the engine will run on epoll: see tuning/io-uring.md (kernel 5.10+, seccomp, io_uring_disabled)".into(),
        });
    }
    match host.io_uring_disabled {
        Some(0) | None => {}
        Some(level) => limits.push(Limit {
            name: "kernel.io_uring_disabled",
            current: level.to_string(),
            ceiling: None,
            problem: true,
            fix:
                "sysctl -w kernel.io_uring_disabled=0 (else the engine runs on its epoll fallback)"
                    .into(),
        }),
    }
}

/// The report `engine check` prints.
pub fn render(verdict: &Verdict, host: &HostSnapshot, reactors: u64) -> String {
    let mut out = String::new();
    let sockets = if verdict.direct_sockets {
        "io_uring direct descriptors"
    } else {
        "the fd table"
    };
    let _ = writeln!(
        out,
        "target: {} connections on {reactors} reactors ({} cores), sockets in {sockets}\n",
        verdict.target, host.cores
    );
    let _ = writeln!(
        out,
        "{:<34} {:<26} {:>12}  verdict",
        "limit", "current", "ceiling"
    );
    for limit in &verdict.limits {
        let ceiling = limit.ceiling.map_or("-".to_owned(), |c| c.to_string());
        let verdict_text = match (limit.problem, limit.ceiling) {
            (false, _) => "ok",
            (true, Some(_)) => "CAPS THE TARGET",
            (true, None) => "raise it",
        };
        let _ = writeln!(
            out,
            "{:<34} {:<26} {:>12}  {verdict_text}",
            limit.name, limit.current, ceiling
        );
        if limit.problem {
            let _ = writeln!(out, "    fix: {}", limit.fix);
        }
    }
    let _ = writeln!(
        out,
        "\npredicted ceiling: {} connections: the target is {}",
        verdict.ceiling,
        if verdict.reachable() {
            "within reach"
        } else {
            "OUT OF REACH"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded host directory with the given /proc files.
    fn fake_host(files: &[(&str, &str)]) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root =
            std::env::temp_dir().join(format!("engine-check-{}-{unique}", std::process::id()));
        for (path, content) in files {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, content).unwrap();
        }
        root
    }

    fn this_vm() -> HostSnapshot {
        let root = fake_host(&[
            ("proc/sys/fs/nr_open", "1048576\n"),
            ("proc/sys/fs/file-max", "9223372036854775807\n"),
            ("proc/sys/net/core/somaxconn", "4096\n"),
            ("proc/sys/net/ipv4/tcp_max_syn_backlog", "512\n"),
            ("proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n"),
            (
                "proc/meminfo",
                "MemTotal: 24000000 kB\nMemAvailable:   23000000 kB\n",
            ),
            ("proc/sys/kernel/io_uring_disabled", "0\n"),
        ]);
        let host = HostSnapshot::read(&root, (20_000, 20_000), 2);
        std::fs::remove_dir_all(root).unwrap();
        host
    }

    #[test]
    fn reads_a_recorded_host() {
        let host = this_vm();
        assert_eq!(host.nr_open, Some(1_048_576));
        assert_eq!(host.port_range, Some((32_768, 60_999)));
        assert_eq!(host.mem_available, Some(23_000_000 * 1024));
        assert_eq!(host.conntrack_max, None);
    }

    #[test]
    fn the_fd_table_caps_one_reactor_and_more_reactors_lift_it() {
        let host = this_vm();
        let one = evaluate(&host, 25_000, 1, Placement::FdTable);
        assert!(!one.reachable());
        assert_eq!(one.ceiling, 20_000 - FDS_RESERVED_PER_REACTOR);
        let fd = one
            .limits
            .iter()
            .find(|l| l.name.starts_with("RLIMIT_NOFILE"))
            .unwrap();
        assert!(fd.problem && fd.fix.contains("--reactors 2"), "{}", fd.fix);
        assert!(evaluate(&host, 25_000, 2, Placement::FdTable).reachable());
    }

    #[test]
    fn memory_caps_a_million_with_the_loadgen_far_from_it() {
        let host = this_vm();
        let verdict = evaluate(&host, 1_000_000, 60, Placement::FdTable);
        let memory = verdict
            .limits
            .iter()
            .find(|l| l.name.starts_with("memory"))
            .unwrap();
        // 23 GB available less 1 GiB reserve, at 5,213 B each: about 4.3 million.
        assert!(memory.ceiling.unwrap() > 4_000_000 && !memory.problem);
        assert!(verdict.reachable());
        let small = HostSnapshot {
            mem_available: Some(2 << 30),
            ..host
        };
        let verdict = evaluate(&small, 1_000_000, 60, Placement::FdTable);
        assert!(!verdict.reachable());
        assert!(render(&verdict, &small, 60).contains("OUT OF REACH"));
    }

    #[test]
    fn conntrack_and_backlogs_are_called_out_with_fixes() {
        let host = HostSnapshot {
            conntrack_max: Some(65_536),
            ..this_vm()
        };
        let verdict = evaluate(&host, 100_000, 6, Placement::FdTable);
        assert_eq!(verdict.ceiling, 65_536);
        let text = render(&verdict, &host, 6);
        assert!(
            text.contains("nf_conntrack_max") && text.contains("NOTRACK"),
            "{text}"
        );
        assert!(
            text.contains("sysctl -w net.ipv4.tcp_max_syn_backlog=65535"),
            "{text}"
        );
    }

    #[test]
    fn direct_sockets_lift_the_fd_table_cap_so_two_reactors_hold_a_million() {
        let host = HostSnapshot {
            direct_sockets_work: Some(true),
            ..this_vm()
        };
        assert!(uses_direct_sockets(&host, Placement::Auto));
        let by_fd_table = evaluate(&host, 1_000_000, 2, Placement::FdTable);
        assert!(!by_fd_table.reachable() && !by_fd_table.direct_sockets);
        let direct = evaluate(&host, 1_000_000, 2, Placement::Auto);
        assert!(direct.direct_sockets);
        assert!(render(&direct, &host, 2).contains("sockets in io_uring direct descriptors"));
        let row = direct
            .limits
            .iter()
            .find(|l| l.name.starts_with("RLIMIT_NOFILE"))
            .unwrap();
        assert_eq!(row.ceiling, Some(2 * 64 * 20_000));
        assert!(!row.problem);
        // Where the probe failed, auto means the fd table again.
        let without = HostSnapshot {
            direct_sockets_work: Some(false),
            ..host
        };
        assert!(!evaluate(&without, 1_000_000, 2, Placement::Auto).reachable());
    }

    #[test]
    fn a_host_without_io_uring_is_told_about_the_fallback() {
        let host = HostSnapshot {
            io_uring_works: Some(false),
            io_uring_disabled: Some(2),
            ..this_vm()
        };
        let text = render(&evaluate(&host, 1000, 1, Placement::Auto), &host, 1);
        assert!(
            text.contains("io_uring") && text.contains("epoll"),
            "{text}"
        );
        // A warning, not a cap on the count.
        assert!(evaluate(&host, 1000, 1, Placement::Auto).reachable());
    }
}
