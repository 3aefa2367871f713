//! What reactors ask the store and what it answers: typed records and opaque tickets,
//! never connection addresses (a [`Waiter`] is the asking reactor's own value).

use bytes::Bytes;

use super::{Failure, InboxEvent, Ticket, UnackedCursor, Waiter};
use crate::protocol::{codes::OutKind, Priority};

/// A request to the store thread.
#[derive(Debug)]
pub enum Command {
    /// Append one event to a user's inbox (a chat message also to its conversation's
    /// history); its sender, if any, hears the outcome once it is committed.
    Append(Box<Append>),
    /// Append one event (a group post, an API broadcast) to several users' inboxes of
    /// one home, and tell the waiting reactor how many were kept.
    AppendShare(Box<Share>),
    /// A retry of a chat message its receiver's home saw already: answered once what came
    /// before it is committed, with whether the store holds the first copy.
    Confirm(Box<Confirm>),
    /// The user's home gives out `seq` from now on (a device came online): answer with
    /// the last one given out, so far.
    OpenInbox {
        /// The user.
        user: Box<str>,
        /// The home, which gets [`Reply::InboxOpened`].
        home: usize,
        /// The home's value for this opening.
        ticket: u32,
    },
    /// Read inbox events for a device (catching up after `auth`, or after a gap).
    ReadInbox {
        /// The user.
        user: Box<str>,
        /// The device.
        device: Waiter,
        /// Where from.
        from: ReadFrom,
    },
    /// A device (or the HTTP API's drain) has processed every event of `user` up to
    /// `upto`: senders waiting for a `delivery_receipt` get one (through the user's
    /// home), and what no device needs any more is pruned.
    Ack {
        /// The user.
        user: Box<str>,
        /// The highest `seq` processed.
        upto: u64,
        /// The device that acknowledged, told if `upto` is over the inbox's last `seq`.
        device: Option<Waiter>,
        /// The user's home (delivery receipts go out from there).
        home: usize,
    },
    /// Read `user`'s unacknowledged messages for the HTTP API.
    Peek {
        /// The user.
        user: Box<str>,
        /// The HTTP connection waiting for it.
        requester: Waiter,
    },
    /// Read a page of the conversation between `user` and `peer`, newest first.
    History {
        /// The asking user.
        user: Box<str>,
        /// The other side of the conversation.
        peer: Box<str>,
        /// Only messages with a timestamp before this (Unix ms).
        before: Option<u64>,
        /// At most this many (1 to [`crate::protocol::inbound::HISTORY_LIMIT_MAX`]).
        limit: usize,
        /// The connection waiting for it.
        requester: Waiter,
    },
    /// Find who sent `reader` the message `message_id` (delivered or queued to it): the
    /// sender the reader named, if it did, else the newest.
    FindSender {
        /// The user that read it.
        reader: Box<str>,
        /// The message id.
        message_id: Box<str>,
        /// The sender the `read_receipt` named (`senderId`), checked.
        named: Option<Box<str>>,
        /// The connection that sent the `read_receipt`.
        requester: Waiter,
    },
    /// Change a message in history (edit, delete, reaction) and answer who may see it.
    Amend(Box<Amend>),
    /// A user joined (`true`) or left a group, and the group's settings if they changed
    /// with it; answered with [`Reply::Membership`].
    Membership {
        /// The group.
        group: Box<str>,
        /// The user.
        user: Box<str>,
        /// Joined, or left.
        joined: bool,
        /// The device that asked.
        device: Waiter,
        /// The group's home reactor, which announces the change once it is committed.
        home: usize,
        /// The settings before and after, when they change.
        settings: Option<Box<SettingsChange>>,
    },
    /// Commit what came before, then stop (sent by the engine once its reactors are done).
    Shutdown,
}

impl Command {
    /// Whether the command is about what a cluster node shares with the others, in
    /// JetStream ([`super::SharedStore`]): inboxes (appends, reads, acks), history (its
    /// pages, changes and index) and the groups' members.
    pub fn is_shared(&self) -> bool {
        matches!(
            self,
            Command::Append(_)
                | Command::Membership { .. }
                | Command::AppendShare(_)
                | Command::Confirm(_)
                | Command::OpenInbox { .. }
                | Command::ReadInbox { .. }
                | Command::Ack { .. }
                | Command::Peek { .. }
                | Command::History { .. }
                | Command::FindSender { .. }
                | Command::Amend(_)
        )
    }
}

/// A group's settings before and after a membership change: the store keeps `after`,
/// and the group's home puts `before` back if it could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsChange {
    /// As they were.
    pub before: crate::protocol::access::Settings,
    /// As they are to be.
    pub after: crate::protocol::access::Settings,
}

