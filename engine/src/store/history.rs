//! Conversation history and the message index.
//!
//! - `history`: `(lower user, higher user, timestamp ms, sequence) → new_message JSON`.
//!   One conversation is one key prefix whatever its direction, read newest first by
//!   walking the prefix backwards; equal timestamps keep send order by sequence.
//! - `received`: `(receiver, messageId, sender) → (timestamp ms, sequence)`, pointing into
//!   `history`. It finds the sender of a message by id (`read_receipt` without
//!   `senderId`; ids are unique per sender, not globally) and recognises a message the
//!   store already holds (dedup that survives restarts).

use bytes::Bytes;

use super::{logged::Logged, Amendment, Chat, HISTORY_PAGE_BYTES_MAX};

/// A whole index key, where a sweep goes on from.
pub(super) type Cursor = (Box<str>, Box<str>, Box<str>);

/// The two tables as one batch sees them.
pub(super) struct Tables<'a> {
    /// Conversations.
    pub history: Logged<'a, (&'static str, &'static str, u64, u64), &'static [u8]>,
    /// The message index.
    pub received: Logged<'a, (&'static str, &'static str, &'static str), (u64, u64)>,
}

/// A conversation's key prefix: the two users in order, so both directions share it.
fn conversation<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl Tables<'_> {
    /// Whether `receiver` already has `message_id` from `sender` (delivered or queued).
    pub(super) fn holds(
        &self,
        receiver: &str,
        message_id: &str,
        sender: &str,
    ) -> Result<bool, redb::Error> {
        Ok(self.received.get((receiver, message_id, sender))?.is_some())
    }

    /// Keeps a chat message: its conversation entry and its index entry.
    pub(super) fn record(
        &mut self,
        receiver: &str,
        chat: &Chat,
        sequence: u64,
        payload: &[u8],
    ) -> Result<(), redb::Error> {
        let (low, high) = conversation(&chat.sender, receiver);
        let at = chat.timestamp_ms;
        self.history.insert((low, high, at, sequence), payload)?;
        self.received
            .insert((receiver, &*chat.message_id, &*chat.sender), (at, sequence))?;
        Ok(())
    }

    /// Up to `limit` messages and [`HISTORY_PAGE_BYTES_MAX`] of JSON between `user` and
    /// `peer` sent before `before` (Unix ms), newest first; the flag says whether older
    /// ones remain. A message bigger than the byte bound fills a page alone.
    ///
    /// The next page starts `before` the oldest timestamp of this one, so a page that is
    /// cut does not end inside a run of equal timestamps (unless the run fills it).
    pub(super) fn page(
        &self,
        user: &str,
        peer: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Bytes>, bool), redb::Error> {
        let (low, high) = conversation(user, peer);
        let end = before.unwrap_or(u64::MAX);
        let mut page = Page::new(limit);
        for entry in self
            .history
            .range_rev((low, high, 0, 0)..(low, high, end, 0))?
        {
            let (key, value) = entry?;
            let (_, _, at, _) = key.value();
            if !page.offer(at, Bytes::copy_from_slice(value.value())) {
                return Ok(page.finish(true));
            }
        }
        Ok(page.finish(false))
    }

    /// The sender of the newest message `message_id` that reached `reader`.
    pub(super) fn sender_of(
        &self,
        reader: &str,
        message_id: &str,
        named: Option<&str>,
    ) -> Result<Option<Box<str>>, redb::Error> {
        if let Some(sender) = named {
            let held = self.holds(reader, message_id, sender)?;
            return Ok(held.then(|| sender.into()));
        }
        let mut newest: Option<(u64, Box<str>)> = None;
        for entry in self.received.range((reader, message_id, "")..)? {
            let (key, value) = entry?;
            let (to, id, sender) = key.value();
            if to != reader || id != message_id {
                break;
            }
            let (at, _) = value.value();
            if newest.as_ref().is_none_or(|(best, _)| at >= *best) {
                newest = Some((at, sender.into()));
            }
        }
        Ok(newest.map(|(_, sender)| sender))
    }

    /// Applies `change` by `actor` to the message `message_id` of the conversation with
    /// `peer`; false when there is no such message (or an edit or delete does not come
    /// from its sender). Reactions may come from either side.
    pub(super) fn amend(
        &mut self,
        actor: &str,
        peer: &str,
        message_id: &str,
        change: &Amendment,
    ) -> Result<bool, redb::Error> {
        let own = self
            .received
            .get((peer, message_id, actor))?
            .map(|v| v.value());
        let reaction = matches!(
            change,
            Amendment::ReactionAdd(_) | Amendment::ReactionRemove(_)
        );
        let found = match own {
            Some(at) => Some(at),
            None if reaction => self
                .received
                .get((actor, message_id, peer))?
                .map(|v| v.value()),
            None => None,
        };
        let Some((at, sequence)) = found else {
            return Ok(false);
        };
        let (low, high) = conversation(actor, peer);
        let key = (low, high, at, sequence);
        let Some(stored) = self.history.get(key)?.map(|v| v.value().to_vec()) else {
            return Ok(false);
        };
        let mut message: serde_json::Value = serde_json::from_slice(&stored).unwrap_or_default();
        apply(&mut message, actor, change);
        let bytes = serde_json::to_vec(&message).unwrap_or(stored);
        self.history.insert(key, &bytes[..])?;
        Ok(true)
    }

    /// Removes up to `visit_max` index entries' worth of messages sent before `cutoff_ms`
    /// (index and conversation entry both), starting at `cursor`; returns how many were
    /// removed and where to go on from (`None` once the index is done).
    pub(super) fn sweep(
        &mut self,
        cursor: Option<Cursor>,
        cutoff_ms: u64,
        visit_max: usize,
    ) -> Result<(u64, Option<Cursor>), redb::Error> {
        type Expired = (Box<str>, Box<str>, Box<str>, u64, u64);
        let mut expired: Vec<Expired> = Vec::new();
        let mut next = None;
        {
            let range = match &cursor {
                Some((to, id, from)) => self.received.range((&**to, &**id, &**from)..)?,
                None => self.received.iter()?,
            };
            for (visited, entry) in range.enumerate() {
                let (key, value) = entry?;
                let (to, id, from) = key.value();
                if visited == visit_max {
                    next = Some((to.into(), id.into(), from.into()));
                    break;
                }
                let (at, sequence) = value.value();
                if at < cutoff_ms {
                    expired.push((to.into(), id.into(), from.into(), at, sequence));
                }
            }
        }
        for (to, id, from, at, sequence) in &expired {
            self.received.remove((&**to, &**id, &**from))?;
            let (low, high) = conversation(to, from);
            self.history.remove((low, high, *at, *sequence))?;
        }
        Ok((expired.len() as u64, next))
    }
}

