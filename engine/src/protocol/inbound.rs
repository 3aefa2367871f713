//! What clients send: JSON text frames parsed in place by simd-json into [`ClientMessage`].
//!
//! Parsing writes a tape over the (already unmasked) payload; strings in the result borrow
//! the payload, so a message is read without copying. Unknown fields are ignored.

use std::{borrow::Cow, sync::Arc};

use simd_json::{prelude::*, tape::Value, Buffers, Tape};

use super::{
    codes::{ErrorCode, MessageKind, OutKind},
    Priority, Role,
};

pub use super::ids::ID_BYTES_MAX;
/// The most user ids one `presence_subscribe` / `presence_unsubscribe` may name.
pub const PRESENCE_IDS_MAX: usize = 256;
/// Messages a `history` answer holds when the request gives no `limit`.
pub const HISTORY_LIMIT_DEFAULT: usize = 50;
/// The largest `limit` a `history` request may give.
pub const HISTORY_LIMIT_MAX: usize = 500;

/// A text message as a client wrote it, to a user (`send_message`) or a group
/// (`group_message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text<'a> {
    /// The client-chosen message id.
    pub message_id: &'a str,
    /// The receiving user (`receiverId`), or the group (`groupId`).
    pub to: &'a str,
    /// The message text.
    pub content: &'a str,
    /// `text` unless given.
    pub message_type: &'a str,
    /// `normal` unless given.
    pub priority: Priority,
}

/// What a user asks of a group's membership (PROTOCOL.md, "Groups" and v2's "Group
/// access"), as the group's home receives it. Owned, unlike the rest of a message: it
/// goes on to the home as it is, and group changes are rare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest {
    /// `group_join`: become a member.
    Join {
        /// The session's token lists the group (its `groups` claim), which opens an
        /// invite-only group: set by the connection, never by the client's message.
        token_grants: bool,
    },
    /// `group_leave`.
    Leave,
    /// `group_create {access}`: a new group the asker owns.
    Create {
        /// `access:"invite"`; `"open"` (the default) is false.
        invite: bool,
    },
    /// `group_add {userId, role?}`: by the owner or an admin; a `role` only by the owner.
    Add {
        /// Who is added (or whose role changes).
        user: Arc<str>,
        /// `admin` or `member`, when given.
        role: Option<Role>,
    },
    /// `group_remove {userId}`: by the owner or an admin.
    Remove {
        /// Who is removed.
        user: Arc<str>,
    },
}

/// `resume {epoch, seq}` in `auth`: the inbox the device last saw and how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume<'a> {
    /// The epoch its last `auth_success` gave (`""` on a device's first connection).
    pub epoch: &'a str,
    /// The highest `seq` it processed.
    pub seq: u64,
}

/// The longest `resume.epoch` accepted, in bytes.
pub const EPOCH_BYTES_MAX: usize = 64;

/// A client's `ts` on a `ping`, echoed back as it came.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    Uint(u64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(&'a str),
}

