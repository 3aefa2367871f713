//! `--scenario echo` against a plain WebSocket echo server that knows nothing of our chat
//! protocol (as the peers we compare against): frames are timed by their echo.

use std::{net::TcpListener, process::Command, thread};

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
    let addr = echo_server();
    let out = std::env::temp_dir().join(format!("loadgen-test-echo-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--scenario",
            "echo",
            "--target",
            &addr.to_string(),
            "--connections",
            "50",
        ])
        .args([
            "--hold-secs",
            "0",
            "--rate",
            "500",
            "--duration-secs",
            "1",
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["scenario"], "echo");
    assert_eq!(report["held"], 50, "{report}");
    assert_eq!(report["load"]["sent"], 500);
    assert_eq!(report["load"]["delivered"], 500, "{report}");
    assert_eq!(report["load"]["lost"], 0);
    assert!(report["latency"]["delivery"]["p99_us"].as_u64().unwrap() > 0);
    std::fs::remove_dir_all(out).unwrap();
}
