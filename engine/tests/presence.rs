//! Presence rows of PROTOCOL.md: state on subscribe, updates to subscribers only.

mod common;

use std::time::Duration;

use common::{on_both_drivers, Server};
use serde_json::json;

#[test]
fn subscribe_reports_state_then_updates_on_first_and_last_device() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut watcher = server.login("watcher", "phone");
        let _online = server.login("u-online", "phone");
        // Many users so the answer gathers from both homes.
        let mut ids: Vec<String> = (0..10).map(|i| format!("u-off{i}")).collect();
        ids.push("u-online".into());
        watcher.send(&json!({"type":"presence_subscribe","userIds":ids}));
        let state = watcher.recv_type("presence_state");
        let users = state["users"].as_array().unwrap();
        assert_eq!(users.len(), 11);
        for user in users {
            let expected = if user["userId"] == "u-online" {
                "online"
            } else {
                "offline"
            };
            assert_eq!(user["status"], expected, "{user}");
        }
        let mut phone = server.login("u-off3", "phone");
        let update = watcher.recv_type("presence_update");
        assert_eq!(
            (update["userId"].as_str(), update["status"].as_str()),
            (Some("u-off3"), Some("online"))
        );
        // A second device is no news; the last device leaving is.
        let laptop = server.login("u-off3", "laptop");
        drop(laptop);
        phone.ws.close(None).unwrap();
        let _ = phone.expect_close();
        let update = watcher.recv_type("presence_update");
        assert_eq!(
            (update["userId"].as_str(), update["status"].as_str()),
            (Some("u-off3"), Some("offline"))
        );
        // lastSeen is known once the user has been seen going offline.
        watcher.send(&json!({"type":"presence_subscribe","userIds":["u-off3"]}));
        let state = watcher.recv_type("presence_state");
        assert!(state["users"][0]["lastSeen"].is_u64(), "{state}");
    });
}

#[test]
fn unsubscribed_and_unrelated_users_get_no_updates() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut watcher = server.login("watcher", "phone");
        let mut bystander = server.login("bystander", "phone");
        watcher.send(&json!({"type":"presence_subscribe","userIds":["target"]}));
        watcher.recv_type("presence_state");
        watcher.send(&json!({"type":"presence_unsubscribe","userIds":["target"]}));
        // The unsubscribe is processed before this ping's pong comes back.
        watcher.send(&json!({"type":"ping"}));
        watcher.recv_type("pong");
        let _target = server.login("target", "phone");
        watcher.expect_silence(Duration::from_millis(300));
        bystander.expect_silence(Duration::from_millis(50));
    });
}

#[test]
fn a_dropped_user_stays_online_for_the_grace_and_a_logout_is_at_once() {
    let server = Server::start(common::Driver::IoUring, &["--presence-grace-ms", "600"]);
    let mut watcher = server.login("watcher", "phone");
    let bob = server.login("bob", "phone");
    watcher.send(&json!({"type": "presence_subscribe", "userIds": ["bob"]}));
    assert_eq!(
        watcher.recv_type("presence_state")["users"][0]["status"],
        "online"
    );
    // Dropped without a close frame, and back within the grace: no flap at all.
    drop(bob);
    std::thread::sleep(Duration::from_millis(200));
    watcher.send(&json!({"type": "presence_subscribe", "userIds": ["bob"]}));
    let state = watcher.recv_type("presence_state");
    assert_eq!(state["users"][0]["status"], "online", "{state}");
    let bob = server.login("bob", "phone");
    watcher.expect_silence(Duration::from_millis(800));
    // Dropped and not back: offline once the grace has passed.
    drop(bob);
    let started = std::time::Instant::now();
    let update = watcher.recv_type("presence_update");
    assert_eq!(update["status"], "offline");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // A logout (a close frame) is offline at once.
    let mut bob = server.login("bob", "phone");
    assert_eq!(watcher.recv_type("presence_update")["status"], "online");
    let started = std::time::Instant::now();
    bob.ws.close(None).unwrap();
    let _ = bob.ws.flush();
    assert_eq!(watcher.recv_type("presence_update")["status"], "offline");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}
