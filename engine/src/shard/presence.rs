//! Presence subscriptions. A connection's `presence_subscribe` goes to the home of each
//! user it names; each home answers with the users' state and keeps the connection as a
//! watcher, so it hears every change after (see `super::session`); the connection's
//! reactor gathers the answers into one `presence_state`.
//!
//! In a cluster a user is online while any node holds the user. A home asks the relay to
//! watch the other nodes for a user's first watcher here, and answers that watcher's
//! subscribe once the relay has said what they hold ([`Elsewhere`]); after that it tells
//! the watchers each change of the whole, from here or from elsewhere.

use std::sync::Arc;

use super::{directory::Elsewhere, Effects, Shard};
use crate::protocol::codes::ErrorCode;
use crate::{
    cluster::relay::Relay,
    protocol::{outbound, outbound::PresenceEntry, Priority},
    router::{ConnAddr, Envelope, PresenceNote},
};

/// A subscribe whose answer waits for the relay to say what other nodes hold of some of
/// its users.
#[derive(Debug)]
pub(super) struct WaitingSubscribe {
    watcher: ConnAddr,
    request: u32,
    users: Vec<Box<str>>,
}

/// The most users one connection may watch; more is refused with `bad_request`.
pub const SUBSCRIPTIONS_PER_CONN_MAX: usize = 1024;

impl Shard {
    /// At the watcher's reactor: subscribes `conn` to these users at their homes.
    pub(super) fn presence_subscribe(
        &mut self,
        conn: ConnAddr,
        watcher: &str,
        mut user_ids: Vec<&str>,
        out: &mut Effects,
    ) {
        user_ids.sort_unstable();
        user_ids.dedup();
        // `--presence-visibility shared`: a user the watcher may not see is shown offline,
        // as one never seen, and is not watched (nothing tells hidden from offline).
        let visible = self.user_groups.visible(watcher, &user_ids);
        let hidden: Vec<PresenceEntry> = user_ids
            .iter()
            .filter(|user| !visible.contains(user))
            .map(|user| PresenceEntry {
                user_id: (*user).into(),
                online: false,
                last_seen_ms: None,
            })
            .collect();
        let user_ids = visible;
        let chat = self.conns.entry(conn).or_default();
        let subscriptions = &mut chat.subscriptions;
        let new: Vec<Box<str>> = user_ids
            .iter()
            .filter(|u| !subscriptions.iter().any(|s| &**s == **u))
            .map(|u| (*u).into())
            .collect();
        let refused = subscriptions.len() + new.len() > SUBSCRIPTIONS_PER_CONN_MAX;
        if !refused {
            subscriptions.extend(new);
            if !subscriptions.is_empty() {
                chat.watcher.get_or_insert_with(|| watcher.into());
            }
        }
        if chat.is_empty() {
            self.conns.remove(&conn);
        }
        if refused {
            let text = format!("a connection may watch at most {SUBSCRIPTIONS_PER_CONN_MAX} users");
            return out.error(conn, ErrorCode::BadRequest, text, None);
        }
        let users: Vec<Box<str>> = user_ids.iter().map(|u| (*u).into()).collect();
        let by_home = self.split_by_home(users);
        if by_home.is_empty() {
            return self.presence_state(conn, &hidden, out);
        }
        let mut entries = Vec::with_capacity(user_ids.len() + hidden.len());
        entries.extend(hidden);
        let request = self.presence_requests.start(conn, by_home.len(), entries);
        for (home, users) in by_home {
            let subscribe = Envelope::Subscribe {
                watcher: conn,
                request,
                users,
            };
            out.mail(home, subscribe);
        }
    }

    /// At the watcher's reactor: `conn` stops watching these users.
    pub(super) fn presence_unsubscribe(
        &mut self,
        conn: ConnAddr,
        user_ids: &[&str],
        out: &mut Effects,
    ) {
        let Some(chat) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut dropped = Vec::new();
        chat.subscriptions.retain(|u| {
            let drop = user_ids.contains(&&**u);
            if drop {
                dropped.push(u.clone());
            }
            !drop
        });
        if chat.is_empty() {
            self.conns.remove(&conn);
        }
        self.unsubscribe_all(conn, dropped, out);
    }

    /// At the watcher's reactor: tells each home of `users` that `conn` stops watching.
    pub(super) fn unsubscribe_all(&self, conn: ConnAddr, users: Vec<Box<str>>, out: &mut Effects) {
        for (home, users) in self.split_by_home(users) {
            out.mail(
                home,
                Envelope::Unsubscribe {
                    watcher: conn,
                    users,
                },
            );
        }
    }

    /// At a home: `watcher` subscribes to these users homed here; the answer goes back
    /// to its reactor (in a cluster, once the other nodes' part is known).
    pub(super) fn subscribe(
        &mut self,
        watcher: ConnAddr,
        request: u32,
        users: Vec<Box<str>>,
        out: &mut Effects,
    ) {
        let mut unknown = false;
        for user in &users {
            let watching = self.directory.subscribe(user, watcher);
            if watching.first && self.relays {
                self.directory.set_elsewhere(user, Elsewhere::Unknown, 0);
                let home = self.id as u16;
                let user = Arc::from(&**user);
                out.cluster(Relay::WatchPresence { user, home });
                unknown = true;
            }
            unknown |= watching.elsewhere == Elsewhere::Unknown;
        }
        if unknown {
            let waiting = WaitingSubscribe {
                watcher,
                request,
                users,
            };
            return self.presence_waits.push(waiting);
        }
        self.answer_subscribe(watcher, request, &users, out);
    }

