//! The chat protocol as a state machine that never touches a socket: one [`Shard`] per
//! reactor.
//!
//! A shard has two sides. As the **home** of the users and groups that hash to it
//! ([`crate::router::home_of`]) it owns their online devices and presence watchers
//! ([`directory`]), the window of recently routed message ids ([`dedup`]), the groups'
//! members and huddle rooms ([`groups_state`]) and the group posts waiting for their
//! member homes. For the **connections** its reactor holds it turns each authenticated
//! client message into envelopes for the homes concerned, and keeps what a connection
//! asked for (presence subscriptions, huddle rooms, presence requests waiting for homes).
//!
//! It is driven by [`Shard::handle`]: an [`Event`] in (a client message, a connection
//! authenticated or closed, an envelope, a store answer, a store command that could not
//! be sent), [`Effect`]s out (envelopes to mail, store commands, errors for a
//! connection). There is no socket, ring, clock or thread inside: the time comes with
//! each event, so the same code runs in a reactor and in the deterministic simulator
//! (`engine/tests/simulator.rs`).
//!
//! One file per feature:
//! - `session`: devices registering and unregistering, `auth_success`, ping, and the
//!   presence a user's first and last device announce.
//! - [`presence`]: subscriptions to a user's presence.
//! - `inbox`: who numbers a user's inbox events, and a device's way from `auth` to live
//!   (reading its inbox, then getting events as they come), and `ack`.
//! - `direct`: direct messages, typing and receipts: dedup, delivery into inboxes, the
//!   HTTP API's send.
//! - `history`: history pages and changes to sent messages (edits, deletes, reactions).
//! - `groups`: joins and leaves, posts fanned out per member home.
//! - [`huddles`]: call signals, and a group's call rooms.
//! - `broadcast`: HTTP API broadcasts, each home's share.

mod admin;
pub mod away;
mod broadcast;
pub mod dedup;
mod direct;
pub mod directory;
mod groups;
pub mod groups_state;
mod history;
pub mod huddles;
mod inbox;
pub mod presence;
mod quota;
mod session;

use std::{borrow::Cow, collections::VecDeque, sync::Arc};

use crate::{
    protocol::{
        codes::ErrorCode,
        inbound::ClientMessage,
        outbound::{OutJson, Outgoing, PresenceEntry},
        Priority,
    },
    router::{gather::Gathers, home_of, ConnAddr, Envelope},
    store::{Command, FanOut, Reply},
};
use dedup::{RecentMessages, Seen};
use directory::Directory;
use groups_state::{Groups, UserGroups};

/// The time an event happens, read by the driver (the shard reads no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Wall-clock time, Unix ms: timestamps in frames, presence, the dedup window.
    pub unix_ms: u64,
    /// Monotonic time, ns ([`crate::stats::clock_ns`] in a reactor): routing latency.
    pub mono_ns: u64,
}

/// What a shard is handed.
#[derive(Debug)]
pub enum Event<'a> {
    /// A device of this reactor authenticated as `user` (its driver checked the token).
    Authenticated {
        /// The connection.
        conn: ConnAddr,
        /// The user.
        user: Arc<str>,
        /// The device id.
        device: &'a str,
        /// It acknowledges what it gets (its `auth` had `resume`).
        acks: bool,
    },
    /// A client message from an authenticated connection of this reactor (not `auth`).
    Message {
        /// The connection.
        conn: ConnAddr,
        /// Its user.
        user: &'a Arc<str>,
        /// The message, borrowing the frame's payload.
        message: ClientMessage<'a>,
    },
    /// `POST /api/messages/send` on an HTTP connection of this reactor: a message on a
    /// user's behalf, answered (through the driver) when the receiver's home says whether
    /// a device got it.
    ApiSend {
        /// The HTTP connection waiting for the answer.
        conn: ConnAddr,
        /// The id the API gave the message.
        message_id: &'a str,
        /// The request.
        request: &'a crate::http::api::SendRequest,
    },
    /// An operator's call (`/api/admin/*`) on an HTTP connection of this reactor,
    /// answered (through the driver) once the homes concerned have.
    Admin {
        /// The HTTP connection waiting for the answer.
        conn: ConnAddr,
        /// The call.
        request: &'a crate::http::admin::AdminRequest,
    },
    /// Another node's operator call about users, for this node's homes (reactor 0 takes
    /// them from the relay); this node's part goes back to `reply`.
    AdminFromNode {
        /// The call.
        call: crate::http::admin::AdminRequest,
        /// Where the asking node's relay waits.
        reply: Box<str>,
    },
    /// An authenticated connection of this reactor closed, or began its close.
    Closed {
        /// The connection.
        conn: ConnAddr,
        /// Its user.
        user: Arc<str>,
        /// The client sent a close frame (a logout: no presence grace).
        clean: bool,
        /// The close code (1006 without a closing handshake).
        code: u16,
    },
    /// Time passed (the driver's timer tick): presence graces that ended are announced.
    Tick,
    /// An envelope for the shard (see [`Envelope::is_for_shard`]), from a peer or itself.
    Mail(Envelope),
    /// A store answer for the shard ([`Reply::is_for_shard`]).
    StoreReply(Reply),
    /// A store command the shard asked for that could not be sent (the store thread is
    /// gone: the gateway is shutting down). Whoever waits on it is told.
    StoreRefused(Command),
}

