//! Mail arriving at a reactor, from a peer's ring or from itself: what is for the home
//! goes to the [`Shard`](crate::shard::Shard), whose effects are carried out here; what is
//! for a connection (a frame, an ack, a close, `auth_success`, gathered answers) is acted
//! on at once.

use super::{conn::Phase, core::Reactor};
use crate::{
    protocol::{now_ms, outbound, Priority},
    router::{AckStatus, ConnAddr, Envelope},
    shard::{Effect, Event},
    store::{Outcome, Reply},
    ws::{close, frame},
};

impl Reactor {
    /// Acts on one envelope addressed to this reactor.
    pub(crate) fn take_mail(&mut self, envelope: Envelope) {
        if envelope.is_for_home() {
            self.feed_shard(Event::Mail(envelope));
        } else {
            self.on_device_mail(envelope);
        }
    }

    /// Hands the store's answer to the shard or to the connection waiting on it.
    pub(crate) fn take_store_reply(&mut self, reply: Reply) {
        if reply.is_for_home() {
            self.feed_shard(Event::StoreReply(reply));
        } else {
            self.on_store_reply(reply);
        }
    }

    /// Feeds the shard one event and carries out its effects, and theirs, until none is
    /// left. An effect that feeds the shard again (mail to this reactor's home) only adds
    /// to the queue being carried out.
    pub(crate) fn feed_shard(&mut self, event: Event) {
        self.shard.handle(now_ms(), event, &mut self.effects);
        if self.carrying_out {
            return;
        }
        self.carrying_out = true;
        while let Some(effect) = self.effects.pop() {
            self.carry_out(effect);
        }
        self.carrying_out = false;
        let online = self.shard.online_users() as i64;
        self.stats()
            .online_users
            .store(online, std::sync::atomic::Ordering::Relaxed);
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Mail { to, envelope } => self.route(to, envelope),
            Effect::Store(command) => {
                if let Err(command) = self.store.send(command) {
                    self.feed_shard(Event::StoreRefused(command));
                }
            }
            Effect::Error {
                to,
                code,
                text,
                reference,
            } => self.error_to(to, code, &text, reference.as_deref()),
        }
    }

    /// Acts on an envelope for one of this reactor's connections.
    fn on_device_mail(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Registered { addr, device } => self.registered(addr, &device),
            Envelope::ToConn {
                addr,
                frame,
                priority,
                accepted_ns,
            } => {
                if accepted_ns != 0 {
                    self.stats().observe_routing(accepted_ns);
                }
                self.send(addr.slot as usize, addr.generation, frame, priority);
            }
            Envelope::Ack {
                sender,
                message_id,
                status,
            } => self.on_ack(sender, &message_id, status),
            Envelope::Close { addr, code } => {
                let reason = if code == close::REPLACED {
                    "replaced"
                } else {
                    "too many devices"
                };
                self.begin_close(addr.slot as usize, addr.generation, code, reason);
            }
            Envelope::PresenceReply { request, entries } => {
                let request = request as usize;
                let Some(pending) = self.presence_requests.get_mut(request) else {
                    return;
                };
                pending.entries.extend(entries);
                pending.awaiting -= 1;
                if pending.awaiting == 0 {
                    let done = self.presence_requests.remove(request);
                    self.finish_presence(done.watcher, done.entries);
                }
            }
            Envelope::BroadcastReply {
                request,
                delivered,
                offline,
            } => self.on_broadcast_reply(request, delivered, 0, offline),
            home => debug_assert!(false, "for a home, not a connection: {home:?}"),
        }
    }

    /// The device is in its home's directory: `auth_success`, then its user's queue.
    fn registered(&mut self, addr: ConnAddr, device: &str) {
        let (slot, generation) = (addr.slot as usize, addr.generation);
        let Some(user) = self.conn_mut(slot, generation).and_then(|c| c.user.clone()) else {
            return;
        };
        self.json.clear();
        outbound::auth_success(&mut self.json, &user, device, now_ms());
        let frame = frame::encode_text(&self.json);
        self.send(slot, generation, frame, Priority::High);
        // Then whatever waited for this user (PROTOCOL.md: after auth_success).
        self.request_queued(&user, addr);
    }

    /// The receiver's home tells a sender (WebSocket or HTTP API) what became of its
    /// message.
    fn on_ack(&mut self, sender: ConnAddr, message_id: &str, status: AckStatus) {
        let (slot, generation) = (sender.slot as usize, sender.generation);
        if status == AckStatus::Queued {
            return self.answer_enqueued(sender, message_id, &Outcome::Queued);
        }
        let delivered = status == AckStatus::Sent;
        let from_api = self
            .conn_mut(slot, generation)
            .is_some_and(|c| c.phase == Phase::Http);
        if from_api {
            self.answer_api_send(slot, generation, delivered);
        } else if delivered {
            self.json.clear();
            outbound::message_ack(&mut self.json, message_id, "sent", now_ms());
            let frame = frame::encode_text(&self.json);
            self.send(slot, generation, frame, Priority::High);
        } else {
            let text = "the receiver has no device online and the store is not \
                        taking messages (the gateway is shutting down)";
            self.send_error(slot, generation, "peer_offline", text, Some(message_id));
        }
    }
}
