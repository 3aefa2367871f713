//! Inboxes across nodes (PROTOCOL.md "Clusters"): a cluster node keeps every user's inbox
//! in JetStream, so a message sent on one node reaches a device on another with its
//! `seq`, a queue written while its user is offline is drained on another node, and a
//! killed node's users resume on another with nothing lost. Against a real `nats-server`
//! that each test starts; without one these tests say why and pass, except under CI.

mod common;

use std::time::{Duration, Instant};

use common::nats::{two_nodes, user_stream, with_nats};
use serde_json::{json, Value};

/// A v2 device's first login: nothing to resume.
const FRESH: (&str, u64) = ("", 0);

/// The `auth_success` fields a resume starts from.
fn position(greeting: &Value) -> (String, u64) {
    let epoch = greeting["epoch"].as_str().expect("an epoch").to_owned();
    (epoch, greeting["seq"].as_u64().expect("a seq"))
}

#[test]
fn a_message_reaches_a_device_on_another_node_with_one_seq_everywhere() {
    with_nats("messages_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let (mut bob_on_b, greeting) = b.login_resuming("bob", "phone", FRESH);
        let (epoch, _) = position(&greeting);
        assert!(!epoch.is_empty(), "the stream's epoch: {greeting}");
        let mut alice = a.login("alice", "phone");
        // Stored in JetStream before the ack; bob's device is on the other node, which
        // says so: `sent`, as on one node.
        let ack = alice.send_chat("m-1", "bob", "across");
        assert_eq!(ack["status"], "sent", "{ack}");
        let (content, first) = bob_on_b.next_message();
        assert_eq!(content, "across");
        bob_on_b.send(&json!({"type": "ack", "seq": first}));
        // A second device of bob, on the sender's node, resuming where the first is:
        // the next message reaches both, with the same seq.
        let (mut bob_on_a, greeting) = a.login_resuming("bob", "laptop", (&epoch, first));
        assert_eq!(greeting["resumed"], true, "{greeting}");
        let ack = alice.send_chat("m-2", "bob", "to both");
        assert_eq!(ack["status"], "sent", "a device of bob is on a: {ack}");
        let on_b = bob_on_b.next_message();
        let on_a = bob_on_a.next_message();
        assert_eq!(on_a, on_b);
        assert!(on_a.1 > first, "{on_a:?} after {first}");
        for device in [&mut bob_on_a, &mut bob_on_b] {
            device.expect_silence(Duration::from_millis(300));
        }
    });
}

#[test]
fn a_senders_device_on_another_node_gets_her_message_kept_in_her_inbox_while_it_is_online() {
    with_nats("sender_copy_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let (mut tablet, greeting) = b.login_resuming("alice", "tablet", FRESH);
        let (epoch, start) = position(&greeting);
        let mut phone = a.login("alice", "phone");
        assert_eq!(phone.send_chat("m-1", "bob", "hello")["status"], "queued");
        // Her tablet, on the other node, gets the copy with a seq: it is in her inbox.
        let (content, seq) = tablet.next_message();
        assert_eq!(content, "hello");
        assert!(seq > start, "{seq} after {start}");
        phone.expect_silence(Duration::from_millis(300));
        // Resumed from before it, the tablet gets it again: it was kept.
        tablet.close_with(1000);
        let (mut tablet, greeting) = b.login_resuming("alice", "tablet", (&epoch, start));
        assert_eq!(greeting["resumed"], true, "{greeting}");
        assert_eq!(tablet.next_message(), (content, seq));
        tablet.send(&json!({"type": "ack", "seq": seq}));
        // With no other device of hers online anywhere, nothing is kept, as on one node.
        tablet.close_with(1000);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(phone.send_chat("m-2", "bob", "alone")["status"], "queued");
        std::thread::sleep(Duration::from_millis(300));
        let (mut laptop, greeting) = b.login_resuming("alice", "laptop", (&epoch, seq));
        assert_eq!(greeting["resumed"], true, "{greeting}");
        laptop.expect_silence(Duration::from_millis(500));
    });
}

