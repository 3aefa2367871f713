//! Direct messages, typing and receipts. At the sender's reactor each becomes one frame,
//! encoded once, mailed to the receiver's home. At the home it goes to every device of
//! the user online, or, when none is, is queued in the store, refused to its sender or
//! dropped, as the delivery says. A chat message (one with an ack request) is remembered
//! in the dedup window, so a retry is acknowledged again and not delivered twice, and is
//! kept in history.

use crate::protocol::codes::ErrorCode;
use std::sync::Arc;

use bytes::Bytes;
use smallvec::SmallVec;

use super::{
    dedup::{PairKey, Seen},
    Effects, Shard,
};
use crate::{
    protocol::{
        inbound::Text,
        outbound::{self, NewMessage, Outgoing},
        Priority,
    },
    router::{AckRequest, AckStatus, ConnAddr, Delivery, Envelope, WhenOffline},
    store::{Chat, Command, Enqueue, Failure},
};

impl Shard {
    /// At the sender's reactor: `send_message` from a device (`from_device`) or the HTTP
    /// API. The receiver's devices get the `new_message` (and the sender hears `sent`, or
    /// `queued` once it is stored), and so do the sender's own devices, but the sending
    /// one.
    pub(super) fn send_message(
        &mut self,
        conn: ConnAddr,
        user: &Arc<str>,
        message: &Text<'_>,
        from_device: bool,
        out: &mut Effects,
    ) {
        let sent_ms = self.now_ms;
        let frame = self.new_message_frame(user, message, None);
        // Delivery receipts go to devices; an HTTP API sender has gone by then.
        let ack = AckRequest {
            sender: conn,
            message_id: message.message_id.into(),
            receipt: from_device,
            sender_user: user.clone(),
            sent_ms,
        };
        let device = from_device.then_some(conn);
        let to_self = message.to == &**user;
        let mut to_receiver = self.delivery(message.to, frame.clone(), message.priority);
        to_receiver.except = if to_self { device } else { None };
        to_receiver.ack = Some(ack);
        self.mail_delivery(to_receiver, out);
        if !to_self {
            // The sender's other devices see what it sent.
            let mut copy = self.delivery(user, frame, message.priority);
            copy.except = device;
            copy.copy_of = Some(message.message_id.into());
            self.mail_delivery(copy, out);
        }
    }

    /// At the API connection's reactor: `POST /api/messages/send`, as a `send_message`
    /// of its sender that no device sent.
    pub(super) fn api_send(
        &mut self,
        conn: ConnAddr,
        message_id: &str,
        request: &crate::http::api::SendRequest,
        out: &mut Effects,
    ) {
        let user: Arc<str> = request.sender_id.as_str().into();
        let message = Text {
            message_id,
            to: &request.receiver_id,
            content: &request.text,
            message_type: &request.message_type,
            priority: request.priority,
        };
        self.send_message(conn, &user, &message, false, out);
    }

    /// The `new_message` frame of `message` from `user` (in `group`, for a post), encoded
    /// once for every device it goes to.
    pub(super) fn new_message_frame(
        &mut self,
        user: &str,
        message: &Text<'_>,
        group: Option<&str>,
    ) -> Outgoing {
        outbound::new_message(
            &mut self.json,
            &NewMessage {
                message_id: message.message_id,
                sender_id: user,
                receiver_id: message.to,
                content: message.content,
                message_type: message.message_type,
                priority: message.priority,
                timestamp_ms: self.now_ms,
                group_id: group,
            },
        );
        self.json.frame()
    }

    /// At the sender's reactor: `typing`, to the receiver's devices online (never queued).
    pub(super) fn typing(
        &mut self,
        user: &str,
        receiver: &str,
        is_typing: bool,
        out: &mut Effects,
    ) {
        outbound::typing(&mut self.json, user, is_typing, self.now_ms);
        let frame = self.json.frame();
        let delivery = self.delivery(receiver, frame, Priority::High);
        self.mail_delivery(delivery, out);
    }

