//! `--scenario echo` against a plain WebSocket echo server that knows nothing of our chat
//! protocol (as the peers we compare against): frames are timed by their echo.

mod common;

use std::{net::TcpListener, thread};

use tungstenite::Message;

/// A thread-per-connection echo server on an ephemeral port.
fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(message) = ws.read() {
                    if let Message::Text(_) = message {
                        if ws.send(message).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn echo_mode_measures_a_server_that_only_echoes() {
    let addr = echo_server().to_string();
    let (status, report, out) = common::run(
        "echo",
        &[
            "--scenario",
            "echo",
            "--target",
            &addr,
            "--connections",
            "50",
            "--hold-secs",
            "0",
        ]
        .into_iter()
        .chain(["--rate", "500", "--duration-secs", "1"])
        .collect::<Vec<_>>(),
    );
    assert!(status.success(), "{report}");
    assert_eq!(report["scenario"], "echo");
    assert_eq!(report["held"], 50, "{report}");
    assert_eq!(report["load"]["sent"], 500);
    assert_eq!(report["load"]["delivered"], 500, "{report}");
    assert_eq!(report["load"]["lost"], 0);
    assert!(report["latency"]["delivery"]["p99_us"].as_u64().unwrap() > 0);
    std::fs::remove_dir_all(out).unwrap();
}