#[test]
fn a_queue_written_offline_is_drained_on_another_node_and_an_api_send_joins_it() {
    with_nats("queue_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        for i in 0..3 {
            let ack = alice.send_chat(&format!("m-{i}"), "bob", &format!("offline {i}"));
            assert_eq!(ack["status"], "queued", "{ack}");
        }
        let body = r#"{"sender_id":"carol","receiver_id":"bob","text":"by the API"}"#;
        let (status, answer) = a.request("POST", "/api/messages/send", &[], body);
        assert_eq!(status, 202, "{answer}");
        // Bob comes back on the other node: all four, in the order they were sent.
        let (mut bob, greeting) = b.login_resuming("bob", "phone", FRESH);
        let mut seqs = Vec::new();
        for expected in ["offline 0", "offline 1", "offline 2", "by the API"] {
            let (content, seq) = bob.next_message();
            assert_eq!(content, expected);
            seqs.push(seq);
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(greeting["seq"].as_u64(), seqs.last().copied(), "{greeting}");
        bob.expect_silence(Duration::from_millis(300));
        // Acknowledged: gone from the inbox, on every node.
        bob.send(&json!({"type": "ack", "seq": seqs[3]}));
        let started = Instant::now();
        loop {
            let (status, body) = a.get("/api/messages/queue/bob");
            assert_eq!(status, 200, "{body}");
            let queue: Value = serde_json::from_str(&body).unwrap();
            if queue["messages"].as_array().is_some_and(|m| m.is_empty()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{queue}");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(bob);
        let (mut again, _) = a.login_resuming("bob", "tablet", FRESH);
        again.expect_silence(Duration::from_millis(300));
    });
}

#[test]
fn a_retry_after_jetstreams_duplicate_window_is_acknowledged_and_not_delivered_twice() {
    with_nats("retry_after_duplicate_window", |nats| {
        let (a, b) = two_nodes(&nats);
        let (mut bob, _) = b.login_resuming("bob", "phone", FRESH);
        let mut alice = a.login("alice", "phone");
        assert_eq!(alice.send_chat("m-1", "bob", "once")["status"], "sent");
        let (_, first) = bob.next_message();
        // JetStream forgets message ids after 100 ms now (2 minutes as the nodes made it).
        nats.edit_stream(&user_stream("CHAT_INBOX", "bob"), |config| {
            config["duplicate_window"] = json!(100_000_000);
        });
        let index = user_stream("KV_chat_received", "bob");
        common::wait_until("the message is indexed", || {
            let info = nats.request(&format!("$JS.API.STREAM.INFO.{index}"), &Value::Null);
            info["state"]["messages"].as_u64() >= Some(1)
        });
        std::thread::sleep(Duration::from_millis(300));
        // Her retry through the other node, whose home never saw the first copy.
        drop(alice);
        let mut alice = b.login("alice", "phone");
        let ack = alice.send_chat("m-1", "bob", "once");
        assert!(
            ["sent", "queued"].contains(&ack["status"].as_str().unwrap()),
            "{ack}"
        );
        bob.expect_silence(Duration::from_millis(500));
        // A new message still goes through.
        alice.send_chat("m-2", "bob", "next");
        let (content, seq) = bob.next_message();
        assert_eq!((content.as_str(), seq > first), ("next", true));
    });
}

#[test]
fn a_resume_from_before_events_that_expired_is_refused() {
    with_nats("resume_over_expired_events", |nats| {
        let (a, b) = two_nodes(&nats);
        let (phone, greeting) = b.login_resuming("bob", "phone", FRESH);
        let (epoch, start) = position(&greeting);
        drop(phone);
        let (mut tablet, _) = b.login_resuming("bob", "tablet", FRESH);
        let mut alice = a.login("alice", "phone");
        for id in ["m-1", "m-2"] {
            alice.send_chat(id, "bob", id);
        }
        let seen: Vec<u64> = (0..2).map(|_| tablet.next_message().1).collect();
        // `--retention-days` passes for the two (JetStream expires them), not for the next.
        let inbox = user_stream("CHAT_INBOX", "bob");
        let set_max_age = |nanos: u64| {
            nats.edit_stream(&inbox, |config| {
                config["max_age"] = json!(nanos);
                let window = if nanos == 0 { 120_000_000_000 } else { nanos };
                config["duplicate_window"] = json!(window);
            });
        };
        set_max_age(1_000_000_000);
        common::wait_until("the two expire", || {
            let info = nats.request(&format!("$JS.API.STREAM.INFO.{inbox}"), &Value::Null);
            info["state"]["messages"].as_u64() == Some(0)
        });
        set_max_age(0);
        alice.send_chat("m-3", "bob", "m-3");
        let (_, third) = tablet.next_message();
        // From before the two: refused, and what no device acknowledged follows.
        let (mut phone, greeting) = a.login_resuming("bob", "phone", (&epoch, start));
        assert_eq!(greeting["resumed"], false, "{greeting}");
        assert_eq!(phone.next_message(), ("m-3".into(), third));
        phone.expect_silence(Duration::from_millis(300));
        // From the second: nothing after it expired.
        let (mut laptop, greeting) = a.login_resuming("bob", "laptop", (&epoch, seen[1]));
        assert_eq!(greeting["resumed"], true, "{greeting}");
        assert_eq!(laptop.next_message(), ("m-3".into(), third));
    });
}

#[test]
fn a_device_without_resume_gets_its_queue_in_priority_order_across_pages() {
    with_nats("queue_order_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let mut send = |id: &str, priority: &str| {
            alice.send(
                &json!({"type": "send_message", "messageId": id, "receiverId": "bob",
                               "content": id, "priority": priority}),
            );
            let ack = alice.recv_type("message_ack");
            assert_eq!(ack["status"], "queued", "{ack}");
        };
        // More than a page (256 events) of normal ones, with a high and a low among them.
        send("low-1", "low");
        for i in 0..300 {
            send(&format!("n-{i}"), "normal");
        }
        send("high-1", "high");
        send("low-2", "low");
        // Bob logs in on the other node without `resume`: high, then normal, then low,
        // each in the order sent.
        let mut bob = b.login("bob", "phone");
        let mut expected = vec!["high-1".to_owned()];
        expected.extend((0..300).map(|i| format!("n-{i}")));
        expected.extend(["low-1".to_owned(), "low-2".to_owned()]);
        for want in &expected {
            let message = bob.recv_type("new_message");
            assert_eq!(message["content"], *want, "{message}");
        }
        bob.expect_silence(Duration::from_millis(300));
        // Written to a device that does not acknowledge: all of it is taken as read.
        common::wait_until("the queue is empty", || {
            let (_, body) = a.get("/api/messages/queue/bob");
            let queue: Value = serde_json::from_str(&body).unwrap();
            queue["messages"].as_array().unwrap().is_empty()
        });
    });
}