/// One message from a client, borrowing its strings from the payload.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage<'a> {
    /// `auth {userId, deviceId, token?, resume?}`.
    Auth {
        /// The user claiming the connection.
        user_id: &'a str,
        /// Which of the user's devices this is.
        device_id: &'a str,
        /// An HS256 JWT; required when a secret is configured.
        token: Option<&'a str>,
        /// Where the device left off (protocol v2).
        resume: Option<Resume<'a>>,
    },
    /// `auth_refresh {token}`: a new token for the session's user, extending the session
    /// to its `exp`.
    AuthRefresh {
        /// The new token.
        token: &'a str,
    },
    /// `ack {seq}`: the device has processed every inbox event up to `seq`.
    Ack {
        /// The highest `seq` processed.
        seq: u64,
    },
    /// `ping {ts?}`.
    Ping {
        /// Any scalar, echoed in the pong.
        ts: Option<Scalar<'a>>,
    },
    /// `send_message {messageId, receiverId, content, messageType?, priority?}`.
    SendMessage(Text<'a>),
    /// `typing {receiverId, isTyping}`.
    Typing {
        /// The recipient user.
        receiver_id: &'a str,
        /// Started or stopped typing.
        is_typing: bool,
    },
    /// `read_receipt {messageId, senderId?}`.
    ReadReceipt {
        /// The client-chosen message id.
        message_id: &'a str,
        /// The original sender, where the client knows it.
        sender_id: Option<&'a str>,
    },
    /// `history {peerId, before?, limit?}`.
    History {
        /// The other side of the conversation.
        peer_id: &'a str,
        /// Only messages sent before this time (Unix ms).
        before: Option<u64>,
        /// At most this many, newest first.
        limit: usize,
    },
    /// `group_join`, `group_leave`, `group_create`, `group_add`, `group_remove`: a
    /// change the group's home decides on.
    Group {
        /// The group.
        group_id: &'a str,
        /// What is asked.
        request: GroupRequest,
    },
    /// `group_message {messageId, groupId, content, messageType?, priority?}`.
    GroupMessage(Text<'a>),
    /// `signal {receiverId, callId, kind, payload?}`: call signaling, relayed, never queued.
    /// For `huddle:*` kinds `receiverId` names the group whose huddle it is.
    Signal {
        /// The receiving user (or group, for huddles).
        receiver_id: &'a str,
        /// The call (or huddle room).
        call_id: &'a str,
        /// One of [`SIGNAL_KINDS`], or `huddle:…`.
        kind: &'a str,
        /// The payload as JSON text (`null` when absent), relayed as it came.
        payload: Vec<u8>,
    },
    /// `message_edit`, `message_delete`, `reaction_add`, `reaction_remove`.
    Amend {
        /// The message.
        message_id: &'a str,
        /// The other side of the conversation.
        receiver_id: &'a str,
        /// What changes.
        change: Change<'a>,
    },
    /// `presence_subscribe {userIds}`.
    PresenceSubscribe {
        /// The users named.
        user_ids: Vec<&'a str>,
    },
    /// `presence_unsubscribe {userIds}`.
    PresenceUnsubscribe {
        /// The users named.
        user_ids: Vec<&'a str>,
    },
}

/// A change to a message already sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// New text (by its sender).
    Edit(&'a str),
    /// Deleted (by its sender).
    Delete,
    /// An emoji reaction added (by either side).
    ReactionAdd(&'a str),
    /// An emoji reaction removed.
    ReactionRemove(&'a str),
}

impl Change<'_> {
    /// The event the other side gets: `message_edited`, `message_deleted`, ….
    pub fn event(&self) -> OutKind {
        match self {
            Change::Edit(_) => OutKind::MessageEdited,
            Change::Delete => OutKind::MessageDeleted,
            Change::ReactionAdd(_) => OutKind::ReactionAdded,
            Change::ReactionRemove(_) => OutKind::ReactionRemoved,
        }
    }
}

/// The `signal` kinds of PROTOCOL.md besides `huddle:*`.
pub const SIGNAL_KINDS: [&str; 7] = [
    "call:initiate",
    "call:answer",
    "call:reject",
    "call:end",
    "webrtc:offer",
    "webrtc:answer",
    "webrtc:ice-candidate",
];
/// The longest `huddle:*` kind or emoji accepted, in bytes.
pub const TAG_BYTES_MAX: usize = 64;

impl ClientMessage<'_> {
    /// The wire `type`, for counting.
    pub fn kind(&self) -> MessageKind {
        match self {
            ClientMessage::Auth { .. } => MessageKind::Auth,
            ClientMessage::AuthRefresh { .. } => MessageKind::AuthRefresh,
            ClientMessage::Ack { .. } => MessageKind::Ack,
            ClientMessage::Ping { .. } => MessageKind::Ping,
            ClientMessage::SendMessage(_) => MessageKind::SendMessage,
            ClientMessage::Typing { .. } => MessageKind::Typing,
            ClientMessage::ReadReceipt { .. } => MessageKind::ReadReceipt,
            ClientMessage::History { .. } => MessageKind::History,
            ClientMessage::Group { request, .. } => match request {
                GroupRequest::Join { .. } => MessageKind::GroupJoin,
                GroupRequest::Leave => MessageKind::GroupLeave,
                GroupRequest::Create { .. } => MessageKind::GroupCreate,
                GroupRequest::Add { .. } => MessageKind::GroupAdd,
                GroupRequest::Remove { .. } => MessageKind::GroupRemove,
            },
            ClientMessage::GroupMessage(_) => MessageKind::GroupMessage,
            ClientMessage::Signal { .. } => MessageKind::Signal,
            ClientMessage::Amend { change, .. } => match change {
                Change::Edit(_) => MessageKind::MessageEdit,
                Change::Delete => MessageKind::MessageDelete,
                Change::ReactionAdd(_) => MessageKind::ReactionAdd,
                Change::ReactionRemove(_) => MessageKind::ReactionRemove,
            },
            ClientMessage::PresenceSubscribe { .. } => MessageKind::PresenceSubscribe,
            ClientMessage::PresenceUnsubscribe { .. } => MessageKind::PresenceUnsubscribe,
        }
    }
}

/// Why a message was refused; sent back as `error {code, message, ref}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// Why: `bad_json`, `bad_request` or `unknown_type`.
    pub code: ErrorCode,
    /// A human-readable explanation naming the field at fault.
    pub message: Cow<'static, str>,
    /// The `messageId` of the refused message, when it had one.
    pub reference: Option<String>,
}

