//! The reactor's side of the [`Shard`](crate::shard::Shard): events go in, effects are
//! carried out here (envelopes mailed, store commands sent, errors written). Mail
//! arriving from a peer's ring or from this reactor goes to the shard, unless it is for
//! one of this reactor's connections (a frame, an ack, a close, a broadcast's counts).

use super::core::Reactor;
use crate::conn::Phase;
use crate::protocol::codes::ErrorCode;
use tracing::warn;

use crate::{
    cluster::relay::Inbound,
    http::admin::AdminRequest,
    protocol::{now_ms, outbound, Priority},
    router::{AckStatus, ConnAddr, Envelope},
    shard::{Clock, Effect, Event},
    stats,
    store::Reply,
};

impl Reactor {
    /// Acts on one envelope addressed to this reactor.
    pub(crate) fn take_mail(&mut self, envelope: Envelope) {
        if envelope.is_for_shard() {
            self.feed_shard(Event::Mail(envelope));
        } else {
            self.on_device_mail(envelope);
        }
    }

    /// Hands the store's answer to the shard or to the connection waiting on it.
    pub(crate) fn take_store_reply(&mut self, reply: Reply) {
        if reply.is_for_shard() {
            self.feed_shard(Event::StoreReply(reply));
        } else {
            self.on_store_reply(reply);
        }
    }

    /// Feeds the shard one event and carries out its effects, and theirs, until none is
    /// left. An effect that feeds the shard again (mail to this reactor's home) only adds
    /// to the queue being carried out.
    ///
    /// Hot path: the effect queue is reused, so feeding the shard allocates only what the
    /// effects themselves carry (frames, boxed deliveries).
    pub(crate) fn feed_shard(&mut self, event: Event<'_>) {
        let now = Clock {
            unix_ms: now_ms(),
            mono_ns: stats::clock_ns(),
        };
        self.shard.handle(now, event, &mut self.effects);
        if self.carrying_out {
            return;
        }
        self.carrying_out = true;
        while let Some(effect) = self.effects.pop() {
            self.carry_out(effect);
        }
        self.carrying_out = false;
        let online = self.shard.online_users() as i64;
        let stats = self.stats();
        stats
            .online_users
            .store(online, std::sync::atomic::Ordering::Relaxed);
        stats.dedup_evicted_young.store(
            self.shard.dedup_evicted_young(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Mail { to, envelope } => self.route(to, envelope),
            Effect::Store(command) => {
                if let Err(command) = self.store.send(command) {
                    self.feed_shard(Event::StoreRefused(command));
                }
            }
            Effect::Cluster(relay) => {
                // The cluster thread is gone only once the engine stops.
                if let Some(cluster) = &self.cluster {
                    if cluster.relays.send(*relay).is_ok() {
                        cluster.doorbell.ring();
                    }
                }
            }
            Effect::Hook(hook) => {
                if let Some(events) = &self.shared.events {
                    events.emit(now_ms(), *hook);
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

    /// Takes what the cluster thread handed this reactor: relayed mail, and callers to
    /// tell that no node holds their callee.
    pub(crate) fn take_cluster_mail(&mut self) {
        loop {
            let Some(cluster) = &self.cluster else {
                return;
            };
            let Ok(inbound) = cluster.inbound.try_recv() else {
                return;
            };
            match inbound {
                Inbound::Mail(envelope) => self.take_mail(envelope),
                Inbound::Stats { asker, body } => self.answer_cluster_stats(asker, body),
                Inbound::Store(reply) => self.take_store_reply(reply),
                Inbound::Broadcast { message, reply } => self.cluster_broadcast(message, reply),
                Inbound::Admin { said, reply } => match AdminRequest::from_node(&said) {
                    Ok(call) => self.feed_shard(Event::AdminFromNode { call, reply }),
                    // The asking node hears nothing from this one, and says so.
                    Err(why) => warn!("cluster: another node's operator call is not one: {why}"),
                },
                Inbound::CallNotTaken {
                    caller,
                    reference,
                    code,
                } => {
                    let text = match code {
                        ErrorCode::PeerOffline => {
                            "the receiver has no device online on any node (calls are never \
                             queued)"
                        }
                        _ => "the cluster is out of reach: call again",
                    };
                    self.error_to(caller, code, text, Some(&reference));
                }
            }
        }
    }

    /// Acts on an envelope for one of this reactor's connections.
    fn on_device_mail(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::ToConn {
                addr,
                frame,
                priority,
                accepted_ns,
            } => {
                if accepted_ns != 0 {
                    self.stats().observe_routing(accepted_ns);
                }
                self.send(addr, frame, priority);
            }
            Envelope::Ack {
                sender,
                message_id,
                status,
            } => self.on_ack(sender, &message_id, status),
            Envelope::Registered { addr } => self.start_catch_up(addr),
            Envelope::Moved { id, conn } => self.arrive(id, *conn),
            Envelope::Close { addr, code, reason } => self.begin_close(addr, code, reason),
            Envelope::BroadcastReply {
                request,
                delivered,
                offline,
            } => self.on_broadcast_reply(request, delivered, 0, offline),
            Envelope::AdminAnswer { to, status, body } => self.answer_admin(to, status, &body),
            other => debug_assert!(false, "for the shard, not the driver: {other:?}"),
        }
    }

    /// The receiver's home tells a sender (WebSocket or HTTP API) what became of its
    /// message.
    fn on_ack(&mut self, sender: ConnAddr, message_id: &str, status: AckStatus) {
        let delivered = status == AckStatus::Sent;
        let from_api = self
            .conn_mut(sender)
            .is_some_and(|c| c.phase == Phase::Http);
        if from_api {
            self.answer_api_send(sender, delivered);
        } else if delivered {
            outbound::message_ack(&mut self.json, message_id, "sent", now_ms());
            let frame = self.json.frame();
            self.send(sender, frame, Priority::High);
        } else if status == AckStatus::OverSenderQuota {
            let now = now_ms();
            outbound::message_rejected(&mut self.json, message_id, "sender_quota", now);
            let frame = self.json.frame();
            self.send(sender, frame, Priority::High);
        } else {
            let text = "the receiver has no device online and the store is not \
                        taking messages (the gateway is shutting down)";
            self.send_error(sender, ErrorCode::PeerOffline, text, Some(message_id));
        }
    }
}
