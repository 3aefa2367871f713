//! The backend integration API (`/api/*`, PROTOCOL.md "HTTP"): bearer-token checks and the
//! request bodies, parsed and validated into plain values. Knows nothing of reactors.
//!
//! Not a hot path: bodies are parsed with serde_json, errors carry owned messages.

use serde::Deserialize;
use serde_json::Value;

use crate::protocol::Priority;

/// The longest `message_type` accepted.
const MESSAGE_TYPE_BYTES_MAX: usize = 128;
/// The most users one broadcast may name.
pub const BROADCAST_USERS_MAX: usize = 100_000;

/// Why an API request is refused: the HTTP status, a stable code, and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code (`bad_json`, `bad_request`, `unauthorized`, ...).
    pub code: &'static str,
    /// What a client author needs to fix it.
    pub message: String,
}

impl ApiError {
    /// A 400 `bad_request` with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            code: "bad_request",
            message: message.into(),
        }
    }
}

/// Whether `authorization` (the header's value) carries `token` as a bearer token.
/// Compared in constant time, so the answer's timing does not leak the token.
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let (given, token) = (given.trim().as_bytes(), token.as_bytes());
    given.len() == token.len() && given.iter().zip(token).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// `POST /api/messages/send`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// Who the message is from.
    pub sender_id: String,
    /// Who it is for.
    pub receiver_id: String,
    /// The text.
    pub text: String,
    /// `text` unless given.
    pub message_type: String,
    /// `normal` unless given.
    pub priority: Priority,
}

/// The fields a message carries in both `send` and `broadcast` bodies.
#[derive(Deserialize)]
struct MessageFields {
    sender_id: Option<Value>,
    receiver_id: Option<Value>,
    text: Option<Value>,
    message_type: Option<Value>,
    priority: Option<Value>,
}

/// Parses a `send` body.
pub fn parse_send(body: &[u8]) -> Result<SendRequest, ApiError> {
    let fields: MessageFields = parse_json(body)?;
    let sender_id = id(fields.sender_id.as_ref(), "sender_id")?;
    let receiver_id = id(fields.receiver_id.as_ref(), "receiver_id")?;
    let (text, message_type, priority) = content(&fields)?;
    Ok(SendRequest {
        sender_id,
        receiver_id,
        text,
        message_type,
        priority,
    })
}

/// `POST /api/messages/broadcast`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastRequest {
    /// Who the message is from.
    pub sender_id: String,
    /// The text.
    pub text: String,
    /// `text` unless given.
    pub message_type: String,
    /// `normal` unless given.
    pub priority: Priority,
    /// The users to reach; `None` means every online user.
    pub user_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct BroadcastBody {
    message: Option<MessageFields>,
    user_ids: Option<Vec<Value>>,
    all: Option<bool>,
}

/// Parses a `broadcast` body: a message and either `user_ids` or `"all": true`.
pub fn parse_broadcast(body: &[u8]) -> Result<BroadcastRequest, ApiError> {
    let parsed: BroadcastBody = parse_json(body)?;
    let Some(message) = parsed.message else {
        return Err(ApiError::bad_request("missing field 'message'"));
    };
    let sender_id = id(message.sender_id.as_ref(), "message.sender_id")?;
    let (text, message_type, priority) = content(&message)?;
    let user_ids = match (parsed.user_ids, parsed.all) {
        (Some(_), Some(true)) => {
            return Err(ApiError::bad_request(
                "give either 'user_ids' or 'all': true, not both",
            ))
        }
        (Some(ids), _) => {
            if ids.len() > BROADCAST_USERS_MAX {
                return Err(ApiError::bad_request(format!(
                    "at most {BROADCAST_USERS_MAX} user_ids per broadcast"
                )));
            }
            let ids = ids
                .iter()
                .map(|v| id(Some(v), "user_ids[]"))
                .collect::<Result<Vec<_>, _>>()?;
            Some(ids)
        }
        (None, Some(true)) => None,
        (None, _) => {
            return Err(ApiError::bad_request(
                "missing 'user_ids' (or \"all\": true)",
            ))
        }
    };
    Ok(BroadcastRequest {
        sender_id,
        text,
        message_type,
        priority,
        user_ids,
    })
}

/// A body as the JSON object `T`, or a 400 `bad_json` naming what is wrong.
pub(super) fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError {
        status: 400,
        code: "bad_json",
        message: format!("the body is not the expected JSON object: {e}"),
    })
}

