//! One group commit's work: each command applied to the tables as the batch sees them,
//! its answer collected for after the commit. One method per command.

use super::{
    answers::{
        append_outcome, fan_out_counts, history_answer, membership_answer, peeked, sender_answer,
    },
    history::Tables,
    inbox::{Inboxes, Stamp, POST_FLAG},
    state::{State, READ_GRACE_MS},
    view::GroupTables,
    Amend, Append, Command, Confirm, Greeting, Outcome, ReadFrom, Reply, Share, Waiter,
    INBOX_PAGE_BYTES_MAX, INBOX_PAGE_EVENTS_MAX, PEEK_BYTES_MAX, PEEK_MESSAGES_MAX,
};
use crate::protocol::codes::OutKind;

/// Acknowledged events are pruned in steps of at least this many `seq`s, not at every ack.
const PRUNE_STEP: u64 = 64;
/// At the inbox bound, the events devices online may be given unacknowledged before their
/// home is told (and again every this many: a device that came after the first warning
/// and does not ack either). Smaller bounds use the bound.
const OVERDUE_STEP: u64 = 64;

/// What one batch changed, for the counters and the push hook once it committed.
#[derive(Default)]
pub(super) struct Tally {
    /// Events committed with no device online to take them.
    pub persisted: u64,
    /// Messages committed to history.
    pub recorded: u64,
    /// Messages newly kept for users with no device online: `(user, new_message JSON)`,
    /// kept only when a push hook is configured.
    pub queued: Vec<(Box<str>, bytes::Bytes)>,
}

/// The tables of one batch and what it has done so far.
pub(super) struct Apply<'txn, 'a> {
    /// Inboxes.
    pub inboxes: Inboxes<'txn>,
    /// History and the message index.
    pub tables: Tables<'txn>,
    /// Group memberships and settings.
    pub groups: GroupTables<'txn>,
    /// Heads, the epoch and the sequences.
    pub state: &'a mut State,
    /// `--queue-max-per-user`.
    pub queue_max_per_user: u64,
    /// Whether the push hook wants what is queued.
    pub pushing: bool,
    /// When the batch is applied (Unix ms).
    pub now_ms: u64,
    /// What changed.
    pub tally: Tally,
    /// The answers, sent once the commit holds them.
    pub replies: &'a mut Vec<(usize, Reply)>,
}

/// Where one event goes: its user, and the `seq` its home gave it (if any).
struct Row<'r> {
    user: &'r str,
    seq: Option<u64>,
    /// The user's home.
    home: usize,
}

impl Apply<'_, '_> {
    /// Applies one command: a thin switch.
    pub(super) fn command(&mut self, command: &Command) -> Result<(), redb::Error> {
        match command {
            Command::Append(append) => self.append(append)?,
            Command::AppendShare(share) => self.append_share(share)?,
            Command::Confirm(confirm) => self.confirm(confirm)?,
            Command::OpenInbox { user, home, ticket } => {
                let last = self.state.heads.open(user).last;
                let reply = Reply::InboxOpened {
                    user: user.clone(),
                    ticket: *ticket,
                    last,
                };
                self.replies.push((*home, reply));
            }
            Command::ReadInbox { user, device, from } => self.read_inbox(user, *device, from)?,
            Command::Ack {
                user,
                upto,
                device,
                home,
            } => self.ack(user, *upto, *device, *home)?,
            Command::Peek { user, requester } => self.peek(user, *requester)?,
            Command::History {
                user,
                peer,
                before,
                limit,
                requester,
            } => {
                let page = self.tables.page(user, peer, *before, *limit)?;
                self.replies
                    .push(history_answer(*requester, peer, page, None));
            }
            Command::FindSender {
                reader,
                message_id,
                named,
                requester,
            } => {
                let sender = self
                    .tables
                    .sender_of(reader, message_id, named.as_deref())?;
                let found = (&**reader, &**message_id, sender);
                self.replies.push(sender_answer(*requester, found, None));
            }
            Command::Amend(amend) => self.amend(amend)?,
            Command::Membership {
                group,
                user,
                joined,
                settings,
                ..
            } => {
                if *joined {
                    self.groups.members.insert((&**group, &**user), ())?;
                } else {
                    self.groups.members.remove((&**group, &**user))?;
                }
                if let Some(change) = settings {
                    if change.after.is_default() {
                        self.groups.settings.remove(&**group)?;
                    } else {
                        let record = change.after.encode();
                        self.groups.settings.insert(&**group, record.as_slice())?;
                    }
                }
                self.replies.extend(membership_answer(command, None));
            }
            Command::Shutdown => {}
        }
        Ok(())
    }

