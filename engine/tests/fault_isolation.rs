//! Fault isolation: a panic while handling one connection's message closes that
//! connection with 1011 and is counted, and everything else goes on; a reactor that dies
//! takes the process down loudly (exit code 70), never leaving half the gateway serving.
//! The faults are injected with the `ENGINE_FAILPOINT` failpoint.

mod common;

use std::time::Duration;

use common::{code, Server};
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn a_panic_in_one_handler_closes_that_connection_only() {
    common::on_both_drivers(|driver| {
        let env = [("ENGINE_FAILPOINT", "panic_on_message_from:mallory")];
        // One reactor: the panicking handler shares it with everybody else.
        let server = Server::start_with_env(driver, &["--reactors", "1"], &env);
        let mut alice = server.login("alice", "phone");
        let mut bob = server.login("bob", "phone");
        let mut mallory = server.login("mallory", "phone");
        mallory.send(&json!({"type": "ping"}));
        assert_eq!(mallory.expect_close(), code(CloseCode::Error));
        for i in 0..3 {
            alice.send(
                &json!({"type": "send_message", "messageId": format!("m{i}"),
                           "receiverId": "bob", "content": "still here"}),
            );
            assert_eq!(alice.recv_type("message_ack")["status"], "sent");
            assert_eq!(bob.recv_type("new_message")["messageId"], format!("m{i}"));
        }
        let (_, metrics) = server.get("/metrics");
        assert!(
            metrics.contains("engine_handler_panics_total{reactor=\"0\"} 1\n"),
            "{metrics}"
        );
        // mallory may come back; its next message is contained the same way.
        let mut again = server.login("mallory", "laptop");
        again.send(&json!({"type": "ping"}));
        assert_eq!(again.expect_close(), code(CloseCode::Error));
        bob.send(&json!({"type": "ping", "ts": 1}));
        assert_eq!(bob.recv_type("pong")["ts"], 1);
    });
}

#[test]
fn a_dead_reactor_stops_the_engine_with_a_nonzero_exit() {
    common::on_both_drivers(|driver| {
        let env = [("ENGINE_FAILPOINT", "kill_reactor_on_message_from:mallory")];
        let mut server = Server::start_with_env(driver, &["--reactors", "2"], &env);
        let mut mallory = server.login("mallory", "phone");
        mallory.send(&json!({"type": "ping"}));
        assert_eq!(server.exit_code_within(Duration::from_secs(10)), Some(70));
    });
}

#[test]
fn an_unknown_failpoint_stops_start_up() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--listen", "127.0.0.1:0"])
        .env("ENGINE_FAILPOINT", "panic_sometimes")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ENGINE_FAILPOINT"));
}
