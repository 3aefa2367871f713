//! Direct messages, typing and receipts. At the sender's reactor each becomes one frame,
//! encoded once, mailed to the receiver's home. At the home an inbox event is numbered,
//! written to the user's live devices and appended to the user's inbox in the store,
//! whose commit answers the sender (`sent` when a device got it, else `queued`); typing
//! and call signals go to the live devices only. A chat message (one with an ack
//! request) is remembered in the dedup window, so a retry is confirmed after the first
//! copy's commit and not delivered twice, and is kept in history.

use crate::protocol::codes::ErrorCode;
use std::sync::Arc;

use super::{
    dedup::{PairKey, Seen},
    Effects, Shard,
};
use crate::{
    cluster::relay::Relay,
    protocol::{
        inbound::Text,
        outbound::{self, NewMessage, Outgoing},
        Priority,
    },
    router::{AckRequest, AckStatus, ConnAddr, Delivery, Durability, Envelope},
    store::{AckTo, Append, Chat, Command, Confirm, Event, Failure, SenderCopy, Waiter},
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
        let mut delivery = self.delivery(receiver, frame, Priority::High);
        delivery.durability = Durability::Transient;
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
        // Only a message that reached the reader gets its receipt (a forged one naming any
        // sender would otherwise fill the sender's queue): the store's index is asked.
        out.store(Command::FindSender {
            reader: reader.into(),
            message_id: message_id.into(),
            named: sender.map(Into::into),
            requester: conn.into(),
        });
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

    /// At a receiver's home: a device of `receiver` acknowledged these messages; each
    /// sender gets a `delivery_receipt` (an event of the sender's inbox in turn).
    pub(super) fn receipts_due(
        &mut self,
        receiver: &str,
        receipts: &[(Box<str>, Box<str>)],
        out: &mut Effects,
    ) {
        for (sender, message_id) in receipts {
            outbound::delivery_receipt(&mut self.json, message_id, receiver, self.now_ms);
            let frame = self.json.frame();
            self.deliver_durable(sender, frame, out);
        }
    }

    /// Sends `frame` to every device of `user` as an inbox event (nobody is told the
    /// outcome: receipts, edits).
    pub(super) fn deliver_durable(&mut self, user: &str, frame: Outgoing, out: &mut Effects) {
        let delivery = self.delivery(user, frame, Priority::Normal);
        self.mail_delivery(delivery, out);
    }

    /// `frame` as an inbox event of `user`, accepted now: nobody is excepted and nobody
    /// hears the outcome. Callers change what differs before [`Shard::mail_delivery`].
    pub(super) fn delivery(&self, user: &str, frame: Outgoing, priority: Priority) -> Delivery {
        Delivery::new(user, (frame, priority), self.now_ns, Durability::Inbox)
    }

    /// Mails a delivery to its user's home.
    pub(super) fn mail_delivery(&self, delivery: Delivery, out: &mut Effects) {
        let home = self.home_of(&delivery.user);
        out.mail(home, Envelope::Deliver(Box::new(delivery)));
    }

    /// At the user's home: an inbox event is numbered, written to the user's live
    /// devices (but `except`) and appended to the inbox, whose commit answers the
    /// sender; a transient one goes to the live devices only. A retry of a chat message
    /// seen here is not delivered again: the store confirms it after the first copy's
    /// commit.
    pub(super) fn deliver(&mut self, delivery: Delivery, out: &mut Effects) {
        if let Some(id) = &delivery.copy_of {
            // A copy for the sender's other devices exists only while one is online (as
            // in v1; the sender's history has the message): no device, no event.
            // (In a cluster the others may be on other nodes, which the cluster asks.)
            if !self.relays
                && self
                    .directory
                    .live_devices(&delivery.user, delivery.except)
                    .is_empty()
            {
                return;
            }
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
        if let Some(seen) = key.and_then(|key| self.recent.check(key)) {
            if let Some(ack) = delivery.ack {
                let confirm = Confirm {
                    receiver: delivery.user,
                    chat: chat_of(&ack),
                    ack: AckTo {
                        waiter: ack.sender.into(),
                        message_id: ack.message_id,
                        delivered: seen == Seen::Delivered,
                    },
                };
                out.store(Command::Confirm(Box::new(confirm)));
            }
            return;
        }
        match delivery.durability {
            Durability::Inbox => self.deliver_to_inbox(delivery, key, out),
            Durability::Transient | Durability::Call { .. } | Durability::Relayed => {
                self.deliver_transient(delivery, out)
            }
        }
    }

    /// Numbers an inbox event, writes it to the live devices and appends it to the
    /// user's inbox (and a chat message to history).
    fn deliver_to_inbox(
        &mut self,
        mut delivery: Delivery,
        key: Option<PairKey>,
        out: &mut Effects,
    ) {
        if !self.within_sender_quota(&delivery) {
            if let Some(ack) = delivery.ack {
                ack_to(ack.sender, ack.message_id, AckStatus::OverSenderQuota, out);
            }
            return;
        }
        let timing = (delivery.priority, delivery.accepted_ns);
        let numbered = self.number_event(
            &delivery.user,
            &delivery.frame,
            timing,
            delivery.except,
            out,
        );
        // In a cluster the devices get it once JetStream has it: `sent` says a device is
        // online on this node to get it.
        let delivered = if self.relays {
            !self
                .directory
                .live_devices(&delivery.user, delivery.except)
                .is_empty()
        } else {
            numbered.delivered()
        };
        let only_to_v1 = numbered.only_to_v1();
        // In a cluster the copy for the sender's other devices is stored, and JetStream
        // hands it to them (but the sending one) on every node.
        let copy = match delivery.copy_of.take() {
            Some(message_id) if self.relays => Some(SenderCopy {
                message_id,
                except: delivery.except.map(Waiter::from),
                others_here: delivered,
            }),
            _ => None,
        };
        let dedup = key.map(|key| {
            let seen = if delivered {
                Seen::Delivered
            } else {
                Seen::Queued
            };
            let serial = self.recent.record(key, seen, self.now_ms);
            (self.id, key.ticket(serial))
        });
        let (ack, receipt, chat) = match delivery.ack {
            Some(ack) => {
                let chat = chat_of(&ack);
                let to = AckTo {
                    waiter: ack.sender.into(),
                    message_id: ack.message_id,
                    delivered,
                };
                // A receipt when a device acknowledges it; one that does not
                // acknowledge took it as delivered (v1: no receipt for a message
                // delivered online).
                (Some(to), ack.receipt && !only_to_v1, Some(chat))
            }
            None => (None, false, None),
        };
        out.store(Command::Append(Box::new(Append {
            user: delivery.user,
            seq: numbered.seq,
            home: self.id,
            event: Event {
                kind: delivery.frame.kind,
                priority: delivery.priority,
                json: delivery.frame.json(),
            },
            receipt,
            chat,
            ack,
            dedup,
            copy,
        })));
    }

    /// Typing and call signals: to the live devices, else nobody (a call's sender hears
    /// `peer_offline`). In a cluster they go to the other nodes' devices too, and a call
    /// no device here took is `peer_offline` only if no other node takes it.
    fn deliver_transient(&mut self, delivery: Delivery, out: &mut Effects) {
        let devices = self.directory.live_devices(&delivery.user, delivery.except);
        let relayed = matches!(delivery.durability, Durability::Relayed);
        if self.relays && !relayed {
            let call = match &delivery.durability {
                Durability::Call { sender, reference } if devices.is_empty() => {
                    Some((*sender, reference.clone()))
                }
                _ => None,
            };
            let answered_by_others = call.is_some();
            out.cluster(Relay::Live {
                user: delivery.user.as_ref().into(),
                frame: delivery.frame.clone(),
                priority: delivery.priority,
                call,
            });
            if answered_by_others {
                return;
            }
        }
        if devices.is_empty() {
            if let Durability::Call { sender, reference } = delivery.durability {
                let text = "the receiver has no device online (calls are never queued)";
                out.error(sender, ErrorCode::PeerOffline, text, Some(&reference));
            }
            return;
        }
        for device in devices {
            let (frame, priority) = (delivery.frame.clone(), delivery.priority);
            out.frame_to(device.addr, frame, priority, delivery.accepted_ns);
        }
    }

    /// The store could not take a message (it is shutting down): nothing is stored, so
    /// a retry must be tried again and the sender hears that the receiver is offline.
    pub(super) fn append_refused(&mut self, append: Append, out: &mut Effects) {
        if let Some((_, ticket)) = append.dedup {
            let (key, serial) = PairKey::from_ticket(ticket);
            self.recent.forget(key, serial);
        }
        if let Some(ack) = append.ack {
            ack_to(ack.waiter.into(), ack.message_id, AckStatus::Offline, out);
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

impl Shard {
    /// Whether a device's chat message may wait for a receiver with no device online
    /// (`--queue-max-per-sender`; one node alone: a cluster's other nodes may hold
    /// devices, so its relay counts there (`cluster::unread`). API sends come from the
    /// operator's backend and are not counted).
    fn within_sender_quota(&mut self, delivery: &Delivery) -> bool {
        let Some(ack) = delivery.ack.as_ref().filter(|ack| ack.receipt) else {
            return true;
        };
        if self.relays || *ack.sender_user == *delivery.user {
            return true;
        }
        let online = !self
            .directory
            .live_devices(&delivery.user, delivery.except)
            .is_empty();
        online || self.sender_quota.take(&delivery.user, &ack.sender_user)
    }
}

/// The message as the store keeps it in history.
fn chat_of(ack: &AckRequest) -> Chat {
    Chat {
        sender: ack.sender_user.clone(),
        message_id: ack.message_id.clone(),
        timestamp_ms: ack.sent_ms,
    }
}
