//! TLS on the gateway's port (`--tls-cert`, `--tls-key`): chat, the API and `/metrics`
//! over TLS with ECDSA and RSA certificates, ALPN, records cut across reads and writes,
//! key updates, a certificate reloaded on SIGHUP, and what is not TLS refused.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{certs::TestCerts, tls_client, Driver, Server, DRIVERS, WAIT};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

/// Test certificates made by `openssl`; without it the test says so and passes (under CI
/// it fails).
fn certs(name: &str) -> Option<TestCerts> {
    match TestCerts::make(name) {
        Ok(certs) => Some(certs),
        Err(why) => {
            common::nats::skip(name, &why);
            None
        }
    }
}

/// An engine serving TLS with `certs`' certificate `which` (`server` or `server-rsa`).
fn tls_server(driver: Driver, certs: &TestCerts, which: &str, args: &[&str]) -> Server {
    let (cert, key) = (
        certs.path(&format!("{which}.pem")),
        certs.path(&format!("{which}.key")),
    );
    let mut all = vec!["--tls-cert", &cert, "--tls-key", &key];
    all.extend_from_slice(args);
    Server::start(driver, &all).speaking_tls(&certs.path("ca.pem"))
}

/// A TLS connection to `server` made with `config`, its handshake done.
fn handshake(
    server: &Server,
    config: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(server.addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The DER of the first certificate in the PEM file `path`.
fn der_of(path: &str) -> Vec<u8> {
    let mut certs = CertificateDer::pem_file_iter(path).unwrap();
    certs.next().unwrap().unwrap().to_vec()
}

#[test]
fn chat_and_the_api_work_over_tls_with_ecdsa_and_rsa_certificates() {
    let Some(certs) = certs("tls-chat") else {
        return;
    };
    for driver in DRIVERS {
        for which in ["server", "server-rsa"] {
            let server = tls_server(driver, &certs, which, &["--max-message-bytes", "200000"]);
            let served = handshake(&server, tls_client(&certs.path("ca.pem"))).unwrap();
            let chain = served.conn.peer_certificates().unwrap();
            assert_eq!(
                chain[0].as_ref(),
                der_of(&certs.path(&format!("{which}.pem")))
            );
            let mut alice = server.login("alice", "a");
            let mut bob = server.login("bob", "b");
            let ack = alice.send_chat("m1", "bob", "hello over TLS");
            assert_eq!(ack["type"], "message_ack", "{ack}");
            assert_eq!(bob.next_message().0, "hello over TLS");
            // Bigger than a record both ways: sealed as many, opened across reads.
            let big = "x".repeat(150_000);
            alice.send_chat("m2", "bob", &big);
            assert_eq!(bob.next_message().0, big, "{driver:?} {which}");
            let (status, body) = server.get("/health");
            assert_eq!(status, 200, "{body}");
            let sent =
                serde_json::json!({"sender_id": "api", "receiver_id": "bob", "text": "via https"});
            let (status, body) =
                server.request("POST", "/api/messages/send", &[], &sent.to_string());
            assert!(status < 300, "{status} {body}");
            assert_eq!(bob.next_message().0, "via https");
            assert!(server.counter_sum("engine_tls_handshakes_total") >= 5);
            assert_eq!(server.counter_sum("engine_tls_failures_total"), 0);
        }
    }
}

#[test]
fn alpn_is_http_1_1_and_other_protocols_are_refused() {
    let Some(certs) = certs("tls-alpn") else {
        return;
    };
    let server = tls_server(Driver::IoUring, &certs, "server", &[]);
    let with_alpn = |protocols: &[&[u8]]| {
        let mut config = (*tls_client(&certs.path("ca.pem"))).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    let stream = handshake(&server, with_alpn(&[b"h2", b"http/1.1"])).unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(handshake(&server, with_alpn(&[b"h2"])).is_err());
    // No ALPN at all is fine (most WebSocket clients send none).
    assert!(handshake(&server, with_alpn(&[])).is_ok());
}

#[test]
fn plaintext_garbage_and_forged_records_are_closed_and_counted() {
    let Some(certs) = certs("tls-bad") else {
        return;
    };
    let server = tls_server(Driver::IoUring, &certs, "server", &[]);
    // Plain HTTP on the TLS port: no HTTP answer, the connection closed.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    plain
        .read_to_end(&mut answer)
        .expect("closed, not timed out");
    assert!(!answer.starts_with(b"HTTP"), "{answer:?}");
    // A record that does not authenticate, after a good handshake.
    let mut stream = handshake(&server, tls_client(&certs.path("ca.pem"))).unwrap();
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend_from_slice(&[0x5a; 40]);
    stream.sock.write_all(&forged).unwrap();
    let mut rest = Vec::new();
    let _ = stream.sock.read_to_end(&mut rest);
    // A header no TLS 1.3 record has (a length over the limit).
    let mut stream = handshake(&server, tls_client(&certs.path("ca.pem"))).unwrap();
    stream.sock.write_all(&[23, 3, 3, 0xff, 0xff]).unwrap();
    let _ = stream.sock.read_to_end(&mut rest);
    assert_eq!(server.counter_sum("engine_tls_failures_total"), 3);
    // The gateway is none the worse.
    let mut alice = server.login("alice", "a");
    assert_eq!(
        alice.send_chat("m1", "alice", "still here")["type"],
        "message_ack"
    );
}

#[test]
fn a_slow_reader_over_tls_gets_every_frame_in_order() {
    let Some(certs) = certs("tls-slow") else {
        return;
    };
    for driver in DRIVERS {
        let server = tls_server(
            driver,
            &certs,
            "server",
            &["--message-pace", "0", "--outbound-bytes-max", "67108864"],
        );
        let mut alice = server.login("alice", "a");
        let mut bob = server.login("bob", "b");
        // Far more than the socket buffers hold while bob reads nothing: the engine's
        // sealed output waits in bob's queue, cut wherever the kernel stopped taking it.
        let count = 600;
        let body = "y".repeat(10_000);
        for i in 0..count {
            alice.send(
                &serde_json::json!({"type": "send_message", "messageId": format!("m{i}"),
                                           "receiverId": "bob", "content": format!("{i} {body}")}),
            );
        }
        for _ in 0..count {
            alice.recv_type("message_ack");
        }
        for i in 0..count {
            let (content, _) = bob.next_message();
            assert!(content.starts_with(&format!("{i} ")), "{driver:?}: {i}");
        }
    }
}

#[test]
fn the_engine_follows_a_clients_key_updates() {
    let Some(certs) = certs("tls-keyupdate") else {
        return;
    };
    let server = tls_server(Driver::IoUring, &certs, "server", &[]);
    let mut alice = server.login("alice", "a");
    let mut bob = server.login("bob", "b");
    for round in 0..3 {
        let tungstenite::stream::MaybeTlsStream::Rustls(stream) = alice.ws.get_mut() else {
            panic!("a TLS stream");
        };
        // rustls asks for the engine's update too, so both directions move on.
        stream.conn.refresh_traffic_keys().unwrap();
        let id = format!("m{round}");
        let ack = alice.send_chat(&id, "bob", &format!("round {round}"));
        assert_eq!(ack["type"], "message_ack");
        assert_eq!(bob.next_message().0, format!("round {round}"));
    }
    assert_eq!(server.counter_sum("engine_tls_failures_total"), 0);
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_served_one() {
    let Some(certs) = certs("tls-reload") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let install = |which: &str| {
        std::fs::copy(certs.path(&format!("{which}.pem")), &cert).unwrap();
        std::fs::copy(certs.path(&format!("{which}.key")), &key).unwrap();
    };
    install("server");
    let (cert_arg, key_arg) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = Server::start(
        Driver::IoUring,
        &["--tls-cert", cert_arg, "--tls-key", key_arg],
    )
    .speaking_tls(&certs.path("ca.pem"));
    let served = || {
        let stream = handshake(&server, tls_client(&certs.path("ca.pem"))).unwrap();
        stream.conn.peer_certificates().unwrap()[0].to_vec()
    };
    let ecdsa = der_of(&certs.path("server.pem"));
    let rsa = der_of(&certs.path("server-rsa.pem"));
    assert_eq!(served(), ecdsa);
    let mut alice = server.login("alice", "a");
    let hup = |server: &Server| {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    };
    install("server-rsa");
    hup(&server);
    let deadline = Instant::now() + WAIT;
    while served() != rsa {
        assert!(
            Instant::now() < deadline,
            "the new certificate is never served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // An open connection keeps its session.
    assert_eq!(
        alice.send_chat("m1", "alice", "after reload")["type"],
        "message_ack"
    );
    // A file that does not parse: the engine says so and serves the last good one.
    std::fs::write(&cert, "not a certificate").unwrap();
    hup(&server);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served(), rsa);
    assert_eq!(server.get("/health").0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tls_files_stop_start_up() {
    let Some(certs) = certs("tls-flags") else {
        return;
    };
    let data = common::fresh_data_dir();
    let start = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&*data)
            .args(args)
            .output()
            .unwrap()
    };
    let (ec_cert, ec_key) = (certs.path("server.pem"), certs.path("server.key"));
    let rsa_key = certs.path("server-rsa.key");
    let cases: [(&[&str], &str); 4] = [
        (&["--tls-cert", &ec_cert], "--tls-key"),
        (&["--tls-key", &ec_key], "--tls-cert"),
        (
            &["--tls-cert", "/nonexistent.pem", "--tls-key", &ec_key],
            "nonexistent",
        ),
        (
            &["--tls-cert", &ec_cert, "--tls-key", &rsa_key],
            "--tls-cert",
        ),
    ];
    for (args, named) in cases {
        let output = start(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}
