//! Call signaling: `signal` frames relayed to the receiver's devices and never queued
//! (`peer_offline` when none is online), and huddles: `huddle:*` signals addressed to a
//! group, relayed by the group's home to the devices present in the huddle's room.

use std::sync::Arc;

use super::core::Reactor;
use crate::{
    protocol::{now_ms, outbound, Priority},
    router::{ConnAddr, Envelope, HuddleSignal, WhenOffline},
    ws::frame,
};

use crate::shard::huddles::{HUDDLE_JOIN, HUDDLE_LEAVE};
/// Huddle rooms one connection may be in at once (each is remembered on the connection).
pub(crate) const HUDDLES_PER_CONN_MAX: usize = 16;

/// A `signal` as its sending device saw it.
pub(super) struct Signal<'a> {
    /// The receiving user (a group for `huddle:*`).
    pub receiver_id: &'a str,
    /// The call or huddle room.
    pub call_id: &'a str,
    /// The kind.
    pub kind: &'a str,
    /// The payload, JSON text.
    pub payload: &'a [u8],
}

impl Reactor {
    /// At the device's reactor: a call signal goes to the receiver's devices; a huddle
    /// signal to the group's home.
    pub(super) fn signal(&mut self, sender: ConnAddr, user: Arc<str>, signal: &Signal<'_>) {
        self.json.clear();
        let call = (signal.call_id, signal.kind);
        outbound::signal(&mut self.json, &user, call, signal.payload, now_ms());
        let frame = frame::encode_text(&self.json);
        if !signal.kind.starts_with("huddle:") {
            let offline = WhenOffline::Refuse {
                sender,
                reference: signal.call_id.into(),
            };
            return self.deliver_or(signal.receiver_id, frame, Priority::High, offline);
        }
        let room = (Box::from(signal.receiver_id), Box::from(signal.call_id));
        let (slot, generation) = (sender.slot as usize, sender.generation);
        let Some(conn) = self.conn_mut(slot, generation) else {
            return;
        };
        let huddles = &mut conn.aux_mut().huddles;
        let full = signal.kind == HUDDLE_JOIN
            && !huddles.contains(&room)
            && huddles.len() >= HUDDLES_PER_CONN_MAX;
        match signal.kind {
            _ if full => {}
            HUDDLE_JOIN if !huddles.contains(&room) => huddles.push(room),
            HUDDLE_LEAVE => huddles.retain(|r| *r != room),
            _ => {}
        }
        conn.trim_aux();
        if full {
            let text = format!("a connection may be in at most {HUDDLES_PER_CONN_MAX} huddles");
            return self.send_error(slot, generation, "bad_request", &text, Some(signal.call_id));
        }
        let huddle = HuddleSignal {
            group: signal.receiver_id.into(),
            room: signal.call_id.into(),
            sender,
            sender_user: user,
            kind: signal.kind.into(),
            frame,
        };
        let home = self.home_of(signal.receiver_id);
        self.route(home, Envelope::Huddle(Box::new(huddle)));
    }

    /// At the device's reactor, for a connection that closes: leaves its huddles.
    pub(super) fn leave_huddles(
        &mut self,
        addr: ConnAddr,
        user: &Arc<str>,
        rooms: Vec<(Box<str>, Box<str>)>,
    ) {
        for (group, room) in rooms {
            let signal = Signal {
                receiver_id: &group,
                call_id: &room,
                kind: HUDDLE_LEAVE,
                payload: b"null",
            };
            self.signal(addr, user.clone(), &signal);
        }
    }
}