/// What makes a message a chat message: who sent it and when. The store keeps chat
/// messages in history and recognises a retry of one it already holds.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The sending user.
    pub sender: std::sync::Arc<str>,
    /// The sender's message id.
    pub message_id: Box<str>,
    /// When the gateway accepted it (the `timestamp` of its `new_message`).
    pub timestamp_ms: u64,
}

/// One event as its user's home hands it to the store.
#[derive(Debug, Clone)]
pub struct Event {
    /// What it is.
    pub kind: OutKind,
    /// Its lane.
    pub priority: Priority,
    /// Its JSON, without `seq`.
    pub json: Bytes,
}

/// Append one event to `user`'s inbox.
#[derive(Debug)]
pub struct Append {
    /// Whose inbox.
    pub user: Box<str>,
    /// The `seq` its home gave it (and its devices online got), or `None`: the store
    /// gives the next (nobody is online to have seen one).
    pub seq: Option<u64>,
    /// The user's home, which numbered `seq`: told when the user's devices online leave
    /// too much unacknowledged ([`Reply::AcksOverdue`]).
    pub home: usize,
    /// The event.
    pub event: Event,
    /// Send the sender a `delivery_receipt` once a device acknowledges it.
    pub receipt: bool,
    /// Set for chat messages: kept in history too, and recognised when retried.
    pub chat: Option<Chat>,
    /// Who hears the outcome once it is committed.
    pub ack: Option<AckTo>,
    /// The home and its ticket: told when the message is not kept, so that a retry is
    /// tried again rather than confirmed.
    pub dedup: Option<(usize, Ticket)>,
    /// Set in a cluster for the copy of a direct message for its sender's other devices.
    pub copy: Option<SenderCopy>,
}

/// The copy of a direct message for its sender's other devices, as a cluster keeps it:
/// in the sender's inbox if another device of the sender is online on any node (one node
/// keeps it while one is online at the sender's home), written live to all of them but
/// the sending one.
#[derive(Debug)]
pub struct SenderCopy {
    /// The message's id: a retry through another node is not kept twice.
    pub message_id: Box<str>,
    /// The sending device, which has the message (none for the HTTP API).
    pub except: Option<Waiter>,
    /// Another device of the sender is online on this node; if not, the nodes holding
    /// the sender are asked first.
    pub others_here: bool,
}

/// Who hears what became of a message, once it is committed.
#[derive(Debug, Clone)]
pub struct AckTo {
    /// The sending connection (WebSocket or HTTP API).
    pub waiter: Waiter,
    /// Its message id.
    pub message_id: Box<str>,
    /// Whether a device online got it (`sent`), or none did (`queued`).
    pub delivered: bool,
}

/// A retry of a chat message the receiver's home has seen: confirm it once what came
/// before is committed.
#[derive(Debug)]
pub struct Confirm {
    /// The receiver.
    pub receiver: Box<str>,
    /// The sender and the message id.
    pub chat: Chat,
    /// Who hears the outcome.
    pub ack: AckTo,
}

/// One event for several users of one home (a group post's share, a broadcast's).
#[derive(Debug)]
pub struct Share {
    /// What it is.
    pub kind: OutKind,
    /// Its lane.
    pub priority: Priority,
    /// The JSON every row shares (a group post: written once), unless a row has its own.
    pub json: Bytes,
    /// One per user.
    pub rows: Vec<ShareRow>,
    /// The rows' users' home, which numbered their `seq`s (as [`Append::home`]).
    pub home: usize,
    /// What was fanned out; says what the answer goes on to.
    pub purpose: FanOut,
    /// The reactor waiting for the counts (the broadcast's requester, the group's home).
    pub reply_to: usize,
    /// The pending broadcast or group post there.
    pub request: u32,
    /// Users this home reached on a device (passed through to the answer).
    pub delivered: u32,
}

/// One user's row of a [`Share`].
#[derive(Debug)]
pub struct ShareRow {
    /// The user.
    pub user: Box<str>,
    /// As [`Append::seq`].
    pub seq: Option<u64>,
    /// This user's own JSON (a broadcast names each receiver), else the share's.
    pub json: Option<Bytes>,
    /// A group post's sending device, when it is this user's: the event is not written
    /// to it live. Only a cluster node's inboxes need it (one node's home wrote to the
    /// devices before the row was stored).
    pub except: Option<Waiter>,
}

/// What a [`Share`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOut {
    /// An HTTP API broadcast.
    Broadcast,
    /// A group post.
    GroupPost,
}

