//! Clusters on NATS (PROTOCOL.md "Clusters"): real engine nodes joined through a real
//! `nats-server` with JetStream, each node on its own ephemeral port. Covered here: nodes
//! finding each other, one leaving and one dying, a second node with a taken `--node-id`
//! refused, a node whose NATS is not there yet waiting, not ready, until it comes,
//! typing and call signals reaching a user's devices on another node, presence across
//! nodes (the grace, and a killed node's users going offline), NATS credentials, and TLS
//! to NATS (with certificates `openssl` makes).
//! Without nats-server these tests say why and pass, except under CI, where they fail.

mod common;

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    nats::{
        cluster, free_port, node, skip, two_nodes, wait_for_nodes, with_nats, Nats, DEATH_BOUND,
    },
    Client, Driver, Server,
};
use serde_json::{json, Value};

#[test]
fn nodes_find_each_other_and_one_that_leaves_is_gone_at_once() {
    with_nats("nodes_find_each_other", |nats| {
        let a = node(&nats.url(), "a");
        let mut b = node(&nats.url(), "b");
        wait_for_nodes(&a, 2, Duration::from_secs(10));
        wait_for_nodes(&b, 2, Duration::from_secs(10));
        let view = cluster(&a);
        assert_eq!(view["node_id"], "a", "{view}");
        assert_eq!(view["connected"], true, "{view}");
        assert_eq!(a.get("/health/ready").0, 200);
        assert_eq!(a.counter("engine_cluster_nodes"), 2);
        assert_eq!(a.counter("engine_cluster_connected"), 1);
        // A graceful stop deletes the node's key: the other counts it gone at once, not
        // after the silence that marks a dead node.
        assert_eq!(b.terminate(), Some(0));
        let took = wait_for_nodes(&a, 1, DEATH_BOUND);
        assert!(
            took < Duration::from_secs(5),
            "a leaving node took {took:?}"
        );
    });
}

#[test]
fn a_node_killed_without_a_word_is_counted_dead_and_its_id_is_free_again() {
    with_nats("a_node_killed_without_a_word", |nats| {
        let a = node(&nats.url(), "a");
        let mut b = node(&nats.url(), "b");
        wait_for_nodes(&a, 2, Duration::from_secs(10));
        b.child.kill().unwrap();
        b.child.wait().unwrap();
        let took = wait_for_nodes(&a, 1, DEATH_BOUND);
        assert!(took >= Duration::from_secs(5), "dead after {took:?}?");
        // Its id is taken over by a new process: the old holder does not answer.
        let b = node(&nats.url(), "b");
        assert_eq!(b.get("/health/ready").0, 200);
        wait_for_nodes(&a, 2, Duration::from_secs(10));
    });
}

#[test]
fn a_joining_node_knows_the_others_at_once_and_one_stops_even_with_nats_gone() {
    with_nats("a_joining_node_knows_the_others", |mut nats| {
        let _a = node(&nats.url(), "a");
        let mut b = node(&nats.url(), "b");
        // b reads a's last beat when it starts watching: well within a's next beat.
        let took = wait_for_nodes(&b, 2, Duration::from_secs(1));
        assert!(took < Duration::from_millis(500), "{took:?}");
        nats.kill();
        // Leaving cannot delete the key now; the stop still ends in its bound.
        let started = Instant::now();
        assert_eq!(b.terminate(), Some(0));
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    });
}

