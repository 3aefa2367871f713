//! Inboxes (PROTOCOL.md v2, "Acknowledged delivery and resume"): per user, the events
//! the gateway must not lose for them, numbered by `seq`.
//!
//! - `inbox`: `(user, seq) → [kind][flags][priority][appended at, Unix ms, u64 LE][body]`;
//!   the body is the event's JSON (without its `seq`, which is the key), or for a group
//!   post the post's number in `posts` (flag [`POST_FLAG`]).
//! - `posts`: `post number → [appended at, u64 LE][new_message JSON]`: a group post's
//!   content, written once per member home's batch however many members it reaches.
//! - `heads`: `user → (last seq, acked seq, gone)`: the highest `seq` given out, the highest
//!   any device acknowledged, and the highest that was pruned or expired (a resume from
//!   below it cannot be honoured). Written when `acked` or `gone` moves, not per event:
//!   at load `last` is the highest of the head's and the rows', and each start raises it
//!   above the last run's anyway. Kept in memory too ([`Heads`]), with how many events
//!   each user has above its acked `seq`, so the per-user bound costs no read.
//!
//! Kept: every event until a device of the user acknowledges it (or `--retention-days`
//! passes); then, so that the user's other devices can resume, the newest
//! `--queue-max-per-user` acknowledged events as well.

use std::collections::HashMap;

use bytes::Bytes;

use redb::ReadableTable;

use super::logged::Logged;

use crate::protocol::{codes::OutKind, Priority};

/// `[kind][flags][priority][appended at u64]`.
const HEADER_BYTES: usize = 11;
/// Flags bit 0: the sender wants a `delivery_receipt` once a device acknowledges it.
const RECEIPT_FLAG: u8 = 1;
/// Flags bit 1: the body is a post number in [`super::schema::POSTS`].
pub(super) const POST_FLAG: u8 = 2;

/// One inbox event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEvent {
    /// Its number in the user's inbox.
    pub seq: u64,
    /// What it is.
    pub kind: OutKind,
    /// Its lane (an unacknowledged event that overtakes others by priority).
    pub priority: Priority,
    /// The JSON as delivered, without `seq`.
    pub json: Bytes,
}

/// What an event is stored with, besides its body.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp {
    /// What it is.
    pub kind: OutKind,
    /// Its lane.
    pub priority: Priority,
    /// Whether its sender wants a `delivery_receipt`.
    pub receipt: bool,
    /// When it was appended (Unix ms), for retention.
    pub at_ms: u64,
}

/// A stored value: the header, then `body` (JSON, or a post number with [`POST_FLAG`]).
pub(super) fn encode(stamp: Stamp, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER_BYTES + body.len());
    let receipt = if stamp.receipt { RECEIPT_FLAG } else { 0 };
    value.push(stamp.kind.index() as u8);
    value.push(flags | receipt);
    value.push(stamp.priority as u8);
    value.extend_from_slice(&stamp.at_ms.to_le_bytes());
    value.extend_from_slice(body);
    value
}

/// A stored value's parts: `(kind, flags, priority, appended at, body)`.
pub(super) fn decode(value: &[u8]) -> (OutKind, u8, Priority, u64, &[u8]) {
    let kind = value
        .first()
        .and_then(|&k| OutKind::from_index(usize::from(k)))
        .unwrap_or(OutKind::Other);
    let flags = value.get(1).copied().unwrap_or(0);
    let priority = match value.get(2) {
        Some(0) => Priority::High,
        Some(2) => Priority::Low,
        _ => Priority::Normal,
    };
    let at = value
        .get(3..HEADER_BYTES)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    (
        kind,
        flags,
        priority,
        at,
        value.get(HEADER_BYTES..).unwrap_or_default(),
    )
}

/// One user's inbox in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Head {
    /// The highest `seq` given out (never taken back, even by a failed commit).
    pub last: u64,
    /// The highest `seq` a device acknowledged.
    pub acked: u64,
    /// Events kept with a `seq` above `acked`: the per-user bound's count.
    pub unacked: u64,
    /// Of those, how many a sender waits on for a `delivery_receipt` (an ack reads them
    /// only when there are some).
    pub receipts: u64,
    /// Every event up to here may be gone (pruned once acknowledged, or expired): a
    /// resume from below cannot be honoured.
    pub gone: u64,
    /// `last` when the user's home last took over numbering (a device came online):
    /// what its devices online were given since is above it. In memory only.
    pub opened: u64,
}

impl Head {
    /// Events numbered for the user's devices online that none acknowledged (what a
    /// device catching up a backlog has not been given yet does not count).
    pub(super) fn unacked_online(&self) -> u64 {
        self.last.saturating_sub(self.acked.max(self.opened))
    }
}