#[test]
fn an_ack_above_the_last_seq_is_refused_and_purges_nothing() {
    with_nats("ack_above_last_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let (mut bob, _) = b.login_resuming("bob", "phone", FRESH);
        let mut alice = a.login("alice", "phone");
        alice.send_chat("m-1", "bob", "kept");
        let (_, seq) = bob.next_message();
        bob.send(&json!({"type": "ack", "seq": seq + 1000}));
        let error = bob.recv_type("error");
        assert_eq!(error["code"], "bad_request", "{error}");
        drop(bob);
        let (mut bob, _) = a.login_resuming("bob", "phone", FRESH);
        assert_eq!(bob.next_message().0, "kept");
    });
}

#[test]
fn what_one_device_acknowledged_stays_for_the_users_other_devices() {
    with_nats("acked_kept_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let (mut phone, greeting) = b.login_resuming("bob", "phone", FRESH);
        let (epoch, start) = position(&greeting);
        let mut alice = a.login("alice", "phone");
        for i in 0..3 {
            alice.send_chat(&format!("m-{i}"), "bob", &format!("n{i}"));
        }
        let mut last = 0;
        for i in 0..3 {
            let (content, seq) = phone.next_message();
            assert_eq!(content, format!("n{i}"));
            last = seq;
        }
        phone.send(&json!({"type": "ack", "seq": last}));
        common::wait_until("the phone's ack is kept", || {
            let (_, body) = a.get("/api/messages/queue/bob");
            let queue: Value = serde_json::from_str(&body).unwrap();
            queue["messages"].as_array().unwrap().is_empty()
        });
        // The tablet, last seen before the three, resumes on the other node: all three.
        let (mut tablet, greeting) = a.login_resuming("bob", "tablet", (&epoch, start));
        assert_eq!(greeting["resumed"], true, "{greeting}");
        assert_eq!(greeting["seq"], last, "{greeting}");
        for i in 0..3 {
            assert_eq!(tablet.next_message().0, format!("n{i}"));
        }
        tablet.expect_silence(Duration::from_millis(300));
        // A device that does not resume gets what no device acknowledged: nothing.
        let (mut laptop, greeting) = b.login_resuming("bob", "laptop", FRESH);
        assert_eq!(greeting["resumed"], false, "{greeting}");
        laptop.expect_silence(Duration::from_millis(300));
    });
}

#[test]
fn two_devices_acknowledging_on_two_nodes_at_once_send_each_receipt_once() {
    with_nats("concurrent_acks_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let (mut phone, _) = a.login_resuming("bob", "phone", FRESH);
        let (mut tablet, _) = b.login_resuming("bob", "tablet", FRESH);
        let (mut alice, _) = a.login_resuming("alice", "phone", FRESH);
        const MESSAGES: usize = 20;
        for i in 0..MESSAGES {
            alice.send(
                &json!({"type": "send_message", "messageId": format!("m-{i}"),
                "receiverId": "bob", "content": format!("n{i}")}),
            );
        }
        // Both devices acknowledge each message as it comes, one node against the other.
        for _ in 0..MESSAGES {
            for device in [&mut phone, &mut tablet] {
                let (_, seq) = device.next_message();
                device.send(&json!({"type": "ack", "seq": seq}));
            }
        }
        let mut receipts = Vec::new();
        while let Some(frame) = alice.recv_within(Duration::from_millis(1500)) {
            if frame["type"] == "delivery_receipt" {
                receipts.push(frame["messageId"].as_str().unwrap().to_owned());
            }
        }
        receipts.sort();
        let mut expected: Vec<String> = (0..MESSAGES).map(|i| format!("m-{i}")).collect();
        expected.sort();
        assert_eq!(receipts, expected, "each once");
        // Nothing is left unacknowledged for a device that does not resume.
        let (mut laptop, _) = b.login_resuming("bob", "laptop", FRESH);
        laptop.expect_silence(Duration::from_millis(300));
    });
}

#[test]
fn acknowledged_events_go_a_generation_at_a_time_and_the_bound_counts_what_stays() {
    with_nats("acked_generations_across_nodes", |nats| {
        // A bound of 4: generations of 2, and 8 events a user at most.
        let (a, b) = common::nats::two_nodes_with(&nats, &["--queue-max-per-user", "4"]);
        let mut alice = a.login("alice", "phone");
        let send_all = |alice: &mut common::Client, from: usize, count: usize| {
            (from..from + count)
                .map(|i| alice.send_chat(&format!("m-{i}"), "bob", &format!("n{i}")))
                .map(|ack| ack["reason"].as_str().unwrap_or("queued").to_owned())
                .collect::<Vec<_>>()
        };
        // Nothing acknowledged yet: 8 fit, the ninth is refused.
        let mut expected = vec!["queued"; 8];
        expected.push("queue_full");
        assert_eq!(send_all(&mut alice, 0, 9), expected);
        let (mut bob, greeting) = b.login_resuming("bob", "phone", FRESH);
        let (epoch, _) = position(&greeting);
        let seqs: Vec<u64> = (0..8).map(|_| bob.next_message().1).collect();
        bob.send(&json!({"type": "ack", "seq": seqs[7]}));
        drop(bob);
        common::wait_until("the ack is kept", || {
            let (_, body) = a.get("/api/messages/queue/bob");
            let queue: Value = serde_json::from_str(&body).unwrap();
            queue["messages"].as_array().unwrap().is_empty()
        });
        // Four generations closed: the first three went in one purge, the newest two
        // acknowledged events stay, and six new ones fit beside them.
        std::thread::sleep(Duration::from_millis(500));
        let mut expected = vec!["queued"; 6];
        expected.push("queue_full");
        assert_eq!(send_all(&mut alice, 9, 7), expected);
        let (_, too_old) = a.login_resuming("bob", "tablet", (&epoch, seqs[4]));
        assert_eq!(too_old["resumed"], false, "{too_old}");
        let (mut tablet, kept) = a.login_resuming("bob", "tablet", (&epoch, seqs[5]));
        assert_eq!(kept["resumed"], true, "{kept}");
        let contents: Vec<String> = (0..8).map(|_| tablet.next_message().0).collect();
        let expected: Vec<String> = [6, 7, 9, 10, 11, 12, 13, 14]
            .iter()
            .map(|i| format!("n{i}"))
            .collect();
        assert_eq!(contents, expected);
    });
}