impl ProtocolError {
    /// An error with `code` and `message` and no reference.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            reference: None,
        }
    }

    fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        ProtocolError::new(ErrorCode::BadRequest, message)
    }
}

/// Per-reactor parsing state reused for every message: simd-json's buffers and tape.
pub struct JsonParser {
    buffers: Buffers,
    tape: Option<Tape<'static>>,
}

impl Default for JsonParser {
    fn default() -> Self {
        JsonParser {
            buffers: Buffers::new(4096),
            tape: Some(Tape::null()),
        }
    }
}

impl JsonParser {
    /// Parses one text payload in place (it is overwritten by simd-json).
    ///
    /// Hot path: reuses the reactor's buffers and tape; allocates only for
    /// `presence_*` id lists and for errors.
    pub fn parse<'de>(
        &mut self,
        payload: &'de mut [u8],
    ) -> Result<ClientMessage<'de>, ProtocolError> {
        let mut tape = self.tape.take().unwrap_or_else(Tape::null).reset::<'de>();
        let result = match simd_json::fill_tape(payload, &mut self.buffers, &mut tape) {
            Ok(()) => decode(tape.as_value()),
            Err(e) => Err(ProtocolError::new(
                ErrorCode::BadJson,
                format!("invalid JSON: {e}"),
            )),
        };
        self.tape = Some(tape.reset());
        result
    }
}

fn decode<'t, 'de: 't>(root: Value<'t, 'de>) -> Result<ClientMessage<'de>, ProtocolError> {
    if !root.is_object() {
        return Err(ProtocolError::new(
            ErrorCode::BadJson,
            "a message must be a JSON object",
        ));
    }
    let kind = match root.get("type") {
        Some(v) => v
            .into_string()
            .ok_or_else(|| ProtocolError::bad_request("field 'type' must be a string"))?,
        None => return Err(ProtocolError::bad_request("missing field 'type'")),
    };
    let root = &root;
    let message = match kind {
        "auth" => decode_auth(root).map_err(auth_failure)?,
        "auth_refresh" => ClientMessage::AuthRefresh {
            token: req_str(root, "token").map_err(auth_failure)?,
        },
        "ack" => ClientMessage::Ack {
            seq: match root.get("seq") {
                Some(v) => v.as_u64().ok_or_else(|| {
                    ProtocolError::bad_request("field 'seq' must be a non-negative integer")
                })?,
                None => return Err(ProtocolError::bad_request("missing field 'seq'")),
            },
        },
        "ping" => ClientMessage::Ping {
            ts: root.get("ts").and_then(scalar),
        },
        "send_message" | "group_message" => decode_text(root, kind)?,
        "group_join" | "group_leave" | "group_create" | "group_add" | "group_remove" => {
            decode_group(root, kind)?
        }
        "signal" => decode_signal(root)?,
        "message_edit" | "message_delete" | "reaction_add" | "reaction_remove" => {
            decode_amend(root, kind)?
        }
        "typing" => decode_typing(root)?,
        "read_receipt" => ClientMessage::ReadReceipt {
            message_id: id(root, "messageId")?,
            sender_id: match root.get("senderId") {
                None => None,
                Some(_) => Some(id(root, "senderId")?),
            },
        },
        "history" => decode_history(root)?,
        "presence_subscribe" => ClientMessage::PresenceSubscribe {
            user_ids: id_list(root)?,
        },
        "presence_unsubscribe" => ClientMessage::PresenceUnsubscribe {
            user_ids: id_list(root)?,
        },
        other => {
            let mut shown = other.to_owned();
            shown.truncate(ID_BYTES_MAX);
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!("unknown message type '{shown}'"),
            ));
        }
    };
    Ok(message)
}

