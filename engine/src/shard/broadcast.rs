//! HTTP API broadcasts at each home. To named users it is an inbox event: numbered,
//! written to their live devices and appended to each inbox in one store command, whose
//! commit sends the counts to the requester. To every user online (`all`) it is written
//! to the devices online now and kept nowhere: it is for whoever is online at that
//! moment, and a million inbox copies would hold the store for tens of seconds.

use super::{Effects, Shard};
use crate::{
    protocol::{
        codes::OutKind,
        outbound::{self, NewMessage, OutJson},
    },
    router::{BroadcastMessage, BroadcastOrder, Envelope},
    store::{Command, FanOut, Share, ShareRow},
};

impl Shard {
    /// This home's share of a broadcast. The frame is encoded once per user (its
    /// `receiverId` differs) and shared by the user's devices.
    pub(super) fn broadcast(&mut self, order: BroadcastOrder, out: &mut Effects) {
        let message = &order.message;
        let requester = order.requester.reactor as usize;
        let timing = (message.priority, message.accepted_ns);
        let Some(users) = &order.users else {
            let online: Vec<Box<str>> = self.directory.online().map(|(u, _)| u.into()).collect();
            let mut delivered = 0;
            for user in online {
                let frame = self.broadcast_json(message, &user).frame();
                let devices = self.directory.live_devices(&user, None);
                delivered += u32::from(!devices.is_empty());
                for device in devices {
                    out.frame_to(device.addr, frame.clone(), timing.0, timing.1);
                }
            }
            let reply = Envelope::BroadcastReply {
                request: order.request,
                delivered,
                offline: 0,
            };
            return out.mail(requester, reply);
        };
        let mut rows = Vec::with_capacity(users.len());
        let mut delivered = 0;
        for user in users {
            let frame = self.broadcast_json(message, user).frame();
            let numbered = self.number_event(user, &frame, timing, None, out);
            delivered += u32::from(numbered.delivered());
            rows.push(ShareRow {
                user: user.clone(),
                seq: numbered.seq,
                json: Some(frame.json()),
                except: None,
            });
        }
        out.store(Command::AppendShare(Box::new(Share {
            kind: OutKind::NewMessage,
            priority: message.priority,
            json: bytes::Bytes::new(),
            rows,
            home: self.id,
            purpose: FanOut::Broadcast,
            reply_to: requester,
            request: order.request,
            delivered,
        })));
    }

    /// The store could not take a broadcast's share (it is shutting down): the users
    /// with no device online did not get it.
    pub(super) fn broadcast_refused(&mut self, share: Share, out: &mut Effects) {
        let reply = Envelope::BroadcastReply {
            request: share.request,
            delivered: share.delivered,
            offline: share.rows.len() as u32 - share.delivered,
        };
        out.mail(share.reply_to, reply);
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