/// `sent`, `queued` or `rejected:<reason>` of a `message_ack`.
fn ack_status(ack: &Value) -> String {
    let status = ack["status"].as_str().expect("a status");
    match ack["reason"].as_str() {
        Some(reason) => format!("{status}:{reason}"),
        None => status.to_owned(),
    }
}

#[test]
fn one_sender_cannot_fill_another_users_queue_and_a_read_on_any_node_lets_it_go_on() {
    with_nats("sender_quota_across_nodes", |nats| {
        let (a, b) = common::nats::two_nodes_with(&nats, &["--queue-max-per-sender", "3"]);
        let mut mallory = a.login("mallory", "d");
        let mut spam = |from: usize, count: usize| {
            (from..from + count)
                .map(|n| ack_status(&mallory.send_chat(&format!("spam-{n}"), "victim", "spam")))
                .collect::<Vec<_>>()
        };
        let refused = "rejected:sender_quota";
        assert_eq!(spam(0, 5), ["queued", "queued", "queued", refused, refused]);
        // Each sender has a count of its own, on every node.
        let mut friend = b.login("friend", "d");
        assert_eq!(
            ack_status(&friend.send_chat("real", "victim", "hi")),
            "queued"
        );
        // The victim reads on the other node and acknowledges: mallory may go on.
        let (mut victim, _) = b.login_resuming("victim", "phone", FRESH);
        let seqs: Vec<u64> = (0..4).map(|_| victim.next_message().1).collect();
        victim.send(&json!({"type": "ack", "seq": seqs[3]}));
        common::wait_until("the ack is kept", || {
            let (_, body) = a.get("/api/messages/queue/victim");
            let queue: Value = serde_json::from_str(&body).unwrap();
            queue["messages"].as_array().unwrap().is_empty()
        });
        drop(victim);
        b.wait_offline("victim");
        assert_eq!(spam(5, 4), ["queued", "queued", "queued", refused]);
    });
}

#[test]
fn events_missed_while_a_node_was_cut_off_reach_its_devices_in_order_once_it_is_back() {
    with_nats("gap_filled_across_nodes", |nats| {
        let proxy = common::nats::Proxy::start(nats.port);
        let a = common::nats::node(&nats.url(), "a");
        let b = common::nats::node(&proxy.url(), "b");
        common::nats::wait_for_nodes(&a, 2, Duration::from_secs(10));
        let connected =
            |server: &common::Server| common::nats::cluster(server)["connected"] == true;
        let (mut bob, _) = b.login_resuming("bob", "phone", FRESH);
        let mut alice = a.login("alice", "phone");
        alice.send_chat("m-0", "bob", "n0");
        assert_eq!(bob.next_message().0, "n0");
        // Node b alone loses NATS; bob's device stays connected to it.
        proxy.cut();
        common::wait_until("b is cut off", || !connected(&b));
        for i in 1..3 {
            let ack = alice.send_chat(&format!("m-{i}"), "bob", &format!("n{i}"));
            assert_eq!(ack["status"], "queued", "{ack}");
        }
        proxy.restore();
        common::wait_until("b is back", || connected(&b));
        std::thread::sleep(Duration::from_millis(300)); // its subscriptions reach NATS
                                                        // The next event shows b what it missed: bob gets all three, in order, once.
        alice.send_chat("m-3", "bob", "n3");
        let mut last = 0;
        for i in 1..4 {
            let (content, seq) = bob.next_message();
            assert_eq!(content, format!("n{i}"));
            assert!(seq > last, "{seq} after {last}");
            last = seq;
        }
        bob.expect_silence(Duration::from_millis(300));
    });
}

