//! Groups (membership kept across restarts, fan-out, queued copies, not_member), call
//! signaling (relayed, never queued), huddles (rooms of a group), and edits, deletes and
//! reactions applied to history.

mod common;

use std::time::Duration;

use common::{fresh_data_dir, Client, Server};
use serde_json::{json, Value};

fn post(client: &mut Client, id: &str, group: &str, content: &str) {
    client.send(
        &json!({"type": "group_message", "messageId": id, "groupId": group,
                        "content": content}),
    );
}

/// Drops `gone`'s connection and waits until `watcher` hears that `user` is offline, so
/// what follows is routed to an offline user (not written to a closing socket).
fn go_offline(watcher: &mut Client, gone: Client, user: &str) {
    watcher.send(&json!({"type": "presence_subscribe", "userIds": [user]}));
    watcher.recv_type("presence_state");
    drop(gone);
    let update = watcher.recv_type("presence_update");
    assert_eq!(
        (update["userId"].as_str(), update["status"].as_str()),
        (Some(user), Some("offline"))
    );
}

fn signal(client: &mut Client, to: &str, call: &str, kind: &str, payload: Value) {
    client.send(
        &json!({"type": "signal", "receiverId": to, "callId": call, "kind": kind,
                        "payload": payload}),
    );
}

#[test]
fn a_group_message_reaches_every_member_device_but_the_sending_one() {
    let dir = fresh_data_dir();
    let data_dir = dir.to_str().unwrap().to_owned();
    let args = ["--reactors", "3", "--data-dir", &data_dir];
    {
        let mut server = Server::start(common::Driver::IoUring, &args);
        let mut alice = server.login("alice", "phone");
        let mut alice_laptop = server.login("alice", "laptop");
        let mut bob = server.login("bob", "phone");
        alice.join_group("team");
        bob.join_group("team");
        let joined = alice.recv_type("group_member");
        assert_eq!(
            (
                joined["groupId"].as_str(),
                joined["userId"].as_str(),
                joined["action"].as_str()
            ),
            (Some("team"), Some("bob"), Some("joined"))
        );
        // carol joins and goes offline: her copy is queued.
        let mut carol = server.login("carol", "phone");
        carol.join_group("team");
        bob.recv_type("group_member");
        go_offline(&mut bob, carol, "carol");
        post(&mut alice, "g1", "team", "hello team");
        assert_eq!(alice.recv_type("message_ack")["status"], "sent");
        for device in [&mut bob, &mut alice_laptop] {
            let got = device.recv_type("new_message");
            assert_eq!(
                (
                    got["groupId"].as_str(),
                    got["senderId"].as_str(),
                    got["content"].as_str()
                ),
                (Some("team"), Some("alice"), Some("hello team"))
            );
        }
        alice.expect_silence(Duration::from_millis(200));
        // dave is no member.
        let mut dave = server.login("dave", "phone");
        post(&mut dave, "d1", "team", "let me in");
        let error = dave.recv_type("error");
        assert_eq!(
            (error["code"].as_str(), error["ref"].as_str()),
            (Some("not_member"), Some("d1"))
        );
        bob.expect_silence(Duration::from_millis(200));
        assert_eq!(server.terminate(), Some(0));
    }
    // After a restart: carol's queued copy arrives, and the membership is still there.
    let server = Server::start(common::Driver::IoUring, &args);
    let mut carol = server.login("carol", "phone");
    assert_eq!(carol.recv_type("new_message")["content"], "hello team");
    let mut bob = server.login("bob", "phone");
    post(&mut bob, "g2", "team", "still here");
    assert_eq!(bob.recv_type("message_ack")["status"], "sent");
    assert_eq!(carol.recv_type("new_message")["content"], "still here");
    // Leaving: the others are told (and the leaver's devices), and it gets nothing more.
    bob.send(&json!({"type": "group_leave", "groupId": "team"}));
    for device in [&mut carol, &mut bob] {
        let left = device.recv_type("group_member");
        assert_eq!(
            (left["userId"].as_str(), left["action"].as_str()),
            (Some("bob"), Some("left"))
        );
    }
    post(&mut carol, "g3", "team", "bye bob");
    assert_eq!(carol.recv_type("message_ack")["status"], "sent");
    bob.expect_silence(Duration::from_millis(300));
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn call_signals_are_relayed_as_sent_and_never_queued() {
    let server = Server::start(common::Driver::IoUring, &["--reactors", "2"]);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    let offer = json!({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0", "candidates": [1, 2.5, null]});
    signal(&mut alice, "bob", "call-1", "webrtc:offer", offer.clone());
    let got = bob.recv_type("signal");
    assert_eq!(
        (
            got["senderId"].as_str(),
            got["callId"].as_str(),
            got["kind"].as_str()
        ),
        (Some("alice"), Some("call-1"), Some("webrtc:offer"))
    );
    assert_eq!(got["payload"], offer);
    signal(&mut bob, "alice", "call-1", "call:reject", Value::Null);
    assert_eq!(alice.recv_type("signal")["kind"], "call:reject");
    // Nobody online: the caller hears peer_offline at once, and nothing waits for carol.
    signal(
        &mut alice,
        "carol",
        "call-2",
        "call:initiate",
        json!({"video": true}),
    );
    let error = alice.recv_type("error");
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("peer_offline"), Some("call-2"))
    );
    let mut carol = server.login("carol", "phone");
    carol.expect_silence(Duration::from_millis(300));
    // An unknown kind is refused, naming the field.
    signal(&mut alice, "bob", "call-3", "call:dance", Value::Null);
    let error = alice.recv_type("error");
    assert_eq!(error["code"], "bad_request");
    assert!(error["message"].as_str().unwrap().contains("kind"));
}

#[test]
fn a_huddle_relays_to_the_devices_present_and_says_who_comes_and_goes() {
    let server = Server::start(common::Driver::IoUring, &["--reactors", "2"]);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    let mut carol = server.login("carol", "phone");
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join_group("team");
    }
    // Whichever join the group's home sees first, each hears of the other: the later
    // one as the newcomer is announced, the earlier one in the newcomer's welcome.
    signal(&mut alice, "team", "room", "huddle:join", Value::Null);
    signal(
        &mut bob,
        "team",
        "room",
        "huddle:join",
        json!({"audio": true}),
    );
    for (device, other) in [(&mut alice, "bob"), (&mut bob, "alice")] {
        let joined = device.recv_type("signal");
        assert_eq!(
            (
                joined["senderId"].as_str(),
                joined["kind"].as_str(),
                joined["callId"].as_str()
            ),
            (Some(other), Some("huddle:join"), Some("room"))
        );
    }
    signal(
        &mut alice,
        "team",
        "room",
        "huddle:toggle-audio",
        json!({"muted": true}),
    );
    assert_eq!(bob.recv_type("signal")["payload"], json!({"muted": true}));
    // carol is a member but not in the room: her signals are refused, and she hears none.
    signal(&mut carol, "team", "room", "huddle:raise-hand", Value::Null);
    assert_eq!(carol.recv_type("error")["code"], "bad_request");
    // A stranger may not enter.
    let mut dave = server.login("dave", "phone");
    signal(&mut dave, "team", "room", "huddle:join", Value::Null);
    assert_eq!(dave.recv_type("error")["code"], "not_member");
    // bob's connection drops: alice hears that he left.
    drop(bob);
    let left = alice.recv_type("signal");
    assert_eq!(
        (left["senderId"].as_str(), left["kind"].as_str()),
        (Some("bob"), Some("huddle:leave"))
    );
    carol.expect_silence(Duration::from_millis(200));
}