/// Starts a node of the cluster at `nats` with id `id` and `flags` that must refuse to
/// start: its stderr, once it exited with a failure.
fn refused_start(nats: &common::nats::Nats, id: &str, flags: &[&str]) -> String {
    let data = common::fresh_data_dir();
    let mut node = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--reactors",
            "1",
            "--log-level",
            "error",
        ])
        .args(["--cluster", &nats.url(), "--node-id", id])
        .args(flags)
        .arg("--data-dir")
        .arg(&*data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("engine starts");
    let mut stderr = String::new();
    node.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = node.wait().unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

#[test]
fn a_second_node_with_a_taken_id_refuses_to_start() {
    with_nats("a_second_node_with_a_taken_id", |nats| {
        let a = node(&nats.url(), "same");
        assert_eq!(a.get("/health/ready").0, 200);
        let shards = common::nats::TEST_SHARDS.to_string();
        let stderr = refused_start(&nats, "same", &["--cluster-shards", &shards]);
        assert!(
            stderr.contains("node id 'same' is held by a running node"),
            "{stderr}"
        );
        // The first goes on, alone.
        assert_eq!(a.get("/health/ready").0, 200);
        assert_eq!(cluster(&a)["nodes"], 1);
    });
}

#[test]
fn a_node_with_another_number_of_shards_refuses_to_start() {
    with_nats("another_number_of_shards", |nats| {
        let a = node(&nats.url(), "a");
        assert_eq!(a.get("/health/ready").0, 200);
        // Its users' state would be looked for in the wrong streams.
        let stderr = refused_start(&nats, "b", &["--cluster-shards", "2"]);
        let expected = format!(
            "start every node with --cluster-shards {}",
            common::nats::TEST_SHARDS
        );
        assert!(stderr.contains(&expected), "{stderr}");
        assert_eq!(a.get("/health/ready").0, 200);
        assert_eq!(cluster(&a)["nodes"], 1);
        // One with the cluster's number joins.
        let b = node(&nats.url(), "b");
        common::nats::wait_for_nodes(&a, 2, Duration::from_secs(10));
        assert_eq!(b.get("/health/ready").0, 200);
    });
}

#[test]
fn a_node_waits_not_ready_until_its_nats_comes() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    // Nothing listens yet: the node starts, says it is not ready, and keeps trying.
    let a = node(&url, "a");
    let (status, body) = a.get("/health/ready");
    assert_eq!(status, 503, "{body}");
    assert_eq!(cluster(&a)["connected"], false);
    assert_eq!(a.counter("engine_ready"), 0);
    let _nats = match Nats::start_on(port) {
        Ok(nats) => nats,
        Err(why) => return skip("a_node_waits_not_ready_until_its_nats_comes", &why),
    };
    let started = Instant::now();
    while a.get("/health/ready").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not ready 15 s after NATS came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cluster(&a)["connected"], true);
}

#[test]
fn a_bad_node_id_or_tls_file_is_refused_with_exit_code_2_naming_its_flag() {
    let refusals: [(&[&str], &str); 4] = [
        (&["--node-id", "a.b"], "--node-id"),
        (&["--cluster-ca", "/nonexistent/ca.pem"], "--cluster-ca"),
        (&["--cluster-cert", "/nonexistent/c.pem"], "--cluster-cert"),
        (&["--cluster-key", "/nonexistent/k.pem"], "--cluster-key"),
    ];
    for (flags, named) in refusals {
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["--cluster", "nats://127.0.0.1:1"])
            .args(flags)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(named), "{flags:?}: {said}");
    }
}

