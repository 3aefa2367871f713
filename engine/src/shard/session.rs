//! A device's session: it registers with its user's home once authenticated, hears
//! `auth_success` once the home has it, and leaves when its connection closes. A user's
//! first device online and last device gone are announced to the user's watchers.

use std::sync::Arc;

use super::{Effects, Shard};
use crate::{
    protocol::{inbound::Scalar, outbound, Priority},
    router::{ConnAddr, Envelope, PresenceNote},
    store::Command,
    ws::close,
};

impl Shard {
    /// At the device's reactor: the device registers with its user's home.
    /// `auth_success` waits for the home's answer ([`Shard::registered`]), so a client
    /// told it is online is already reachable.
    pub(super) fn authenticated(
        &mut self,
        conn: ConnAddr,
        user: Arc<str>,
        device: &str,
        out: &mut Effects,
    ) {
        let home = self.home_of(&user);
        let device = device.into();
        out.mail(
            home,
            Envelope::Register {
                user,
                device,
                addr: conn,
            },
        );
    }

    /// At the device's reactor: the home has the device. `auth_success`, then the user's
    /// offline queue (PROTOCOL.md: after `auth_success`).
    pub(super) fn registered(
        &mut self,
        conn: ConnAddr,
        user: &str,
        device: &str,
        out: &mut Effects,
    ) {
        outbound::auth_success(&mut self.json, user, device, self.now_ms);
        out.frame_to(conn, self.json.frame(), Priority::High, 0);
        out.store(Command::Drain {
            user: user.into(),
            device: conn.into(),
        });
    }

    /// At the device's reactor: the connection closed. It leaves its home's directory,
    /// its huddles and the presence of the users it watched.
    pub(super) fn closed(&mut self, conn: ConnAddr, user: Arc<str>, out: &mut Effects) {
        let chat = self.conns.remove(&conn).unwrap_or_default();
        self.leave_huddles(conn, &user, chat.huddles, out);
        let home = self.home_of(&user);
        out.mail(home, Envelope::Unregister { user, addr: conn });
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
        device: Box<str>,
        addr: ConnAddr,
        out: &mut Effects,
    ) {
        let outcome = self.directory.register(user.clone(), device.clone(), addr);
        let to = addr.reactor as usize;
        if outcome.refused {
            let code = close::POLICY_VIOLATION;
            out.mail(to, Envelope::Close { addr, code });
        } else {
            out.mail(
                to,
                Envelope::Registered {
                    addr,
                    user: user.clone(),
                    device,
                },
            );
        }
        if let Some(old) = outcome.replaced {
            let code = close::REPLACED;
            out.mail(old.reactor as usize, Envelope::Close { addr: old, code });
        }
        if outcome.came_online {
            self.announce_presence(&user, true, out);
        }
    }

    /// A device's connection closed; the user's last device takes the user offline.
    pub(super) fn unregister(&mut self, user: &str, addr: ConnAddr, out: &mut Effects) {
        if self.directory.unregister(user, addr, self.now_ms) {
            self.announce_presence(user, false, out);
        }
    }

    /// Tells `user`'s watchers that the user came online or went offline.
    fn announce_presence(&mut self, user: &str, online: bool, out: &mut Effects) {
        let Shard {
            directory, json, ..
        } = self;
        let watchers = directory.watchers(user);
        if watchers.is_empty() {
            return;
        }
        outbound::presence_update(json, user, online, self.now_ms);
        let note = Arc::new(PresenceNote {
            user: user.into(),
            online,
            at_ms: self.now_ms,
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
