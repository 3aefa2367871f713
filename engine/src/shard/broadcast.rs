//! HTTP API broadcasts at each home: the message is written to every device of the users
//! it names (or of every user online there) and queued for the named users with no device
//! online. The counts go back to the requester directly, or through the store once the
//! commit holds the queued copies.

use bytes::Bytes;

use super::{Effects, Shard};
use crate::{
    protocol::outbound::{self, NewMessage, OutJson},
    router::{BroadcastMessage, BroadcastOrder, ConnAddr, Envelope},
    store::{Command, FanOut, FanOutBatch},
};

impl Shard {
    /// This home's share of a broadcast. The frame is encoded once per user (its
    /// `receiverId` differs) and shared by the user's devices.
    pub(super) fn broadcast(&mut self, order: BroadcastOrder, out: &mut Effects) {
        let message = &order.message;
        let mut offline: Vec<Box<str>> = Vec::new();
        let mut targets: Vec<(Box<str>, Vec<ConnAddr>)> = Vec::new();
        match &order.users {
            Some(users) => {
                for user in users {
                    let devices: Vec<ConnAddr> = self
                        .directory
                        .devices(user)
                        .iter()
                        .map(|d| d.addr)
                        .collect();
                    if devices.is_empty() {
                        offline.push(user.clone());
                    } else {
                        targets.push((user.clone(), devices));
                    }
                }
            }
            None => {
                for (user, devices) in self.directory.online() {
                    targets.push((user.into(), devices.iter().map(|d| d.addr).collect()));
                }
            }
        }
        let delivered = targets.len() as u32;
        for (user, devices) in targets {
            let frame = self.broadcast_json(message, &user).frame();
            for addr in devices {
                out.frame_to(addr, frame.clone(), message.priority, message.accepted_ns);
            }
        }
        let requester = order.requester.reactor as usize;
        if offline.is_empty() {
            let reply = Envelope::BroadcastReply {
                request: order.request,
                delivered,
                offline: 0,
            };
            return out.mail(requester, reply);
        }
        let messages = offline
            .into_iter()
            .map(|user| {
                let payload = Bytes::copy_from_slice(self.broadcast_json(message, &user).json());
                (user, payload)
            })
            .collect();
        out.store(Command::EnqueueFanOut(Box::new(FanOutBatch {
            messages,
            priority: message.priority,
            purpose: FanOut::Broadcast,
            reply_to: requester,
            request: order.request,
            delivered,
        })));
    }

    /// The store could not take a broadcast's offline copies: none of them was queued.
    pub(super) fn broadcast_refused(&mut self, batch: FanOutBatch, out: &mut Effects) {
        let reply = Envelope::BroadcastReply {
            request: batch.request,
            delivered: batch.delivered,
            offline: batch.messages.len() as u32,
        };
        out.mail(batch.reply_to, reply);
    }

    /// The broadcast's `new_message` for `user`, in the shard's JSON buffer.
    fn broadcast_json(&mut self, message: &BroadcastMessage, user: &str) -> &OutJson {
        outbound::new_message(
            &mut self.json,
            &NewMessage {
                message_id: &message.message_id,
                sender_id: &message.sender_id,
                receiver_id: user,
                content: &message.text,
                message_type: &message.message_type,
                priority: message.priority,
                timestamp_ms: self.now_ms,
                group_id: None,
            },
        );
        &self.json
    }
}
