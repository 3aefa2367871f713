//! One reactor holds several times its fd limit in connections: its sockets are io_uring
//! direct descriptors, in no fd table. With its sockets in the fd table, the same engine
//! under the same limit cannot.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{Driver, Server};

/// RLIMIT_NOFILE of the engine: its fd table (and each ring's file table) holds this many.
const FDS: u64 = 256;
/// Connections held under it.
const CONNECTIONS: usize = 1_000;

#[test]
fn one_reactor_holds_four_times_its_fd_limit_as_direct_sockets() {
    let server = Server::start_with_open_files_limit(
        Driver::IoUring,
        &["--reactors", "1", "--sockets", "direct"],
        FDS,
    );
    let mut clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| server.login(&format!("user{i}"), "d"))
        .collect();
    let (status, body) = server.get("/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        health["metrics"]["online_users"], CONNECTIONS as u64,
        "{health}"
    );
    // Every one is live: each sends to the one after it, and each receives.
    for (i, client) in clients.iter_mut().enumerate() {
        let to = format!("user{}", (i + 1) % CONNECTIONS);
        client.send(&serde_json::json!({
            "type": "send_message", "messageId": format!("m{i}"), "receiverId": to, "content": "hi"
        }));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let mut got_message = false;
        let mut got_ack = false;
        while !(got_message && got_ack) {
            let frame = client.recv();
            match frame["type"].as_str() {
                Some("new_message") => got_message = true,
                Some("message_ack") => got_ack = true,
                _ => {}
            }
        }
        assert!(got_message && got_ack, "client {i}");
    }
}

#[test]
fn in_the_fd_table_the_same_limit_stops_one_reactor_short() {
    let server = Server::start_with_open_files_limit(
        Driver::IoUring,
        &[
            "--reactors",
            "1",
            "--sockets",
            "fd-table",
            "--auth-timeout-ms",
            "60000",
        ],
        FDS,
    );
    let mut held = Vec::new();
    let refused_at = (0..CONNECTIONS).find(|_| match upgrade(&server) {
        Some(stream) => {
            held.push(stream);
            false
        }
        None => true,
    });
    let refused_at = refused_at.expect("the fd table should have filled");
    assert!(
        refused_at < FDS as usize,
        "{refused_at} connections fit a {FDS}-fd table"
    );
}

/// A raw WebSocket upgrade, answered within 2 s or not at all.
fn upgrade(server: &Server) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(server.addr).ok()?;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    return answer.starts_with(b"HTTP/1.1 101").then_some(stream);
                }
            }
            Err(_) => continue,
        }
    }
    None
}
