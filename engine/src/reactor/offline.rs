//! Offline delivery through the store, on the connections' side: the store's commit
//! answers the sender (`queued`, `rejected: queue_full`, or a persistence failure); a
//! device that authenticates asks for its user's queue, gets it after `auth_success`, and
//! the messages written to it are removed. (The home hands the store what it could not
//! deliver: [`crate::shard`].)

use super::{
    conn::{Phase, QueueDelivery},
    core::Reactor,
};
use crate::protocol::codes::ErrorCode;
use crate::{
    protocol::{
        now_ms,
        outbound::{self, Outgoing},
        Priority,
    },
    router::ConnAddr,
    shard::Event,
    store::{Command, FanOut, Outcome, Reply},
};

impl Reactor {
    /// At a device's reactor, after `auth_success`: asks for the user's queue.
    pub(super) fn request_queued(&mut self, user: &str, device: ConnAddr) {
        let _ = self.store.send(Command::Drain {
            user: user.into(),
            device: device.into(),
        });
    }

    /// An answer from the store for one of this reactor's connections (the home's go to
    /// the shard).
    pub(super) fn on_store_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Enqueued {
                sender,
                message_id,
                outcome,
            } => self.answer_enqueued(sender.into(), &message_id, &outcome),
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
                more,
                error,
            } => {
                self.answer_api_queue(requester.into(), &user, &messages, more, error);
            }
            Reply::Pending {
                device,
                user,
                messages,
                more,
            } => {
                let at = ConnAddr::from(device);
                let live = self
                    .conn_mut(at)
                    .is_some_and(|c| c.phase == Phase::Authenticated);
                if !live || messages.is_empty() {
                    return; // still queued: the next device to authenticate gets them
                }
                let mut delivery = QueueDelivery {
                    user,
                    keys: Vec::with_capacity(messages.len()),
                    receipts: Vec::new(),
                    more,
                };
                for message in messages {
                    let frame = Outgoing::text(message.kind, &message.payload);
                    self.send(at, frame, message.priority);
                    delivery.keys.push(message.key);
                    if message.receipt {
                        delivery.receipts.push(message.payload);
                    }
                }
                let Some(conn) = self.conn_mut(at) else {
                    return; // closed while writing: nothing is removed, all stays queued
                };
                if conn.outbound.is_some() {
                    // The kernel has not taken it all yet: finish when the queue flushes.
                    conn.aux_mut().queue_in_flight = Some(Box::new(delivery));
                } else {
                    self.finish_queue_delivery(at, delivery);
                }
            }
            other => debug_assert!(false, "for the shard, not the driver: {other:?}"),
        }
    }

    /// A part of the queue is all with the kernel: remove it from the store, send its
    /// delivery receipts, and ask for the next part.
    pub(super) fn finish_queue_delivery(&mut self, at: ConnAddr, delivery: QueueDelivery) {
        let QueueDelivery {
            user,
            keys,
            receipts,
            more,
        } = delivery;
        let _ = self.store.send(Command::Remove {
            user: user.clone(),
            keys,
        });
        if !receipts.is_empty() {
            let receiver = user.clone();
            self.feed_shard(Event::QueueTaken { receiver, receipts });
        }
        if more {
            let device = at;
            self.request_queued(&user, device);
        }
    }

    /// Tells a sender (WebSocket or HTTP API) what the store did with its message.
    pub(super) fn answer_enqueued(
        &mut self,
        sender: ConnAddr,
        message_id: &str,
        outcome: &Outcome,
    ) {
        let Some(conn) = self.conn_mut(sender) else {
            return;
        };
        if conn.phase == Phase::Http {
            return self.answer_api_queued(sender, outcome);
        }
        match outcome {
            Outcome::Queued => {
                outbound::message_ack(&mut self.json, message_id, "queued", now_ms());
                let frame = self.json.frame();
                self.send(sender, frame, Priority::High);
            }
            Outcome::QueueFull => {
                outbound::message_rejected(&mut self.json, message_id, "queue_full", now_ms());
                let frame = self.json.frame();
                self.send(sender, frame, Priority::High);
            }
            Outcome::Failed(why) => {
                let text = format!("the message could not be stored and was not queued: {why}");
                self.send_error(
                    sender,
                    ErrorCode::PersistenceFailed,
                    &text,
                    Some(message_id),
                );
            }
        }
    }
}