/// A page of history as it fills, newest first: at most `limit` messages and
/// [`HISTORY_PAGE_BYTES_MAX`] of JSON, but at least one message however big. A page that
/// is cut does not end inside a run of equal timestamps (unless the run fills it), so the
/// next page can start `before` its oldest timestamp.
pub(crate) struct Page {
    limit: usize,
    messages: Vec<(u64, Bytes)>,
    bytes: usize,
}

impl Page {
    /// An empty page of at most `limit` messages.
    pub(crate) fn new(limit: usize) -> Page {
        Page {
            limit,
            messages: Vec::with_capacity(limit.min(64)),
            bytes: 0,
        }
    }

    /// Offers the next older message, sent at `at` (Unix ms): `false` when the page is
    /// full without it (and then older ones remain).
    pub(crate) fn offer(&mut self, at: u64, json: Bytes) -> bool {
        let full = self.bytes + json.len() > HISTORY_PAGE_BYTES_MAX && !self.messages.is_empty();
        if self.messages.len() == self.limit || full {
            if self.messages.iter().any(|(kept, _)| *kept != at) {
                self.messages.retain(|(kept, _)| *kept != at);
            }
            return false;
        }
        self.bytes += json.len();
        self.messages.push((at, json));
        true
    }

    /// The messages, newest first, and whether older ones remain.
    pub(crate) fn finish(self, more: bool) -> (Vec<Bytes>, bool) {
        (self.messages.into_iter().map(|(_, m)| m).collect(), more)
    }
}