/// Where a read of an inbox starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// `auth` with `resume`: every event after `seq`, if `epoch` is the store's and they
    /// are all kept; else (`resumed:false`) every event no device acknowledged. In `seq`
    /// order either way: a device that resumes acknowledges the highest `seq` it got.
    Resume {
        /// The client's epoch.
        epoch: Box<str>,
        /// The last `seq` it processed.
        seq: u64,
    },
    /// What no device has acknowledged, in delivery order (priority, then `seq`), up to
    /// `upto` (0 on the first read: the last `seq` then), after `cursor`: for a device
    /// without `resume`, which does not acknowledge (v1's offline queue).
    Unacked {
        /// The end of the range, fixed by the first read.
        upto: u64,
        /// Where the previous page ended.
        cursor: Option<UnackedCursor>,
    },
    /// Every event after `seq`, in `seq` order (the next page, or what a device missed
    /// while it caught up).
    After {
        /// The last `seq` the device has.
        seq: u64,
    },
}

/// What the first page of a read after `auth` says for `auth_success`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The store's epoch.
    pub epoch: Box<str>,
    /// The last `seq` of the user's inbox.
    pub seq: u64,
    /// For a resume: whether it could be honoured.
    pub resumed: Option<bool>,
}

/// A change to a message in history, asked for by one side of its conversation.
#[derive(Debug, Clone)]
pub struct Amend {
    /// Who changes it (an edit or delete must come from the message's sender).
    pub actor: Box<str>,
    /// The other side of the conversation.
    pub peer: Box<str>,
    /// The message.
    pub message_id: Box<str>,
    /// The change.
    pub change: Amendment,
    /// The connection that asked.
    pub requester: Waiter,
}

/// A change to a message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Amendment {
    /// New text.
    Edit(Box<str>),
    /// Deleted.
    Delete,
    /// A reaction added by the actor.
    ReactionAdd(Box<str>),
    /// A reaction removed by the actor.
    ReactionRemove(Box<str>),
}

impl Amendment {
    /// The borrowed form, as the protocol encodes it.
    pub fn as_change(&self) -> crate::protocol::inbound::Change<'_> {
        use crate::protocol::inbound::Change;
        match self {
            Amendment::Edit(content) => Change::Edit(content),
            Amendment::Delete => Change::Delete,
            Amendment::ReactionAdd(emoji) => Change::ReactionAdd(emoji),
            Amendment::ReactionRemove(emoji) => Change::ReactionRemove(emoji),
        }
    }

    /// The owned form of a parsed change.
    pub fn from_change(change: &crate::protocol::inbound::Change<'_>) -> Amendment {
        use crate::protocol::inbound::Change;
        match *change {
            Change::Edit(content) => Amendment::Edit(content.into()),
            Change::Delete => Amendment::Delete,
            Change::ReactionAdd(emoji) => Amendment::ReactionAdd(emoji.into()),
            Change::ReactionRemove(emoji) => Amendment::ReactionRemove(emoji.into()),
        }
    }
}

/// `(sender, message id)` of messages whose senders wait for a `delivery_receipt`.
pub type ReceiptsDue = Vec<(Box<str>, Box<str>)>;

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or already held: a retry); `delivered`: a device online got it.
    Kept {
        /// `sent` rather than `queued`.
        delivered: bool,
    },
    /// The user's inbox holds `--queue-max-per-user` unacknowledged events.
    QueueFull,
    /// The sender has `--queue-max-per-sender` messages waiting for the receiver, none of
    /// them read since (a cluster node's count, `cluster::unread`; one node's home refuses
    /// before the store is asked).
    SenderQuota,
    /// A retry of a message whose first copy is not kept: it was refused, or it reached
    /// the receiver's devices online but its inbox was full or the commit failed.
    NotHeld,
    /// The commit failed (disk full, I/O error): nothing was stored.
    Failed(Failure),
}

