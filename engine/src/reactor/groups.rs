//! Groups: a member's device asks the group's home reactor to join, leave or post; the
//! home keeps the members (persisted through the store) and fans a post out through each
//! member's home, like a direct message: every online device of every member but the
//! sending device gets the one encoded frame, and members with no device online get it
//! queued.

use std::sync::Arc;

use super::core::Reactor;
use crate::{
    protocol::{
        now_ms,
        outbound::{self, NewMessage},
        Priority,
    },
    router::{ConnAddr, Envelope, GroupJoin, GroupPost},
    ws::frame,
};

/// A `group_message` as its sending device saw it.
pub(super) struct GroupMessage<'a> {
    /// The client's message id.
    pub message_id: &'a str,
    /// The group.
    pub group_id: &'a str,
    /// The text.
    pub content: &'a str,
    /// Its message type.
    pub message_type: &'a str,
    /// Its priority.
    pub priority: Priority,
}

impl Reactor {
    /// At the device's reactor: `group_join` / `group_leave` go to the group's home.
    pub(super) fn group_join(&mut self, device: ConnAddr, user: Arc<str>, group: &str, join: bool) {
        let home = self.home_of(group);
        let change = GroupJoin {
            group: group.into(),
            user,
            device,
            join,
        };
        self.route(home, Envelope::GroupJoin(Box::new(change)));
    }

    /// At the device's reactor: encodes the `new_message` once and sends it to the
    /// group's home, which checks membership and fans it out.
    pub(super) fn group_message(
        &mut self,
        sender: ConnAddr,
        sender_user: Arc<str>,
        message: &GroupMessage<'_>,
    ) {
        self.json.clear();
        outbound::new_message(
            &mut self.json,
            &NewMessage {
                message_id: message.message_id,
                sender_id: &sender_user,
                receiver_id: message.group_id,
                content: message.content,
                message_type: message.message_type,
                priority: message.priority,
                timestamp_ms: now_ms(),
                group_id: Some(message.group_id),
            },
        );
        let post = GroupPost {
            group: message.group_id.into(),
            sender,
            sender_user,
            message_id: message.message_id.into(),
            frame: frame::encode_text(&self.json),
            priority: message.priority,
        };
        let home = self.home_of(message.group_id);
        self.route(home, Envelope::GroupPost(Box::new(post)));
    }

    /// Sends `error {code, message, ref}` to a connection on any reactor.
    pub(super) fn error_to(
        &mut self,
        addr: ConnAddr,
        code: &str,
        text: &str,
        reference: Option<&str>,
    ) {
        self.stats().count_error(code);
        self.json.clear();
        outbound::error(&mut self.json, code, text, reference);
        self.send_to(addr, frame::encode_text(&self.json), Priority::High);
    }
}
