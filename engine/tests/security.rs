//! Issue 22's findings against the real engine, each reproduced as an attacker would try
//! it: what an open gateway off loopback does, request smuggling through `Content-Length`,
//! cross-site calls from other web pages.

mod common;

use common::{fresh_data_dir, split_response, Server};

/// A WebSocket upgrade request, with any extra header lines.
fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// The status line's code of the first response on a fresh connection to `server`.
fn first_status(server: &Server, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[test]
fn an_open_gateway_off_loopback_refuses_to_start_unless_allowed() {
    let data = fresh_data_dir();
    let start = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["--listen", "0.0.0.0:0", "--data-dir"])
            .arg(&*data)
            .args(args)
            .env_remove("ENGINE_JWT_SECRET")
            .env_remove("ENGINE_API_TOKEN")
            .env_remove("ENGINE_ALLOW_OPEN")
            .output()
            .unwrap()
    };
    let output = start(&[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for flag in ["--jwt-secret", "--api-token", "--allow-open"] {
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    // The API token alone still leaves open mode: refused, naming only the JWT secret.
    let output = start(&["--api-token", "t0ken"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--jwt-secret"), "{stderr}");
    assert!(!stderr.contains("--api-token"), "{stderr}");

    // Meant: it serves, on every address.
    let server = Server::start(
        common::Driver::IoUring,
        &["--listen", "0.0.0.0:0", "--allow-open"],
    );
    assert_eq!(server.get("/health/live").0, 200);
    let secured = Server::start(
        common::Driver::IoUring,
        &[
            "--listen",
            "0.0.0.0:0",
            "--jwt-secret",
            tokens::SECRET,
            "--api-token",
            "t",
        ],
    );
    assert_eq!(secured.get("/health/live").0, 200);
}

#[test]
fn two_content_lengths_are_refused_and_the_connection_closed() {
    let server = Server::start(common::Driver::IoUring, &[]);
    // Read with CL: 0 the body would be a second request; a lenient proxy that read the
    // second header would have forwarded it as one body.
    let smuggled = "GET /api/stats HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for lengths in [
        format!("Content-Length: 0\r\nContent-Length: {}", smuggled.len()),
        format!("Content-Length: +{}", smuggled.len()),
    ] {
        let raw = format!(
            "POST /api/messages/send HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             {lengths}\r\n\r\n{smuggled}"
        );
        let response = server.http(&raw);
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "one answer, then closed: {response}"
        );
        let (status, body) = split_response(&response);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("Content-Length"), "{body}");
    }
}

#[test]
fn a_foreign_page_cannot_post_to_the_api_as_a_simple_request() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let _bob = server.login("bob", "phone");
    // What a page on any site may send without a CORS preflight.
    let body = r#"{"sender_id":"mallory","receiver_id":"bob","text":"hi"}"#;
    let form = ["Content-Type: text/plain", "Origin: https://evil.example"];
    let (status, answer) = server.request("POST", "/api/messages/send", &form, body);
    assert_eq!(status, 415, "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    let (status, answer) = server.request("POST", "/api/messages/send", &[], body);
    assert_eq!(status, 202, "{answer}");
}

#[test]
fn allowed_origins_refuse_other_pages_upgrades_and_api_calls() {
    let server = Server::start(
        common::Driver::IoUring,
        &[
            "--allowed-origins",
            "https://chat.example,http://localhost:3000",
        ],
    );
    assert_eq!(
        first_status(
            &server,
            &upgrade_request("Origin: https://evil.example\r\n")
        ),
        403
    );
    assert_eq!(
        first_status(&server, &upgrade_request("Origin: null\r\n")),
        403
    );
    assert_eq!(
        first_status(
            &server,
            &upgrade_request("Origin: https://chat.example\r\n")
        ),
        101
    );
    assert_eq!(
        first_status(&server, &upgrade_request("")),
        101,
        "no Origin: not a page"
    );
    let body = r#"{"sender_id":"a","receiver_id":"b","text":"hi"}"#;
    let (status, answer) = server.request(
        "POST",
        "/api/messages/send",
        &["Origin: https://evil.example"],
        body,
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("forbidden_origin"), "{answer}");
    let (status, answer) = server.request(
        "POST",
        "/api/messages/send",
        &["Origin: http://localhost:3000"],
        body,
    );
    assert_eq!(status, 202, "{answer}");
    let refused = server.counter_sum("engine_handshake_failures_total");
    assert_eq!(refused, 2, "refused upgrades are counted");
}

#[test]
fn one_id_rule_for_the_websocket_and_the_api() {
    let server = Server::start(common::Driver::IoUring, &[]);
    // The API used to take 256-byte ids where the WebSocket takes 128: a queue for a user
    // who can never log in.
    let long = "u".repeat(129);
    for receiver in [
        long.as_str(),
        "bob\nINFO forged",
        "\u{202E}nimda",
        "ad\u{200B}min",
    ] {
        let body = serde_json::json!({"sender_id": "ops", "receiver_id": receiver, "text": "hi"});
        let (status, answer) = server.request("POST", "/api/messages/send", &[], &body.to_string());
        assert_eq!(status, 400, "{receiver:?}: {answer}");
        assert!(answer.contains("receiver_id"), "{answer}");
    }
    let (status, answer) = server.get("/api/messages/queue/bob%0Aforged");
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = server.get("/api/messages/queue/caf%C3%A9");
    assert_eq!(status, 200, "percent-encoded UTF-8 is a user id: {answer}");

    let mut alice = server.login("alice", "phone");
    alice.send(
        &serde_json::json!({"type": "send_message", "messageId": "m1",
                                   "receiverId": "bob\u{202E}", "content": "hi"}),
    );
    let error = alice.recv_type("error");
    assert_eq!(error["code"], "bad_request", "{error}");
    assert_eq!(error["ref"], "m1", "{error}");
}

#[test]
fn any_fault_in_auth_fails_it_and_closes_with_1008() {
    let server = Server::start(common::Driver::IoUring, &[]);
    for auth in [
        serde_json::json!({"type": "auth", "userId": "\u{202E}nimda", "deviceId": "d"}),
        serde_json::json!({"type": "auth", "userId": "", "deviceId": "d"}),
        serde_json::json!({"type": "auth", "deviceId": "d"}),
        serde_json::json!({"type": "auth", "userId": "u", "deviceId": "d", "resume": 7}),
    ] {
        let mut client = server.connect();
        client.send(&auth);
        let error = client.recv();
        assert_eq!(error["code"], "auth_failed", "{auth}: {error}");
        assert_eq!(client.expect_close(), 1008, "{auth}");
    }
}

/// Auth tokens as an identity provider would make them.
mod tokens {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// An HS256 secret of the least accepted length.
    pub const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// Unix seconds now, plus `secs`.
    pub fn in_secs(secs: i64) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        now + secs
    }

    /// An HS256 token with `claims`.
    pub fn hs256(claims: &serde_json::Value) -> String {
        engine::protocol::jwt::sign(&claims.to_string(), SECRET.as_bytes())
    }

    /// A P-256 signing key, with its public half as a PEM file's text.
    pub struct EcKey {
        pair: EcdsaKeyPair,
        rng: ring::rand::SystemRandom,
    }

    impl EcKey {
        pub fn generate() -> EcKey {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            EcKey { pair, rng }
        }

        /// `-----BEGIN PUBLIC KEY-----`: the SubjectPublicKeyInfo of the point.
        pub fn public_pem(&self) -> String {
            use base64::engine::general_purpose::STANDARD;
            let mut der = vec![
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06,
                0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
            ];
            der.extend_from_slice(self.pair.public_key().as_ref());
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                STANDARD.encode(der)
            )
        }

        /// An ES256 token with `claims`.
        pub fn sign(&self, claims: &serde_json::Value) -> String {
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{header}.{payload}");
            let signature = self.pair.sign(&self.rng, input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
        }
    }
}

