//! Per-connection limits: the message rate (`rate_limited`, then 1008), the idle timeout
//! (a ping to a silent connection, then 1001), the handshake's time and size, and the
//! connection caps, with well-behaved neighbours unaffected.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{code, Server};
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn a_client_over_the_rate_is_warned_then_closed_and_its_neighbour_is_not() {
    common::on_both_drivers(|driver| {
        let server = Server::start(driver, &["--reactors", "1", "--rate-limit", "5"]);
        let mut calm = server.login("calm", "phone");
        let mut noisy = server.login("noisy", "phone");
        // A burst of 30: whichever second it falls in, one window sees twice the limit.
        for i in 0..30 {
            noisy.send(&json!({"type": "ping", "ts": i}));
        }
        let (mut pongs, mut warned) = (0, false);
        let close = loop {
            match noisy.next_or_close() {
                Ok(message) if message["type"] == "pong" => pongs += 1,
                Ok(message) => {
                    assert_eq!(message["code"], "rate_limited", "{message}");
                    warned = true;
                }
                Err(code) => break code,
            }
        };
        assert_eq!(close, code(CloseCode::Policy));
        assert!(
            warned && (4..=10).contains(&pongs),
            "warned {warned}, {pongs} pongs"
        );
        // The calm neighbour on the same reactor sends two a second for three seconds.
        for i in 0..6 {
            calm.send(&json!({"type": "ping", "ts": i}));
            assert_eq!(calm.recv_type("pong")["ts"], i);
            std::thread::sleep(Duration::from_millis(500));
        }
        let (_, metrics) = server.get("/metrics");
        assert!(metrics.contains("code=\"rate_limited\"} 1"), "{metrics}");
    });
}

#[test]
fn a_burst_is_read_at_the_pace_and_loses_nothing_while_its_neighbour_goes_on() {
    let server = Server::start(
        common::Driver::IoUring,
        &["--reactors", "1", "--message-pace", "20"],
    );
    let mut calm = server.login("calm", "phone");
    let mut flushing = server.login("flushing", "phone");
    // A reconnect's outbox flush, say: 60 at once, three seconds' worth at the pace.
    let started = Instant::now();
    for i in 0..60 {
        flushing.send(&json!({"type": "ping", "ts": i}));
    }
    calm.send(&json!({"type": "ping", "ts": "now"}));
    let asked = Instant::now();
    assert_eq!(calm.recv_type("pong")["ts"], "now");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    for i in 0..60 {
        assert_eq!(flushing.recv_type("pong")["ts"], i, "every one, in order");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "paced: {took:?}");
    assert!(server.counter_sum("engine_pace_pauses_total") >= 2);
    assert_eq!(server.errors_counted("rate_limited"), 0);
}

#[test]
fn a_silent_connection_is_pinged_then_closed_and_a_live_one_is_kept() {
    common::on_both_drivers(|driver| {
        let server = Server::start(driver, &["--idle-timeout-ms", "1000"]);
        let mut live = server.login("live", "phone");
        let mut silent = common::raw_login(&server, "silent");
        silent
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read everything until the server closes: the ping (0x89) comes before the close
        // frame (0x88), whose code is 1001. Meanwhile the live client keeps reading, which
        // is when its library answers the server's pings.
        while started.elapsed() < Duration::from_secs(6) {
            match silent.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            let _ = live.recv_within(Duration::from_millis(20));
        }
        let took = started.elapsed();
        let ping = seen
            .windows(2)
            .position(|w| w == [0x89, 5])
            .expect("a ping");
        let close = seen
            .windows(2)
            .position(|w| w[0] == 0x88)
            .expect("a close frame");
        assert!(ping < close, "ping at {ping}, close at {close}");
        assert_eq!(u16::from_be_bytes([seen[close + 2], seen[close + 3]]), 1001);
        // Silent for one timeout at least (and at most about one and a half, plus slack).
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "closed after {took:?}"
        );
        // The live client's library answered the pings while it read: still open.
        live.send(&json!({"type": "ping", "ts": 7}));
        assert_eq!(live.recv_type("pong")["ts"], 7);
    });
}

