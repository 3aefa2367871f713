//! What the server writes: each function writes one JSON message into a reusable
//! [`OutJson`] buffer, which remembers what kind of message it holds.
//!
//! Callers wrap the result in a WebSocket frame once ([`OutJson::frame`]) and share that
//! [`Outgoing`] frame with every recipient. Its [`OutKind`] is named here, where the
//! message is made, so stats count frames by kind without reading them back.

use bytes::Bytes;

use super::{
    codes::{ErrorCode, OutKind},
    inbound::Scalar,
    json::{write_list, Obj},
    Priority, Role,
};
use crate::ws::frame;

/// An encoded WebSocket frame or HTTP response, with what it is.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// What it is, for the stats.
    pub kind: OutKind,
    /// The bytes as written to the socket.
    pub bytes: Bytes,
}

impl Outgoing {
    /// A text frame carrying `json`, a message of `kind`.
    pub fn text(kind: OutKind, json: &[u8]) -> Outgoing {
        Outgoing {
            kind,
            bytes: frame::encode_text(json),
        }
    }

    /// A WebSocket control frame (close, ping or pong).
    pub fn control(bytes: Bytes) -> Outgoing {
        Outgoing {
            kind: OutKind::Control,
            bytes,
        }
    }

    /// A text frame carrying `json`, an inbox event of `kind`, numbered `seq` in its
    /// user's inbox: `"seq":N` goes right after the `type` every message starts with.
    ///
    /// Hot path: one allocation, the frame itself.
    pub fn with_seq(kind: OutKind, json: &[u8], seq: u64) -> Outgoing {
        let split = (r#"{"type":""#.len() + kind.name().len() + 1).min(json.len());
        let (head, rest) = json.split_at(split);
        let mut digits = [0u8; 20];
        let bytes =
            frame::encode_text_parts(&[head, br#","seq":"#, decimal(seq, &mut digits), rest]);
        Outgoing { kind, bytes }
    }

    /// The `seq` of a frame [`Outgoing::with_seq`] made (read back only for the few
    /// frames held while a device reads its inbox).
    pub fn seq(&self) -> Option<u64> {
        let json = self.json();
        let at = r#"{"type":""#.len() + self.kind.name().len() + 1;
        let digits = json.get(at..)?.strip_prefix(br#","seq":"#)?;
        let end = digits.iter().position(|b| !b.is_ascii_digit())?;
        std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
    }

    /// The JSON text of a text frame (shares the frame's allocation).
    pub fn json(&self) -> Bytes {
        frame::payload_of(&self.bytes)
    }

    /// An HTTP response.
    pub fn http(bytes: Bytes) -> Outgoing {
        Outgoing {
            kind: OutKind::Http,
            bytes,
        }
    }
}

/// `value` in decimal, written at the end of `buf`.
fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buf[at..];
        }
    }
}

/// A reusable buffer for one outgoing JSON message and its kind.
#[derive(Debug)]
pub struct OutJson {
    json: Vec<u8>,
    kind: OutKind,
}

impl Default for OutJson {
    fn default() -> Self {
        OutJson {
            json: Vec::new(),
            kind: OutKind::Other,
        }
    }
}

impl OutJson {
    /// Empties the buffer and starts a message of `kind`: `{"type":"NAME"`.
    fn begin(&mut self, kind: OutKind) -> Obj<'_> {
        self.json.clear();
        self.kind = kind;
        Obj::new(&mut self.json).str("type", kind.name())
    }

    /// The JSON text written.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// What kind of message it is.
    pub fn kind(&self) -> OutKind {
        self.kind
    }

    /// The message as a text frame (one allocation, shared by every recipient).
    pub fn frame(&self) -> Outgoing {
        Outgoing::text(self.kind, &self.json)
    }
}

/// Where a device's inbox stands, for `auth_success` (protocol v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxState<'a> {
    /// The inbox's epoch.
    pub epoch: &'a str,
    /// Its last `seq`.
    pub seq: u64,
    /// Whether a `resume` was honoured (absent without one).
    pub resumed: Option<bool>,
}

/// `auth_success {userId, deviceId, epoch, seq, resumed?, timestamp}`.
pub fn auth_success(
    out: &mut OutJson,
    (user_id, device_id): (&str, &str),
    inbox: InboxState<'_>,
    now_ms: u64,
) {
    let obj = out
        .begin(OutKind::AuthSuccess)
        .str("userId", user_id)
        .str("deviceId", device_id)
        .str("epoch", inbox.epoch)
        .u64("seq", inbox.seq);
    match inbox.resumed {
        Some(resumed) => obj.bool("resumed", resumed),
        None => obj,
    }
    .u64("timestamp", now_ms)
    .end();
}

/// `auth_refreshed {expiresAt?, timestamp}`: the session now lasts until `expiresAt`
/// (Unix ms; none: for ever).
pub fn auth_refreshed(out: &mut OutJson, expires_at_ms: Option<u64>, now_ms: u64) {
    let obj = out.begin(OutKind::AuthRefreshed);
    match expires_at_ms {
        Some(at) => obj.u64("expiresAt", at),
        None => obj,
    }
    .u64("timestamp", now_ms)
    .end();
}