#[test]
fn edits_deletes_and_reactions_reach_the_other_side_and_history() {
    let server = Server::start(common::Driver::IoUring, &["--reactors", "2"]);
    let mut alice = server.login("alice", "phone");
    let mut alice_laptop = server.login("alice", "laptop");
    let mut bob = server.login("bob", "phone");
    alice.send(
        &json!({"type": "send_message", "messageId": "m1", "receiverId": "bob",
                       "content": "helo"}),
    );
    assert_eq!(alice.recv_type("message_ack")["status"], "sent");
    bob.recv_type("new_message");
    alice.send(
        &json!({"type": "message_edit", "messageId": "m1", "receiverId": "bob",
                       "content": "hello"}),
    );
    for device in [&mut bob, &mut alice_laptop] {
        let edited = device.recv_type("message_edited");
        assert_eq!(
            (
                edited["messageId"].as_str(),
                edited["senderId"].as_str(),
                edited["content"].as_str()
            ),
            (Some("m1"), Some("alice"), Some("hello"))
        );
    }
    // Only the sender may edit; bob may react.
    bob.send(
        &json!({"type": "message_edit", "messageId": "m1", "receiverId": "alice",
                     "content": "hacked"}),
    );
    assert_eq!(bob.recv_type("error")["code"], "not_found");
    bob.send(
        &json!({"type": "reaction_add", "messageId": "m1", "receiverId": "alice",
                     "emoji": "👍"}),
    );
    let reaction = alice.recv_type("reaction_added");
    assert_eq!(
        (reaction["senderId"].as_str(), reaction["emoji"].as_str()),
        (Some("bob"), Some("👍"))
    );
    bob.send(&json!({"type": "history", "peerId": "alice"}));
    let history = bob.recv_type("history");
    let stored = &history["messages"][0];
    assert_eq!(
        (stored["content"].as_str(), stored["edited"].as_bool()),
        (Some("hello"), Some(true))
    );
    assert_eq!(stored["reactions"], json!({"👍": ["bob"]}));
    // A delete reaches bob even when he is offline.
    go_offline(&mut alice_laptop, bob, "bob");
    alice.send(&json!({"type": "message_delete", "messageId": "m1", "receiverId": "bob"}));
    alice_laptop.recv_type("message_deleted");
    let mut bob = server.login("bob", "tablet");
    assert_eq!(bob.recv_type("message_deleted")["messageId"], "m1");
}