/// Sends `message` from `from` until `to` gets a frame of `kind` (a node subscribes to a
/// user's live events just after the user's device is told it is online, so the first
/// few may find no subscriber yet), and returns that frame.
/// What the presence questions and the presence events rely on (docs/cluster.md): a node
/// asking on `chat.live.<user>` while it subscribes there itself, with `no_echo`, hears
/// "no responders" (503) at once when no other node does, not silence.
#[test]
fn nats_says_no_responders_to_an_asker_subscribed_itself_without_echo() {
    use std::{io::Write, net::TcpStream};
    let nats = match Nats::start() {
        Ok(nats) => nats,
        Err(why) => return skip("nats_no_responders", &why),
    };
    let address = nats.url().trim_start_matches("nats://").to_owned();
    let mut conn = TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let connect = r#"{"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"echo":false,"protocol":1}"#;
    let hello = format!("CONNECT {connect}\r\nSUB chat.live.x 1\r\nSUB _INBOX.t.* 2\r\nPING\r\n");
    conn.write_all(hello.as_bytes()).unwrap();
    let mut read = String::new();
    let mut until = |conn: &mut TcpStream, marker: &str| {
        let mut chunk = [0u8; 4096];
        while !read.contains(marker) {
            let n = conn.read(&mut chunk).unwrap_or(0);
            assert!(n > 0, "no {marker:?} from nats-server; read {read:?}");
            read.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    };
    until(&mut conn, "PONG");
    let asked = Instant::now();
    conn.write_all(b"PUB chat.live.x _INBOX.t.q 1\r\n\x05\r\n")
        .unwrap();
    until(&mut conn, "HMSG _INBOX.t.q");
    until(&mut conn, "NATS/1.0 503");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
}

fn until_received(from: &mut Client, message: &Value, to: &mut Client, kind: &str) -> Value {
    for _ in 0..50 {
        from.send(message);
        if let Some(frame) = to.recv_within(Duration::from_millis(100)) {
            assert_eq!(frame["type"], kind, "{frame}");
            return frame;
        }
    }
    panic!("no {kind} across nodes within 5 s");
}

#[test]
fn typing_reaches_the_receivers_devices_on_every_node_once() {
    with_nats("typing_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let mut bob_on_b = b.login("bob", "phone");
        let typing = json!({"type":"typing","receiverId":"bob","isTyping":true});
        let got = until_received(&mut alice, &typing, &mut bob_on_b, "typing");
        assert_eq!(got["senderId"], "alice");
        // A second device of bob, on the sender's node: each device gets each event once.
        let mut bob_on_a = a.login("bob", "laptop");
        let stop = json!({"type":"typing","receiverId":"bob","isTyping":false});
        alice.send(&stop);
        for device in [&mut bob_on_a, &mut bob_on_b] {
            let got = device.recv_type("typing");
            assert_eq!(got["isTyping"], false, "{got}");
            device.expect_silence(Duration::from_millis(300));
        }
    });
}

#[test]
fn a_call_reaches_another_node_and_nobody_anywhere_is_peer_offline() {
    with_nats("calls_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let mut bob = b.login("bob", "phone");
        // Typing first, until it arrives: then b is subscribed to bob's live events.
        let typing = json!({"type":"typing","receiverId":"bob","isTyping":true});
        until_received(&mut alice, &typing, &mut bob, "typing");
        let offer = json!({"type":"signal","receiverId":"bob","callId":"c-1","kind":"call:initiate",
                           "payload":{"sdp":"x"}});
        alice.send(&offer);
        let got = bob.recv_type("signal");
        assert_eq!(
            (&got["senderId"], &got["callId"]),
            (&json!("alice"), &json!("c-1"))
        );
        // The caller hears nothing back while a node took the call.
        alice.expect_silence(Duration::from_millis(300));
        // Nobody has carol: the caller hears peer_offline, once every node said so.
        let to_carol = json!({"type":"signal","receiverId":"carol","callId":"c-2",
                              "kind":"call:initiate","payload":{}});
        alice.send(&to_carol);
        let error = alice.recv_type("error");
        assert_eq!(
            (&error["code"], &error["ref"]),
            (&json!("peer_offline"), &json!("c-2"))
        );
        // Bob gone from b: b no longer takes his calls.
        drop(bob);
        b.wait_offline("bob");
        let started = Instant::now();
        loop {
            alice.send(&offer);
            match alice.recv_within(Duration::from_millis(200)) {
                Some(error) if error["code"] == "peer_offline" => break,
                other => assert!(other.is_none(), "{other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "bob still reachable"
            );
        }
    });
}

#[test]
fn while_nats_is_away_a_call_is_cluster_unavailable_and_after_it_rings_again() {
    with_nats("calls_while_nats_is_away", |mut nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let mut bob = b.login("bob", "phone");
        let typing = json!({"type":"typing","receiverId":"bob","isTyping":true});
        until_received(&mut alice, &typing, &mut bob, "typing");
        nats.kill();
        let call = json!({"type":"signal","receiverId":"bob","callId":"c-9","kind":"call:initiate",
                          "payload":{}});
        let started = Instant::now();
        loop {
            alice.send(&call);
            if let Some(error) = alice.recv_within(Duration::from_millis(200)) {
                assert_eq!(error["code"], "cluster_unavailable", "{error}");
                assert_eq!(error["ref"], "c-9");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no cluster_unavailable"
            );
        }
        // Not ready while NATS is away: its relay, at least, knows.
        assert_eq!(cluster(&a)["connected"], false);
        assert_eq!(a.get("/health/ready").0, 503);
        assert!(a.errors_counted("cluster_unavailable") >= 1);
        // A group join needs the cluster too (its members are in JetStream): it is
        // refused the same way, and nothing changes.
        alice.send(&json!({"type": "group_join", "groupId": "team"}));
        let refused = alice.recv_type("error");
        assert_eq!(
            (&refused["code"], &refused["ref"]),
            (&json!("cluster_unavailable"), &json!("team"))
        );
        // NATS back: both relays reconnect and subscribe again; bob's phone rings.
        nats.restart().expect("nats-server restarts");
        let frame = until_received(&mut alice, &typing, &mut bob, "typing");
        assert_eq!(frame["senderId"], "alice");
        alice.send(&call);
        assert_eq!(bob.recv_type("signal")["callId"], "c-9");
    });
}