#[test]
fn past_the_connection_cap_an_upgrade_gets_503_and_health_still_answers() {
    common::on_both_drivers(|driver| {
        let server = Server::start(driver, &["--reactors", "1", "--max-connections", "3"]);
        let clients: Vec<_> = (0..3)
            .map(|i| server.login(&format!("u{i}"), "d"))
            .collect();
        let upgrade = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let (status, body) = common::split_response(&server.http(upgrade));
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("over_capacity"), "{body}");
        let (status, _) = server.get("/health/live");
        assert_eq!(status, 200);
        // They leave: room again, once the server has closed them (the health request
        // counts itself).
        drop(clients);
        common::wait_until("the closed connections to be gone", || {
            server.get("/health").1.contains(r#""connections":1,"#)
        });
        let mut again = server.login("u9", "d");
        again.send(&json!({"type": "ping", "ts": 1}));
        assert_eq!(again.recv_type("pong")["ts"], 1);
    });
}

/// An upgrade request whose head carries `pad` extra bytes in one header.
fn padded_upgrade(pad: usize) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Cookie: {}\r\n\r\n",
        "c".repeat(pad)
    )
}

#[test]
fn a_request_head_over_the_handshake_bound_gets_431() {
    common::on_both_drivers(|driver| {
        let server = Server::start(driver, &["--handshake-bytes-max", "1024"]);
        let refused = server.http(&padded_upgrade(1500));
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
        // Under the bound, the same upgrade succeeds, and so does an ordinary client.
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(common::WAIT)).unwrap();
        stream.write_all(padded_upgrade(600).as_bytes()).unwrap();
        let mut answer = [0; 12];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 101");
        server.login("alice", "phone");
        // The default bound (8 KiB) takes a 4 KiB cookie.
        let roomy = Server::start(driver, &[]);
        let mut stream = TcpStream::connect(roomy.addr).unwrap();
        stream.set_read_timeout(Some(common::WAIT)).unwrap();
        stream.write_all(padded_upgrade(4096).as_bytes()).unwrap();
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 101");
    });
}

#[test]
fn a_handshake_dribbled_a_header_at_a_time_is_cut_off_at_the_handshake_timeout() {
    common::on_both_drivers(|driver| {
        let server = Server::start(
            driver,
            &[
                "--handshake-timeout-ms",
                "300",
                "--auth-timeout-ms",
                "10000",
            ],
        );
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let started = Instant::now();
        stream
            .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // Slowloris: a new header every 100 ms never completes the head; the deadline runs
        // from the accept, not from the last byte.
        let mut byte = [0; 1];
        let cut_off = loop {
            assert!(started.elapsed() < Duration::from_secs(5), "never cut off");
            match stream.read(&mut byte) {
                Ok(0) => break started.elapsed(),
                Ok(_) => panic!("an answer to an unfinished request"),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    break started.elapsed()
                }
                Err(_) => {}
            }
            if stream.write_all(b"X-Slow: 1\r\n").is_err() {
                break started.elapsed();
            }
        };
        assert!(
            cut_off >= Duration::from_millis(300) && cut_off < Duration::from_millis(1500),
            "cut off after {cut_off:?}"
        );
    });
}

#[test]
fn an_upgraded_connection_waits_for_auth_on_the_auth_timeout_not_the_handshake_one() {
    common::on_both_drivers(|driver| {
        let server = Server::start(
            driver,
            &["--handshake-timeout-ms", "200", "--auth-timeout-ms", "1500"],
        );
        let mut slow = server.connect();
        std::thread::sleep(Duration::from_millis(600));
        slow.send(&json!({"type": "auth", "userId": "slow", "deviceId": "d"}));
        assert_eq!(slow.recv()["type"], "auth_success");
        let started = Instant::now();
        let mut silent = server.connect();
        assert_eq!(silent.expect_close(), 4001);
        assert!(started.elapsed() >= Duration::from_millis(1400));
    });
}