/// `error {code, message, ref?}`.
pub fn error(out: &mut OutJson, code: ErrorCode, message: &str, reference: Option<&str>) {
    out.begin(OutKind::Error)
        .str("code", code.name())
        .str("message", message)
        .opt_str("ref", reference)
        .end();
}

/// `pong {ts, timestamp}`; `ts` is echoed as the client sent it.
pub fn pong(out: &mut OutJson, ts: Option<Scalar<'_>>, now_ms: u64) {
    let obj = out.begin(OutKind::Pong);
    let obj = match ts {
        Some(Scalar::Int(v)) => obj.i64("ts", v),
        Some(Scalar::Uint(v)) => obj.u64("ts", v),
        Some(Scalar::Float(v)) => obj.f64("ts", v),
        Some(Scalar::Str(v)) => obj.str("ts", v),
        None => obj,
    };
    obj.u64("timestamp", now_ms).end();
}

/// `message_ack {messageId, status, timestamp}` with `status` `sent` or `queued`.
pub fn message_ack(out: &mut OutJson, message_id: &str, status: &str, now_ms: u64) {
    out.begin(OutKind::MessageAck)
        .str("messageId", message_id)
        .str("status", status)
        .u64("timestamp", now_ms)
        .end();
}

/// `message_ack {messageId, status:"rejected", reason, timestamp}`: not delivered, not queued.
pub fn message_rejected(out: &mut OutJson, message_id: &str, reason: &str, now_ms: u64) {
    out.begin(OutKind::MessageAck)
        .str("messageId", message_id)
        .str("status", "rejected")
        .str("reason", reason)
        .u64("timestamp", now_ms)
        .end();
}

/// `delivery_receipt {messageId, receiverId, timestamp}`: a queued message reached a device.
pub fn delivery_receipt(out: &mut OutJson, message_id: &str, receiver_id: &str, now_ms: u64) {
    out.begin(OutKind::DeliveryReceipt)
        .str("messageId", message_id)
        .str("receiverId", receiver_id)
        .u64("timestamp", now_ms)
        .end();
}

/// The fields of one chat message as delivered.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// The client-chosen id.
    pub message_id: &'a str,
    /// Who sent it.
    pub sender_id: &'a str,
    /// Who it is for.
    pub receiver_id: &'a str,
    /// The text.
    pub content: &'a str,
    /// `text` unless the client said otherwise.
    pub message_type: &'a str,
    /// Delivery priority.
    pub priority: Priority,
    /// When the gateway accepted it.
    pub timestamp_ms: u64,
    /// The group it was sent to, for group messages.
    pub group_id: Option<&'a str>,
}

/// `new_message {messageId, senderId, receiverId, content, messageType, priority, timestamp, status}`.
pub fn new_message(out: &mut OutJson, m: &NewMessage<'_>) {
    out.begin(OutKind::NewMessage)
        .str("messageId", m.message_id)
        .str("senderId", m.sender_id)
        .str("receiverId", m.receiver_id)
        .str("content", m.content)
        .str("messageType", m.message_type)
        .str("priority", m.priority.as_str())
        .u64("timestamp", m.timestamp_ms)
        .str("status", "delivered")
        .opt_str("groupId", m.group_id)
        .end();
}

/// `group_member {groupId, userId, action:"joined"|"left", role?, timestamp}`: `joined` with
/// the member's role (an add or a role change; a plain member's is not written), or left.
pub fn group_member(
    out: &mut OutJson,
    (group_id, user_id): (&str, &str),
    joined: Option<Role>,
    now_ms: u64,
) {
    let obj = out
        .begin(OutKind::GroupMember)
        .str("groupId", group_id)
        .str("userId", user_id);
    match joined {
        Some(Role::Member) => obj.str("action", "joined"),
        Some(role) => obj.str("action", "joined").str("role", role.as_str()),
        None => obj.str("action", "left"),
    }
    .u64("timestamp", now_ms)
    .end();
}

/// `signal {senderId, callId, kind, payload, timestamp}`; `payload` is JSON text.
pub fn signal(
    out: &mut OutJson,
    sender_id: &str,
    (call_id, kind): (&str, &str),
    payload: &[u8],
    now_ms: u64,
) {
    out.begin(OutKind::Signal)
        .str("senderId", sender_id)
        .str("callId", call_id)
        .str("kind", kind)
        .raw("payload", payload)
        .u64("timestamp", now_ms)
        .end();
}

/// `message_edited`, `message_deleted`, `reaction_added` or `reaction_removed`:
/// `{messageId, senderId, receiverId, content? | emoji?, timestamp}`; `senderId` is who
/// made the change.
pub fn amended(
    out: &mut OutJson,
    (message_id, sender_id, receiver_id): (&str, &str, &str),
    change: &crate::protocol::inbound::Change<'_>,
    now_ms: u64,
) {
    use crate::protocol::inbound::Change;
    let obj = out
        .begin(change.event())
        .str("messageId", message_id)
        .str("senderId", sender_id)
        .str("receiverId", receiver_id);
    match change {
        Change::Edit(content) => obj.str("content", content),
        Change::Delete => obj,
        Change::ReactionAdd(emoji) | Change::ReactionRemove(emoji) => obj.str("emoji", emoji),
    }
    .u64("timestamp", now_ms)
    .end();
}