/// Authenticates `user` with `token`: the first answer.
fn auth_with(server: &Server, user: &str, token: &str) -> (common::Client, serde_json::Value) {
    let mut client = server.connect();
    client.send(
        &serde_json::json!({"type": "auth", "userId": user, "deviceId": "d",
                                    "token": token}),
    );
    let answer = client.recv();
    (client, answer)
}

#[test]
fn weak_jwt_secrets_stop_start_up() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--jwt-secret", "secret"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--jwt-secret") && stderr.contains("32 bytes"),
        "{stderr}"
    );
}

#[test]
fn tokens_need_exp_unless_relaxed_and_nbf_is_honoured() {
    use serde_json::json;
    let server = Server::start(common::Driver::IoUring, &["--jwt-secret", tokens::SECRET]);
    let forever = tokens::hs256(&json!({"sub": "alice"}));
    let (mut client, answer) = auth_with(&server, "alice", &forever);
    assert_eq!(answer["code"], "auth_failed", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("exp"),
        "{answer}"
    );
    assert_eq!(client.expect_close(), 1008);
    let early = tokens::hs256(&json!({"sub": "alice", "exp": tokens::in_secs(600),
                                      "nbf": tokens::in_secs(300)}));
    let (_, answer) = auth_with(&server, "alice", &early);
    assert_eq!(answer["code"], "auth_failed", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("nbf"),
        "{answer}"
    );

    let relaxed = Server::start(
        common::Driver::IoUring,
        &["--jwt-secret", tokens::SECRET, "--jwt-exp-optional"],
    );
    let (_, answer) = auth_with(&relaxed, "alice", &forever);
    assert_eq!(answer["type"], "auth_success", "{answer}");
}