#[test]
fn stats_with_scope_cluster_has_every_node_and_their_sum() {
    with_nats("stats_scope_cluster", |nats| {
        let (a, b) = two_nodes(&nats);
        wait_for_nodes(&b, 2, Duration::from_secs(10));
        let _alice = a.login("alice", "phone");
        let (_bob, _carol) = (b.login("bob", "phone"), b.login("carol", "phone"));
        let (status, body) = a.get("/api/stats?scope=cluster");
        assert_eq!(status, 200, "{body}");
        let stats: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(stats["scope"], "cluster");
        assert_eq!(
            (&stats["nodes_answered"], &stats["nodes_known"]),
            (&json!(2), &json!(2))
        );
        assert_eq!(stats["total"]["online_users"], 3, "{stats}");
        let mut ids: Vec<&str> = stats["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b"]);
        // Without scope, or scope=node: this node alone, as before.
        let (_, local) = a.get("/api/stats?scope=node");
        let local: Value = serde_json::from_str(&local).unwrap();
        assert_eq!(local["online_users"], 1, "{local}");
        assert_eq!(a.get("/api/stats?scope=everything").0, 400);
    });
}

#[test]
fn stats_with_scope_cluster_on_a_node_alone_is_a_clear_400() {
    let alone = Server::start(Driver::IoUring, &[]);
    let (status, body) = alone.get("/api/stats?scope=cluster");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--cluster"), "{body}");
}

#[test]
fn a_call_nats_never_answers_is_cluster_unavailable() {
    with_nats("a_call_nats_never_answers", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut alice = a.login("alice", "phone");
        let mut bob = b.login("bob", "phone");
        let typing = json!({"type":"typing","receiverId":"bob","isTyping":true});
        until_received(&mut alice, &typing, &mut bob, "typing");
        // Frozen, not gone: the sockets stay open and nothing answers.
        nats.freeze();
        let call = json!({"type":"signal","receiverId":"bob","callId":"c-5","kind":"call:initiate",
                          "payload":{}});
        alice.send(&call);
        let error = alice.recv_type("error");
        nats.thaw();
        assert_eq!(
            (&error["code"], &error["ref"]),
            (&json!("cluster_unavailable"), &json!("c-5"))
        );
    });
}

/// Subscribes `watcher` to `user`'s presence and returns the status in its
/// `presence_state`.
fn watch(watcher: &mut Client, user: &str) -> String {
    watcher.send(&json!({"type":"presence_subscribe","userIds":[user]}));
    let state = watcher.recv_type("presence_state");
    state["users"][0]["status"].as_str().unwrap().to_owned()
}

/// The next `presence_update` `watcher` gets within `bound`: `(status, timestamp)`.
fn next_presence(watcher: &mut Client, bound: Duration) -> (String, u64) {
    let started = Instant::now();
    while started.elapsed() < bound {
        if let Some(frame) = watcher.recv_within(Duration::from_millis(100)) {
            assert_eq!(frame["type"], "presence_update", "{frame}");
            let status = frame["status"].as_str().unwrap().to_owned();
            return (status, frame["timestamp"].as_u64().unwrap());
        }
    }
    panic!("no presence_update within {bound:?}");
}