/// What a shard asks its driver to do.
#[derive(Debug)]
pub enum Effect {
    /// Mail `envelope` to reactor `to` (this reactor included: the driver hands it back
    /// to the shard or to the connection it names).
    Mail {
        /// The reactor.
        to: usize,
        /// The envelope.
        envelope: Envelope,
    },
    /// Hand a command to the store; one it cannot take comes back as
    /// [`Event::StoreRefused`].
    Store(Command),
    /// Hand this to the cluster thread (`--cluster` only). Boxed: rare (a device's
    /// first login on a node, typing, calls), so every other effect stays small.
    Cluster(Box<crate::cluster::relay::Relay>),
    /// Hand an event to the events webhook (`--events-webhook`; only when the shard was
    /// made [`Shard::with_hooks`]). Boxed: rare, so every other effect stays small.
    Hook(Box<crate::events::Hook>),
    /// Send `error {code, message, ref}` to a connection on any reactor.
    Error {
        /// The connection.
        to: ConnAddr,
        /// The protocol's error code.
        code: ErrorCode,
        /// The human-readable message.
        text: Cow<'static, str>,
        /// The `ref` (a message, call or group id).
        reference: Option<Box<str>>,
    },
}

/// The effects of the events handled so far, in the order they were made; the driver
/// pops them front first. Reused across events: no allocation once it has grown.
#[derive(Debug, Default)]
pub struct Effects {
    queue: VecDeque<Effect>,
}

impl Effects {
    /// Gives back the queue's capacity beyond `keep` effects (a turn of a whole ping
    /// sweep or broadcast grows it far past a usual turn).
    pub fn trim(&mut self, keep: usize) {
        self.queue.shrink_to(keep);
    }

    /// The oldest effect not yet carried out.
    pub fn pop(&mut self) -> Option<Effect> {
        self.queue.pop_front()
    }

    fn mail(&mut self, to: usize, envelope: Envelope) {
        self.queue.push_back(Effect::Mail { to, envelope });
    }

    /// Mails `frame` to the connection at `addr`.
    fn frame_to(&mut self, addr: ConnAddr, frame: Outgoing, priority: Priority, accepted_ns: u64) {
        let envelope = Envelope::ToConn {
            addr,
            frame,
            priority,
            accepted_ns,
        };
        self.mail(addr.reactor as usize, envelope);
    }

    fn store(&mut self, command: Command) {
        self.queue.push_back(Effect::Store(command));
    }

    fn cluster(&mut self, relay: crate::cluster::relay::Relay) {
        self.queue.push_back(Effect::Cluster(Box::new(relay)));
    }

    fn hook(&mut self, hook: crate::events::Hook) {
        self.queue.push_back(Effect::Hook(Box::new(hook)));
    }

    fn error(
        &mut self,
        to: ConnAddr,
        code: ErrorCode,
        text: impl Into<Cow<'static, str>>,
        reference: Option<&str>,
    ) {
        self.queue.push_back(Effect::Error {
            to,
            code,
            text: text.into(),
            reference: reference.map(Box::from),
        });
    }
}

/// What a group post fanned out from this home gathers from its member homes (it is
/// acknowledged once every copy for an offline member is committed).
#[derive(Debug)]
struct PostShares {
    /// The post's message id.
    message_id: Box<str>,
    /// Some offline member's copy could not be stored.
    failed: bool,
}

/// What one connection asked for that outlives a message; kept only while not empty
/// (an idle connection costs the shard nothing).
#[derive(Debug, Default)]
struct ConnChat {
    /// The connection's user, once it watches anyone (whose presence it may see is
    /// checked again at each change).
    watcher: Option<Box<str>>,
    /// Users whose presence the connection watches.
    subscriptions: Vec<Box<str>>,
    /// Huddle rooms the connection is in, `(group, room)`: left when it closes.
    huddles: Vec<(Box<str>, Box<str>)>,
}