/// A group request (`kind` is its type); errors carry the `groupId` as `ref`.
fn decode_group<'t, 'de: 't>(
    root: &Value<'t, 'de>,
    kind: &str,
) -> Result<ClientMessage<'de>, ProtocolError> {
    let group_id = id(root, "groupId")?;
    let with_ref = refers_to(group_id);
    let request = match kind {
        "group_join" => GroupRequest::Join {
            token_grants: false,
        },
        "group_leave" => GroupRequest::Leave,
        "group_create" => GroupRequest::Create {
            invite: match opt_str(root, "access").map_err(with_ref)? {
                None | Some("open") => false,
                Some("invite") => true,
                Some(_) => {
                    let text = "field 'access' must be open or invite";
                    return Err(with_ref(ProtocolError::bad_request(text)));
                }
            },
        },
        "group_add" => GroupRequest::Add {
            user: id(root, "userId").map_err(with_ref)?.into(),
            role: match opt_str(root, "role").map_err(with_ref)? {
                None => None,
                Some("member") => Some(Role::Member),
                Some("admin") => Some(Role::Admin),
                Some(_) => {
                    let text = "field 'role' must be admin or member";
                    return Err(with_ref(ProtocolError::bad_request(text)));
                }
            },
        },
        _ => GroupRequest::Remove {
            user: id(root, "userId").map_err(with_ref)?.into(),
        },
    };
    Ok(ClientMessage::Group { group_id, request })
}

/// `auth {userId, deviceId, token?, resume?}`.
fn decode_auth<'t, 'de: 't>(root: &Value<'t, 'de>) -> Result<ClientMessage<'de>, ProtocolError> {
    Ok(ClientMessage::Auth {
        user_id: id(root, "userId")?,
        device_id: id(root, "deviceId")?,
        token: opt_str(root, "token")?,
        resume: decode_resume(root)?,
    })
}

/// Any fault in `auth` or `auth_refresh` is `auth_failed` (PROTOCOL.md: missing fields
/// too), which closes the connection with 1008.
fn auth_failure(e: ProtocolError) -> ProtocolError {
    ProtocolError {
        code: ErrorCode::AuthFailed,
        ..e
    }
}

/// Gives an error the `ref` of the message it refuses.
fn refers_to(message_id: &str) -> impl Fn(ProtocolError) -> ProtocolError + Copy + '_ {
    move |e| ProtocolError {
        reference: Some(message_id.to_owned()),
        ..e
    }
}

/// `send_message` or `group_message` (`kind`); errors carry the `messageId`.
fn decode_text<'t, 'de: 't>(
    root: &Value<'t, 'de>,
    kind: &str,
) -> Result<ClientMessage<'de>, ProtocolError> {
    let message_id = id(root, "messageId")?;
    let with_ref = refers_to(message_id);
    let priority = match opt_str(root, "priority").map_err(with_ref)? {
        None => Priority::Normal,
        Some(name) => Priority::parse(name).ok_or_else(|| {
            with_ref(ProtocolError::bad_request(
                "field 'priority' must be high, normal or low",
            ))
        })?,
    };
    let to_group = kind == "group_message";
    let to = id(root, if to_group { "groupId" } else { "receiverId" }).map_err(with_ref)?;
    let content = req_str(root, "content").map_err(with_ref)?;
    let message_type = opt_str(root, "messageType")
        .map_err(with_ref)?
        .unwrap_or("text");
    let text = Text {
        message_id,
        to,
        content,
        message_type,
        priority,
    };
    Ok(if to_group {
        ClientMessage::GroupMessage(text)
    } else {
        ClientMessage::SendMessage(text)
    })
}

/// `signal`: a call kind, or `huddle:…`; the payload is kept as JSON text.
fn decode_signal<'t, 'de: 't>(root: &Value<'t, 'de>) -> Result<ClientMessage<'de>, ProtocolError> {
    let call_id = id(root, "callId")?;
    let kind = req_str(root, "kind")?;
    let huddle = kind
        .strip_prefix("huddle:")
        .is_some_and(|rest| !rest.is_empty() && kind.len() <= TAG_BYTES_MAX);
    if !huddle && !SIGNAL_KINDS.contains(&kind) {
        let mut shown = kind.to_owned();
        shown.truncate(TAG_BYTES_MAX);
        return Err(ProtocolError {
            reference: Some(call_id.to_owned()),
            ..ProtocolError::bad_request(format!(
                "field 'kind' must be one of {} or huddle:…, got '{shown}'",
                SIGNAL_KINDS.join(", ")
            ))
        });
    }
    let mut payload = Vec::new();
    match root.get("payload") {
        Some(value) => {
            super::json::write_value(&mut payload, value).map_err(|_| ProtocolError {
                reference: Some(call_id.to_owned()),
                ..ProtocolError::bad_request(format!(
                    "field 'payload' nests deeper than {} levels",
                    super::json::VALUE_DEPTH_MAX
                ))
            })?
        }
        None => payload.extend_from_slice(b"null"),
    }
    Ok(ClientMessage::Signal {
        receiver_id: id(root, "receiverId")?,
        call_id,
        kind,
        payload,
    })
}

