//! The chat protocol on a connection: auth, ping, messages, typing, receipts, presence.
//! Each handler encodes its outbound frame once and routes it through the homes.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    calls::Signal,
    conn::Phase,
    core::{PendingPresence, Reactor},
    groups::GroupMessage,
};
use crate::{
    failpoint::Failpoint,
    protocol::{
        inbound::{ClientMessage, ProtocolError},
        jwt, now_ms,
        outbound::{self, NewMessage},
        Priority,
    },
    router::{AckRequest, Delivery, Envelope, WhenOffline},
    stats,
    ws::{close, frame},
};

/// The most users one connection may watch; more is refused with `bad_request`.
pub(crate) const SUBSCRIPTIONS_PER_CONN_MAX: usize = 1024;

impl Reactor {
    /// Acts on one parsed client message (or answers its parse error).
    pub(super) fn on_message(
        &mut self,
        slot: usize,
        generation: u32,
        message: Result<ClientMessage<'_>, ProtocolError>,
    ) {
        let kind = message.as_ref().map_or("invalid", |m| m.kind());
        self.stats().count_message(kind);
        let Some(conn) = self.conn_mut(slot, generation) else {
            return;
        };
        let phase = conn.phase;
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                return self.send_error(
                    slot,
                    generation,
                    e.code,
                    &e.message,
                    e.reference.as_deref(),
                )
            }
        };
        if phase == Phase::Open {
            return match message {
                ClientMessage::Auth {
                    user_id,
                    device_id,
                    token,
                } => self.auth(slot, generation, user_id, device_id, token),
                _ => self.send_error(
                    slot,
                    generation,
                    "not_authenticated",
                    "send auth first",
                    None,
                ),
            };
        }
        let Some(user) = conn.user.clone() else {
            return;
        };
        if let Some(failpoint) = &self.shared.config.failpoint {
            match failpoint {
                Failpoint::PanicOnMessageFrom(who) if **who == *user => {
                    panic!("failpoint: a message from {user}")
                }
                Failpoint::KillReactorOnMessageFrom(who) if **who == *user => {
                    self.failpoint_kill = true;
                }
                Failpoint::StallReactorOnMessageFrom(who) if **who == *user => {
                    std::thread::sleep(crate::failpoint::STALL);
                }
                _ => {}
            }
        }
        match message {
            ClientMessage::Auth { .. } => self.send_error(
                slot,
                generation,
                "bad_request",
                "already authenticated",
                None,
            ),
            ClientMessage::Ping { ts } => {
                self.json.clear();
                outbound::pong(&mut self.json, ts, now_ms());
                let frame = frame::encode_text(&self.json);
                self.send(slot, generation, frame, Priority::High);
            }
            ClientMessage::SendMessage {
                message_id,
                receiver_id,
                content,
                message_type,
                priority,
            } => {
                self.json.clear();
                let sent_ms = now_ms();
                let message = NewMessage {
                    message_id,
                    sender_id: &user,
                    receiver_id,
                    content,
                    message_type,
                    priority,
                    timestamp_ms: sent_ms,
                    group_id: None,
                };
                outbound::new_message(&mut self.json, &message);
                let frame = frame::encode_text(&self.json);
                let me = self.addr(slot, generation);
                let ack = Some(AckRequest {
                    sender: me,
                    message_id: message_id.into(),
                    receipt: true,
                    sender_user: user.clone(),
                    sent_ms,
                });
                let to_self = receiver_id == &*user;
                self.deliver(
                    receiver_id,
                    frame.clone(),
                    priority,
                    to_self.then_some(me),
                    ack,
                );
                if !to_self {
                    // The sender's other devices see what it sent.
                    self.deliver(&user, frame, priority, Some(me), None);
                }
            }
            ClientMessage::Typing {
                receiver_id,
                is_typing,
            } => {
                self.json.clear();
                outbound::typing(&mut self.json, &user, is_typing, now_ms());
                let frame = frame::encode_text(&self.json);
                self.deliver(receiver_id, frame, Priority::High, None, None);
            }
            ClientMessage::ReadReceipt {
                message_id,
                sender_id,
            } => match sender_id {
                Some(sender_id) => self.send_read_receipt(sender_id, message_id, &user),
                None => self.find_sender(slot, generation, &user, message_id),
            },
            ClientMessage::History {
                peer_id,
                before,
                limit,
            } => self.request_history(slot, generation, &user, (peer_id, before, limit)),
            ClientMessage::GroupJoin { group_id, join } => {
                let me = self.addr(slot, generation);
                self.group_join(me, user, group_id, join)
            }
            ClientMessage::GroupMessage {
                message_id,
                group_id,
                content,
                message_type,
                priority,
            } => {
                let message = GroupMessage {
                    message_id,
                    group_id,
                    content,
                    message_type,
                    priority,
                };
                let me = self.addr(slot, generation);
                self.group_message(me, user, &message);
            }
            ClientMessage::Signal {
                receiver_id,
                call_id,
                kind,
                payload,
            } => {
                let signal = Signal {
                    receiver_id,
                    call_id,
                    kind,
                    payload: &payload,
                };
                let me = self.addr(slot, generation);
                self.signal(me, user, &signal);
            }
            ClientMessage::Amend {
                message_id,
                receiver_id,
                change,
            } => self.amend(slot, generation, &user, (message_id, receiver_id), &change),
            ClientMessage::PresenceSubscribe { user_ids } => {
                self.presence_subscribe(slot, generation, user_ids)
            }
            ClientMessage::PresenceUnsubscribe { user_ids } => {
                let Some(conn) = self.conn_mut(slot, generation) else {
                    return;
                };
                let mut dropped = Vec::new();
                if let Some(aux) = conn.aux.as_mut() {
                    aux.subscriptions.retain(|u| {
                        let drop = user_ids.contains(&&**u);
                        if drop {
                            dropped.push(u.clone());
                        }
                        !drop
                    });
                }
                conn.trim_aux();
                if !dropped.is_empty() {
                    let me = self.addr(slot, generation);
                    self.unsubscribe(me, dropped);
                }
            }
        }
    }

    /// Sends `frame` to every online device of `user`, or queues it when none is online
    /// (nobody is told the outcome: receipts, edits).
    pub(super) fn deliver_durable(&mut self, user: &str, frame: Bytes, priority: Priority) {
        self.deliver_or(user, frame, priority, WhenOffline::Queue);
    }

    /// Sends `frame` to every online device of `user`; `offline` says what happens when
    /// none is.
    pub(super) fn deliver_or(
        &mut self,
        user: &str,
        frame: Bytes,
        priority: Priority,
        offline: WhenOffline,
    ) {
        self.route_delivery(Delivery {
            user: user.into(),
            frame,
            priority,
            except: None,
            ack: None,
            accepted_ns: stats::clock_ns(),
            offline,
        });
    }

    /// Sends `frame` to every online device of `user` (but `except`) through its home;
    /// with `ack`, the sender hears the outcome and an offline user gets it queued.
    pub(super) fn deliver(
        &mut self,
        user: &str,
        frame: Bytes,
        priority: Priority,
        except: Option<crate::router::ConnAddr>,
        ack: Option<AckRequest>,
    ) {
        self.route_delivery(Delivery {
            user: user.into(),
            frame,
            priority,
            except,
            ack,
            accepted_ns: stats::clock_ns(),
            offline: WhenOffline::Drop,
        });
    }

    fn route_delivery(&mut self, delivery: Delivery) {
        let home = self.home_of(&delivery.user);
        self.route(home, Envelope::Deliver(Box::new(delivery)));
    }

    fn auth(
        &mut self,
        slot: usize,
        generation: u32,
        user_id: &str,
        device_id: &str,
        token: Option<&str>,
    ) {
        if let Some(secret) = self.shared.config.jwt_secret.clone() {
            let Some(conn) = self.conn_mut(slot, generation) else {
                return;
            };
            let url_token = conn.aux.as_ref().and_then(|a| a.url_token.clone());
            let verdict = match token.or(url_token.as_deref()) {
                None => Err("a token is required".to_owned()),
                Some(token) => {
                    jwt::verify(token, &secret, user_id, now_ms() / 1000).map_err(|e| e.to_string())
                }
            };
            if let Err(reason) = verdict {
                self.send_error(slot, generation, "auth_failed", &reason, None);
                return self.begin_close(slot, generation, close::POLICY_VIOLATION, "auth failed");
            }
        }
        let Some(conn) = self.conn_mut(slot, generation) else {
            return;
        };
        let user: Arc<str> = Arc::from(user_id);
        conn.phase = Phase::Authenticated;
        conn.user = Some(user.clone());
        conn.deadline_tick = 0;
        if let Some(aux) = conn.aux.as_mut() {
            aux.url_token = None;
        }
        conn.trim_aux();
        // auth_success follows once the home has the device (Envelope::Registered), so a
        // client told it is online is already reachable.
        let addr = self.addr(slot, generation);
        let home = self.home_of(user_id);
        self.route(
            home,
            Envelope::Register {
                user,
                device: device_id.into(),
                addr,
            },
        );
    }

    fn presence_subscribe(&mut self, slot: usize, generation: u32, mut user_ids: Vec<&str>) {
        user_ids.sort_unstable();
        user_ids.dedup();
        let Some(conn) = self.conn_mut(slot, generation) else {
            return;
        };
        let subscriptions = &mut conn.aux_mut().subscriptions;
        let new: Vec<Box<str>> = user_ids
            .iter()
            .filter(|u| !subscriptions.iter().any(|s| &**s == **u))
            .map(|u| (*u).into())
            .collect();
        if subscriptions.len() + new.len() > SUBSCRIPTIONS_PER_CONN_MAX {
            conn.trim_aux();
            let text = format!("a connection may watch at most {SUBSCRIPTIONS_PER_CONN_MAX} users");
            return self.send_error(slot, generation, "bad_request", &text, None);
        }
        subscriptions.extend(new);
        let reactors = self.shared.config.reactors;
        let mut by_home: Vec<Vec<Box<str>>> = (0..reactors).map(|_| Vec::new()).collect();
        for user in &user_ids {
            by_home[self.home_of(user)].push((*user).into());
        }
        let watcher = self.addr(slot, generation);
        let awaiting = by_home.iter().filter(|users| !users.is_empty()).count();
        if awaiting == 0 {
            return self.finish_presence(watcher, Vec::new());
        }
        let request = self.presence_requests.insert(PendingPresence {
            watcher,
            awaiting,
            entries: Vec::with_capacity(user_ids.len()),
        });
        for (home, users) in by_home.into_iter().enumerate() {
            if !users.is_empty() {
                self.route(
                    home,
                    Envelope::Subscribe {
                        watcher,
                        request: request as u32,
                        users,
                    },
                );
            }
        }
    }

    /// Writes `presence_state` once every home has answered.
    pub(super) fn finish_presence(
        &mut self,
        watcher: crate::router::ConnAddr,
        entries: Vec<outbound::PresenceEntry>,
    ) {
        self.json.clear();
        outbound::presence_state(&mut self.json, &entries);
        let frame = frame::encode_text(&self.json);
        self.send(
            watcher.slot as usize,
            watcher.generation,
            frame,
            Priority::Normal,
        );
    }

    /// Sends `error {code, message, ref}`; the connection stays open.
    pub(super) fn send_error(
        &mut self,
        slot: usize,
        generation: u32,
        code: &str,
        message: &str,
        reference: Option<&str>,
    ) {
        self.stats().count_error(code);
        self.json.clear();
        outbound::error(&mut self.json, code, message, reference);
        let frame = frame::encode_text(&self.json);
        self.send(slot, generation, frame, Priority::High);
    }
}