impl ConnChat {
    fn is_empty(&self) -> bool {
        self.subscriptions.is_empty() && self.huddles.is_empty()
    }
}

/// The chat state of one reactor: home of some users and groups, and the chat side of
/// its connections.
#[derive(Debug)]
pub struct Shard {
    /// The reactor this shard is (its index among the homes).
    id: usize,
    /// How many homes there are (for `home_of`).
    homes: usize,
    /// The time of the event being handled (Unix ms), as the driver read it.
    now_ms: u64,
    /// The same instant on the monotonic clock ([`Clock::mono_ns`]), stamped on
    /// deliveries so their routing latency can be measured.
    now_ns: u64,
    /// Users homed here: online devices and presence watchers.
    directory: Directory,
    /// Messages this home recently delivered or queued, so retries are not repeated.
    recent: RecentMessages,
    /// Groups homed here: members and huddle rooms.
    groups: Groups,
    /// Group posts fanned out from here, waiting for their member homes.
    posts: Gathers<PostShares>,
    /// Groups per user across every home (`--groups-per-user-max`).
    user_groups: Arc<UserGroups>,
    /// Subscriptions and huddles of this reactor's connections that have any.
    conns: std::collections::HashMap<ConnAddr, ConnChat>,
    /// Presence requests of this reactor's connections, waiting for homes.
    presence_requests: Gathers<Vec<PresenceEntry>>,
    /// Operators' calls about users on this reactor's HTTP connections (and other
    /// nodes' calls sent here), waiting for homes and nodes.
    admin_calls: Gathers<admin::AdminCall>,
    /// Operators' HTTP connections whose group change waits for the store here: each
    /// hears the change as its answer.
    operator_changes: std::collections::HashSet<ConnAddr>,
    /// Subscribes to users homed here, waiting for the cluster's relay.
    presence_waits: Vec<presence::WaitingSubscribe>,
    /// Reusable buffer for outbound JSON.
    json: OutJson,
    /// The last inbox opening's value.
    next_opening: u32,
    /// Users homed here in their presence grace.
    away: away::Away,
    /// `--presence-grace-ms`.
    presence_grace_ms: u64,
    /// In a cluster: live events go to the other nodes too ([`Shard::relaying`]).
    relays: bool,
    /// Events go to the events webhook ([`Shard::with_hooks`]).
    hooks: bool,
    /// `--queue-max-per-sender`: what one sender may queue for a user homed here.
    sender_quota: quota::SenderQuota,
}

impl Shard {
    /// The shard of home `id` of `homes`, with the groups the store holds for it; users
    /// whose last device drops stay shown online for `presence_grace_ms`; it remembers
    /// `dedup_pairs` recent messages.
    pub fn new(
        (id, homes): (usize, usize),
        groups: Groups,
        user_groups: Arc<UserGroups>,
        presence_grace_ms: u64,
        dedup_pairs: usize,
    ) -> Shard {
        assert!(id < homes, "home {id} of {homes}");
        Shard {
            id,
            homes,
            now_ms: 0,
            now_ns: 0,
            directory: Directory::default(),
            recent: RecentMessages::new(dedup_pairs),
            groups,
            posts: Gathers::default(),
            user_groups,
            conns: Default::default(),
            presence_requests: Gathers::default(),
            admin_calls: Gathers::default(),
            operator_changes: Default::default(),
            presence_waits: Vec::new(),
            json: OutJson::default(),
            next_opening: 0,
            away: away::Away::default(),
            presence_grace_ms,
            relays: false,
            hooks: false,
            sender_quota: quota::SenderQuota::default(),
        }
    }

    /// At most `max` messages from one sender wait for a user homed here with no device
    /// online (`--queue-max-per-sender`; 0: no bound).
    pub fn with_queue_max_per_sender(mut self, max: u32) -> Shard {
        self.sender_quota = quota::SenderQuota::new(max);
        self
    }

    /// A shard whose homes hand events to the events webhook (`--events-webhook`): users
    /// online and offline, group members, connections closed.
    pub fn with_hooks(mut self) -> Shard {
        self.hooks = true;
        self
    }

    /// The shard of a node in a cluster: its homes relay live events to the other nodes
    /// and say which users this node holds devices of ([`crate::cluster::relay`]).
    pub fn relaying(mut self) -> Shard {
        self.relays = true;
        self
    }

    /// Users homed here with at least one device online.
    pub fn online_users(&self) -> usize {
        self.directory.online_users()
    }

