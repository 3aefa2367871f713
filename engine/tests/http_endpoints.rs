//! HTTP on the WebSocket port: health endpoints, 404, refused upgrades, malformed requests.

mod common;

use common::{on_both_drivers, Server};

#[test]
fn health_reports_live_counts() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let _a = server.login("alice", "phone");
        let _b = server.login("alice", "laptop");
        let _c = server.login("bob", "phone");
        let (status, body) = server.get("/health");
        assert_eq!(status, 200, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "healthy");
        assert_eq!(health["metrics"]["online_users"], 2);
        // Three WebSockets plus this HTTP request.
        assert_eq!(health["metrics"]["connections"], 4);
        assert!(health["metrics"]["uptime_seconds"].is_u64());
        assert_eq!(server.get("/health/live").0, 200);
        assert_eq!(server.get("/health/ready").0, 200);
    });
}

#[test]
fn unknown_paths_are_404_with_a_json_body() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let (status, body) = server.get("/nope");
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let two = "GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\nGET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let response = server.http(two);
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 2, "{response}");
}

#[test]
fn refused_upgrades_and_malformed_requests_get_clear_statuses() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let old_version = server.http(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        assert!(old_version.starts_with("HTTP/1.1 426"), "{old_version}");
        assert!(old_version.contains("Sec-WebSocket-Version: 13"));
        let no_key = server.http("GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
        assert!(no_key.starts_with("HTTP/1.1 400"), "{no_key}");
        let plain = server.http("GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
        let garbage = server.http("\x01\x02 nonsense\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        let huge = server.http(&format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        ));
        assert!(huge.starts_with("HTTP/1.1 431"), "{huge}");
    });
}