/// Every user's head, with a journal so that a failed commit can put `acked` and
/// `unacked` back ([`Heads::roll_back`]); `last` is never put back, so a `seq` given to
/// a failed event is not given to another.
///
/// Every `seq` given out in this run of the store is above [`Heads::floor`], the count
/// of the store's starts in the high 32 bits: a `seq` a home gave out (and a device saw)
/// that a crash lost before its commit is never given to another event.
#[derive(Debug, Default)]
pub(super) struct Heads {
    by_user: HashMap<Box<str>, Head>,
    /// The lowest `last` of any inbox in this run.
    pub floor: u64,
    /// Heads as they were before the batch touched them.
    journal: Vec<(Box<str>, Head)>,
}

impl Heads {
    /// Reads every head, and counts each user's unacknowledged events.
    pub(super) fn load(
        heads: &impl ReadableTable<&'static str, (u64, u64, u64)>,
        inbox: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    ) -> Result<Heads, redb::Error> {
        let mut by_user: HashMap<Box<str>, Head> = HashMap::new();
        for entry in heads.iter()? {
            let (user, value) = entry?;
            let (last, acked, gone) = value.value();
            let head = Head {
                last,
                acked,
                gone,
                ..Head::default()
            };
            by_user.insert(user.value().into(), head);
        }
        for entry in inbox.iter()? {
            let (key, value) = entry?;
            let (user, seq) = key.value();
            let (_, flags, _, _, _) = decode(value.value());
            let head = by_user.entry(user.into()).or_default();
            head.last = head.last.max(seq);
            if seq > head.acked {
                head.unacked += 1;
                head.receipts += u64::from(flags & RECEIPT_FLAG != 0);
            }
        }
        Ok(Heads {
            by_user,
            floor: 0,
            journal: Vec::new(),
        })
    }

    /// `user`'s head (nothing acknowledged and nothing given out but the floor, for a
    /// user never written to).
    pub(super) fn of(&self, user: &str) -> Head {
        let mut head = self.by_user.get(user).copied().unwrap_or_default();
        head.last = head.last.max(self.floor);
        head
    }

    /// Notes that `user`'s home takes over numbering now ([`Head::opened`]); not
    /// journaled: a failed commit leaves it, which only delays a warning. A user with
    /// no head gets none (an idle user costs nothing here): its first one starts opened.
    pub(super) fn open(&mut self, user: &str) -> Head {
        if let Some(head) = self.by_user.get_mut(user) {
            head.last = head.last.max(self.floor);
            head.opened = head.last;
        }
        self.of(user)
    }

    /// Changes `user`'s head, noting how it was the first time in this batch.
    pub(super) fn update(&mut self, user: &str, change: impl FnOnce(&mut Head)) -> Head {
        let floor = self.floor;
        let head = match self.by_user.get_mut(user) {
            Some(head) => head,
            None => self.by_user.entry(user.into()).or_insert(Head {
                opened: floor,
                ..Head::default()
            }),
        };
        head.last = head.last.max(floor);
        if !self.journal.iter().any(|(u, _)| **u == *user) {
            self.journal.push((user.into(), *head));
        }
        change(head);
        *head
    }

    /// Starts a batch's record of the heads it changes.
    pub(super) fn begin(&mut self) {
        self.journal.clear();
    }

    /// The users this batch touched, with their heads now (to be written).
    ///
    /// Only heads whose `acked` or `gone` changed: `last` needs no writing, since each
    /// start of the store raises every `seq` above the last run's ([`Heads::floor`]) and
    /// the rows give the rest at load. So an event appended costs no head write.
    pub(super) fn touched(&self) -> impl Iterator<Item = (&str, Head)> + '_ {
        self.journal.iter().filter_map(|(user, before)| {
            let now = self.of(user);
            let changed = now.acked != before.acked || now.gone != before.gone;
            changed.then_some((&**user, now))
        })
    }

    /// Undoes the batch's changes but `last`.
    pub(super) fn roll_back(&mut self) {
        for (user, before) in self.journal.drain(..) {
            if let Some(head) = self.by_user.get_mut(&user) {
                *head = Head {
                    last: head.last,
                    ..before
                };
            }
        }
    }

    /// Unacknowledged events in all.
    pub(super) fn unacked_total(&self) -> u64 {
        self.by_user.values().map(|h| h.unacked).sum()
    }

    /// Users with unacknowledged events.
    pub(super) fn users_waiting(&self) -> usize {
        self.by_user.values().filter(|h| h.unacked > 0).count()
    }
}

