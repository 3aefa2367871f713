//! The `engine` binary: parses the command line and runs the gateway until SIGTERM/SIGINT
//! (SIGHUP rereads the TLS certificate).

use clap::Parser;
use engine::{
    check::{evaluate, render, HostSnapshot},
    config::{Args, Command, Config},
    shutdown,
    sockets::Placement,
    Engine,
};
use tracing::{error, info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    disable_transparent_huge_pages();
    let mut args = Args::parse();
    if let Some(Command::Check {
        connections,
        reactors,
        sockets,
    }) = args.command.take()
    {
        // The limit the engine would raise, so the check sees what the engine would.
        raise_fd_limit();
        return check(connections, reactors, sockets);
    }
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("engine: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log_level))
        .with_writer(std::io::stderr)
        .init();
    raise_fd_limit();
    if config.jwt.is_none() {
        warn!("OPEN MODE: no --jwt-secret, --jwt-public-key or --jwt-jwks; any client may claim any userId");
    }
    let signals = match shutdown::block_signals() {
        Ok(set) => set,
        Err(e) => {
            eprintln!("engine: cannot block signals: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let reactors = config.reactors;
    let engine = match Engine::start(config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("engine: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    info!(reactors, addr = %engine.local_addr(), "engine ready");
    // A stable line on stdout for scripts and tests to wait on.
    println!("listening on {}", engine.local_addr());
    let signal = loop {
        match shutdown::wait_for(&signals) {
            Ok(nix::sys::signal::Signal::SIGHUP) => match engine.reload_tls() {
                Ok(true) => info!("SIGHUP: TLS certificate reloaded"),
                Ok(false) => info!("SIGHUP: no --tls-cert to reload"),
                Err(e) => error!("SIGHUP: the TLS certificate stays as it was: {e}"),
            },
            other => break other,
        }
    };
    info!(?signal, "draining");
    let refused = engine.refused_by_cluster();
    if engine.shutdown() {
        info!("stopped");
    } else {
        warn!("drain bound passed; exiting with connections still open");
    }
    if refused {
        eprintln!("engine: stopped: another running node holds this --node-id");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// `engine check`: prints each limit against the target and the predicted ceiling; exit 1
/// when the target is out of reach.
fn check(connections: u64, reactors: Option<u64>, sockets: Placement) -> std::process::ExitCode {
    let host = HostSnapshot::live();
    let reactors = reactors.unwrap_or(host.cores).max(1);
    let verdict = evaluate(&host, connections, reactors, sockets);
    print!("{}", render(&verdict, &host, reactors));
    if verdict.reachable() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Opts this process out of transparent huge pages before the heap grows.
///
/// The gateway's memory is many small per-connection objects; with THP `always` (a common
/// distribution default) one touched byte can map a 2 MiB page. Measured with
/// `benches/idle_memory.py` at 10,000 idle connections: RSS 30 MB with THP, 8 MB without.
fn disable_transparent_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1) takes no pointers and only sets a process flag.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "engine: could not disable transparent huge pages: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Raises the soft open-file limit to the hard one: each reactor's private fd table, and
/// each of its io_uring file tables, is bounded by it.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        info!(fds_per_reactor = hard.max(soft), "open-file limit");
    }
}
