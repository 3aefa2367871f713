//! Mailbox backpressure (DESIGN.md): when a reactor stalls, its peers' rings to it fill up.
//! The producing reactor then pauses reading the connections whose input feeds those rings
//! (their bytes wait in the kernel), keeps serving every other connection, drops nothing,
//! and delivers everything in order once the stalled reactor is back.
//!
//! The stall is the `stall_reactor_on_message_from` failpoint: one message blocks its
//! reactor for `engine::failpoint::STALL`.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::Server;
use engine::router::home_of;
use serde_json::json;

const REACTORS: usize = 2;
/// Messages the sender pushes at the stalled reactor: several times what the ring between
/// the two reactors holds (64 batches of 256 envelopes), so the ring must fill.
const MESSAGES: usize = 40_000;

fn parse_per_reactor(text: &str, name: &str) -> [u64; REACTORS] {
    let mut values = [0; REACTORS];
    for (reactor, value) in values.iter_mut().enumerate() {
        let prefix = format!("{name}{{reactor=\"{reactor}\"}} ");
        *value = text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in {text}"));
    }
    values
}

/// A kept-alive HTTP connection to `/metrics` on a known reactor: a new connection could
/// land on the stalled one and wait out the stall.
struct MetricsProbe {
    stream: BufReader<TcpStream>,
}

impl MetricsProbe {
    /// Opens kept-alive connections until one is accepted by reactor `want`.
    fn on(server: &Server, want: usize) -> MetricsProbe {
        for _ in 0..64 {
            let stream = TcpStream::connect(server.addr).unwrap();
            stream.set_read_timeout(Some(common::WAIT)).unwrap();
            let mut probe = MetricsProbe {
                stream: BufReader::new(stream),
            };
            // Only this test asks for HTTP, so the reactor whose count moved is this one's.
            let before = parse_per_reactor(&probe.metrics(), "engine_http_requests_total");
            let after = parse_per_reactor(&probe.metrics(), "engine_http_requests_total");
            if after[want] > before[want] {
                return probe;
            }
        }
        panic!("no connection landed on reactor {want} in 64 tries");
    }

    fn metrics(&mut self) -> String {
        let request = "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";
        self.stream.get_mut().write_all(request.as_bytes()).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }
}

/// The first user named `{prefix}{n}` whose home is `home`.
fn user_homed_at(prefix: &str, home: usize) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|user| home_of(user, REACTORS) == home)
        .unwrap()
}

#[test]
fn a_full_ring_pauses_its_producers_only_and_loses_nothing() {
    common::on_both_drivers(|driver| {
        let env = [("ENGINE_FAILPOINT", "stall_reactor_on_message_from:staller")];
        let args = [
            "--reactors",
            "2",
            "--rate-limit",
            "0",
            "--message-pace",
            "0",
        ];
        let server = Server::start_with_env(driver, &args, &env);

        // Every WebSocket sits at its user's home reactor (--connections-at-home).
        let stalled = home_of("staller", REACTORS);
        let mut staller = server.login("staller", "phone");
        let producer = 1 - stalled;
        // Every message to `receiver` passes through its home, the stalled reactor.
        let receiver_name = user_homed_at("receiver-", stalled);
        let mut receiver = server.login(&receiver_name, "phone");
        let mut sender = server.login(&user_homed_at("sender-", producer), "phone");
        // Two bystanders whose chat never leaves the producing reactor.
        let mut alice = server.login(&user_homed_at("alice-", producer), "phone");
        let bob_name = user_homed_at("bob-", producer);
        let mut bob = server.login(&bob_name, "phone");
        let mut probe = MetricsProbe::on(&server, producer);
        let pauses = |probe: &mut MetricsProbe| {
            parse_per_reactor(&probe.metrics(), "engine_backpressure_pauses_total")[producer]
        };

        staller.send(&json!({"type": "ping"}));
        let stall_began = Instant::now();
        // A head start for the stall (a reactor thread blocked in the failpoint can report
        // nothing); the sender is not timed against it: the test waits below for the
        // pause it causes, which is the event that matters.
        std::thread::sleep(Duration::from_millis(100));
        let sending = std::thread::spawn(move || {
            for i in 0..MESSAGES {
                let message = json!({"type": "send_message", "messageId": format!("m{i}"),
                                 "receiverId": receiver_name, "content": "x"});
                sender
                    .ws
                    .write(tungstenite::Message::text(message.to_string()))
                    .unwrap();
            }
            sender.ws.flush().unwrap();
            let mut acked = 0;
            while acked < MESSAGES {
                let ack = sender.recv_type("message_ack");
                assert_eq!(ack["status"], "sent", "{ack}");
                acked += 1;
            }
        });

        // Wait until the producing reactor has paused the sender...
        let deadline = stall_began + engine::failpoint::STALL;
        while pauses(&mut probe) == 0 {
            assert!(Instant::now() < deadline, "the ring never filled");
            std::thread::sleep(Duration::from_millis(20));
        }
        // ...and show that it still serves everyone else meanwhile.
        for i in 0..3 {
            alice.send(
                &json!({"type": "send_message", "messageId": format!("b{i}"),
                           "receiverId": bob_name, "content": "still here"}),
            );
            assert_eq!(bob.recv_type("new_message")["messageId"], format!("b{i}"));
        }
        assert!(
            Instant::now() < deadline,
            "the bystanders waited for the stalled reactor"
        );

        // Once the stall ends, every message arrives, in order, exactly once.
        for i in 0..MESSAGES {
            let message = receiver.recv_type("new_message");
            assert_eq!(message["messageId"], format!("m{i}"));
        }
        receiver.expect_silence(Duration::from_millis(200));
        sending.join().unwrap();
    });
}