/// The inbox tables as one batch sees them.
pub(super) struct Inboxes<'a> {
    /// Events.
    pub inbox: Logged<'a, (&'static str, u64), &'static [u8]>,
    /// Group posts.
    pub posts: Logged<'a, u64, &'static [u8]>,
    /// Heads.
    pub heads: Logged<'a, &'static str, (u64, u64, u64)>,
}

/// Where a read in delivery order (priority, then `seq`) goes on from.
pub type UnackedCursor = (Priority, u64);

impl Inboxes<'_> {
    /// Writes one event under `seq`.
    pub(super) fn put(
        &mut self,
        (user, seq): (&str, u64),
        stamp: Stamp,
        body: &[u8],
        flags: u8,
    ) -> Result<(), redb::Error> {
        self.inbox
            .insert((user, seq), &encode(stamp, flags, body)[..])?;
        Ok(())
    }

    /// Writes a post's content under `number`.
    pub(super) fn put_post(
        &mut self,
        number: u64,
        at_ms: u64,
        json: &[u8],
    ) -> Result<(), redb::Error> {
        let mut value = Vec::with_capacity(8 + json.len());
        value.extend_from_slice(&at_ms.to_le_bytes());
        value.extend_from_slice(json);
        self.posts.insert(number, &value[..])?;
        Ok(())
    }

    /// Writes the heads a batch changed.
    pub(super) fn write_heads(&mut self, heads: &Heads) -> Result<(), redb::Error> {
        for (user, head) in heads.touched() {
            self.heads
                .insert(user, (head.last, head.acked, head.gone))?;
        }
        Ok(())
    }

    /// The event as delivered: its JSON, read from `posts` for a group post.
    fn event(&self, seq: u64, value: &[u8]) -> Result<InboxEvent, redb::Error> {
        let (kind, flags, priority, _, body) = decode(value);
        let json = if flags & POST_FLAG != 0 {
            let number = u64::from_le_bytes(body.try_into().unwrap_or_default());
            match self.posts.get(number)? {
                Some(post) => Bytes::copy_from_slice(post.value().get(8..).unwrap_or_default()),
                None => Bytes::new(), // expired with its post: nothing to deliver
            }
        } else {
            Bytes::copy_from_slice(body)
        };
        Ok(InboxEvent {
            seq,
            kind,
            priority,
            json,
        })
    }

    /// Events of `user` with `seq` in `(after, upto]`, in `seq` order, up to `max_events`
    /// or `max_bytes` (at least one); the flag says whether more remain.
    pub(super) fn read_after(
        &self,
        user: &str,
        (after, upto): (u64, u64),
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Vec<InboxEvent>, bool), redb::Error> {
        let mut events = Vec::new();
        let mut bytes = 0;
        if after >= upto {
            return Ok((events, false));
        }
        for entry in self.inbox.range((user, after + 1)..=(user, upto))? {
            if events.len() >= max_events || (bytes >= max_bytes && !events.is_empty()) {
                return Ok((events, true));
            }
            let (key, value) = entry?;
            let event = self.event(key.value().1, value.value())?;
            bytes += event.json.len();
            if !event.json.is_empty() {
                events.push(event);
            }
        }
        Ok((events, false))
    }

    /// The unacknowledged events of `user` up to `upto` in delivery order (priority,
    /// then `seq`), after `cursor`, up to `max_events` or `max_bytes` (at least one).
    /// Also returns where the next page starts, and the `seq` below which every event of
    /// the range is in this page or an earlier one (what a device that does not ack may
    /// be taken to have once this page is written).
    pub(super) fn read_unacked(
        &self,
        user: &str,
        (acked, upto): (u64, u64),
        cursor: Option<UnackedCursor>,
        (max_events, max_bytes): (usize, usize),
    ) -> Result<(Vec<InboxEvent>, Option<UnackedCursor>, u64), redb::Error> {
        let mut order: Vec<(Priority, u64)> = Vec::new();
        if acked < upto {
            for entry in self.inbox.range((user, acked + 1)..=(user, upto))? {
                let (key, value) = entry?;
                let (_, _, priority, _, _) = decode(value.value());
                order.push((priority, key.value().1));
            }
        }
        order.sort_unstable();
        let start = match cursor {
            Some(cursor) => order.partition_point(|key| *key <= cursor),
            None => 0,
        };
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for (i, &(_, seq)) in order[start..].iter().enumerate() {
            if events.len() >= max_events || (bytes >= max_bytes && i > 0) {
                next = Some(order[start + i - 1]);
                break;
            }
            if let Some(value) = self.inbox.get((user, seq))? {
                let event = self.event(seq, value.value())?;
                bytes += event.json.len();
                if !event.json.is_empty() {
                    events.push(event);
                }
            }
        }
        let remaining_min = match next {
            Some(after) => {
                let from = order.partition_point(|key| *key <= after);
                order[from..].iter().map(|&(_, seq)| seq).min()
            }
            None => None,
        };
        let done_below = remaining_min.map_or(upto, |seq| seq - 1);
        Ok((events, next, done_below))
    }

    /// `(sender, message id)` of each event of `user` in `(from, upto]` whose sender
    /// wants a `delivery_receipt`.
    pub(super) fn receipts(
        &self,
        user: &str,
        (from, upto): (u64, u64),
    ) -> Result<super::ReceiptsDue, redb::Error> {
        let mut receipts = Vec::new();
        if from >= upto {
            return Ok(receipts);
        }
        for entry in self.inbox.range((user, from + 1)..=(user, upto))? {
            let (_, value) = entry?;
            let (_, flags, _, _, body) = decode(value.value());
            if flags & RECEIPT_FLAG == 0 || flags & POST_FLAG != 0 {
                continue;
            }
            let message: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if let (Some(id), Some(sender)) =
                (message["messageId"].as_str(), message["senderId"].as_str())
            {
                receipts.push((sender.into(), id.into()));
            }
        }
        Ok(receipts)
    }

    /// How many events of `user` with `seq` in `(from, upto]` are kept.
    pub(super) fn count(&self, user: &str, (from, upto): (u64, u64)) -> Result<u64, redb::Error> {
        if from >= upto {
            return Ok(0);
        }
        let mut n = 0;
        for entry in self.inbox.range((user, from + 1)..=(user, upto))? {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes `user`'s events with `seq` up to `upto` (acknowledged, and no longer among
    /// the newest kept for resume).
    pub(super) fn prune(&mut self, user: &str, upto: u64) -> Result<(), redb::Error> {
        if upto == 0 {
            return Ok(());
        }
        let old: Vec<u64> = self
            .inbox
            .range((user, 0)..=(user, upto))?
            .map(|entry| entry.map(|(key, _)| key.value().1))
            .collect::<Result<_, _>>()?;
        for seq in old {
            self.inbox.remove((user, seq))?;
        }
        Ok(())
    }
}

/// A whole inbox key, where a sweep goes on from.
pub(super) type Cursor = (Box<str>, u64);

/// Removes up to `visit_max` entries' worth of events appended before `cutoff_ms`,
/// starting after `cursor`, keeping `heads` right; returns how many were removed and
/// where to go on from (`None` once the table is done). Expired posts go too.
pub(super) fn sweep(
    tables: &mut Inboxes<'_>,
    heads: &mut Heads,
    cursor: Option<Cursor>,
    cutoff_ms: u64,
    visit_max: usize,
) -> Result<(u64, Option<Cursor>), redb::Error> {
    let mut expired = Vec::new();
    let mut next = None;
    {
        let range = match &cursor {
            Some((user, seq)) => tables.inbox.range((&**user, *seq)..)?,
            None => tables.inbox.iter()?,
        };
        for (visited, entry) in range.enumerate() {
            let (key, value) = entry?;
            let (user, seq) = key.value();
            if visited == visit_max {
                next = Some((Box::from(user), seq));
                break;
            }
            let (_, _, _, at, _) = decode(value.value());
            if at < cutoff_ms {
                expired.push((Box::<str>::from(user), seq));
            }
        }
    }
    for (user, seq) in &expired {
        tables.inbox.remove((&**user, *seq))?;
        heads.update(user, |head| {
            if *seq > head.acked {
                head.unacked = head.unacked.saturating_sub(1);
            }
            head.gone = head.gone.max(*seq);
        });
    }
    if next.is_none() {
        let old: Vec<u64> = tables
            .posts
            .iter()?
            .filter_map(|entry| {
                let (number, value) = entry.ok()?;
                let at = value
                    .value()
                    .get(..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
                (at < cutoff_ms).then(|| number.value())
            })
            .collect();
        for number in old {
            tables.posts.remove(number)?;
        }
    }
    Ok((expired.len() as u64, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_writes_no_head_and_an_ack_or_a_prune_does() {
        let mut heads = Heads {
            floor: 7 << 32,
            ..Heads::default()
        };
        heads.begin();
        heads.update("ann", |h| {
            h.last += 1;
            h.unacked += 1;
        });
        assert_eq!(heads.touched().count(), 0, "last and unacked need no write");
        assert_eq!(heads.of("ann").last, (7 << 32) + 1, "above the floor");
        heads.begin();
        heads.update("ann", |h| h.acked = h.last);
        heads.update("bob", |h| h.gone = 3);
        let mut written: Vec<&str> = heads.touched().map(|(user, _)| user).collect();
        written.sort_unstable();
        assert_eq!(written, ["ann", "bob"]);
    }
}
