//! The message index, bucket `chat_received`: each chat message by its receiver and id,
//! with its sender and inbox `seq` as the value. History writes it ([`super::history`]);
//! inboxes read it before an append, to recognise a retry ([`super::inboxes`]). Here are
//! its names and its key and value formats, which both share.

use super::relay::{from_subject_token, key_token};

/// The key-value bucket of the message index.
pub(super) const INDEX_BUCKET: &str = "chat_received";
/// Its stream.
pub(super) const INDEX_STREAM: &str = "KV_chat_received";

/// The index key of message `message_id` received by `receiver`.
pub(super) fn index_key(receiver: &str, message_id: &str) -> String {
    format!("{}.{}", key_token(receiver), key_token(message_id))
}

/// A direct get of index key `key`'s value.
pub(super) fn index_get(key: &str) -> Vec<u8> {
    serde_json::json!({"last_by_subj": format!("$KV.{INDEX_BUCKET}.{key}")})
        .to_string()
        .into_bytes()
}

/// The sender an index value (`<sender> <seq>`) names.
pub(super) fn parse_index(payload: &[u8]) -> Option<Box<str>> {
    let value = std::str::from_utf8(payload).ok()?;
    from_subject_token(value.split(' ').next()?)
}
