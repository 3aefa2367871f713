//! The operator's API (`/api/admin/*`) against the real engine: a user's devices with
//! their connect time and reactor, disconnecting a user or one device with a close code,
//! presence of many users in one call, a group's members listed, added and removed (as
//! the members hear it), and every bad call answered with a clear JSON error.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{nats, Driver, Server};
use serde_json::{json, Value};

const TOKEN: &str = "admin-secret";
const AUTH: &str = "Authorization: Bearer admin-secret";

/// `method path` with the token and `body`: `(status, JSON)`.
fn call(server: &Server, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = server.request(method, path, &[AUTH], body);
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn devices_are_listed_and_a_user_or_one_device_is_disconnected_with_a_code() {
    let server = Server::start(Driver::IoUring, &["--api-token", TOKEN]);
    let before = now_ms();
    let mut phone = server.login("alice", "phone");
    let mut laptop = server.login("alice", "laptop");
    let mut bob = server.login("bob", "phone");
    let (status, devices) = call(&server, "GET", "/api/admin/users/alice/devices", "");
    assert_eq!(status, 200, "{devices}");
    assert_eq!(devices["user_id"], "alice");
    assert!(devices.get("node").is_none(), "a single node names none");
    let mut listed: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, ["laptop", "phone"]);
    for device in devices["devices"].as_array().unwrap() {
        let at = device["connected_at_ms"].as_u64().unwrap();
        assert!(at >= before && at <= now_ms(), "{device}");
        assert!(device["reactor"].as_u64().unwrap() < 2, "{device}");
    }
    // Nobody by that name: no devices.
    let (status, none) = call(&server, "GET", "/api/admin/users/nobody/devices", "");
    assert_eq!(
        (status, none["devices"].as_array().unwrap().len()),
        (200, 0)
    );

    // One device, with a code of the operator's choosing.
    let body = r#"{"user_id":"alice","device_id":"laptop","code":4100}"#;
    let (status, answer) = call(&server, "POST", "/api/admin/disconnect", body);
    assert_eq!(
        (status, &answer["disconnected"]),
        (200, &json!(1)),
        "{answer}"
    );
    assert_eq!(laptop.expect_close(), 4100);
    phone.send_chat("still", "bob", "here");
    assert_eq!(bob.next_message().0, "here");
    // All of a user's devices, with the default code (1008: do not reconnect at once).
    let (status, answer) = call(
        &server,
        "POST",
        "/api/admin/disconnect",
        r#"{"user_id":"alice"}"#,
    );
    assert_eq!((status, &answer["disconnected"]), (200, &json!(1)));
    assert_eq!(phone.expect_close(), 1008);
    server.wait_offline("alice");
    let (_, devices) = call(&server, "GET", "/api/admin/users/alice/devices", "");
    assert_eq!(devices["devices"], json!([]));
    // Bob carries on.
    bob.send(&json!({"type": "ping"}));
    assert_eq!(bob.recv_type("pong")["type"], "pong");
}