    /// Starts the dedup window with the direct messages the store's inboxes received
    /// lately (oldest first), so a retry after a restart is confirmed, not delivered.
    pub fn remember_recent(&mut self, pairs: &[crate::store::RecentPair]) {
        for pair in pairs {
            let key = if pair.copy {
                self.recent.copy_key(&pair.sender, &pair.message_id)
            } else {
                self.recent.key(&pair.sender, &pair.message_id)
            };
            let seen = if pair.delivered {
                Seen::Delivered
            } else {
                Seen::Queued
            };
            self.recent.record(key, seen, pair.at_ms);
        }
    }

    /// Recent messages the dedup window let go of early (see [`RecentMessages`]).
    pub fn dedup_evicted_young(&self) -> u64 {
        self.recent.evicted_young()
    }

    /// Handles one event at `now`; its effects are appended to `out`.
    pub fn handle(&mut self, now: Clock, event: Event<'_>, out: &mut Effects) {
        self.now_ms = now.unix_ms;
        self.now_ns = now.mono_ns;
        match event {
            Event::Authenticated {
                conn,
                user,
                device,
                acks,
            } => self.authenticated(conn, user, (device, acks), out),
            Event::Message {
                conn,
                user,
                message,
            } => self.on_message(conn, user, message, out),
            Event::ApiSend {
                conn,
                message_id,
                request,
            } => self.api_send(conn, message_id, request, out),
            Event::Admin { conn, request } => self.admin(conn, request, out),
            Event::AdminFromNode { call, reply } => self.admin_from_node(call, reply, out),
            Event::Closed {
                conn,
                user,
                clean,
                code,
            } => self.closed(conn, user, (clean, code), out),
            Event::Tick => self.graces_ended(out),
            Event::Mail(envelope) => self.on_mail(envelope, out),
            Event::StoreReply(reply) => self.on_store_reply(reply, out),
            Event::StoreRefused(command) => self.on_store_refused(command, out),
        }
    }

    /// One client message: a thin switch to the feature that handles it.
    fn on_message(
        &mut self,
        conn: ConnAddr,
        user: &Arc<str>,
        message: ClientMessage<'_>,
        out: &mut Effects,
    ) {
        match message {
            ClientMessage::Auth { .. } => {
                out.error(conn, ErrorCode::BadRequest, "already authenticated", None)
            }
            // The session's token is the connection's business: its reactor answers.
            ClientMessage::AuthRefresh { .. } => {}
            ClientMessage::Ping { ts } => self.ping(conn, ts, out),
            ClientMessage::Ack { seq } => self.ack(conn, user, seq, out),
            ClientMessage::SendMessage(text) => self.send_message(conn, user, &text, true, out),
            ClientMessage::GroupMessage(text) => self.group_message(conn, user, &text, out),
            ClientMessage::Typing {
                receiver_id,
                is_typing,
            } => self.typing(user, receiver_id, is_typing, out),
            ClientMessage::ReadReceipt {
                message_id,
                sender_id,
            } => self.read_receipt(conn, user, message_id, sender_id, out),
            ClientMessage::History {
                peer_id,
                before,
                limit,
            } => self.history(conn, user, (peer_id, before, limit), out),
            ClientMessage::Group { group_id, request } => {
                self.ask_group_change(conn, user, group_id, request, out)
            }
            ClientMessage::Signal {
                receiver_id,
                call_id,
                kind,
                payload,
            } => {
                let signal = huddles::Signal {
                    receiver_id,
                    call_id,
                    kind,
                    payload: &payload,
                };
                self.signal(conn, user, &signal, out)
            }
            ClientMessage::Amend {
                message_id,
                receiver_id,
                change,
            } => self.amend(conn, user, (message_id, receiver_id), &change, out),
            ClientMessage::PresenceSubscribe { user_ids } => {
                self.presence_subscribe(conn, user, user_ids, out)
            }
            ClientMessage::PresenceUnsubscribe { user_ids } => {
                self.presence_unsubscribe(conn, &user_ids, out)
            }
        }
    }

