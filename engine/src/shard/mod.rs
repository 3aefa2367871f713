//! The chat state a reactor is home for, as a state machine that never touches a socket.
//!
//! Every user and group has a home reactor ([`crate::router::home_of`]); the home's
//! [`Shard`] owns what the home knows: the users' online devices and presence watchers
//! ([`directory`]), the window of recently routed message ids ([`dedup`]), the groups'
//! members and huddle rooms ([`groups_state`]) and the group posts waiting for their
//! member homes. It is driven by [`Shard::handle`]: an [`Event`] in (an envelope for the
//! home, a store answer, a store command that could not be sent), [`Effect`]s out
//! (envelopes to mail, store commands, errors for a connection). There is no socket,
//! ring, clock or thread inside: the time comes with each event, so the same code runs in
//! a reactor and in the deterministic simulator (`engine/tests/simulator/`).
//!
//! One file per feature:
//! - [`session`]: devices registering and unregistering, and the presence they announce.
//! - [`presence`]: subscriptions to a user's presence.
//! - [`direct`]: direct messages, receipts and signals: dedup, online delivery, offline
//!   queueing.
//! - [`groups`]: joins and leaves, posts fanned out per member home.
//! - [`huddles`]: a group's call rooms.
//! - [`broadcast`]: HTTP API broadcasts, each home's share.

mod broadcast;
pub mod dedup;
mod direct;
pub mod directory;
mod groups;
pub mod groups_state;
pub mod huddles;
mod presence;
mod session;

use std::{borrow::Cow, collections::VecDeque, sync::Arc};

use bytes::Bytes;
use slab::Slab;

use crate::{
    protocol::Priority,
    router::{home_of, ConnAddr, Envelope},
    store::{Command, Reply},
};
use dedup::RecentMessages;
use directory::Directory;
use groups_state::{GroupQuota, Groups};

/// What a shard is handed.
#[derive(Debug)]
pub enum Event {
    /// An envelope for the home (see [`Envelope::is_for_home`]), from a peer or itself.
    Mail(Envelope),
    /// A store answer for the home ([`Reply::is_for_home`]).
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
    /// Send `error {code, message, ref}` to a connection on any reactor.
    Error {
        /// The connection.
        to: ConnAddr,
        /// The protocol's error code.
        code: &'static str,
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
    /// The oldest effect not yet carried out.
    pub fn pop(&mut self) -> Option<Effect> {
        self.queue.pop_front()
    }

    /// Whether every effect has been carried out.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn mail(&mut self, to: usize, envelope: Envelope) {
        self.queue.push_back(Effect::Mail { to, envelope });
    }

