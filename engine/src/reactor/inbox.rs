//! A device's inbox from the connection's side, and the store's other answers for this
//! reactor's connections.
//!
//! Once its home has made a device live (`Registered`), it reads its inbox: the first
//! page brings `auth_success`, each next page is read once the kernel has taken this one,
//! and what came live meanwhile was held ([`crate::conn::CatchUp`]) and is written
//! after the last page, but inbox events the read already gave. A device that does not
//! acknowledge (no `resume`) is taken to have a page once the kernel has it.
//!
//! Also here: what became of a sender's message (`message_ack`) and refused acks. (The
//! home numbers events and hands them to the store: [`crate::shard`].)

use super::core::Reactor;
use crate::conn::{Flags, PageInFlight, Phase};
use crate::{
    protocol::{
        codes::ErrorCode,
        now_ms,
        outbound::{self, InboxState, Outgoing},
        Priority,
    },
    router::{home_of, ConnAddr},
    store::{Command, FanOut, Greeting, InboxEvent, Outcome, ReadFrom, Reply},
    ws::close,
};

use crate::conn::CatchUp;

/// One page of a device's inbox, as the store answered it.
pub(super) struct Page {
    /// The user.
    pub user: Box<str>,
    /// For the first page: what `auth_success` says.
    pub greeting: Option<Greeting>,
    /// The events, in delivery order.
    pub events: Vec<InboxEvent>,
    /// Where the next page starts.
    pub next: Option<ReadFrom>,
    /// How far the device is caught up once this page is written.
    pub covered: u64,
}

