//! The HTTP API against the real engine: the token, stats and metrics, sending and
//! broadcasting to WebSocket users, and every refusal (401, 400, 404, 405, 413, 503).

mod common;

use common::{on_both_drivers, split_response, Server};
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";

fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (status, text) = server.request("POST", path, &[&auth], &body.to_string());
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

#[test]
fn the_api_needs_the_token_and_says_how() {
    let server = Server::start(common::Driver::IoUring, &["--api-token", TOKEN]);
    let (status, body) = server.get("/api/stats");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (status, _) = server.request("GET", "/api/stats", &["Authorization: Bearer nope"], "");
    assert_eq!(status, 401);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (status, body) = server.request("GET", "/api/stats", &[&auth], "");
    assert_eq!(status, 200, "{body}");
    // Probes and scrapers need no token.
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.get("/metrics").0, 200);
}

#[test]
fn an_answer_slower_than_the_handshake_deadline_still_comes() {
    // Each commit takes 600 ms; a request head must come within 200 ms. The send was
    // read in time, so its answer is awaited, not cut off by that deadline.
    let args = ["--api-token", TOKEN, "--handshake-timeout-ms", "200"];
    let env = [("ENGINE_FAILPOINT", "slow_commit_ms:600")];
    let server = Server::start_with_env(common::Driver::IoUring, &args, &env);
    let body = json!({"sender_id": "alice", "receiver_id": "nobody-online", "text": "slow"});
    let (status, answer) = post(&server, "/api/messages/send", &body);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
}

#[test]
fn send_reaches_the_receivers_devices_and_answers_202() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &["--api-token", TOKEN]);
        let mut bob = server.login("bob", "phone");
        let mut alice = server.login("alice", "laptop");
        let body = json!({"sender_id": "alice", "receiver_id": "bob", "text": "from the backend",
                          "priority": "high"});
        let (status, answer) = post(&server, "/api/messages/send", &body);
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["status"], "sent");
        let message_id = answer["message_id"].as_str().unwrap().to_owned();
        let got = bob.recv_type("new_message");
        assert_eq!(
            (
                &got["content"],
                &got["senderId"],
                &got["priority"],
                &got["messageId"]
            ),
            (
                &json!("from the backend"),
                &json!("alice"),
                &json!("high"),
                &json!(message_id)
            )
        );
        // The sender's own devices see what was sent on their behalf.
        assert_eq!(
            alice.recv_type("new_message")["messageId"],
            json!(message_id)
        );
        // Integer ids (seed 001) are the same users as strings.
        let mut seven = server.login("7", "d");
        let body = json!({"sender_id": 1, "receiver_id": 7, "text": "n"});
        assert_eq!(post(&server, "/api/messages/send", &body).0, 202);
        assert_eq!(seven.recv_type("new_message")["senderId"], "1");
    });
}

#[test]
fn send_to_an_offline_user_is_queued_and_delivered_when_they_connect() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let body = json!({"sender_id": "a", "receiver_id": "nobody", "text": "x"});
    let (status, answer) = post(&server, "/api/messages/send", &body);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "queued");
    let (status, queue) = server.get("/api/messages/queue/nobody");
    assert_eq!(status, 200, "{queue}");
    let queue: Value = serde_json::from_str(&queue).unwrap();
    assert_eq!(queue["messages"][0]["message_id"], answer["message_id"]);
    assert_eq!(queue["messages"][0]["text"], "x");
    let mut nobody = server.login("nobody", "d");
    assert_eq!(
        nobody.recv_type("new_message")["messageId"],
        answer["message_id"]
    );
    // Delivered, so removed (the removal commits with the store's next batch).
    common::wait_until("the delivered message to leave the queue", || {
        server
            .get("/api/messages/queue/nobody")
            .1
            .contains(r#""messages":[]"#)
    });
}

