//! Presence subscriptions. A connection's `presence_subscribe` goes to the home of each
//! user it names; each home answers with the users' state and keeps the connection as a
//! watcher, so it hears every change after (see `super::session`); the connection's
//! reactor gathers the answers into one `presence_state`.

use super::{Effects, Shard};
use crate::protocol::codes::ErrorCode;
use crate::{
    protocol::{outbound, outbound::PresenceEntry, Priority},
    router::{ConnAddr, Envelope, PresenceNote},
};

/// The most users one connection may watch; more is refused with `bad_request`.
pub const SUBSCRIPTIONS_PER_CONN_MAX: usize = 1024;

impl Shard {
    /// At the watcher's reactor: subscribes `conn` to these users at their homes.
    pub(super) fn presence_subscribe(
        &mut self,
        conn: ConnAddr,
        mut user_ids: Vec<&str>,
        out: &mut Effects,
    ) {
        user_ids.sort_unstable();
        user_ids.dedup();
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
            return self.presence_state(conn, &[], out);
        }
        let entries = Vec::with_capacity(user_ids.len());
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
    /// to its reactor.
    pub(super) fn subscribe(
        &mut self,
        watcher: ConnAddr,
        request: u32,
        users: Vec<Box<str>>,
        out: &mut Effects,
    ) {
        let entries = users
            .into_iter()
            .map(|user| {
                let (online, last_seen_ms) = self.directory.subscribe(&user, watcher);
                // In its grace a user is still shown online.
                let away = self.away.contains(&user);
                PresenceEntry {
                    user_id: user.into(),
                    online: online || away,
                    last_seen_ms: last_seen_ms.filter(|_| !away),
                }
            })
            .collect();
        let reply = Envelope::PresenceReply { request, entries };
        out.mail(watcher.reactor as usize, reply);
    }

    /// At a home: `watcher` stops watching these users.
    pub(super) fn unsubscribe(&mut self, watcher: ConnAddr, users: Vec<Box<str>>) {
        for user in users {
            self.directory.unsubscribe(&user, watcher);
        }
    }

    /// At the watcher's reactor: a watched user's presence changed.
    pub(super) fn presence_changed(
        &mut self,
        watcher: ConnAddr,
        note: &PresenceNote,
        out: &mut Effects,
    ) {
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
