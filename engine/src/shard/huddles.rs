//! Call signaling and huddles. A `signal` goes to the receiver's devices and is never
//! queued (`peer_offline` when none is online). A `huddle:*` signal is addressed to a
//! group: its home relays it to the devices present in the huddle's room. A room is the
//! connections in it, in memory only; a connection remembers its rooms (at most
//! [`HUDDLES_PER_CONN_MAX`]) and leaves them when it closes. In a cluster each node's
//! group home knows the room's devices on its node, and the signals go between the nodes
//! with a device in the room ([`crate::cluster::relay`]).

use crate::protocol::codes::ErrorCode;
use std::sync::Arc;

use super::{Effects, Shard};
use crate::{
    cluster::relay::Relay,
    protocol::{
        outbound::{self, Outgoing},
        Priority,
    },
    router::{ConnAddr, Durability, Envelope, HuddleRelayed, HuddleSignal},
};

/// Enters a huddle room.
pub const HUDDLE_JOIN: &str = "huddle:join";
/// Leaves a huddle room (also sent for a connection that closes in one).
pub const HUDDLE_LEAVE: &str = "huddle:leave";
/// Huddle rooms one connection may be in at once (each is remembered for it).
pub const HUDDLES_PER_CONN_MAX: usize = 16;

/// A `signal` as its sending device wrote it.
#[derive(Debug)]
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

impl Shard {
    /// At the sender's reactor: a call signal goes to the receiver's devices; a huddle
    /// signal to the group's home.
    pub(super) fn signal(
        &mut self,
        conn: ConnAddr,
        user: &Arc<str>,
        signal: &Signal<'_>,
        out: &mut Effects,
    ) {
        let call = (signal.call_id, signal.kind);
        outbound::signal(&mut self.json, user, call, signal.payload, self.now_ms);
        let frame = self.json.frame();
        if !signal.kind.starts_with("huddle:") {
            let mut delivery = self.delivery(signal.receiver_id, frame, Priority::High);
            delivery.durability = Durability::Call {
                sender: conn,
                reference: signal.call_id.into(),
            };
            return self.mail_delivery(delivery, out);
        }
        let room = (Box::from(signal.receiver_id), Box::from(signal.call_id));
        let chat = self.conns.entry(conn).or_default();
        let huddles = &mut chat.huddles;
        let full = signal.kind == HUDDLE_JOIN
            && !huddles.contains(&room)
            && huddles.len() >= HUDDLES_PER_CONN_MAX;
        match signal.kind {
            _ if full => {}
            HUDDLE_JOIN if !huddles.contains(&room) => huddles.push(room),
            HUDDLE_LEAVE => huddles.retain(|r| *r != room),
            _ => {}
        }
        if chat.is_empty() {
            self.conns.remove(&conn);
        }
        if full {
            let text = format!("a connection may be in at most {HUDDLES_PER_CONN_MAX} huddles");
            return out.error(conn, ErrorCode::BadRequest, text, Some(signal.call_id));
        }
        let huddle = HuddleSignal {
            group: signal.receiver_id.into(),
            room: signal.call_id.into(),
            sender: conn,
            sender_user: user.clone(),
            kind: signal.kind.into(),
            frame,
        };
        self.mail_huddle(huddle, out);
    }

    /// At the reactor of a connection that closed: it leaves its huddle rooms.
    pub(super) fn leave_huddles(
        &mut self,
        conn: ConnAddr,
        user: &Arc<str>,
        rooms: Vec<(Box<str>, Box<str>)>,
        out: &mut Effects,
    ) {
        for (group, room) in rooms {
            let call = (&*room, HUDDLE_LEAVE);
            outbound::signal(&mut self.json, user, call, b"null", self.now_ms);
            let huddle = HuddleSignal {
                frame: self.json.frame(),
                group,
                room,
                sender: conn,
                sender_user: user.clone(),
                kind: HUDDLE_LEAVE.into(),
            };
            self.mail_huddle(huddle, out);
        }
    }

    /// Mails a huddle signal to its group's home.
    fn mail_huddle(&self, huddle: HuddleSignal, out: &mut Effects) {
        out.mail(
            self.home_of(&huddle.group),
            Envelope::Huddle(Box::new(huddle)),
        );
    }