#[test]
fn a_group_post_is_acked_only_once_offline_copies_are_stored() {
    // A 2 MiB file-size limit: the store fills up after a few dozen 60 KB messages.
    let server =
        Server::start_with_file_size_limit(common::Driver::IoUring, &["--reactors", "2"], 2 << 20);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    let carol = server.login("carol", "phone");
    for client in [&mut alice, &mut bob] {
        client.join_group("team");
    }
    let mut carol = carol;
    carol.join_group("team");
    go_offline(&mut bob, carol, "carol");
    let big = "x".repeat(60_000);
    let mut failed_at = None;
    for i in 0..200 {
        let id = format!("big{i}");
        post(&mut alice, &id, "team", &big);
        assert_eq!(
            bob.recv_type("new_message")["messageId"],
            id.as_str(),
            "online copy"
        );
        let reply = loop {
            let reply = alice.recv();
            if reply["type"] != "group_member" {
                break reply;
            }
        };
        if reply["type"] == "error" {
            assert_eq!(
                (reply["code"].as_str(), reply["ref"].as_str()),
                (Some("persistence_failed"), Some(id.as_str())),
                "{reply}"
            );
            failed_at = Some(i);
            break;
        }
        assert_eq!(reply["status"], "sent", "{reply}");
    }
    let failed_at = failed_at.expect("the store fills up");
    // Every post acked `sent` waits in carol's queue, readable once the disk has room
    // again (the store reopens its file then, if the full disk kept it from reopening).
    server.make_room();
    let mut carol = server.login("carol", "phone");
    for i in 0..failed_at {
        assert_eq!(
            carol.recv_type("new_message")["messageId"],
            format!("big{i}")
        );
    }
}

#[test]
fn a_payload_nested_too_deep_is_refused_and_the_gateway_lives() {
    // 30,000 levels fit in one 64 KiB message; following them recursively once overflowed
    // the reactor's stack and aborted the whole process.
    let server = Server::start(common::Driver::IoUring, &["--reactors", "1"]);
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    alice.send_text(&format!(
        r#"{{"type":"signal","receiverId":"bob","callId":"c9","kind":"webrtc:offer","payload":{deep}}}"#
    ));
    let error = alice.recv_type("error");
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("bad_request"), Some("c9"))
    );
    assert!(error["message"].as_str().unwrap().contains("payload"));
    signal(
        &mut alice,
        "bob",
        "c10",
        "webrtc:offer",
        json!([[["fine"]]]),
    );
    assert_eq!(bob.recv_type("signal")["payload"], json!([[["fine"]]]));
}

#[test]
fn a_connection_is_in_at_most_sixteen_huddles() {
    let server = Server::start(common::Driver::IoUring, &["--reactors", "1"]);
    let mut alice = server.login("alice", "phone");
    alice.join_group("team");
    for room in 0..16 {
        signal(
            &mut alice,
            "team",
            &format!("r{room}"),
            "huddle:join",
            Value::Null,
        );
    }
    signal(&mut alice, "team", "r16", "huddle:join", Value::Null);
    let error = alice.recv_type("error");
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("bad_request"), Some("r16"))
    );
    // Leaving one makes room.
    signal(&mut alice, "team", "r0", "huddle:leave", Value::Null);
    signal(&mut alice, "team", "r16", "huddle:join", Value::Null);
    alice.expect_silence(Duration::from_millis(300));
}

#[test]
fn a_user_in_the_most_groups_may_join_no_more_until_it_leaves_one() {
    let data_dir = fresh_data_dir();
    let dir = data_dir.to_str().unwrap();
    let args = [
        "--reactors",
        "2",
        "--groups-per-user-max",
        "3",
        "--data-dir",
        dir,
    ];
    let server = Server::start(common::Driver::IoUring, &args);
    let mut greedy = server.login("greedy", "phone");
    // The groups live on both reactors; the cap counts them all.
    for group in ["g0", "g1", "g2"] {
        greedy.join_group(group);
    }
    greedy.join_group("g1"); // already a member: confirmed, nothing counted
    greedy.send(&json!({"type": "group_join", "groupId": "g3"}));
    let refused = greedy.recv_type("error");
    assert_eq!(refused["code"], "too_many_groups", "{refused}");
    assert_eq!(refused["ref"], "g3");
    // Others are not affected, and a leave makes room.
    let mut other = server.login("other", "phone");
    other.join_group("g3");
    greedy.send(&json!({"type": "group_leave", "groupId": "g0"}));
    assert_eq!(greedy.recv_type("group_member")["action"], "left");
    greedy.join_group("g3");
    // Killed, not stopped: a `group_member` event comes only after the store committed the
    // change, so nothing the clients were told is lost.
    drop((greedy, other, server));
    // Memberships loaded at start count: still at the cap after a restart.
    let server = Server::start(common::Driver::IoUring, &args);
    let mut greedy = server.login("greedy", "phone");
    greedy.send(&json!({"type": "group_join", "groupId": "g4"}));
    assert_eq!(greedy.recv_type("error")["code"], "too_many_groups");
}
