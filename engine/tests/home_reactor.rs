//! `--connections-at-home`: an authenticated WebSocket moves to its user's home reactor
//! (its socket handed between the reactors' fd tables), keeps what it sent with `auth`,
//! and everything routes as before. A connection that cannot move (a refused handoff, a
//! full home) works where it was accepted; with the flag off, devices stay where accepted.

mod common;

use std::time::Duration;

use common::{on_both_drivers, raw_frame, Client, Server};
use engine::router::home_of;
use serde_json::{json, Value};

const REACTORS: usize = 2;
/// Devices per run: enough that with moves off some would sit off their home
/// (SO_REUSEPORT spreads them by address hash).
const DEVICES: usize = 16;
/// Receivers with moves off.
const OFF_HOME_DEVICES: usize = 24;

/// Per reactor, connections open (`/api/stats`; its own HTTP connection is one of them).
fn connections_per_reactor(server: &Server) -> [i64; REACTORS] {
    let (status, body) = server.get("/api/stats");
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    let mut counts = [0; REACTORS];
    for row in stats["reactors"].as_array().unwrap() {
        counts[row["reactor"].as_u64().unwrap() as usize] = row["connections"].as_i64().unwrap();
    }
    counts
}

/// `count` users named `{prefix}{n}` whose home is reactor 0: every one of their devices
/// belongs there, so with moves on reactor 1 holds none of them.
fn homed_at_zero(prefix: &str, count: usize) -> Vec<String> {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .filter(|user| home_of(user, REACTORS) == 0)
        .take(count)
        .collect()
}

fn moved_total(server: &Server) -> u64 {
    counter_total(server, "engine_connections_moved_home_total")
}

/// `DEVICES` senders homed at reactor 0 and one receiver, carol, homed there too. Each
/// sender's upgrade is answered, then `auth` and two messages go in one write: the messages
/// are read on the reactor that accepted the socket, before any move, and must be handled
/// once the device is registered (at its home, or where it stayed). Checks every ack and
/// every message once; returns the senders, carol and her id.
fn senders_with_messages_sent_along_with_auth(
    server: &Server,
) -> (Vec<String>, Vec<Client>, Client, String) {
    let carol_name = homed_at_zero("carol", 1).remove(0);
    let mut carol = server.login(&carol_name, "phone");
    let users = homed_at_zero("sender", DEVICES);
    let mut senders = Vec::new();
    for user in &users {
        let mut client = server.connect();
        let mut bytes = Vec::new();
        let auth = json!({"type": "auth", "userId": user, "deviceId": "d"});
        bytes.extend(raw_frame(0x81, auth.to_string().as_bytes()));
        for n in 0..2 {
            let message = json!({"type": "send_message", "messageId": format!("m{n}"),
                                 "receiverId": carol_name, "content": format!("{user}/{n}")});
            bytes.extend(raw_frame(0x81, message.to_string().as_bytes()));
        }
        client.write_raw(&bytes);
        senders.push(client);
    }
    for client in &mut senders {
        assert_eq!(client.recv()["type"], "auth_success");
        for n in 0..2 {
            let ack = client.recv_type("message_ack");
            assert_eq!(ack["messageId"], format!("m{n}"));
            assert_eq!(ack["status"], "sent", "{ack}");
        }
    }
    let mut got: Vec<String> = (0..2 * DEVICES)
        .map(|_| {
            carol.recv_type("new_message")["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = users
        .iter()
        .flat_map(|u| [format!("{u}/0"), format!("{u}/1")])
        .collect();
    want.sort();
    assert_eq!(got, want, "every message once");
    carol.expect_silence(Duration::from_millis(200));
    (users, senders, carol, carol_name)
}

/// An authenticated WebSocket counter per reactor from `/metrics`, summed.
fn counter_total(server: &Server, name: &str) -> u64 {
    let metrics = server.get("/metrics").1;
    let prefix = format!("{name}{{");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|rest| rest.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn devices_move_home_with_what_they_sent_along_with_auth() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &["--reactors", "2"]);
        let (users, mut senders, mut carol, _) =
            senders_with_messages_sent_along_with_auth(&server);

        // All 17 devices are at reactor 0; reactor 1 has at most the stats request.
        let counts = connections_per_reactor(&server);
        assert!(counts[0] >= 17 && counts[1] <= 1, "{counts:?}");
        assert!(moved_total(&server) > 0);

        // A moved device is an ordinary one: it gets messages, and its close takes its
        // user offline at the home.
        carol.send(&json!({"type": "send_message", "messageId": "back",
                           "receiverId": users[0], "content": "hi"}));
        assert_eq!(senders[0].recv_type("new_message")["messageId"], "back");
        drop(senders);
        server.wait_offline(&users[0]);
    });
}