    /// Mails `frame` to the connection at `addr`.
    fn frame_to(&mut self, addr: ConnAddr, frame: Bytes, priority: Priority, accepted_ns: u64) {
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

    fn error(
        &mut self,
        to: ConnAddr,
        code: &'static str,
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

/// A group post fanned out from this home, waiting for its member homes (acknowledged
/// once every copy for an offline member is committed).
#[derive(Debug)]
struct PendingPost {
    /// The sending connection, acknowledged when every member home is done.
    sender: ConnAddr,
    /// Its message id.
    message_id: Box<str>,
    /// Member homes that have not reported.
    awaiting: usize,
    /// Some offline member's copy could not be stored.
    failed: bool,
}

/// The chat state one reactor is home for.
#[derive(Debug)]
pub struct Shard {
    /// The reactor this shard is (its index among the homes).
    id: usize,
    /// How many homes there are (for `home_of`).
    homes: usize,
    /// The time of the event being handled (Unix ms), as the driver read it.
    now_ms: u64,
    /// Users homed here: online devices and presence watchers.
    directory: Directory,
    /// Messages this home recently delivered or queued, so retries are not repeated.
    recent: RecentMessages,
    /// Groups homed here: members and huddle rooms.
    groups: Groups,
    /// Group posts fanned out from here, waiting for their member homes.
    posts: Slab<PendingPost>,
    /// Groups per user across every home (`--groups-per-user-max`).
    group_quota: Arc<GroupQuota>,
    /// Reusable buffer for outbound JSON.
    json: Vec<u8>,
}

impl Shard {
    /// The shard of home `id` of `homes`, with the groups the store holds for it.
    pub fn new(id: usize, homes: usize, groups: Groups, group_quota: Arc<GroupQuota>) -> Shard {
        assert!(id < homes, "home {id} of {homes}");
        Shard {
            id,
            homes,
            now_ms: 0,
            directory: Directory::default(),
            recent: RecentMessages::default(),
            groups,
            posts: Slab::new(),
            group_quota,
            json: Vec::with_capacity(1024),
        }
    }

    /// Users homed here with at least one device online.
    pub fn online_users(&self) -> usize {
        self.directory.online_users()
    }

    /// Handles one event at `now_ms` (Unix ms); its effects are appended to `out`.
    pub fn handle(&mut self, now_ms: u64, event: Event, out: &mut Effects) {
        self.now_ms = now_ms;
        match event {
            Event::Mail(envelope) => self.on_mail(envelope, out),
            Event::StoreReply(reply) => self.on_store_reply(reply, out),
            Event::StoreRefused(command) => self.on_store_refused(command, out),
        }
    }

    fn on_mail(&mut self, envelope: Envelope, out: &mut Effects) {
        match envelope {
            Envelope::Register { user, device, addr } => self.register(user, device, addr, out),
            Envelope::Unregister { user, addr } => self.unregister(&user, addr, out),
            Envelope::Deliver(delivery) => self.deliver(*delivery, out),
            Envelope::Subscribe {
                watcher,
                request,
                users,
            } => self.subscribe(watcher, request, users, out),
            Envelope::Unsubscribe { watcher, users } => self.unsubscribe(watcher, users),
            Envelope::Broadcast(order) => self.broadcast(*order, out),
            Envelope::GroupJoin(change) => self.group_join(*change, out),
            Envelope::GroupPost(post) => self.group_post(*post, out),
            Envelope::GroupDeliver(delivery) => self.group_deliver(*delivery, out),
            Envelope::GroupShareDone { post, failed } => self.group_share_done(post, failed, out),
            Envelope::Huddle(signal) => self.huddle(*signal, out),
            other => debug_assert!(false, "not for a home: {other:?}"),
        }
    }

    fn on_store_reply(&mut self, reply: Reply, out: &mut Effects) {
        match reply {
            Reply::NotKept { ticket } => self.recent.forget(dedup::PairKey::from_ticket(ticket)),
            Reply::Membership {
                group,
                user,
                joined,
                device,
                committed,
            } => self.membership_stored(&group, &user, joined, device, committed, out),
            Reply::FanOutQueued {
                purpose: crate::store::FanOut::GroupPost,
                request,
                failed,
                ..
            } => self.group_share_done(request, failed, out),
            other => debug_assert!(false, "not for a home: {other:?}"),
        }
    }

    fn on_store_refused(&mut self, command: Command, out: &mut Effects) {
        match command {
            Command::Enqueue(enqueue) => self.enqueue_refused(*enqueue, out),
            Command::EnqueueFanOut(batch) => match batch.purpose {
                crate::store::FanOut::GroupPost => {
                    let done = Envelope::GroupShareDone {
                        post: batch.request,
                        failed: true,
                    };
                    out.mail(batch.reply_to, done);
                }
                crate::store::FanOut::Broadcast => self.broadcast_refused(*batch, out),
            },
            Command::Membership {
                group,
                user,
                joined,
                device,
                ..
            } => self.membership_stored(&group, &user, joined, device, false, out),
            // History is best effort once the message is delivered.
            _ => {}
        }
    }

    /// The home of `user` (or of a group).
    fn home_of(&self, user: &str) -> usize {
        home_of(user, self.homes)
    }

    /// `users` by home, homes without users left out.
    fn split_by_home<U: AsRef<str>>(&self, users: Vec<U>) -> Vec<(usize, Vec<U>)> {
        let mut by_home: Vec<Vec<U>> = (0..self.homes).map(|_| Vec::new()).collect();
        for user in users {
            by_home[self.home_of(user.as_ref())].push(user);
        }
        by_home
            .into_iter()
            .enumerate()
            .filter(|(_, users)| !users.is_empty())
            .collect()
    }
}