impl Reactor {
    /// An answer from the store for one of this reactor's connections (the home's go to
    /// the shard).
    pub(super) fn on_store_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Appended {
                sender,
                message_id,
                outcome,
            } => self.answer_appended(sender.into(), &message_id, &outcome),
            Reply::FanOutQueued {
                purpose: FanOut::Broadcast,
                request,
                delivered,
                queued,
                not_kept,
                ..
            } => self.on_broadcast_reply(request, delivered, queued, not_kept),
            Reply::Peeked {
                requester,
                user,
                messages,
                upto,
                more,
                error,
            } => {
                let read = (&messages[..], upto, more);
                self.answer_api_queue(requester.into(), &user, read, error);
            }
            Reply::InboxPage {
                device,
                user,
                greeting,
                events,
                next,
                covered,
                error,
            } => {
                let at = ConnAddr::from(device);
                match error {
                    Some(why) => {
                        self.end_catch_up(at);
                        let text = format!("the inbox could not be read: {why}");
                        let code = why.code_or(ErrorCode::StoreError);
                        self.send_error(at, code, &text, None);
                        self.begin_close(at, close::INTERNAL_ERROR, "inbox unreadable");
                    }
                    None => {
                        let page = Page {
                            user,
                            greeting,
                            events,
                            next,
                            covered,
                        };
                        self.write_inbox_page(at, page);
                    }
                }
            }
            Reply::AckRefused { device, seq, last } => {
                let text = format!("ack seq {seq} is above the inbox's last seq {last}");
                self.send_error(device.into(), ErrorCode::BadRequest, &text, None);
            }
            other => debug_assert!(false, "for the shard, not the driver: {other:?}"),
        }
    }

    /// The home made the device live: it reads its inbox, from where it left off if it
    /// said so.
    pub(super) fn start_catch_up(&mut self, at: ConnAddr) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let (Some(user), Some(catch_up)) = (
            conn.user.clone(),
            conn.aux.as_ref().and_then(|a| a.catch_up.as_ref()),
        ) else {
            return;
        };
        let from = match &catch_up.resume {
            Some((epoch, seq)) => ReadFrom::Resume {
                epoch: epoch.clone(),
                seq: *seq,
            },
            None => ReadFrom::Unacked {
                upto: 0,
                cursor: None,
            },
        };
        self.read_inbox(at, (*user).into(), from);
    }

    /// Writes a page of a device's inbox (after `auth_success`, on the first). The next
    /// step waits until the kernel has taken it all ([`Reactor::page_taken`]).
    fn write_inbox_page(&mut self, at: ConnAddr, page: Page) {
        let Some(conn) = self.conn_mut(at) else {
            return; // closed meanwhile: nothing was acknowledged, all stays kept
        };
        if conn.phase != Phase::Authenticated || !conn.flags.has(Flags::CATCHING_UP) {
            return;
        }
        if let Some(greeting) = &page.greeting {
            let catch_up = conn.aux.as_ref().and_then(|a| a.catch_up.as_ref());
            let device = catch_up.map(|c| c.device_id.clone()).unwrap_or_default();
            // A resume honoured: the device has every event up to where it resumed, and
            // one of them coming live (a cluster's republish, late) is not new to it.
            if let (Some(true), Some((_, resumed_from))) =
                (greeting.resumed, catch_up.and_then(|c| c.resume.as_ref()))
            {
                conn.inbox_seq = conn.inbox_seq.max(*resumed_from);
            }
            let inbox = InboxState {
                epoch: &greeting.epoch,
                seq: greeting.seq,
                resumed: greeting.resumed,
            };
            outbound::auth_success(&mut self.json, (&page.user, &device), inbox, now_ms());
            self.enqueue(at, self.json.frame(), Priority::High);
        }
        for event in &page.events {
            let frame = Outgoing::with_seq(event.kind, &event.json, event.seq);
            self.enqueue(at, frame, event.priority);
        }
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        let highest = page.events.iter().map(|e| e.seq).max().unwrap_or(0);
        conn.inbox_seq = conn.inbox_seq.max(highest);
        let in_flight = PageInFlight {
            user: page.user,
            covered: page.covered,
            next: page.next,
            drain: false,
            any: !page.events.is_empty(),
        };
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.aux_mut().page_in_flight = Some(Box::new(in_flight));
        self.pages_written(at);
    }

    /// A page is all with the kernel. A device that does not acknowledge is taken to
    /// have it; then the next page is read, or the device tells its home how far it got.
    /// An HTTP drain's answer acknowledges what it carried.
    pub(crate) fn page_taken(&mut self, at: ConnAddr, page: PageInFlight) {
        let home = home_of(&page.user, self.shared.config.reactors);
        let acks = self.conn_mut(at).is_some_and(|c| c.flags.has(Flags::ACKS));
        if (!acks || page.drain) && page.any {
            let _ = self.store.send(Command::Ack {
                user: page.user.clone(),
                upto: page.covered,
                device: None,
                home,
            });
        }
        let authenticated = self
            .conn_mut(at)
            .is_some_and(|c| c.phase == Phase::Authenticated);
        if page.drain || !authenticated {
            return;
        }
        match page.next {
            Some(from) => self.read_inbox(at, page.user, from),
            None => self.finish_catch_up(at),
        }
    }

    /// The device has read its inbox: what came live meanwhile is written, in order, but
    /// the inbox events the read gave: those at or below the highest `seq` it gave (an
    /// event in between that the read did not give was refused by the store). From here
    /// on a live event at or below it is one the read gave, arriving late
    /// ([`crate::conn::Conn::inbox_seq`]). The store prunes nothing of an inbox being
    /// read.
    fn finish_catch_up(&mut self, at: ConnAddr) {
        let Some(catch_up) = self.end_catch_up(at) else {
            return;
        };
        for (frame, priority) in catch_up.held {
            self.send(at, frame, priority);
        }
    }

    /// Ends a device's catch-up: frames go out as they come again.
    fn end_catch_up(&mut self, at: ConnAddr) -> Option<Box<CatchUp>> {
        let conn = self.conn_mut(at)?;
        conn.flags.set(Flags::CATCHING_UP, false);
        let catch_up = conn.aux.as_mut().and_then(|a| a.catch_up.take());
        conn.trim_aux();
        catch_up
    }

    /// Asks the store for a page of the user's inbox for this device.
    pub(super) fn read_inbox(&mut self, at: ConnAddr, user: Box<str>, from: ReadFrom) {
        let _ = self.store.send(Command::ReadInbox {
            user,
            device: at.into(),
            from,
        });
    }

    /// Tells a sender (WebSocket or HTTP API) what became of its message once the store
    /// committed it (or could not).
    pub(super) fn answer_appended(
        &mut self,
        sender: ConnAddr,
        message_id: &str,
        outcome: &Outcome,
    ) {
        let Some(conn) = self.conn_mut(sender) else {
            return;
        };
        if conn.phase == Phase::Http {
            return self.answer_api_appended(sender, outcome);
        }
        match outcome {
            Outcome::Kept { delivered } => {
                let status = if *delivered { "sent" } else { "queued" };
                outbound::message_ack(&mut self.json, message_id, status, now_ms());
                self.send(sender, self.json.frame(), Priority::High);
            }
            Outcome::QueueFull | Outcome::SenderQuota => {
                let reason = match outcome {
                    Outcome::QueueFull => "queue_full",
                    _ => "sender_quota",
                };
                outbound::message_rejected(&mut self.json, message_id, reason, now_ms());
                self.send(sender, self.json.frame(), Priority::High);
            }
            Outcome::NotHeld => {
                let text = "the first copy of this message was not kept (it was refused, or \
                            reached the receiver's devices online but could not be stored)";
                self.send_error(sender, ErrorCode::PersistenceFailed, text, Some(message_id));
            }
            Outcome::Failed(why) => {
                let text = format!("the message could not be stored: {why}");
                let code = why.code_or(ErrorCode::PersistenceFailed);
                self.send_error(sender, code, &text, Some(message_id));
            }
        }
    }
}