#[test]
fn es256_and_rs256_tokens_check_against_a_key_file_or_a_jwks() {
    use serde_json::json;
    let dir = fresh_data_dir();
    std::fs::create_dir_all(&*dir).unwrap();
    let ec = tokens::EcKey::generate();
    let pem = dir.join("ec.pem");
    std::fs::write(&pem, ec.public_pem()).unwrap();
    let testdata = concat!(env!("CARGO_MANIFEST_DIR"), "/src/protocol/jwt/testdata");
    let jwks = format!("{testdata}/jwks.json");
    let server = Server::start(
        common::Driver::IoUring,
        &[
            "--jwt-public-key",
            pem.to_str().unwrap(),
            "--jwt-jwks",
            &jwks,
        ],
    );
    let token = ec.sign(&json!({"sub": "alice", "exp": tokens::in_secs(600)}));
    let (_, answer) = auth_with(&server, "alice", &token);
    assert_eq!(answer["type"], "auth_success", "{answer}");
    // The jwks' RSA key, kid rsa-1, signed this one for u1 until 2100.
    let rs256 = include_str!("../src/protocol/jwt/testdata/rs256-u1.jwt").trim();
    let (_, answer) = auth_with(&server, "u1", rs256);
    assert_eq!(answer["type"], "auth_success", "{answer}");
    // Another key's ES256 token, and an HS256 one where no secret is set.
    let stranger =
        tokens::EcKey::generate().sign(&json!({"sub": "alice", "exp": tokens::in_secs(600)}));
    let (_, answer) = auth_with(&server, "alice", &stranger);
    assert_eq!(answer["code"], "auth_failed", "{answer}");
    let hs = tokens::hs256(&json!({"sub": "alice", "exp": tokens::in_secs(600)}));
    let (_, answer) = auth_with(&server, "alice", &hs);
    assert_eq!(answer["code"], "auth_failed", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("RS256, ES256"),
        "{answer}"
    );
}