/// `message_edit`, `message_delete`, `reaction_add` or `reaction_remove` (`kind`).
fn decode_amend<'t, 'de: 't>(
    root: &Value<'t, 'de>,
    kind: &str,
) -> Result<ClientMessage<'de>, ProtocolError> {
    let message_id = id(root, "messageId")?;
    let with_ref = refers_to(message_id);
    let emoji = || -> Result<&str, ProtocolError> {
        let emoji = req_str(root, "emoji").map_err(with_ref)?;
        if emoji.is_empty() || emoji.len() > TAG_BYTES_MAX {
            return Err(with_ref(ProtocolError::bad_request(format!(
                "field 'emoji' must be 1 to {TAG_BYTES_MAX} bytes"
            ))));
        }
        Ok(emoji)
    };
    let change = match kind {
        "message_edit" => Change::Edit(req_str(root, "content").map_err(with_ref)?),
        "message_delete" => Change::Delete,
        "reaction_add" => Change::ReactionAdd(emoji()?),
        _ => Change::ReactionRemove(emoji()?),
    };
    Ok(ClientMessage::Amend {
        message_id,
        receiver_id: id(root, "receiverId").map_err(with_ref)?,
        change,
    })
}

/// `resume {epoch, seq}` in `auth`; a bad shape fails the `auth` (`auth_failed`, which
/// closes the connection), naming the field.
fn decode_resume<'t, 'de: 't>(root: &Value<'t, 'de>) -> Result<Option<Resume<'de>>, ProtocolError> {
    let failed = |text: &str| ProtocolError::new(ErrorCode::AuthFailed, text.to_owned());
    let resume = match root.get("resume") {
        None => return Ok(None),
        Some(v) if v.is_null() => return Ok(None),
        Some(v) if v.is_object() => v,
        Some(_) => return Err(failed("field 'resume' must be an object {epoch, seq}")),
    };
    let epoch = match resume.get("epoch") {
        Some(v) => v.into_string().filter(|e| e.len() <= EPOCH_BYTES_MAX),
        None => None,
    }
    .ok_or_else(|| {
        failed(&format!(
            "field 'resume.epoch' must be a string of at most {EPOCH_BYTES_MAX} bytes"
        ))
    })?;
    let seq = resume
        .get("seq")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| failed("field 'resume.seq' must be a non-negative integer"))?;
    Ok(Some(Resume { epoch, seq }))
}

/// `typing {receiverId, isTyping}`.
fn decode_typing<'t, 'de: 't>(root: &Value<'t, 'de>) -> Result<ClientMessage<'de>, ProtocolError> {
    Ok(ClientMessage::Typing {
        receiver_id: id(root, "receiverId")?,
        is_typing: match root.get("isTyping") {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ProtocolError::bad_request("field 'isTyping' must be a boolean"))?,
            None => return Err(ProtocolError::bad_request("missing field 'isTyping'")),
        },
    })
}

/// `history {peerId, before?, limit?}`.
fn decode_history<'t, 'de: 't>(root: &Value<'t, 'de>) -> Result<ClientMessage<'de>, ProtocolError> {
    Ok(ClientMessage::History {
        peer_id: id(root, "peerId")?,
        before: match root.get("before") {
            None => None,
            Some(v) if v.is_null() => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ProtocolError::bad_request("field 'before' must be a timestamp in ms (an integer)")
            })?),
        },
        limit: match root.get("limit") {
            None => HISTORY_LIMIT_DEFAULT,
            Some(v) => match v.as_u64() {
                Some(n @ 1..) if n as usize <= HISTORY_LIMIT_MAX => n as usize,
                _ => {
                    return Err(ProtocolError::bad_request(format!(
                        "field 'limit' must be an integer from 1 to {HISTORY_LIMIT_MAX}"
                    )))
                }
            },
        },
    })
}

