//! Conversation history through the store: `history` reads a page back, and edits,
//! deletes and reactions change a message in it (an edit or delete only by the message's
//! sender), after which the other side and the actor's other devices hear of the change.
//! (A chat message is recorded by its receiver's home: [`super::direct`].)

use crate::protocol::codes::ErrorCode;
use bytes::Bytes;

use super::{Effects, Shard};
use crate::{
    protocol::{inbound::Change, outbound, Priority},
    router::ConnAddr,
    store::{Amend, Amendment, Command, Failure},
};

impl Shard {
    /// `history {peerId, before?, limit?}`: asks the store for a page of `user`'s
    /// conversation with `peer`.
    pub(super) fn history(
        &mut self,
        conn: ConnAddr,
        user: &str,
        (peer, before, limit): (&str, Option<u64>, usize),
        out: &mut Effects,
    ) {
        out.store(Command::History {
            user: user.into(),
            peer: peer.into(),
            before,
            limit,
            requester: conn.into(),
        });
    }

    /// The store's page: `history {peerId, messages}`, or its error.
    pub(super) fn history_read(
        &mut self,
        requester: ConnAddr,
        peer: &str,
        (messages, more): (&[Bytes], bool),
        error: Option<Failure>,
        out: &mut Effects,
    ) {
        if let Some(why) = error {
            let text = format!("history could not be read: {why}");
            return out.error(requester, ErrorCode::StoreError, text, None);
        }
        outbound::history(&mut self.json, peer, messages, more);
        let frame = self.json.frame();
        out.frame_to(requester, frame, Priority::Normal, 0);
    }

    /// `message_edit`, `message_delete`, `reaction_add`, `reaction_remove`: the store
    /// applies the change to history first.
    pub(super) fn amend(
        &mut self,
        conn: ConnAddr,
        actor: &str,
        (message_id, peer): (&str, &str),
        change: &Change<'_>,
        out: &mut Effects,
    ) {
        out.store(Command::Amend(Box::new(Amend {
            actor: actor.into(),
            peer: peer.into(),
            message_id: message_id.into(),
            change: Amendment::from_change(change),
            requester: conn.into(),
        })));
    }

    /// The store's answer to [`Shard::amend`]: the change goes to the other side (queued
    /// if it is offline) and to the actor's other devices.
    pub(super) fn amended(
        &mut self,
        amend: Amend,
        found: bool,
        error: Option<Failure>,
        out: &mut Effects,
    ) {
        let requester = ConnAddr::from(amend.requester);
        let reference = Some(&*amend.message_id);
        if let Some(why) = error {
            let text = format!("the message could not be changed: {why}");
            return out.error(requester, ErrorCode::StoreError, text, reference);
        }
        if !found {
            let text =
                "no such message in this conversation (edits and deletes only by its sender)";
            return out.error(requester, ErrorCode::NotFound, text, reference);
        }
        let who = (&*amend.message_id, &*amend.actor, &*amend.peer);
        outbound::amended(&mut self.json, who, &amend.change.as_change(), self.now_ms);
        let frame = self.json.frame();
        if amend.peer != amend.actor {
            self.deliver_durable(&amend.peer, frame.clone(), out);
        }
        let mut copy = self.delivery(&amend.actor, frame, Priority::Normal);
        copy.except = Some(requester);
        self.mail_delivery(copy, out);
    }
}