#[test]
fn a_session_ends_with_4005_when_its_token_expires_unless_refreshed() {
    use serde_json::json;
    let server = Server::start(common::Driver::IoUring, &["--jwt-secret", tokens::SECRET]);
    let short = |user: &str| tokens::hs256(&json!({"sub": user, "exp": tokens::in_secs(2)}));
    let (mut lapsing, answer) = auth_with(&server, "alice", &short("alice"));
    assert_eq!(answer["type"], "auth_success", "{answer}");
    let (mut refreshed, answer) = auth_with(&server, "bob", &short("bob"));
    assert_eq!(answer["type"], "auth_success", "{answer}");
    let later = tokens::in_secs(3600);
    refreshed.send(&json!({"type": "auth_refresh",
                           "token": tokens::hs256(&json!({"sub": "bob", "exp": later}))}));
    let answer = refreshed.recv();
    assert_eq!(answer["type"], "auth_refreshed", "{answer}");
    assert_eq!(answer["expiresAt"], later * 1000, "{answer}");
    // The sweep sees each connection every 5 s: closed within 2 + 5 s (and a tick).
    let started = std::time::Instant::now();
    assert_eq!(lapsing.expect_close(), 4005);
    assert!(started.elapsed() < std::time::Duration::from_secs(9));
    refreshed.send(&json!({"type": "ping"}));
    assert_eq!(
        refreshed.recv_type("pong")["type"],
        "pong",
        "the refreshed session goes on"
    );
    assert_eq!(server.counter_sum("engine_sessions_expired_total"), 1);
    // A refresh for someone else fails the session.
    refreshed.send(&json!({"type": "auth_refresh",
                           "token": tokens::hs256(&json!({"sub": "mallory", "exp": later}))}));
    assert_eq!(refreshed.recv()["code"], "auth_failed");
    assert_eq!(refreshed.expect_close(), 1008);
}

#[test]
fn invite_only_groups_keep_strangers_out_and_roles_decide_who_administers() {
    use serde_json::json;
    let data = fresh_data_dir();
    let dir = data.to_str().unwrap().to_owned();
    let mut server = Server::start(common::Driver::IoUring, &["--data-dir", &dir]);
    let mut alice = server.login("alice", "d");
    let mut bob = server.login("bob", "d");
    let mut mallory = server.login("mallory", "d");
    let created =
        alice.group_request(json!({"type": "group_create", "groupId": "team", "access": "invite"}));
    assert_eq!(created["role"], "owner", "{created}");
    // The finding: anyone could join any group and read its posts.
    let refused = mallory.group_request(json!({"type": "group_join", "groupId": "team"}));
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["ref"], "team", "{refused}");
    let taken =
        mallory.group_request(json!({"type": "group_create", "groupId": "team", "access": "open"}));
    assert_eq!(taken["code"], "conflict", "{taken}");
    let added =
        alice.group_request(json!({"type": "group_add", "groupId": "team", "userId": "bob"}));
    assert_eq!(
        (added["userId"].as_str(), added["action"].as_str()),
        (Some("bob"), Some("joined"))
    );
    assert_eq!(
        bob.recv_type("group_member")["userId"],
        "bob",
        "the added user hears of it"
    );
    // A member is no admin; an admin names no admins and removes no owner.
    let refused =
        bob.group_request(json!({"type": "group_add", "groupId": "team", "userId": "mallory"}));
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let promoted = alice.group_request(
        json!({"type": "group_add", "groupId": "team", "userId": "bob", "role": "admin"}),
    );
    assert_eq!(promoted["role"], "admin", "{promoted}");
    assert_eq!(bob.recv_type("group_member")["role"], "admin");
    for (request, why) in [
        (
            json!({"type": "group_remove", "groupId": "team", "userId": "alice"}),
            "owner",
        ),
        (
            json!({"type": "group_add", "groupId": "team", "userId": "carol", "role": "admin"}),
            "admins",
        ),
    ] {
        let refused = bob.group_request(request);
        assert_eq!(refused["code"], "forbidden", "{why}: {refused}");
    }
    let added =
        bob.group_request(json!({"type": "group_add", "groupId": "team", "userId": "carol"}));
    assert_eq!(added["userId"], "carol", "{added}");
    // Posts reach members only; a stranger's post is refused.
    mallory.send(
        &json!({"type": "group_message", "messageId": "x", "groupId": "team",
                         "content": "let me in"}),
    );
    assert_eq!(mallory.recv_type("error")["code"], "not_member");
    bob.send(
        &json!({"type": "group_message", "messageId": "p1", "groupId": "team",
                     "content": "members only"}),
    );
    assert_eq!(alice.recv_type("new_message")["content"], "members only");
    mallory.expect_silence(std::time::Duration::from_millis(200));
    let removed =
        bob.group_request(json!({"type": "group_remove", "groupId": "team", "userId": "carol"}));
    assert_eq!(
        (removed["userId"].as_str(), removed["action"].as_str()),
        (Some("carol"), Some("left"))
    );

    // The settings are durable: after a restart the group is still invite-only.
    drop((alice, bob, mallory));
    assert_eq!(server.terminate(), Some(0));
    let server = Server::start(common::Driver::IoUring, &["--data-dir", &dir]);
    let mut mallory = server.login("mallory", "d");
    let refused = mallory.group_request(json!({"type": "group_join", "groupId": "team"}));
    assert_eq!(refused["code"], "forbidden", "after a restart: {refused}");
    let mut bob = server.login("bob", "d");
    let added =
        bob.group_request(json!({"type": "group_add", "groupId": "team", "userId": "mallory"}));
    assert_eq!(added["userId"], "mallory", "bob is still an admin: {added}");
}

