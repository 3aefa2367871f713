//! Direct deliveries at the receiver's home: a message, receipt, typing indicator or call
//! signal for one user goes to every device of the user online, or, when none is, is
//! queued in the store, refused to its sender or dropped, as the delivery says. A chat
//! message (one with an ack request) is remembered in the dedup window, so a retry is
//! acknowledged again and not delivered twice, and is kept in history.

use smallvec::SmallVec;

use super::{
    dedup::{PairKey, Seen},
    Effects, Shard,
};
use crate::{
    router::{AckRequest, AckStatus, ConnAddr, Delivery, Envelope, WhenOffline},
    store::{Chat, Command, Enqueue},
    ws::frame,
};

impl Shard {
    /// Delivers to the user's online devices (but `except`), or hands it on to
    /// [`Shard::undelivered`]. The sender of a chat message hears `sent` once the frames
    /// are on their way to the devices.
    pub(super) fn deliver(&mut self, delivery: Delivery, out: &mut Effects) {
        let key = delivery
            .ack
            .as_ref()
            .map(|ack| self.recent.key(&ack.sender_user, &ack.message_id));
        if let (Some(ack), Some(key)) = (&delivery.ack, key) {
            if let Some(seen) = self.recent.check(key) {
                // A retry: acknowledged again, as the first time, and no further.
                let status = match seen {
                    Seen::Delivered => AckStatus::Sent,
                    Seen::Queued => AckStatus::Queued,
                };
                return ack_to(ack.sender, ack.message_id.clone(), status, out);
            }
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
                payload: frame::payload_of(&delivery.frame),
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
                    return out.error(sender, "peer_offline", text, Some(&reference));
                }
                WhenOffline::Drop => return,
            }
        }
        if let Some(key) = key {
            self.recent.record(key, Seen::Queued, self.now_ms);
        }
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
            payload: frame::payload_of(&frame),
            sender,
            message_id,
            receipt,
            dedup: key.map(|key| (self.id, key.ticket())),
            chat,
        })));
    }

    /// The store could not take a message (it is shutting down): nothing is stored, so
    /// a retry must be tried again and the sender hears that the receiver is offline.
    pub(super) fn enqueue_refused(&mut self, enqueue: Enqueue, out: &mut Effects) {
        if let Some((_, ticket)) = enqueue.dedup {
            self.recent.forget(PairKey::from_ticket(ticket));
        }
        if let Some(sender) = enqueue.sender {
            ack_to(sender, enqueue.message_id, AckStatus::Offline, out);
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
