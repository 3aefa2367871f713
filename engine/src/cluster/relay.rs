//! Live events between nodes, over NATS core: typing and call signals for a user's devices
//! on other nodes (docs/cluster.md, "Live delivery").
//!
//! A node subscribes to `chat.live.<user>` while it holds a device of the user, from the
//! first to the last ([`Relay::Watch`], [`Relay::Unwatch`], sent by the user's home shard
//! on this node). A home that delivers a typing or call signal to its own devices also
//! publishes it there ([`Relay::Live`]), so NATS hands it only to the nodes that hold a
//! device of the user, and never back to this node (the client connects with `no_echo`).
//! A call signal for a user with no device on this node is a request: "no responders"
//! means no node has one, and the caller hears `peer_offline`.
//!
//! What a node receives goes to the user's home reactor as a delivery for the devices
//! there ([`crate::router::Durability::Relayed`]), which is never published again.
//!
//! Presence rides on the same subscription (`cluster::presence`): a node holds a user
//! from the first device until the user is offline there (the grace included), announces
//! both on `chat.presence.<user>`, and answers the question "who holds the user?" asked on
//! `chat.live.<user>`. In the grace it answers a call with `away`: held, but no
//! device to ring.

use std::{borrow::Cow, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    protocol::{
        codes::{ErrorCode, OutKind},
        outbound::Outgoing,
        Priority,
    },
    router::{ConnAddr, Envelope},
    store::DoorbellSet,
};

