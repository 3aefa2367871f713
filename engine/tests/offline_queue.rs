//! Offline queues in the durable store: `queued` acks after the commit, delivery after
//! `auth_success` in priority order, removal once written, the per-user bound, and a
//! restart that delivers every queued message exactly once.

mod common;

use std::time::Duration;

use common::{fresh_data_dir, on_both_drivers, Server};
use serde_json::json;

fn send(client: &mut common::Client, id: &str, to: &str, content: &str, priority: &str) {
    client.send(
        &json!({"type": "send_message", "messageId": id, "receiverId": to,
                        "content": content, "priority": priority}),
    );
}

#[test]
fn messages_wait_for_an_offline_user_and_arrive_after_auth_in_priority_order() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut alice = server.login("alice", "phone");
        for (id, content, priority) in [
            ("m1", "low", "low"),
            ("m2", "first normal", "normal"),
            ("m3", "high", "high"),
            ("m4", "second normal", "normal"),
        ] {
            send(&mut alice, id, "bob", content, priority);
            let ack = alice.recv_type("message_ack");
            assert_eq!(
                (ack["messageId"].as_str(), ack["status"].as_str()),
                (Some(id), Some("queued"))
            );
        }
        let mut bob = server.connect();
        bob.send(&json!({"type": "auth", "userId": "bob", "deviceId": "phone"}));
        assert_eq!(bob.recv()["type"], "auth_success");
        let order: Vec<String> = (0..4)
            .map(|_| {
                bob.recv_type("new_message")["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(order, ["high", "first normal", "second normal", "low"]);
        // Written to a device, so removed: the next device of bob gets nothing. The removal
        // reached the store before the frames reached bob (it is sent once the kernel
        // has them), so before the tablet's request for the queue.
        let mut tablet = server.login("bob", "tablet");
        tablet.expect_silence(Duration::from_millis(300));
    });
}

#[test]
fn a_full_queue_rejects_with_queue_full() {
    let server = Server::start(common::Driver::IoUring, &["--queue-max-per-user", "2"]);
    let mut alice = server.login("alice", "phone");
    for id in ["a", "b", "c"] {
        send(&mut alice, id, "bob", id, "normal");
    }
    let acks: Vec<_> = (0..3).map(|_| alice.recv_type("message_ack")).collect();
    assert_eq!(acks[0]["status"], "queued");
    assert_eq!(acks[1]["status"], "queued");
    assert_eq!(
        (acks[2]["status"].as_str(), acks[2]["reason"].as_str()),
        (Some("rejected"), Some("queue_full"))
    );
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("engine_store_commit_seconds_count "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("engine_store_commit_seconds_count 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("engine_store_checkpoint_seconds_count "),
        "{metrics}"
    );
    let (_, stats) = server.get("/api/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        (
            stats["messages_persisted"].as_u64(),
            stats["persistence_failures"].as_u64()
        ),
        (Some(2), Some(0))
    );
    let mut bob = server.login("bob", "phone");
    assert_eq!(bob.recv_type("new_message")["content"], "a");
    assert_eq!(bob.recv_type("new_message")["content"], "b");
    bob.expect_silence(Duration::from_millis(200));
}