/// `typing {senderId, isTyping, timestamp}`.
pub fn typing(out: &mut OutJson, sender_id: &str, is_typing: bool, now_ms: u64) {
    out.begin(OutKind::Typing)
        .str("senderId", sender_id)
        .bool("isTyping", is_typing)
        .u64("timestamp", now_ms)
        .end();
}

/// `read_receipt {messageId, readerId, timestamp}`.
pub fn read_receipt(out: &mut OutJson, message_id: &str, reader_id: &str, now_ms: u64) {
    out.begin(OutKind::ReadReceipt)
        .str("messageId", message_id)
        .str("readerId", reader_id)
        .u64("timestamp", now_ms)
        .end();
}

/// `history {peerId, messages:[…], more}`: each message is a stored `new_message` object;
/// `more` says older ones remain.
pub fn history(out: &mut OutJson, peer_id: &str, messages: &[bytes::Bytes], more: bool) {
    out.begin(OutKind::History)
        .str("peerId", peer_id)
        .with("messages", |out| {
            write_list(out, messages, |out, message| out.extend_from_slice(message))
        })
        .bool("more", more)
        .end();
}

/// One user's presence as reported in `presence_state` (and, as JSON, in an operator's
/// presence call's part from another node).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceEntry {
    /// The user.
    pub user_id: String,
    /// Whether any device of the user is online.
    pub online: bool,
    /// When the user was last seen going offline, if the gateway knows.
    pub last_seen_ms: Option<u64>,
}

/// `presence_state {users:[{userId, status, lastSeen}]}`.
pub fn presence_state(out: &mut OutJson, users: &[PresenceEntry]) {
    out.begin(OutKind::PresenceState)
        .with("users", |out| {
            write_list(out, users, |out, user| {
                let obj = Obj::new(out)
                    .str("userId", &user.user_id)
                    .str("status", status(user.online));
                match user.last_seen_ms {
                    Some(ms) => obj.u64("lastSeen", ms),
                    None => obj.null("lastSeen"),
                }
                .end();
            })
        })
        .end();
}

/// `presence_update {userId, status, timestamp}`.
pub fn presence_update(out: &mut OutJson, user_id: &str, online: bool, now_ms: u64) {
    out.begin(OutKind::PresenceUpdate)
        .str("userId", user_id)
        .str("status", status(online))
        .u64("timestamp", now_ms)
        .end();
}

fn status(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(write: impl FnOnce(&mut OutJson)) -> String {
        let mut out = OutJson::default();
        write(&mut out);
        String::from_utf8(out.json().to_vec()).unwrap()
    }

    #[test]
    fn messages_have_the_documented_shape() {
        assert_eq!(
            text(|o| pong(o, Some(Scalar::Int(123)), 9)),
            r#"{"type":"pong","ts":123,"timestamp":9}"#
        );
        assert_eq!(
            text(|o| error(o, ErrorCode::BadJson, "x", Some("m1"))),
            r#"{"type":"error","code":"bad_json","message":"x","ref":"m1"}"#
        );
        let entries = [
            PresenceEntry {
                user_id: "a".into(),
                online: true,
                last_seen_ms: None,
            },
            PresenceEntry {
                user_id: "b".into(),
                online: false,
                last_seen_ms: Some(7),
            },
        ];
        let mut out = OutJson::default();
        presence_state(&mut out, &entries);
        assert_eq!(out.kind(), OutKind::PresenceState);
        assert_eq!(
            text(|o| presence_state(o, &entries)),
            r#"{"type":"presence_state","users":[{"userId":"a","status":"online","lastSeen":null},{"userId":"b","status":"offline","lastSeen":7}]}"#
        );
    }

    #[test]
    fn an_inbox_frame_carries_its_seq_after_its_type() {
        let mut out = OutJson::default();
        typing(&mut out, "ann", true, 5);
        let with = Outgoing::with_seq(OutKind::Typing, out.json(), 1234567);
        let json: serde_json::Value = serde_json::from_slice(&with.json()).unwrap();
        assert_eq!(
            (json["type"].as_str(), json["seq"].as_u64()),
            (Some("typing"), Some(1234567))
        );
        assert_eq!(json["senderId"], "ann");
        assert_eq!(with.seq(), Some(1234567));
        assert_eq!(out.frame().seq(), None);
        let mut digits = [0u8; 20];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(
            decimal(u64::MAX, &mut digits),
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn each_frame_is_named_by_the_type_it_carries() {
        let mut out = OutJson::default();
        let change = crate::protocol::inbound::Change::ReactionAdd("x");
        amended(&mut out, ("m", "a", "b"), &change, 1);
        let frame = out.frame();
        assert_eq!(frame.kind, OutKind::ReactionAdded);
        let json: serde_json::Value = serde_json::from_slice(&frame.json()).unwrap();
        assert_eq!(json["type"], frame.kind.name());
    }
}
