//! The HTTP API's requests that need the router or the store: `POST /api/messages/send`
//! (answered once the receiver's inbox holds it: `sent` when a device got it), `GET
//! /api/messages/queue/{user}` (what no device acknowledged; `?drain=true` acknowledges
//! it once the answer is written) and `POST /api/messages/broadcast`
//! (answered when every home involved has counted its users).
//!
//! While an answer is pending the connection reads no further request (HTTP/1.1 answers
//! keep their order); the answer resumes whatever was pipelined behind it.

use std::sync::Arc;

use bytes::Bytes;

use super::core::{BroadcastCounts, Reactor};
use tracing::debug;

use crate::conn::{PageInFlight, PendingApi};
use crate::{
    cluster::relay::Relay,
    http::{
        admin::AdminRequest,
        api::{BroadcastRequest, SendRequest},
        metrics, response,
    },
    protocol::{
        codes::ErrorCode,
        json::{write_list, Obj},
        now_ms,
        outbound::Outgoing,
    },
    router::{BroadcastMessage, BroadcastOrder, ConnAddr, Envelope},
    shard::Event,
    stats,
    store::{Command, Failure, Outcome},
};

impl Reactor {
    /// Starts an API send: the `new_message` goes to the receiver's devices (and the
    /// sender's, who see what was sent on their behalf); the receiver's home answers.
    pub(super) fn api_send(&mut self, at: ConnAddr, keep_alive: bool, send: SendRequest) {
        let message_id = self.api_message_id();
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.aux_mut().pending_api = Some(PendingApi {
            keep_alive,
            message_id: message_id.as_str().into(),
            drain: false,
        });
        let conn = at;
        self.feed_shard(Event::ApiSend {
            conn,
            message_id: &message_id,
            request: &send,
        });
    }

    /// The outcome for an API send the store could not take (the gateway is shutting
    /// down): 503, never a silent loss. (A group post's `sent` comes this way too.)
    pub(super) fn answer_api_send(&mut self, at: ConnAddr, delivered: bool) {
        let outcome = if delivered {
            Outcome::Kept { delivered }
        } else {
            Outcome::Failed(Failure::Stopped)
        };
        self.answer_api_appended(at, &outcome);
    }

    /// The store's outcome for an API send, once committed: 202 `sent` when a device got
    /// it, `queued` when none did.
    pub(super) fn answer_api_appended(&mut self, at: ConnAddr, outcome: &Outcome) {
        let Some(pending) = self.take_pending_api(at) else {
            return;
        };
        let answer = match outcome {
            Outcome::Kept { delivered } => {
                let mut body = Vec::with_capacity(96);
                Obj::new(&mut body)
                    .str("message_id", &pending.message_id)
                    .str("status", if *delivered { "sent" } else { "queued" })
                    .end();
                response::write(202, "application/json", &body, pending.keep_alive, &[])
            }
            Outcome::QueueFull => response::json_error(
                429,
                "queue_full",
                "the receiver's inbox is full; the message was not kept",
                pending.keep_alive,
            ),
            // API sends are not counted against a sender; said for completeness.
            Outcome::SenderQuota => response::json_error(
                429,
                "sender_quota",
                "the sender has too many messages waiting unread for this receiver",
                pending.keep_alive,
            ),
            Outcome::NotHeld | Outcome::Failed(_) => {
                let why = match outcome {
                    Outcome::Failed(why) => why.to_string(),
                    _ => "its first copy was not kept".to_owned(),
                };
                let code = match outcome {
                    Outcome::Failed(why) => why.code_or(ErrorCode::PersistenceFailed),
                    _ => ErrorCode::PersistenceFailed,
                };
                response::json_error(
                    503,
                    code.name(),
                    &format!("the message could not be stored: {why}"),
                    pending.keep_alive,
                )
            }
        };
        self.finish_api(at, answer, pending.keep_alive);
    }

