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
