//! Issue 22's findings against the real engine, each reproduced as an attacker would try
//! it: what an open gateway off loopback does, request smuggling through `Content-Length`,
//! cross-site calls from other web pages.

mod common;

use common::{fresh_data_dir, split_response, Server};

/// A WebSocket upgrade request, with any extra header lines.
fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// The status line's code of the first response on a fresh connection to `server`.
fn first_status(server: &Server, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[test]
fn an_open_gateway_off_loopback_refuses_to_start_unless_allowed() {
    let data = fresh_data_dir();
    let start = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["--listen", "0.0.0.0:0", "--data-dir"])
            .arg(&*data)
            .args(args)
            .env_remove("ENGINE_JWT_SECRET")
            .env_remove("ENGINE_API_TOKEN")
            .env_remove("ENGINE_ALLOW_OPEN")
            .output()
            .unwrap()
    };
    let output = start(&[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for flag in ["--jwt-secret", "--api-token", "--allow-open"] {
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    // The API token alone still leaves open mode: refused, naming only the JWT secret.
    let output = start(&["--api-token", "t0ken"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--jwt-secret"), "{stderr}");
    assert!(!stderr.contains("--api-token"), "{stderr}");

    // Meant: it serves, on every address.
    let server = Server::start(
        common::Driver::IoUring,
        &["--listen", "0.0.0.0:0", "--allow-open"],
    );
    assert_eq!(server.get("/health/live").0, 200);
    let secured = Server::start(
        common::Driver::IoUring,
        &[
            "--listen",
            "0.0.0.0:0",
            "--jwt-secret",
            "k",
            "--api-token",
            "t",
        ],
    );
    assert_eq!(secured.get("/health/live").0, 200);
}

#[test]
fn two_content_lengths_are_refused_and_the_connection_closed() {
    let server = Server::start(common::Driver::IoUring, &[]);
    // Read with CL: 0 the body would be a second request; a lenient proxy that read the
    // second header would have forwarded it as one body.
    let smuggled = "GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n";
    for lengths in [
        format!("Content-Length: 0\r\nContent-Length: {}", smuggled.len()),
        format!("Content-Length: +{}", smuggled.len()),
    ] {
        let raw = format!(
            "POST /api/messages/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             {lengths}\r\n\r\n{smuggled}"
        );
        let response = server.http(&raw);
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "one answer, then closed: {response}"
        );
        let (status, body) = split_response(&response);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("Content-Length"), "{body}");
    }
}

#[test]
fn a_foreign_page_cannot_post_to_the_api_as_a_simple_request() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let _bob = server.login("bob", "phone");
    // What a page on any site may send without a CORS preflight.
    let body = r#"{"sender_id":"mallory","receiver_id":"bob","text":"hi"}"#;
    let form = ["Content-Type: text/plain", "Origin: https://evil.example"];
    let (status, answer) = server.request("POST", "/api/messages/send", &form, body);
    assert_eq!(status, 415, "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    let (status, answer) = server.request("POST", "/api/messages/send", &[], body);
    assert_eq!(status, 202, "{answer}");
}

#[test]
fn allowed_origins_refuse_other_pages_upgrades_and_api_calls() {
    let server = Server::start(
        common::Driver::IoUring,
        &[
            "--allowed-origins",
            "https://chat.example,http://localhost:3000",
        ],
    );
    assert_eq!(
        first_status(
            &server,
            &upgrade_request("Origin: https://evil.example\r\n")
        ),
        403
    );
    assert_eq!(
        first_status(&server, &upgrade_request("Origin: null\r\n")),
        403
    );
    assert_eq!(
        first_status(
            &server,
            &upgrade_request("Origin: https://chat.example\r\n")
        ),
        101
    );
    assert_eq!(
        first_status(&server, &upgrade_request("")),
        101,
        "no Origin: not a page"
    );
    let body = r#"{"sender_id":"a","receiver_id":"b","text":"hi"}"#;
    let (status, answer) = server.request(
        "POST",
        "/api/messages/send",
        &["Origin: https://evil.example"],
        body,
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("forbidden_origin"), "{answer}");
    let (status, answer) = server.request(
        "POST",
        "/api/messages/send",
        &["Origin: http://localhost:3000"],
        body,
    );
    assert_eq!(status, 202, "{answer}");
    let (_, metrics) = server.get("/metrics");
    let refused: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("engine_handshake_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(refused, 2, "refused upgrades are counted");
}

#[test]
fn one_id_rule_for_the_websocket_and_the_api() {
    let server = Server::start(common::Driver::IoUring, &[]);
    // The API used to take 256-byte ids where the WebSocket takes 128: a queue for a user
    // who can never log in.
    let long = "u".repeat(129);
    for receiver in [
        long.as_str(),
        "bob\nINFO forged",
        "\u{202E}nimda",
        "ad\u{200B}min",
    ] {
        let body = serde_json::json!({"sender_id": "ops", "receiver_id": receiver, "text": "hi"});
        let (status, answer) = server.request("POST", "/api/messages/send", &[], &body.to_string());
        assert_eq!(status, 400, "{receiver:?}: {answer}");
        assert!(answer.contains("receiver_id"), "{answer}");
    }
    let (status, answer) = server.get("/api/messages/queue/bob%0Aforged");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = server.get("/api/messages/queue/caf%C3%A9");
    assert_eq!(status, 200, "percent-encoded UTF-8 is a user id: {answer}");

    let mut alice = server.login("alice", "phone");
    alice.send(
        &serde_json::json!({"type": "send_message", "messageId": "m1",
                                   "receiverId": "bob\u{202E}", "content": "hi"}),
    );
    let error = alice.recv_type("error");
    assert_eq!(error["code"], "bad_request", "{error}");
    assert_eq!(error["ref"], "m1", "{error}");
}

#[test]
fn any_fault_in_auth_fails_it_and_closes_with_1008() {
    let server = Server::start(common::Driver::IoUring, &[]);
    for auth in [
        serde_json::json!({"type": "auth", "userId": "\u{202E}nimda", "deviceId": "d"}),
        serde_json::json!({"type": "auth", "userId": "", "deviceId": "d"}),
        serde_json::json!({"type": "auth", "deviceId": "d"}),
        serde_json::json!({"type": "auth", "userId": "u", "deviceId": "d", "resume": 7}),
    ] {
        let mut client = server.connect();
        client.send(&auth);
        let error = client.recv();
        assert_eq!(error["code"], "auth_failed", "{auth}: {error}");
        assert_eq!(client.expect_close(), 1008, "{auth}");
    }
}