    /// Starts `GET /api/messages/queue/{user}`: the store reads what no device of the
    /// user has acknowledged.
    pub(super) fn api_queue(&mut self, at: ConnAddr, keep_alive: bool, user: String, drain: bool) {
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.aux_mut().pending_api = Some(PendingApi {
            keep_alive,
            message_id: "".into(),
            drain,
        });
        let command = Command::Peek {
            user: user.into(),
            requester: at.into(),
        };
        if self.store.send(command).is_err() {
            self.answer_api_queue(at, "", (&[], 0, false), Some(Failure::Stopped));
        }
    }

    /// The store's read of a user's inbox: `{user_id, messages:[...], more}` in delivery
    /// order, with the API's field names. A drain acknowledges what the answer carried
    /// once the kernel has it all; an answer cut off on the way acknowledges nothing.
    pub(super) fn answer_api_queue(
        &mut self,
        at: ConnAddr,
        user: &str,
        (messages, upto, more): (&[Bytes], u64, bool),
        error: Option<Failure>,
    ) {
        let Some(pending) = self.take_pending_api(at) else {
            return;
        };
        let answer = match error {
            Some(why) => response::json_error(
                503,
                why.code_or(ErrorCode::PersistenceFailed).name(),
                &format!("the queue could not be read: {why}"),
                pending.keep_alive,
            ),
            None => {
                let mut body = Vec::with_capacity(64 + 160 * messages.len());
                Obj::new(&mut body)
                    .str("user_id", user)
                    .with("messages", |out| {
                        write_list(out, messages, |out, payload| {
                            queued_message_json(out, payload)
                        })
                    })
                    .bool("more", more)
                    .end();
                response::write(200, "application/json", &body, pending.keep_alive, &[])
            }
        };
        if pending.drain && error.is_none() && upto > 0 {
            if let Some(conn) = self.conn_mut(at) {
                conn.aux_mut().page_in_flight = Some(Box::new(PageInFlight {
                    user: user.into(),
                    covered: upto,
                    next: None,
                    drain: true,
                    any: true,
                }));
            }
        }
        self.finish_api(at, answer, pending.keep_alive);
        self.pages_written(at);
    }

    /// Starts an API broadcast: one order per home involved, each counting its users.
    pub(super) fn api_broadcast(
        &mut self,
        at: ConnAddr,
        keep_alive: bool,
        broadcast: BroadcastRequest,
    ) {
        let reactors = self.shared.config.reactors;
        let message = Arc::new(BroadcastMessage {
            message_id: self.api_message_id().into(),
            sender_id: broadcast.sender_id.into(),
            text: broadcast.text.into(),
            message_type: broadcast.message_type.into(),
            priority: broadcast.priority,
            accepted_ns: stats::clock_ns(),
        });
        let to_all = broadcast.user_ids.is_none();
        let orders: Vec<(usize, Option<Vec<Box<str>>>)> = match broadcast.user_ids {
            None => (0..reactors).map(|home| (home, None)).collect(),
            Some(users) => {
                let users: Vec<Box<str>> = users.into_iter().map(Into::into).collect();
                let shares = crate::router::by_home(users, reactors);
                shares
                    .into_iter()
                    .map(|(home, users)| (home, Some(users)))
                    .collect()
            }
        };
        let Some(conn) = self.conn_mut(at) else {
            return;
        };
        conn.aux_mut().pending_api = Some(PendingApi {
            keep_alive,
            message_id: message.message_id.clone(),
            drain: false,
        });
        let requester = at;
        let counts = BroadcastCounts::default();
        // In a cluster, every user online is on every node: the other nodes' count is
        // one more part (a broadcast to named users reaches them through their inboxes).
        let elsewhere = to_all && self.cluster.is_some();
        let parts = orders.len() + usize::from(elsewhere);
        let request = self.broadcasts.start(requester, parts, counts);
        if elsewhere {
            let relay = Relay::Broadcast {
                requester,
                request,
                message: message.clone(),
            };
            if !self.relay(relay) {
                // The cluster thread is gone (the node stops): no other node's count.
                self.on_broadcast_reply(request, 0, 0, 0);
            }
        }
        if orders.is_empty() {
            if let Some(done) = self.broadcasts.finish(request) {
                self.finish_broadcast(done.requester, &done.so_far);
            }
            return;
        }
        for (home, users) in orders {
            let order = BroadcastOrder {
                requester,
                request,
                users,
                message: message.clone(),
            };
            self.route(home, Envelope::Broadcast(Box::new(order)));
        }
    }

