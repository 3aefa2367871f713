//! Devices registering with their user's home and leaving it, and the presence updates
//! that follow: a user's first device online and last device gone are announced to the
//! user's watchers.

use std::sync::Arc;

use super::{Effects, Shard};
use crate::{
    protocol::{outbound, Priority},
    router::{ConnAddr, Envelope},
    ws::{close, frame},
};

impl Shard {
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
            out.mail(to, Envelope::Registered { addr, device });
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
        json.clear();
        outbound::presence_update(json, user, online, self.now_ms);
        let frame = frame::encode_text(json);
        for &addr in watchers {
            out.frame_to(addr, frame.clone(), Priority::Normal, 0);
        }
    }
}