    /// A member's device enters or leaves a huddle room, or signals the others present;
    /// each device present but the sender gets the frame.
    pub(super) fn huddle(&mut self, signal: HuddleSignal, out: &mut Effects) {
        let HuddleSignal {
            group,
            room,
            sender,
            sender_user,
            kind,
            frame,
        } = signal;
        if !self.groups.is_member(&group, &sender_user) {
            let text = "only members of the group may use its huddles: send group_join first";
            return out.error(sender, ErrorCode::NotMember, text, Some(&room));
        }
        let relay = match &*kind {
            HUDDLE_JOIN => {
                let entered = self.groups.enter_room(&group, &room, sender, sender_user);
                if entered {
                    self.introduce_present(&group, &room, sender, out);
                }
                entered
            }
            HUDDLE_LEAVE => self.groups.leave_room(&group, &room, sender),
            _ => self.groups.present(&group, &room).contains(&sender),
        };
        if !relay {
            if !matches!(&*kind, HUDDLE_JOIN | HUDDLE_LEAVE) {
                let text = "join the huddle (huddle:join) before signaling in it";
                out.error(sender, ErrorCode::BadRequest, text, Some(&room));
            }
            return;
        }
        let present = self.groups.present(&group, &room);
        for &addr in &present {
            if addr != sender {
                out.frame_to(addr, frame.clone(), Priority::High, 0);
            }
        }
        if self.relays {
            self.relay_huddle((group, room), &kind, (sender, frame), present.len(), out);
        }
    }

    /// In a cluster: a huddle signal relayed here goes to the room's devices on the
    /// other nodes too (a join asks them to introduce themselves to the joiner), and this
    /// node follows the room from its first device here to its last.
    fn relay_huddle(
        &mut self,
        (group, room): (Box<str>, Box<str>),
        kind: &str,
        (sender, frame): (ConnAddr, Outgoing),
        present_here: usize,
        out: &mut Effects,
    ) {
        let home = self.id as u16;
        match kind {
            HUDDLE_JOIN if present_here == 1 => {
                let (group, room) = (group.clone(), room.clone());
                out.cluster(Relay::HuddleWatch { group, room, home });
            }
            HUDDLE_LEAVE if present_here == 0 => {
                let (group, room) = (group.clone(), room.clone());
                out.cluster(Relay::HuddleUnwatch { group, room });
            }
            _ => {}
        }
        let joiner = (kind == HUDDLE_JOIN).then_some(sender);
        out.cluster(Relay::Huddle {
            group,
            room,
            frame,
            joiner,
        });
    }

    /// In a cluster: a huddle signal from another node goes to the devices in the room
    /// here; for a join, they introduce themselves to the joiner, as on one node.
    pub(super) fn huddle_relayed(&mut self, relayed: HuddleRelayed, out: &mut Effects) {
        let HuddleRelayed {
            group,
            room,
            frame,
            introduce_to,
        } = relayed;
        let present = self.groups.present_users(&group, &room);
        for (addr, _) in &present {
            out.frame_to(*addr, frame.clone(), Priority::High, 0);
        }
        let Some(reply) = introduce_to else {
            return;
        };
        let frames = present
            .iter()
            .map(|(_, user)| {
                let call = (&*room, HUDDLE_JOIN);
                outbound::signal(&mut self.json, user, call, b"null", self.now_ms);
                self.json.frame()
            })
            .collect();
        out.cluster(Relay::HuddleIntroduce { reply, frames });
    }

    /// Tells a device that just entered a huddle room who was there already, as one
    /// `huddle:join` from each of them.
    fn introduce_present(
        &mut self,
        group: &str,
        room: &str,
        newcomer: ConnAddr,
        out: &mut Effects,
    ) {
        for (addr, user) in self.groups.present_users(group, room) {
            if addr == newcomer {
                continue;
            }
            let call = (room, HUDDLE_JOIN);
            outbound::signal(&mut self.json, &user, call, b"null", self.now_ms);
            out.frame_to(newcomer, self.json.frame(), Priority::High, 0);
        }
    }
}
