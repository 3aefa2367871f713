//! SIGTERM: stop accepting, close every WebSocket with 1001, exit 0 within the bound.

mod common;

use std::time::{Duration, Instant};

use common::{on_both_drivers, Server};

#[test]
fn sigterm_closes_every_websocket_with_1001_and_exits_0() {
    on_both_drivers(|driver| {
        let mut server = Server::start(driver, &["--shutdown-timeout-ms", "2000"]);
        let mut clients: Vec<_> = (0..6)
            .map(|i| server.login(&format!("u{i}"), "phone"))
            .collect();
        let mut unauthenticated = server.connect();
        let started = Instant::now();
        assert_eq!(server.terminate(), Some(0));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        for client in clients.iter_mut() {
            assert_eq!(client.expect_close(), 1001);
        }
        assert_eq!(unauthenticated.expect_close(), 1001);
        assert!(
            std::net::TcpStream::connect(server.addr).is_err(),
            "still accepting"
        );
    });
}

#[test]
fn bad_flags_stop_start_up_with_a_message_naming_the_flag() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--reactors", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--reactors"), "{stderr}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .env("ENGINE_MAX_MESSAGE_BYTES", "5")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-message-bytes"));
}

#[test]
fn with_drain_secs_the_closes_are_spread_over_the_drain() {
    let mut server = Server::start(common::Driver::IoUring, &["--drain-secs", "2"]);
    let clients: Vec<_> = (0..12)
        .map(|i| server.login(&format!("u{i}"), "phone"))
        .collect();
    let started = Instant::now();
    let waiters: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                let code = client.expect_close();
                (code, Instant::now())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(server.terminate(), Some(0));
    let mut closed: Vec<Duration> = waiters
        .into_iter()
        .map(|w| {
            let (code, at) = w.join().unwrap();
            assert_eq!(code, 1001);
            at - started
        })
        .collect();
    closed.sort();
    let (first, last) = (closed[0], closed[closed.len() - 1]);
    assert!(
        first < Duration::from_millis(900),
        "first close after {first:?}"
    );
    assert!(
        last > Duration::from_millis(1400) && last < Duration::from_secs(4),
        "last close after {last:?}"
    );
}

/// Connects and authenticates as a real client would: a connection refused or reset in
/// the instant the old process stops listening is tried again. Returns the attempts taken.
fn log_in_retrying(server: &Server, user: &str) -> (common::Client, u32) {
    for attempt in 1..=3 {
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.login(user, "d")));
        if let Ok(client) = outcome {
            return (client, attempt);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{user} could not log in in 3 attempts");
}

#[test]
fn a_new_process_takes_over_the_port_while_the_old_one_drains() {
    let mut old = Server::start(common::Driver::IoUring, &["--drain-secs", "2"]);
    let moving: Vec<_> = (0..6).map(|i| old.login(&format!("m{i}"), "d")).collect();
    let port = old.addr.to_string();
    // SO_REUSEPORT: the new process binds the same port while the old one still listens
    // (from here on a connection may reach either, until the old one stops listening).
    let new = Server::start(common::Driver::IoUring, &["--listen", &port]);
    assert_eq!(new.addr, old.addr);
    let closes: Vec<_> = moving
        .into_iter()
        .map(|mut client| std::thread::spawn(move || client.expect_close()))
        .collect();
    let waiter = std::thread::spawn(move || old.terminate());
    // The old process stops accepting at once: new connections reach the new one.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut logins, mut retries) = (0, 0);
    while Instant::now() < deadline {
        let (mut client, attempts) = log_in_retrying(&new, &format!("n{logins}"));
        retries += attempts - 1;
        client.send(&serde_json::json!({"type": "ping", "ts": logins}));
        assert_eq!(client.recv_type("pong")["ts"], logins);
        logins += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The old one's clients were closed with 1001 over the drain, and come back.
    for (i, close) in closes.into_iter().enumerate() {
        assert_eq!(close.join().unwrap(), 1001);
        let (mut back, _) = log_in_retrying(&new, &format!("m{i}"));
        back.send(&serde_json::json!({"type": "ping", "ts": 1}));
        assert_eq!(back.recv_type("pong")["ts"], 1);
    }
    assert_eq!(waiter.join().unwrap(), Some(0));
    assert!(
        logins >= 10 && retries <= 1,
        "{logins} logins, {retries} retries"
    );
}