#[test]
fn queued_messages_survive_a_restart_and_arrive_exactly_once() {
    let dir = fresh_data_dir();
    let dir_arg = dir.to_str().unwrap().to_owned();
    {
        let mut server = Server::start(common::Driver::IoUring, &["--data-dir", &dir_arg]);
        let mut alice = server.login("alice", "phone");
        for i in 0..20 {
            send(
                &mut alice,
                &format!("m{i}"),
                "bob",
                &format!("message {i}"),
                "normal",
            );
            assert_eq!(alice.recv_type("message_ack")["status"], "queued");
        }
        assert_eq!(server.terminate(), Some(0));
    }
    {
        let server = Server::start(common::Driver::IoUring, &["--data-dir", &dir_arg]);
        // A sender retrying after the restart (it never saw the acks, say) is acknowledged
        // again: the store recognises what it holds, so nothing is queued twice.
        let mut alice = server.login("alice", "phone");
        for i in 0..5 {
            send(&mut alice, &format!("m{i}"), "bob", "retried", "normal");
            assert_eq!(alice.recv_type("message_ack")["status"], "queued");
        }
        let mut bob = server.login("bob", "phone");
        for i in 0..20 {
            assert_eq!(
                bob.recv_type("new_message")["content"],
                format!("message {i}")
            );
        }
        bob.expect_silence(Duration::from_millis(200));
        drop(bob);
        server.wait_offline("bob");
        let mut again = server.login("bob", "phone");
        again.expect_silence(Duration::from_millis(300));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_kill_9_mid_stream_loses_no_acked_message_and_repeats_none() {
    let dir = fresh_data_dir();
    let dir_arg = dir.to_str().unwrap().to_owned();
    let receivers: Vec<String> = (0..10).map(|i| format!("offline{i}")).collect();
    let mut acked = std::collections::HashSet::new();
    {
        let mut server = Server::start(common::Driver::IoUring, &["--data-dir", &dir_arg]);
        let mut alice = server.login("alice", "phone");
        // Bursts of 100, each read back before the next; the sixth is in flight when the
        // engine is killed (SIGKILL: no drain, no flush).
        'bursts: for burst in 0..10 {
            for i in 0..100 {
                let id = format!("b{burst}-{i}");
                send(
                    &mut alice,
                    &id,
                    &receivers[i % receivers.len()],
                    &id,
                    "normal",
                );
            }
            if burst == 5 {
                server.child.kill().unwrap();
                let _ = server.child.wait();
            }
            for _ in 0..100 {
                let Some(reply) = alice.try_recv() else {
                    break 'bursts;
                };
                if reply["status"] == "queued" {
                    acked.insert(reply["messageId"].as_str().unwrap().to_owned());
                }
            }
            assert!(burst < 5, "the engine answered after it was killed");
        }
    }
    assert!(acked.len() >= 500, "{} acked before the kill", acked.len());
    let server = Server::start(common::Driver::IoUring, &["--data-dir", &dir_arg]);
    let mut delivered = Vec::new();
    for user in &receivers {
        let mut device = server.login(user, "d");
        while let Some(message) = device.recv_within(Duration::from_millis(300)) {
            if message["type"] == "new_message" {
                delivered.push(message["messageId"].as_str().unwrap().to_owned());
            }
        }
    }
    let unique: std::collections::HashSet<_> = delivered.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "a message was delivered twice"
    );
    let missing: Vec<_> = acked.iter().filter(|id| !unique.contains(*id)).collect();
    assert!(missing.is_empty(), "acked as queued but lost: {missing:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_sender_gets_a_delivery_receipt_queued_if_it_went_offline_too() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    send(&mut alice, "r1", "bob", "while you were out", "normal");
    assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    // Bob comes online while alice is still here: she gets the receipt at once.
    let mut bob = server.login("bob", "phone");
    assert_eq!(bob.recv_type("new_message")["messageId"], "r1");
    let receipt = alice.recv_type("delivery_receipt");
    assert_eq!(
        (
            receipt["messageId"].as_str(),
            receipt["receiverId"].as_str()
        ),
        (Some("r1"), Some("bob"))
    );
    // Now to carol, offline; alice leaves before carol arrives: the receipt waits for her.
    send(&mut alice, "r2", "carol", "later", "normal");
    assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    drop(alice);
    server.wait_offline("alice");
    let mut carol = server.login("carol", "phone");
    assert_eq!(carol.recv_type("new_message")["messageId"], "r2");
    // The receipt is queued for alice, or written to her new device if it registers
    // first: either way she gets it.
    let mut alice = server.login("alice", "laptop");
    let receipt = alice.recv_type("delivery_receipt");
    assert_eq!(
        (
            receipt["messageId"].as_str(),
            receipt["receiverId"].as_str()
        ),
        (Some("r2"), Some("carol"))
    );
    // A message sent through the HTTP API on alice's behalf gets no receipt.
    let body = r#"{"sender_id":"alice","receiver_id":"zed","text":"from the backend"}"#;
    let (status, _) = server.request("POST", "/api/messages/send", &[], body);
    assert_eq!(status, 202);
    assert_eq!(alice.recv_type("new_message")["receiverId"], "zed"); // her own copy
    let mut zed = server.login("zed", "phone");
    assert_eq!(zed.recv_type("new_message")["content"], "from the backend");
    alice.expect_silence(Duration::from_millis(300));
    drop(bob);
}

#[test]
fn a_full_disk_fails_queueing_loudly_and_online_traffic_goes_on() {
    // 2 MiB of file for the store: 60 KB messages fill it within a few dozen.
    let server = Server::start_with_file_size_limit(common::Driver::IoUring, &[], 2 * 1024 * 1024);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    let big = "x".repeat(60_000);
    let (mut queued, mut failed) = (Vec::new(), 0);
    for i in 0..200 {
        let id = format!("big{i}");
        send(&mut alice, &id, "carol", &big, "normal");
        let reply = alice.recv();
        match (reply["type"].as_str(), reply["status"].as_str()) {
            (Some("message_ack"), Some("queued")) => queued.push(id),
            (Some("error"), _) => {
                assert_eq!(
                    (reply["code"].as_str(), reply["ref"].as_str()),
                    (Some("persistence_failed"), Some(&*id)),
                    "{reply}"
                );
                failed += 1;
                if failed == 3 {
                    break;
                }
            }
            _ => panic!("unexpected reply {reply}"),
        }
    }
    assert!(
        failed == 3 && !queued.is_empty(),
        "queued {} failed {failed}",
        queued.len()
    );
    // Online traffic is untouched by the store's trouble.
    send(&mut alice, "online", "bob", "still routing", "normal");
    assert_eq!(bob.recv_type("new_message")["content"], "still routing");
    assert_eq!(alice.recv_type("message_ack")["status"], "sent");
    let (_, stats) = server.get("/api/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["persistence_failures"], 3, "{stats}");
    // Everything acked queued is there; nothing that failed is. Read once the disk has
    // room again (the store reopens its file then, if the full disk kept it from it).
    server.make_room();
    let mut carol = server.login("carol", "phone");
    let mut got = Vec::new();
    while let Some(message) = carol.recv_within(Duration::from_millis(500)) {
        if message["type"] == "new_message" {
            got.push(message["messageId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(got, queued);
}

#[test]
fn messages_past_the_retention_period_expire_unread() {
    // 0.00003 days is 2.6 s; the store sweeps every tenth of that.
    let server = Server::start(common::Driver::IoUring, &["--retention-days", "0.00003"]);
    let mut alice = server.login("alice", "phone");
    send(&mut alice, "old", "ghost", "too late", "normal");
    assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    common::wait_until("the retention sweep to expire the message", || {
        server
            .get("/metrics")
            .1
            .contains("engine_store_expired_total 1\n")
    });
    send(&mut alice, "new", "ghost", "in time", "normal");
    assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    let mut ghost = server.login("ghost", "phone");
    assert_eq!(ghost.recv_type("new_message")["messageId"], "new");
    ghost.expect_silence(Duration::from_millis(300));
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("engine_store_expired_total 1\n"),
        "{metrics}"
    );
    // Its history entry went with it; the one delivered in time stays.
    assert!(
        metrics.contains("engine_store_history_expired_total 1\n"),
        "{metrics}"
    );
    alice.send(&json!({"type": "history", "peerId": "ghost"}));
    let history = alice.recv_type("history");
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
}

#[test]
fn a_retry_is_acknowledged_again_but_not_delivered_twice() {
    let server = Server::start(common::Driver::IoUring, &["--queue-max-per-user", "2"]);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    // Online: the same id twice reaches bob once; alice gets both acks.
    send(&mut alice, "once", "bob", "hello", "normal");
    send(&mut alice, "once", "bob", "hello", "normal");
    assert_eq!(alice.recv_type("message_ack")["status"], "sent");
    assert_eq!(alice.recv_type("message_ack")["status"], "sent");
    assert_eq!(bob.recv_type("new_message")["messageId"], "once");
    bob.expect_silence(Duration::from_millis(300));
    // Offline: queued once, acknowledged queued twice.
    for _ in 0..2 {
        send(&mut alice, "later", "carol", "hi", "normal");
        assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    }
    // A message the store refused is tried again on retry, not acknowledged as queued.
    send(&mut alice, "fills", "carol", "x", "normal");
    assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    for _ in 0..2 {
        send(&mut alice, "refused", "carol", "y", "normal");
        let ack = alice.recv_type("message_ack");
        assert_eq!(
            (ack["status"].as_str(), ack["reason"].as_str()),
            (Some("rejected"), Some("queue_full"))
        );
    }
    let mut carol = server.login("carol", "phone");
    assert_eq!(carol.recv_type("new_message")["messageId"], "later");
    assert_eq!(carol.recv_type("new_message")["messageId"], "fills");
    carol.expect_silence(Duration::from_millis(300));
}

#[test]
fn a_long_queue_reaches_a_slow_reader_whole_and_in_order() {
    // 500 × 10 KB comes in about twenty parts of at most 256 KiB, each asked for only
    // once the kernel took the previous one and removed only then; a device that does not
    // read at first gets it all, in order, and nothing stays queued.
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    let body = "y".repeat(10_000);
    for i in 0..500 {
        send(&mut alice, &format!("long{i}"), "dave", &body, "normal");
        assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    }
    let mut dave = server.login("dave", "phone");
    std::thread::sleep(Duration::from_millis(1500)); // not reading
    for i in 0..500 {
        assert_eq!(
            dave.recv_type("new_message")["messageId"],
            format!("long{i}")
        );
    }
    dave.expect_silence(Duration::from_millis(300));
    common::wait_until("every part to be removed", || {
        let (_, queue) = server.get("/api/messages/queue/dave");
        queue.contains(r#""messages":[],"more":false"#)
    });
}

#[test]
fn messages_that_come_within_the_commit_spacing_share_a_commit() {
    // 100 ms between commits (the most allowed), and a message every 20 ms for 200 ms:
    // three commits or so, where each message would have its own without the spacing.
    let server = Server::start(
        common::Driver::IoUring,
        &["--store-commit-spacing-us", "100000"],
    );
    let mut alice = server.login("alice", "phone");
    let before = server.counter("engine_store_commits_total");
    for i in 0..10 {
        send(&mut alice, &format!("s{i}"), "bob", "spaced", "normal");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        assert_eq!(alice.recv_type("message_ack")["status"], "queued");
    }
    let spent = server.counter("engine_store_commits_total") - before;
    assert!((1..=4).contains(&spent), "{spent} commits for ten messages");
}