/// Changes a stored `new_message`: an edit replaces `content` (and sets `edited`), a
/// delete empties it (and sets `deleted`), reactions keep `reactions: {emoji: [users]}`.
pub(crate) fn apply(message: &mut serde_json::Value, actor: &str, change: &Amendment) {
    let Some(fields) = message.as_object_mut() else {
        return;
    };
    match change {
        Amendment::Edit(content) => {
            fields.insert("content".into(), content.as_ref().into());
            fields.insert("edited".into(), true.into());
        }
        Amendment::Delete => {
            fields.insert("content".into(), "".into());
            fields.insert("deleted".into(), true.into());
        }
        Amendment::ReactionAdd(emoji) | Amendment::ReactionRemove(emoji) => {
            let reactions = fields
                .entry("reactions")
                .or_insert_with(|| serde_json::json!({}));
            let Some(reactions) = reactions.as_object_mut() else {
                return;
            };
            let users = reactions
                .entry(emoji.as_ref())
                .or_insert_with(|| serde_json::json!([]));
            if let Some(users) = users.as_array_mut() {
                users.retain(|u| u != actor);
                if matches!(change, Amendment::ReactionAdd(_)) {
                    users.push(actor.into());
                }
                if users.is_empty() {
                    reactions.remove(emoji.as_ref());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Runs `test` on the tables as a batch sees them, over an empty file.
    fn with_tables(test: impl FnOnce(&mut Tables<'_>)) {
        use crate::store::{
            memtable::Mem,
            schema::{HISTORY, RECEIVED},
        };
        use redb::ReadableDatabase;
        let file = tempfile_path();
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(HISTORY).unwrap();
        txn.open_table(RECEIVED).unwrap();
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let redo = std::cell::RefCell::default();
        let (mut history, mut received) = (Mem::default(), Mem::default());
        let (older_history, older_received) = (Mem::default(), Mem::default());
        let mut tables = Tables {
            history: Logged::open(&read, &HISTORY, (&mut history, &older_history, None), &redo)
                .unwrap(),
            received: Logged::open(
                &read,
                &RECEIVED,
                (&mut received, &older_received, None),
                &redo,
            )
            .unwrap(),
        };
        test(&mut tables);
        drop(tables);
        drop((read, db));
        let _ = std::fs::remove_file(file);
    }

    fn tempfile_path() -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("history-test-{}-{n}.redb", std::process::id()))
    }

    fn chat(sender: &str, message_id: &str, at: u64) -> Chat {
        Chat {
            sender: Arc::from(sender),
            message_id: message_id.into(),
            timestamp_ms: at,
        }
    }

    #[test]
    fn a_conversation_reads_newest_first_from_both_sides_with_a_cursor() {
        with_tables(|t| {
            t.record("bob", &chat("alice", "m1", 10), 1, b"1").unwrap();
            t.record("alice", &chat("bob", "m2", 20), 2, b"2").unwrap();
            t.record("bob", &chat("alice", "m3", 20), 3, b"3").unwrap();
            t.record("carol", &chat("alice", "m4", 15), 4, b"other")
                .unwrap();
            let page = t.page("alice", "bob", None, 10).unwrap().0;
            assert_eq!(page, vec![&b"3"[..], b"2", b"1"]);
            assert_eq!(
                t.page("bob", "alice", None, 2).unwrap().0,
                vec![&b"3"[..], b"2"]
            );
            assert_eq!(
                t.page("bob", "alice", Some(20), 10).unwrap().0,
                vec![&b"1"[..]]
            );
            assert!(t.page("bob", "alice", Some(10), 10).unwrap().0.is_empty());
            assert!(t.page("bob", "dave", None, 10).unwrap().0.is_empty());
            assert!(
                t.page("alice", "bob", None, 2).unwrap().1,
                "older ones remain"
            );
            assert!(!t.page("alice", "bob", None, 3).unwrap().1);
        });
    }

    #[test]
    fn a_page_stops_at_its_byte_bound_but_holds_at_least_one_message() {
        with_tables(|t| {
            let big = vec![b'x'; HISTORY_PAGE_BYTES_MAX / 3 + 1];
            for i in 0..4u64 {
                let id = format!("m{i}");
                t.record("bob", &chat("alice", &id, 10 + i), i, &big)
                    .unwrap();
            }
            let (page, more) = t.page("alice", "bob", None, 10).unwrap();
            assert_eq!((page.len(), more), (2, true));
            let huge = vec![b'y'; HISTORY_PAGE_BYTES_MAX + 1];
            t.record("bob", &chat("alice", "m9", 99), 9, &huge).unwrap();
            let (page, more) = t.page("alice", "bob", None, 10).unwrap();
            assert_eq!((page.len(), more), (1, true));
        });
    }

    #[test]
    fn a_cut_page_does_not_split_equal_timestamps() {
        with_tables(|t| {
            for (i, at) in [10u64, 20, 20, 30].into_iter().enumerate() {
                let id = format!("m{i}");
                let payload = id.as_bytes().to_vec();
                t.record("bob", &chat("alice", &id, at), i as u64, &payload)
                    .unwrap();
            }
            // m2 would fit, but m1 (same time) would then be lost behind `before: 20`.
            assert_eq!(
                t.page("alice", "bob", None, 2).unwrap(),
                (vec![Bytes::from("m3")], true)
            );
            assert_eq!(
                t.page("alice", "bob", Some(30), 2).unwrap(),
                (vec![Bytes::from("m2"), Bytes::from("m1")], true)
            );
            // A run that fills the page alone stays whole.
            assert_eq!(
                t.page("alice", "bob", Some(30), 1).unwrap(),
                (vec![Bytes::from("m2")], true)
            );
        });
    }

    #[test]
    fn the_index_finds_the_newest_sender_and_recognises_a_held_message() {
        with_tables(|t| {
            t.record("bob", &chat("alice", "m1", 10), 1, b"a").unwrap();
            t.record("bob", &chat("carol", "m1", 30), 2, b"c").unwrap();
            t.record("bob", &chat("dave", "m10", 40), 3, b"d").unwrap();
            let sender_of = |reader, id, named| t.sender_of(reader, id, named).unwrap();
            assert_eq!(sender_of("bob", "m1", None).as_deref(), Some("carol"));
            assert_eq!(
                sender_of("bob", "m1", Some("alice")).as_deref(),
                Some("alice")
            );
            assert_eq!(sender_of("bob", "m1", Some("mallory")), None);
            assert_eq!(sender_of("bob", "m10", None).as_deref(), Some("dave"));
            assert_eq!(sender_of("bob", "m2", None), None);
            assert_eq!(sender_of("alice", "m1", None), None);
            assert!(t.holds("bob", "m1", "alice").unwrap());
            assert!(!t.holds("alice", "m1", "bob").unwrap());
        });
    }

    #[test]
    fn edits_come_from_the_sender_and_reactions_from_either_side() {
        with_tables(|t| {
            let message = br#"{"type":"new_message","messageId":"m1","content":"helo"}"#;
            t.record("bob", &chat("alice", "m1", 10), 1, message)
                .unwrap();
            let edit = Amendment::Edit("hello".into());
            assert!(
                !t.amend("bob", "alice", "m1", &edit).unwrap(),
                "not bob's message"
            );
            assert!(t.amend("alice", "bob", "m1", &edit).unwrap());
            let smile = Amendment::ReactionAdd("🙂".into());
            assert!(t.amend("bob", "alice", "m1", &smile).unwrap());
            assert!(t.amend("alice", "bob", "m1", &smile).unwrap());
            let undo = Amendment::ReactionRemove("🙂".into());
            assert!(t.amend("alice", "bob", "m1", &undo).unwrap());
            assert!(
                !t.amend("alice", "bob", "m2", &edit).unwrap(),
                "no such message"
            );
            let page = t.page("alice", "bob", None, 1).unwrap().0;
            let stored: serde_json::Value = serde_json::from_slice(&page[0]).unwrap();
            assert_eq!(stored["content"], "hello");
            assert_eq!(stored["edited"], true);
            assert_eq!(stored["reactions"], serde_json::json!({"🙂": ["bob"]}));
            assert!(t.amend("alice", "bob", "m1", &Amendment::Delete).unwrap());
            let page = t.page("alice", "bob", None, 1).unwrap().0;
            let stored: serde_json::Value = serde_json::from_slice(&page[0]).unwrap();
            assert_eq!(
                (stored["content"].as_str(), stored["deleted"].as_bool()),
                (Some(""), Some(true))
            );
        });
    }

    #[test]
    fn the_sweep_removes_old_messages_in_chunks_and_keeps_new_ones() {
        with_tables(|t| {
            for i in 0..5u64 {
                let id = format!("m{i}");
                t.record("bob", &chat("alice", &id, i * 10), i, b"x")
                    .unwrap();
            }
            let (removed, next) = t.sweep(None, 25, 2).unwrap();
            assert_eq!(removed, 2);
            let (removed, next) = t.sweep(next, 25, 2).unwrap();
            assert_eq!(removed, 1);
            let (removed, next) = t.sweep(next, 25, 2).unwrap();
            assert_eq!((removed, next), (0, None));
            assert_eq!(t.page("alice", "bob", None, 10).unwrap().0.len(), 2);
            assert!(!t.holds("bob", "m0", "alice").unwrap());
            assert!(t.holds("bob", "m4", "alice").unwrap());
        });
    }
}
