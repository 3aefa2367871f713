//! Protocol v2's acknowledged delivery against the real engine: `auth_success` with
//! `epoch` and `seq`, `ack`, `resume`, delivery receipts on the first device ack, durable
//! acks across `kill -9`, a second device catching up, retries, and the HTTP drain.

mod common;

use std::{io::Write, net::TcpStream, time::Duration};

use common::{fresh_data_dir, Server};
use serde_json::{json, Value};

/// Asserts that a clean stop checkpointed everything: each journal file is empty or
/// starts with a zero length (nothing to replay).
fn assert_journal_left_empty(dir: &std::path::Path) {
    for name in ["journal.log", "journal-2.log"] {
        let journal = std::fs::read(dir.join(name)).unwrap();
        assert!(
            journal.is_empty() || journal[..8] == [0; 8],
            "the stop checkpointed and left {name} starting empty"
        );
    }
}

/// Closes `stream` with a reset (SO_LINGER 0), as a phone losing its network does.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

fn kill(server: &mut Server) {
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[test]
fn auth_success_carries_the_inbox_and_events_their_seq() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    let (mut bob, greeting) = server.login_resuming("bob", "phone", ("", 0));
    assert!(
        greeting["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{greeting}"
    );
    let first = greeting["seq"].as_u64().expect("seq");
    assert_eq!(
        greeting["resumed"], false,
        "an unknown epoch is not resumed"
    );
    assert_eq!(alice.send_chat("m1", "bob", "one")["status"], "sent");
    assert_eq!(alice.send_chat("m2", "bob", "two")["status"], "sent");
    let (_, s1) = bob.next_message();
    let (_, s2) = bob.next_message();
    assert!(first < s1 && s1 < s2, "{first} {s1} {s2}");
    // Not inbox events: no seq.
    alice.send(&json!({"type": "typing", "receiverId": "bob", "isTyping": true}));
    assert!(bob.recv_type("typing").get("seq").is_none());
}

#[test]
fn a_reset_before_reading_loses_nothing_and_the_receipt_waits_for_the_ack() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    let (bob, greeting) = server.login_resuming("bob", "phone", ("", 0));
    let epoch = greeting["epoch"].as_str().unwrap().to_owned();
    let seq = greeting["seq"].as_u64().unwrap();
    drop(bob);
    server.wait_offline("bob");
    for i in 0..5 {
        let ack = alice.send_chat(&format!("q{i}"), "bob", &format!("queued {i}"));
        assert_eq!(ack["status"], "queued");
    }
    // bob authenticates and resets the connection before reading anything.
    let mut raw = TcpStream::connect(server.addr).unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        raw,
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let auth = json!({"type": "auth", "userId": "bob", "deviceId": "phone",
                      "resume": {"epoch": epoch, "seq": seq}});
    raw.write_all(&common::raw_frame(0x81, auth.to_string().as_bytes()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    reset(raw);
    server.wait_offline("bob");
    alice.expect_silence(Duration::from_millis(300)); // no delivery_receipt: nobody acked
    let (mut bob, greeting) = server.login_resuming("bob", "phone", (&epoch, seq));
    assert_eq!(greeting["resumed"], true, "{greeting}");
    let mut got = Vec::new();
    let mut last = 0;
    for _ in 0..5 {
        let (content, s) = bob.next_message();
        got.push(content);
        last = s;
    }
    assert_eq!(
        got,
        (0..5).map(|i| format!("queued {i}")).collect::<Vec<_>>()
    );
    bob.send(&json!({"type": "ack", "seq": last}));
    let mut receipts: Vec<String> = (0..5)
        .map(|_| {
            alice.recv_type("delivery_receipt")["messageId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    receipts.sort();
    assert_eq!(receipts, ["q0", "q1", "q2", "q3", "q4"]);
}

#[test]
fn a_second_device_resumes_with_what_the_first_got() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    let (mut phone, greeting) = server.login_resuming("bob", "phone", ("", 0));
    let epoch = greeting["epoch"].as_str().unwrap().to_owned();
    let from = greeting["seq"].as_u64().unwrap();
    for i in 0..3 {
        assert_eq!(
            alice.send_chat(&format!("m{i}"), "bob", &format!("{i}"))["status"],
            "sent"
        );
    }
    let mut last = 0;
    for _ in 0..3 {
        last = phone.next_message().1;
    }
    phone.send(&json!({"type": "ack", "seq": last}));
    // The laptop was last online before these: it resumes from there and gets them all,
    // though the phone acknowledged them.
    let (mut laptop, greeting) = server.login_resuming("bob", "laptop", (&epoch, from));
    assert_eq!(greeting["resumed"], true);
    let got: Vec<String> = (0..3).map(|_| laptop.next_message().0).collect();
    assert_eq!(got, ["0", "1", "2"]);
    // And then live, in seq order, no duplicate.
    assert_eq!(alice.send_chat("m3", "bob", "3")["status"], "sent");
    let (content, seq) = laptop.next_message();
    assert_eq!(content, "3");
    assert!(seq > last);
    laptop.expect_silence(Duration::from_millis(200));
    // A device without resume gets only what no device acknowledged: nothing of these.
    let mut tablet = server.login("bob", "tablet");
    assert_eq!(tablet.next_message().0, "3", "m3 is not acknowledged yet");
    tablet.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_message_acked_sent_survives_a_kill_9_right_after() {
    let dir = fresh_data_dir();
    let data_dir = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", data_dir.as_str()];
    let (epoch, from) = {
        // The ack follows the journal's record, not a durable commit of the file.
        let mut server = Server::start(common::Driver::IoUring, &args);
        let mut alice = server.login("alice", "phone");
        let (bob, greeting) = server.login_resuming("bob", "phone", ("", 0));
        let epoch = greeting["epoch"].as_str().unwrap().to_owned();
        let from = greeting["seq"].as_u64().unwrap();
        // bob's device drops the frame unread: only the inbox has it now.
        assert_eq!(alice.send_chat("durable", "bob", "kept")["status"], "sent");
        kill(&mut server);
        drop(bob);
        (epoch, from)
    };
    // Only the journal holds it, and the restart replays it.
    let journal = std::fs::metadata(dir.join("journal.log")).expect("a journal");
    assert!(journal.len() > 0, "the ack followed a journal record");
    let server = Server::start(common::Driver::IoUring, &args);
    let (mut bob, greeting) = server.login_resuming("bob", "phone", (&epoch, from));
    assert_eq!(greeting["resumed"], true, "{greeting}");
    assert_eq!(bob.next_message().0, "kept");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_retry_is_acknowledged_again_and_delivered_once() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    for _ in 0..3 {
        alice.send(
            &json!({"type": "send_message", "messageId": "again", "receiverId": "bob",
                           "content": "once"}),
        );
    }
    for _ in 0..3 {
        assert_eq!(alice.recv_type("message_ack")["status"], "sent");
    }
    assert_eq!(bob.recv_type("new_message")["content"], "once");
    bob.expect_silence(Duration::from_millis(300));
}

#[test]
fn the_dedup_window_keeps_the_last_n_pairs_and_counts_those_it_let_go_early() {
    // One reactor: one home, whose window holds 1,024 pairs.
    let args = ["--reactors", "1", "--dedup-window-pairs", "1024"];
    let server = Server::start(common::Driver::IoUring, &args);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    let sent = 1030;
    for i in 0..sent {
        alice.send(
            &json!({"type": "send_message", "messageId": format!("m{i}"),
                           "receiverId": "bob", "content": "x"}),
        );
    }
    for i in 0..sent {
        assert_eq!(alice.recv_type("message_ack")["status"], "sent");
        assert_eq!(bob.recv_type("new_message")["messageId"], format!("m{i}"));
    }
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("engine_dedup_evicted_young_total{reactor=\"0\"} 6\n"),
        "{metrics}"
    );
    // The newest pair is in the window: its retry is acknowledged, not delivered.
    alice.send_chat("m1029", "bob", "x");
    bob.expect_silence(Duration::from_millis(300));
    // The oldest was let go of: its retry is taken for a new message and reaches bob's
    // device again (the store still keeps one copy), which is what the metric warns of.
    alice.send_chat("m0", "bob", "x");
    assert_eq!(bob.recv_type("new_message")["messageId"], "m0");
}

#[test]
fn a_retry_after_a_restart_is_confirmed_not_delivered_again() {
    let data_dir = fresh_data_dir();
    let args = ["--data-dir", data_dir.to_str().unwrap()];
    let mut server = Server::start(common::Driver::IoUring, &args);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    assert_eq!(alice.send_chat("m1", "bob", "once")["status"], "sent");
    assert_eq!(bob.recv_type("new_message")["messageId"], "m1");
    // bob's (v1) ack is committed in the store's next batch; then a crash.
    std::thread::sleep(Duration::from_millis(300));
    kill(&mut server);
    let server = Server::start(common::Driver::IoUring, &args);
    let mut bob = server.login("bob", "phone");
    bob.expect_silence(Duration::from_millis(200)); // nothing unacknowledged
                                                    // alice missed the ack, say, and sends m1 again: acknowledged, and not delivered,
                                                    // though the restart emptied the homes' windows (they start with what inboxes hold).
    let mut alice = server.login("alice", "phone");
    assert_eq!(alice.send_chat("m1", "bob", "once")["status"], "sent");
    bob.expect_silence(Duration::from_millis(300));
    assert_eq!(alice.send_chat("m2", "bob", "new")["status"], "sent");
    assert_eq!(bob.recv_type("new_message")["messageId"], "m2");
}

#[test]
fn bad_acks_and_resumes_are_refused_by_name() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let (mut bob, greeting) = server.login_resuming("bob", "phone", ("", 0));
    let last = greeting["seq"].as_u64().unwrap();
    bob.send(&json!({"type": "ack", "seq": last + 10}));
    let error = bob.recv_type("error");
    assert_eq!(error["code"], "bad_request");
    assert!(
        error["message"].as_str().unwrap().contains("above"),
        "{error}"
    );
    for bad in [json!({"type": "ack"}), json!({"type": "ack", "seq": "7"})] {
        bob.send(&bad);
        let error = bob.recv_type("error");
        assert_eq!(error["code"], "bad_request", "{bad}");
        assert!(
            error["message"].as_str().unwrap().contains("seq"),
            "{error}"
        );
    }
    bob.send(&json!({"type": "ack", "seq": last}));
    bob.expect_silence(Duration::from_millis(200));
    // A resume of the wrong shape fails the auth, naming the field, and closes.
    let mut other = server.connect();
    other.send(&json!({"type": "auth", "userId": "carol", "deviceId": "d",
                       "resume": {"epoch": 5, "seq": 1}}));
    let error = other.recv_type("error");
    assert_eq!(error["code"], "auth_failed");
    assert!(
        error["message"].as_str().unwrap().contains("resume.epoch"),
        "{error}"
    );
    assert_eq!(other.expect_close(), 1008);
}

#[test]
fn an_http_drain_cut_off_loses_nothing() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut alice = server.login("alice", "phone");
    for i in 0..3 {
        let ack = alice.send_chat(&format!("d{i}"), "bob", &format!("drain {i}"));
        assert_eq!(ack["status"], "queued");
    }
    // A drain whose connection resets before the answer is read: nothing is removed.
    let mut cut = TcpStream::connect(server.addr).unwrap();
    cut.write_all(b"GET /api/messages/queue/bob?drain=true HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    reset(cut);
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = server.get("/api/messages/queue/bob");
    assert_eq!(status, 200);
    let queue: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(queue["messages"].as_array().unwrap().len(), 3, "{queue}");
    // A drain read to the end removes them.
    let (status, body) = server.get("/api/messages/queue/bob?drain=true");
    assert_eq!(status, 200);
    let drained: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(drained["messages"].as_array().unwrap().len(), 3);
    common::wait_until("the drain's ack is kept", || {
        let (_, body) = server.get("/api/messages/queue/bob");
        let queue: Value = serde_json::from_str(&body).unwrap();
        queue["messages"].as_array().unwrap().is_empty()
    });
}

#[test]
fn a_retry_during_a_slow_commit_is_acknowledged_only_after_it() {
    let dir = fresh_data_dir();
    let data_dir = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", data_dir.as_str()];
    let slow = [("ENGINE_FAILPOINT", "slow_commit_ms:400")];
    let (epoch, from) = {
        let mut server = Server::start_with_env(common::Driver::IoUring, &args, &slow);
        let mut alice = server.login("alice", "phone");
        let (mut bob, greeting) = server.login_resuming("bob", "phone", ("", 0));
        let epoch = greeting["epoch"].as_str().unwrap().to_owned();
        let from = greeting["seq"].as_u64().unwrap();
        let started = std::time::Instant::now();
        for _ in 0..2 {
            alice.send(
                &json!({"type": "send_message", "messageId": "slow", "receiverId": "bob",
                               "content": "committed first"}),
            );
        }
        for _ in 0..2 {
            assert_eq!(alice.recv_type("message_ack")["status"], "sent");
            // Neither ack (the retry's included) comes before the commit.
            assert!(
                started.elapsed() >= Duration::from_millis(350),
                "{:?}",
                started.elapsed()
            );
        }
        assert_eq!(bob.next_message().0, "committed first");
        bob.expect_silence(Duration::from_millis(200));
        kill(&mut server);
        (epoch, from)
    };
    // Killed right after the acks: the message is kept, once.
    let server = Server::start(common::Driver::IoUring, &args);
    let (mut bob, greeting) = server.login_resuming("bob", "phone", (&epoch, from));
    assert_eq!(greeting["resumed"], true);
    assert_eq!(bob.next_message().0, "committed first");
    bob.expect_silence(Duration::from_millis(300));
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_device_that_reads_but_never_acks_is_closed_at_the_bound_and_loses_nothing() {
    let server = Server::start(
        common::Driver::IoUring,
        &["--queue-max-per-user", "8", "--presence-grace-ms", "0"],
    );
    let mut alice = server.login("alice", "phone");
    let (mut bob, greeting) = server.login_resuming("bob", "phone", ("", 0));
    let epoch = greeting["epoch"].as_str().unwrap().to_owned();
    let from = greeting["seq"].as_u64().unwrap();
    // bob reads every message and acks none: at the bound its inbox holds 8 events
    // unacknowledged, and the device is closed as a slow consumer.
    for i in 0..8 {
        let status = alice.send_chat(&format!("m{i}"), "bob", &format!("{i}"))["status"].clone();
        assert_eq!(status, "sent", "m{i}");
    }
    let mut got = Vec::new();
    let code = loop {
        match bob.next_or_close() {
            Ok(frame) if frame["type"] == "new_message" => got.push(frame["content"].clone()),
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert_eq!(code, 4002, "closed as a slow consumer");
    assert_eq!(got.len(), 8, "{got:?}");
    server.wait_offline("bob");
    // Nobody online: the store numbers again, and the bound refuses the next one.
    let refused = alice.send_chat("m8", "bob", "8");
    assert_eq!(
        (refused["status"].as_str(), refused["reason"].as_str()),
        (Some("rejected"), Some("queue_full")),
        "{refused}"
    );
    // The device comes back, resumes from where it was, gets all 8 and acks them.
    let (mut bob, greeting) = server.login_resuming("bob", "phone", (&epoch, from));
    assert_eq!(greeting["resumed"], true, "{greeting}");
    let mut last = 0;
    for i in 0..8 {
        let (content, seq) = bob.next_message();
        assert_eq!(content, format!("{i}"));
        last = seq;
    }
    bob.send(&json!({"type": "ack", "seq": last}));
    // Acked: the next message is delivered, and the device stays open.
    assert_eq!(alice.send_chat("m9", "bob", "9")["status"], "sent");
    assert_eq!(bob.next_message().0, "9");
    bob.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_clean_stop_checkpoints_and_leaves_no_journal_to_replay() {
    let dir = fresh_data_dir();
    let data_dir = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", data_dir.as_str()];
    {
        let mut server = Server::start(common::Driver::IoUring, &args);
        let mut alice = server.login("alice", "phone");
        assert_eq!(alice.send_chat("kept", "bob", "kept")["status"], "queued");
        let journal = std::fs::metadata(dir.join("journal.log")).unwrap();
        assert!(journal.len() > 0, "queued through the journal");
        assert_eq!(server.terminate(), Some(0));
    }
    assert_journal_left_empty(&dir);
    let server = Server::start(common::Driver::IoUring, &args);
    let (mut bob, _) = server.login_resuming("bob", "phone", ("", 0));
    assert_eq!(bob.next_message().0, "kept");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_device_catching_up_a_full_inbox_is_not_taken_for_one_that_never_acks() {
    let server = Server::start(common::Driver::IoUring, &["--queue-max-per-user", "100"]);
    let mut alice = server.login("alice", "phone");
    for i in 0..100 {
        let status = alice.send_chat(&format!("q{i}"), "bob", &format!("{i}"))["status"].clone();
        assert_eq!(status, "queued", "q{i}");
    }
    // bob's inbox is at the bound; he comes online and, before acking, gets 30 more live:
    // fewer than the 64 a device online may be given unacknowledged at the bound (the
    // backlog it reads does not count; if it did, 28 would have closed it).
    let (mut bob, _) = server.login_resuming("bob", "phone", ("", 0));
    for i in 100..130 {
        let status = alice.send_chat(&format!("m{i}"), "bob", &format!("{i}"))["status"].clone();
        assert_eq!(status, "sent", "m{i}");
    }
    let mut last = 0;
    for i in 0..130 {
        let (content, seq) = bob.next_message();
        assert_eq!(content, format!("{i}"));
        last = seq;
    }
    bob.send(&json!({"type": "ack", "seq": last}));
    bob.expect_silence(Duration::from_millis(300));
    assert_eq!(alice.send_chat("m130", "bob", "130")["status"], "sent");
    assert_eq!(bob.next_message().0, "130");
}

#[test]
fn failed_checkpoints_lose_nothing_and_are_tried_again() {
    let dir = fresh_data_dir();
    let data_dir = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", data_dir.as_str()];
    {
        // The first two checkpoints fail, as on a full disk.
        let failing = [("ENGINE_FAILPOINT", "failed_checkpoints:2")];
        let mut server = Server::start_with_env(common::Driver::IoUring, &args, &failing);
        let mut alice = server.login("alice", "phone");
        assert_eq!(alice.send_chat("q1", "carol", "first")["status"], "queued");
        assert_eq!(alice.send_chat("q2", "carol", "second")["status"], "queued");
        assert_eq!(alice.send_chat("q3", "dave", "third")["status"], "queued");
        common::wait_until("a failed checkpoint", || {
            server.counter("engine_store_checkpoint_failures_total") >= 1
        });
        // What the file lacks is read from memory meanwhile.
        let (mut carol, _) = server.login_resuming("carol", "phone", ("", 0));
        assert_eq!(carol.next_message().0, "first");
        assert_eq!(carol.next_message().0, "second");
        drop(carol);
        // Nothing more comes: the store tries again on its own, every second.
        common::wait_until("a checkpoint after the failures", || {
            server.counter("engine_store_checkpoints_total") >= 1
        });
        assert_eq!(server.counter("engine_store_checkpoint_failures_total"), 2);
        kill(&mut server);
    }
    let server = Server::start(common::Driver::IoUring, &args);
    let (mut dave, _) = server.login_resuming("dave", "phone", ("", 0));
    assert_eq!(dave.next_message().0, "third");
    let (mut carol, _) = server.login_resuming("carol", "tablet", ("", 0));
    assert_eq!(carol.next_message().0, "first");
    assert_eq!(carol.next_message().0, "second");
    drop(server);
}

#[test]
fn a_clean_stop_checkpoints_what_a_failed_checkpoint_and_the_last_second_hold() {
    let dir = fresh_data_dir();
    let data_dir = dir.to_str().unwrap().to_owned();
    let args = ["--data-dir", data_dir.as_str()];
    {
        let failing = [("ENGINE_FAILPOINT", "failed_checkpoints:1")];
        let mut server = Server::start_with_env(common::Driver::IoUring, &args, &failing);
        let mut alice = server.login("alice", "phone");
        assert_eq!(alice.send_chat("k1", "bob", "kept")["status"], "queued");
        common::wait_until("a failed checkpoint", || {
            server.counter("engine_store_checkpoint_failures_total") >= 1
        });
        // Stopped at once (no client to drain) before the retry, with one more message
        // only in the journal.
        assert_eq!(alice.send_chat("k2", "bob", "also")["status"], "queued");
        drop(alice);
        assert_eq!(server.terminate(), Some(0));
    }
    assert_journal_left_empty(&dir);
    let server = Server::start(common::Driver::IoUring, &args);
    let (mut bob, _) = server.login_resuming("bob", "phone", ("", 0));
    assert_eq!(bob.next_message().0, "kept");
    assert_eq!(bob.next_message().0, "also");
    drop(server);
}