    /// Writes one event to `row.user`'s inbox under its `seq` (the next one when its home
    /// gave none). A `seq` given out stays given out, kept or not, so the home's count of
    /// them stays right.
    ///
    /// At the bound of unacknowledged events, an event for a user with no device online
    /// is refused (`queue_full`, as v1). One the home numbered went to a device online
    /// already (which acknowledges it soon, or, without `resume`, is taken to have it
    /// once written): it is kept, as a burst to a device online can outrun its acks.
    fn put_event(
        &mut self,
        row: &Row<'_>,
        stamp: Stamp,
        (body, flags): (&[u8], u8),
    ) -> Result<Option<u64>, redb::Error> {
        let head = self.state.heads.of(row.user);
        let seq = match row.seq {
            Some(seq) => {
                debug_assert!(seq > head.last, "a home gave out {seq} after {}", head.last);
                seq.max(head.last + 1)
            }
            None => head.last + 1,
        };
        let full = row.seq.is_none() && head.unacked >= self.queue_max_per_user;
        let head = self.state.heads.update(row.user, |head| {
            head.last = seq;
            if !full {
                head.unacked += 1;
                head.receipts += u64::from(stamp.receipt);
            }
        });
        if full {
            return Ok(None);
        }
        // Numbered for devices online: kept whatever the bound (they have it), but once
        // the inbox is at the bound and they were given a step more without acking, their
        // home is told: the inbox stays within the bound and a step.
        let step = OVERDUE_STEP.min(self.queue_max_per_user).max(1);
        let given = head.unacked_online();
        let at_bound = head.unacked >= self.queue_max_per_user;
        if row.seq.is_some() && at_bound && given >= step && given.is_multiple_of(step) {
            let user = row.user.into();
            self.replies.push((row.home, Reply::AcksOverdue { user }));
        }
        self.inboxes.put((row.user, seq), stamp, body, flags)?;
        Ok(Some(seq))
    }

    /// Appends an event (and a chat message to history), unless the store holds the
    /// message already (a retry) or the inbox is full.
    fn append(&mut self, append: &Append) -> Result<(), redb::Error> {
        let Append {
            user,
            seq,
            home,
            event,
            receipt,
            chat,
            ack,
            dedup,
            // One node wrote the copy to the sender's devices as its home numbered it.
            copy: _,
        } = append;
        let held = match chat {
            Some(chat) => self.tables.holds(user, &chat.message_id, &chat.sender)?,
            None => false,
        };
        let delivered = ack.as_ref().is_some_and(|a| a.delivered);
        let outcome = if held {
            // A retry of a message already held: its `seq`, if any, stays unused.
            if let Some(seq) = seq {
                self.state
                    .heads
                    .update(user, |head| head.last = head.last.max(*seq));
            }
            Outcome::Kept { delivered }
        } else {
            let row = Row {
                user,
                seq: *seq,
                home: *home,
            };
            let stamp = Stamp {
                kind: event.kind,
                priority: event.priority,
                receipt: *receipt,
                at_ms: self.now_ms,
            };
            match self.put_event(&row, stamp, (&event.json, 0))? {
                None => Outcome::QueueFull,
                Some(_) => {
                    if seq.is_none() {
                        self.tally.persisted += 1;
                        if self.pushing && event.kind == OutKind::NewMessage {
                            self.tally.queued.push((user.clone(), event.json.clone()));
                        }
                    }
                    if let Some(chat) = chat {
                        let sequence = self.state.take_sequence();
                        self.tables.record(user, chat, sequence, &event.json)?;
                        self.tally.recorded += 1;
                    }
                    Outcome::Kept { delivered }
                }
            }
        };
        append_outcome(self.replies, ack.as_ref(), *dedup, outcome);
        Ok(())
    }

