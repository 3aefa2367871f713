//! Torture: many misbehaving raw-socket clients at once (partial frames, huge lengths,
//! garbage before and after the upgrade, protocol violations, never reading, abrupt
//! resets) while normal clients chat across reactors. No message between the normal
//! clients is lost, duplicated or reordered; each misbehaver is answered or cut off; and
//! afterwards the gateway is healthy with no connection left behind.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{raw_frame, raw_login, Server};
use serde_json::json;

/// Pairs of normal clients; each sender writes to its partner throughout.
const PAIRS: usize = 6;
/// How long the misbehavers keep coming.
const TORTURE: Duration = Duration::from_secs(3);
/// Receivers that never read, flooded until the gateway cuts them off.
const SINKS: usize = 3;

/// A small xorshift generator: garbage that differs per round but is the same every run.
struct Garbage(u64);

impl Garbage {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

/// Reads until the server closes (EOF or reset); returns everything read. Panics if the
/// server keeps the socket open past the harness's wait.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return seen,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return seen,
            Err(e) => panic!("the server kept a misbehaving socket open: {e}"),
        }
    }
}

/// The code of the close frame in what the server sent after the upgrade, if any.
fn close_code(seen: &[u8]) -> Option<u16> {
    let at = seen.windows(2).rposition(|w| w[0] == 0x88 && w[1] >= 2)?;
    Some(u16::from_be_bytes([seen[at + 2], seen[at + 3]]))
}

