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