/// An answer from the store to a reactor.
#[derive(Debug)]
pub enum Reply {
    /// What became of an appended (or confirmed) message, for its sender.
    Appended {
        /// The sending connection.
        sender: Waiter,
        /// Its message id.
        message_id: Box<str>,
        /// What happened.
        outcome: Outcome,
    },
    /// To a home: a user's inbox is at `--queue-max-per-user` and its devices online were
    /// given a step more without acking (they read but do not ack): their acking devices
    /// are closed, so that the inbox bound holds (the store numbers, and refuses past it,
    /// again).
    AcksOverdue {
        /// The user.
        user: Box<str>,
    },
    /// To a home, in a cluster: the user's devices on this node missed inbox events that
    /// can no longer be given to them in order (removed while the node was cut off from
    /// NATS): they are closed, and resume.
    EventsMissed {
        /// The user.
        user: Box<str>,
    },
    /// To a home: a message it sent was not kept (full inbox, failed commit).
    NotKept {
        /// The ticket the home gave it.
        ticket: Ticket,
    },
    /// To a home: the last `seq` of an inbox it opened.
    InboxOpened {
        /// The user.
        user: Box<str>,
        /// The home's value for the opening.
        ticket: u32,
        /// The last `seq` given out before the opening.
        last: u64,
    },
    /// A page of inbox events for a device.
    InboxPage {
        /// The device.
        device: Waiter,
        /// The user.
        user: Box<str>,
        /// On the first page after `auth`: what `auth_success` says.
        greeting: Option<Greeting>,
        /// The events, in delivery order.
        events: Vec<InboxEvent>,
        /// Where the next page starts; `None` on the last.
        next: Option<ReadFrom>,
        /// Every event up to this `seq` is in this page or an earlier one: what a device
        /// that does not acknowledge is taken to have once the page is written; on the
        /// last page, where the device is caught up to.
        covered: u64,
        /// Set when the store could not read.
        error: Option<Failure>,
    },
    /// To a device: its `ack` named a `seq` above the inbox's last.
    AckRefused {
        /// The device.
        device: Waiter,
        /// What it sent.
        seq: u64,
        /// The inbox's last `seq`.
        last: u64,
    },
    /// To a user's home: senders waiting for a `delivery_receipt`, now that a device of
    /// the user acknowledged their messages.
    Receipts {
        /// The user (the receiver).
        user: Box<str>,
        /// `(sender, message id)` of each.
        receipts: ReceiptsDue,
    },
    /// A user's unacknowledged messages for the HTTP API.
    Peeked {
        /// The HTTP connection.
        requester: Waiter,
        /// The user.
        user: Box<str>,
        /// `new_message` JSON of each, in delivery order.
        messages: Vec<Bytes>,
        /// The highest `seq` read (what a drain acknowledges once the answer is written).
        upto: u64,
        /// More remain after these.
        more: bool,
        /// Set when the store could not read the inbox.
        error: Option<Failure>,
    },
    /// To the reactor waiting on a fan-out: one home's counts, after the commit.
    FanOutQueued {
        /// What was fanned out.
        purpose: FanOut,
        /// The pending broadcast or group post there.
        request: u32,
        /// Users reached on a device.
        delivered: u32,
        /// Users whose inbox now holds it and no device had it.
        queued: u32,
        /// Users it could not be kept for (full inbox, failed commit).
        not_kept: u32,
        /// The commit failed (nothing of this batch is stored).
        failed: bool,
    },
    /// A page of history, newest first.
    History {
        /// The connection that asked.
        requester: Waiter,
        /// The other side of the conversation.
        peer: Box<str>,
        /// `new_message` JSON of each message.
        messages: Vec<Bytes>,
        /// Older messages remain (the page is full by count or by bytes).
        more: bool,
        /// Set when the store could not read it.
        error: Option<Failure>,
    },
    /// The outcome of an `Amend`.
    Amended {
        /// What was asked.
        amend: Box<Amend>,
        /// Whether the message was found (and changed).
        found: bool,
        /// Set when the store could not look.
        error: Option<Failure>,
    },
    /// Who sent the message a `read_receipt` named.
    SenderFound {
        /// The connection that sent the `read_receipt`.
        requester: Waiter,
        /// The user that read it.
        reader: Box<str>,
        /// The message id.
        message_id: Box<str>,
        /// The sender; `None` when no such message reached the reader.
        sender: Option<Box<str>>,
        /// Set when the store could not look.
        error: Option<Failure>,
    },
    /// A membership change is committed (or could not be).
    Membership {
        /// The group.
        group: Box<str>,
        /// The user.
        user: Box<str>,
        /// Joined, or left.
        joined: bool,
        /// The device that asked.
        device: Waiter,
        /// The settings change that went with it.
        settings: Option<Box<SettingsChange>>,
        /// Why it is not kept; `None`: it is on disk (in a cluster, in JetStream).
        failed: Option<Failure>,
    },
}

impl Reply {
    /// Whether the answer is for the reactor's [`crate::shard::Shard`] rather than for
    /// its driver (which writes inbox pages to devices and answers HTTP API requests).
    pub fn is_for_shard(&self) -> bool {
        match self {
            Reply::NotKept { .. }
            | Reply::AcksOverdue { .. }
            | Reply::EventsMissed { .. }
            | Reply::InboxOpened { .. }
            | Reply::Receipts { .. }
            | Reply::Membership { .. }
            | Reply::History { .. }
            | Reply::Amended { .. }
            | Reply::SenderFound { .. } => true,
            Reply::FanOutQueued { purpose, .. } => *purpose == FanOut::GroupPost,
            Reply::Appended { .. }
            | Reply::InboxPage { .. }
            | Reply::AckRefused { .. }
            | Reply::Peeked { .. } => false,
        }
    }
}
