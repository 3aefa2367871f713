//! The message index, buckets `chat_received_<shard>`: each chat message by its receiver
//! and id, in the receiver's shard ([`Shards`]), with its sender and inbox `seq` as the
//! value. History writes it ([`super::history`]);
//! inboxes read it before an append, to recognise a retry ([`super::inboxes`]). Here are
//! its names and its key and value formats, which both share.

use super::{
    relay::{from_subject_token, key_token},
    shards::Shards,
};

/// The key-value buckets of the message index: `chat_received_<shard>`.
const INDEX_BUCKET: &str = "chat_received";

/// Shard `shard`'s bucket.
pub(super) fn index_bucket(shard: u16) -> String {
    Shards::stream(INDEX_BUCKET, shard)
}

/// The stream of shard `shard`'s bucket.
pub(super) fn index_stream(shard: u16) -> String {
    format!("KV_{}", index_bucket(shard))
}

/// Message `message_id` received by `receiver` in the index: its shard and key.
pub(super) fn index_key(shards: Shards, receiver: &str, message_id: &str) -> IndexKey {
    IndexKey {
        shard: shards.of(receiver),
        key: format!("{}.{}", key_token(receiver), key_token(message_id)),
    }
}

/// Where one message is in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IndexKey {
    /// The receiver's shard.
    pub shard: u16,
    /// The key in its bucket: `<receiver>.<message id>`.
    pub key: String,
}

impl IndexKey {
    /// The subject of the key's value.
    pub(super) fn subject(&self) -> String {
        format!("$KV.{}.{}", index_bucket(self.shard), self.key)
    }

    /// The stream a direct get of it asks.
    pub(super) fn stream(&self) -> String {
        index_stream(self.shard)
    }

    /// A direct get of its value.
    pub(super) fn get(&self) -> Vec<u8> {
        serde_json::json!({"last_by_subj": self.subject()})
            .to_string()
            .into_bytes()
    }
}

/// The sender an index value (`<sender> <seq>`) names.
pub(super) fn parse_index(payload: &[u8]) -> Option<Box<str>> {
    let value = std::str::from_utf8(payload).ok()?;
    from_subject_token(value.split(' ').next()?)
}