#[test]
fn devices_on_a_cut_off_node_whose_missed_events_were_purged_meanwhile_are_closed_to_resume() {
    with_nats("gap_purged_across_nodes", |nats| {
        // Generations of two acknowledged events: the third ack purges the first two.
        let flags = ["--queue-max-per-user", "4"];
        let proxy = common::nats::Proxy::start(nats.port);
        let a = common::nats::node_with(&nats.url(), "a", &flags);
        let b = common::nats::node_with(&proxy.url(), "b", &flags);
        common::nats::wait_for_nodes(&a, 2, Duration::from_secs(10));
        let connected =
            |server: &common::Server| common::nats::cluster(server)["connected"] == true;
        let (mut phone, _) = a.login_resuming("bob", "phone", FRESH);
        let (mut tablet, greeting) = b.login_resuming("bob", "tablet", FRESH);
        let (epoch, _) = position(&greeting);
        let mut laptop = b.login("bob", "laptop"); // v1: no resume, no acks
        let mut alice = a.login("alice", "phone");
        alice.send_chat("m-0", "bob", "n0");
        let (_, first) = phone.next_message();
        phone.send(&json!({"type": "ack", "seq": first}));
        let (_, seen_on_b) = tablet.next_message();
        assert_eq!(laptop.next_message().0, "n0");
        // Node b loses NATS while bob's phone on a reads and acknowledges six more.
        proxy.cut();
        common::wait_until("b is cut off", || !connected(&b));
        for i in 1..7 {
            alice.send_chat(&format!("m-{i}"), "bob", &format!("n{i}"));
            let (content, seq) = phone.next_message();
            assert_eq!(content, format!("n{i}"));
            phone.send(&json!({"type": "ack", "seq": seq}));
        }
        std::thread::sleep(Duration::from_millis(300)); // the acks' purges land
                                                        // Back: b reads on for bob, finds events gone that its devices never had, and
                                                        // closes them rather than skip them.
        proxy.restore();
        assert_eq!(tablet.expect_close(), 1011);
        assert_eq!(laptop.expect_close(), 1011);
        // The tablet's resume from what it saw is refused: it re-syncs through history.
        let (mut tablet, greeting) = b.login_resuming("bob", "tablet", (&epoch, seen_on_b));
        assert_eq!(greeting["resumed"], false, "{greeting}");
        // Live delivery goes on for both, on b.
        let mut laptop = b.login("bob", "laptop");
        alice.send_chat("m-7", "bob", "n7");
        assert_eq!(tablet.next_message().0, "n7");
        assert_eq!(laptop.next_message().0, "n7");
    });
}

#[test]
fn a_killed_nodes_users_resume_on_another_node_with_nothing_lost() {
    with_nats("resume_after_node_death", |nats| {
        let (a, mut b) = two_nodes(&nats);
        let (mut bob, greeting) = b.login_resuming("bob", "phone", FRESH);
        let (epoch, _) = position(&greeting);
        let mut alice = a.login("alice", "phone");
        for i in 0..20 {
            alice.send_chat(&format!("m-{i}"), "bob", &format!("n{i}"));
        }
        // Bob processed (and acked) the first ten, then his node dies under him.
        let mut processed = 0;
        for i in 0..10 {
            let (content, seq) = bob.next_message();
            assert_eq!(content, format!("n{i}"));
            processed = seq;
        }
        bob.send(&json!({"type": "ack", "seq": processed}));
        b.child.kill().unwrap();
        b.child.wait().unwrap();
        drop(bob);
        for i in 20..25 {
            alice.send_chat(&format!("m-{i}"), "bob", &format!("n{i}"));
        }
        // On the other node, from where he was: the other fifteen, once each, in order.
        let (mut bob, greeting) = a.login_resuming("bob", "phone", (&epoch, processed));
        assert_eq!(greeting["resumed"], true, "{greeting}");
        for i in 10..25 {
            assert_eq!(bob.next_message().0, format!("n{i}"));
        }
        bob.expect_silence(Duration::from_millis(300));
    });
}

#[test]
fn nats_restarted_under_load_loses_nothing_acknowledged() {
    with_nats("nats_restart_under_load", |mut nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let (mut acked, mut unavailable) = (Vec::new(), 0u64);
        let mut send = |alice: &mut common::Client, i: usize| {
            let content = format!("n{i}");
            if send_or_unavailable(alice, &format!("m-{i}"), &content) {
                acked.push(content);
            } else {
                unavailable += 1;
            }
            acked.len()
        };
        for i in 0..50 {
            send(&mut alice, i);
        }
        nats.restart().expect("nats-server restarts");
        let started = Instant::now();
        // Sending on through the restart until the node has acked 50 more.
        let mut i = 50;
        while send(&mut alice, i) < 100 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no acks after the restart"
            );
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        // Every acknowledged message is in bob's inbox, read on the other node.
        let (mut bob, _) = b.login_resuming("bob", "phone", FRESH);
        let mut got = std::collections::HashSet::new();
        while let Some(message) = bob.recv_within(Duration::from_millis(500)) {
            if message["type"] == "new_message" {
                got.insert(message["content"].as_str().unwrap().to_owned());
            }
        }
        let lost: Vec<&String> = acked.iter().filter(|m| !got.contains(*m)).collect();
        assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
        let counted = a.errors_counted("cluster_unavailable");
        assert!(counted >= unavailable, "{counted} < {unavailable}");
    });
}

/// Sends one message: true if it was acknowledged, false if the node said
/// `cluster_unavailable` (anything else fails the test).
fn send_or_unavailable(client: &mut common::Client, id: &str, content: &str) -> bool {
    client.send(
        &json!({"type": "send_message", "messageId": id, "receiverId": "bob",
                        "content": content}),
    );
    let answer = client.recv();
    match answer["type"].as_str() {
        Some("message_ack") => true,
        Some("error") if answer["code"] == "cluster_unavailable" => false,
        _ => panic!("{answer}"),
    }
}