    /// Appends a fanned-out event to each row's inbox; a group post's content is written
    /// once and referenced by every row.
    fn append_share(&mut self, share: &Share) -> Result<(), redb::Error> {
        let post = match share.purpose {
            super::FanOut::GroupPost => {
                let number = self.state.take_post();
                self.inboxes.put_post(number, self.now_ms, &share.json)?;
                Some(number.to_le_bytes())
            }
            super::FanOut::Broadcast => None,
        };
        let stamp = Stamp {
            kind: share.kind,
            priority: share.priority,
            receipt: false,
            at_ms: self.now_ms,
        };
        let (mut queued, mut not_kept) = (0u32, 0u32);
        for row in &share.rows {
            let json = row.json.as_ref().unwrap_or(&share.json);
            let body = match &post {
                Some(number) if row.json.is_none() => (&number[..], POST_FLAG),
                _ => (&json[..], 0),
            };
            let target = Row {
                user: &row.user,
                seq: row.seq,
                home: share.home,
            };
            match self.put_event(&target, stamp, body)? {
                None => not_kept += 1,
                Some(_) if row.seq.is_none() => {
                    queued += 1;
                    self.tally.persisted += 1;
                    if self.pushing {
                        self.tally.queued.push((row.user.clone(), json.clone()));
                    }
                }
                Some(_) => {}
            }
        }
        self.replies
            .push(fan_out_counts(share, queued, not_kept, false));
        Ok(())
    }

    /// Confirms a retry: `sent`/`queued` again if the first copy is held, else the sender
    /// is told to send it again.
    fn confirm(&mut self, confirm: &Confirm) -> Result<(), redb::Error> {
        let Confirm {
            receiver,
            chat,
            ack,
        } = confirm;
        let held = self
            .tables
            .holds(receiver, &chat.message_id, &chat.sender)?;
        let outcome = if held {
            Outcome::Kept {
                delivered: ack.delivered,
            }
        } else {
            Outcome::NotHeld
        };
        append_outcome(self.replies, Some(ack), None, outcome);
        Ok(())
    }

    /// A page of `user`'s inbox for a device.
    fn read_inbox(
        &mut self,
        user: &str,
        device: Waiter,
        from: &ReadFrom,
    ) -> Result<(), redb::Error> {
        let head = self.state.heads.of(user);
        let page = (INBOX_PAGE_EVENTS_MAX, INBOX_PAGE_BYTES_MAX);
        let (greeting, from) = match from {
            ReadFrom::Resume { epoch, seq } => {
                let resumed =
                    **epoch == *self.state.epoch && *seq <= head.last && *seq >= head.gone;
                let greeting = Greeting {
                    epoch: self.state.epoch.clone(),
                    seq: head.last,
                    resumed: Some(resumed),
                };
                // A device that resumes acknowledges what it gets, so it reads in `seq`
                // order; one that cannot resume gets what no device acknowledged.
                let after = if resumed { *seq } else { head.acked };
                let from = ReadFrom::After { seq: after };
                (Some(greeting), from)
            }
            ReadFrom::Unacked { upto: 0, cursor } => {
                let greeting = Greeting {
                    epoch: self.state.epoch.clone(),
                    seq: head.last,
                    resumed: None,
                };
                let from = ReadFrom::Unacked {
                    upto: head.last,
                    cursor: *cursor,
                };
                (Some(greeting), from)
            }
            other => (None, other.clone()),
        };
        let (events, next, covered) = match from {
            ReadFrom::After { seq } => {
                let (events, more) =
                    self.inboxes
                        .read_after(user, (seq, head.last), page.0, page.1)?;
                let last_read = events.last().map_or(seq, |e| e.seq);
                let next = more.then_some(ReadFrom::After { seq: last_read });
                let covered = if more { last_read } else { head.last };
                (events, next, covered)
            }
            ReadFrom::Unacked { upto, cursor } => {
                let range = (head.acked, upto);
                let (events, next, covered) =
                    self.inboxes.read_unacked(user, range, cursor, page)?;
                let next = next.map(|cursor| ReadFrom::Unacked {
                    upto,
                    cursor: Some(cursor),
                });
                (events, next, covered)
            }
            ReadFrom::Resume { .. } => unreachable!("a resume is read as After or Unacked"),
        };
        if !events.is_empty() {
            // Nothing of it is pruned while the device reads on (an empty inbox, the
            // common case at a connect, costs no entry).
            self.state.reading.insert(user.into(), self.now_ms);
        }
        let reply = Reply::InboxPage {
            device,
            user: user.into(),
            greeting,
            events,
            next,
            covered,
            error: None,
        };
        self.replies.push((device.reactor, reply));
        Ok(())
    }