#[test]
fn a_token_groups_claim_opens_an_invite_only_group() {
    use serde_json::json;
    let server = Server::start(common::Driver::IoUring, &["--jwt-secret", tokens::SECRET]);
    let exp = tokens::in_secs(600);
    let (mut owner, _) = auth_with(
        &server,
        "owner",
        &tokens::hs256(&json!({"sub": "owner", "exp": exp})),
    );
    let created = owner
        .group_request(json!({"type": "group_create", "groupId": "staff", "access": "invite"}));
    assert_eq!(created["role"], "owner", "{created}");
    let granted = tokens::hs256(&json!({"sub": "dave", "exp": exp, "groups": ["staff"]}));
    let (mut dave, answer) = auth_with(&server, "dave", &granted);
    assert_eq!(answer["type"], "auth_success", "{answer}");
    let joined = dave.group_request(json!({"type": "group_join", "groupId": "staff"}));
    assert_eq!(joined["action"], "joined", "{joined}");
    let plain = tokens::hs256(&json!({"sub": "erin", "exp": exp, "groups": ["other"]}));
    let (mut erin, _) = auth_with(&server, "erin", &plain);
    let refused = erin.group_request(json!({"type": "group_join", "groupId": "staff"}));
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[test]
fn with_shared_visibility_presence_is_shown_only_to_users_who_share_a_group() {
    use serde_json::json;
    let server = Server::start(
        common::Driver::IoUring,
        &["--presence-visibility", "shared"],
    );
    let mut alice = server.login("alice", "d");
    let _bob = server.login("bob", "d");
    let _stranger = server.login("stranger", "d");
    alice.join_group("team");
    let mut bob_second = server.login("bob", "tablet");
    bob_second.join_group("team");
    // The finding: anyone could watch anyone. A stranger online looks like anyone offline.
    alice.send(&json!({"type": "presence_subscribe", "userIds": ["bob", "stranger", "alice"]}));
    let state = alice.recv_type("presence_state");
    let status = |user: &str| {
        state["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["userId"] == user)
            .map(|u| (u["status"].clone(), u["lastSeen"].clone()))
            .unwrap()
    };
    assert_eq!(status("bob"), (json!("online"), json!(null)), "{state}");
    assert_eq!(status("alice"), (json!("online"), json!(null)), "{state}");
    assert_eq!(
        status("stranger"),
        (json!("offline"), json!(null)),
        "{state}"
    );
    // Not watched: the stranger going and coming says nothing.
    drop(_stranger);
    let _again = server.login("stranger", "d2");
    while let Some(frame) = alice.recv_within(std::time::Duration::from_millis(300)) {
        assert_ne!(frame["userId"], "stranger", "{frame}");
    }
    // Once they share no group, bob's next change reaches alice as a subscribe now
    // would show it (offline, never seen), and nothing after it does.
    alice.send(&json!({"type": "group_leave", "groupId": "team"}));
    alice.recv_type("group_member");
    drop(_bob);
    drop(bob_second);
    let hidden = alice.recv_type("presence_state");
    assert_eq!(hidden["users"][0]["userId"], "bob", "{hidden}");
    assert_eq!(hidden["users"][0]["status"], "offline", "{hidden}");
    assert!(
        hidden["users"][0]
            .get("lastSeen")
            .is_none_or(|v| v.is_null()),
        "{hidden}"
    );
    let _bob_again = server.login("bob", "d3");
    while let Some(frame) = alice.recv_within(std::time::Duration::from_millis(300)) {
        assert_ne!(frame["userId"], "bob", "{frame}");
    }
}

#[test]
fn forged_read_receipts_cannot_fill_a_senders_queue() {
    use serde_json::json;
    let server = Server::start(common::Driver::IoUring, &["--queue-max-per-user", "20"]);
    // The finding: read receipts naming any senderId were queued for that sender, and
    // 10,000 of them left the victim's queue full.
    let mut mallory = server.login("mallory", "d");
    for n in 0..40 {
        mallory.send(
            &json!({"type": "read_receipt", "messageId": format!("never-{n}"),
                             "senderId": "victim"}),
        );
        assert_eq!(mallory.recv_type("error")["code"], "not_found");
    }
    let mut friend = server.login("friend", "d");
    let ack = friend.send_chat("real", "victim", "are you there?");
    assert_eq!(ack["status"], "queued", "{ack}");
    let (status, queue) = server.get("/api/messages/queue/victim");
    assert_eq!(status, 200, "{queue}");
    let queue: serde_json::Value = serde_json::from_str(&queue).unwrap();
    assert_eq!(queue["messages"].as_array().unwrap().len(), 1, "{queue}");
}

#[test]
fn one_sender_cannot_fill_another_users_queue() {
    let server = Server::start(common::Driver::IoUring, &["--queue-max-per-sender", "5"]);
    let mut mallory = server.login("mallory", "d");
    let mut friend = server.login("friend", "d");
    let statuses: Vec<String> = (0..8)
        .map(|n| {
            let ack = mallory.send_chat(&format!("spam-{n}"), "victim", "spam");
            let status = ack["status"].as_str().unwrap().to_owned();
            match ack["reason"].as_str() {
                Some(reason) => format!("{status}:{reason}"),
                None => status,
            }
        })
        .collect();
    assert_eq!(
        statuses,
        [&["queued"; 5][..], &["rejected:sender_quota"; 3][..]].concat(),
    );
    assert_eq!(
        friend.send_chat("real", "victim", "hello")["status"],
        "queued"
    );
    // The victim connects and reads what waited; the counts start again.
    let mut victim = server.login("victim", "phone");
    for _ in 0..6 {
        victim.recv_type("new_message");
    }
    drop(victim);
    server.wait_offline("victim");
    let ack = mallory.send_chat("again", "victim", "spam");
    assert_eq!(ack["status"], "queued", "{ack}");
}

/// This host's address on an interface other than loopback (connections from it are
/// counted per address), if it has one.
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe
        .connect("192.0.2.1:9")
        .or_else(|_| probe.connect("10.255.255.1:9"))
        .ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A server on every address with `caps`, and where this host reaches it from an address
/// other than loopback (which is never counted); `None`, said, where there is none.
fn reached_from_another_address(caps: &[&str]) -> Option<(Server, std::net::SocketAddr)> {
    let Some(ip) = non_loopback_address() else {
        eprintln!("no address but loopback here (loopback is never counted): skipped");
        return None;
    };
    let args = [&["--listen", "0.0.0.0:0", "--allow-open"][..], caps].concat();
    let server = Server::start(common::Driver::IoUring, &args);
    let addr = std::net::SocketAddr::new(ip, server.addr.port());
    Some((server, addr))
}

/// Whether the server closed a fresh connection at once (it answers nothing, and reading
/// finds the end of the stream or a reset).
fn closed_at_once(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn one_address_holds_a_bounded_number_of_connections_before_auth() {
    let Some((server, addr)) = reached_from_another_address(&["--max-pending-per-ip", "3"]) else {
        return;
    };
    let mut held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Accepted in turn: wait until the third is, so the fourth meets the cap.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut fourth = std::net::TcpStream::connect(addr).unwrap();
    assert!(
        closed_at_once(&mut fourth),
        "the fourth pending connection is refused"
    );
    assert!(server.counter_sum("engine_refused_per_address_total") >= 1);
    // Loopback is not counted; and once one authenticates, its address has room again.
    let mut local = server.login("local", "d");
    local.send(&serde_json::json!({"type": "ping"}));
    local.recv_type("pong");
    use std::io::Write;
    let auth = br#"{"type":"auth","userId":"remote","deviceId":"d"}"#;
    let mut upgrade = upgrade_request("").into_bytes();
    upgrade.extend(common::raw_frame(0x81, auth));
    held[0].write_all(&upgrade).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut fifth = std::net::TcpStream::connect(addr).unwrap();
    assert!(!closed_at_once(&mut fifth), "room again after an auth");
}

#[test]
fn one_address_opens_a_bounded_number_of_connections_a_second() {
    let Some((_server, addr)) = reached_from_another_address(&["--connects-per-ip-per-sec", "5"])
    else {
        return;
    };
    // Within one second (the window is a wall-clock second: start at its beginning).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()),
    ));
    let mut streams: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let refused = streams
        .iter_mut()
        .map(closed_at_once)
        .filter(|closed| *closed)
        .count();
    assert_eq!(refused, 3, "5 of 8 taken in one second");
}

#[test]
fn before_auth_a_connection_holds_little() {
    let server = Server::start(common::Driver::IoUring, &[]);
    // The finding: before auth a connection could hold about 128 KiB for 10 s.
    let mut stranger = server.connect();
    stranger.send_text(&format!(
        r#"{{"type":"auth","userId":"u","pad":"{}"}}"#,
        "x".repeat(9000)
    ));
    assert_eq!(stranger.expect_close(), 1009);
    let mut fragmented = server.connect();
    fragmented.write_raw(&common::raw_frame(0x01, &[b' '; 6000]));
    fragmented.write_raw(&common::raw_frame(0x00, &[b' '; 6000]));
    assert_eq!(fragmented.expect_close(), 1009);
    // Once authenticated, --max-message-bytes (64 KiB) holds.
    let mut alice = server.login("alice", "d");
    let ack = alice.send_chat("big", "bob", &"y".repeat(20_000));
    assert_eq!(ack["status"], "queued", "{ack}");
}

#[test]
fn a_page_rebinding_its_domain_here_gets_nothing_open() {
    let server = Server::start(common::Driver::IoUring, &[]);
    // DNS rebinding: evil.example now resolves to this address, and its page's requests
    // are same-origin to it, so no CORS check stops them; they name evil.example.
    let rebound = upgrade_request("").replace("Host: localhost", "Host: evil.example:8080");
    assert_eq!(first_status(&server, &rebound), 403);
    let body = r#"{"sender_id":"a","receiver_id":"b","text":"hi"}"#;
    let raw = format!(
        "POST /api/messages/send HTTP/1.1\r\nHost: evil.example:8080\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = split_response(&server.http(&raw));
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("forbidden_host"), "{answer}");
    assert_eq!(
        first_status(&server, &upgrade_request("")),
        101,
        "localhost"
    );
    // Tokens close what the rebinding would reach: then any host name is served; and so
    // does --allow-open, which says open is meant for whoever reaches it.
    let guarded = Server::start(
        common::Driver::IoUring,
        &["--jwt-secret", tokens::SECRET, "--api-token", "t"],
    );
    assert_eq!(first_status(&guarded, &rebound), 101);
    let meant = Server::start(common::Driver::IoUring, &["--allow-open"]);
    assert_eq!(first_status(&meant, &rebound), 101);
}