/// A handoff that fails (here every one, by the failpoint; in life a queue full while the
/// home's turn lasts seconds) leaves the connection where it was accepted, with what it
/// sent along with `auth`, and it works from there.
#[test]
fn a_refused_handoff_leaves_the_device_working_where_it_was_accepted() {
    on_both_drivers(|driver| {
        let env = [("ENGINE_FAILPOINT", "refuse_handoffs:")];
        let server = Server::start_with_env(driver, &["--reactors", "2"], &env);
        let (users, mut senders, mut carol, _) =
            senders_with_messages_sent_along_with_auth(&server);
        assert_eq!(moved_total(&server), 0);
        let kept = counter_total(&server, "engine_connections_kept_off_home_total");
        // SO_REUSEPORT put some of the 17 devices on reactor 1 (none: about 1 in 130,000).
        let counts = connections_per_reactor(&server);
        assert!(
            kept > 0 && counts[1] >= kept as i64,
            "{kept} kept, {counts:?}"
        );
        for (user, sender) in users.iter().zip(&mut senders) {
            carol.send(&json!({"type": "send_message", "messageId": user,
                               "receiverId": user, "content": "hi"}));
            assert_eq!(sender.recv_type("new_message")["messageId"], user.as_str());
        }
    });
}

/// Opens a WebSocket, retrying past reactor 0's 503s (it is full) until reactor 1 accepts.
fn connect_to_reactor_one(server: &Server) -> Client {
    for _ in 0..40 {
        match tungstenite::connect(server.url("")) {
            Ok((ws, _)) => {
                if let tungstenite::stream::MaybeTlsStream::Plain(stream) = ws.get_ref() {
                    stream.set_read_timeout(Some(common::WAIT)).unwrap();
                }
                return Client { ws };
            }
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("reactor 1 accepted none of 40 upgrades");
}

/// A home at `--max-connections-per-reactor` takes no more moves: a device accepted by the
/// other reactor stays there and works.
#[test]
fn a_full_home_leaves_the_device_where_it_was_accepted() {
    on_both_drivers(|driver| {
        let args = ["--reactors", "2", "--max-connections-per-reactor", "3"];
        let server = Server::start(driver, &args);
        let users = homed_at_zero("full", 3);
        let _homed: Vec<_> = users.iter().map(|u| server.login(u, "phone")).collect();
        let moved = moved_total(&server);
        let late = homed_at_zero("late", 1).remove(0);
        let mut stayed = connect_to_reactor_one(&server);
        stayed.send(&json!({"type": "auth", "userId": late, "deviceId": "d"}));
        assert_eq!(stayed.recv()["type"], "auth_success");
        let now = moved_total(&server);
        assert_eq!(now, moved, "nothing more moved to the full home");
        let mut sender = connect_to_reactor_one(&server);
        sender.send(&json!({"type": "auth", "userId": "sender", "deviceId": "d"}));
        assert_eq!(sender.recv()["type"], "auth_success");
        sender.send(&json!({"type": "send_message", "messageId": "m1",
                            "receiverId": late, "content": "hi"}));
        assert_eq!(stayed.recv_type("new_message")["messageId"], "m1");
        let counts = connections_per_reactor(&server);
        // The three at home (and perhaps the stats request), the two that stayed.
        assert!(counts[0] <= 4 && counts[1] >= 2, "{counts:?}");
    });
}

#[test]
fn with_moves_off_devices_stay_where_accepted_and_still_get_everything() {
    on_both_drivers(|driver| {
        let args = ["--reactors", "2", "--connections-at-home", "false"];
        let server = Server::start(driver, &args);
        let mut users = homed_at_zero("r", OFF_HOME_DEVICES + 1);
        let mut alice = server.login(&users.pop().unwrap(), "phone");
        let mut receivers: Vec<_> = users.iter().map(|u| server.login(u, "phone")).collect();
        for user in &users {
            alice.send(&json!({"type": "send_message", "messageId": user,
                               "receiverId": user, "content": "hi"}));
            assert_eq!(alice.recv_type("message_ack")["status"], "sent");
        }
        for (user, device) in users.iter().zip(&mut receivers) {
            assert_eq!(device.recv_type("new_message")["messageId"], user.as_str());
        }
        assert_eq!(moved_total(&server), 0);
        // SO_REUSEPORT spread the devices by address, not by home: some of them are on
        // reactor 1 (none or one of 25, by chance: about 2 in a million runs).
        let counts = connections_per_reactor(&server);
        assert!(counts[1] >= 2, "{counts:?}");
    });
}
