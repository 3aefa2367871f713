//! Offline delivery through the store: a home with no device online for a message's
//! receiver hands it to the store; the store's commit answers the sender (`queued`,
//! `rejected: queue_full`, or a persistence failure); a device that authenticates asks
//! for its user's queue, gets it after `auth_success`, and the messages written to it are
//! removed.

use bytes::Bytes;

use super::{conn::Phase, core::Reactor};
use crate::{
    protocol::{now_ms, outbound, Priority},
    router::{AckRequest, ConnAddr, Envelope},
    store::{Command, Outcome, Reply},
    ws::frame,
};

impl Reactor {
    /// At a home: queues a message whose receiver has no device online.
    pub(super) fn queue_offline(
        &mut self,
        user: Box<str>,
        priority: Priority,
        frame: &Bytes,
        ack: AckRequest,
    ) {
        let command = Command::Enqueue {
            user,
            priority,
            payload: frame::payload_of(frame),
            sender: ack.sender,
            message_id: ack.message_id,
        };
        if let Err(Command::Enqueue {
            sender, message_id, ..
        }) = self.store.send(command)
        {
            // The store thread is gone (shutting down): nothing is stored, so say offline.
            let envelope = Envelope::Ack {
                sender,
                message_id,
                delivered: false,
            };
            self.route(sender.reactor as usize, envelope);
        }
    }

    /// At a device's reactor, after `auth_success`: asks for the user's queue.
    pub(super) fn request_queued(&mut self, user: &str, device: ConnAddr) {
        let _ = self.store.send(Command::Drain {
            user: user.into(),
            device,
        });
    }

    /// An answer from the store.
    pub(super) fn on_store_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Enqueued {
                sender,
                message_id,
                outcome,
            } => self.answer_enqueued(sender, &message_id, &outcome),
            Reply::Peeked {
                requester,
                user,
                messages,
                error,
            } => {
                let (slot, generation) = (requester.slot as usize, requester.generation);
                self.answer_api_queue(slot, generation, &user, &messages, error.as_deref());
            }
            Reply::Pending {
                device,
                user,
                messages,
            } => {
                let (slot, generation) = (device.slot as usize, device.generation);
                let live = self
                    .conn_mut(slot, generation)
                    .is_some_and(|c| c.phase == Phase::Authenticated);
                if !live || messages.is_empty() {
                    return; // still queued: the next device to authenticate gets them
                }
                let mut written = Vec::with_capacity(messages.len());
                for (key, payload, priority) in messages {
                    self.send(slot, generation, frame::encode_text(&payload), priority);
                    written.push(key);
                }
                let _ = self.store.send(Command::Remove {
                    user,
                    keys: written,
                });
            }
        }
    }

    /// Tells a sender (WebSocket or HTTP API) what the store did with its message.
    fn answer_enqueued(&mut self, sender: ConnAddr, message_id: &str, outcome: &Outcome) {
        let (slot, generation) = (sender.slot as usize, sender.generation);
        let Some(conn) = self.conn_mut(slot, generation) else {
            return;
        };
        if conn.phase == Phase::Http {
            return self.answer_api_queued(slot, generation, outcome);
        }
        match outcome {
            Outcome::Queued => {
                self.json.clear();
                outbound::message_ack(&mut self.json, message_id, "queued", now_ms());
                let frame = frame::encode_text(&self.json);
                self.send(slot, generation, frame, Priority::High);
            }
            Outcome::QueueFull => {
                self.json.clear();
                outbound::message_rejected(&mut self.json, message_id, "queue_full", now_ms());
                let frame = frame::encode_text(&self.json);
                self.send(slot, generation, frame, Priority::High);
            }
            Outcome::Failed(why) => {
                let text = format!("the message could not be stored and was not queued: {why}");
                self.send_error(
                    slot,
                    generation,
                    "persistence_failed",
                    &text,
                    Some(message_id),
                );
            }
        }
    }
}
