//! Envelopes arriving at a reactor, from a peer's ring or from itself: the home side of
//! the directory (register, deliver, presence) and the device side (write, ack, close).

use super::{conn::Phase, core::Reactor};
use crate::{
    protocol::{now_ms, outbound, Priority},
    router::{
        dedup::{PairKey, Seen},
        AckStatus, ConnAddr, Delivery, Envelope, WhenOffline,
    },
    stats::ReactorStats,
    store::Outcome,
    ws::{close, frame},
};

impl Reactor {
    /// Acts on one envelope.
    pub(crate) fn handle_envelope(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Register { user, device, addr } => {
                let outcome = self.directory.register(user.clone(), device.clone(), addr);
                if outcome.refused {
                    self.route(
                        addr.reactor as usize,
                        Envelope::Close {
                            addr,
                            code: close::POLICY_VIOLATION,
                        },
                    );
                } else {
                    self.route(addr.reactor as usize, Envelope::Registered { addr, device });
                }
                if let Some(old) = outcome.replaced {
                    self.route(
                        old.reactor as usize,
                        Envelope::Close {
                            addr: old,
                            code: close::REPLACED,
                        },
                    );
                }
                if outcome.came_online {
                    ReactorStats::add(&self.stats().online_users, 1);
                    self.announce_presence(&user, true);
                }
            }
            Envelope::Registered { addr, device } => {
                let (slot, generation) = (addr.slot as usize, addr.generation);
                let Some(user) = self.conn_mut(slot, generation).and_then(|c| c.user.clone())
                else {
                    return;
                };
                self.json.clear();
                outbound::auth_success(&mut self.json, &user, &device, now_ms());
                let frame = frame::encode_text(&self.json);
                self.send(slot, generation, frame, Priority::High);
                // Then whatever waited for this user (PROTOCOL.md: after auth_success).
                self.request_queued(&user, addr);
            }
            Envelope::Unregister { user, addr } => {
                if self.directory.unregister(&user, addr, now_ms()) {
                    ReactorStats::add(&self.stats().online_users, -1);
                    self.announce_presence(&user, false);
                }
            }
            Envelope::Deliver(delivery) => {
                // A retry of a message this home already delivered or queued is
                // acknowledged again and goes no further.
                let dedup_key = delivery
                    .ack
                    .as_ref()
                    .map(|ack| self.recent.key(&ack.sender_user, &ack.message_id));
                if let (Some(ack), Some(key)) = (&delivery.ack, dedup_key) {
                    if let Some(seen) = self.recent.check(key) {
                        let status = match seen {
                            Seen::Delivered => AckStatus::Sent,
                            Seen::Queued => AckStatus::Queued,
                        };
                        let envelope = Envelope::Ack {
                            sender: ack.sender,
                            message_id: ack.message_id.clone(),
                            status,
                        };
                        return self.route(ack.sender.reactor as usize, envelope);
                    }
                }
                let mut delivered = false;
                let targets: smallvec::SmallVec<[ConnAddr; 4]> = self
                    .directory
                    .devices(&delivery.user)
                    .iter()
                    .map(|d| d.addr)
                    .filter(|a| Some(*a) != delivery.except)
                    .collect();
                for addr in targets {
                    delivered = true;
                    let frame = delivery.frame.clone();
                    self.route(
                        addr.reactor as usize,
                        Envelope::ToConn {
                            addr,
                            frame,
                            priority: delivery.priority,
                            accepted_ns: delivery.accepted_ns,
                        },
                    );
                }
                if !delivered {
                    return self.undelivered(*delivery, dedup_key);
                }
                if let (Some(ack), Some(key)) = (delivery.ack, dedup_key) {
                    self.recent.record(key, Seen::Delivered);
                    self.record_history(&delivery.user, &ack, &delivery.frame);
                    let envelope = Envelope::Ack {
                        sender: ack.sender,
                        message_id: ack.message_id,
                        status: AckStatus::Sent,
                    };
                    self.route(ack.sender.reactor as usize, envelope);
                }
            }
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
            } => {
                let (slot, generation) = (sender.slot as usize, sender.generation);
                if status == AckStatus::Queued {
                    return self.answer_enqueued(sender, &message_id, &Outcome::Queued);
                }
                let delivered = status == AckStatus::Sent;
                let from_api = self
                    .conn_mut(slot, generation)
                    .is_some_and(|c| c.phase == Phase::Http);
                if from_api {
                    self.answer_api_send(slot, generation, delivered);
                } else if delivered {
                    self.json.clear();
                    outbound::message_ack(&mut self.json, &message_id, "sent", now_ms());
                    let frame = frame::encode_text(&self.json);
                    self.send(slot, generation, frame, Priority::High);
                } else {
                    let text = "the receiver has no device online and the store is not \
                                taking messages (the gateway is shutting down)";
                    self.send_error(slot, generation, "peer_offline", text, Some(&message_id));
                }
            }
            Envelope::Close { addr, code } => {
                let reason = if code == close::REPLACED {
                    "replaced"
                } else {
                    "too many devices"
                };
                self.begin_close(addr.slot as usize, addr.generation, code, reason);
            }
            Envelope::Subscribe {
                watcher,
                request,
                users,
            } => {
                let entries = users
                    .into_iter()
                    .map(|user| {
                        let (online, last_seen_ms) = self.directory.subscribe(&user, watcher);
                        outbound::PresenceEntry {
                            user_id: user.into(),
                            online,
                            last_seen_ms,
                        }
                    })
                    .collect();
                self.route(
                    watcher.reactor as usize,
                    Envelope::PresenceReply { request, entries },
                );
            }
            Envelope::Unsubscribe { watcher, users } => {
                for user in users {
                    self.directory.unsubscribe(&user, watcher);
                }
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
            Envelope::Broadcast(order) => self.deliver_broadcast(*order),
            Envelope::GroupJoin(change) => self.on_group_join(*change),
            Envelope::GroupPost(post) => self.on_group_post(*post),
            Envelope::Huddle(signal) => self.on_huddle(*signal),
            Envelope::GroupDeliver(delivery) => self.on_group_deliver(*delivery),
            Envelope::GroupShareDone { post, failed } => self.on_group_share_done(post, failed),
            Envelope::BroadcastReply {
                request,
                delivered,
                offline,
            } => self.on_broadcast_reply(request, delivered, 0, offline),
        }
    }

    /// A delivery no device of its user got: queued in the store (answering the sender,
    /// if any), refused to the sender, or dropped, as the delivery says.
    fn undelivered(&mut self, delivery: Delivery, dedup_key: Option<PairKey>) {
        match delivery.offline {
            _ if delivery.ack.is_some() => {
                if let Some(key) = dedup_key {
                    self.recent.record(key, Seen::Queued);
                }
                let (user, frame) = (delivery.user, delivery.frame);
                let (priority, ack) = (delivery.priority, delivery.ack);
                self.queue_offline(user, priority, &frame, ack, dedup_key);
            }
            WhenOffline::Queue => {
                let (user, frame) = (delivery.user, delivery.frame);
                self.queue_offline(user, delivery.priority, &frame, None, None);
            }
            WhenOffline::Refuse { sender, reference } => {
                let text = "the receiver has no device online (calls are never queued)";
                self.error_to(sender, "peer_offline", text, Some(&reference));
            }
            WhenOffline::Drop => {}
        }
    }

    /// Tells `user`'s watchers that the user came online or went offline.
    fn announce_presence(&mut self, user: &str, online: bool) {
        let watchers: Vec<ConnAddr> = self.directory.watchers(user).to_vec();
        if watchers.is_empty() {
            return;
        }
        self.json.clear();
        outbound::presence_update(&mut self.json, user, online, now_ms());
        let frame = frame::encode_text(&self.json);
        for addr in watchers {
            self.route(
                addr.reactor as usize,
                Envelope::ToConn {
                    addr,
                    frame: frame.clone(),
                    priority: Priority::Normal,
                    accepted_ns: 0,
                },
            );
        }
    }
}