    /// At the requester: one home's counts; the last one answers the request.
    pub(super) fn on_broadcast_reply(
        &mut self,
        request: u32,
        delivered: u32,
        queued: u32,
        offline: u32,
    ) {
        let done = self.broadcasts.answer(request, |counts| {
            counts.delivered += u64::from(delivered);
            counts.queued += u64::from(queued);
            counts.offline += u64::from(offline);
        });
        if let Some(done) = done {
            self.finish_broadcast(done.requester, &done.so_far);
        }
    }

    /// Another node's broadcast to every user online: written to this node's (every home)
    /// and counted for that node.
    pub(super) fn cluster_broadcast(&mut self, message: Arc<BroadcastMessage>, reply: Box<str>) {
        let reactors = self.shared.config.reactors;
        // No connection here waits: the count goes back to the asking node.
        let nobody = ConnAddr {
            reactor: self.id as u16,
            generation: 0,
            slot: 0,
        };
        let counts = BroadcastCounts {
            answer_to: Some(reply),
            ..BroadcastCounts::default()
        };
        let request = self.broadcasts.start(nobody, reactors, counts);
        for home in 0..reactors {
            let order = BroadcastOrder {
                requester: nobody,
                request,
                users: None,
                message: message.clone(),
            };
            self.route(home, Envelope::Broadcast(Box::new(order)));
        }
    }

    fn finish_broadcast(&mut self, requester: ConnAddr, done: &BroadcastCounts) {
        if let Some(reply) = &done.answer_to {
            let counted = Relay::BroadcastCounted {
                reply: reply.clone(),
                delivered: done.delivered,
            };
            self.relay(counted);
            return;
        }
        let Some(pending) = self.take_pending_api(requester) else {
            return;
        };
        let mut body = Vec::with_capacity(96);
        Obj::new(&mut body)
            .str("message_id", &pending.message_id)
            .u64("delivered", done.delivered)
            .u64("queued", done.queued)
            .u64("offline", done.offline)
            .end();
        let answer = response::write(200, "application/json", &body, pending.keep_alive, &[]);
        self.finish_api(requester, answer, pending.keep_alive);
    }

