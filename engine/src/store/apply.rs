//! One group commit's work: each command applied to the open tables of the write
//! transaction, its answer collected for after the commit. One method per command.

use redb::Table;

use crate::protocol::codes::OutKind;

use super::{
    answers::{enqueue_outcome, fan_out_counts, history_answer, membership_answer, sender_answer},
    history::Tables,
    queue,
    state::State,
    Amend, Command, Enqueue, FanOutBatch, Outcome, Reply, Waiter, DRAIN_BYTES_MAX,
    DRAIN_MESSAGES_MAX, PEEK_BYTES_MAX, PEEK_MESSAGES_MAX,
};

/// What one transaction changed, for the counters and the push hook once it committed.
#[derive(Default)]
pub(super) struct Tally {
    /// Messages committed to offline queues.
    pub persisted: u64,
    /// Messages committed to history.
    pub recorded: u64,
    /// Messages newly queued for offline users: `(user, new_message JSON)`, kept only
    /// when a push hook is configured.
    pub queued: Vec<(Box<str>, bytes::Bytes)>,
}

/// The tables of one write transaction and what the batch has done so far.
pub(super) struct Apply<'txn, 'a> {
    /// Offline queues.
    pub queues: Table<'txn, (&'static str, u8, u64), &'static [u8]>,
    /// History and the message index.
    pub tables: Tables<'txn>,
    /// Group memberships.
    pub members: Table<'txn, (&'static str, &'static str), ()>,
    /// Queue lengths and the sequence.
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

impl Apply<'_, '_> {
    /// Applies one command: a thin switch.
    pub(super) fn command(&mut self, command: &Command) -> Result<(), redb::Error> {
        match command {
            Command::Enqueue(enqueue) => self.enqueue(enqueue)?,
            Command::Record {
                receiver,
                message_id,
                payload,
                chat,
            } => {
                if !self.tables.holds(receiver, message_id, &chat.sender)? {
                    let sequence = self.state.take_sequence();
                    self.tables
                        .record(receiver, message_id, chat, sequence, payload)?;
                    self.tally.recorded += 1;
                }
            }
            Command::EnqueueFanOut(batch) => self.enqueue_fan_out(batch)?,
            Command::Drain { user, device } => self.drain(user, *device)?,
            Command::Peek {
                user,
                requester,
                drain,
            } => self.peek(user, *requester, *drain)?,
            Command::Remove { user, keys } => {
                let keys = keys.iter().copied();
                queue::remove(&mut self.queues, &mut self.state.counts, user, keys)?;
            }
            Command::History {
                user,
                peer,
                before,
                limit,
                requester,
            } => {
                let messages = self.tables.page(user, peer, *before, *limit)?;
                self.replies
                    .push(history_answer(*requester, peer, messages, None));
            }
            Command::FindSender {
                reader,
                message_id,
                requester,
            } => {
                let sender = self.tables.sender_of(reader, message_id)?;
                let found = (&**reader, &**message_id, sender);
                self.replies.push(sender_answer(*requester, found, None));
            }
            Command::Amend(amend) => self.amend(amend)?,
            Command::Membership {
                group,
                user,
                joined,
                ..
            } => {
                if *joined {
                    self.members.insert((&**group, &**user), ())?;
                } else {
                    self.members.remove((&**group, &**user))?;
                }
                self.replies.extend(membership_answer(command, true));
            }
            Command::Shutdown => {}
        }
        Ok(())
    }

    /// Queues a message for an offline user, unless the store holds it already (a
    /// retry) or the user's queue is full; a chat message goes into history too.
    fn enqueue(&mut self, enqueue: &Enqueue) -> Result<(), redb::Error> {
        let Enqueue {
            user,
            priority,
            payload,
            kind,
            sender,
            message_id,
            receipt,
            dedup,
            chat,
        } = enqueue;
        let held = match chat {
            Some(chat) => self.tables.holds(user, message_id, &chat.sender)?,
            None => false,
        };
        let outcome = if held {
            Outcome::Queued // a retry of a message already held
        } else if self.state.counts.of(user) >= self.queue_max_per_user {
            Outcome::QueueFull
        } else {
            let sequence = self.state.take_sequence();
            let key = (&**user, *priority, sequence);
            let counts = &mut self.state.counts;
            queue::push(
                &mut self.queues,
                counts,
                key,
                (*kind, *receipt),
                payload,
                self.now_ms,
            )?;
            self.tally.persisted += 1;
            if self.pushing {
                self.tally.queued.push((user.clone(), payload.clone()));
            }
            if let Some(chat) = chat {
                self.tables
                    .record(user, message_id, chat, sequence, payload)?;
                self.tally.recorded += 1;
            }
            Outcome::Queued
        };
        enqueue_outcome(self.replies, *sender, message_id, *dedup, outcome);
        Ok(())
    }

    /// Queues a fanned-out message for each user whose queue has room; the waiting
    /// reactor hears how many were kept.
    fn enqueue_fan_out(&mut self, batch: &FanOutBatch) -> Result<(), redb::Error> {
        let mut queued = 0;
        for (user, payload) in &batch.messages {
            if self.state.counts.of(user) >= self.queue_max_per_user {
                continue;
            }
            let key = (&**user, batch.priority, self.state.take_sequence());
            let counts = &mut self.state.counts;
            // Fanned-out messages are chat messages (group posts, API broadcasts).
            let stored = (OutKind::NewMessage, false);
            queue::push(&mut self.queues, counts, key, stored, payload, self.now_ms)?;
            queued += 1;
            if self.pushing {
                self.tally.queued.push((user.clone(), payload.clone()));
            }
        }
        self.tally.persisted += u64::from(queued);
        let not_kept = batch.messages.len() as u32 - queued;
        self.replies
            .push(fan_out_counts(batch, queued, not_kept, false));
        Ok(())
    }

    /// The first part of `user`'s queue, for a device that authenticated.
    fn drain(&mut self, user: &str, device: Waiter) -> Result<(), redb::Error> {
        let (messages, more) =
            queue::read(&self.queues, user, DRAIN_MESSAGES_MAX, DRAIN_BYTES_MAX)?;
        let reply = Reply::Pending {
            device,
            user: user.into(),
            messages,
            more,
        };
        self.replies.push((device.reactor, reply));
        Ok(())
    }

    /// `user`'s queue for the HTTP API; with `drain`, what is read is removed.
    fn peek(&mut self, user: &str, requester: Waiter, drain: bool) -> Result<(), redb::Error> {
        let (queued, more) = queue::read(&self.queues, user, PEEK_MESSAGES_MAX, PEEK_BYTES_MAX)?;
        if drain {
            let keys = queued.iter().map(|m| m.key);
            queue::remove(&mut self.queues, &mut self.state.counts, user, keys)?;
        }
        let messages = queued.into_iter().map(|m| m.payload).collect();
        let reply = Reply::Peeked {
            requester,
            user: user.into(),
            messages,
            more,
            error: None,
        };
        self.replies.push((requester.reactor, reply));
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