fn req_str<'t, 'de: 't>(
    root: &Value<'t, 'de>,
    key: &'static str,
) -> Result<&'de str, ProtocolError> {
    opt_str(root, key)?.ok_or_else(|| ProtocolError::bad_request(format!("missing field '{key}'")))
}

fn opt_str<'t, 'de: 't>(
    root: &Value<'t, 'de>,
    key: &'static str,
) -> Result<Option<&'de str>, ProtocolError> {
    match root.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .ok_or_else(|| ProtocolError::bad_request(format!("field '{key}' must be a string"))),
    }
}

/// A required id, as the id rule allows (`super::ids`).
fn id<'t, 'de: 't>(root: &Value<'t, 'de>, key: &'static str) -> Result<&'de str, ProtocolError> {
    let value = req_str(root, key)?;
    check_id(value, key)
}

fn check_id<'de>(value: &'de str, key: &'static str) -> Result<&'de str, ProtocolError> {
    match super::ids::check(value) {
        Ok(()) => Ok(value),
        Err(e) => Err(ProtocolError::bad_request(format!("field '{key}' {e}"))),
    }
}

fn id_list<'t, 'de: 't>(root: &Value<'t, 'de>) -> Result<Vec<&'de str>, ProtocolError> {
    let array = match root.get("userIds") {
        Some(v) => v
            .as_array()
            .ok_or_else(|| ProtocolError::bad_request("field 'userIds' must be an array"))?,
        None => return Err(ProtocolError::bad_request("missing field 'userIds'")),
    };
    if array.len() > PRESENCE_IDS_MAX {
        return Err(ProtocolError::bad_request(format!(
            "field 'userIds' may name at most {PRESENCE_IDS_MAX} users"
        )));
    }
    let mut ids = Vec::with_capacity(array.len());
    for item in array.iter() {
        let user = item
            .into_string()
            .ok_or_else(|| ProtocolError::bad_request("field 'userIds' must hold strings"))?;
        ids.push(check_id(user, "userIds")?);
    }
    Ok(ids)
}