#[test]
fn a_user_is_online_while_any_node_holds_a_device_and_offline_when_none_does() {
    with_nats("presence_across_nodes", |nats| {
        let (a, b) = two_nodes(&nats);
        let mut on_a = a.login("watcher", "phone");
        assert_eq!(watch(&mut on_a, "bob"), "offline");
        // Bob's first device anywhere: the watcher on the other node sees him online.
        let bob_on_b = b.login("bob", "phone");
        assert_eq!(next_presence(&mut on_a, Duration::from_secs(5)).0, "online");
        // A watcher that starts later, on the node without bob, asks the others.
        let mut on_a_later = a.login("watcher2", "phone");
        assert_eq!(watch(&mut on_a_later, "bob"), "online");
        // A second device on a, then the one on b goes: bob is still online.
        let bob_on_a = a.login("bob", "laptop");
        drop(bob_on_b);
        on_a.expect_silence(Duration::from_millis(500));
        let mut on_b = b.login("watcher3", "phone");
        assert_eq!(watch(&mut on_b, "bob"), "online", "held by a");
        // The last device anywhere: offline on both nodes, once.
        drop(bob_on_a);
        for watcher in [&mut on_a, &mut on_a_later, &mut on_b] {
            assert_eq!(next_presence(watcher, Duration::from_secs(5)).0, "offline");
            watcher.expect_silence(Duration::from_millis(300));
        }
    });
}

#[test]
fn a_dead_nodes_users_go_offline_within_15_s() {
    with_nats("presence_after_node_death", |nats| {
        let (a, mut b) = two_nodes(&nats);
        let _bob = b.login("bob", "phone");
        let mut watcher = a.login("watcher", "phone");
        let started = Instant::now();
        while watch(&mut watcher, "bob") != "online" {
            assert!(started.elapsed() < Duration::from_secs(5), "bob not seen");
            watcher.send(&json!({"type":"presence_unsubscribe","userIds":["bob"]}));
            std::thread::sleep(Duration::from_millis(50));
        }
        b.child.kill().unwrap();
        b.child.wait().unwrap();
        let killed = Instant::now();
        let (status, _) = next_presence(&mut watcher, DEATH_BOUND);
        assert_eq!(status, "offline");
        assert!(killed.elapsed() < DEATH_BOUND, "{:?}", killed.elapsed());
        // Nothing of the dead node is left: a new watcher sees bob offline.
        let mut later = a.login("watcher2", "phone");
        assert_eq!(watch(&mut later, "bob"), "offline");
    });
}

#[test]
fn in_its_grace_a_user_held_by_another_node_stays_online_and_calls_are_peer_offline() {
    with_nats("presence_grace_across_nodes", |nats| {
        let a = node(&nats.url(), "a");
        let args = ["--cluster", &nats.url(), "--node-id", "b"];
        let b = Server::start(
            Driver::IoUring,
            &[&args[..], &["--presence-grace-ms", "1500"]].concat(),
        );
        wait_for_nodes(&a, 2, Duration::from_secs(10));
        let mut alice = a.login("alice", "phone");
        let mut bob = b.login("bob", "phone");
        let typing = json!({"type":"typing","receiverId":"bob","isTyping":true});
        until_received(&mut alice, &typing, &mut bob, "typing");
        assert_eq!(watch(&mut alice, "bob"), "online");
        // Dropped without a close frame: online through the grace, offline after it.
        let dropped = Instant::now();
        drop(bob);
        // Meanwhile b holds bob with no device to ring: the call is peer_offline.
        std::thread::sleep(Duration::from_millis(200));
        let call = json!({"type":"signal","receiverId":"bob","callId":"c-7",
                          "kind":"call:initiate","payload":{}});
        alice.send(&call);
        let error = alice.recv_type("error");
        assert_eq!(
            (&error["code"], &error["ref"]),
            (&json!("peer_offline"), &json!("c-7"))
        );
        // And a message is queued, as on one node: no device of bob is online.
        assert_eq!(alice.send_chat("m-1", "bob", "later")["status"], "queued");
        let (status, _) = next_presence(&mut alice, Duration::from_secs(5));
        assert_eq!(status, "offline");
        let after = dropped.elapsed();
        assert!(
            after >= Duration::from_millis(1400),
            "offline after {after:?}"
        );
    });
}