    /// At the reader's reactor: `read_receipt`. Without `senderId` the store finds the
    /// sender among the messages delivered or queued to the reader.
    pub(super) fn read_receipt(
        &mut self,
        conn: ConnAddr,
        reader: &str,
        message_id: &str,
        sender: Option<&str>,
        out: &mut Effects,
    ) {
        match sender {
            Some(sender) => self.send_read_receipt(sender, message_id, reader, out),
            None => out.store(Command::FindSender {
                reader: reader.into(),
                message_id: message_id.into(),
                requester: conn.into(),
            }),
        }
    }

    /// The store's answer to a `read_receipt` without `senderId`: the receipt goes to
    /// the sender, or the reader hears that no such message reached it.
    pub(super) fn sender_found(
        &mut self,
        requester: ConnAddr,
        reader: &str,
        message_id: &str,
        sender: Option<Box<str>>,
        error: Option<Failure>,
        out: &mut Effects,
    ) {
        match (sender, error) {
            (Some(sender), _) => self.send_read_receipt(&sender, message_id, reader, out),
            (None, Some(why)) => {
                let text = format!("the message's sender could not be looked up: {why}");
                out.error(requester, ErrorCode::StoreError, text, Some(message_id));
            }
            (None, None) => {
                let text = "no message with this id was delivered or queued to you";
                out.error(requester, ErrorCode::NotFound, text, Some(message_id));
            }
        }
    }

    /// `read_receipt {messageId, readerId}` to every device of `sender`, queued if none
    /// is online.
    fn send_read_receipt(
        &mut self,
        sender: &str,
        message_id: &str,
        reader: &str,
        out: &mut Effects,
    ) {
        outbound::read_receipt(&mut self.json, message_id, reader, self.now_ms);
        let frame = self.json.frame();
        self.deliver_durable(sender, frame, out);
    }

    /// A device took part of `receiver`'s queue: each sender that asked gets a
    /// `delivery_receipt` (queued in turn if it is offline by now).
    pub(super) fn queue_taken(&mut self, receiver: &str, stored: &[Bytes], out: &mut Effects) {
        for payload in stored {
            let message: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let (Some(message_id), Some(sender)) =
                (message["messageId"].as_str(), message["senderId"].as_str())
            else {
                continue;
            };
            outbound::delivery_receipt(&mut self.json, message_id, receiver, self.now_ms);
            let frame = self.json.frame();
            self.deliver_durable(sender, frame, out);
        }
    }

    /// Sends `frame` to every online device of `user`, or queues it when none is online
    /// (nobody is told the outcome: receipts, edits).
    pub(super) fn deliver_durable(&mut self, user: &str, frame: Outgoing, out: &mut Effects) {
        let mut delivery = self.delivery(user, frame, Priority::Normal);
        delivery.offline = WhenOffline::Queue;
        self.mail_delivery(delivery, out);
    }

    /// `frame` for every online device of `user`, accepted now: nobody is excepted,
    /// nobody hears the outcome, and it is dropped when no device is online. Callers
    /// change what differs before [`Shard::mail_delivery`].
    pub(super) fn delivery(&self, user: &str, frame: Outgoing, priority: Priority) -> Delivery {
        Delivery {
            user: user.into(),
            frame,
            priority,
            except: None,
            ack: None,
            copy_of: None,
            accepted_ns: self.now_ns,
            offline: WhenOffline::Drop,
        }
    }

    /// Mails a delivery to its user's home.
    pub(super) fn mail_delivery(&self, delivery: Delivery, out: &mut Effects) {
        let home = self.home_of(&delivery.user);
        out.mail(home, Envelope::Deliver(Box::new(delivery)));
    }