/// An id: a non-empty string, or an integer (seed 001 uses integers), as a string.
pub(super) fn id(value: Option<&Value>, field: &str) -> Result<String, ApiError> {
    let text = match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "'{field}' must be a string or an integer"
            )))
        }
        None => return Err(ApiError::bad_request(format!("missing field '{field}'"))),
    };
    check_id(&text, field)?;
    Ok(text)
}

/// An id as the WebSocket takes it (`protocol::ids`): the API cannot name a user who could
/// never log in.
pub fn check_id(id: &str, field: &str) -> Result<(), ApiError> {
    crate::protocol::ids::check(id).map_err(|e| ApiError::bad_request(format!("'{field}' {e}")))
}

/// The text, message type and priority of a message.
fn content(fields: &MessageFields) -> Result<(String, String, Priority), ApiError> {
    let text = match &fields.text {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad_request("'text' must be a string")),
        None => return Err(ApiError::bad_request("missing field 'text'")),
    };
    let message_type = match &fields.message_type {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MESSAGE_TYPE_BYTES_MAX => s.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "'message_type' must be a short non-empty string",
            ))
        }
        None => "text".to_owned(),
    };
    let priority = match &fields.priority {
        Some(Value::String(s)) => Priority::parse(s).ok_or_else(|| {
            ApiError::bad_request("'priority' must be \"high\", \"normal\" or \"low\"")
        })?,
        Some(_) => return Err(ApiError::bad_request("'priority' must be a string")),
        None => Priority::Normal,
    };
    Ok((text, message_type, priority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }

    #[test]
    fn send_takes_string_or_integer_ids_and_defaults() {
        let sent = parse_send(br#"{"sender_id":1,"receiver_id":"u2","text":"hi"}"#).unwrap();
        assert_eq!(
            sent,
            SendRequest {
                sender_id: "1".into(),
                receiver_id: "u2".into(),
                text: "hi".into(),
                message_type: "text".into(),
                priority: Priority::Normal,
            }
        );
        let high = parse_send(
            br#"{"sender_id":"a","receiver_id":"b","text":"x","priority":"high","metadata":{"k":1}}"#,
        )
        .unwrap();
        assert_eq!(high.priority, Priority::High);
    }

    #[test]
    fn bad_send_bodies_name_the_problem() {
        let err = parse_send(b"{not json").unwrap_err();
        assert_eq!((err.status, err.code), (400, "bad_json"));
        let err = parse_send(br#"{"sender_id":"a","text":"x"}"#).unwrap_err();
        assert!(err.message.contains("receiver_id"), "{err:?}");
        let err = parse_send(br#"{"sender_id":"a","receiver_id":[1],"text":"x"}"#).unwrap_err();
        assert!(err.message.contains("string or an integer"), "{err:?}");
        let err =
            parse_send(br#"{"sender_id":"a","receiver_id":"b","text":"x","priority":"urgent"}"#)
                .unwrap_err();
        assert!(err.message.contains("priority"), "{err:?}");
        assert_eq!(parse_send(b"[]").unwrap_err().code, "bad_json");
    }

    #[test]
    fn broadcast_takes_a_list_or_all() {
        let listed =
            parse_broadcast(br#"{"message":{"sender_id":"s","text":"t"},"user_ids":["a",2]}"#)
                .unwrap();
        assert_eq!(listed.user_ids, Some(vec!["a".to_owned(), "2".to_owned()]));
        let all =
            parse_broadcast(br#"{"message":{"sender_id":"s","text":"t"},"all":true}"#).unwrap();
        assert_eq!(all.user_ids, None);
        let err = parse_broadcast(br#"{"message":{"sender_id":"s","text":"t"}}"#).unwrap_err();
        assert!(err.message.contains("user_ids"), "{err:?}");
        let err = parse_broadcast(br#"{"user_ids":["a"]}"#).unwrap_err();
        assert!(err.message.contains("message"), "{err:?}");
    }

    proptest::proptest! {
        /// API bodies are client input: any bytes give a body or a named error, no panic.
        #[test]
        fn any_body_is_parsed_or_refused(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_send(&body);
            let _ = parse_broadcast(&body);
        }

        /// Any JSON object with arbitrary field values is parsed or refused, no panic.
        #[test]
        fn any_json_object_is_parsed_or_refused(
            fields in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..6),
        ) {
            let object: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
            let body = serde_json::to_vec(&object).unwrap();
            let _ = parse_send(&body);
            let _ = parse_broadcast(&body);
        }
    }
}