#[test]
fn presence_of_up_to_a_thousand_users_comes_in_one_call_in_the_order_asked() {
    let server = Server::start(Driver::IoUring, &["--api-token", TOKEN]);
    let _a = server.login("u3", "phone");
    let _b = server.login("u17", "phone");
    let gone = server.login("u5", "phone");
    drop(gone);
    server.wait_offline("u5");
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let body = json!({ "user_ids": users }).to_string();
    let (status, answer) = call(&server, "POST", "/api/admin/presence", &body);
    assert_eq!(status, 200);
    let entries = answer["users"].as_array().unwrap();
    assert_eq!(entries.len(), 1000);
    let online: Vec<&str> = entries
        .iter()
        .filter(|e| e["online"] == true)
        .map(|e| e["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(online.len(), 2, "{online:?}");
    assert!(online.contains(&"u3") && online.contains(&"u17"));
    let answered: Vec<&str> = entries
        .iter()
        .map(|e| e["user_id"].as_str().unwrap())
        .collect();
    let asked: Vec<&str> = users.iter().map(String::as_str).collect();
    assert_eq!(answered, asked, "each user once, in the order asked");
    // 1,001 users, or none, are refused.
    let too_many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let body = json!({ "user_ids": too_many }).to_string();
    let (status, error) = call(&server, "POST", "/api/admin/presence", &body);
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = call(&server, "POST", "/api/admin/presence", r#"{"user_ids":[]}"#);
    assert_eq!(status, 400);
}

#[test]
fn an_operator_adds_and_removes_group_members_and_the_members_hear_it() {
    let server = Server::start(Driver::IoUring, &["--api-token", TOKEN]);
    let mut owner = server.login("olga", "phone");
    let reply =
        owner.group_request(json!({"type": "group_create", "groupId": "team", "access": "invite"}));
    assert_eq!(reply["type"], "group_member", "{reply}");
    let mut bob = server.login("bob", "phone");
    // Invite-only: bob cannot join, but an operator adds him (as an admin).
    let body = r#"{"user_id":"bob","role":"admin"}"#;
    let (status, added) = call(&server, "POST", "/api/admin/groups/team/members", body);
    assert_eq!(status, 200, "{added}");
    assert_eq!(
        (added["type"].as_str(), added["userId"].as_str()),
        (Some("group_member"), Some("bob"))
    );
    assert_eq!(owner.recv_type("group_member")["userId"], "bob");
    assert_eq!(bob.recv_type("group_member")["groupId"], "team");
    let (status, listed) = call(&server, "GET", "/api/admin/groups/team/members", "");
    assert_eq!(status, 200);
    assert_eq!(
        listed["members"],
        json!([{"user_id": "bob", "role": "admin"}, {"user_id": "olga", "role": "owner"}])
    );
    assert_eq!(
        (listed["invite"].as_bool(), listed["exists"].as_bool()),
        (Some(true), Some(true))
    );
    // bob can post now.
    bob.send(
        &json!({"type": "group_message", "messageId": "g1", "groupId": "team", "content": "hi"}),
    );
    assert_eq!(owner.recv_type("new_message")["content"], "hi");
    // Adding him again changes nothing, and says so the same way.
    let (status, again) = call(&server, "POST", "/api/admin/groups/team/members", body);
    assert_eq!((status, again["userId"].as_str()), (200, Some("bob")));
    // Removed: he hears it, and so does the owner.
    let (status, removed) = call(&server, "DELETE", "/api/admin/groups/team/members/bob", "");
    assert_eq!(status, 200, "{removed}");
    assert_eq!(owner.recv_type("group_member")["userId"], "bob");
    let (_, listed) = call(&server, "GET", "/api/admin/groups/team/members", "");
    assert_eq!(
        listed["members"],
        json!([{"user_id": "olga", "role": "owner"}])
    );
    // A group nobody made has no members.
    let (status, none) = call(&server, "GET", "/api/admin/groups/nothing/members", "");
    assert_eq!((status, none["exists"].as_bool()), (200, Some(false)));
}

#[test]
fn bad_admin_calls_get_clear_json_errors() {
    let server = Server::start(Driver::IoUring, &["--api-token", TOKEN]);
    // No token: 401, like every /api call.
    let (status, _) = server.request("GET", "/api/admin/users/a/devices", &[], "");
    assert_eq!(status, 401);
    let cases = [
        (
            "GET",
            "/api/admin/disconnect",
            "",
            405,
            "method_not_allowed",
        ),
        ("POST", "/api/admin/disconnect", "{nope", 400, "bad_json"),
        (
            "POST",
            "/api/admin/disconnect",
            r#"{"user_id":"a","code":1006}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/admin/disconnect",
            r#"{"user_id":"a","then":1}"#,
            400,
            "bad_json",
        ),
        (
            "POST",
            "/api/admin/presence",
            r#"{"user_ids":"a"}"#,
            400,
            "bad_json",
        ),
        (
            "GET",
            "/api/admin/users/%FF/devices",
            "",
            400,
            "bad_request",
        ),
        (
            "DELETE",
            "/api/admin/groups/g/members",
            "",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/admin/groups/g/members",
            r#"{"user_id":"u","role":"owner"}"#,
            400,
            "bad_request",
        ),
        ("GET", "/api/admin/nothing", "", 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, error) = call(&server, method, path, body);
        assert_eq!(
            (got, error["error"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}: {error}"
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
    // The server is fine after all of them.
    let (status, _) = call(&server, "GET", "/api/admin/users/a/devices", "");
    assert_eq!(status, 200);
}

#[test]
fn in_a_cluster_any_node_answers_about_users_on_every_node() {
    let nats_server = match nats::Nats::start() {
        Ok(nats) => nats,
        Err(why) => return nats::skip("admin_api_in_a_cluster", &why),
    };
    let flags = ["--api-token", TOKEN];
    let a = nats::node_with(&nats_server.url(), "a", &flags);
    let b = nats::node_with(&nats_server.url(), "b", &flags);
    nats::wait_for_nodes(&a, 2, Duration::from_secs(30));
    nats::wait_for_nodes(&b, 2, Duration::from_secs(30));
    let mut laptop = a.login("carol", "laptop");
    let mut phone = b.login("carol", "phone");
    let _dave = b.login("dave", "phone");
    let scope = |answer: &Value| {
        (
            answer["scope"].as_str().map(str::to_owned),
            answer["nodes_answered"].as_u64(),
            answer["nodes_known"].as_u64(),
        )
    };
    let whole = (Some("cluster".to_owned()), Some(2), Some(2));

    // Asked on a: carol's devices on both nodes, each with its node.
    let (status, devices) = call(&a, "GET", "/api/admin/users/carol/devices", "");
    assert_eq!(status, 200, "{devices}");
    assert_eq!(scope(&devices), whole, "{devices}");
    let mut listed: Vec<(&str, &str)> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap(),
                d["node_id"].as_str().unwrap(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, [("laptop", "a"), ("phone", "b")]);

    // Presence asked on a, in the order asked: dave is only on b, erin nowhere.
    let body = json!({ "user_ids": ["erin", "dave", "carol"] }).to_string();
    let (status, presence) = call(&a, "POST", "/api/admin/presence", &body);
    assert_eq!(status, 200, "{presence}");
    assert_eq!(scope(&presence), whole, "{presence}");
    let seen: Vec<(&str, bool)> = presence["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["user_id"].as_str().unwrap(), u["online"] == true))
        .collect();
    assert_eq!(seen, [("erin", false), ("dave", true), ("carol", true)]);

    // A disconnect asked on b closes carol's devices on both nodes.
    let body = r#"{"user_id":"carol","code":4200}"#;
    let (status, closed) = call(&b, "POST", "/api/admin/disconnect", body);
    assert_eq!(
        (status, &closed["disconnected"]),
        (200, &json!(2)),
        "{closed}"
    );
    assert_eq!(laptop.expect_close(), 4200);
    assert_eq!(phone.expect_close(), 4200);
    let (_, devices) = call(&a, "GET", "/api/admin/users/carol/devices", "");
    assert_eq!(devices["devices"], json!([]), "{devices}");

    // b dies without a word: until it is counted dead, a answers alone, at once or after
    // its 500 ms wait, and says it speaks for one node of two.
    let mut b = b;
    b.child.kill().unwrap();
    let asked = std::time::Instant::now();
    let (status, alone) = call(&a, "GET", "/api/admin/users/dave/devices", "");
    assert_eq!(status, 200, "{alone}");
    assert_eq!(
        scope(&alone),
        (Some("cluster".to_owned()), Some(1), Some(2)),
        "{alone}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
}
