//! What the in-process benches share: a minimal WebSocket client over a blocking socket
//! (in TLS too: [`tls`]), and a counting allocator for those that measure heap bytes.

#[allow(dead_code)] // each bench includes this module and uses what it needs
pub mod tls;

use std::{
    alloc::{GlobalAlloc, Layout},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::atomic::{AtomicIsize, Ordering},
    time::Duration,
};

/// Opens a WebSocket that authenticates as `user`; returns once `auth_success` arrived.
#[allow(dead_code)] // each bench includes this module and uses what it needs
pub fn connect_authenticated(addr: SocketAddr, user: &str) -> TcpStream {
    authenticate(TcpStream::connect(addr).expect("connect"), user)
}

/// The same from a chosen local address (loopback has many: one per client thread
/// keeps each within the ephemeral port range).
#[allow(dead_code)] // each bench includes this module and uses what it needs
pub fn connect_authenticated_from(addr: SocketAddr, source: IpAddr, user: &str) -> TcpStream {
    authenticate(connect_from(addr, source), user)
}

/// A TCP connection to `addr` from the local address `source`.
#[allow(dead_code)] // each bench includes this module and uses what it needs
pub fn connect_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// Upgrades `stream` and authenticates it as `user`; returns once `auth_success` arrived.
fn authenticate(mut stream: TcpStream, user: &str) -> TcpStream {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = UPGRADE_REQUEST.to_vec();
    request.extend_from_slice(&text_frame(&format!(
        r#"{{"type":"auth","userId":"{user}","deviceId":"d"}}"#
    )));
    stream.write_all(&request).unwrap();
    read_until(&mut stream, b"auth_success");
    stream
}

/// The WebSocket upgrade every bench client sends.
pub const UPGRADE_REQUEST: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A masked client text frame (payloads under 64 KiB).
pub fn text_frame(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81];
    if text.len() < 126 {
        frame.push(0x80 | text.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(text.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads until `needle` has arrived (anything before it is dropped).
pub fn read_until(stream: &mut TcpStream, needle: &[u8]) {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut chunk).expect("the expected frame arrives");
        assert!(n > 0, "closed before {}", String::from_utf8_lossy(needle));
        seen.extend_from_slice(&chunk[..n]);
    }
}

/// Live heap bytes, kept by [`Counting`] where a bench makes it the global allocator.
#[allow(dead_code)] // each bench includes this module and uses what it needs
pub static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Set on threads whose heap a bench leaves out (its own clients'): see
    /// [`uncounted_thread`].
    static UNCOUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// From now on this thread's allocations (and frees) are not in [`LIVE_BYTES`]: for a
/// bench's client threads, whose heap is not the engine's.
#[allow(dead_code)] // each bench includes this module and uses what it needs
pub fn uncounted_thread() {
    UNCOUNTED.with(|u| u.set(true));
}

/// Adds `bytes` to [`LIVE_BYTES`], unless this thread is uncounted.
#[allow(dead_code)] // benches without the counting allocator include this module too
fn count(bytes: isize) {
    if !UNCOUNTED.with(|u| u.get()) {
        LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// mimalloc with every allocation's size counted in [`LIVE_BYTES`]: a bench declares
/// `#[global_allocator] static GLOBAL: support::Counting = support::Counting;`.
#[allow(dead_code)] // each bench includes this module and uses what it needs
pub struct Counting;

// SAFETY: forwards to mimalloc unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}
