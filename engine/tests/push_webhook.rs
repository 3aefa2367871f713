//! The push hook: a message queued for a user with no device online is posted to the
//! webhook (retried when the webhook fails), and a webhook that never answers holds up
//! nothing.

mod common;

use std::{
    io::{BufReader, Write},
    net::TcpListener,
    sync::mpsc,
    time::Duration,
};

use common::Server;
use serde_json::{json, Value};

/// A webhook on an ephemeral port: answers 503 to the first request and 200 to the rest,
/// and hands each body over.
fn flaky_webhook() -> (String, mpsc::Receiver<Value>) {
    let (url, requests) = common::webhook::start("/hooks/push", 1);
    let (bodies, received) = mpsc::channel();
    std::thread::spawn(move || {
        for (head, body) in requests {
            assert!(head.starts_with("POST /hooks/push "), "{head}");
            let _ = bodies.send(serde_json::from_slice(&body).unwrap());
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
            "ftp://push.example/hook",
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

/// An https webhook on an ephemeral port with the test authority's server certificate:
/// answers 200 and hands over each request's head and body.
fn tls_webhook(certs: &common::certs::TestCerts) -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.path("server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let config = std::sync::Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}/hooks/push",
        listener.local_addr().unwrap().port()
    );
    let (requests, received) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let connection = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let mut reader = BufReader::new(&mut tls);
            // A client that refused the certificate sends nothing: the next one, then.
            let Some((head, body)) = common::webhook::read_request(&mut reader) else {
                continue;
            };
            let answered = tls
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .and_then(|()| tls.flush());
            if answered.is_ok() {
                let _ = requests.send((head, body));
            }
        }
    });
    (url, received)
}

#[test]
fn pushes_go_over_https_signed_with_the_shared_secret() {
    let test = "push_over_https";
    let certs = match common::certs::TestCerts::make(test) {
        Ok(certs) => certs,
        Err(why) => return common::nats::skip(test, &why),
    };
    let (url, received) = tls_webhook(&certs);
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let ca = certs.path("ca.pem");
    let server = Server::start(
        common::Driver::IoUring,
        &[
            "--push-webhook",
            &url,
            "--push-secret",
            SECRET,
            "--push-ca",
            &ca,
        ],
    );
    let mut alice = server.login("alice", "phone");
    alice.send(
        &json!({"type": "send_message", "messageId": "m1", "receiverId": "bob",
                       "content": "hi"}),
    );
    assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    let (head, body) = received
        .recv_timeout(Duration::from_secs(10))
        .expect("a push arrives over TLS");
    assert!(head.starts_with("POST /hooks/push HTTP/1.1\r\n"), "{head}");
    let pushed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(pushed["userId"], "bob", "{pushed}");
    // The receiver's check: HMAC-SHA256 of "<t>.<body>" with the shared secret.
    common::webhook::check_signature((&head, &body), SECRET);
    // A webhook whose certificate the engine cannot trust gets nothing.
    let untrusted = Server::start(common::Driver::IoUring, &["--push-webhook", &url]);
    let mut carol = untrusted.login("carol", "phone");
    carol.send(
        &json!({"type": "send_message", "messageId": "m2", "receiverId": "dan",
                       "content": "hi"}),
    );
    assert_eq!(carol.recv_type("message_ack")["status"], "queued");
    assert!(received.recv_timeout(Duration::from_secs(2)).is_err());
    common::wait_until("the push counted failed", || {
        untrusted.counter("engine_push_failed_total") == 1
    });
}