    /// A device processed `user`'s events up to `upto`: the senders of those that asked
    /// hear (through the user's home), and acknowledged events beyond the newest
    /// `--queue-max-per-user` are pruned.
    fn ack(
        &mut self,
        user: &str,
        upto: u64,
        device: Option<Waiter>,
        home: usize,
    ) -> Result<(), redb::Error> {
        let head = self.state.heads.of(user);
        if upto > head.last {
            if let Some(device) = device {
                let reply = Reply::AckRefused {
                    device,
                    seq: upto,
                    last: head.last,
                };
                self.replies.push((device.reactor, reply));
            }
            return Ok(());
        }
        if upto <= head.acked || head.unacked == 0 {
            return Ok(()); // nothing waits: no state is made for a user without events
        }
        let upto = upto.min(head.last);
        // Hot path for a device acking what it just got: no read when no sender waits
        // for a receipt and the ack covers the whole inbox.
        let receipts = if head.receipts > 0 {
            self.inboxes.receipts(user, (head.acked, upto))?
        } else {
            Vec::new()
        };
        let newly = if upto == head.last {
            head.unacked
        } else {
            self.inboxes.count(user, (head.acked, upto))?
        };
        let floor = upto.saturating_sub(self.queue_max_per_user);
        let read_at = self.state.reading.get(user).copied();
        let quiet = read_at.is_none_or(|at| self.now_ms.saturating_sub(at) > READ_GRACE_MS);
        let prune = quiet && floor >= head.gone + PRUNE_STEP;
        self.state.heads.update(user, |head| {
            head.acked = upto;
            head.unacked = head.unacked.saturating_sub(newly);
            head.receipts = head.receipts.saturating_sub(receipts.len() as u64);
            if upto == head.last {
                head.receipts = 0;
            }
            if prune {
                head.gone = floor;
            }
        });
        if quiet {
            self.state.reading.remove(user);
        }
        if prune {
            self.inboxes.prune(user, floor)?;
        }
        if !receipts.is_empty() {
            let reply = Reply::Receipts {
                user: user.into(),
                receipts,
            };
            self.replies.push((home, reply));
        }
        Ok(())
    }

    /// `user`'s unacknowledged messages for the HTTP API.
    fn peek(&mut self, user: &str, requester: Waiter) -> Result<(), redb::Error> {
        let head = self.state.heads.of(user);
        let range = (head.acked, head.last);
        let page = (PEEK_MESSAGES_MAX, PEEK_BYTES_MAX);
        let (events, next, covered) = self.inboxes.read_unacked(user, range, None, page)?;
        let read = (events, covered, next.is_some());
        self.replies.push(peeked(requester, user, read));
        Ok(())
    }

    /// Changes a message in history, if the actor may.
    fn amend(&mut self, amend: &Amend) -> Result<(), redb::Error> {
        let Amend {
            actor,
            peer,
            message_id,
            change,
            requester,
        } = amend;
        let found = self.tables.amend(actor, peer, message_id, change)?;
        let reply = Reply::Amended {
            amend: Box::new(amend.clone()),
            found,
            error: None,
        };
        self.replies.push((requester.reactor, reply));
        Ok(())
    }
}
