//! Subscriptions to a user's presence, kept at the user's home: a subscriber gets the
//! current state at once and every change after it (see [`super::session`]).

use super::{Effects, Shard};
use crate::{protocol::outbound::PresenceEntry, router::ConnAddr, router::Envelope};

impl Shard {
    /// `watcher` subscribes to these users homed here; the answer goes back to its
    /// reactor, which gathers one from each home before it writes `presence_state`.
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
                PresenceEntry {
                    user_id: user.into(),
                    online,
                    last_seen_ms,
                }
            })
            .collect();
        let reply = Envelope::PresenceReply { request, entries };
        out.mail(watcher.reactor as usize, reply);
    }

    /// `watcher` stops watching these users.
    pub(super) fn unsubscribe(&mut self, watcher: ConnAddr, users: Vec<Box<str>>) {
        for user in users {
            self.directory.unsubscribe(&user, watcher);
        }
    }
}
