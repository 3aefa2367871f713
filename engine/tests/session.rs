//! Session rows of PROTOCOL.md: auth (open mode and JWT), ping, auth timeout, replacement.

mod common;

use std::time::Duration;

use common::{on_both_drivers, Server};
use serde_json::json;

#[test]
fn open_mode_auth_succeeds_and_echoes_identity() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.connect();
        client.send(&json!({"type":"auth","userId":"alice","deviceId":"phone"}));
        let reply = client.recv();
        assert_eq!(reply["type"], "auth_success");
        assert_eq!(reply["userId"], "alice");
        assert_eq!(reply["deviceId"], "phone");
        assert!(reply["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    });
}

#[test]
fn anything_before_auth_is_not_authenticated() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.connect();
        client.send(&json!({"type":"ping","ts":1}));
        assert_eq!(client.recv()["code"], "not_authenticated");
        client.send(&json!({"type":"send_message","messageId":"m","receiverId":"b","content":"x"}));
        assert_eq!(client.recv()["code"], "not_authenticated");
        // The connection stays usable.
        client.send(&json!({"type":"auth","userId":"a","deviceId":"d"}));
        assert_eq!(client.recv()["type"], "auth_success");
    });
}

#[test]
fn ping_gets_pong_with_the_same_ts() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.login("alice", "phone");
        client.send(&json!({"type":"ping","ts":123}));
        let pong = client.recv();
        assert_eq!(pong["type"], "pong");
        assert_eq!(pong["ts"], 123);
        assert!(pong["timestamp"].is_u64());
    });
}

#[test]
fn second_auth_is_a_bad_request() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut client = server.login("alice", "phone");
    client.send(&json!({"type":"auth","userId":"bob","deviceId":"x"}));
    assert_eq!(client.recv()["code"], "bad_request");
}

#[test]
fn no_auth_within_the_timeout_closes_with_4001() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &["--auth-timeout-ms", "300"]);
        let mut client = server.connect();
        assert_eq!(client.expect_close(), 4001);
    });
}

#[test]
fn same_device_connecting_again_closes_the_older_with_4003() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut first = server.login("alice", "phone");
        let mut second = server.login("alice", "phone");
        assert_eq!(first.expect_close(), 4003);
        // The new connection is the one messages reach.
        let mut bob = server.login("bob", "laptop");
        bob.send(
            &json!({"type":"send_message","messageId":"m1","receiverId":"alice","content":"hi"}),
        );
        assert_eq!(bob.recv_type("message_ack")["status"], "sent");
        assert_eq!(second.recv_type("new_message")["content"], "hi");
    });
}

mod jwt {
    use super::*;
    use engine::protocol::jwt::sign;

    const SECRET: &str = "test-secret-of-at-least-32-bytes";

    fn token(sub: &str, exp: u64) -> String {
        sign(
            &format!(r#"{{"sub":"{sub}","exp":{exp}}}"#),
            SECRET.as_bytes(),
        )
    }

    fn later() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    }

    #[test]
    fn a_valid_token_authenticates_in_the_message_or_the_url() {
        on_both_drivers(|driver| {
            let server = Server::start(driver, &["--jwt-secret", SECRET]);
            let mut client = server.connect();
            client.send(&json!({"type":"auth","userId":"alice","deviceId":"d","token":token("alice", later())}));
            assert_eq!(client.recv()["type"], "auth_success");
            let mut browser =
                server.connect_with_query(&format!("?token={}", token("bob", later())));
            browser.send(&json!({"type":"auth","userId":"bob","deviceId":"web"}));
            assert_eq!(browser.recv()["type"], "auth_success");
        });
    }

    #[test]
    fn bad_expired_missing_or_foreign_tokens_fail_with_1008() {
        on_both_drivers(|driver| {
            let server = Server::start(driver, &["--jwt-secret", SECRET]);
            let cases = [
                json!({"type":"auth","userId":"alice","deviceId":"d","token":"garbage"}),
                json!({"type":"auth","userId":"alice","deviceId":"d","token":token("alice", 1000)}),
                json!({"type":"auth","userId":"alice","deviceId":"d"}),
                json!({"type":"auth","userId":"alice","deviceId":"d","token":token("mallory", later())}),
                json!({"type":"auth","userId":"alice","deviceId":"d",
                       "token":sign(&format!(r#"{{"sub":"alice","exp":{}}}"#, later()),
                                    b"another-secret-of-at-least-32-bytes")}),
            ];
            for case in cases {
                let mut client = server.connect();
                client.send(&case);
                let reply = client.recv();
                assert_eq!(reply["code"], "auth_failed", "{case}: {reply}");
                assert_eq!(client.expect_close(), 1008, "{case}");
            }
        });
    }

    #[test]
    fn open_mode_does_not_need_a_token() {
        let server = Server::start(common::Driver::IoUring, &[]);
        let mut client = server.connect();
        client.send(&json!({"type":"auth","userId":"alice","deviceId":"d"}));
        assert_eq!(client.recv()["type"], "auth_success");
        client.expect_silence(Duration::from_millis(100));
    }
}