#[test]
fn nodes_prove_themselves_with_the_urls_credentials_and_a_wrong_password_never_joins() {
    let nats = match Nats::start_with_flags(&["--user", "chat", "--pass", "s3cret"]) {
        Ok(nats) => nats,
        Err(why) => return common::nats::skip("nats_credentials", &why),
    };
    let url = |pass: &str| format!("nats://chat:{pass}@127.0.0.1:{}", nats.port);
    let (a, b) = (node(&url("s3cret"), "a"), node(&url("s3cret"), "b"));
    wait_for_nodes(&a, 2, Duration::from_secs(10));
    // Both connections of each node are let in: a message crosses through JetStream.
    let mut bob = b.login("bob", "phone");
    let mut alice = a.login("alice", "phone");
    alice.send_chat("m-1", "bob", "let in");
    assert_eq!(bob.recv_type("new_message")["content"], "let in");
    let wrong = node(&url("guess"), "c");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(wrong.get("/health/ready").0, 503);
    assert_eq!(cluster(&wrong)["connected"], false);
    assert_eq!(cluster(&a)["nodes"], 2);
}

/// Runs `body` with test certificates and a nats-server that speaks only TLS with their
/// server certificate (verifying clients against their authority if `verify_clients`),
/// or skips the test without `openssl` or nats-server.
fn with_nats_over_tls(
    test: &str,
    verify_clients: bool,
    body: impl FnOnce(&common::certs::TestCerts, &Nats),
) {
    let certs = match common::certs::TestCerts::make(test) {
        Ok(certs) => certs,
        Err(why) => return skip(test, &why),
    };
    let (cert, key, ca) = (
        certs.path("server.pem"),
        certs.path("server.key"),
        certs.path("ca.pem"),
    );
    let mut flags = vec!["--tls", "--tlscert", &cert, "--tlskey", &key];
    if verify_clients {
        flags.extend(["--tlsverify", "--tlscacert", &ca]);
    }
    match Nats::start_with_flags(&flags) {
        Ok(nats) => body(&certs, &nats),
        Err(why) => skip(test, &why),
    }
}

#[test]
fn nodes_reach_nats_over_tls_trusting_the_authority_given_and_no_other() {
    with_nats_over_tls("nats_over_tls", false, |certs, nats| {
        let ca = certs.path("ca.pem");
        let tls_url = format!("tls://127.0.0.1:{}", nats.port);
        // One node asks for TLS by its URL; the other is told to by the server's INFO.
        let a = common::nats::node_with(&tls_url, "a", &["--cluster-ca", &ca]);
        let b = common::nats::node_with(&nats.url(), "b", &["--cluster-ca", &ca]);
        wait_for_nodes(&a, 2, Duration::from_secs(10));
        // Both connections of each node are up: a message crosses through JetStream.
        let mut bob = b.login("bob", "phone");
        let mut alice = a.login("alice", "phone");
        assert_eq!(alice.send_chat("m-1", "bob", "sealed")["status"], "sent");
        assert_eq!(bob.recv_type("new_message")["content"], "sealed");
        // A node that trusts only the system's authorities never joins.
        let untrusting = node(&tls_url, "c");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(untrusting.get("/health/ready").0, 503);
        assert_eq!(cluster(&untrusting)["connected"], false);
        assert_eq!(cluster(&a)["nodes"], 2);
    });
}

#[test]
fn a_nats_server_that_verifies_clients_lets_in_only_a_node_with_a_certificate() {
    with_nats_over_tls("nats_verifies_clients", true, |certs, nats| {
        let ca = certs.path("ca.pem");
        let url = format!("tls://127.0.0.1:{}", nats.port);
        let (cert, key) = (certs.path("client.pem"), certs.path("client.key"));
        let flags = [
            "--cluster-ca",
            &ca,
            "--cluster-cert",
            &cert,
            "--cluster-key",
            &key,
        ];
        let proven = common::nats::node_with(&url, "a", &flags);
        wait_for_nodes(&proven, 1, Duration::from_secs(10));
        assert_eq!(proven.get("/health/ready").0, 200);
        let unproven = common::nats::node_with(&url, "b", &["--cluster-ca", &ca]);
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(unproven.get("/health/ready").0, 503);
        assert_eq!(cluster(&proven)["nodes"], 1);
    });
}