#[test]
fn the_queue_endpoint_lists_in_delivery_order_and_drains_on_request() {
    let server = Server::start(common::Driver::IoUring, &[]);
    for (text, priority) in [
        ("low one", "low"),
        ("normal one", "normal"),
        ("high one", "high"),
    ] {
        let body =
            json!({"sender_id": "s", "receiver_id": "later", "text": text, "priority": priority});
        assert_eq!(post(&server, "/api/messages/send", &body).0, 202);
    }
    let texts = |queue: &str| -> Vec<String> {
        let queue: Value = serde_json::from_str(queue).unwrap();
        queue["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, queue) = server.get("/api/messages/queue/later?drain=true");
    assert_eq!(status, 200, "{queue}");
    assert_eq!(texts(&queue), ["high one", "normal one", "low one"]);
    assert!(queue.contains(r#""more":false"#), "{queue}");
    let (_, queue) = server.get("/api/messages/queue/later");
    assert!(texts(&queue).is_empty(), "{queue}");
}

#[test]
fn pipelined_requests_are_answered_in_order_behind_a_pending_send() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let _bob = server.login("bob", "phone");
    let body = r#"{"sender_id":"a","receiver_id":"bob","text":"1"}"#;
    let send = format!(
        "POST /api/messages/send HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = format!(
        "{send}GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n{send}GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let response = server.http(&raw);
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &response[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["202", "200", "202", "404"], "{response}");
}

#[test]
fn broadcast_reaches_listed_or_all_online_users_and_counts_them() {
    let args = ["--reactors", "3", "--queue-max-per-user", "1"];
    let server = Server::start(common::Driver::IoUring, &args);
    let mut users: Vec<_> = (0..6)
        .map(|i| server.login(&format!("u{i}"), "d"))
        .collect();
    let body = json!({"message": {"sender_id": "ops", "text": "maintenance at 2"},
                      "user_ids": ["u0", "u1", "u2", "ghost"]});
    let (status, answer) = post(&server, "/api/messages/broadcast", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["delivered"], &answer["queued"], &answer["offline"]),
        (&json!(3), &json!(1), &json!(0))
    );
    for user in &mut users[..3] {
        let got = user.recv_type("new_message");
        assert_eq!(got["content"], "maintenance at 2");
    }
    users[3].expect_silence(std::time::Duration::from_millis(200));
    let body = json!({"message": {"sender_id": "ops", "text": "all"}, "all": true});
    let (status, answer) = post(&server, "/api/messages/broadcast", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], 6);
    for (i, user) in users.iter_mut().enumerate() {
        let got = user.recv_type("new_message");
        assert_eq!(
            (got["content"].as_str(), got["receiverId"].as_str()),
            (Some("all"), Some(&*format!("u{i}")))
        );
    }
    // The offline user's queue holds one message at most here: a second broadcast to it
    // is counted as neither delivered nor queued.
    let body = json!({"message": {"sender_id": "ops", "text": "again"}, "user_ids": ["ghost"]});
    let (_, answer) = post(&server, "/api/messages/broadcast", &body);
    assert_eq!(
        (&answer["delivered"], &answer["queued"], &answer["offline"]),
        (&json!(0), &json!(0), &json!(1))
    );
    let mut ghost = server.login("ghost", "d");
    let got = ghost.recv_type("new_message");
    assert_eq!(
        (got["content"].as_str(), got["receiverId"].as_str()),
        (Some("maintenance at 2"), Some("ghost"))
    );
    ghost.expect_silence(std::time::Duration::from_millis(200));
}

#[test]
fn bad_requests_get_json_errors_with_the_right_status() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let (status, body) = server.request("POST", "/api/messages/send", &[], "{not json");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_json"));
    let (status, body) = server.request("POST", "/api/messages/send", &[], r#"{"sender_id":"a"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("receiver_id"), "{body}");
    let (status, body) = server.request("GET", "/api/messages/send", &[], "");
    assert_eq!(status, 405, "{body}");
    let (status, _) = server.request("POST", "/api/nothing", &[], "{}");
    assert_eq!(status, 404);
    let huge = "x".repeat(70 * 1024);
    let (status, body) = split_response(&server.http(&format!(
        "POST /api/messages/send HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{huge}",
        huge.len()
    )));
    assert_eq!(status, 413, "{body}");
}

#[test]
fn stats_and_metrics_count_what_happened() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut a = server.login("a", "d");
    let mut b = server.login("b", "d");
    a.send(&json!({"type": "send_message", "messageId": "m1", "receiverId": "b", "content": "hi"}));
    b.recv_type("new_message");
    a.recv_type("message_ack");
    a.send_text("{oops");
    a.recv_type("error");
    let (status, body) = server.get("/api/stats");
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["online_users"], 2);
    assert!(
        stats["messages_processed"].as_u64().unwrap() >= 4,
        "{stats}"
    );
    assert!(stats["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["reactors"].as_array().unwrap().len(), 2);
    assert_eq!(stats["messages_persisted"], 0);
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    let total = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(total("engine_handshakes_total"), 2.0, "{metrics}");
    assert_eq!(
        total("engine_messages_in_total{reactor=\"0\",type=\"send_message\"}")
            + total("engine_messages_in_total{reactor=\"1\",type=\"send_message\"}"),
        1.0
    );
    assert_eq!(
        total("engine_errors_total{reactor=\"0\",code=\"bad_json\"}")
            + total("engine_errors_total{reactor=\"1\",code=\"bad_json\"}"),
        1.0
    );
    assert_eq!(
        total("engine_routing_latency_seconds_count"),
        1.0,
        "{metrics}"
    );
    assert!(total("engine_bytes_in_total") > 0.0);
    let out = |kind: &str| {
        total(&format!(
            "engine_messages_out_by_type_total{{reactor=\"0\",type=\"{kind}\"}}"
        )) + total(&format!(
            "engine_messages_out_by_type_total{{reactor=\"1\",type=\"{kind}\"}}"
        ))
    };
    assert_eq!(
        (out("new_message"), out("message_ack"), out("auth_success")),
        (1.0, 1.0, 2.0),
        "{metrics}"
    );
}
