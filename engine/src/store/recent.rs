//! The direct messages the inboxes received lately, read once at start so that each home
//! reactor's dedup window begins with them: a sender's retry after a restart of a message
//! an inbox holds is then confirmed, not delivered to the receiver's devices again.

use std::{cmp::Reverse, collections::BinaryHeap};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::{
    inbox::{decode, Heads, POST_FLAG},
    schema::INBOX,
};
use crate::protocol::codes::OutKind;

/// A direct message in an inbox, as its home's dedup window keys it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentPair {
    /// The inbox's user: the receiver, or the sender for the copy to its other devices.
    pub user: Box<str>,
    /// Who sent it.
    pub sender: Box<str>,
    /// The sender's id for it.
    pub message_id: Box<str>,
    /// The copy to the sender's other devices (keyed apart from the message).
    pub copy: bool,
    /// When it was appended (Unix ms).
    pub at_ms: u64,
    /// Whether a device of the user acknowledged it.
    pub delivered: bool,
}

/// The ids a `new_message` event carries.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ids {
    message_id: Box<str>,
    sender_id: Box<str>,
    receiver_id: Box<str>,
    group_id: Option<serde::de::IgnoredAny>,
}

/// A row kept for the answer: `(appended at, user, seq, body)`, ordered by time.
type Kept = Reverse<(u64, Box<str>, u64, Vec<u8>)>;

/// The newest `cap` direct messages appended at `since_ms` or later, oldest first. One
/// pass over the inbox that reads each row's header; only the rows kept are parsed, so
/// the work beyond the pass and the memory are bounded by `cap`.
pub(super) fn recent_pairs(
    db: &Database,
    heads: &Heads,
    since_ms: u64,
    cap: usize,
) -> Result<Vec<RecentPair>, redb::Error> {
    let read = db.begin_read()?;
    let inbox = read.open_table(INBOX)?;
    // The oldest kept on top, to be dropped first when a newer row comes.
    let mut newest: BinaryHeap<Kept> = BinaryHeap::new();
    for entry in inbox.iter()? {
        let (key, value) = entry?;
        let (kind, flags, _, at_ms, body) = decode(value.value());
        if kind != OutKind::NewMessage || flags & POST_FLAG != 0 || at_ms < since_ms {
            continue;
        }
        if newest.len() == cap {
            match newest.peek() {
                Some(Reverse((oldest, ..))) if *oldest < at_ms => {
                    newest.pop();
                }
                _ => continue,
            }
        }
        let (user, seq) = key.value();
        newest.push(Reverse((at_ms, user.into(), seq, body.to_vec())));
    }
    let mut rows: Vec<_> = newest.into_iter().map(|Reverse(row)| row).collect();
    rows.sort_unstable_by_key(|row| row.0);
    Ok(rows
        .into_iter()
        .filter_map(|(at_ms, user, seq, body)| {
            let acked = heads.of(&user).acked;
            RecentPair::of_row(&user, seq <= acked, at_ms, &body)
        })
        .collect())
}

impl RecentPair {
    /// The pair an inbox row of `user` holds, if it is a direct message: `body` is the
    /// row's `new_message` JSON, `delivered` whether a device acknowledged the row.
    /// `None` for a group post (kept apart from direct messages' dedup) or a row that
    /// does not parse. Public for the simulator's store, which keeps inboxes its own way.
    pub fn of_row(user: &str, delivered: bool, at_ms: u64, body: &[u8]) -> Option<RecentPair> {
        let ids: Ids = serde_json::from_slice(body).ok()?;
        if ids.group_id.is_some() {
            return None;
        }
        let copy = *ids.receiver_id != *user;
        if copy && *ids.sender_id != *user {
            return None;
        }
        Some(RecentPair {
            user: user.into(),
            sender: ids.sender_id,
            message_id: ids.message_id,
            copy,
            at_ms,
            delivered,
        })
    }
}
