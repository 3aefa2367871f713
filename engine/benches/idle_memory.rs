//! Live heap bytes per idle authenticated connection, counted exactly.
//!
//! Runs the engine in this process under a counting wrapper around mimalloc, opens N
//! WebSocket connections that authenticate and go idle, waits until their auth deadlines
//! have left the timer wheel, and prints (live heap at N − live heap at N/2) / (N/2): the
//! steady heap cost of one more idle connection (slab slot, user id, directory entry,
//! device id). RSS is printed beside it, but RSS also moves with the allocator's page
//! purging, so the counted figure is the one compared with DESIGN.md's 256-byte budget.
//!
//! The clients run on threads of their own, each with a private fd table
//! (`unshare(CLONE_FILES)`, as the engine's reactors do), so one process can hold more
//! clients than its open-file limit: a table of [`CLIENTS_PER_THREAD`] each. Their heap is
//! left out of the count ([`support::uncounted_thread`]).
//!
//! With `tls`, the engine serves TLS (`--tls-cert`, an ECDSA P-256 certificate made with
//! `openssl`) and every client connects over it: the difference from a plain run is what
//! TLS costs an idle connection.
//!
//! `cargo bench -p engine --bench idle_memory -- [connections] [reactors] [tls]`

mod support;

use std::{
    net::{SocketAddr, TcpStream},
    sync::{atomic::Ordering, Arc, Barrier},
    time::Duration,
};

use engine::{config::Config, Engine};

#[global_allocator]
static GLOBAL: support::Counting = support::Counting;

const AUTH_TIMEOUT_MS: u64 = 500;
/// Clients one thread holds: under this box's open-file limit of 20,000 a table.
const CLIENTS_PER_THREAD: usize = 15_000;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let reactors: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let tls = args.next().is_some_and(|a| a == "tls");
    let data_dir = std::env::temp_dir().join(format!("engine-idle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir).expect("a data directory");
    let certificates = tls.then(|| {
        support::tls::make_certificates(&data_dir);
        let (cert, key) = (data_dir.join("ec.pem"), data_dir.join("ec.key"));
        Arc::new(engine::tls::Certificates::load(&cert, &key).expect("the certificate loads"))
    });
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors,
        auth_timeout_ms: AUTH_TIMEOUT_MS,
        // No idle pings: the clients read nothing, so a run longer than the idle timeout
        // (TLS handshakes make it minutes) would see its first connections closed.
        idle_timeout_ms: 0,
        data_dir: data_dir.clone(),
        tls: certificates,
        ..Config::default()
    };
    // As the engine binary does (see its main.rs): no transparent huge pages.
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1) takes no pointers and only sets a process flag.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let engine = Engine::start(config).expect("engine starts");
    let addr = engine.local_addr();
    let settle = || std::thread::sleep(Duration::from_millis(AUTH_TIMEOUT_MS + 700));
    settle();
    let (heap_0, rss_0) = (support::LIVE_BYTES.load(Ordering::Relaxed), rss_bytes());
    let half = connections / 2;
    // Each client thread opens its share of N/2, waits while the heap is read, opens its
    // share of N, waits again, and closes its clients once the second reading is taken.
    let threads = connections.div_ceil(CLIENTS_PER_THREAD);
    assert!(
        threads <= 254,
        "at most 254 client threads (one source address each)"
    );
    let phase = Arc::new(Barrier::new(threads + 1));
    let holders: Vec<_> = (0..threads)
        .map(|t| {
            let shares = [half, connections].map(|n| share(n, threads, t));
            let phase = phase.clone();
            std::thread::spawn(move || hold_clients(addr, (t, threads), shares, tls, &phase))
        })
        .collect();
    let mut readings = Vec::new();
    for _ in [half, connections] {
        phase.wait(); // every thread has opened its share
        settle();
        readings.push((support::LIVE_BYTES.load(Ordering::Relaxed), rss_bytes()));
        phase.wait(); // the reading is taken
    }
    let closed: usize = holders
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .sum();
    assert_eq!(
        closed, 0,
        "connections the engine closed during the run: the figures are off"
    );
    let (heap_half, rss_half) = readings[0];
    let (heap_full, rss_full) = readings[1];
    let steady = (heap_full - heap_half) as f64 / (connections - half) as f64;
    println!("connections: {connections}, reactors: {reactors}, tls: {tls}");
    println!(
        "heap bytes: {heap_0} idle engine, {heap_half} at {half}, {heap_full} at {connections}"
    );
    println!("heap bytes per idle connection (marginal, N/2 to N): {steady:.1}");
    println!(
        "heap bytes per idle connection (average from 0): {:.1}",
        (heap_full - heap_0) as f64 / connections as f64
    );
    println!(
        "rss bytes per idle connection (average from 0, allocator pages included): {:.1}",
        (rss_full as f64 - rss_0 as f64) / connections as f64
    );
    println!("rss at 0 / {half} / {connections}: {rss_0} / {rss_half} / {rss_full}");
    engine.shutdown();
    let _ = std::fs::remove_dir_all(data_dir);
}

/// Thread `t`'s share of `n` clients spread over `threads` (users `t, t + threads, …`).
fn share(n: usize, threads: usize, t: usize) -> usize {
    n / threads + usize::from(t < n % threads)
}

/// One client thread (`t` of `threads`): a private fd table and a loopback source address
/// of its own (so its clients fit the ephemeral port range), its heap uncounted; then
/// `shares[0]` clients, a pause for the reading, `shares[1]` clients, another pause.
/// Returns how many of its connections the engine had closed by the end.
fn hold_clients(
    addr: SocketAddr,
    (t, threads): (usize, usize),
    shares: [usize; 2],
    tls: bool,
    phase: &Barrier,
) -> usize {
    support::uncounted_thread();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).expect("a private fd table");
    // 127.0.1.1, 127.0.1.2, …: up to 254 threads (3.8 million clients).
    let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + t as u8).into();
    let config = support::tls::client_config();
    let mut clients: Vec<(TcpStream, Option<Box<tls_records::Session>>)> =
        Vec::with_capacity(shares[1]);
    for target in shares {
        while clients.len() < target {
            let user = format!("user{}", t + clients.len() * threads);
            clients.push(match tls {
                true => {
                    let (stream, session) =
                        support::tls::connect_authenticated(addr, source, &user, &config);
                    (stream, Some(session))
                }
                false => (
                    support::connect_authenticated_from(addr, source, &user),
                    None,
                ),
            });
        }
        phase.wait();
        phase.wait();
    }
    clients.iter().filter(|(stream, _)| closed(stream)).count()
}

/// Whether the server has closed `stream` (a peek sees its end; anything else, or
/// nothing yet, is an open connection).
fn closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut byte = [0u8; 1];
    matches!(stream.peek(&mut byte), Ok(0))
}
