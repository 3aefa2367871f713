//! Event webhooks (`--events-webhook`): users online and offline (after the presence
//! grace), group members and connections closed with their code reach a backend in
//! signed batches, retried when the webhook fails; bad flags stop start-up naming them.

mod common;

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{nats, Driver, Server};
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef-events";

/// Collects events from the webhook's batches until `done` holds of them (bounded). In
/// a `cluster` each batch names its node, copied into each event as `node`; a single
/// node names none.
fn events_until(
    requests: &mpsc::Receiver<common::webhook::Request>,
    cluster: bool,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut events = Vec::new();
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        let request = requests
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no more events; so far {events:?}"));
        take_batch(request, cluster, &mut events);
    }
    events
}

/// One batch's events, its signature checked, each with the batch's node if it names one
/// (it must in a `cluster`).
fn take_batch((head, body): common::webhook::Request, cluster: bool, events: &mut Vec<Value>) {
    // Signed as the push hook signs: HMAC-SHA256 of "<t>.<body>".
    common::webhook::check_signature((&head, &body), SECRET);
    let batch: Value = serde_json::from_slice(&body).unwrap();
    let node = batch.get("node").cloned();
    assert_eq!(node.is_some(), cluster, "{batch}");
    for mut event in batch["events"].as_array().unwrap().iter().cloned() {
        if let Some(node) = &node {
            event["node"] = node.clone();
        }
        events.push(event);
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[test]
fn presence_groups_and_closes_reach_the_webhook_signed_and_batched() {
    // The first post gets 503: its batch is posted again.
    let (url, requests) = common::webhook::start("/hooks/events", 1);
    let args = [
        "--events-webhook",
        &url,
        "--events-secret",
        SECRET,
        "--presence-grace-ms",
        "300",
    ];
    let server = Server::start(Driver::IoUring, &args);
    let mut alice = server.login("alice", "phone");
    let created = alice.group_request(json!({"type": "group_create", "groupId": "team"}));
    assert_eq!(created["role"], "owner");
    let events = events_until(&requests, false, |e| {
        !of_type(e, "user_online").is_empty() && !of_type(e, "group_member").is_empty()
    });
    let online = of_type(&events, "user_online");
    assert_eq!(online[0]["user_id"], "alice");
    assert!(online[0]["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let member = of_type(&events, "group_member")[0];
    assert_eq!(
        (
            member["group_id"].as_str(),
            member["user_id"].as_str(),
            member["action"].as_str(),
            member["role"].as_str()
        ),
        (Some("team"), Some("alice"), Some("joined"), Some("owner"))
    );
    // A second device, closed with a close frame: its code, and alice stays online.
    let mut laptop = server.login("alice", "laptop");
    laptop.close_with(1000);
    let events = events_until(&requests, false, |e| {
        !of_type(e, "connection_closed").is_empty()
    });
    let closed = of_type(&events, "connection_closed")[0];
    assert_eq!(
        (closed["device_id"].as_str(), closed["code"].as_u64()),
        (Some("laptop"), Some(1000))
    );
    assert!(of_type(&events, "user_offline").is_empty());
    // The last device dropped without a closing handshake: 1006, then offline after the
    // grace.
    drop(alice);
    let events = events_until(&requests, false, |e| !of_type(e, "user_offline").is_empty());
    let closed = of_type(&events, "connection_closed");
    assert_eq!(
        (closed[0]["device_id"].as_str(), closed[0]["code"].as_u64()),
        (Some("phone"), Some(1006)),
        "{events:?}"
    );
    assert_eq!(of_type(&events, "user_offline")[0]["user_id"], "alice");
    // The same device connecting again replaces its connection: the old one's close
    // is reported as replaced (4003), once.
    let mut first = server.login("carol", "tablet");
    let _second = server.login("carol", "tablet");
    assert_eq!(first.expect_close(), 4003);
    let events = events_until(&requests, false, |e| {
        !of_type(e, "connection_closed").is_empty()
    });
    let closed = of_type(&events, "connection_closed");
    assert_eq!(
        (closed[0]["device_id"].as_str(), closed[0]["code"].as_u64()),
        (Some("tablet"), Some(4003)),
        "{events:?}"
    );
    // An operator's close names its code.
    let mut bob = server.login("bob", "phone");
    let _ = events_until(&requests, false, |e| !of_type(e, "user_online").is_empty());
    let body = r#"{"user_id":"bob","code":4100}"#;
    let (status, _) = server.request("POST", "/api/admin/disconnect", &[], body);
    assert_eq!(status, 200);
    assert_eq!(bob.expect_close(), 4100);
    let events = events_until(&requests, false, |e| {
        !of_type(e, "connection_closed").is_empty()
    });
    assert_eq!(of_type(&events, "connection_closed")[0]["code"], 4100);
    let (_, metrics) = server.get("/metrics");
    assert!(
        !metrics.contains("engine_events_sent_total 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("engine_events_dropped_total 0\n"),
        "{metrics}"
    );
}

#[test]
fn bad_events_flags_stop_start_up_naming_the_flag() {
    for (args, flag) in [
        (&["--events-webhook", "ftp://x/"][..], "--events-webhook"),
        (
            &["--events-webhook", "http://x/", "--events-secret", "short"][..],
            "--events-secret",
        ),
        (&["--events-secret", SECRET][..], "--events-secret"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

/// A nats-server and a webhook for cluster nodes that post their events to it, with a
/// 200 ms presence grace.
struct WebhookCluster {
    nats: nats::Nats,
    url: String,
    requests: mpsc::Receiver<common::webhook::Request>,
}

impl WebhookCluster {
    /// Starts both, or `None` (the test said why it skips) without a nats-server.
    fn start(test: &str) -> Option<WebhookCluster> {
        let nats = match nats::Nats::start() {
            Ok(nats) => nats,
            Err(why) => {
                nats::skip(test, &why);
                return None;
            }
        };
        let (url, requests) = common::webhook::start("/hooks/events", 0);
        Some(WebhookCluster {
            nats,
            url,
            requests,
        })
    }

    /// A node `id` posting to the webhook.
    fn node(&self, id: &str) -> Server {
        self.node_via(id, &self.nats.url())
    }

    /// A node `id` posting to the webhook, reaching NATS at `url` (a [`nats::Proxy`]).
    fn node_via(&self, id: &str, url: &str) -> Server {
        let flags = [
            "--events-webhook",
            &self.url,
            "--events-secret",
            SECRET,
            "--presence-grace-ms",
            "200",
        ];
        nats::node_with(url, id, &flags)
    }

    /// Waits a second for anything a node would say twice, and adds what came to `seen`.
    fn the_rest(&self, seen: &mut Vec<Value>) {
        std::thread::sleep(Duration::from_millis(1000));
        while let Ok(request) = self.requests.try_recv() {
            take_batch(request, true, seen);
        }
    }
}

#[test]
fn in_a_cluster_a_user_is_reported_online_and_offline_once_whatever_the_nodes() {
    let Some(cluster) = WebhookCluster::start("events_webhook_in_a_cluster") else {
        return;
    };
    let requests = &cluster.requests;
    let a = cluster.node("a");
    let b = cluster.node("b");
    nats::wait_for_nodes(&a, 2, Duration::from_secs(30));
    nats::wait_for_nodes(&b, 2, Duration::from_secs(30));
    let closed = |events: &[Value], device: &str| {
        of_type(events, "connection_closed")
            .iter()
            .any(|e| e["device_id"] == device)
    };

    // Online on a: a reports it.
    let phone = a.login("alice", "phone");
    let mut seen = events_until(requests, true, |e| !of_type(e, "user_online").is_empty());
    let online = of_type(&seen, "user_online");
    assert_eq!(
        (&online[0]["user_id"], &online[0]["node"]),
        (&json!("alice"), &json!("a"))
    );
    // A second device on b: a held alice first, so b says nothing. The phone goes; b
    // still holds alice, so a says nothing either once its grace is over.
    let laptop = b.login("alice", "laptop");
    std::thread::sleep(Duration::from_millis(1000)); // b's question is answered
    drop(phone);
    seen.extend(events_until(requests, true, |e| closed(e, "phone")));
    std::thread::sleep(Duration::from_millis(1500)); // a's grace, and its question
                                                     // The laptop goes too: b lets alice go last, and reports her offline.
    drop(laptop);
    seen.extend(events_until(requests, true, |e| {
        !of_type(e, "user_offline").is_empty()
    }));
    cluster.the_rest(&mut seen);
    let presence: Vec<(&str, &str)> = seen
        .iter()
        .filter(|e| e["type"] == "user_online" || e["type"] == "user_offline")
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["node"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        presence,
        [("user_online", "a"), ("user_offline", "b")],
        "{seen:?}"
    );
}

#[test]
fn in_a_cluster_a_killed_nodes_users_are_reported_offline_by_the_others_or_its_successor() {
    let Some(cluster) = WebhookCluster::start("events_webhook_after_a_kill") else {
        return;
    };
    let requests = &cluster.requests;
    let presence_of = |events: &[Value], user: &str| -> Vec<(String, String)> {
        (events.iter())
            .filter(|e| e["user_id"] == user)
            .filter(|e| e["type"] == "user_online" || e["type"] == "user_offline")
            .map(|e| (e["type"].as_str().unwrap().into(), e["node"].to_string()))
            .collect()
    };
    let mut a = cluster.node("a");
    let mut b = cluster.node("b");
    nats::wait_for_nodes(&b, 2, Duration::from_secs(30));

    // alice on a, bob on b, both reported online.
    let _alice = a.login("alice", "phone");
    let _bob = b.login("bob", "phone");
    let mut seen = events_until(requests, true, |e| of_type(e, "user_online").len() == 2);
    // a dies without a word: b counts it dead after 10 s, reaps what it held, and
    // reports alice offline; bob stays online.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    seen.extend(events_until(requests, true, |e| {
        presence_of(e, "alice")
            .iter()
            .any(|(kind, _)| kind == "user_offline")
    }));
    let took = killed.elapsed();
    eprintln!("alice reported offline {took:?} after her node was killed");
    assert!(
        took < Duration::from_secs(15),
        "alice offline after {took:?}"
    );
    let b_node = json!("b").to_string();
    assert_eq!(
        presence_of(&seen, "alice"),
        [
            ("user_online".into(), json!("a").to_string()),
            ("user_offline".into(), b_node.clone())
        ],
        "{seen:?}"
    );

    // b dies too, and a process takes its id over at once: alone in the cluster, it
    // reaps the one before it and reports bob offline.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let restarted = Instant::now();
    let _b2 = cluster.node("b");
    seen.extend(events_until(requests, true, |e| {
        presence_of(e, "bob")
            .iter()
            .any(|(kind, _)| kind == "user_offline")
    }));
    let took = restarted.elapsed();
    eprintln!("bob reported offline {took:?} after his node's successor started");
    assert!(took < Duration::from_secs(10), "bob offline after {took:?}");
    cluster.the_rest(&mut seen);
    assert_eq!(
        presence_of(&seen, "bob"),
        [
            ("user_online".into(), b_node.clone()),
            ("user_offline".into(), b_node)
        ],
        "{seen:?}"
    );
    assert_eq!(presence_of(&seen, "alice").len(), 2, "{seen:?}");
}

#[test]
fn a_holder_cut_off_while_another_node_lets_the_user_go_reports_the_user_online_once_back() {
    let Some(cluster) = WebhookCluster::start("events_webhook_holder_cut_off") else {
        return;
    };
    let requests = &cluster.requests;
    let presence = |events: &[Value]| -> Vec<(String, String, u64)> {
        (events.iter())
            .filter(|e| e["type"] == "user_online" || e["type"] == "user_offline")
            .map(|e| {
                let (kind, node) = (e["type"].as_str().unwrap(), e["node"].as_str().unwrap());
                (kind.into(), node.into(), e["at_ms"].as_u64().unwrap())
            })
            .collect()
    };
    let proxy = nats::Proxy::start(cluster.nats.port);
    let a = cluster.node("a");
    let b = cluster.node_via("b", &proxy.url());
    nats::wait_for_nodes(&a, 2, Duration::from_secs(30));
    let connected = |server: &Server| nats::cluster(server)["connected"] == true;

    // alice on a, then on b too: a held her first and reports her online.
    let phone = a.login("alice", "phone");
    let mut seen = events_until(requests, true, |e| !of_type(e, "user_online").is_empty());
    let _laptop = b.login("alice", "laptop");
    std::thread::sleep(Duration::from_millis(1000)); // b's question is answered
                                                     // b loses NATS; alice's phone goes, and a, hearing no other holder, reports her
                                                     // offline once its grace is over.
    proxy.cut();
    common::wait_until("b is cut off", || !connected(&b));
    drop(phone);
    seen.extend(events_until(requests, true, |e| {
        !of_type(e, "user_offline").is_empty()
    }));
    // Back, b checks what it holds again, and reports alice online: her laptop is.
    proxy.restore();
    seen.extend(events_until(requests, true, |e| {
        !of_type(e, "user_online").is_empty()
    }));
    cluster.the_rest(&mut seen);
    let said = presence(&seen);
    let kinds: Vec<(&str, &str)> = (said.iter())
        .map(|(kind, node, _)| (kind.as_str(), node.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("user_online", "a"),
            ("user_offline", "a"),
            ("user_online", "b")
        ],
        "{seen:?}"
    );
    assert!(
        said.windows(2).all(|w| w[0].2 < w[1].2),
        "dated in order: {said:?}"
    );
}

#[test]
fn a_node_whose_holdings_a_reaper_deleted_writes_them_again_and_its_users_are_reaped_at_its_death()
{
    let Some(cluster) = WebhookCluster::start("events_webhook_holdings_deleted") else {
        return;
    };
    let requests = &cluster.requests;
    let offline_from_b = |events: &[Value], user: &str| {
        (events.iter())
            .any(|e| e["type"] == "user_offline" && e["user_id"] == user && e["node"] == "b")
    };
    // alice on a, alone: reported online once a's holding of her is kept.
    let mut a = cluster.node("a");
    let _alice = a.login("alice", "phone");
    let mut seen = events_until(requests, true, |e| !of_type(e, "user_online").is_empty());
    // A reaper that took a for dead (frozen, say) deletes a's stream of holdings.
    let names = cluster.nats.request(
        "$JS.API.STREAM.NAMES",
        &json!({"subject": "chat.holdings.>"}),
    );
    let streams = names["streams"]
        .as_array()
        .unwrap_or_else(|| panic!("{names}"));
    assert_eq!(streams.len(), 1, "{names}");
    let stream = streams[0].as_str().unwrap();
    let deleted = cluster
        .nats
        .request(&format!("$JS.API.STREAM.DELETE.{stream}"), &json!({}));
    assert_eq!(deleted["success"], true, "{deleted}");
    // JetStream's advisory tells a at once (its next sweep is a minute away, and it
    // writes nothing meanwhile): a makes its stream anew and writes alice again.
    let info = || {
        let info = (cluster.nats).request(&format!("$JS.API.STREAM.INFO.{stream}"), &json!({}));
        info["state"]["messages"].as_u64()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while info() != Some(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(info(), Some(1), "alice written again within 10 s");
    let b = cluster.node("b");
    nats::wait_for_nodes(&b, 2, Duration::from_secs(30));
    // carol, gained since, goes into the new stream.
    let _carol = a.login("carol", "phone");
    seen.extend(events_until(requests, true, |e| {
        (e.iter()).any(|e| e["type"] == "user_online" && e["user_id"] == "carol")
    }));
    let info = cluster
        .nats
        .request(&format!("$JS.API.STREAM.INFO.{stream}"), &json!({}));
    assert_eq!(info["state"]["messages"], 2, "{info}");
    // a dies: b reaps both.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    seen.extend(events_until(requests, true, |e| {
        offline_from_b(e, "alice") && offline_from_b(e, "carol")
    }));
    cluster.the_rest(&mut seen);
    let gone = cluster
        .nats
        .request(&format!("$JS.API.STREAM.INFO.{stream}"), &json!({}));
    assert_eq!(
        gone["error"]["err_code"], 10059,
        "deleted once reaped: {gone}"
    );
}