    /// Hands `relay` to the cluster thread; false without a cluster (or once it is gone).
    fn relay(&self, relay: Relay) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let sent = cluster.relays.send(relay).is_ok();
        if sent {
            cluster.doorbell.ring();
        }
        sent
    }

    /// A message id for the API: unique per process (reactor, time, request count).
    fn api_message_id(&self) -> String {
        let sequence = stats::read(&self.stats().http_requests);
        format!("api-{}-{}-{sequence}", now_ms(), self.id)
    }

    /// `GET /api/stats?scope=cluster`: this node's figures go to the cluster thread,
    /// which asks every other node for theirs and answers with them all and their sum.
    pub(super) fn api_cluster_stats(&mut self, at: ConnAddr, keep_alive: bool) {
        let mut local = Vec::with_capacity(1024);
        metrics::stats_json(
            &mut local,
            &self.health(),
            &self.shared.stats,
            &self.store.stats,
        );
        if !self.await_answer(at, keep_alive) {
            return;
        }
        if !self.relay(Relay::Stats { asker: at, local }) {
            self.answer_cluster_stats(at, None);
        }
    }

    /// The cluster's figures for `/api/stats?scope=cluster`; `None`: NATS is out of
    /// reach (503 `cluster_unavailable`).
    pub(crate) fn answer_cluster_stats(&mut self, at: ConnAddr, body: Option<Vec<u8>>) {
        let Some(pending) = self.take_pending_api(at) else {
            return;
        };
        let answer = match body {
            Some(body) => response::write(200, "application/json", &body, pending.keep_alive, &[]),
            None => response::json_error(
                503,
                "cluster_unavailable",
                "NATS is out of reach: only this node's figures are known (scope=node)",
                pending.keep_alive,
            ),
        };
        self.finish_api(at, answer, pending.keep_alive);
    }

    /// Starts an operator's call (`/api/admin/*`): the shard sends it to the homes that
    /// answer it.
    pub(super) fn api_admin(&mut self, at: ConnAddr, keep_alive: bool, call: AdminRequest) {
        if !self.await_answer(at, keep_alive) {
            return;
        }
        self.feed_shard(Event::Admin {
            conn: at,
            request: &call,
        });
    }

    /// The answer to an operator's call, a JSON body.
    pub(super) fn answer_admin(&mut self, at: ConnAddr, status: u16, body: &[u8]) {
        let Some(pending) = self.take_pending_api(at) else {
            return;
        };
        let answer = response::write(status, "application/json", body, pending.keep_alive, &[]);
        self.finish_api(at, answer, pending.keep_alive);
    }

    /// A frame the shard sent to an HTTP connection: the answer to its pending call, as a
    /// group change's or a refused send's comes (an `error` gets the HTTP status of its
    /// code, anything else 200 with the frame's JSON). Without a call pending it is
    /// dropped: nothing but an answer goes to an HTTP client.
    pub(super) fn answer_api_with_frame(&mut self, at: ConnAddr, frame: &Outgoing) {
        let json = frame.json();
        let Some(pending) = self.take_pending_api(at) else {
            return debug!(
                slot = at.slot,
                "a frame for an HTTP connection with no call: dropped"
            );
        };
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
        let answer = match value["type"].as_str() {
            Some("error") => {
                let code = value["code"].as_str().unwrap_or("internal");
                let message = value["message"].as_str().unwrap_or_default();
                response::json_error(api_status(code), code, message, pending.keep_alive)
            }
            _ => response::write(200, "application/json", &json, pending.keep_alive, &[]),
        };
        self.finish_api(at, answer, pending.keep_alive);
    }

    /// Marks the connection as waiting for an answer (its later requests wait behind
    /// it); false when it is gone.
    fn await_answer(&mut self, at: ConnAddr, keep_alive: bool) -> bool {
        let Some(conn) = self.conn_mut(at) else {
            return false;
        };
        conn.aux_mut().pending_api = Some(PendingApi {
            keep_alive,
            message_id: "".into(),
            drain: false,
        });
        true
    }

    fn take_pending_api(&mut self, at: ConnAddr) -> Option<PendingApi> {
        let conn = self.conn_mut(at)?;
        let pending = conn.aux.as_mut()?.pending_api.take();
        conn.trim_aux();
        pending
    }

    /// Writes the answer, then serves whatever requests were pipelined behind it.
    fn finish_api(&mut self, at: ConnAddr, answer: bytes::Bytes, keep_alive: bool) {
        self.answer_http(at, answer, keep_alive);
        if keep_alive {
            self.process_input(at, &mut [], 0);
        }
    }
}

/// The HTTP status of a refusal with error `code`.
fn api_status(code: &str) -> u16 {
    match code {
        "forbidden" | "not_member" => 403,
        "conflict" | "too_many_groups" => 409,
        "rate_limited" | "queue_full" => 429,
        "persistence_failed" | "cluster_unavailable" => 503,
        _ => 400,
    }
}

/// One queued `new_message` (as stored) in the API's shape: `{message_id, sender_id, text,
/// message_type, priority, timestamp}`.
fn queued_message_json(out: &mut Vec<u8>, payload: &[u8]) {
    let stored: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let text = |key: &str| stored[key].as_str().unwrap_or_default().to_owned();
    Obj::new(out)
        .str("message_id", &text("messageId"))
        .str("sender_id", &text("senderId"))
        .str("text", &text("content"))
        .str("message_type", &text("messageType"))
        .str("priority", &text("priority"))
        .u64(
            "timestamp",
            stored["timestamp"].as_u64().unwrap_or_default(),
        )
        .end();
}
