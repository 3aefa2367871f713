//! Live heap bytes per idle authenticated connection, counted exactly.
//!
//! Runs the engine in this process under a counting wrapper around mimalloc, opens N
//! WebSocket connections that authenticate and go idle, waits until their auth deadlines
//! have left the timer wheel, and prints (live heap at N − live heap at N/2) / (N/2): the
//! steady heap cost of one more idle connection (slab slot, user id, directory entry,
//! device id). RSS is printed beside it, but RSS also moves with the allocator's page
//! purging, so the counted figure is the one compared with DESIGN.md's 256-byte budget.
//!
//! `cargo bench -p engine --bench idle_memory -- [connections] [reactors]`

mod support;

use std::{
    alloc::{GlobalAlloc, Layout},
    net::TcpStream,
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use engine::{config::Config, Engine};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to mimalloc unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const AUTH_TIMEOUT_MS: u64 = 500;

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
    let data_dir = std::env::temp_dir().join(format!("engine-idle-bench-{}", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors,
        auth_timeout_ms: AUTH_TIMEOUT_MS,
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    // As the engine binary does (see its main.rs): no transparent huge pages.
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1) takes no pointers and only sets a process flag.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let engine = Engine::start(config).expect("engine starts");
    let addr = engine.local_addr();
    let settle = || std::thread::sleep(Duration::from_millis(AUTH_TIMEOUT_MS + 700));
    settle();
    let (heap_0, rss_0) = (LIVE_BYTES.load(Ordering::Relaxed), rss_bytes());
    let half = connections / 2;
    let mut clients = Vec::with_capacity(connections);
    let mut readings = Vec::new();
    for target in [half, connections] {
        while clients.len() < target {
            let user = clients.len();
            clients.push(support::connect_authenticated(addr, &format!("user{user}")));
        }
        settle();
        readings.push((LIVE_BYTES.load(Ordering::Relaxed), rss_bytes()));
    }
    let clients_heap = (clients.capacity() * std::mem::size_of::<TcpStream>()) as isize;
    let (heap_half, rss_half) = readings[0];
    let (heap_full, rss_full) = readings[1];
    let steady = (heap_full - heap_half) as f64 / (connections - half) as f64;
    println!("connections: {connections}, reactors: {reactors}");
    println!(
        "heap bytes: {heap_0} idle engine, {heap_half} at {half}, {heap_full} at {connections}"
    );
    println!("heap bytes per idle connection (marginal, N/2 to N): {steady:.1}");
    println!(
        "heap bytes per idle connection (average from 0, less the bench's own {clients_heap} B): {:.1}",
        (heap_full - heap_0 - clients_heap) as f64 / connections as f64
    );
    println!(
        "rss bytes per idle connection (average from 0, allocator pages included): {:.1}",
        (rss_full as f64 - rss_0 as f64) / connections as f64
    );
    println!("rss at 0 / {half} / {connections}: {rss_0} / {rss_half} / {rss_full}");
    drop(clients);
    engine.shutdown();
    let _ = std::fs::remove_dir_all(data_dir);
}