#[test]
fn receipts_cross_nodes_once_a_device_acknowledges_and_once_it_has_read() {
    with_nats("receipts_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let (mut alice, _) = a.login_resuming("alice", "phone", FRESH);
        let (mut bob, _) = b.login_resuming("bob", "phone", FRESH);
        alice.send_chat("m-1", "bob", "hello");
        let (_, seq) = bob.next_message();
        alice.expect_silence(Duration::from_millis(200));
        // Bob's device acknowledges it: alice, on the other node, hears it was delivered.
        bob.send(&json!({"type": "ack", "seq": seq}));
        let receipt = alice.recv_type("delivery_receipt");
        assert_eq!(
            (&receipt["messageId"], &receipt["receiverId"]),
            (&json!("m-1"), &json!("bob"))
        );
        let receipt_seq = receipt["seq"].as_u64().expect("an inbox event of alice's");
        alice.send(&json!({"type": "ack", "seq": receipt_seq}));
        // And that it was read.
        bob.send(&json!({"type": "read_receipt", "messageId": "m-1", "senderId": "alice"}));
        let read = alice.recv_type("read_receipt");
        assert_eq!(
            (&read["messageId"], &read["readerId"]),
            (&json!("m-1"), &json!("bob"))
        );
        alice.expect_silence(Duration::from_millis(300));
    });
}

#[test]
fn a_node_stopped_with_sigterm_sends_its_users_to_another_with_nothing_left_behind() {
    with_nats("drain_to_another_node", |nats| {
        let (a, mut b) = two_nodes(&nats);
        let (mut bob, greeting) = b.login_resuming("bob", "phone", FRESH);
        let (epoch, _) = position(&greeting);
        let mut alice = a.login("alice", "phone");
        alice.send_chat("m-1", "bob", "before");
        alice.send_chat("m-2", "bob", "unread when b stops");
        let (_, processed) = bob.next_message();
        bob.send(&json!({"type": "ack", "seq": processed}));
        // b leaves: its clients are told to go away (1001), and b exits cleanly.
        let stopping = std::thread::spawn(move || b.terminate());
        assert_eq!(bob.expect_close(), 1001);
        assert_eq!(stopping.join().unwrap(), Some(0));
        alice.send_chat("m-3", "bob", "while away");
        // The client reconnects to a, from where it was: nothing stayed behind on b.
        let (mut bob, greeting) = a.login_resuming("bob", "phone", (&epoch, processed));
        assert_eq!(greeting["resumed"], true, "{greeting}");
        assert_eq!(bob.next_message().0, "unread when b stops");
        assert_eq!(bob.next_message().0, "while away");
        bob.expect_silence(Duration::from_millis(300));
    });
}

#[test]
fn a_broadcast_to_every_user_reaches_every_nodes_users_and_counts_them() {
    with_nats("broadcast_all_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut on_a = a.login("carol", "phone");
        let mut on_b = [b.login("bob", "phone"), b.login("dave", "phone")];
        let body = r#"{"message":{"sender_id":"ops","text":"maintenance at 5"},"all":true}"#;
        let (status, answer) = a.request("POST", "/api/messages/broadcast", &[], body);
        assert_eq!(status, 200, "{answer}");
        let counts: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(counts["delivered"], 3, "{counts}");
        for client in std::iter::once(&mut on_a).chain(on_b.iter_mut()) {
            let message = client.recv_type("new_message");
            assert_eq!(message["content"], "maintenance at 5", "{message}");
            assert_eq!(message["senderId"], "ops");
            client.expect_silence(Duration::from_millis(200));
        }
        // To named users, through their inboxes: bob on b gets it too.
        let body = r#"{"message":{"sender_id":"ops","text":"just you"},"user_ids":["bob"]}"#;
        let (status, answer) = a.request("POST", "/api/messages/broadcast", &[], body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(on_b[0].recv_type("new_message")["content"], "just you");
    });
}

#[test]
fn history_and_its_changes_are_every_nodes_and_outlive_the_node_they_went_through() {
    with_nats("history_across_nodes", |nats| {
        let (mut a, b) = two_nodes(&nats);
        let (mut bob, _) = b.login_resuming("bob", "phone", FRESH);
        let mut alice = a.login("alice", "phone");
        for i in 0..3 {
            alice.send_chat(&format!("m-{i}"), "bob", &format!("h{i}"));
            bob.next_message();
            // Each its own millisecond: a page never splits messages of one (its cursor
            // is a time), so the page of 2 below would hold 1 if two shared one.
            std::thread::sleep(Duration::from_millis(2));
        }
        // A retry is neither delivered nor kept twice: through the same node (its dedup
        // window), or through the other (JetStream's, by message id).
        alice.send_chat("m-2", "bob", "h2");
        let mut alice_on_b = b.login("alice", "laptop");
        let ack = alice_on_b.send_chat("m-2", "bob", "h2");
        assert_eq!(ack["type"], "message_ack", "{ack}");
        bob.expect_silence(Duration::from_millis(300));
        // Bob answers through his node; alice edits on hers, and bob reacts on his.
        bob.send_chat("r-0", "alice", "reply");
        alice.send(
            &json!({"type": "message_edit", "messageId": "m-1", "receiverId": "bob",
            "content": "h1, edited"}),
        );
        assert_eq!(bob.recv_type("message_edited")["content"], "h1, edited");
        bob.send(
            &json!({"type": "message_edit", "messageId": "m-1", "receiverId": "alice",
            "content": "not his"}),
        );
        assert_eq!(bob.recv_type("error")["code"], "not_found");
        bob.send(
            &json!({"type": "reaction_add", "messageId": "m-1", "receiverId": "alice",
            "emoji": "👍"}),
        );
        assert_eq!(alice.recv_type("reaction_added")["emoji"], "👍");
        // A read receipt that does not name the sender finds her on the other node.
        bob.send(&json!({"type": "read_receipt", "messageId": "m-0"}));
        let read = alice.recv_type("read_receipt");
        assert_eq!(
            (&read["messageId"], &read["readerId"]),
            (&json!("m-0"), &json!("bob"))
        );
        // The node every message of alice's went through dies: nothing of it is lost.
        a.child.kill().unwrap();
        a.child.wait().unwrap();
        bob.send(&json!({"type": "history", "peerId": "alice"}));
        let page = bob.recv_type("history");
        let messages = page["messages"].as_array().unwrap();
        let contents: Vec<&str> = messages
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(contents, ["reply", "h2", "h1, edited", "h0"], "{page}");
        assert_eq!(messages[2]["edited"], true, "{page}");
        assert_eq!(messages[2]["reactions"], json!({"👍": ["bob"]}), "{page}");
        bob.send(&json!({"type": "history", "peerId": "alice", "limit": 2}));
        let page = bob.recv_type("history");
        assert_eq!(page["messages"].as_array().unwrap().len(), 2, "{page}");
        assert_eq!(page["more"], true, "{page}");
    });
}

