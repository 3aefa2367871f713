//! The load generator: opens and authenticates N WebSocket connections against the engine,
//! holds them with a ping sweep, and reports what it held (stdout table and report.json).

mod chart;
mod config;
mod devices;
mod latency;
mod report;
mod sources;
mod timeline;
mod tls;
mod worker;

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::Parser;
use config::Args;
use worker::{Plan, Progress};

/// fds a worker keeps for itself beyond its connections (epoll, eventfds, io_uring).
const FDS_RESERVED_PER_WORKER: u64 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(summary) => {
            print!("{}", summary.to_table());
            if let Err(e) = summary.write(&args.out) {
                eprintln!(
                    "loadgen: cannot write the report to {}: {e}",
                    args.out.display()
                );
                return ExitCode::FAILURE;
            }
            if summary.interrupted {
                return ExitCode::from(130);
            }
            let min_held = args.min_held.unwrap_or(args.connections) as u64;
            if summary.held < min_held {
                eprintln!(
                    "loadgen: held {} connections, fewer than --min-held {min_held}",
                    summary.held
                );
                return ExitCode::FAILURE;
            }
            // Churn judges by its devices (a sender dropped before its message was read
            // has neither an ack nor a delivery, and is no loss).
            if summary.churn.is_none() && summary.lost() > 0 {
                eprintln!("loadgen: {} messages were lost", summary.lost());
                return ExitCode::FAILURE;
            }
            if let Some(churn) = summary.churn.as_ref().filter(|c| c.lost + c.duplicated > 0) {
                eprintln!(
                    "loadgen: churn lost {} and duplicated {} messages",
                    churn.lost, churn.duplicated
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<report::Summary, String> {
    let tls = match args.tls {
        false => None,
        true => Some(
            tls::Tls::new(args.tls_ca.as_deref(), args.tls_insecure, &args.tls_name)
                .map_err(|e| format!("--tls: {e}"))?,
        ),
    };
    for target in &args.target {
        std::net::TcpStream::connect_timeout(target, Duration::from_secs(3))
            .map_err(|e| format!("cannot reach --target {target}: {e}"))?;
    }
    let workers = args.worker_count();
    let fds_per_worker = raise_fd_limit().saturating_sub(FDS_RESERVED_PER_WORKER);
    let per_worker = args.connections.div_ceil(workers) as u64;
    let sockets = resolve_placement(args.sockets, per_worker, fds_per_worker);
    // A set made here shows which placement the workers will get, and its capacity.
    let (probe, fallback) = uring_sockets::Sockets::new(sockets)
        .map_err(|e| format!("--sockets {:?}: {e}", args.sockets))?;
    if let Some(why) = fallback {
        eprintln!("loadgen: {why}; sockets live in each worker's fd table");
    }
    let per_worker_max = if probe.is_direct() {
        probe.capacity()
    } else {
        fds_per_worker
    };
    let placement = probe.placement_name();
    drop(probe);
    if per_worker > per_worker_max {
        let needed = (args.connections as u64).div_ceil(per_worker_max.max(1));
        return Err(format!(
            "{per_worker} connections per worker exceed the {per_worker_max} one worker holds with its sockets in the {placement}; \
             use --workers {needed} or more, or raise RLIMIT_NOFILE"
        ));
    }
    let ports = sources::ephemeral_ports();
    let sources = sources::plan(&args.target, args.connections, &args.source_addrs, ports);
    if !sources.is_empty() && sources::capacity(sources.len(), ports) < args.connections {
        return Err(format!(
            "{} source addresses × {ports} ephemeral ports cannot carry {} connections; \
             give more --source-addrs or widen net.ipv4.ip_local_port_range",
            sources.len(),
            args.connections
        ));
    }
    let plan = Arc::new(Plan {
        targets: args.target.clone(),
        sources: sources.clone(),
        workers,
        sockets,
        connections: args.connections,
        ramp_per_sec: args.ramp_per_sec,
        hold: Duration::from_secs(args.hold_secs),
        connect_timeout: Duration::from_secs(args.connect_timeout_secs),
        rate: args.rate,
        duration: Duration::from_secs(args.duration_secs),
        epoch: std::time::Instant::now(),
        scenario: args.scenario,
        offline_receivers: args.offline_receivers,
        record_queued_ids: args.queued_ids,
        server_pid: args.server_pid,
        churn_per_min: args.churn_per_min,
        kill_server_at: args.kill_server_at.map(Duration::from_secs),
        tls,
    });
    let load_start = Arc::new(std::sync::Barrier::new(workers));
    let rss_before = args.server_pid.and_then(server_rss_bytes);
    let progress = Arc::new(Progress::new(workers));
    watch_for_interrupt(progress.clone())?;
    let threads: Vec<_> = (0..workers)
        .map(|id| {
            let (plan, progress, load_start) = (plan.clone(), progress.clone(), load_start.clone());
            std::thread::Builder::new()
                .name(format!("loadgen-{id}"))
                .spawn(move || worker::run(id, plan, progress, load_start))
                .map_err(|e| format!("cannot start a worker: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut last = (std::time::Instant::now(), 0u64, 0u64);
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(500));
        let authenticated = progress.authenticated.load(Ordering::Relaxed);
        let delivered = progress.delivered.load(Ordering::Relaxed);
        let secs = last.0.elapsed().as_secs_f64();
        let conn_rate = authenticated.saturating_sub(last.1) as f64 / secs;
        let msg_rate = delivered.saturating_sub(last.2) as f64 / secs;
        last = (std::time::Instant::now(), authenticated, delivered);
        eprint!(
            "\rattempted {} authenticated {authenticated} failed {} ({conn_rate:.0} conn/s) | sent {} delivered {delivered} ({msg_rate:.0} msg/s)   ",
            progress.attempted.load(Ordering::Relaxed),
            progress.failed.load(Ordering::Relaxed),
            progress.sent.load(Ordering::Relaxed),
        );
    }
    eprintln!();
    let mut reports = Vec::with_capacity(workers);
    for thread in threads {
        let report = thread.join().map_err(|_| "a worker panicked".to_owned())?;
        reports.push(report.map_err(|e| format!("a worker failed to start: {e}"))?);
    }
    let mut summary = report::Summary::from_workers(
        args.target.iter().map(ToString::to_string).collect(),
        sources.len(),
        args.hold_secs,
        &reports,
    );
    summary.rate = (args.rate, args.duration_secs);
    summary.sockets = placement;
    summary.scenario = args.scenario.name();
    if args.queued_ids {
        let ids = reports
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.queued_ids));
        summary.queued_ids = Some(ids.collect());
    }
    if args.scenario == config::Scenario::Churn {
        summary.churn = Some(report::Churn::from_workers(&mut reports));
    }
    summary.timeline = timeline::lock(&progress.timeline).seconds();
    summary.interrupted = progress.interrupted.load(Ordering::Acquire);
    let after_hold = progress.server_rss_after_hold.load(Ordering::Acquire);
    let after_hold = if after_hold > 0 {
        Some(after_hold)
    } else {
        args.server_pid.and_then(server_rss_bytes)
    };
    summary.server_rss_bytes = rss_before.zip(after_hold);
    summary.server_cpu_secs = cpu_secs_between(&progress.server_cpu_ticks);
    summary.loadgen_cpu_secs = cpu_secs_between(&progress.loadgen_cpu_ticks);
    Ok(summary)
}

/// Blocks SIGINT in every thread and takes it on a watcher thread: the first Ctrl-C ends
/// every phase early (the partial report is still written), a second one exits at once.
fn watch_for_interrupt(progress: Arc<Progress>) -> Result<(), String> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.thread_block()
        .map_err(|e| format!("cannot block SIGINT: {e}"))?;
    std::thread::Builder::new()
        .name("loadgen-signals".into())
        .spawn(move || {
            if set.wait().is_ok() {
                eprintln!("\nloadgen: interrupted; finishing the current phase and writing the partial report");
                progress.interrupted.store(true, Ordering::Release);
            }
            if set.wait().is_ok() {
                std::process::exit(130);
            }
        })
        .map_err(|e| format!("cannot start the signal watcher: {e}"))?;
    Ok(())
}

/// Raises the soft fd limit to the hard one; returns the limit each worker's table gets.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// Where the workers' sockets live: `auto` is the fd table when each worker's share fits
/// in it (a plain `read` or `send` costs less than an `io_uring_enter` each: 39 against 46
/// µs of loadgen CPU per message at 10,000 connections and 10,000 msg/s), and direct
/// descriptors (where the kernel allows) beyond.
fn resolve_placement(
    asked: uring_sockets::Placement,
    per_worker: u64,
    fds_per_worker: u64,
) -> uring_sockets::Placement {
    use uring_sockets::Placement;
    match asked {
        Placement::Auto if per_worker <= fds_per_worker => Placement::FdTable,
        other => other,
    }
}

/// CPU seconds between two readings of [`cpu_ticks`] (`None` when either was not taken).
fn cpu_secs_between(ticks: &[AtomicU64; 2]) -> Option<f64> {
    let [start, end] = [0, 1].map(|i| ticks[i].load(Ordering::Acquire));
    (start > 0 && end >= start).then(|| (end - start) as f64 / clock_ticks_per_sec())
}

/// A process's CPU time so far, user plus system, in clock ticks (/proc/PID/stat).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it start with the state.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Clock ticks per second, the unit of /proc/PID/stat times.
fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The server's resident set size from /proc.
pub(crate) fn server_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uring_sockets::Placement;

    #[test]
    fn auto_places_sockets_in_the_fd_table_while_a_workers_share_fits() {
        assert_eq!(
            resolve_placement(Placement::Auto, 10_000, 19_936),
            Placement::FdTable
        );
        assert_eq!(
            resolve_placement(Placement::Auto, 19_937, 19_936),
            Placement::Auto
        );
        assert_eq!(
            resolve_placement(Placement::Direct, 10, 19_936),
            Placement::Direct
        );
        assert_eq!(
            resolve_placement(Placement::FdTable, 10, 19_936),
            Placement::FdTable
        );
    }
}
