//! Message rows of PROTOCOL.md, routed across two reactors: send_message, typing, read_receipt.

mod common;

use std::time::Duration;

use common::{on_both_drivers, Server};
use engine::router::home_of;
use serde_json::json;

/// Two user ids whose homes are different reactors (of 2), so routing crosses reactors.
fn users_on_different_homes() -> (String, String) {
    let a = "alice".to_owned();
    let b = (0..)
        .map(|i| format!("bob{i}"))
        .find(|b| home_of(b, 2) != home_of(&a, 2))
        .unwrap();
    (a, b)
}

#[test]
fn a_message_reaches_every_receiver_device_and_the_senders_other_devices() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let (alice, bob) = users_on_different_homes();
        // Several connections each, so devices land on both reactors.
        let mut alice_phone = server.login(&alice, "phone");
        let mut alice_laptop = server.login(&alice, "laptop");
        let mut bob_devices: Vec<_> = (0..4)
            .map(|i| server.login(&bob, &format!("d{i}")))
            .collect();
        alice_phone.send(
            &json!({"type":"send_message","messageId":"m1","receiverId":bob,
                                 "content":"hi \"bob\" é","priority":"high"}),
        );
        let ack = alice_phone.recv_type("message_ack");
        assert_eq!(ack["messageId"], "m1");
        assert_eq!(ack["status"], "sent");
        for device in bob_devices.iter_mut().chain([&mut alice_laptop]) {
            let message = device.recv_type("new_message");
            assert_eq!(message["messageId"], "m1");
            assert_eq!(message["senderId"], alice.as_str());
            assert_eq!(message["receiverId"], bob.as_str());
            assert_eq!(message["content"], "hi \"bob\" é");
            assert_eq!(message["messageType"], "text");
            assert_eq!(message["priority"], "high");
            assert_eq!(message["status"], "delivered");
        }
        // The sending device does not get its own message back.
        alice_phone.expect_silence(Duration::from_millis(200));
    });
}

#[test]
fn many_messages_arrive_in_order() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let (alice, bob) = users_on_different_homes();
        let mut sender = server.login(&alice, "phone");
        let mut receiver = server.login(&bob, "phone");
        for i in 0..500 {
            sender.send(&json!({"type":"send_message","messageId":format!("m{i}"),"receiverId":bob,"content":"x"}));
        }
        for i in 0..500 {
            assert_eq!(
                receiver.recv_type("new_message")["messageId"],
                format!("m{i}")
            );
        }
        for i in 0..500 {
            assert_eq!(
                sender.recv_type("message_ack")["messageId"],
                format!("m{i}")
            );
        }
    });
}

#[test]
fn an_offline_receiver_is_queued_and_the_sender_told_so() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut alice = server.login("alice", "phone");
        alice.send(
            &json!({"type":"send_message","messageId":"m7","receiverId":"nobody","content":"x"}),
        );
        let reply = alice.recv();
        assert_eq!(reply["type"], "message_ack", "{reply}");
        assert_eq!(reply["status"], "queued");
        assert_eq!(reply["messageId"], "m7");
    });
}

#[test]
fn typing_reaches_the_receiver_only() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let (alice, bob) = users_on_different_homes();
        let mut a = server.login(&alice, "phone");
        let mut b = server.login(&bob, "phone");
        a.send(&json!({"type":"typing","receiverId":bob,"isTyping":true}));
        let typing = b.recv_type("typing");
        assert_eq!(typing["senderId"], alice.as_str());
        assert_eq!(typing["isTyping"], true);
        assert!(typing["timestamp"].is_u64());
        a.expect_silence(Duration::from_millis(100));
    });
}

#[test]
fn read_receipts_go_to_the_original_sender() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let (alice, bob) = users_on_different_homes();
        let mut a = server.login(&alice, "phone");
        let mut b = server.login(&bob, "phone");
        a.send_chat("m1", &bob, "hi");
        b.recv_type("new_message");
        for receipt in [
            json!({"type":"read_receipt","messageId":"m1","senderId":alice}),
            json!({"type":"read_receipt","messageId":"m1"}),
        ] {
            b.send(&receipt);
            let receipt = a.recv_type("read_receipt");
            assert_eq!(receipt["messageId"], "m1");
            assert_eq!(receipt["readerId"], bob.as_str());
        }
        // The store looks the id up among what reached bob: a receipt for a message that
        // did not, or naming someone who did not send it, is refused (issue 22: forged
        // receipts filled senders' queues).
        for forged in [
            json!({"type":"read_receipt","messageId":"m2"}),
            json!({"type":"read_receipt","messageId":"m2","senderId":alice}),
            json!({"type":"read_receipt","messageId":"m1","senderId":"carol"}),
        ] {
            b.send(&forged);
            let error = b.recv_type("error");
            assert_eq!(error["code"], "not_found", "{forged}");
        }
        a.expect_silence(Duration::from_millis(200));
    });
}

#[test]
fn a_message_to_oneself_reaches_ones_other_devices() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut phone = server.login("alice", "phone");
    let mut laptop = server.login("alice", "laptop");
    phone.send(
        &json!({"type":"send_message","messageId":"note","receiverId":"alice","content":"memo"}),
    );
    assert_eq!(phone.recv_type("message_ack")["status"], "sent");
    assert_eq!(laptop.recv_type("new_message")["content"], "memo");
    phone.expect_silence(Duration::from_millis(200));
}

#[test]
fn routing_works_with_more_reactors_than_cores() {
    let server = Server::start(common::Driver::IoUring, &["--reactors", "5"]);
    let users: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let mut clients: Vec<_> = users.iter().map(|u| server.login(u, "phone")).collect();
    for (i, user) in users.iter().enumerate() {
        let to = &users[(i + 1) % users.len()];
        clients[i].send(&json!({"type":"send_message","messageId":format!("from-{user}"),"receiverId":to,"content":"x"}));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let from = &users[(i + users.len() - 1) % users.len()];
        let mut got = [client.recv(), client.recv()];
        got.sort_by_key(|m| m["type"].as_str().map(str::to_owned));
        assert_eq!(got[0]["type"], "message_ack");
        assert_eq!(got[0]["status"], "sent");
        assert_eq!(got[1]["type"], "new_message");
        assert_eq!(got[1]["senderId"], from.as_str());
    }
}
