//! CI guard for DESIGN.md's budget: an idle authenticated connection costs the engine at
//! most 256 bytes of user space. Counted exactly: the engine runs in this test's process
//! under a counting allocator, and the live heap growth from 2,000 to 4,000 idle
//! connections is divided by 2,000. (RSS at this small scale moves with one-off costs:
//! table doublings and first-touched mailbox pages; benches/ measure RSS at scale.)

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

use engine::{config::Config, Engine};

const BUDGET_BYTES: f64 = 256.0;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Opens connections that upgrade and authenticate; returns once each got auth_success.
fn open_idle(addr: std::net::SocketAddr, users: std::ops::Range<usize>, into: &mut Vec<TcpStream>) {
    let start = into.len();
    for user in users {
        let mut stream = TcpStream::connect(addr).unwrap();
        let auth = format!(r#"{{"type":"auth","userId":"idle{user}","deviceId":"d"}}"#);
        let mut request =
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                .to_vec();
        engine::ws::frame::encode_client(
            engine::ws::frame::TEXT,
            auth.as_bytes(),
            [1, 2, 3, 4],
            &mut request,
        );
        stream.write_all(&request).unwrap();
        into.push(stream);
    }
    for stream in &mut into[start..] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 512];
        while !seen.windows(12).any(|w| w == b"auth_success") {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before auth_success");
            seen.extend_from_slice(&chunk[..n]);
        }
    }
}

#[test]
fn an_idle_authenticated_connection_costs_at_most_256_bytes() {
    let data_dir = std::env::temp_dir().join(format!("engine-idle-memory-{}", std::process::id()));
    // Short deadlines, so no timer entries are left when the heap is read.
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors: 2,
        auth_timeout_ms: 200,
        handshake_timeout_ms: 200,
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    let engine = Engine::start(config).unwrap();
    let settle = || std::thread::sleep(Duration::from_millis(600));
    let mut clients = Vec::with_capacity(4000);
    open_idle(engine.local_addr(), 0..2000, &mut clients);
    settle();
    let at_2000 = LIVE_BYTES.load(Ordering::Relaxed);
    open_idle(engine.local_addr(), 2000..4000, &mut clients);
    settle();
    let at_4000 = LIVE_BYTES.load(Ordering::Relaxed);
    let per_connection = (at_4000 - at_2000) as f64 / 2000.0;
    eprintln!("heap bytes per idle authenticated connection (2,000 to 4,000): {per_connection:.0}");
    assert!(
        per_connection <= BUDGET_BYTES,
        "{per_connection:.0} B per idle connection is over the {BUDGET_BYTES} B budget"
    );
    drop(clients);
    assert!(engine.shutdown());
    let _ = std::fs::remove_dir_all(&data_dir);
}