    /// Delivers to the user's online devices (but `except`), or hands it on to
    /// [`Shard::undelivered`]. The sender of a chat message hears `sent` once the frames
    /// are on their way to the devices.
    pub(super) fn deliver(&mut self, delivery: Delivery, out: &mut Effects) {
        if let Some(id) = &delivery.copy_of {
            // A retry's copy for the sender's own devices: each got the first one.
            let key = self.recent.copy_key(&delivery.user, id);
            if self.recent.check(key).is_some() {
                return;
            }
            self.recent.record(key, Seen::Delivered, self.now_ms);
        }
        let key = delivery
            .ack
            .as_ref()
            .map(|ack| self.recent.key(&ack.sender_user, &ack.message_id));
        match key.and_then(|key| self.recent.check(key)) {
            // A retry of a message a device got: acknowledged again, and no further.
            Some(Seen::Delivered) => {
                if let Some(ack) = delivery.ack {
                    ack_to(ack.sender, ack.message_id, AckStatus::Sent, out);
                }
                return;
            }
            // A retry of a message handed to the store: the first copy may not be
            // committed yet, or may be refused. The store answers the retry after its
            // commit, recognising a message it holds (never queued twice).
            Some(Seen::Queued) => return self.undelivered(delivery, key, out),
            None => {}
        }
        // Hot path: a user's devices fit inline; the frame is shared, not copied.
        let targets: SmallVec<[ConnAddr; 4]> = self
            .directory
            .devices(&delivery.user)
            .iter()
            .map(|d| d.addr)
            .filter(|a| Some(*a) != delivery.except)
            .collect();
        if targets.is_empty() {
            return self.undelivered(delivery, key, out);
        }
        for addr in targets {
            let (frame, priority) = (delivery.frame.clone(), delivery.priority);
            out.frame_to(addr, frame, priority, delivery.accepted_ns);
        }
        if let (Some(ack), Some(key)) = (delivery.ack, key) {
            self.recent.record(key, Seen::Delivered, self.now_ms);
            // History: nobody waits on it, so a store that is gone loses only history.
            out.store(Command::Record {
                receiver: delivery.user,
                message_id: ack.message_id.clone(),
                payload: delivery.frame.json(),
                chat: chat_of(&ack),
            });
            ack_to(ack.sender, ack.message_id, AckStatus::Sent, out);
        }
    }

    /// A delivery no device of its user got: queued in the store (whose commit answers
    /// the sender, if any), refused to the sender, or dropped, as the delivery says.
    fn undelivered(&mut self, delivery: Delivery, key: Option<PairKey>, out: &mut Effects) {
        let Delivery {
            user,
            frame,
            priority,
            ack,
            offline,
            ..
        } = delivery;
        if ack.is_none() {
            match offline {
                WhenOffline::Queue => {}
                WhenOffline::Refuse { sender, reference } => {
                    let text = "the receiver has no device online (calls are never queued)";
                    return out.error(sender, ErrorCode::PeerOffline, text, Some(&reference));
                }
                WhenOffline::Drop => return,
            }
        }
        let ticket = key.map(|key| {
            let serial = self.recent.record(key, Seen::Queued, self.now_ms);
            (self.id, key.ticket(serial))
        });
        let (sender, message_id, receipt, chat) = match ack {
            Some(ack) => {
                let chat = Some(chat_of(&ack));
                (Some(ack.sender), ack.message_id, ack.receipt, chat)
            }
            None => (None, Box::from(""), false, None),
        };
        out.store(Command::Enqueue(Box::new(Enqueue {
            user,
            priority,
            payload: frame.json(),
            kind: frame.kind,
            sender: sender.map(Into::into),
            message_id,
            receipt,
            dedup: ticket,
            chat,
        })));
    }

    /// The store could not take a message (it is shutting down): nothing is stored, so
    /// a retry must be tried again and the sender hears that the receiver is offline.
    pub(super) fn enqueue_refused(&mut self, enqueue: Enqueue, out: &mut Effects) {
        if let Some((_, ticket)) = enqueue.dedup {
            let (key, serial) = PairKey::from_ticket(ticket);
            self.recent.forget(key, serial);
        }
        if let Some(sender) = enqueue.sender {
            ack_to(sender.into(), enqueue.message_id, AckStatus::Offline, out);
        }
    }
}

/// Mails the outcome of a chat message to its sender's reactor.
fn ack_to(sender: ConnAddr, message_id: Box<str>, status: AckStatus, out: &mut Effects) {
    let ack = Envelope::Ack {
        sender,
        message_id,
        status,
    };
    out.mail(sender.reactor as usize, ack);
}

/// The message as the store keeps it in history.
fn chat_of(ack: &AckRequest) -> Chat {
    Chat {
        sender: ack.sender_user.clone(),
        timestamp_ms: ack.sent_ms,
    }
}