    /// At a home: the users' presence, as one home's part of a `presence_state`. In
    /// its grace a user is still shown online, and so is a user another node holds.
    fn answer_subscribe(
        &mut self,
        watcher: ConnAddr,
        request: u32,
        users: &[Box<str>],
        out: &mut Effects,
    ) {
        let entries = users.iter().map(|user| self.presence_here(user)).collect();
        let reply = Envelope::PresenceReply { request, entries };
        out.mail(watcher.reactor as usize, reply);
    }

    /// A user homed here as a watcher sees them: online with a device here, in its grace,
    /// or (in a cluster) held by another node this home knows of.
    pub(super) fn presence_here(&self, user: &str) -> PresenceEntry {
        let watching = self.directory.watching(user);
        let online = watching.online_here
            || self.away.contains(user)
            || watching.elsewhere == Elsewhere::Online;
        PresenceEntry {
            user_id: user.to_string(),
            online,
            last_seen_ms: watching.last_seen_ms.filter(|_| !online),
        }
    }

    /// At a home: the relay says whether other nodes hold `user` (watched here) since
    /// `at_ms`. The watchers hear it if it changes the whole; subscribes that waited for
    /// it are answered.
    pub(super) fn remote_presence(
        &mut self,
        user: &str,
        online: bool,
        at_ms: u64,
        out: &mut Effects,
    ) {
        let Some(before) = self.directory.elsewhere(user) else {
            return; // nobody here watches the user any more
        };
        let now = if online {
            Elsewhere::Online
        } else {
            Elsewhere::Offline
        };
        self.directory.set_elsewhere(user, now, at_ms);
        let here = !self.directory.devices(user).is_empty() || self.away.contains(user);
        if before == Elsewhere::Unknown {
            return self.answer_waiting_subscribes(out);
        }
        if before != now && !here {
            self.tell_watchers(user, online, at_ms, out);
        }
    }

    /// Answers the subscribes whose users' other nodes are all known now.
    fn answer_waiting_subscribes(&mut self, out: &mut Effects) {
        let mut waits = std::mem::take(&mut self.presence_waits);
        waits.retain(|waiting| {
            let unknown = waiting
                .users
                .iter()
                .any(|u| self.directory.elsewhere(u) == Some(Elsewhere::Unknown));
            if !unknown {
                self.answer_subscribe(waiting.watcher, waiting.request, &waiting.users, out);
            }
            unknown
        });
        self.presence_waits = waits;
    }

    /// At a home: `watcher` stops watching these users; in a cluster the relay stops
    /// watching the other nodes for a user nobody here watches any more.
    pub(super) fn unsubscribe(
        &mut self,
        watcher: ConnAddr,
        users: Vec<Box<str>>,
        out: &mut Effects,
    ) {
        for user in users {
            if self.directory.unsubscribe(&user, watcher) && self.relays {
                let user = Arc::from(user);
                out.cluster(Relay::UnwatchPresence { user });
            }
        }
        self.answer_waiting_subscribes(out);
    }

    /// At the watcher's reactor: a watched user's presence changed. A watcher that no
    /// longer shares a group with the user (`--presence-visibility shared`) is told the
    /// user is offline, as one never seen, and stops watching: as a subscribe now would.
    pub(super) fn presence_changed(
        &mut self,
        watcher: ConnAddr,
        note: &PresenceNote,
        out: &mut Effects,
    ) {
        let who = self.conns.get(&watcher).and_then(|c| c.watcher.as_deref());
        if who.is_some_and(|who| !self.user_groups.sees(who, &note.user)) {
            self.presence_unsubscribe(watcher, &[&note.user], out);
            let hidden = PresenceEntry {
                user_id: note.user.to_string(),
                online: false,
                last_seen_ms: None,
            };
            return self.presence_state(watcher, &[hidden], out);
        }
        let last_seen_ms = (!note.online).then_some(note.at_ms);
        let fresh = PresenceEntry {
            user_id: note.user.to_string(),
            online: note.online,
            last_seen_ms,
        };
        self.refresh_pending(watcher, std::slice::from_ref(&fresh));
        out.frame_to(watcher, note.frame.clone(), Priority::Normal, 0);
    }

    /// Whatever a watcher's reactor hears of a user's presence is the newest there is
    /// (one home speaks for a user, through one FIFO ring), so it replaces what every
    /// `presence_state` still gathering for the watcher holds of that user: a state
    /// written after an update, or after a newer state, is never older than they are.
    fn refresh_pending(&mut self, watcher: ConnAddr, fresh: &[PresenceEntry]) {
        for pending in self.presence_requests.waiting_mut() {
            if pending.requester != watcher {
                continue;
            }
            for entry in pending.so_far.iter_mut() {
                if let Some(newer) = fresh.iter().find(|f| f.user_id == entry.user_id) {
                    entry.online = newer.online;
                    entry.last_seen_ms = newer.last_seen_ms;
                }
            }
        }
    }

    /// At the watcher's reactor: one home's answer; the last one is written.
    pub(super) fn presence_reply(
        &mut self,
        request: u32,
        entries: Vec<PresenceEntry>,
        out: &mut Effects,
    ) {
        let Some(watcher) = self.presence_requests.get(request).map(|g| g.requester) else {
            return;
        };
        self.refresh_pending(watcher, &entries);
        let done = self
            .presence_requests
            .answer(request, |so_far| so_far.extend(entries));
        if let Some(done) = done {
            self.presence_state(done.requester, &done.so_far, out);
        }
    }

    fn presence_state(&mut self, watcher: ConnAddr, entries: &[PresenceEntry], out: &mut Effects) {
        outbound::presence_state(&mut self.json, entries);
        let frame = self.json.frame();
        out.frame_to(watcher, frame, Priority::Normal, 0);
    }
}
