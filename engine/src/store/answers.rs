//! The store's answers, built the same way whether a commit held the command or failed.

use super::{AckTo, Command, Failure, InboxEvent, Outcome, Reply, Share, Ticket, Waiter};
use crate::protocol::codes::OutKind;

/// The answer to one append: its sender hears the outcome, and a home whose message was
/// not kept, and reached no device, forgets it from its dedup window (so a retry is tried
/// again; one that reached a device is not delivered twice). One node's homes write an
/// event to the devices online before the store has it: `delivered` says one got it.
pub(crate) fn append_outcome(
    replies: &mut Vec<(usize, Reply)>,
    ack: Option<&AckTo>,
    dedup: Option<(usize, Ticket)>,
    outcome: Outcome,
) {
    let got_it = ack.is_some_and(|a| a.delivered);
    answer_append(replies, (ack, dedup, outcome), got_it);
}

/// The same for a cluster's inboxes, whose devices get an event only once JetStream has
/// it: one not kept reached no device, and its home forgets it whatever `delivered` says
/// (else a retry would be confirmed `sent` and the message lost).
pub(crate) fn stored_first_outcome(
    replies: &mut Vec<(usize, Reply)>,
    ack: Option<&AckTo>,
    dedup: Option<(usize, Ticket)>,
    outcome: Outcome,
) {
    answer_append(replies, (ack, dedup, outcome), false);
}

fn answer_append(
    replies: &mut Vec<(usize, Reply)>,
    (ack, dedup, outcome): (Option<&AckTo>, Option<(usize, Ticket)>, Outcome),
    got_it: bool,
) {
    if !matches!(outcome, Outcome::Kept { .. }) && !got_it {
        if let Some((home, ticket)) = dedup {
            replies.push((home, Reply::NotKept { ticket }));
        }
    }
    if let Some(ack) = ack {
        let reply = Reply::Appended {
            sender: ack.waiter,
            message_id: ack.message_id.clone(),
            outcome,
        };
        replies.push((ack.waiter.reactor, reply));
    }
}

/// Whether a membership change is on disk (`failed`: why not), for the group's home
/// reactor (`None` for any other command).
pub(crate) fn membership_answer(
    command: &Command,
    failed: Option<Failure>,
) -> Option<(usize, Reply)> {
    let Command::Membership {
        group,
        user,
        joined,
        device,
        home,
        settings,
    } = command
    else {
        return None;
    };
    let reply = Reply::Membership {
        group: group.clone(),
        user: user.clone(),
        joined: *joined,
        device: *device,
        settings: settings.clone(),
        failed,
    };
    Some((*home, reply))
}

/// A page of history (or the store's error) for the requester's reactor.
pub(crate) fn history_answer(
    requester: Waiter,
    peer: &str,
    (messages, more): (Vec<bytes::Bytes>, bool),
    error: Option<Failure>,
) -> (usize, Reply) {
    let reply = Reply::History {
        requester,
        peer: peer.into(),
        messages,
        more,
        error,
    };
    (requester.reactor, reply)
}

/// The sender a `read_receipt` named, `(reader, message id, sender)`, or the store's
/// error, for the requester's reactor.
pub(crate) fn sender_answer(
    requester: Waiter,
    (reader, message_id, sender): (&str, &str, Option<Box<str>>),
    error: Option<Failure>,
) -> (usize, Reply) {
    let reply = Reply::SenderFound {
        requester,
        reader: reader.into(),
        message_id: message_id.into(),
        sender,
        error,
    };
    (requester.reactor, reply)
}

/// The HTTP API's read of a user's queue, for the requester's reactor: the `new_message`
/// JSON of `events` (other events are not messages), up to `upto`, `more` if others wait.
pub(crate) fn peeked(
    requester: Waiter,
    user: &str,
    (events, upto, more): (Vec<InboxEvent>, u64, bool),
) -> (usize, Reply) {
    let messages = events
        .into_iter()
        .filter(|e| e.kind == OutKind::NewMessage)
        .map(|e| e.json)
        .collect();
    let reply = Reply::Peeked {
        requester,
        user: user.into(),
        messages,
        upto,
        more,
        error: None,
    };
    (requester.reactor, reply)
}

/// A home's fan-out counts for the reactor waiting on them.
pub(crate) fn fan_out_counts(
    share: &Share,
    queued: u32,
    not_kept: u32,
    failed: bool,
) -> (usize, Reply) {
    let reply = Reply::FanOutQueued {
        purpose: share.purpose,
        request: share.request,
        delivered: share.delivered,
        queued,
        not_kept,
        failed,
    };
    (share.reply_to, reply)
}

/// The answer to a read (or a change that must read first) that a failed batch
/// could not serve: the asking connection is told why.
pub(crate) fn unread_answer(command: &Command, why: Failure) -> Option<(usize, Reply)> {
    let error = Some(why);
    let (to, reply) = match command {
        Command::ReadInbox { user, device, .. } => {
            let reply = Reply::InboxPage {
                device: *device,
                user: user.clone(),
                greeting: None,
                events: Vec::new(),
                next: None,
                covered: 0,
                error,
            };
            (device.reactor, reply)
        }
        Command::Peek { user, requester } => {
            let reply = Reply::Peeked {
                requester: *requester,
                user: user.clone(),
                messages: Vec::new(),
                upto: 0,
                more: false,
                error,
            };
            (requester.reactor, reply)
        }
        Command::History {
            peer, requester, ..
        } => history_answer(*requester, peer, (Vec::new(), false), error),
        Command::FindSender {
            reader,
            message_id,
            requester,
            ..
        } => sender_answer(*requester, (reader, message_id, None), error),
        Command::Amend(amend) => {
            let reply = Reply::Amended {
                amend: amend.clone(),
                found: false,
                error,
            };
            (amend.requester.reactor, reply)
        }
        _ => return None,
    };
    Some((to, reply))
}
