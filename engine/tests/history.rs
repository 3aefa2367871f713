//! Conversation history and `read_receipt` by id: every chat message (delivered or
//! queued) is kept per conversation, read newest first with a `before` cursor, kept across
//! restarts; a receipt naming only the message id finds its sender.

mod common;

use std::time::Duration;

use common::{fresh_data_dir, Client, Server};
use serde_json::{json, Value};

fn history(client: &mut Client, request: Value) -> Vec<String> {
    client.send(&request);
    let answer = client.recv_type("history");
    answer["messages"]
        .as_array()
        .expect("messages is an array")
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn history_reads_a_conversation_newest_first_in_pages() {
    let server = Server::start(common::Driver::IoUring, &["--reactors", "2"]);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    for i in 0..4 {
        assert_eq!(
            alice.send_chat(&format!("a{i}"), "bob", &format!("a{i}"))["status"],
            "sent"
        );
        // Distinct timestamps, so the cursor below splits the pages cleanly.
        std::thread::sleep(Duration::from_millis(3));
    }
    assert_eq!(bob.send_chat("b0", "alice", "b0")["status"], "sent");
    assert_eq!(
        alice.send_chat("c0", "carol", "to carol")["status"],
        "queued"
    );
    let newest = history(
        &mut alice,
        json!({"type": "history", "peerId": "bob", "limit": 3}),
    );
    assert_eq!(newest, ["b0", "a3", "a2"]);
    // Both sides see the same conversation.
    let all = history(&mut bob, json!({"type": "history", "peerId": "alice"}));
    assert_eq!(all, ["b0", "a3", "a2", "a1", "a0"]);
    // The cursor: the oldest timestamp of the first page.
    alice.send(&json!({"type": "history", "peerId": "bob", "limit": 3}));
    let page = alice.recv_type("history");
    assert_eq!(page["peerId"], "bob");
    let last = &page["messages"][2];
    assert_eq!(
        (last["type"].as_str(), last["senderId"].as_str()),
        (Some("new_message"), Some("alice"))
    );
    let before = last["timestamp"].as_u64().unwrap();
    let older = history(
        &mut alice,
        json!({"type": "history", "peerId": "bob", "before": before}),
    );
    assert_eq!(older, ["a1", "a0"]);
    // A queued message is in history too; a stranger's conversation is empty.
    let carol = history(&mut alice, json!({"type": "history", "peerId": "carol"}));
    assert_eq!(carol, ["to carol"]);
    assert!(history(&mut alice, json!({"type": "history", "peerId": "dave"})).is_empty());
    let (_, stats) = server.get("/api/stats");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["messages_recorded"], 6, "{stats}");
}

#[test]
fn a_history_page_holds_at_most_a_mebibyte_and_says_more_remain() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    // 20 messages of 60 KB: 1.2 MB of conversation, over one page's 1 MiB.
    let big = "x".repeat(60_000);
    for i in 0..20 {
        let id = format!("big{i}");
        assert_eq!(alice.send_chat(&id, "bob", &big)["status"], "sent");
        assert_eq!(bob.recv_type("new_message")["messageId"], *id);
    }
    alice.send(&json!({"type": "history", "peerId": "bob", "limit": 50}));
    let page = alice.recv_type("history");
    let first = page["messages"].as_array().unwrap();
    let bytes: usize = first.iter().map(|m| m.to_string().len()).sum();
    assert!(bytes <= 1 << 20, "{bytes} bytes in one page");
    // At most 17 fit; fewer when the cut would split messages of the same millisecond.
    assert!((10..=17).contains(&first.len()), "{} messages", first.len());
    assert_eq!(page["more"], true);
    // Paging back with the cursor reads the rest, and says nothing more remains.
    let before = first.last().unwrap()["timestamp"].as_u64().unwrap();
    alice.send(&json!({"type": "history", "peerId": "bob", "limit": 50, "before": before}));
    let page = alice.recv_type("history");
    let rest = page["messages"].as_array().unwrap();
    assert_eq!(page["more"], false);
    let mut ids: Vec<&str> = first
        .iter()
        .chain(rest)
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every message once across the two pages");
}

#[test]
fn bad_history_requests_get_bad_request_naming_the_field() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    for (request, field) in [
        (json!({"type": "history"}), "peerId"),
        (
            json!({"type": "history", "peerId": "bob", "limit": 0}),
            "limit",
        ),
        (
            json!({"type": "history", "peerId": "bob", "limit": 501}),
            "limit",
        ),
        (
            json!({"type": "history", "peerId": "bob", "limit": "ten"}),
            "limit",
        ),
        (
            json!({"type": "history", "peerId": "bob", "before": "yesterday"}),
            "before",
        ),
        (
            json!({"type": "history", "peerId": "bob", "before": -1}),
            "before",
        ),
    ] {
        alice.send(&request);
        let error = alice.recv_type("error");
        assert_eq!(error["code"], "bad_request", "{request}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    // The connection is still good.
    assert!(history(
        &mut alice,
        json!({"type": "history", "peerId": "bob", "limit": 500})
    )
    .is_empty());
}

#[test]
fn history_survives_a_restart() {
    let dir = fresh_data_dir();
    let data_dir = dir.to_str().unwrap().to_owned();
    {
        let mut server = Server::start(common::Driver::IoUring, &["--data-dir", &data_dir]);
        let mut alice = server.login("alice", "phone");
        let _bob = server.login("bob", "phone");
        assert_eq!(alice.send_chat("m1", "bob", "kept")["status"], "sent");
        assert_eq!(server.terminate(), Some(0));
    }
    let server = Server::start(common::Driver::IoUring, &["--data-dir", &data_dir]);
    let mut bob = server.login("bob", "phone");
    assert_eq!(
        history(&mut bob, json!({"type": "history", "peerId": "alice"})),
        ["kept"]
    );
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_read_receipt_by_id_alone_reaches_the_sender_even_offline() {
    let server = Server::start(common::Driver::IoUring, &["--reactors", "2"]);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    assert_eq!(
        alice.send_chat("hello-1", "bob", "hi bob")["status"],
        "sent"
    );
    bob.recv_type("new_message");
    bob.send(&json!({"type": "read_receipt", "messageId": "hello-1"}));
    let receipt = alice.recv_type("read_receipt");
    assert_eq!(
        (receipt["messageId"].as_str(), receipt["readerId"].as_str()),
        (Some("hello-1"), Some("bob"))
    );
    // Nothing with that id reached bob from anyone: a clear error, with the id.
    bob.send(&json!({"type": "read_receipt", "messageId": "never-sent"}));
    let error = bob.recv_type("error");
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("not_found"), Some("never-sent"))
    );
    // The sender is offline by the time the message is read: the receipt waits for it.
    drop(alice);
    server.wait_offline("alice");
    bob.send(&json!({"type": "read_receipt", "messageId": "hello-1"}));
    // Queued for alice, or written to her new device if it registers first: either way
    // she gets it once.
    let mut alice = server.login("alice", "laptop");
    let receipt = alice.recv_type("read_receipt");
    assert_eq!(receipt["messageId"], "hello-1");
    alice.expect_silence(Duration::from_millis(200));
}