    fn on_mail(&mut self, envelope: Envelope, out: &mut Effects) {
        match envelope {
            Envelope::Register {
                user,
                device,
                addr,
                acks,
            } => self.register(user, (device, acks), addr, out),

            Envelope::PresenceReply { request, entries } => {
                self.presence_reply(request, entries, out)
            }
            Envelope::Presence { watcher, note } => self.presence_changed(watcher, &note, out),
            Envelope::Unregister {
                user,
                addr,
                clean,
                code,
            } => self.unregister(user, addr, (clean, code), out),
            Envelope::Deliver(delivery) => self.deliver(*delivery, out),
            Envelope::Subscribe {
                watcher,
                request,
                users,
            } => self.subscribe(watcher, request, users, out),
            Envelope::Unsubscribe { watcher, users } => self.unsubscribe(watcher, users, out),
            Envelope::RemotePresence {
                user,
                online,
                at_ms,
            } => self.remote_presence(&user, online, at_ms, out),
            Envelope::Broadcast(order) => self.broadcast(*order, out),
            Envelope::GroupChange(change) => self.group_change(*change, out),
            Envelope::GroupMembership {
                group,
                user,
                joined,
            } => self.group_membership_elsewhere(&group, &user, joined),
            Envelope::GroupSettings { group, settings } => {
                self.groups
                    .set_settings(&group, settings.map(|s| *s).unwrap_or_default());
            }
            Envelope::GroupPost(post) => self.group_post(*post, out),
            Envelope::GroupDeliver(delivery) => self.group_deliver(*delivery, out),
            Envelope::GroupShareDone { post, failed } => self.group_share_done(post, failed, out),
            Envelope::Huddle(signal) => self.huddle(*signal, out),
            Envelope::HuddleRelayed(relayed) => self.huddle_relayed(*relayed, out),
            Envelope::Admin(ask) => self.admin_at_home(*ask, out),
            Envelope::AdminPart { request, part } => self.admin_part(request, *part, out),
            Envelope::AdminNodes(nodes) => self.admin_nodes(nodes, out),
            other => debug_assert!(false, "for a connection, not a shard: {other:?}"),
        }
    }

    fn on_store_reply(&mut self, reply: Reply, out: &mut Effects) {
        match reply {
            Reply::NotKept { ticket } => {
                let (key, serial) = dedup::PairKey::from_ticket(ticket);
                self.recent.forget(key, serial);
            }
            Reply::InboxOpened { user, ticket, last } => {
                self.inbox_opened(&user, ticket, last, out)
            }
            Reply::Receipts { user, receipts } => self.receipts_due(&user, &receipts, out),
            Reply::AcksOverdue { user } => self.acks_overdue(&user, out),
            Reply::EventsMissed { user } => self.events_missed(&user, out),
            Reply::Membership {
                group,
                user,
                joined,
                device,
                settings,
                failed,
            } => {
                let change = (&*group, &*user, joined);
                self.membership_stored(change, device.into(), settings, failed, out)
            }
            Reply::FanOutQueued {
                purpose: FanOut::GroupPost,
                request,
                failed,
                ..
            } => self.group_share_done(request, failed, out),
            Reply::History {
                requester,
                peer,
                messages,
                more,
                error,
            } => {
                let page = (&messages[..], more);
                self.history_read(requester.into(), &peer, page, error, out)
            }
            Reply::Amended {
                amend,
                found,
                error,
            } => self.amended(*amend, found, error, out),
            Reply::SenderFound {
                requester,
                reader,
                message_id,
                sender,
                error,
            } => self.sender_found(requester.into(), &reader, &message_id, sender, error, out),
            other => debug_assert!(false, "for a connection, not a shard: {other:?}"),
        }
    }

    fn on_store_refused(&mut self, command: Command, out: &mut Effects) {
        match command {
            Command::Append(append) => self.append_refused(*append, out),
            Command::AppendShare(share) => match share.purpose {
                FanOut::GroupPost => {
                    let done = Envelope::GroupShareDone {
                        post: share.request,
                        failed: true,
                    };
                    out.mail(share.reply_to, done);
                }
                FanOut::Broadcast => self.broadcast_refused(*share, out),
            },
            Command::Confirm(confirm) => {
                let (sender, id) = (confirm.ack.waiter.into(), confirm.ack.message_id);
                let ack = Envelope::Ack {
                    sender,
                    message_id: id,
                    status: crate::router::AckStatus::Offline,
                };
                out.mail(confirm.ack.waiter.reactor, ack);
            }
            Command::Membership {
                group,
                user,
                joined,
                device,
                settings,
                ..
            } => {
                let stopped = Some(crate::store::Failure::Stopped);
                let change = (&*group, &*user, joined);
                self.membership_stored(change, device.into(), settings, stopped, out)
            }
            Command::History { requester, .. } => {
                let text = "history cannot be read: the gateway is shutting down";
                out.error(requester.into(), ErrorCode::StoreUnavailable, text, None);
            }
            Command::Amend(amend) => {
                let text = "the message cannot be changed: the gateway is shutting down";
                let reference = Some(&*amend.message_id);
                out.error(
                    amend.requester.into(),
                    ErrorCode::StoreUnavailable,
                    text,
                    reference,
                );
            }
            Command::FindSender {
                requester,
                message_id,
                ..
            } => {
                let text = "the message's sender cannot be looked up: the gateway is shutting down";
                out.error(
                    requester.into(),
                    ErrorCode::StoreUnavailable,
                    text,
                    Some(&message_id),
                );
            }
            // The gateway is shutting down: an ack not kept is asked again by the
            // device's next one; an opening left unanswered leaves the store numbering,
            // as it will after the restart.
            Command::Ack { .. } | Command::OpenInbox { .. } => {}
            other => debug_assert!(false, "not a shard's command: {other:?}"),
        }
    }

