//! The push hook: a message queued for a user with no device online is posted to the
//! webhook (retried when the webhook fails), and a webhook that never answers holds up
//! nothing.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::mpsc,
    time::Duration,
};

use common::Server;
use serde_json::{json, Value};

/// A webhook on an ephemeral port: answers 503 to the first request and 200 to the rest,
/// and hands each body over.
fn flaky_webhook() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/push", listener.local_addr().unwrap());
    let (bodies, received) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut line = String::new();
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(
                request_line.starts_with("POST /hooks/push "),
                "{request_line}"
            );
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = if n == 0 {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            stream.write_all(answer.as_bytes()).unwrap();
            if n > 0 {
                let _ = bodies.send(serde_json::from_slice(&body).unwrap());
            }
        }
    });
    (url, received)
}

#[test]
fn a_message_queued_for_an_offline_user_is_pushed_with_retries() {
    let (url, received) = flaky_webhook();
    let server = Server::start(
        common::Driver::IoUring,
        &["--push-webhook", &url, "--push-preview"],
    );
    let mut alice = server.login("alice", "phone");
    alice.send(
        &json!({"type": "send_message", "messageId": "m1", "receiverId": "bob",
                       "content": "are you there?"}),
    );
    assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    // The first attempt got 503; the retry (after 200 ms) got through.
    let pushed = received
        .recv_timeout(Duration::from_secs(5))
        .expect("a push arrives");
    assert_eq!(
        pushed,
        json!({"userId": "bob", "senderId": "alice", "messageId": "m1",
               "preview": "are you there?"})
    );
    // Online delivery pushes nothing.
    let _bob = server.login("bob", "phone");
    alice.send(
        &json!({"type": "send_message", "messageId": "m2", "receiverId": "bob",
                       "content": "hi"}),
    );
    assert_eq!(alice.recv_type("message_ack")["status"], "sent");
    assert!(received.recv_timeout(Duration::from_millis(500)).is_err());
    let (_, metrics) = server.get("/metrics");
    assert!(metrics.contains("engine_push_sent_total 1\n"), "{metrics}");
}

#[test]
fn a_webhook_that_never_answers_holds_up_no_message() {
    // Accepts connections and never reads or answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let server = Server::start(common::Driver::IoUring, &["--push-webhook", &url]);
    let mut alice = server.login("alice", "phone");
    for i in 0..20 {
        alice.send(
            &json!({"type": "send_message", "messageId": format!("q{i}"),
                           "receiverId": "bob", "content": "x"}),
        );
        assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    }
    let mut carol = server.login("carol", "phone");
    alice.send(
        &json!({"type": "send_message", "messageId": "live", "receiverId": "carol",
                       "content": "still fast"}),
    );
    assert_eq!(alice.recv_type("message_ack")["status"], "sent");
    assert_eq!(carol.recv_type("new_message")["content"], "still fast");
    let mut bob = server.login("bob", "phone");
    for i in 0..20 {
        assert_eq!(bob.recv_type("new_message")["messageId"], format!("q{i}"));
    }
    drop(silent);
}

#[test]
fn a_bad_webhook_url_stops_start_up_naming_the_flag() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "--push-webhook",
            "https://push.example/hook",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--push-webhook") && stderr.contains("http://"),
        "{stderr}"
    );
}