/// Resets the connection (RST, not FIN) when dropped.
fn reset_on_drop(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// One misbehaviour, round `round`; asserts the gateway's answer where it gives one.
fn misbehave(server: &Server, kind: usize, round: usize, garbage: &mut Garbage) {
    let user = format!("bad-{kind}-{round}");
    match kind {
        // Half a frame, then the end of the stream: the gateway closes too, with no
        // close frame (there is no frame boundary to answer at) and no reply.
        0 => {
            let mut stream = raw_login(server, &user);
            let frame = raw_frame(0x81, br#"{"type":"ping"}"#);
            stream.write_all(&frame[..5]).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let seen = read_to_close(&mut stream);
            assert_eq!(close_code(&seen), None, "{seen:?}");
        }
        // A header announcing 2^63 - 1 bytes: 1009, nothing allocated.
        1 => {
            let mut stream = raw_login(server, &user);
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&(i64::MAX as u64).to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            stream.write_all(&header).unwrap();
            assert_eq!(close_code(&read_to_close(&mut stream)), Some(1009));
        }
        // Garbage after the upgrade, then end of stream (garbage may end inside a frame
        // the gateway would wait for): a protocol close of some kind, or just the close.
        2 => {
            let mut stream = raw_login(server, &user);
            let _ = stream.write_all(&garbage.bytes(2048));
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let code = close_code(&read_to_close(&mut stream));
            assert!(
                matches!(code, None | Some(1002 | 1003 | 1007 | 1008 | 1009)),
                "{code:?}"
            );
        }
        // Garbage instead of a handshake: an HTTP error, then the close.
        3 => {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            let mut bytes = garbage.bytes(512);
            bytes.extend_from_slice(b"\r\n\r\n");
            let _ = stream.write_all(&bytes);
            let answer = read_to_close(&mut stream);
            assert!(answer.starts_with(b"HTTP/1.1 4"), "{answer:?}");
        }
        // An unmasked frame, a 200-byte ping, bad UTF-8: each a protocol close.
        4 => {
            let cases: [(Vec<u8>, u16); 3] = [
                (vec![0x81, 2, b'h', b'i'], 1002),
                (raw_frame(0x89, &[0; 200]), 1002),
                (raw_frame(0x81, &[0xff, 0xfe]), 1007),
            ];
            let (frame, expected) = &cases[round % cases.len()];
            let mut stream = raw_login(server, &user);
            stream.write_all(frame).unwrap();
            assert_eq!(close_code(&read_to_close(&mut stream)), Some(*expected));
        }
        // Half a message, then a reset: the user goes offline (its home saw the close).
        5 => {
            let mut stream = raw_login(server, &user);
            let frame = raw_frame(0x81, br#"{"type":"send_message","receiverId":"x"}"#);
            stream.write_all(&frame[..frame.len() / 2]).unwrap();
            reset_on_drop(&stream);
            drop(stream);
            server.wait_offline(&user);
        }
        // The middle of a handshake, then a reset (nothing to observe but the count of
        // open connections at the end) or, every other round, the end of the stream:
        // no answer, just the close.
        _ => {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream
                .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpg")
                .unwrap();
            if round.is_multiple_of(2) {
                reset_on_drop(&stream);
            } else {
                stream.shutdown(std::net::Shutdown::Write).unwrap();
                let answer = read_to_close(&mut stream);
                assert!(answer.is_empty(), "{answer:?}");
            }
        }
    }
}

/// Misbehaviours in [`misbehave`].
const KINDS: usize = 7;

/// Total open connections, from `/metrics` (which counts the request's own).
fn open_connections(server: &Server) -> i64 {
    let (_, text) = server.get("/metrics");
    text.lines()
        .filter_map(|line| line.strip_prefix("engine_connections{reactor="))
        .map(|rest| rest.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .sum()
}

#[test]
fn misbehaving_clients_cost_normal_clients_nothing() {
    common::on_both_drivers(|driver| {
        let server = Arc::new(Server::start(
            driver,
            &["--reactors", "2", "--outbound-bytes-max", "1048576"],
        ));
        let done = Arc::new(AtomicBool::new(false));

        // Normal clients: each sender writes to its partner until the torture ends, then an
        // end marker; each receiver must see m0, m1, ... in order, then the marker.
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for pair in 0..PAIRS {
            let mut receiver = server.login(&format!("receiver-{pair}"), "phone");
            receivers.push(thread::spawn(move || {
                let mut next = 0;
                loop {
                    let message = receiver.recv_type("new_message");
                    if message["content"] == "end" {
                        return next;
                    }
                    assert_eq!(message["messageId"], format!("m{next}"), "pair {pair}");
                    next += 1;
                }
            }));
            let mut sender = server.login(&format!("sender-{pair}"), "phone");
            let done = done.clone();
            senders.push(thread::spawn(move || {
                let mut sent = 0;
                let send = |sender: &mut common::Client, id: String, content: &str| {
                    sender.send(&json!({"type": "send_message", "messageId": id,
                                    "receiverId": format!("receiver-{pair}"), "content": content}));
                    assert_eq!(sender.recv_type("message_ack")["status"], "sent");
                };
                while !done.load(Ordering::Relaxed) {
                    send(&mut sender, format!("m{sent}"), "hello");
                    sent += 1;
                    thread::sleep(Duration::from_millis(2));
                }
                send(&mut sender, "end".into(), "end");
                sent
            }));
        }

        // Sinks never read; a flooder sends them 60 KB messages until the gateway drops each
        // one (its acks turn from `sent` to `queued`).
        let sinks: Vec<TcpStream> = (0..SINKS)
            .map(|k| raw_login(&server, &format!("sink-{k}")))
            .collect();
        let mut flooder = server.login("flooder", "phone");
        let flooding = thread::spawn(move || {
            let content = "x".repeat(60_000);
            for k in 0..SINKS {
                let cut_off = (0..2000).any(|i| {
                    flooder.send(
                        &json!({"type": "send_message", "messageId": format!("f{k}-{i}"),
                                     "receiverId": format!("sink-{k}"), "content": content}),
                    );
                    flooder.recv_type("message_ack")["status"] == "queued"
                });
                assert!(cut_off, "sink-{k} was never cut off");
            }
        });

        // The misbehavers: one thread per kind, round after round, for the torture's length.
        let started = Instant::now();
        let misbehavers: Vec<_> = (0..KINDS)
            .map(|kind| {
                let server = server.clone();
                thread::spawn(move || {
                    let mut garbage = Garbage(0x9e37_79b9_7f4a_7c15 ^ kind as u64);
                    let mut round = 0;
                    while started.elapsed() < TORTURE {
                        misbehave(&server, kind, round, &mut garbage);
                        round += 1;
                    }
                    round
                })
            })
            .collect();
        let rounds: usize = misbehavers.into_iter().map(|t| t.join().unwrap()).sum();
        flooding.join().unwrap();
        done.store(true, Ordering::Relaxed);
        for (sender, receiver) in senders.into_iter().zip(receivers) {
            let sent = sender.join().unwrap();
            assert_eq!(receiver.join().unwrap(), sent, "every message arrived once");
            assert!(sent > 0);
        }
        assert!(rounds >= KINDS * 10, "only {rounds} misbehaviours");
        drop(sinks);

        // Nothing is left behind: every client above has gone (the normal ones closed with
        // their threads), so only this request's own connection is open; and the gateway
        // still serves newcomers.
        let deadline = Instant::now() + common::WAIT;
        while open_connections(&server) != 1 {
            assert!(
                Instant::now() < deadline,
                "{} connections still open",
                open_connections(&server) - 1
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(server.get("/health/ready").0, 200);
        let mut alice = server.login("alice", "phone");
        let mut bob = server.login("bob", "phone");
        alice.send(&json!({"type": "send_message", "messageId": "after",
                       "receiverId": "bob", "content": "still here"}));
        assert_eq!(bob.recv_type("new_message")["content"], "still here");
    });
}