/// What a shard asks of the cluster ([`crate::shard::Effect::Cluster`]).
#[derive(Debug)]
pub enum Relay {
    /// A first device of `user` is on this node (or one is back in the user's grace):
    /// live events for the user come here, to home reactor `home`.
    Watch {
        /// The user.
        user: Arc<str>,
        /// The user's home reactor on this node.
        home: u16,
    },
    /// The last device of `user` on this node is gone, and the user is in its grace:
    /// still held (online), but no device takes a live event.
    Away {
        /// The user.
        user: Arc<str>,
    },
    /// `user` is offline on this node (the last device gone and the grace over) since
    /// `at_ms`.
    Unwatch {
        /// The user.
        user: Arc<str>,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// A connection on this node watches `user`'s presence (its first watcher here):
    /// report to home reactor `home` whether other nodes hold the user.
    WatchPresence {
        /// The user.
        user: Arc<str>,
        /// The user's home reactor on this node.
        home: u16,
    },
    /// Nobody on this node watches `user` any more.
    UnwatchPresence {
        /// The user.
        user: Arc<str>,
    },
    /// `/api/stats?scope=cluster` from connection `asker`: gather every node's figures
    /// with this node's, `local`.
    Stats {
        /// The HTTP connection waiting.
        asker: ConnAddr,
        /// This node's `/api/stats` body.
        local: Vec<u8>,
    },
    /// An operator's call about users (`/api/admin/*`), waiting as `request` at reactor
    /// `reactor`: every other node answers its part, and the parts go back there
    /// ([`crate::router::Envelope::AdminNodes`]).
    Admin {
        /// The reactor where the call gathers.
        reactor: u16,
        /// The call there.
        request: u32,
        /// The call as said to the other nodes (`AdminRequest::to_node`).
        said: Vec<u8>,
    },
    /// This node's part of another node's call about users, for its `reply`.
    AdminPart {
        /// Where the asking node waits.
        reply: Box<str>,
        /// What this node's homes found.
        part: Box<crate::router::AdminPart>,
    },
    /// An API broadcast to every user online (`all:true`) from connection `requester`
    /// (pending broadcast `request` there): the other nodes write it to their users
    /// online, and their count goes back to the requester's reactor.
    Broadcast {
        /// The HTTP connection waiting.
        requester: ConnAddr,
        /// The pending broadcast at its reactor.
        request: u32,
        /// The message.
        message: Arc<crate::router::BroadcastMessage>,
    },
    /// This node's count of users reached by another node's broadcast, for its `reply`.
    BroadcastCounted {
        /// Where the asking node waits.
        reply: Box<str>,
        /// Users reached on a device here.
        delivered: u64,
    },
    /// The first device on this node entered huddle room `room` of `group`: the room's
    /// signals from other nodes come here, to the group's home `home`.
    HuddleWatch {
        /// The group.
        group: Box<str>,
        /// The room.
        room: Box<str>,
        /// The group's home reactor on this node.
        home: u16,
    },
    /// The last device on this node left the room.
    HuddleUnwatch {
        /// The group.
        group: Box<str>,
        /// The room.
        room: Box<str>,
    },
    /// A huddle signal from a device here, for the room's devices on other nodes. A join
    /// asks them who is there: their answers go to `joiner`.
    Huddle {
        /// The group.
        group: Box<str>,
        /// The room.
        room: Box<str>,
        /// The `signal` frame.
        frame: Outgoing,
        /// For a `huddle:join`: the device that entered.
        joiner: Option<ConnAddr>,
    },
    /// This node's answer to another node's `huddle:join`: one `huddle:join` frame from
    /// each device present here, for the joiner (at `reply`).
    HuddleIntroduce {
        /// Where the joining node waits.
        reply: Box<str>,
        /// The frames.
        frames: Vec<Outgoing>,
    },
    /// A command for what a cluster node keeps in JetStream (`cluster::inboxes`), from
    /// [`ClusterStore`].
    Inbox(crate::store::Command),
    /// A typing or call signal for `user`'s devices on other nodes.
    Live {
        /// The user.
        user: Arc<str>,
        /// The frame, as written to a socket.
        frame: Outgoing,
        /// Its outbound priority.
        priority: Priority,
        /// For a call signal that no device on this node took: the caller and the call
        /// id, told `peer_offline` when no node takes it either.
        call: Option<(ConnAddr, Box<str>)>,
    },
}

/// What the cluster thread hands a reactor.
#[derive(Debug)]
pub enum Inbound {
    /// Mail for the reactor, as from another reactor.
    Mail(Envelope),
    /// The answer to [`Relay::Stats`]: the body, or `None` if NATS is out of reach.
    Stats {
        /// The HTTP connection waiting.
        asker: ConnAddr,
        /// Every node's figures and their sum.
        body: Option<Vec<u8>>,
    },
    /// The inboxes' answer, as the store thread's would be.
    Store(crate::store::Reply),
    /// Another node's broadcast to every user online: to be written to this node's, and
    /// counted for `reply`.
    Broadcast {
        /// The message.
        message: Arc<crate::router::BroadcastMessage>,
        /// Where the asking node waits for the count.
        reply: Box<str>,
    },
    /// Another node's operator call about users: this node's homes answer their part
    /// for `reply`.
    Admin {
        /// The call as the asking node said it (`AdminRequest::from_node` reads it).
        said: Bytes,
        /// Where the asking node waits.
        reply: Box<str>,
    },
    /// The call signal `reference` from connection `caller` reached no device:
    /// `peer_offline` (no node holds one) or `cluster_unavailable` (NATS is out of reach).
    CallNotTaken {
        /// The calling connection.
        caller: ConnAddr,
        /// The call id.
        reference: Box<str>,
        /// Why.
        code: ErrorCode,
    },
}

/// The reactors' way to what a cluster node shares (inboxes, groups' members): the
/// commands go to the cluster thread with the shards' relays, in one channel, so that a
/// user's subscription (sent when a device registers) reaches NATS before that device's
/// first inbox read.
pub struct ClusterStore {
    /// The cluster thread's channel.
    pub relays: std::sync::mpsc::Sender<Relay>,
    /// Its doorbell.
    pub doorbell: Arc<crate::sockets::Doorbell>,
}

impl crate::store::SharedStore for ClusterStore {
    fn send(&self, command: crate::store::Command) -> Result<(), crate::store::Command> {
        match self.relays.send(Relay::Inbox(command)) {
            Ok(()) => {
                self.doorbell.ring();
                Ok(())
            }
            Err(std::sync::mpsc::SendError(Relay::Inbox(command))) => Err(command),
            Err(_) => unreachable!("an inbox command was sent"),
        }
    }
}

/// Where the cluster thread delivers to reactors: one channel each, and their doorbells.
#[derive(Clone)]
pub struct Reactors {
    /// Per reactor, the sending side of its channel.
    pub senders: Vec<std::sync::mpsc::Sender<Inbound>>,
    /// The reactors' doorbells.
    pub doorbells: Arc<dyn DoorbellSet + Send + Sync>,
}

impl Reactors {
    /// Hands `inbound` to reactor `reactor` and wakes it.
    pub(super) fn send(&self, reactor: usize, inbound: Inbound) {
        let Some(sender) = self.senders.get(reactor) else {
            return;
        };
        if sender.send(inbound).is_ok() {
            self.doorbells.ring(reactor);
        }
    }
}

/// The subject carrying `user`'s live events.
pub(super) fn live_subject(user: &str) -> String {
    format!("chat.live.{}", subject_token(user))
}

/// The subject of huddle room `room` of `group`: the nodes with a device in it subscribe.
pub(super) fn huddle_subject(group: &str, room: &str) -> String {
    format!(
        "chat.huddle.{}.{}",
        subject_token(group),
        subject_token(room)
    )
}

/// The subject where nodes announce that they hold `user` or let the user go.
pub(super) fn presence_subject(user: &str) -> String {
    format!("chat.presence.{}", subject_token(user))
}

/// The question "who holds this user?" on `chat.live.<user>`: each holder answers with
/// its instance.
pub(super) const QUESTION: &[u8] = &[3];
/// The question "is a device of this user online on your node?" on `chat.live.<user>`,
/// asked for a sender's ack (`sent` or `queued`): each holder answers [`DEVICES_HERE`],
/// or [`DEVICES_AWAY`] when it holds the user only in the grace.
pub(super) const DEVICES_QUESTION: &[u8] = &[6];
/// See [`DEVICES_QUESTION`].
pub(super) const DEVICES_HERE: &[u8] = b"here";
/// See [`DEVICES_QUESTION`].
pub(super) const DEVICES_AWAY: &[u8] = b"away";
/// A node's answer to a call it rang on a device.
pub(super) const CALL_TAKEN: &[u8] = b"";
/// A node's answer to a call for a user it holds in the grace, with no device to ring.
pub(super) const CALL_AWAY: &[u8] = b"away";

/// An announcement on `chat.presence.<user>`: `1` (holds) or `0` (let go), the time in
/// Unix ms and the announcing instance, separated by spaces.
pub(super) fn announcement(online: bool, at_ms: u64, instance: &str) -> Vec<u8> {
    format!("{} {at_ms} {instance}", u8::from(online)).into_bytes()
}

/// `(online, at_ms, instance)` of an announcement, or `None` if it is not one.
pub(super) fn parse_announcement(payload: &[u8]) -> Option<(bool, u64, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(3, ' ');
    let online = match parts.next()? {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    let at_ms = parts.next()?.parse().ok()?;
    let instance = parts.next().filter(|i| !i.is_empty())?;
    Some((online, at_ms, instance))
}

/// `user` as one subject token: itself when it is letters, digits, `-` and `_` only,
/// else `~` and its bytes in hex (no plain token starts with `~`, so none collides).
pub(super) fn subject_token(user: &str) -> Cow<'_, str> {
    let plain = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return Cow::Borrowed(user);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut token = String::with_capacity(1 + 2 * user.len());
    token.push('~');
    for byte in user.bytes() {
        token.push(char::from(HEX[usize::from(byte >> 4)]));
        token.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    Cow::Owned(token)
}

/// A broadcast on `chat.broadcast`: its message as JSON.
pub(super) fn encode_broadcast(message: &crate::router::BroadcastMessage) -> Vec<u8> {
    serde_json::json!({
        "message_id": &*message.message_id,
        "sender_id": &*message.sender_id,
        "text": &*message.text,
        "message_type": &*message.message_type,
        "priority": message.priority.as_str(),
    })
    .to_string()
    .into_bytes()
}

/// The message of a broadcast on `chat.broadcast`, accepted now, or `None` if it is not
/// one.
pub(super) fn decode_broadcast(payload: &[u8]) -> Option<crate::router::BroadcastMessage> {
    let json: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let text = |field: &str| json[field].as_str().map(Box::<str>::from);
    Some(crate::router::BroadcastMessage {
        message_id: text("message_id")?,
        sender_id: text("sender_id")?,
        text: text("text")?,
        message_type: text("message_type")?,
        priority: crate::protocol::Priority::parse(json["priority"].as_str()?)?,
        accepted_ns: crate::stats::clock_ns(),
    })
}

/// A node's part of an operator's call, for the asking node: `{"node_id", "part"}`.
pub(super) fn encode_admin_part(node_id: &str, part: &crate::router::AdminPart) -> Vec<u8> {
    serde_json::json!({ "node_id": node_id, "part": part })
        .to_string()
        .into_bytes()
}

/// The node and its part in an answer to an operator's call, or `None` if it is not one.
pub(super) fn decode_admin_part(payload: &[u8]) -> Option<(Box<str>, crate::router::AdminPart)> {
    #[derive(serde::Deserialize)]
    struct NodePart {
        node_id: Box<str>,
        part: crate::router::AdminPart,
    }
    let said: NodePart = serde_json::from_slice(payload).ok()?;
    Some((said.node_id, said.part))
}

/// `id` as a key-value key token: itself when it is letters, digits, `-` and `_` only,
/// else `=` and its bytes in hex (`~` is not allowed in a key).
pub(super) fn key_token(id: &str) -> String {
    match subject_token(id) {
        Cow::Borrowed(plain) => plain.to_owned(),
        Cow::Owned(hex) => format!("={}", &hex[1..]),
    }
}

/// The id a [`key_token`] stands for, or `None` if it is not one.
pub(super) fn from_key_token(token: &str) -> Option<Box<str>> {
    match token.strip_prefix('=') {
        Some(hex) => from_subject_token(&format!("~{hex}")),
        None => from_subject_token(token).filter(|_| !token.starts_with('~')),
    }
}

/// The id a [`subject_token`] stands for, or `None` if it is not one.
pub(super) fn from_subject_token(token: &str) -> Option<Box<str>> {
    let Some(hex) = token.strip_prefix('~') else {
        return Some(token.into());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok().map(String::into_boxed_str)
}

/// A live event on the wire: `[kind][priority][the WebSocket frame]`.
pub(super) fn encode(frame: &Outgoing, priority: Priority) -> Option<Bytes> {
    let kind = match frame.kind {
        OutKind::Typing => 1,
        OutKind::Signal => 2,
        _ => return None,
    };
    let mut payload = BytesMut::with_capacity(2 + frame.bytes.len());
    payload.put_u8(kind);
    payload.put_u8(priority as u8);
    payload.put_slice(&frame.bytes);
    Some(payload.freeze())
}

/// The frame and priority of a live event, or `None` if it is not one.
pub(super) fn decode(payload: &Bytes) -> Option<(Outgoing, Priority)> {
    let (&kind, rest) = payload.split_first()?;
    let (&priority, _) = rest.split_first()?;
    let kind = match kind {
        1 => OutKind::Typing,
        2 => OutKind::Signal,
        _ => return None,
    };
    let priority = match priority {
        0 => Priority::High,
        1 => Priority::Normal,
        2 => Priority::Low,
        _ => return None,
    };
    let bytes = payload.slice(2..);
    Some((Outgoing { kind, bytes }, priority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_their_own_token_and_others_are_hex() {
        assert_eq!(live_subject("alice_2-b"), "chat.live.alice_2-b");
        assert_eq!(live_subject("a.b"), "chat.live.~612e62");
        assert_eq!(live_subject("~61"), "chat.live.~7e3631");
        assert_eq!(live_subject(""), "chat.live.~");
        assert_eq!(live_subject("é"), "chat.live.~c3a9");
        for id in ["alice_2-b", "a.b", "~61", "", "é", "a b\n", "=x"] {
            assert_eq!(from_subject_token(&subject_token(id)).as_deref(), Some(id));
            let key = key_token(id);
            assert!(!key.contains(['~', '.', ' ']), "{key}");
            assert_eq!(from_key_token(&key).as_deref(), Some(id));
        }
    }

    #[test]
    fn broadcasts_round_trip_and_bad_ones_are_refused() {
        let message = crate::router::BroadcastMessage {
            message_id: "api-1".into(),
            sender_id: "ops".into(),
            text: "maintenance at 5".into(),
            message_type: "text".into(),
            priority: Priority::High,
            accepted_ns: 0,
        };
        let back = decode_broadcast(&encode_broadcast(&message)).unwrap();
        assert_eq!(
            (
                &*back.message_id,
                &*back.sender_id,
                &*back.text,
                back.priority
            ),
            ("api-1", "ops", "maintenance at 5", Priority::High)
        );
        for bad in [
            &b""[..],
            b"{}",
            br#"{"message_id":"x","sender_id":"y","text":"z","message_type":"t","priority":"top"}"#,
        ] {
            assert!(decode_broadcast(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn announcements_round_trip_and_bad_ones_are_refused() {
        assert_eq!(presence_subject("a.b"), "chat.presence.~612e62");
        let said = announcement(true, 1_700, "123-abc");
        assert_eq!(parse_announcement(&said), Some((true, 1_700, "123-abc")));
        let said = announcement(false, 5, "x");
        assert_eq!(parse_announcement(&said), Some((false, 5, "x")));
        for bad in [&b""[..], b"1", b"2 5 x", b"1 x y", b"1 5 ", b"\xff"] {
            assert_eq!(parse_announcement(bad), None, "{bad:?}");
        }
        assert!(
            decode(&Bytes::from_static(QUESTION)).is_none(),
            "not an event"
        );
    }

    #[test]
    fn live_events_round_trip_and_nothing_else_is_one() {
        let frame = Outgoing::text(OutKind::Signal, br#"{"type":"signal"}"#);
        let payload = encode(&frame, Priority::High).unwrap();
        let (back, priority) = decode(&payload).unwrap();
        assert_eq!((back.kind, back.bytes), (frame.kind, frame.bytes));
        assert_eq!(priority, Priority::High);
        for stored in [OutKind::NewMessage, OutKind::ReadReceipt] {
            let event = Outgoing::text(stored, b"{}");
            assert!(encode(&event, Priority::Normal).is_none(), "{stored:?}");
        }
        for bad in [&b""[..], b"\x01", b"\x03\x00x", b"\x04\x00x", b"\x01\x07x"] {
            assert!(decode(&Bytes::copy_from_slice(bad)).is_none(), "{bad:?}");
        }
    }
}
