//! A device's session: it registers with its user's home once authenticated, reads its
//! inbox once the home has it (the first page brings `auth_success`; see [`super::inbox`]),
//! and leaves when its connection closes. A user's first device online and last device
//! gone are announced to the user's watchers, and in a cluster to the other nodes.

use std::sync::Arc;

use super::{directory::Elsewhere, Effects, Shard};
use crate::{
    cluster::relay::Relay,
    events::Hook,
    protocol::{inbound::Scalar, outbound, Priority},
    router::{ConnAddr, Envelope, PresenceNote},
    ws::close,
};

impl Shard {
    /// At the device's reactor: the device registers with its user's home.
    /// `auth_success` waits for the home's answer and the inbox's first page, so a client
    /// told it is online is already reachable.
    pub(super) fn authenticated(
        &mut self,
        conn: ConnAddr,
        user: Arc<str>,
        (device, acks): (&str, bool),
        out: &mut Effects,
    ) {
        let home = self.home_of(&user);
        let register = Envelope::Register {
            user,
            device: device.into(),
            addr: conn,
            acks,
        };
        out.mail(home, register);
    }

    /// At the device's reactor: the connection closed. It leaves its home's directory,
    /// its huddles and the presence of the users it watched.
    pub(super) fn closed(
        &mut self,
        conn: ConnAddr,
        user: Arc<str>,
        (clean, code): (bool, u16),
        out: &mut Effects,
    ) {
        let chat = self.conns.remove(&conn).unwrap_or_default();
        self.leave_huddles(conn, &user, chat.huddles, out);
        let home = self.home_of(&user);
        let unregister = Envelope::Unregister {
            user,
            addr: conn,
            clean,
            code,
        };
        out.mail(home, unregister);
        self.unsubscribe_all(conn, chat.subscriptions, out);
    }

    /// `ping {ts}` → `pong {ts}`.
    pub(super) fn ping(&mut self, conn: ConnAddr, ts: Option<Scalar<'_>>, out: &mut Effects) {
        outbound::pong(&mut self.json, ts, self.now_ms);
        out.frame_to(conn, self.json.frame(), Priority::High, 0);
    }

    /// A device authenticated: it joins the directory (replacing an older connection with
    /// the same device id, which is closed with 4003) and is told so, or is refused when
    /// the user has too many devices.
    pub(super) fn register(
        &mut self,
        user: Arc<str>,
        (device, acks): (Box<str>, bool),
        addr: ConnAddr,
        out: &mut Effects,
    ) {
        let outcome = self
            .directory
            .register(user.clone(), device, (addr, acks), self.now_ms);
        self.sender_quota.reset(&user);
        if outcome.came_online && self.relays {
            let home = self.id as u16;
            let watch = Relay::Watch {
                user: user.clone(),
                home,
            };
            out.cluster(watch);
        }
        let to = addr.reactor as usize;
        if outcome.refused {
            let (code, reason) = (close::POLICY_VIOLATION, "too many devices");
            out.mail(to, Envelope::Close { addr, code, reason });
        } else {
            self.admit_device(&user, addr, out);
        }
        if let Some(old) = outcome.replaced {
            let (code, reason) = (close::REPLACED, "replaced");
            // Reported now: the old connection's own close finds its device taken.
            self.report_close(&user, addr, code, out);
            let close = Envelope::Close {
                addr: old,
                code,
                reason,
            };
            out.mail(old.reactor as usize, close);
        }
        // A user back within its grace was never shown offline.
        if outcome.came_online && !self.away.back(&user) {
            self.announce_presence(&user, true, out);
        }
    }

    /// With the events webhook: the connection of `user`'s device now at `addr` closed
    /// with `code` (found in the directory, so each close is reported once).
    fn report_close(&self, user: &Arc<str>, addr: ConnAddr, code: u16, out: &mut Effects) {
        if !self.hooks {
            return;
        }
        let devices = self.directory.devices(user);
        if let Some(device) = devices.iter().find(|d| d.addr == addr) {
            let (user, device) = (user.clone(), device.id.clone());
            out.hook(Hook::ConnectionClosed { user, device, code });
        }
    }

    /// A device's connection closed; the user's last device takes the user offline: at
    /// once after a close frame, else once the presence grace has passed with no device
    /// back ([`Shard::graces_ended`]).
    pub(super) fn unregister(
        &mut self,
        user: Arc<str>,
        addr: ConnAddr,
        (clean, code): (bool, u16),
        out: &mut Effects,
    ) {
        self.report_close(&user, addr, code, out);
        if !self.directory.unregister(&user, addr, self.now_ms) {
            return;
        }
        if clean || self.presence_grace_ms == 0 {
            self.went_offline(user, out);
        } else {
            if self.relays {
                out.cluster(Relay::Away { user: user.clone() });
            }
            self.away.start(user, self.now_ms, self.presence_grace_ms);
        }
    }

    /// Users whose grace ended with no device back are shown offline now.
    pub(super) fn graces_ended(&mut self, out: &mut Effects) {
        for user in self.away.ended(self.now_ms) {
            if self.directory.devices(&user).is_empty() {
                self.went_offline(user, out);
            }
        }
    }

    /// `user` is offline on this node: the cluster's other nodes hear it, and the
    /// watchers here see it unless another node still holds the user.
    fn went_offline(&mut self, user: Arc<str>, out: &mut Effects) {
        if self.relays {
            let at_ms = self.now_ms;
            out.cluster(Relay::Unwatch {
                user: user.clone(),
                at_ms,
            });
        }
        self.announce_presence(&user, false, out);
    }

    /// Tells `user`'s watchers that the user came online or went offline on this node,
    /// unless another node of the cluster holds the user (then nothing changed for them).
    fn announce_presence(&mut self, user: &str, online: bool, out: &mut Effects) {
        if self.directory.elsewhere(user) == Some(Elsewhere::Online) {
            return;
        }
        // In a cluster the relay reports them, as the cluster's (`cluster::presence_events`).
        if self.hooks && !self.relays {
            let user = Arc::from(user);
            out.hook(match online {
                true => Hook::UserOnline { user },
                false => Hook::UserOffline { user },
            });
        }
        self.tell_watchers(user, online, self.now_ms, out);
    }

    /// Tells `user`'s watchers that the user came online or went offline at `at_ms`.
    pub(super) fn tell_watchers(
        &mut self,
        user: &str,
        online: bool,
        at_ms: u64,
        out: &mut Effects,
    ) {
        let Shard {
            directory, json, ..
        } = self;
        let watchers = directory.watchers(user);
        if watchers.is_empty() {
            return;
        }
        outbound::presence_update(json, user, online, at_ms);
        let note = Arc::new(PresenceNote {
            user: user.into(),
            online,
            at_ms,
            frame: json.frame(),
        });
        for &watcher in watchers {
            let note = note.clone();
            out.mail(
                watcher.reactor as usize,
                Envelope::Presence { watcher, note },
            );
        }
    }
}