    /// The home of `user` (or of a group).
    fn home_of(&self, user: &str) -> usize {
        home_of(user, self.homes)
    }

    /// `users` by home, homes without users left out.
    fn split_by_home<U: AsRef<str>>(&self, users: Vec<U>) -> Vec<(usize, Vec<U>)> {
        crate::router::by_home(users, self.homes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cluster::relay::Relay, router::Delivery};

    /// One home, driven as a reactor drives it: mail to itself goes back in; frames for
    /// connections are collected, decoded.
    struct OneHome {
        shard: Shard,
        effects: Effects,
        frames: Vec<(ConnAddr, serde_json::Value)>,
        /// What a relaying shard asked of the cluster.
        relays: Vec<Relay>,
        /// Answers to operators' calls: the connection and the JSON body.
        answers: Vec<(ConnAddr, serde_json::Value)>,
    }

    impl OneHome {
        fn new() -> OneHome {
            let quota = Arc::new(UserGroups::new(10, false));
            OneHome {
                shard: Shard::new((0, 1), Groups::default(), quota, 0, 1024),
                effects: Effects::default(),
                frames: Vec::new(),
                relays: Vec::new(),
                answers: Vec::new(),
            }
        }

        /// The home of a node in a cluster.
        fn relaying() -> OneHome {
            let home = OneHome::new();
            OneHome {
                shard: home.shard.relaying(),
                ..home
            }
        }

        fn feed(&mut self, event: Event<'_>) {
            let now = Clock {
                unix_ms: 1,
                mono_ns: 1,
            };
            self.shard.handle(now, event, &mut self.effects);
            while let Some(effect) = self.effects.pop() {
                match effect {
                    Effect::Mail {
                        envelope: Envelope::ToConn { addr, frame, .. },
                        ..
                    } => {
                        let payload = frame.json();
                        let json = serde_json::from_slice(&payload).unwrap();
                        self.frames.push((addr, json));
                    }
                    Effect::Mail {
                        envelope: Envelope::AdminAnswer { to, body, .. },
                        ..
                    } => {
                        let json = serde_json::from_slice(&body).unwrap();
                        self.answers.push((to, json));
                    }
                    // For the driver (a device made live, a close): not a frame.
                    Effect::Mail { envelope, .. } if !envelope.is_for_shard() => {}
                    Effect::Mail { envelope, .. } => {
                        self.shard
                            .handle(now, Event::Mail(envelope), &mut self.effects)
                    }
                    Effect::Store(_) | Effect::Error { .. } | Effect::Hook(_) => {}
                    Effect::Cluster(relay) => self.relays.push(*relay),
                }
            }
        }

        /// `message` from `user`'s connection `conn`.
        fn send(&mut self, conn: ConnAddr, user: &Arc<str>, message: ClientMessage<'_>) {
            self.feed(Event::Message {
                conn,
                user,
                message,
            });
        }

        fn connect(&mut self, slot: u32, user: &str) -> (ConnAddr, Arc<str>) {
            let conn = ConnAddr {
                reactor: 0,
                generation: 1,
                slot,
            };
            let user: Arc<str> = user.into();
            let device = format!("d{slot}");
            self.feed(Event::Authenticated {
                conn,
                user: user.clone(),
                device: &device,
                acks: false,
            });
            (conn, user)
        }
    }

    /// What `relays` says of live events: `(user, whether a call waits on the answer)`.
    fn lives(relays: &[Relay]) -> Vec<(&str, bool)> {
        relays
            .iter()
            .filter_map(|relay| match relay {
                Relay::Live { user, call, .. } => Some((&**user, call.is_some())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_shard_alone_relays_nothing() {
        let mut home = OneHome::new();
        let (alice, alice_user) = home.connect(1, "alice");
        let message = ClientMessage::Typing {
            receiver_id: "bob",
            is_typing: true,
        };
        home.send(alice, &alice_user, message);
        assert!(home.relays.is_empty(), "{:?}", home.relays);
    }

    #[test]
    fn a_relaying_home_watches_its_users_from_first_device_to_last() {
        let mut home = OneHome::relaying();
        let (first, bob) = home.connect(1, "bob");
        let (second, _) = home.connect(2, "bob");
        let watched: Vec<_> = home
            .relays
            .drain(..)
            .filter_map(|relay| match relay {
                Relay::Watch { user, home } => Some((user, home)),
                _ => None,
            })
            .collect();
        assert_eq!(
            watched,
            [(bob.clone(), 0)],
            "one watch, at the first device"
        );
        for (conn, last) in [(first, false), (second, true)] {
            home.feed(Event::Closed {
                conn,
                user: bob.clone(),
                clean: true,
                code: 1000,
            });
            let unwatched = home.relays.drain(..);
            let unwatched = unwatched.filter(|r| matches!(r, Relay::Unwatch { .. }));
            assert_eq!(unwatched.count(), usize::from(last));
        }
    }

    #[test]
    fn a_relaying_home_relays_live_events_once_and_never_what_was_relayed() {
        let mut home = OneHome::relaying();
        let (bob_device, _) = home.connect(1, "bob");
        // As once the store has answered the inbox's opening.
        assert!(home.shard.directory.set_live("bob", bob_device));
        let (alice, alice_user) = home.connect(2, "alice");
        home.relays.clear();
        let typing = ClientMessage::Typing {
            receiver_id: "bob",
            is_typing: true,
        };
        home.send(alice, &alice_user, typing);
        assert_eq!(
            lives(&home.relays),
            [("bob", false)],
            "here and to the others"
        );
        assert_eq!(
            home.frames.iter().filter(|(a, _)| *a == bob_device).count(),
            1
        );
        // A call to a user with no device here waits on the other nodes' answer: no
        // peer_offline yet.
        home.relays.clear();
        let call = ClientMessage::Signal {
            receiver_id: "carol",
            call_id: "c-1",
            kind: "call:initiate",
            payload: b"null".to_vec(),
        };
        home.send(alice, &alice_user, call);
        assert_eq!(lives(&home.relays), [("carol", true)]);
        assert!(
            home.frames.iter().all(|(_, f)| f["type"] != "error"),
            "{:?}",
            home.frames
        );
        // What another node relayed goes to the devices here, and no further.
        home.relays.clear();
        home.frames.clear();
        let typing = Outgoing::text(
            crate::protocol::codes::OutKind::Typing,
            br#"{"type":"typing"}"#,
        );
        let relayed = Delivery::new(
            "bob",
            (typing, Priority::High),
            0,
            crate::router::Durability::Relayed,
        );
        home.feed(Event::Mail(Envelope::Deliver(Box::new(relayed))));
        assert_eq!(home.frames.len(), 1);
        assert_eq!(home.frames[0].0, bob_device);
        assert!(home.relays.is_empty(), "{:?}", home.relays);
    }

    #[test]
    fn a_relaying_home_shows_a_user_online_while_any_node_holds_it() {
        let mut home = OneHome::relaying();
        let (watcher, watcher_user) = home.connect(1, "watcher");
        home.relays.clear();
        let subscribe = ClientMessage::PresenceSubscribe {
            user_ids: vec!["bob"],
        };
        home.send(watcher, &watcher_user, subscribe);
        let watched = home.relays.drain(..);
        let watched = watched.filter(|r| matches!(r, Relay::WatchPresence { .. }));
        assert_eq!(watched.count(), 1);
        assert!(
            home.frames.is_empty(),
            "the state waits for the other nodes"
        );
        let elsewhere = |online, at_ms| {
            Event::Mail(Envelope::RemotePresence {
                user: "bob".into(),
                online,
                at_ms,
            })
        };
        home.feed(elsewhere(true, 5));
        let states: Vec<_> = home.frames.drain(..).map(|(_, f)| f).collect();
        assert_eq!(states.len(), 1);
        assert_eq!(states[0]["type"], "presence_state");
        assert_eq!(states[0]["users"][0]["status"], "online");
        // A device here comes and goes: another node still holds bob, so no change.
        let (bob_device, bob) = home.connect(2, "bob");
        home.feed(Event::Closed {
            conn: bob_device,
            user: bob,
            clean: true,
            code: 1000,
        });
        let unwatched = home.relays.drain(..);
        let unwatched = unwatched.filter(|r| matches!(r, Relay::Unwatch { .. }));
        assert_eq!(
            unwatched.count(),
            1,
            "the other nodes hear bob left this one"
        );
        let to_watcher = |home: &OneHome| {
            let frames = home.frames.iter().filter(|(a, _)| *a == watcher);
            frames.map(|(_, f)| f.clone()).collect::<Vec<_>>()
        };
        assert!(to_watcher(&home).is_empty(), "{:?}", home.frames);
        // The other node lets bob go: offline, dated by that node.
        home.feed(elsewhere(false, 7));
        let updates = to_watcher(&home);
        assert_eq!(updates.len(), 1, "{updates:?}");
        assert_eq!(updates[0]["status"], "offline");
        assert_eq!(updates[0]["timestamp"], 7);
        // The last watcher leaves: the relay stops watching the other nodes.
        home.relays.clear();
        let unsubscribe = ClientMessage::PresenceUnsubscribe {
            user_ids: vec!["bob"],
        };
        home.send(watcher, &watcher_user, unsubscribe);
        let unwatched = home.relays.drain(..);
        let unwatched = unwatched.filter(|r| matches!(r, Relay::UnwatchPresence { .. }));
        assert_eq!(unwatched.count(), 1);
    }

    #[test]
    fn a_closed_watcher_is_forgotten_and_hears_nothing_more() {
        let mut home = OneHome::new();
        let (watcher, watcher_user) = home.connect(1, "watcher");
        let users = vec!["target"];
        let message = ClientMessage::PresenceSubscribe { user_ids: users };
        let user = &watcher_user;
        home.feed(Event::Message {
            conn: watcher,
            user,
            message,
        });
        assert_eq!(home.shard.directory.watchers("target"), &[watcher]);
        home.feed(Event::Closed {
            conn: watcher,
            user: watcher_user,
            clean: true,
            code: 1000,
        });
        assert!(home.shard.directory.watchers("target").is_empty());
        assert!(
            home.shard.conns.is_empty(),
            "the connection's chat state is gone"
        );
        home.frames.clear();
        home.connect(2, "target");
        let to_watcher = home
            .frames
            .iter()
            .filter(|(addr, _)| *addr == watcher)
            .count();
        assert_eq!(to_watcher, 0, "{:?}", home.frames);
    }

    #[test]
    fn an_operators_call_in_a_cluster_waits_for_the_other_nodes_and_names_them() {
        use crate::{
            http::admin::AdminRequest,
            router::{AdminPart, NodesAnswer},
        };
        let mut home = OneHome::relaying();
        home.connect(1, "carol");
        home.relays.clear(); // carol is held here
        let operator = ConnAddr {
            reactor: 0,
            generation: 1,
            slot: 9,
        };
        let call = AdminRequest::Devices {
            user: "carol".into(),
        };
        home.feed(Event::Admin {
            conn: operator,
            request: &call,
        });
        assert!(home.answers.is_empty(), "the other nodes are awaited");
        let Some(Relay::Admin { request, said, .. }) = home.relays.pop() else {
            panic!("the call goes to the other nodes: {:?}", home.relays);
        };
        assert_eq!(AdminRequest::from_node(&said), Ok(call));
        let mut theirs: AdminPart = serde_json::from_value(serde_json::json!({
            "part": "devices",
            "devices": [{"device_id": "phone", "connected_at_ms": 7, "reactor": 1, "acks": true}]
        }))
        .unwrap();
        theirs.name_node("b");
        let nodes = NodesAnswer {
            request,
            this_node: "a".into(),
            parts: vec![("b".into(), theirs)],
            known: 3,
        };
        home.feed(Event::Mail(Envelope::AdminNodes(Box::new(nodes))));
        let (to, answer) = home.answers.pop().expect("answered once every part came");
        assert_eq!(to, operator);
        assert_eq!(
            (
                &answer["scope"],
                &answer["nodes_answered"],
                &answer["nodes_known"]
            ),
            (
                &serde_json::json!("cluster"),
                &serde_json::json!(2),
                &serde_json::json!(3)
            )
        );
        let here = serde_json::json!({
            "device_id": "d1", "node_id": "a", "connected_at_ms": 1, "reactor": 0, "acks": false
        });
        let there = serde_json::json!({
            "device_id": "phone", "node_id": "b", "connected_at_ms": 7, "reactor": 1, "acks": true
        });
        assert_eq!(answer["devices"], serde_json::json!([here, there]));

        // Another node's call: this node's part goes back to it, and nothing to the
        // cluster again.
        let call = AdminRequest::Presence {
            users: vec!["carol".into(), "dan".into()],
        };
        home.feed(Event::AdminFromNode {
            call,
            reply: "_INBOX.x.a1".into(),
        });
        let Some(Relay::AdminPart { reply, part }) = home.relays.pop() else {
            panic!("this node's part goes back: {:?}", home.relays);
        };
        assert_eq!(&*reply, "_INBOX.x.a1");
        let AdminPart::Presence { users } = *part else {
            panic!("{part:?}");
        };
        let online: Vec<(&str, bool)> = users.iter().map(|u| (&*u.user_id, u.online)).collect();
        assert_eq!(online, [("carol", true), ("dan", false)]);
        assert!(home.relays.is_empty() && home.answers.is_empty());
    }
}