fn scalar<'de>(value: Value<'_, 'de>) -> Option<Scalar<'de>> {
    if let Some(s) = value.into_string() {
        Some(Scalar::Str(s))
    } else if let Some(i) = value.as_i64() {
        Some(Scalar::Int(i))
    } else if let Some(u) = value.as_u64() {
        Some(Scalar::Uint(u))
    } else {
        value.as_f64().map(Scalar::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<ClientMessage<'static>, ProtocolError> {
        let buf: &'static mut [u8] = text.as_bytes().to_vec().leak();
        JsonParser::default().parse(buf)
    }

    #[test]
    fn parses_auth_with_and_without_token() {
        assert_eq!(
            parse(r#"{"type":"auth","userId":"u1","deviceId":"phone","extra":1}"#),
            Ok(ClientMessage::Auth {
                user_id: "u1",
                device_id: "phone",
                token: None,
                resume: None,
            })
        );
        assert_eq!(
            parse(r#"{"type":"auth","userId":"u\"1","deviceId":"d","token":"t"}"#),
            Ok(ClientMessage::Auth {
                user_id: "u\"1",
                device_id: "d",
                token: Some("t"),
                resume: None,
            })
        );
    }

    #[test]
    fn parses_resume_and_ack_and_names_a_bad_field() {
        let auth = r#"{"type":"auth","userId":"u","deviceId":"d","resume":{"epoch":"e1","seq":7}}"#;
        assert_eq!(
            parse(auth),
            Ok(ClientMessage::Auth {
                user_id: "u",
                device_id: "d",
                token: None,
                resume: Some(Resume {
                    epoch: "e1",
                    seq: 7
                }),
            })
        );
        for (bad, field) in [
            (r#""resume":5"#, "'resume'"),
            (r#""resume":{"seq":1}"#, "'resume.epoch'"),
            (r#""resume":{"epoch":"e","seq":-1}"#, "'resume.seq'"),
            (r#""resume":{"epoch":"e","seq":"7"}"#, "'resume.seq'"),
        ] {
            let text = format!(r#"{{"type":"auth","userId":"u","deviceId":"d",{bad}}}"#);
            let e = parse(&text).unwrap_err();
            assert_eq!(e.code, ErrorCode::AuthFailed, "{text}");
            assert!(e.message.contains(field), "{text}: {}", e.message);
        }
        assert_eq!(
            parse(r#"{"type":"ack","seq":12}"#),
            Ok(ClientMessage::Ack { seq: 12 })
        );
        for bad in [
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","seq":-3}"#,
            r#"{"type":"ack","seq":"x"}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn parses_send_message_with_defaults() {
        let msg =
            parse(r#"{"type":"send_message","messageId":"m1","receiverId":"u2","content":"hi"}"#);
        assert_eq!(
            msg,
            Ok(ClientMessage::SendMessage(Text {
                message_id: "m1",
                to: "u2",
                content: "hi",
                message_type: "text",
                priority: Priority::Normal
            }))
        );
    }

    #[test]
    fn parses_groups_signals_and_amendments() {
        assert_eq!(
            parse(r#"{"type":"group_message","messageId":"m","groupId":"g","content":"hi"}"#),
            Ok(ClientMessage::GroupMessage(Text {
                message_id: "m",
                to: "g",
                content: "hi",
                message_type: "text",
                priority: Priority::Normal
            }))
        );
        assert_eq!(
            parse(r#"{"type":"group_leave","groupId":"g"}"#),
            Ok(ClientMessage::Group {
                group_id: "g",
                request: GroupRequest::Leave
            })
        );
        assert_eq!(
            parse(r#"{"type":"group_join","groupId":"g","tokenGrants":true}"#),
            Ok(ClientMessage::Group {
                group_id: "g",
                request: GroupRequest::Join {
                    token_grants: false
                }
            }),
            "only the session grants"
        );
        assert_eq!(
            parse(r#"{"type":"group_create","groupId":"g","access":"invite"}"#),
            Ok(ClientMessage::Group {
                group_id: "g",
                request: GroupRequest::Create { invite: true }
            })
        );
        assert_eq!(
            parse(r#"{"type":"group_create","groupId":"g"}"#),
            Ok(ClientMessage::Group {
                group_id: "g",
                request: GroupRequest::Create { invite: false }
            })
        );
        assert_eq!(
            parse(r#"{"type":"group_add","groupId":"g","userId":"u","role":"admin"}"#),
            Ok(ClientMessage::Group {
                group_id: "g",
                request: GroupRequest::Add {
                    user: "u".into(),
                    role: Some(Role::Admin)
                }
            })
        );
        assert_eq!(
            parse(r#"{"type":"group_remove","groupId":"g","userId":"u"}"#),
            Ok(ClientMessage::Group {
                group_id: "g",
                request: GroupRequest::Remove { user: "u".into() }
            })
        );
        for (bad, field) in [
            (
                r#"{"type":"group_create","groupId":"g","access":"secret"}"#,
                "access",
            ),
            (
                r#"{"type":"group_add","groupId":"g","userId":"u","role":"owner"}"#,
                "role",
            ),
            (r#"{"type":"group_add","groupId":"g"}"#, "userId"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.message.contains(field), "{bad}: {err:?}");
            assert_eq!(err.reference.as_deref(), Some("g"), "{bad}");
        }
        let signal = parse(
            r#"{"type":"signal","receiverId":"b","callId":"c1","kind":"webrtc:offer","payload":{"sdp":"v=0"}}"#,
        );
        assert_eq!(
            signal,
            Ok(ClientMessage::Signal {
                receiver_id: "b",
                call_id: "c1",
                kind: "webrtc:offer",
                payload: br#"{"sdp":"v=0"}"#.to_vec()
            })
        );
        let huddle =
            parse(r#"{"type":"signal","receiverId":"g","callId":"h","kind":"huddle:raise-hand"}"#);
        assert!(matches!(huddle, Ok(ClientMessage::Signal { payload, .. }) if payload == b"null"));
        let err = parse(r#"{"type":"signal","receiverId":"b","callId":"c1","kind":"call:dance"}"#)
            .unwrap_err();
        assert!(
            err.message.contains("kind") && err.reference.as_deref() == Some("c1"),
            "{err:?}"
        );
        assert!(
            parse(r#"{"type":"signal","receiverId":"b","callId":"c","kind":"huddle:"}"#).is_err()
        );
        assert_eq!(
            parse(r#"{"type":"reaction_add","messageId":"m","receiverId":"a","emoji":"👍"}"#),
            Ok(ClientMessage::Amend {
                message_id: "m",
                receiver_id: "a",
                change: Change::ReactionAdd("👍")
            })
        );
        let err =
            parse(r#"{"type":"reaction_remove","messageId":"m","receiverId":"a","emoji":""}"#)
                .unwrap_err();
        assert!(err.message.contains("emoji"));
        let err = parse(r#"{"type":"message_edit","messageId":"m","receiverId":"a"}"#).unwrap_err();
        assert!(err.message.contains("content") && err.reference.as_deref() == Some("m"));
    }

    #[test]
    fn errors_name_the_field_and_carry_the_reference() {
        let err =
            parse(r#"{"type":"send_message","messageId":"m9","receiverId":"u2"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("content"));
        assert_eq!(err.reference.as_deref(), Some("m9"));
        let err = parse(r#"{"type":"send_message","messageId":"m9","receiverId":"u2","content":"x","priority":"urgent"}"#)
            .unwrap_err();
        assert!(err.message.contains("priority"));
        assert_eq!(
            parse(r#"{"type":"typing","receiverId":"u2","isTyping":"yes"}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
        for auth in [
            r#"{"type":"auth","userId":"","deviceId":"d"}"#,
            r#"{"type":"auth","deviceId":"d"}"#,
            r#"{"type":"auth","userId":"\u202Enimda","deviceId":"d"}"#,
            r#"{"type":"auth","userId":"u","deviceId":"d","resume":5}"#,
        ] {
            // Any fault in auth fails it (and closes the connection).
            assert_eq!(
                parse(auth).unwrap_err().code,
                ErrorCode::AuthFailed,
                "{auth}"
            );
        }
        let err =
            parse(r#"{"type":"send_message","messageId":"m","receiverId":"a\nb","content":"x"}"#)
                .unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(
            err.message
                .contains("'receiverId' must hold only printable"),
            "{err:?}"
        );
        assert_eq!(
            parse(r#"{"type":5}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse(r#"{"no":"type"}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn classifies_bad_json_and_unknown_types() {
        assert_eq!(parse("{not json").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(parse("[1,2]").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(
            parse(r#"{"type":"dance"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
    }

    #[test]
    fn presence_lists_are_bounded() {
        let ids: Vec<String> = (0..=PRESENCE_IDS_MAX)
            .map(|i| format!("\"u{i}\""))
            .collect();
        let text = format!(
            r#"{{"type":"presence_subscribe","userIds":[{}]}}"#,
            ids.join(",")
        );
        assert_eq!(parse(&text).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(
            parse(r#"{"type":"presence_subscribe","userIds":["a","b"]}"#),
            Ok(ClientMessage::PresenceSubscribe {
                user_ids: vec!["a", "b"]
            })
        );
    }

    #[test]
    fn ping_echoes_any_scalar() {
        assert_eq!(
            parse(r#"{"type":"ping","ts":123}"#),
            Ok(ClientMessage::Ping {
                ts: Some(Scalar::Int(123))
            })
        );
        assert_eq!(
            parse(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { ts: None })
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"type":"ping","ts":{}{}}}"#,
            "[".repeat(60_000),
            "]".repeat(60_000)
        );
        // Parsed without recursion; a non-scalar ts is simply not echoed.
        assert_eq!(parse(&deep), Ok(ClientMessage::Ping { ts: None }));
        let unclosed = "[".repeat(65_000);
        assert_eq!(parse(&unclosed).unwrap_err().code, ErrorCode::BadJson);
    }

    #[test]
    fn one_parser_serves_many_messages() {
        let mut parser = JsonParser::default();
        for i in 0..100 {
            let mut text =
                format!(r#"{{"type":"typing","receiverId":"u{i}","isTyping":true}}"#).into_bytes();
            let expected = format!("u{i}");
            match parser.parse(&mut text) {
                Ok(ClientMessage::Typing { receiver_id, .. }) => assert_eq!(receiver_id, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_gets_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = bytes;
            let _ = JsonParser::default().parse(&mut bytes);
        }

        #[test]
        fn send_message_round_trips(content in any::<String>(), id in "[a-z0-9]{1,20}") {
            let mut out = Vec::new();
            super::super::json::Obj::new(&mut out).str("type", "send_message").str("messageId", &id)
                .str("receiverId", "bob").str("content", &content).end();
            match JsonParser::default().parse(&mut out) {
                Ok(ClientMessage::SendMessage(Text { message_id, content: c, .. })) => {
                    prop_assert_eq!(message_id, id.as_str());
                    prop_assert_eq!(c, content.as_str());
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