#[test]
fn a_group_spans_nodes_and_a_node_that_starts_later_knows_its_members() {
    with_nats("groups_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let mut bob = b.login("bob", "phone");
        alice.join_group("team");
        bob.join_group("team");
        // Alice's node hears of bob's join through the bucket of members: her posts reach
        // him on the other node once it has (each post is acknowledged either way).
        let started = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            alice.send(
                &json!({"type": "group_message", "messageId": format!("p-{n}"),
                               "groupId": "team", "content": "hi team"}),
            );
            if let Some(post) = bob.recv_within(Duration::from_millis(200)) {
                if post["type"] == "new_message" {
                    assert_eq!(
                        (&post["groupId"], &post["content"]),
                        (&json!("team"), &json!("hi team"))
                    );
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "bob never got a post"
            );
        }
        // A third node, started after the joins, learns the members from the bucket.
        let c = common::nats::node(&nats.url(), "c");
        common::nats::wait_for_nodes(&c, 3, Duration::from_secs(10));
        let mut carol = c.login("carol", "phone");
        carol.join_group("team");
        // Her other devices get her post, on her node and on another; the sending one
        // does not.
        let mut carol_laptop = c.login("carol", "laptop");
        let mut carol_tablet = a.login("carol", "tablet");
        carol.send(
            &json!({"type": "group_message", "messageId": "c-1", "groupId": "team",
                           "content": "from c"}),
        );
        assert_eq!(carol.recv_type("message_ack")["status"], "sent");
        for member in [&mut alice, &mut bob, &mut carol_laptop, &mut carol_tablet] {
            loop {
                let post = member.recv_type("new_message");
                if post["content"] == "from c" {
                    assert_eq!(post["senderId"], "carol");
                    break;
                }
            }
        }
        while let Some(frame) = carol.recv_within(Duration::from_millis(300)) {
            assert_ne!(frame["content"], "from c", "her own post: {frame}");
        }
        // A leave is seen everywhere too: carol's post no longer reaches bob.
        bob.send(&json!({"type": "group_leave", "groupId": "team"}));
        bob.recv_type("group_member");
        std::thread::sleep(Duration::from_millis(300));
        carol.send(
            &json!({"type": "group_message", "messageId": "c-2", "groupId": "team",
                           "content": "bob left"}),
        );
        loop {
            let post = alice.recv_type("new_message");
            if post["content"] == "bob left" {
                break;
            }
        }
        while let Some(frame) = bob.recv_within(Duration::from_millis(300)) {
            assert_ne!(frame["content"], "bob left", "{frame}");
        }
    });
}

#[test]
fn an_invite_only_group_is_closed_on_every_node_and_admins_act_from_any() {
    with_nats("group_access_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let mut bob = b.login("bob", "phone");
        let mut mallory = b.login("mallory", "phone");
        let created = alice
            .group_request(json!({"type": "group_create", "groupId": "crew", "access": "invite"}));
        assert_eq!(created["role"], "owner", "{created}");
        let added = alice.group_request(
            json!({"type": "group_add", "groupId": "crew", "userId": "bob", "role": "admin"}),
        );
        assert_eq!(added["role"], "admin", "{added}");
        // The other node learns the group from the bucket (its watch), then decides as
        // the first would.
        assert_eq!(bob.recv_type("group_member")["role"], "admin");
        // The watch and the inbox are two streams: give the watch a moment more.
        std::thread::sleep(Duration::from_millis(300));
        let refused = mallory.group_request(json!({"type": "group_join", "groupId": "crew"}));
        assert_eq!(refused["code"], "forbidden", "{refused}");
        let taken = mallory.group_request(json!({"type": "group_create", "groupId": "crew"}));
        assert_eq!(taken["code"], "conflict", "{taken}");
        let added =
            bob.group_request(json!({"type": "group_add", "groupId": "crew", "userId": "mallory"}));
        assert_eq!(
            added["userId"], "mallory",
            "an admin adds from any node: {added}"
        );
        loop {
            let heard = alice.recv_type("group_member");
            if heard["userId"] == "mallory" {
                break;
            }
        }
        // A node that starts later knows the settings too.
        let c = common::nats::node(&nats.url(), "c");
        common::nats::wait_for_nodes(&c, 3, Duration::from_secs(10));
        let mut eve = c.login("eve", "phone");
        let refused = eve.group_request(json!({"type": "group_join", "groupId": "crew"}));
        assert_eq!(refused["code"], "forbidden", "{refused}");
    });
}

