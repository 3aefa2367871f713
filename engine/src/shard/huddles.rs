//! Huddles at their group's home: `huddle:*` signals addressed to a group, relayed to the
//! devices present in the huddle's room. A room is the connections in it, in memory only.

use super::{Effects, Shard};
use crate::{
    protocol::{outbound, Priority},
    router::{ConnAddr, HuddleSignal},
    ws::frame,
};

/// Enters a huddle room.
pub const HUDDLE_JOIN: &str = "huddle:join";
/// Leaves a huddle room (also sent for a connection that closes in one).
pub const HUDDLE_LEAVE: &str = "huddle:leave";

impl Shard {
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
            return out.error(sender, "not_member", text, Some(&room));
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
                out.error(sender, "bad_request", text, Some(&room));
            }
            return;
        }
        for addr in self.groups.present(&group, &room) {
            if addr != sender {
                out.frame_to(addr, frame.clone(), Priority::High, 0);
            }
        }
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
            self.json.clear();
            let call = (room, HUDDLE_JOIN);
            outbound::signal(&mut self.json, &user, call, b"null", self.now_ms);
            out.frame_to(newcomer, frame::encode_text(&self.json), Priority::High, 0);
        }
    }
}