#[test]
fn a_huddle_spans_nodes_and_a_newcomer_hears_who_is_in_it_elsewhere() {
    with_nats("huddles_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let mut bob = b.login("bob", "phone");
        alice.join_group("team");
        bob.join_group("team");
        let huddle = |kind: &str, payload: Value| {
            json!({"type": "signal", "receiverId": "team", "callId": "room", "kind": kind,
                   "payload": payload})
        };
        alice.send(&huddle("huddle:join", Value::Null));
        // Node a follows the room once alice is in it.
        std::thread::sleep(Duration::from_millis(300));
        bob.send(&huddle("huddle:join", json!({"audio": true})));
        for (device, other) in [(&mut alice, "bob"), (&mut bob, "alice")] {
            let joined = device.recv_type("signal");
            assert_eq!(
                (&joined["senderId"], &joined["kind"], &joined["callId"]),
                (&json!(other), &json!("huddle:join"), &json!("room")),
                "{joined}"
            );
        }
        alice.send(&huddle("huddle:toggle-audio", json!({"muted": true})));
        assert_eq!(bob.recv_type("signal")["payload"], json!({"muted": true}));
        // Bob's connection drops on b: alice, on a, hears that he left.
        drop(bob);
        let left = alice.recv_type("signal");
        assert_eq!(
            (&left["senderId"], &left["kind"]),
            (&json!("bob"), &json!("huddle:leave"))
        );
    });
}

#[test]
fn with_three_replicas_each_nats_server_may_die_in_turn_and_nothing_acknowledged_is_lost() {
    let mut servers = match common::nats::Nats::start_cluster(3) {
        Ok(servers) => servers,
        Err(why) => return common::nats::skip("replicas_across_nats_servers", &why),
    };
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let flags = ["--cluster-replicas", "3"];
    let a = common::nats::node_with(&urls.join(","), "a", &flags);
    let b = common::nats::node_with(&urls[1..].join(","), "b", &flags);
    // A JetStream cluster elects its leaders before the nodes can claim their ids, and
    // places the streams' copies before the inboxes answer.
    for server in &servers {
        common::wait_until("the NATS cluster forms", || server.healthy());
    }
    common::nats::wait_for_nodes(&a, 2, Duration::from_secs(30));
    for node in [&a, &b] {
        common::wait_until("the inboxes answer", || {
            node.get("/api/messages/queue/nobody").0 == 200
        });
    }
    let mut alice = a.login("alice", "phone");
    let mut acknowledged = Vec::new();
    let mut send = |alice: &mut common::Client, i: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            alice.send(
                &json!({"type": "send_message", "messageId": format!("m-{i}"),
                "receiverId": "bob", "content": format!("n{i}")}),
            );
            // Stored (`queued`), or `cluster_unavailable` while the node moves to another
            // server and JetStream elects new leaders: sent again, with the same id.
            let answer = loop {
                let frame = alice.recv();
                if frame["type"] == "message_ack" || frame["type"] == "error" {
                    break frame;
                }
            };
            if answer["status"] == "queued" {
                return acknowledged.push(format!("n{i}"));
            }
            assert_eq!(answer["code"], "cluster_unavailable", "{answer}");
            assert!(
                Instant::now() < deadline,
                "never stored while a server was down"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for i in 0..3 {
        send(&mut alice, i);
    }
    // Each server dies in turn, and comes back before the next: the streams keep a
    // quorum of copies, so sends go on (after the nodes move to another server).
    for (victim, server) in servers.iter_mut().enumerate() {
        server.kill();
        for i in 0..3 {
            send(&mut alice, 3 * (victim + 1) + i);
        }
        server.restart().unwrap();
        common::wait_until("the server is back in the NATS cluster", || {
            server.healthy()
        });
    }
    common::wait_until("b's inboxes answer again", || {
        b.get("/api/messages/queue/nobody").0 == 200
    });
    let (mut bob, _) = b.login_resuming("bob", "phone", FRESH);
    let got: Vec<String> = (0..acknowledged.len())
        .map(|_| bob.next_message().0)
        .collect();
    assert_eq!(got, acknowledged);
    bob.expect_silence(Duration::from_millis(300));
    // History follows each inbox write, again once JetStream is back where it was not.
    // While b's relay sets its streams up again a read may answer `cluster_unavailable`
    // (PROTOCOL.md, "Clusters"), and the client asks again; each set-up JetStream leaves unanswered
    // takes its 5 s: so the wait is longer than one answer's.
    let mut contents = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while contents.len() < acknowledged.len() {
        assert!(
            Instant::now() < deadline,
            "history never held every message"
        );
        bob.send(&json!({"type": "history", "peerId": "alice", "limit": 50}));
        let page = loop {
            let frame = bob.recv();
            if frame["type"] == "history" || frame["type"] == "error" {
                break frame;
            }
        };
        if page["type"] == "error" {
            assert_eq!(page["code"], "cluster_unavailable", "{page}");
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        contents = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(contents, acknowledged);
}
